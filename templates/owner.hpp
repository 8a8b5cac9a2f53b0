/* ---------------------------------------------------------------------------------------------
   Owner-applied updates of dense blocks (docs/kernels.md, "Owner-applied dense updates"), for the
   per-image schemes (CHAOS, Hogwild) on two or more threads. One image's gradient of a dense
   layer is the outer product dz x^T. Instead of writing it into every row of the shared weights
   (and, under momentum, of the velocity) under the segment locks, a worker publishes the image's
   record (x, dz, eta) in the block's ring; every worker owns a fixed range of the layer's units
   and applies each record, in sequence order, to its own rows (and biases) only. So no line of W
   or V is written by two cores: the lines migrate only to be read (forward, backward data).
   Each image's step is applied exactly once, with its own eta, every row taking the records in
   the same order (the order they were claimed): the result is the sequential SGD over the
   records in that order, each computed with the weights as the worker read them, CHAOS's
   "arbitrary order of synchronization". A record is applied to all units before its slot is
   reused, so the records in flight are at most the ring's depth (it bounds the staleness).
   Each worker's units are a segment with a lock: its owner applies the records to it at its
   update point of the block; a worker waiting for a slot, or done with its images, applies the
   records to any segment left behind whose lock is free (its owner may have lost its core to
   another process), so no worker ever waits for another to be scheduled. At the end (the
   drain) every record is in P when cg_train returns, before validation or a checkpoint.
   --------------------------------------------------------------------------------------------- */
