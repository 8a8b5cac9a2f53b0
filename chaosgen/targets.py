"""Targets and compilers as data: what code to emit for an ISA, and how each compiler builds it."""

from __future__ import annotations

import functools
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field

from .errors import BuildError, UsageError


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """An instruction set and what the generated code assumes of it."""

    name: str
    isa: str
    vector_width: int  # floats per vector register
    align: int  # bytes; buffers are aligned to this and the compiler is told so
    accumulators: int  # vector registers a kernel may hold accumulators in
    host: bool  # built code runs (and loads) on this kind of host
    description: str
    march: dict[str, tuple[str, ...]] = field(default_factory=dict)  # compiler family -> ISA flags


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            name="avx512", isa="AVX-512", vector_width=16, align=64, accumulators=24, host=True,
            description="x86-64 with AVX-512 (Skylake-SP and later, Zen 4/5)",
            march={
                # gcc and clang default to 256-bit vectors on AVX-512 parts (frequency worries of
                # early Skylake); our kernels are built for 512-bit rows, so ask for them.
                "gnu": ("-march=skylake-avx512", "-mprefer-vector-width=512"),
                "intel": ("-xCORE-AVX512", "-qopt-zmm-usage=high"),
                "intel-llvm": ("-xCORE-AVX512", "-mprefer-vector-width=512"),
            },
        ),
        Target(
            name="avx2", isa="AVX2+FMA", vector_width=8, align=64, accumulators=12, host=True,
            description="x86-64 with AVX2 and FMA (Haswell and later, Zen 1-3)",
            march={"gnu": ("-march=haswell",), "intel": ("-xCORE-AVX2",), "intel-llvm": ("-xCORE-AVX2",)},
        ),
        Target(
            name="generic", isa="SSE2", vector_width=4, align=64, accumulators=12, host=True,
            description="any x86-64 (SSE2 baseline)",
            march={"gnu": ("-march=x86-64", "-mtune=generic"), "intel": (), "intel-llvm": ()},
        ),
        Target(
            name="knl", isa="AVX-512 (MIC)", vector_width=16, align=64, accumulators=24, host=False,
            description="Xeon Phi x200 Knights Landing (self-booting, runs AVX-512 code natively)",
            march={"gnu": ("-march=knl",), "intel": ("-xMIC-AVX512",), "intel-llvm": ("-xMIC-AVX512",)},
        ),
        Target(
            name="knc", isa="IMCI (KNC 512-bit)", vector_width=16, align=64, accumulators=24,
            host=False,
            description="Xeon Phi x100 Knights Corner coprocessor, native mode (icc -mmic, "
            "cross-compiled; its 512-bit ISA is not AVX-512)",
            # Only Intel's classic compiler up to version 17 generates KNC code.
            march={"intel": ("-mmic",)},
        ),
    )
}


def host_flags() -> set[str]:
    """CPU feature flags of this machine (empty where /proc/cpuinfo is unavailable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    """The CPU's model name, for logs."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_target() -> Target:
    """The host's widest vector ISA, built with -march=native (gcc/clang) or -xHost (Intel)."""
    flags = host_flags()
    base = TARGETS["avx512"] if "avx512f" in flags else TARGETS["avx2"] if "avx2" in flags else TARGETS["generic"]
    extra = ("-mprefer-vector-width=512",) if base.name == "avx512" else ()
    return Target(
        name="native", isa=base.isa, vector_width=base.vector_width, align=base.align,
        accumulators=base.accumulators, host=True,
        description=f"this machine ({base.isa}), -march=native",
        march={"gnu": ("-march=native", *extra), "intel": ("-xHost",), "intel-llvm": ("-xHost",)},
    )


def get_target(name: str) -> Target:
    """Look a target up by name ('native' is this machine)."""
    if name == "native":
        return native_target()
    if name not in TARGETS:
        raise UsageError(f"unknown target '{name}'; expected one of native, {', '.join(TARGETS)}")
    return TARGETS[name]


