/* One step of torch.optim.SGD (dampening 0) over p[k0, k1), written once for every caller: the
   runtime's update from a stored gradient (update.hpp) and the dense layers' fused update, which
   computes each gradient value as it goes (dense.j2). G(k): the gradient at k. g = G(k) + wd p;
   v = mu v + g (v == nullptr: no momentum, step = g); p -= lr * (v, or g + mu v with Nesterov). */
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
}  // namespace chaos
