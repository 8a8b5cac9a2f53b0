/* ---------------------------------------------------------------------------------------------
   Owner-applied updates of dense blocks (docs/kernels.md, "Owner-applied dense updates"), for the
   per-image schemes (CHAOS, Hogwild) on two or more threads. One image's gradient of a dense
   layer is the outer product dz x^T. Instead of writing it into every row of the shared weights
   (and, under momentum, of the velocity) under the segment locks, a worker publishes the image's
   record (x, dz, eta) in the block's ring; every worker owns a fixed range of the layer's units
   and applies each record, in sequence order, to its own rows (and biases) only. So no line of W
   or V is written by two cores: the lines migrate only to be read (forward, backward data).
   Each image's step is applied exactly once, with its own eta, every row taking the records in
   the same order (the order they were numbered in): the result is the sequential SGD over the
   records in that order, each computed with the weights as the worker read them, CHAOS's
   "arbitrary order of synchronization". A worker writes its record into one of its own buffers
   and only then takes the record's number, so a worker that loses its core never holds back
   the records numbered after its own; a buffer is reused once every unit has received its
   record, so each worker has at most OWNER_DEPTH_PER_WORKER records in flight (the bound on the
   staleness).
   The units are cut into segments of about the block's lock segment (SEGMENT_FLOATS), each with
   a lock and a count of the records it has received; each worker owns a run of segments and
   applies the records to them at its update point of the block. A worker that finds another's
   segment far behind (its owner lost its core to another process), or that waits for a slot, or
   is done with its images, applies the records to that segment itself if its lock is free: no
   worker waits for another to be scheduled, and a descheduled owner holds back at most the one
   segment it had locked. At the end (the drain) every record is in P when cg_train returns,
   before validation or a checkpoint.
   --------------------------------------------------------------------------------------------- */