@dataclass(frozen=True, slots=True, kw_only=True)
class Compiler:
    """A C++ compiler: how to call it, with which flags, and why."""

    name: str
    family: str  # "gnu" (gcc, clang), "intel" (icc classic), "intel-llvm" (icx)
    cxx: str  # executable
    base_flags: tuple[str, ...]
    openmp: tuple[str, ...]
    note: str

    def resolve(self) -> str | None:
        """Absolute path of the executable, or None if not installed."""
        return shutil.which(self.cxx)

    def flags(self, target: Target) -> tuple[str, ...]:
        """Every flag for building `target` as a shared library (or a program, without -shared)."""
        if self.family not in target.march:
            raise BuildError(
                f"compiler '{self.name}' cannot build target '{target.name}' "
                f"(it needs one of: {', '.join(c.name for c in COMPILERS.values() if c.family in target.march)})"
            )
        return (*self.base_flags, *target.march[self.family], *self.openmp)

    def version(self) -> str:
        """First line of `cxx --version` (part of the build cache key)."""
        return _version(self.resolve() or self.cxx)


@functools.cache
def _version(path: str) -> str:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else "unknown"


# -O3: vectorizer and full unrolling of constant-trip loops. -fPIC: a shared library for cffi.
# -ffp-contract=fast: let a*b+c become one FMA (gcc's default outside ISO mode; clang needs it).
# No -ffast-math: it would let the compiler drop NaN/inf checks that stop a diverging run.
_GNU = ("-O3", "-std=c++17", "-fPIC", "-ffp-contract=fast")
COMPILERS: dict[str, Compiler] = {
    c.name: c
    for c in (
        Compiler(name="gcc", family="gnu", cxx="g++", base_flags=_GNU, openmp=("-fopenmp",),
                 note="GNU g++"),
        Compiler(name="clang", family="gnu", cxx="clang++", base_flags=_GNU, openmp=("-fopenmp",),
                 note="LLVM clang++ (needs libomp: apt-get install clang libomp-dev)"),
        # -qopenmp replaces the deprecated -openmp; -std=c++11 is the newest that icc 15-17 know.
        Compiler(name="icc", family="intel", cxx="icpc", base_flags=("-O3", "-std=c++11", "-fPIC", "-fp-model", "fast=1"),
                 openmp=("-qopenmp",), note="Intel C++ Compiler classic (icc <= 17 for -mmic)"),
        Compiler(name="icx", family="intel-llvm", cxx="icpx", base_flags=("-O3", "-std=c++17", "-fPIC"),
                 openmp=("-qopenmp",), note="Intel oneAPI DPC++/C++ (icpx)"),
    )
}


def get_compiler(name: str | None = None) -> Compiler:
    """By name (gcc, clang, icc, icx); else from $CXX, or $CC mapped to its C++ driver; else gcc."""
    if name is None and (os.environ.get("CXX") or os.environ.get("CC")):
        cxx = os.environ.get("CXX") or _cxx_of(os.environ["CC"])
        base = os.path.basename(cxx)
        kind = next((k for k, pat in _FAMILY_OF_EXE if re.search(pat, base)), "gcc")
        c = COMPILERS[kind]
        return Compiler(name=c.name, family=c.family, cxx=cxx, base_flags=c.base_flags,
                        openmp=c.openmp, note=f"{c.note} (from $CXX/$CC)")
    name = name or "gcc"
    if name not in COMPILERS:
        raise UsageError(f"unknown compiler '{name}'; expected one of {', '.join(COMPILERS)}")
    return COMPILERS[name]


_FAMILY_OF_EXE = (("clang", r"clang"), ("icx", r"icpx|icx"), ("icc", r"icpc|icc"))


def _cxx_of(cc: str) -> str:
    """The C++ driver beside a C compiler: gcc -> g++, clang -> clang++, icc -> icpc, icx -> icpx."""
    for c_name, cxx_name in (("clang", "clang++"), ("gcc", "g++"), ("icc", "icpc"), ("icx", "icpx")):
        base = os.path.basename(cc)
        if base.startswith(c_name) and "++" not in base:
            return os.path.join(os.path.dirname(cc), base.replace(c_name, cxx_name, 1))
    return cc


def default_compiler_for(target: Target) -> Compiler:
    """gcc, except for targets only Intel's compiler builds (knc)."""
    if "gnu" in target.march:
        return get_compiler(None)
    return COMPILERS["icc"]
