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

/* The SGD step over floats [k0, k1) of block b (offsets from the block's start), the weights'
   part and the biases' part each with their multipliers: step(k0, k1, lr, wd) for each part.
   wd_scale: the averaged scheme's step applies B images' weight decay (chaosgen/update.py). */
template <class Step>
static void sgd_parts(int b, float eta, float wd_scale, const cg_config &c, int k0, int k1, Step &&step) {
    const int b0 = net::BLOCK_BIAS0[b];
    const float *m = c.mults ? c.mults + 4 * b : nullptr;
    const float wd = c.weight_decay * wd_scale;
    const int w1 = k1 < b0 ? k1 : b0, bb = k0 > b0 ? k0 : b0;
    if (k0 < w1) step(k0, w1, eta * (m ? m[0] : 1.0f), wd * (m ? m[1] : 1.0f));
    if (bb < k1) step(bb, k1, eta * (m ? m[2] : 1.0f), wd * (m ? m[3] : 1.0f));
}

/* The SGD step of block b from its gradient in G (G, P and V indexed alike). */
static void sgd_block(int b, float *P, float *V, const float *G, float eta, float wd_scale,
                      const cg_config &c, int k0, int k1) {
    const int off = net::BLOCK_OFFSET[b];
    float *v = V ? V + off : nullptr;
    const float *g = G + off;
    sgd_parts(b, eta, wd_scale, c, k0, k1, [&](int a, int z, float lr, float wd) {
        sgd_step(P + off, v, [g](int k) { return g[k]; }, lr, wd, c.momentum, c.nesterov, a, z);
    });
}

/* The SGD step of a BLOCK_FUSED block with this image's gradient computed on the fly from work
   (net::update_block_fused_sgd): no G written, read or cleared. */
static void sgd_block_fused(int b, float *P, float *V, const float *work, const float *image,
                            float eta, const cg_config &c, int k0, int k1) {
    sgd_parts(b, eta, 1.0f, c, k0, k1, [&](int a, int z, float lr, float wd) {
        net::update_block_fused_sgd(b, P, V, work, image, lr, wd, c.momentum, c.nesterov, a, z);
    });
}

}  // namespace chaos