namespace chaos {

/* Ring slots per worker. Running, a worker is a record or two behind the others; descheduled
   (another process took its core) it holds its segment, maybe its lock, for a time slice, while
   the others go on publishing: room for a few milliseconds of records before they must wait. */
constexpr int OWNER_DEPTH_PER_WORKER = 16;
constexpr int OWNER_SPINS = 256;  // checks of a full ring before a waiting worker yields its core

/* One worker's units of a ring (its segment): a lock for whoever applies records to them (their
   owner, or a helper), and how many records they have received: records [0, done). */
struct alignas(64) OwnedSegment {
    std::atomic<int> held{0};
    std::atomic<long> done{0};
    bool try_lock() {
        return !held.load(std::memory_order_relaxed) && !held.exchange(1, std::memory_order_acquire);
    }
    void unlock() { held.store(0, std::memory_order_release); }
};

/* One owner-applied block's records. Record q (q = 0, 1, ... in claim order) lives in slot
   q % depth: the block's input x (`inputs` floats), then its deltas dz (`units` floats). */
struct OwnerRing {
    int block = -1, units = 0, inputs = 0, depth = 0;
    size_t dz_from = 0, slot_floats = 0;   // floats: dz's offset in a slot, a slot's size
    float *slots = nullptr;
    float *eta = nullptr;                  // per slot: the record's eta
    OwnedSegment *segment = nullptr;       // per worker
    std::atomic<long> *stamp = nullptr;    // per slot: q once record q is complete in it (-1: none)
    double *trace = nullptr;               // cg_config.trace's part for this block, or nullptr
    void *memory = nullptr;
    alignas(64) std::atomic<long> head{0};  // the next sequence number to claim
    alignas(64) char after_head = 0;        // (head alone on its line)
};

static size_t aligned_floats(size_t n) { return (n + 15) / 16 * 16; }

/* Allocates the ring of dense block b for up to `workers` workers; false if out of memory. */
static bool ring_init(OwnerRing &r, int b, int workers, double *trace) {
    r.block = b;
    r.units = net::BLOCK_UNITS[b];
    r.inputs = net::BLOCK_INPUTS[b];
    r.depth = OWNER_DEPTH_PER_WORKER * workers;
    r.dz_from = aligned_floats(size_t(r.inputs));
    r.slot_floats = r.dz_from + aligned_floats(size_t(r.units));
    const size_t segments = size_t(workers) * sizeof(OwnedSegment);
    const size_t stamps = (size_t(r.depth) * sizeof(std::atomic<long>) + 63) / 64 * 64;
    const size_t floats = aligned_floats(size_t(r.depth)) + size_t(r.depth) * r.slot_floats;
    r.memory = alloc_aligned(segments + stamps + floats * sizeof(float));
    if (!r.memory) return false;
    char *m = static_cast<char *>(r.memory);
    r.segment = reinterpret_cast<OwnedSegment *>(m);
    for (int w = 0; w < workers; ++w) new (r.segment + w) OwnedSegment();
    r.stamp = reinterpret_cast<std::atomic<long> *>(m + segments);
    for (int s = 0; s < r.depth; ++s) new (r.stamp + s) std::atomic<long>(-1);
    r.eta = reinterpret_cast<float *>(m + segments + stamps);
    r.slots = r.eta + aligned_floats(size_t(r.depth));
    r.trace = trace;
    return true;
}

static void ring_free(OwnerRing &r) { free_aligned(r.memory); }

/* Applies the complete records from segment s's done on, oldest first, to its units (worker s's
   of `team`, the shares as equal as can be): up to OWNER_BATCH records in one pass over their
   rows. The caller holds the segment's lock. */
static void apply_records(OwnerRing &r, int s, int team, float *P, const cg_config &c) {
    const float *m = c.mults ? c.mults + 4 * r.block : nullptr;
    const float wd_w = c.weight_decay * (m ? m[1] : 1.0f), wd_b = c.weight_decay * (m ? m[3] : 1.0f);
    const int u0 = int(long(r.units) * s / team), u1 = int(long(r.units) * (s + 1) / team);
    OwnedSegment &seg = r.segment[s];
    long q = seg.done.load(std::memory_order_relaxed);  // (its writers hold the lock)
    for (;;) {
        const float *x[net::OWNER_BATCH], *dz[net::OWNER_BATCH];
        float lr_w[net::OWNER_BATCH], lr_b[net::OWNER_BATCH];
        int n = 0;
        for (; n < net::OWNER_BATCH; ++n) {
            const int slot = int((q + n) % r.depth);
            if (r.stamp[slot].load(std::memory_order_acquire) != q + n) break;
            x[n] = r.slots + size_t(slot) * r.slot_floats;
            dz[n] = x[n] + r.dz_from;
            lr_w[n] = r.eta[slot] * (m ? m[0] : 1.0f);  // as sgd_parts
            lr_b[n] = r.eta[slot] * (m ? m[2] : 1.0f);
        }
        if (n == 0) return;
        if (u0 < u1)
            net::update_block_owned(r.block, n, P, c.velocity, x, dz, lr_w, lr_b, wd_w, wd_b,
                                    c.momentum, c.nesterov != 0, u0, u1);
        q += n;
        seg.done.store(q, std::memory_order_release);  // its slots may be reused
    }
}

/* apply_records on segment s if its lock is free (else whoever holds it is applying them). */
static void try_apply(OwnerRing &r, int s, int team, float *P, const cg_config &c) {
    if (!r.segment[s].try_lock()) return;
    apply_records(r, s, team, P, c);
    r.segment[s].unlock();
}

/* Publishes this image's record of the block (its input x, deltas dz, eta and its index in the
   data set) in the next slot, then applies the complete records to worker me's units. A slot is
   reused only when every segment has received the record it held; until then this worker
   applies records to the segments left behind (its own first), calling before_wait() and
   after_wait() around that. `floor`: this worker's lower bound of every segment's done. */
template <class Wait, class Waited>
static void publish(OwnerRing &r, int me, int team, float *P, const cg_config &c, const float *x,
                    const float *dz, float eta, long index, long &floor, Wait &&before_wait,
                    Waited &&after_wait) {
    const long q = r.head.fetch_add(1, std::memory_order_relaxed);
    if (q - r.depth >= floor) {  // slot q % depth held record q - depth: received everywhere?
        int waited = 0;
        for (;;) {
            long low = q;
            for (int s = 0; s < team; ++s) {
                const long d = r.segment[s].done.load(std::memory_order_acquire);
                low = d < low ? d : low;
            }
            floor = low;
            if (q - r.depth < floor) break;
            if (!waited) before_wait();
            if (waited++ % OWNER_SPINS == OWNER_SPINS - 1) std::this_thread::yield();
            for (int k = 0; k < team; ++k) {
                const int s = (me + k) % team;
                if (r.segment[s].done.load(std::memory_order_relaxed) <= q - r.depth)
                    try_apply(r, s, team, P, c);
            }
        }
        if (waited) after_wait();
    }
    const int slot = int(q % r.depth);
    float *rec = r.slots + size_t(slot) * r.slot_floats;
    std::memcpy(rec, x, sizeof(float) * size_t(r.inputs));
    std::memcpy(rec + r.dz_from, dz, sizeof(float) * size_t(r.units));
    r.eta[slot] = eta;
    if (r.trace) {  // [eta, index, x, dz] of record q
        double *t = r.trace + size_t(q) * size_t(2 + r.inputs + r.units);
        t[0] = eta;
        t[1] = double(index);
        for (int i = 0; i < r.inputs; ++i) t[2 + i] = x[i];
        for (int u = 0; u < r.units; ++u) t[2 + r.inputs + u] = dz[u];
    }
    r.stamp[slot].store(q, std::memory_order_release);
    try_apply(r, me, team, P, c);
}

/* After worker me's last image: applies records to every segment with some left (its own
   first) until all `team` workers have finished (`finished`, counted after each one's last
   publish) and every segment has received every record. */
static void drain(OwnerRing &r, int me, int team, float *P, const cg_config &c,
                  std::atomic<int> &finished) {
    for (int spins = 1;; ++spins) {
        if (spins % OWNER_SPINS == 0) std::this_thread::yield();
        const bool last = finished.load(std::memory_order_acquire) == team;  // head is final
        const long head = r.head.load(std::memory_order_relaxed);
        bool all = true;
        for (int k = 0; k < team; ++k) {
            const int s = (me + k) % team;
            if (r.segment[s].done.load(std::memory_order_acquire) < head) {
                try_apply(r, s, team, P, c);
                all = all && r.segment[s].done.load(std::memory_order_acquire) == head;
            }
        }
        if (last && all) return;
    }
}

}  // namespace chaos
