#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <atomic>
#include <new>
#include <sched.h>  // sched_yield (owner.hpp)
#include <omp.h>
#if defined(__INTEL_COMPILER)
#include <immintrin.h>  // _mm_malloc and _mm_free (runtime.hpp); with icc -mmic, the KNC header
#endif

#define CG_STR_(x) #x
#define CG_STR(x) CG_STR_(x)

/* Promise 64-byte alignment of a buffer base to the compiler: Intel's classic compilers take
   __assume_aligned; gcc and clang (and icx) take __builtin_assume_aligned. */
#if defined(__INTEL_COMPILER)
#define CG_ASSUME_ALIGNED(p) __assume_aligned((p), CG_ALIGN)
#define CG_UNROLL(n) _Pragma(CG_STR(unroll(n)))
#elif defined(__clang__)
#define CG_ASSUME_ALIGNED(p) (p) = static_cast<decltype(p)>(__builtin_assume_aligned((p), CG_ALIGN))
#define CG_UNROLL(n) _Pragma(CG_STR(unroll n))
#else
#define CG_ASSUME_ALIGNED(p) (p) = static_cast<decltype(p)>(__builtin_assume_aligned((p), CG_ALIGN))
#define CG_UNROLL(n) _Pragma(CG_STR(GCC unroll n))
#endif

/* LeCun's scaled tanh, A tanh(S x); its derivative in terms of y = f(x) is S/A (A^2 - y^2). */
#define CG_STANH_A 1.7159f
#define CG_STANH_S 0.66666667f
#define CG_STANH_DSCALE (CG_STANH_S / CG_STANH_A)

/* tanh as a rational function (the minimax form Eigen uses): plain arithmetic, so loops that
   call it vectorize, unlike libm's scalar tanhf. Max error against libm: see tests/test_codegen. */
static inline float cg_tanh(float x) {
    const float clamp = 7.90531110763549805f;
    x = x > clamp ? clamp : (x < -clamp ? -clamp : x);
    const float x2 = x * x;
    float p = -2.76076847742355e-16f;
    p = p * x2 + 2.00018790482477e-13f;
    p = p * x2 + -8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    float q = 1.19825839466702e-06f;
    q = q * x2 + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    return x * p / q;
}

/* A tanh(S x) as cg_tanh's rational with A and S folded into its coefficients (computed in
   double: p'_k = A S^(2k+1) p_k, q'_k = S^(2k) q_k; the clamp is cg_tanh's over S): two vector
   multiplications fewer per activation, which is most of a first layer's forward cost. */
static inline float cg_scaled_tanh(float x) {
    const float clamp = 11.8579663080583f;
    x = x > clamp ? clamp : (x < -clamp ? -clamp : x);
    const float x2 = x * x;
    float p = -2.434085124745557e-18f;
    p = p * x2 + 3.967884882330531e-15f;
    p = p * x2 + -3.840652863093362e-12f;
    p = p * x2 + 5.144202014650476e-09f;
    p = p * x2 + 3.357170531776428e-06f;
    p = p * x2 + 3.239934345250051e-04f;
    p = p * x2 + 5.597866027260839e-03f;
    float q = 1.051969149131267e-07f;
    q = q * x2 + 2.341426564288250e-05f;
    q = q * x2 + 1.008193230065886e-03f;
    q = q * x2 + 4.893525185543850e-03f;
    return x * p / q;
}
static inline float cg_sigmoid(float x) { return 0.5f + 0.5f * cg_tanh(0.5f * x); }

/* The convolution kernels' inner loop, written once: a register block of MB output planes, each a
   "wide row" span of K::SPAN values. Output position p of every block reads input
   p * K::P_STEP + ky * K::KY_STEP + kx * K::KX_STEP of each input plane, so one span covers several
   output rows (the columns between them are computed and thrown away) and the whole (row, column)
   loop is one vector loop of constant trip count: with the tap and map loops fully unrolled, gcc
   keeps acc in vector registers. K gives the shape (constants from codegen) and where weight
   (m, c, ky, kx) sits relative to w: m * K::W_M + c * K::W_C + ky * K::W_KY + kx * K::W_KX. */
template <class K, int MB>
static inline void cg_correlate(const float *__restrict w, const float *__restrict in,
                                float (&acc)[MB][K::SPAN]) {
    for (int c = 0; c < K::PLANES; ++c) {
        const float *__restrict plane = in + c * K::PLANE;
        for (int ky = 0; ky < K::KH; ++ky) {
            CG_UNROLL(16)
            for (int kx = 0; kx < K::KW; ++kx) {
                const float *__restrict src = plane + ky * K::KY_STEP + kx * K::KX_STEP;
                CG_UNROLL(32)
                for (int m = 0; m < MB; ++m) {
                    const float wv = w[m * K::W_M + c * K::W_C + ky * K::W_KY + kx * K::W_KX];
#pragma omp simd
                    for (int p = 0; p < K::SPAN; ++p) acc[m][p] += wv * src[p * K::P_STEP];
                }
            }
        }
    }
}
