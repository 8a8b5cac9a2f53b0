"""FP32 peak of this machine: a small FMA kernel, compiled with g++ at run time, 1..N threads.

Each thread runs independent chains of fused multiply-adds on ACC vector registers (more than
latency x throughput of any current x86 core, so the FMA pipes never wait on a result).

    python bench/peak.py            # 1 and 2 threads
    python bench/peak.py --threads 1,2,4 --seconds 1
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ACC = 12  # independent accumulator vectors per thread (>= 8: FMA latency 4 x 2 pipes on Zen/Intel)
WIDTH = 16  # floats per vector (512 bits); on AVX2-only hosts gcc splits it into two ymm

KERNEL = r"""
#include <omp.h>
typedef float vf __attribute__((vector_size(4 * WIDTH)));

/* ACC independent FMA chains, `iters` rounds; returns a value so nothing is optimized away. */
static float chains(long iters, float seed) {
    vf acc[ACC];
    vf a, b;
    for (int k = 0; k < WIDTH; ++k) { a[k] = 0.999f; b[k] = 1e-6f * seed; }
    for (int r = 0; r < ACC; ++r) acc[r] = a * (float)(r + 1) * seed;
    for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 64
        for (int r = 0; r < ACC; ++r) acc[r] = acc[r] * a + b;
        __asm__ volatile("" : "+v"(a));  // keep `a` in a register, opaque to the optimizer
    }
    float s = 0.0f;
    for (int r = 0; r < ACC; ++r)
        for (int k = 0; k < WIDTH; ++k) s += acc[r][k];
    return s;
}

/* Seconds for `iters` rounds on each of `threads` threads (all start together). */
extern "C" double run(long iters, int threads, float *sink) {
    double t = 0.0;
#pragma omp parallel num_threads(threads)
    {
#pragma omp barrier
        const double t0 = omp_get_wtime();
        const float s = chains(iters, 1.0f + omp_get_thread_num());
#pragma omp barrier
        const double t1 = omp_get_wtime();
#pragma omp master
        { t = t1 - t0; *sink = s; }
    }
    return t;
}
"""


def flops_per_iter() -> int:
    """FLOPs of one round on one thread: ACC vectors x WIDTH lanes x 2 (multiply and add)."""
    return ACC * WIDTH * 2


def build(march: str = "native") -> ctypes.CDLL:
    """Compile the kernel (cached by source and flags in the temp directory) and load it."""
    flags = [
        "-O3",
        f"-march={march}",
        "-mprefer-vector-width=512",
        "-fopenmp",
        "-fPIC",
        "-shared",
        f"-DACC={ACC}",
        f"-DWIDTH={WIDTH}",
    ]
    key = hashlib.sha256((KERNEL + " ".join(flags)).encode()).hexdigest()[:12]
    lib = Path(tempfile.gettempdir()) / f"chaosgen-peak-{key}.so"
    if not lib.exists():
        src = lib.with_suffix(".cpp")
        src.write_text(KERNEL)
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run(["g++", *flags, "-o", str(tmp), str(src)], check=True)
        os.replace(tmp, lib)
    dll = ctypes.CDLL(str(lib))
    dll.run.restype = ctypes.c_double
    dll.run.argtypes = (ctypes.c_long, ctypes.c_int, ctypes.POINTER(ctypes.c_float))
    return dll


def peak_gflops(threads: int, seconds: float = 0.5, repeats: int = 5) -> float:
    """Best of `repeats` runs of about `seconds` each: GFLOP/s summed over the threads."""
    dll = build()
    sink = ctypes.c_float()
    iters = 1 << 16
    while dll.run(iters, threads, ctypes.byref(sink)) < seconds / 4:  # calibrate the length
        iters *= 2
    t = dll.run(iters, threads, ctypes.byref(sink))
    iters = max(1, int(iters * seconds / t))
    best = min(dll.run(iters, threads, ctypes.byref(sink)) for _ in range(repeats))
    return iters * flops_per_iter() * threads / best / 1e9


def main() -> int:
    """Print the peak for each thread count."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--seconds", type=float, default=0.5, help="length of one timed run")
    args = ap.parse_args()
    for t in (int(v) for v in args.threads.split(",")):
        print(
            f"{t} thread{'s' if t > 1 else ' '}: {peak_gflops(t, args.seconds):8.1f} GFLOP/s FP32"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
