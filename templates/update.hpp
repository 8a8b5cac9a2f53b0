/* ---------------------------------------------------------------------------------------------
   The update rule beyond the paper's P -= eta g (chaosgen/update.py, docs/language.md "train"):
   torch.optim.SGD's momentum (dampening 0), Nesterov and L2 weight decay with Caffe's per-layer
   multipliers, and the learning-rate policies as functions of the iteration count.
   --------------------------------------------------------------------------------------------- */
namespace chaos {

enum Policy { POLICY_CALL = 0, POLICY_STEP = 1, POLICY_INV = 2, POLICY_COSINE = 3 };

/* eta at iteration `it` of the run (images; the averaged scheme: steps), in double: Caffe's
   SGDSolver::GetLearningRate (step: eta gamma^floor(it / step_size); inv: eta (1 + gamma
   it)^-power) and PyTorch's CosineAnnealingLR closed form (eta_min 0, T_max max_iter). */
static float eta_at(const cg_config &c, long it) {
    const double eta = c.eta;
    switch (c.lr_policy) {
    case POLICY_STEP: return float(eta * std::pow(c.gamma, double(it / c.step_size)));
    case POLICY_INV: return float(eta * std::pow(1.0 + c.gamma * double(it), -c.power));
    case POLICY_COSINE:
        return float(eta * 0.5 * (1.0 + std::cos(3.14159265358979323846 * double(it) / double(c.max_iter))));
    default: return c.eta;
    }
}

/* p[k0, k1) -= lr * step, torch.optim.SGD's: g = G + wd p; v = mu v + g (v == nullptr: no
   momentum, step = g); step = v, or g + mu v (Nesterov). */
static void sgd_step(float *__restrict p, float *__restrict v, const float *__restrict G, float lr,
                     float wd, float mu, bool nesterov, int k0, int k1) {
    if (!v) {
        #pragma omp simd
        for (int k = k0; k < k1; ++k) p[k] -= lr * (G[k] + wd * p[k]);
    } else if (nesterov) {
        #pragma omp simd
        for (int k = k0; k < k1; ++k) {
            const float g = G[k] + wd * p[k], vk = mu * v[k] + g;
            v[k] = vk;
            p[k] -= lr * (g + mu * vk);
        }
    } else {
        #pragma omp simd
        for (int k = k0; k < k1; ++k) {
            const float vk = mu * v[k] + (G[k] + wd * p[k]);
            v[k] = vk;
            p[k] -= lr * vk;
        }
    }
}

/* The SGD step over floats [k0, k1) of block b (offsets from the block's start), the weights'
   part and the biases' part each with their multipliers. wd_scale: the averaged scheme's
   step applies B images' weight decay (chaosgen/update.py). */
static void sgd_block(int b, float *P, float *V, const float *G, float eta, float wd_scale,
                      const cg_config &c, int k0, int k1) {
    const int off = net::BLOCK_OFFSET[b], b0 = net::BLOCK_BIAS0[b];
    const float *m = c.mults ? c.mults + 4 * b : nullptr;
    const float mu = c.momentum, wd = c.weight_decay * wd_scale;
    float *v = V ? V + off : nullptr;
    const int w1 = k1 < b0 ? k1 : b0, bb = k0 > b0 ? k0 : b0;
    if (k0 < w1)
        sgd_step(P + off, v, G + off, eta * (m ? m[0] : 1.0f), wd * (m ? m[1] : 1.0f), mu,
                 c.nesterov, k0, w1);
    if (bb < k1)
        sgd_step(P + off, v, G + off, eta * (m ? m[2] : 1.0f), wd * (m ? m[3] : 1.0f), mu,
                 c.nesterov, bb, k1);
}

}  // namespace chaos
