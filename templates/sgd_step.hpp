/* One step of torch.optim.SGD (dampening 0) over p[k0, k1), written once for every caller: the
   runtime's update from a stored gradient (update.hpp) and the dense layers' fused update, which
   computes each gradient value as it goes (dense.j2). G(k): the gradient at k. g = G(k) + wd p;
   v = mu v + g (v == nullptr: no momentum, step = g); p -= lr * (v, or g + mu v with Nesterov).
   sgd_steps below applies N such steps in one pass. */
namespace chaos {
template <class Grad>
static inline void sgd_step(float *__restrict p, float *__restrict v, Grad G, float lr, float wd,
                            float mu, bool nesterov, int k0, int k1) {
    if (!v) {
        #pragma omp simd
        for (int k = k0; k < k1; ++k) p[k] -= lr * (G(k) + wd * p[k]);
    } else if (nesterov) {
        #pragma omp simd
        for (int k = k0; k < k1; ++k) {
            const float g = G(k) + wd * p[k], vk = mu * v[k] + g;
            v[k] = vk;
            p[k] -= lr * (g + mu * vk);
        }
    } else {
        #pragma omp simd
        for (int k = k0; k < k1; ++k) {
            const float vk = mu * v[k] + (G(k) + wd * p[k]);
            v[k] = vk;
            p[k] -= lr * vk;
        }
    }
}

/* N steps of sgd_step over p[k0, k1), oldest first, in one pass (the owner-applied dense update,
   owner.hpp): each p[k] and v[k] loaded once, the N steps applied in registers, stored once.
   G(j, k): step j's gradient at k; lr[j]: its learning rate. Step by step the arithmetic of
   sgd_step, so the result is that of N calls of it (to rounding: the compiler may contract the
   two forms into FMAs differently). */
template <int N, class Grad>
static inline void sgd_steps(float *__restrict p, float *__restrict v, Grad G, const float *lr,
                             float wd, float mu, bool nesterov, int k0, int k1) {
    float l[N];
    for (int j = 0; j < N; ++j) l[j] = lr[j];
    if (!v) {
        #pragma omp simd
        for (int k = k0; k < k1; ++k) {
            float pk = p[k];
            for (int j = 0; j < N; ++j) pk -= l[j] * (G(j, k) + wd * pk);
            p[k] = pk;
        }
    } else if (nesterov) {
        #pragma omp simd
        for (int k = k0; k < k1; ++k) {
            float pk = p[k], vk = v[k];
            for (int j = 0; j < N; ++j) {
                const float g = G(j, k) + wd * pk;
                vk = mu * vk + g;
                pk -= l[j] * (g + mu * vk);
            }
            p[k] = pk;
            v[k] = vk;
        }
    } else {
        #pragma omp simd
        for (int k = k0; k < k1; ++k) {
            float pk = p[k], vk = v[k];
            for (int j = 0; j < N; ++j) {
                vk = mu * vk + (G(j, k) + wd * pk);
                pk -= l[j] * vk;
            }
            p[k] = pk;
            v[k] = vk;
        }
    }
}
}  // namespace chaos
