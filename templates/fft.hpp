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

#define CG_FFT_MAX_RANK 3

/* `howmany` transforms of size n[0] x ... x n[rank - 1] between real planes `real_pitch` floats
   apart and spectra `spectrum_pitch` floats apart (r2c: n[0] x ... x (n[rank-1] / 2 + 1) complex
   values), pruned to a box: the real planes are zero outside box[0] x ... x box[rank - 2] (r2c),
   or only that box of them is wanted (c2r). Computed one dimension at a time (the last by r2c or
   c2r, the others by complex transforms in place), each over the lines the box needs: a 5x5
   kernel in a 64x64 plane needs 5 row transforms, not 64. Where the box saves less than half
   the lines (an input map in its plane), and with MKL (KNC), one plain multi-dimensional plan. */
struct CgFft {
    fftwf_plan last = nullptr;  // r2c or c2r along the last dimension
    fftwf_plan lines[CG_FFT_MAX_RANK - 1] = {};  // complex, along dimension d, in place
    int rank = 0;
    bool forward = true, pruned = false;
    int spectrum_floats = 0;  // howmany x spectrum_pitch
};

static void cg_fft_failed() {  // only out of memory: FFTW_ESTIMATE plans every size
    std::fprintf(stderr, "chaosgen: FFTW could not plan a transform (out of memory?)\n");
    std::abort();
}

/* One plan over whole planes (howmany multi-dimensional transforms). */
static fftwf_plan cg_fft_plan_whole(bool forward, int rank, const int *n, int howmany, int real_pitch,
                                    int spectrum_pitch, float *r, fftwf_complex *c) {
    return forward ? fftwf_plan_many_dft_r2c(rank, n, howmany, r, nullptr, 1, real_pitch, c, nullptr, 1,
                                             spectrum_pitch / 2, FFTW_ESTIMATE)
                   : fftwf_plan_many_dft_c2r(rank, n, howmany, c, nullptr, 1, spectrum_pitch / 2, r, nullptr,
                                             1, real_pitch, FFTW_ESTIMATE);
}

/* The pruned plans: along the last dimension (r2c, c2r) over the box's lines; then along each
   other dimension d in place, over the box in the dimensions before d and all of those after. */
static void cg_fft_plan_pruned(CgFft &p, const int *n, const int *box, int howmany, int real_pitch,
                               int spectrum_pitch, float *r, fftwf_complex *c) {
    const int rank = p.rank;
    int rs[CG_FFT_MAX_RANK], cs[CG_FFT_MAX_RANK];  // element strides of each dimension (real, complex)
    rs[rank - 1] = cs[rank - 1] = 1;
    for (int d = rank - 2; d >= 0; --d) {
        rs[d] = rs[d + 1] * n[d + 1];
        cs[d] = cs[d + 1] * (d + 1 == rank - 1 ? n[d + 1] / 2 + 1 : n[d + 1]);
    }
    const bool fw = p.forward;
    fftwf_iodim last = {n[rank - 1], 1, 1}, many[CG_FFT_MAX_RANK];
    many[0] = fw ? fftwf_iodim{howmany, real_pitch, spectrum_pitch / 2} : fftwf_iodim{howmany, spectrum_pitch / 2, real_pitch};
    for (int d = 0; d + 1 < rank; ++d) many[d + 1] = fw ? fftwf_iodim{box[d], rs[d], cs[d]} : fftwf_iodim{box[d], cs[d], rs[d]};
    p.last = fw ? fftwf_plan_guru_dft_r2c(1, &last, rank, many, r, c, FFTW_ESTIMATE)
                : fftwf_plan_guru_dft_c2r(1, &last, rank, many, c, r, FFTW_ESTIMATE);
    if (!p.last) cg_fft_failed();
    for (int d = 0; d + 1 < rank; ++d) {
        fftwf_iodim line = {n[d], cs[d], cs[d]}, other[CG_FFT_MAX_RANK];
        int k = 0;
        other[k++] = fftwf_iodim{howmany, spectrum_pitch / 2, spectrum_pitch / 2};
        for (int e = 0; e < rank; ++e)
            if (e != d) other[k++] = fftwf_iodim{e < d ? box[e] : e == rank - 1 ? n[e] / 2 + 1 : n[e], cs[e], cs[e]};
        p.lines[d] = fftwf_plan_guru_dft(1, &line, k, other, c, c, fw ? FFTW_FORWARD : FFTW_BACKWARD, FFTW_ESTIMATE);
        if (!p.lines[d]) cg_fft_failed();
    }
}

static CgFft cg_fft_plan(bool forward, int rank, const int *n, const int *box, int howmany,
                         int real_pitch, int spectrum_pitch) {
    CgFft p;
    p.rank = rank;
    p.forward = forward;
    p.spectrum_floats = howmany * spectrum_pitch;
    long lines = 1, kept = 1;  // of the lines along the last dimension, those in the box
    for (int d = 0; d + 1 < rank; ++d) lines *= n[d], kept *= box[d];
#if !defined(__MIC__)  // MKL's guru interface takes fewer howmany dimensions: not used there
    p.pruned = 2 * kept <= lines;
#endif
    void *re = nullptr, *sp = nullptr;  // planned on buffers aligned as the work buffers are
    if (posix_memalign(&re, CG_ALIGN, sizeof(float) * real_pitch * howmany) != 0 ||
        posix_memalign(&sp, CG_ALIGN, sizeof(float) * spectrum_pitch * howmany) != 0)
        cg_fft_failed();
    float *r = static_cast<float *>(re);
    fftwf_complex *c = static_cast<fftwf_complex *>(sp);
    if (p.pruned)
        cg_fft_plan_pruned(p, n, box, howmany, real_pitch, spectrum_pitch, r, c);
    else if (!(p.last = cg_fft_plan_whole(forward, rank, n, howmany, real_pitch, spectrum_pitch, r, c)))
        cg_fft_failed();
    std::free(re);
    std::free(sp);
    return p;
}

/* spectra := the transforms of the real planes (which are zero outside the plan's box). */
static void cg_fft_r2c(const CgFft &p, float *re, float *spectra) {
    fftwf_complex *c = reinterpret_cast<fftwf_complex *>(spectra);
    if (p.pruned) std::memset(spectra, 0, sizeof(float) * p.spectrum_floats);  // lines outside the box
    fftwf_execute_dft_r2c(p.last, re, c);
    if (p.pruned)
        for (int d = p.rank - 2; d >= 0; --d) fftwf_execute_dft(p.lines[d], c, c);
}

/* The real planes, within the plan's box (elsewhere: undefined), := the inverse transforms of
   the spectra (not normalised), which are overwritten. */
static void cg_fft_c2r(const CgFft &p, float *spectra, float *re) {
    fftwf_complex *c = reinterpret_cast<fftwf_complex *>(spectra);
    if (p.pruned)
        for (int d = 0; d + 1 < p.rank; ++d) fftwf_execute_dft(p.lines[d], c, c);
    fftwf_execute_dft_c2r(p.last, c, re);
}
