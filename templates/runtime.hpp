/* ---------------------------------------------------------------------------------------------
   The CHAOS runtime: the same C++ for every network (it uses only the names in namespace net),
   compiled into the cffi library and into the standalone native program (Xeon Phi native mode).
   One network instance per OpenMP thread: private activations, deltas and gradients, allocated
   once by the thread that uses them (first touch); the weights P are shared. Workers pick the
   next image from a shared atomic counter; during back-propagation each layer's update goes into
   P as soon as that layer is done, under the locks of that layer's segments (one writer per
   segment at a time, segments taken in whatever order they are free: locks.hpp), or, for dense
   layers on two or more threads, by the owners of its rows (owner.hpp); readers of P never
   wait. No barrier per image.
   --------------------------------------------------------------------------------------------- */
{% include "locks.hpp" %}
{# dropout nets: each training image's mask key, from (seed, epoch, the image's dataset index) #}
{% set drop_arg = ", cg_dropout_key(uint64_t(cfg.seed), uint64_t(cfg.epoch), uint64_t(order[i]))" if dropout else "" %}
{% include "update.hpp" %}

namespace chaos {

enum Scheme { CHAOS = 0, HOGWILD = 1, DELAYED = 2, AVERAGED = 3 };
enum DenseUpdate { DENSE_AUTO = 0, DENSE_LOCKED = 1, DENSE_OWNER = 2 };  // cg_config.dense_update

static void *alloc_aligned(size_t bytes) {
    void *p = nullptr;
#if defined(__INTEL_COMPILER)
    p = _mm_malloc(bytes, CG_ALIGN);
#else
    if (posix_memalign(&p, CG_ALIGN, bytes) != 0) p = nullptr;
#endif
    if (p) std::memset(p, 0, bytes);  // first touch by the calling (owning) thread
    return p;
}

static void free_aligned(void *p) {
#if defined(__INTEL_COMPILER)
    _mm_free(p);
#else
    std::free(p);
#endif
}

static float *alloc_floats(size_t n) { return static_cast<float *>(alloc_aligned(n * sizeof(float))); }
static void free_floats(float *p) { free_aligned(p); }

}  // namespace chaos
{% include "owner.hpp" %}

namespace chaos {

struct NoProfile {
    void start() {}
    void tick(int, int) {}
};

/* Per-thread timer: adds the time since the last tick to (layer, pass). */
struct Profile {
    double *acc;
    double last = 0.0;
    explicit Profile(double *a) : acc(a) {}
    void start() { last = omp_get_wtime(); }
    void tick(int layer, int pass) {
        const double now = omp_get_wtime();
        acc[layer * net::N_PASSES + pass] += now - last;
        last = now;
    }
};

static int argmax(const float *y) {
    int best = 0;
    for (int u = 1; u < net::OUTPUT_SIZE; ++u)
        if (y[u] > y[best]) best = u;
    return best;
}

struct Tally {
    double loss = 0.0;
    long errors = 0, images = 0;
    void add(const float *work, float l, int label) {
        loss += l;
        errors += argmax(net::output(work)) != label;
        ++images;
    }
};

/* Whether the update of dense block b is owner-applied (owner.hpp) by a team of `team` workers
   (cg_config.dense_update DENSE_AUTO): on two or more threads, when the floats the locked update
   writes into shared lines per image (the block, and its velocity under momentum) are at least
   OWNER_MIN_RATIO times the record that replaces them (x and dz). Below that the record's lines
   and the ring's few shared counters move about as much as the locked update would. */
constexpr int OWNER_MIN_RATIO = 8;

static bool owner_applies(int b, const cg_config &c, int team) {
    const long written = long(net::BLOCK_FLOATS[b]) * (c.velocity ? 2 : 1);
    return team >= 2 && written >= long(OWNER_MIN_RATIO) * (net::BLOCK_INPUTS[b] + net::BLOCK_UNITS[b]);
}

/* Whether a call with configuration c applies each image's update at once (CHAOS, Hogwild,
   sequential, delayed with k = 1): the schemes whose dense updates may be owner-applied. */
static bool per_image(const cg_config &c) {
    return c.scheme == CHAOS || c.scheme == HOGWILD || (c.scheme == DELAYED && c.update_every <= 1);
}

/* One worker's share of a training epoch. Returns false if it could not allocate its buffers.
   rings[b]: block b's ring if its update may be owner-applied (block -1: not); every worker
   adds 1 to `finished` after its last image, then drains the rings of the blocks it owns
   rows of; the bits of owner_blocks say which blocks were. */
template <class Prof>
static bool train_worker(float *P, const float *images, const int *labels, const int *order,
                         long n, const cg_config &cfg, std::atomic<long> &next,
                         LayerLock *locks, Tally &tally, Prof &prof, volatile int &failed,
                         float *S, OwnerRing *rings, std::atomic<int> &finished,
                         unsigned long long &owner_blocks) {
    float *work = alloc_floats(net::WORK_FLOATS);
    float *G = alloc_floats(net::N_PARAMS);
    const bool ok = work && G;
    if (!ok) failed = 1;
    float eta = cfg.eta;
    /* sgd: momentum, weight decay or multipliers (update.hpp); else the paper's rule.
       S (averaged + sgd only): the step's gradient summed over the workers, shared. */
    const bool sgd = cfg.momentum > 0 || cfg.weight_decay > 0 || cfg.mults;
    const bool per_iter = cfg.lr_policy != POLICY_CALL;
    float wd_images = 1.0f;  // images in G: delayed's step takes that many images' weight decay
    auto image_of = [&](long i) { return images + static_cast<size_t>(order[i]) * net::IMAGE_STRIDE; };
    auto stopped = [&]() { return failed || (cfg.stop && *cfg.stop); };
    const int me = omp_get_thread_num(), team = omp_get_num_threads();
    bool owned[net::N_BLOCKS];  // every worker decides alike
    OwnerCursor cursor[net::N_BLOCKS];  // this worker's place in each ring
    unsigned long long owner_bits = 0;
    for (int b = 0; b < net::N_BLOCKS; ++b) {
        owned[b] = rings[b].block >= 0 && (cfg.dense_update == DENSE_OWNER || owner_applies(b, cfg, team));
        owner_bits |= owned[b] ? 1ull << b : 0ull;
    }
    if (me == 0) owner_blocks = owner_bits;
    /* Apply this worker's gradient of block b (locked: segment by segment, see locks.hpp,
       starting at a segment of its own so that workers begin apart). fused: the image's
       gradient of a BLOCK_FUSED block is computed on the fly from work (train_image<true>);
       any other gradient is read from G, which is cleared after, outside the locks. */
    const float *image = nullptr;  // the image being trained on (fused updates read it)
    long index = 0;                // its index in images (owner.hpp's trace)
    auto apply = [&](int b, float scale, bool locked, bool fused) {
        const int layer = net::BLOCK_LAYER[b], seg = net::SEGMENT_FLOATS[b], size = net::BLOCK_FLOATS[b];
        const int first = net::BLOCK_SEGMENT0[b], n = net::BLOCK_SEGMENT0[b + 1] - first;
        if (owned[b]) {  // (only for the per-image schemes: rings exist for them alone)
            const float *x, *dz;
            net::record_of(b, work, image, &x, &dz);
            publish(rings[b], me, team, P, cfg, x, dz, scale, index, cursor[b],
                    [&] { prof.tick(layer, net::UPDATE); }, [&] { prof.tick(layer, net::LOCK_WAIT); });
            prof.tick(layer, net::UPDATE);
            return;
        }
        fused = fused && net::BLOCK_FUSED[b];
        auto update = [&](int k0, int k1) {
            if (fused && sgd)
                sgd_block_fused(b, P, cfg.velocity, work, image, scale, cfg, k0, k1);
            else if (fused)
                net::update_block_fused(b, P, work, image, scale, k0, k1);
            else if (sgd)
                sgd_block(b, P, cfg.velocity, G, scale, wd_images, cfg, k0, k1);
            else
                net::update_block(b, P, G, scale, k0, k1);
        };
        if (!locked) {
            update(0, size);
        } else {
            update_segments(
                locks + first, n, me * n / team,
                [&](int s) { update(s * seg, (s + 1) * seg < size ? (s + 1) * seg : size); },
                [&] { prof.tick(layer, net::UPDATE); }, [&] { prof.tick(layer, net::LOCK_WAIT); });
        }
        if (!fused) std::memset(G + net::BLOCK_OFFSET[b], 0, sizeof(float) * size);  // for the next accumulation
        prof.tick(layer, net::UPDATE);
    };

    if (cfg.scheme == AVERAGED) {  // (`next` is free here: it carries the decision to halt)
        /* Synchronous data parallel (Tallada 2016): the B images of a step are shared out, every
           gradient is computed with the same weights, then applied once; a barrier ends the step. */
        const long B = cfg.batch > 0 ? cfg.batch : 1;
        bool halt = false;
        for (long b0 = 0; b0 < n && !halt; b0 += B) {
            const long b1 = b0 + B < n ? b0 + B : n;
            if (per_iter) eta = eta_at(cfg, cfg.iter0 + b0 / B);
#pragma omp for schedule(dynamic, 1)
            for (long i = b0; i < b1; ++i) {
                if (!ok) continue;
                prof.start();
                const float l = net::train_image(P, work, G, image_of(i), labels[order[i]],
                                                 [](int) {}, prof{{ drop_arg }});
                tally.add(work, l, labels[order[i]]);
            }
            /* Each worker adds eta x its summed gradients: the step is B x eta x the average
               (the linear scaling rule), so an epoch of B-image steps makes about the progress
               of an epoch of per-image steps at the same eta. */
            if (ok && !sgd)
                for (int b = 0; b < net::N_BLOCKS; ++b) apply(b, eta, true, false);
            if (sgd) {
                /* Momentum and weight decay act once per step, on the summed gradient: the
                   workers add their G into S (locked), then the blocks are updated from S with
                   b1 - b0 images' weight decay, as B per-image steps would (to first order). */
                for (int b = 0; ok && b < net::N_BLOCKS; ++b) {
                    const int off = net::BLOCK_OFFSET[b], seg = net::SEGMENT_FLOATS[b], size = net::BLOCK_FLOATS[b];
                    const int first = net::BLOCK_SEGMENT0[b], nseg = net::BLOCK_SEGMENT0[b + 1] - first;
                    update_segments(
                        locks + first, nseg, me * nseg / team,
                        [&](int s) {
                            const int k1 = (s + 1) * seg < size ? (s + 1) * seg : size;
                            for (int k = off + s * seg; k < off + k1; ++k) S[k] += G[k];
                        },
                        [] {}, [] {});
                    std::memset(G + off, 0, sizeof(float) * size);
                }
#pragma omp barrier
#pragma omp for schedule(static, 1)
                for (int b = 0; b < net::N_BLOCKS; ++b) {
                    sgd_block(b, P, cfg.velocity, S, eta, float(b1 - b0), cfg, 0, net::BLOCK_FLOATS[b]);
                    std::memset(S + net::BLOCK_OFFSET[b], 0, sizeof(float) * net::BLOCK_FLOATS[b]);
                }
            }
#pragma omp barrier
#pragma omp single
            {
                next.store(stopped() ? n : 0);  // one reader decides for all, so every worker agrees
                if (cfg.progress) *cfg.progress = b1;
            }
            halt = next.load() >= n;
        }
    } else if (ok) {
        const long every = cfg.scheme == DELAYED && cfg.update_every > 1 ? cfg.update_every : 1;
        const bool locked = cfg.scheme != HOGWILD;
        long mine = 0;
        for (long i; !stopped() && (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) {
            const int label = labels[order[i]];
            image = image_of(i);
            index = order[i];
            if (per_iter) eta = eta_at(cfg, cfg.iter0 + i);
            prof.start();
            float l;
            if (every == 1)
                l = net::train_image<true>(P, work, G, image, label,
                                           [&](int b) { apply(b, eta, locked, true); }, prof{{ drop_arg }});
            else
                l = net::train_image(P, work, G, image, label, [](int) {}, prof{{ drop_arg }});
            tally.add(work, l, label);
            if (cfg.progress && (i & 63) == 0) *cfg.progress = i;  // a hint for progress bars
            if (every > 1 && ++mine % every == 0) {
                wd_images = float(every);
                for (int b = net::N_BLOCKS - 1; b >= 0; --b) apply(b, eta, true, false);
            }
        }
        if (every > 1 && mine % every != 0) {
            wd_images = float(mine % every);
            for (int b = net::N_BLOCKS - 1; b >= 0; --b) apply(b, eta, true, false);
        }
    }
    finished.fetch_add(1, std::memory_order_release);
    for (int b = net::N_BLOCKS - 1; b >= 0; --b)
        if (owned[b]) {
            prof.start();
            drain(rings[b], me, team, P, cfg, finished);
            prof.tick(net::BLOCK_LAYER[b], net::UPDATE);
        }
    free_floats(work);
    free_floats(G);
    return ok;
}

}  // namespace chaos

extern "C" {

int cg_n_params(void) { return net::N_PARAMS; }
int cg_image_size(void) { return net::IMAGE_SIZE; }
int cg_image_stride(void) { return net::IMAGE_STRIDE; }
int cg_output_size(void) { return net::OUTPUT_SIZE; }
int cg_work_floats(void) { return net::WORK_FLOATS; }
int cg_n_layers(void) { return net::N_LAYERS; }

void cg_forward(const float *params, float *work, const float *image, float *output) {
    chaos::NoProfile prof;
    net::forward(params, work, image, prof);
    std::memcpy(output, net::output(work), sizeof(float) * net::OUTPUT_SIZE);
}

float cg_gradients(const float *params, float *work, const float *image, int label, float *grads) {
    chaos::NoProfile prof;
    std::memset(grads, 0, sizeof(float) * net::N_PARAMS);
    return net::train_image(params, work, grads, image, label, [](int) {}, prof);
}

/* One training epoch (or part of one) over order[0..n). Returns 0, or -1 if memory ran out. */
int cg_train(float *params, const float *images, const int *labels, const int *order, long n,
             const cg_config *config, cg_stats *stats, double *profile) {
    const double t0 = omp_get_wtime();
    std::atomic<long> next{0};
    chaos::LayerLock locks[net::N_SEGMENTS];
    volatile int failed = 0;
    double loss = 0.0;
    long errors = 0, done = 0;
    const int threads = config->threads > 0 ? config->threads : 1;
    int ran = 1;
    const bool sgd = config->momentum > 0 || config->weight_decay > 0 || config->mults;
    float *S = sgd && config->scheme == chaos::AVERAGED ? chaos::alloc_floats(net::N_PARAMS) : nullptr;
    if (sgd && config->scheme == chaos::AVERAGED && !S) return -1;
    /* The rings of the dense blocks whose update may be owner-applied (the workers decide, from
       the team they are); the trace: every dense block's n records, in block order. */
    chaos::OwnerRing rings[net::N_BLOCKS];
    std::atomic<int> finished{0};
    unsigned long long owner_blocks = 0;
    const bool may_own = chaos::per_image(*config) && config->dense_update != chaos::DENSE_LOCKED &&
                         (threads >= 2 || config->dense_update == chaos::DENSE_OWNER);
    bool no_memory = false;
    double *trace = config->trace;
    for (int b = 0; b < net::N_BLOCKS; ++b) {
        if (!net::BLOCK_UNITS[b]) continue;
        if (may_own && (config->dense_update == chaos::DENSE_OWNER || chaos::owner_applies(b, *config, threads)))
            no_memory = no_memory || !chaos::ring_init(rings[b], b, threads, trace);
        if (trace) trace += size_t(n) * size_t(2 + net::BLOCK_INPUTS[b] + net::BLOCK_UNITS[b]);
    }
    auto release = [&] {
        for (int b = 0; b < net::N_BLOCKS; ++b) chaos::ring_free(rings[b]);
        chaos::free_floats(S);
    };
    if (no_memory) {
        release();
        return -1;
    }
#pragma omp parallel num_threads(threads) reduction(+ : loss, errors, done)
    {
        if (omp_get_thread_num() == 0) ran = omp_get_num_threads();
        chaos::Tally tally;
        if (profile) {
            double mine[net::N_LAYERS * net::N_PASSES] = {};
            chaos::Profile prof(mine);
            chaos::train_worker(params, images, labels, order, n, *config, next, locks, tally, prof, failed, S,
                                rings, finished, owner_blocks);
#pragma omp critical
            for (int k = 0; k < net::N_LAYERS * net::N_PASSES; ++k) profile[k] += mine[k];
        } else {
            chaos::NoProfile prof;
            chaos::train_worker(params, images, labels, order, n, *config, next, locks, tally, prof, failed, S,
                                rings, finished, owner_blocks);
        }
        loss += tally.loss;
        errors += tally.errors;
        done += tally.images;
    }
    stats->loss = loss;
    stats->errors = errors;
    stats->images = done;
    stats->seconds = omp_get_wtime() - t0;
    stats->threads = ran;
    stats->owner_blocks = owner_blocks;
    release();
    return failed ? -1 : 0;
}

/* Forward only over images[0..n) in order: summed loss and errors. Returns 0, or -1 on no memory. */
int cg_evaluate(const float *params, const float *images, const int *labels, long n, int threads,
                cg_stats *stats) {
    const double t0 = omp_get_wtime();
    double loss = 0.0;
    long errors = 0;
    int failed = 0, ran = 1;
#pragma omp parallel num_threads(threads > 0 ? threads : 1) reduction(+ : loss, errors, failed)
    {
        if (omp_get_thread_num() == 0) ran = omp_get_num_threads();
        float *work = chaos::alloc_floats(net::WORK_FLOATS);
        chaos::NoProfile prof;
        if (!work) failed = 1;
#pragma omp for schedule(dynamic, 64)
        for (long i = 0; i < n; ++i) {
            if (!work) continue;
            net::forward(params, work, images + static_cast<size_t>(i) * net::IMAGE_STRIDE, prof);
            const float *y = net::output(work);
            loss += net::loss(y, labels[i]);
            errors += chaos::argmax(y) != labels[i];
        }
        chaos::free_floats(work);
    }
    stats->loss = loss;
    stats->errors = errors;
    stats->images = failed ? 0 : n;
    stats->seconds = omp_get_wtime() - t0;
    stats->threads = ran;
    return failed ? -1 : 0;
}

/* Forward only over images[0..n) (rows of IMAGE_STRIDE floats): image i's output activations
   into outputs[i * OUTPUT_SIZE ..]. Python's batched Net.forward. Returns the threads that ran,
   or -1 if memory ran out. */
int cg_forward_batch(const float *params, const float *images, long n, int threads, float *outputs) {
    int failed = 0, ran = 1;
#pragma omp parallel num_threads(threads > 0 ? threads : 1) reduction(+ : failed)
    {
        if (omp_get_thread_num() == 0) ran = omp_get_num_threads();
        float *work = chaos::alloc_floats(net::WORK_FLOATS);
        chaos::NoProfile prof;
        if (!work) failed = 1;
#pragma omp for schedule(dynamic, 16)  // 16 images a chunk: a small batch still spreads
        for (long i = 0; i < n; ++i) {
            if (!work) continue;
            net::forward(params, work, images + static_cast<size_t>(i) * net::IMAGE_STRIDE, prof);
            std::memcpy(outputs + static_cast<size_t>(i) * net::OUTPUT_SIZE, net::output(work),
                        sizeof(float) * net::OUTPUT_SIZE);
        }
        chaos::free_floats(work);
    }
    return failed ? -1 : ran;
}

/* The threads a parallel region asking for `requested` gets here: OMP_THREAD_LIMIT (or
   OMP_DYNAMIC) can give fewer than a num_threads clause asks. What cg_train would run. */
int cg_threads(int requested) {
    int ran = 1;
#pragma omp parallel num_threads(requested > 0 ? requested : 1)
    if (omp_get_thread_num() == 0) ran = omp_get_num_threads();
    return ran;
}

const char *cg_ir_hash(void) { return CG_IR_HASH; }
{% if dropout %}

int cg_dropout_masks(long long seed, int epoch, long index, unsigned char *keep) {
    net::dropout_masks(cg_dropout_key(uint64_t(seed), uint64_t(epoch), uint64_t(index)), keep);
    return {{ dropout | sum(attribute="size") }};
}

float cg_gradients_dropout(const float *params, float *work, const float *image, int label, float *grads,
                           long long seed, int epoch, long index) {
    chaos::NoProfile prof;
    std::memset(grads, 0, sizeof(float) * net::N_PARAMS);
    return net::train_image(params, work, grads, image, label, [](int) {}, prof,
                            cg_dropout_key(uint64_t(seed), uint64_t(epoch), uint64_t(index)));
}
{% endif %}

}  // extern "C"
