/* FFT convolutions (conv_fft.j2) with FFTW, single precision (libfftw3f; on KNC, MKL's FFTW
   interface). Each such layer makes its plans once, when the library (or program) is loaded:
   static initialisation runs on one thread, before any worker, so FFTW's planner (which is not
   thread-safe) is never called concurrently; the workers then run the plans on their own buffers
   with the new-array execute functions, which are thread-safe. FFTW_ESTIMATE: a plan chosen
   without timing, so the same on every run and machine load (FFTW_MEASURE's choice, and with it
   the rounding of every result, would vary from run to run; docs/kernels.md). */
#if defined(__MIC__)
#include <fftw/fftw3.h>  // MKL's FFTW3 interface (icc -mmic -mkl; under $MKLROOT/include)
#else
#include <fftw3.h>  // libfftw3-dev
#endif
#include <cstdio>

/* A plan of `howmany` r2c (forward) or c2r transforms of size n[0] x ... x n[rank - 1], real
   planes `real_pitch` floats apart, spectra `spectrum_pitch` floats apart. Planned on buffers
   with the alignment of the work buffers (CG_ALIGN), as the new-array execute functions need. */
static fftwf_plan cg_fft_plan(bool forward, int rank, const int *n, int howmany, int real_pitch,
                              int spectrum_pitch) {
    void *re = nullptr, *sp = nullptr;
    const size_t re_bytes = sizeof(float) * real_pitch * howmany;
    const size_t sp_bytes = sizeof(float) * spectrum_pitch * howmany;
    fftwf_plan p = nullptr;
    if (posix_memalign(&re, CG_ALIGN, re_bytes) == 0 && posix_memalign(&sp, CG_ALIGN, sp_bytes) == 0) {
        float *r = static_cast<float *>(re);
        fftwf_complex *c = static_cast<fftwf_complex *>(sp);
        p = forward ? fftwf_plan_many_dft_r2c(rank, n, howmany, r, nullptr, 1, real_pitch, c, nullptr, 1,
                                              spectrum_pitch / 2, FFTW_ESTIMATE)
                    : fftwf_plan_many_dft_c2r(rank, n, howmany, c, nullptr, 1, spectrum_pitch / 2, r,
                                              nullptr, 1, real_pitch, FFTW_ESTIMATE);
    }
    std::free(re);
    std::free(sp);
    if (!p) {  // only out of memory: FFTW_ESTIMATE plans every size
        std::fprintf(stderr, "chaosgen: FFTW could not plan a transform (out of memory?)\n");
        std::abort();
    }
    return p;
}