namespace chaos {

/* Record buffers per worker. Running, a worker is a record or two behind the others;
   descheduled (another process took its core) it may hold a segment's lock for a time slice
   while the others go on publishing: room for a few milliseconds of records before they wait. */
constexpr int OWNER_DEPTH_PER_WORKER = 16;
/* Records per worker a segment may lag behind the newest before the publishing worker applies
   them itself: a running owner is within one or two; one that lost its core would otherwise
   leave its rows that far behind every worker's own updates. */
constexpr int OWNER_LAG_PER_WORKER = 2;
constexpr int OWNER_SPINS = 256;  // checks of a full ring before a waiting worker yields its core

/* A run of units of a ring: a lock for whoever applies records to them (their owner, or a
   helper), and how many records they have received: records [0, done). */
struct alignas(64) OwnedSegment {
    std::atomic<int> held{0};
    std::atomic<long> done{0};
    bool try_lock() {
        return !held.load(std::memory_order_relaxed) && !held.exchange(1, std::memory_order_acquire);
    }
    void unlock() { held.store(0, std::memory_order_release); }
};

/* One owner-applied block's records. Each worker has OWNER_DEPTH_PER_WORKER buffers, each for
   one record: the block's input x (`inputs` floats), then its deltas dz (`units` floats).
   Record q (q = 0, 1, ... in the order they were numbered) is announced in slot q % depth,
   which names its buffer; at most depth records are in flight, so the slot is free by then. */
struct OwnerRing {
    int block = -1, units = 0, inputs = 0, depth = 0;
    int seg_units = 1, n_segments = 0;     // units per segment (the last may have fewer)
    size_t dz_from = 0, record_floats = 0; // floats: dz's offset in a buffer, a buffer's size
    float *records = nullptr;              // depth buffers, worker w's from w x OWNER_DEPTH_PER_WORKER
    float *eta = nullptr;                  // per buffer: its record's eta
    long *number = nullptr;                // per buffer: its record's q (-1: none; its worker's)
    int *buffer = nullptr;                 // per slot: the buffer of its record
    OwnedSegment *segment = nullptr;
    std::atomic<long> *stamp = nullptr;    // per slot: q once record q is announced in it (-1: none)
    double *trace = nullptr;               // cg_config.trace's part for this block, or nullptr
    void *memory = nullptr;
    alignas(64) std::atomic<long> head{0};  // the next sequence number to claim
    alignas(64) char after_head = 0;        // (head alone on its line)
};

static size_t aligned_floats(size_t n) { return (n + 15) / 16 * 16; }

/* Allocates the ring of dense block b for up to `workers` workers; false if out of memory.
   Segments: SEGMENT_FLOATS of weights each (whole units), at least one per worker if the
   layer has the units. */
static bool ring_init(OwnerRing &r, int b, int workers, double *trace) {
    r.block = b;
    r.units = net::BLOCK_UNITS[b];
    r.inputs = net::BLOCK_INPUTS[b];
    r.depth = OWNER_DEPTH_PER_WORKER * workers;
    const int per_worker = r.units / workers > 1 ? r.units / workers : 1;
    const int by_size = net::SEGMENT_FLOATS[b] / r.inputs > 1 ? net::SEGMENT_FLOATS[b] / r.inputs : 1;
    r.seg_units = by_size < per_worker ? by_size : per_worker;
    r.n_segments = (r.units + r.seg_units - 1) / r.seg_units;
    r.dz_from = aligned_floats(size_t(r.inputs));
    r.record_floats = r.dz_from + aligned_floats(size_t(r.units));
    auto lines = [](size_t bytes) { return (bytes + 63) / 64 * 64; };
    const size_t segments = size_t(r.n_segments) * sizeof(OwnedSegment);
    const size_t stamps = lines(size_t(r.depth) * sizeof(std::atomic<long>));
    const size_t numbers = lines(size_t(r.depth) * sizeof(long)), buffers = lines(size_t(r.depth) * sizeof(int));
    const size_t floats = aligned_floats(size_t(r.depth)) + size_t(r.depth) * r.record_floats;
    r.memory = alloc_aligned(segments + stamps + numbers + buffers + floats * sizeof(float));
    if (!r.memory) return false;
    char *m = static_cast<char *>(r.memory);
    r.segment = reinterpret_cast<OwnedSegment *>(m);
    for (int s = 0; s < r.n_segments; ++s) new (r.segment + s) OwnedSegment();
    m += segments;
    r.stamp = reinterpret_cast<std::atomic<long> *>(m);
    for (int s = 0; s < r.depth; ++s) new (r.stamp + s) std::atomic<long>(-1);
    m += stamps;
    r.number = reinterpret_cast<long *>(m);
    for (int k = 0; k < r.depth; ++k) r.number[k] = -1;
    m += numbers;
    r.buffer = reinterpret_cast<int *>(m);
    m += buffers;
    r.eta = reinterpret_cast<float *>(m);
    r.records = r.eta + aligned_floats(size_t(r.depth));
    r.trace = trace;
    return true;
}

static void ring_free(OwnerRing &r) { free_aligned(r.memory); }

/* The segments worker `me` of `team` owns: [s0, s1), the shares as equal as can be. */
static void owned_segments(const OwnerRing &r, int me, int team, int &s0, int &s1) {
    s0 = int(long(r.n_segments) * me / team);
    s1 = int(long(r.n_segments) * (me + 1) / team);
}

/* Applies the complete records from segment s's done on, oldest first, to its units: up to
   OWNER_BATCH records in one pass over their rows. The caller holds the segment's lock. */
static void apply_records(OwnerRing &r, int s, float *P, const cg_config &c) {
    const float *m = c.mults ? c.mults + 4 * r.block : nullptr;
    const float wd_w = c.weight_decay * (m ? m[1] : 1.0f), wd_b = c.weight_decay * (m ? m[3] : 1.0f);
    const int u0 = s * r.seg_units, u1 = u0 + r.seg_units < r.units ? u0 + r.seg_units : r.units;
    OwnedSegment &seg = r.segment[s];
    long q = seg.done.load(std::memory_order_relaxed);  // (its writers hold the lock)
    for (;;) {
        const float *x[net::OWNER_BATCH], *dz[net::OWNER_BATCH];
        float lr_w[net::OWNER_BATCH], lr_b[net::OWNER_BATCH];
        int n = 0;
        for (; n < net::OWNER_BATCH; ++n) {
            const int slot = int((q + n) % r.depth);
            if (r.stamp[slot].load(std::memory_order_acquire) != q + n) break;
            const int b = r.buffer[slot];
            x[n] = r.records + size_t(b) * r.record_floats;
            dz[n] = x[n] + r.dz_from;
            lr_w[n] = r.eta[b] * (m ? m[0] : 1.0f);  // as sgd_parts
            lr_b[n] = r.eta[b] * (m ? m[2] : 1.0f);
        }
        if (n == 0) return;
        net::update_block_owned(r.block, n, P, c.velocity, x, dz, lr_w, lr_b, wd_w, wd_b,
                                c.momentum, c.nesterov != 0, u0, u1);
        q += n;
        seg.done.store(q, std::memory_order_release);  // its slots may be reused
    }
}

/* apply_records on segment s if its lock is free (else whoever holds it is applying them). */
static void try_apply(OwnerRing &r, int s, float *P, const cg_config &c) {
    if (!r.segment[s].try_lock()) return;
    apply_records(r, s, P, c);
    r.segment[s].unlock();
}

/* try_apply on every segment that has received fewer than `upto` records, worker me's first. */
static void apply_behind(OwnerRing &r, int me, int team, long upto, float *P, const cg_config &c) {
    int s0, s1;
    owned_segments(r, me, team, s0, s1);
    for (int k = 0; k < r.n_segments; ++k) {
        const int s = (s0 + k) % r.n_segments;
        if (r.segment[s].done.load(std::memory_order_relaxed) < upto) try_apply(r, s, P, c);
    }
}

/* A worker's place in its buffers of a ring, and its lower bound of every segment's done. */
struct OwnerCursor {
    int next = 0;
    long floor = 0;
};

/* Publishes this image's record of the block (its input x, deltas dz, eta and its index in the
   data set): into worker me's next buffer, numbered, announced; then applies the announced
   records to worker me's segments, and to any segment more than OWNER_LAG_PER_WORKER x team
   records behind. Until every segment has received the record the buffer held before, this
   worker applies records to the segments left behind, calling before_wait() and after_wait()
   around that. */
template <class Wait, class Waited>
static void publish(OwnerRing &r, int me, int team, float *P, const cg_config &c, const float *x,
                    const float *dz, float eta, long index, OwnerCursor &cur, Wait &&before_wait,
                    Waited &&after_wait) {
    const int b = me * OWNER_DEPTH_PER_WORKER + cur.next;
    cur.next = (cur.next + 1) % OWNER_DEPTH_PER_WORKER;
    const long before = r.number[b];
    if (before >= cur.floor) {  // the buffer's last record: received everywhere?
        int waited = 0;
        for (;;) {
            long low = r.head.load(std::memory_order_relaxed);
            for (int s = 0; s < r.n_segments; ++s) {
                const long d = r.segment[s].done.load(std::memory_order_acquire);
                low = d < low ? d : low;
            }
            cur.floor = low;
            if (before < cur.floor) break;
            if (!waited) before_wait();
            if (waited++ % OWNER_SPINS == OWNER_SPINS - 1) sched_yield();
            apply_behind(r, me, team, before + 1, P, c);
        }
        if (waited) after_wait();
    }
    float *rec = r.records + size_t(b) * r.record_floats;
    std::memcpy(rec, x, sizeof(float) * size_t(r.inputs));
    std::memcpy(rec + r.dz_from, dz, sizeof(float) * size_t(r.units));
    r.eta[b] = eta;
    const long q = r.head.fetch_add(1, std::memory_order_relaxed);
    r.number[b] = q;
    const int slot = int(q % r.depth);
    r.buffer[slot] = b;
    r.stamp[slot].store(q, std::memory_order_release);
    if (r.trace) {  // [eta, index, x, dz] of record q
        double *t = r.trace + size_t(q) * size_t(2 + r.inputs + r.units);
        t[0] = eta;
        t[1] = double(index);
        for (int i = 0; i < r.inputs; ++i) t[2 + i] = x[i];
        for (int u = 0; u < r.units; ++u) t[2 + r.inputs + u] = dz[u];
    }
    int s0, s1;
    owned_segments(r, me, team, s0, s1);
    for (int s = s0; s < s1; ++s) try_apply(r, s, P, c);
    apply_behind(r, me, team, q - OWNER_LAG_PER_WORKER * team, P, c);
}

/* After worker me's last image: applies records to every segment with some left (its own
   first) until all `team` workers have finished (`finished`, counted after each one's last
   publish) and every segment has received every record. */
static void drain(OwnerRing &r, int me, int team, float *P, const cg_config &c,
                  std::atomic<int> &finished) {
    for (int spins = 1;; ++spins) {
        if (spins % OWNER_SPINS == 0) sched_yield();
        const bool last = finished.load(std::memory_order_acquire) == team;  // head is final
        const long head = r.head.load(std::memory_order_relaxed);
        apply_behind(r, me, team, head, P, c);
        bool all = true;
        for (int s = 0; s < r.n_segments && all; ++s)
            all = r.segment[s].done.load(std::memory_order_acquire) == head;
        if (last && all) return;
    }
}

}  // namespace chaos
