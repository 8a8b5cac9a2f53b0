"""Targets and compilers as data: what code to emit for an ISA, and how each compiler builds it.

A `Target` is an instruction set and what the generated code may assume of it; a `Compiler` is a
driver, its flags, and `FlagRule`s for the flags that only some of its versions know (in the
manner of Devito's compiler classes, with the reason beside every flag). `flags(target)` gives
the exact flags for one (compiler, target, version); a pair the compiler cannot build is a
`BuildError` that names the compilers that can.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field

from . import child
from .errors import BuildError, UsageError

VERSION_TIMEOUT_S = 30.0  # for `<compiler> --version`; it answers in milliseconds


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """An instruction set and what the generated code assumes of it."""

    name: str
    isa: str
    vector_width: int  # floats per vector register
    align: int  # bytes; buffers are aligned to this and the compiler is told so
    accumulators: int  # vector registers a kernel may hold accumulators in
    host: bool  # chaosgen builds a library and loads it here; False: it emits a native program
    description: str
    # /proc/cpuinfo flags the built code needs (what -march implies that we can check); empty
    # with host=False means the code never runs on a host CPU (a coprocessor).
    cpu_flags: tuple[str, ...] = ()
    march: dict[str, tuple[str, ...]] = field(default_factory=dict)  # compiler family -> flags
    # The core the kernels are blocked for. A named target assumes a typical core of its ISA
    # (32 KB L1d, one full-width FMA per cycle: what every golden file was generated with);
    # `native` reads this machine's (host_l1d_bytes, host_fma_pipes).
    l1d_bytes: int = 32768  # level-1 data cache per core
    fma_pipes: int = 1  # full-width (vector_width floats) FMAs issued per cycle

    def runs_here(self) -> bool:
        """Whether code built for this target can run on this machine's CPU."""
        return bool(self.cpu_flags) and set(self.cpu_flags) <= host_flags()


# KNL has AVX-512 F, CD, ER and PF, but not the BW, DQ and VL of the Xeons: AVX-512 Xeon code
# dies on it (and KNL code with ER/PF on a Xeon).
_KNL_FLAGS = ("avx512f", "avx512cd", "avx512er", "avx512pf")

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            name="avx512",
            isa="AVX-512",
            vector_width=16,
            align=64,
            accumulators=24,
            host=True,
            description="x86-64 with AVX-512 (Skylake-SP and later, Zen 4/5)",
            cpu_flags=("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma"),
            march={
                # gcc and clang default to 256-bit vectors on AVX-512 parts (frequency worries of
                # early Skylake); our kernels are built for 512-bit rows, so ask for them.
                "gnu": ("-march=skylake-avx512", "-mprefer-vector-width=512"),
                # icc's counterpart (icc >= 18; see FlagRule below for icc 17).
                "intel": ("-xCORE-AVX512", "-qopt-zmm-usage=high"),
                "intel-llvm": ("-xCORE-AVX512", "-mprefer-vector-width=512"),
            },
        ),
        Target(
            name="avx2",
            isa="AVX2+FMA",
            vector_width=8,
            align=64,
            accumulators=12,
            host=True,
            description="x86-64 with AVX2 and FMA (Haswell and later, Zen 1-3)",
            cpu_flags=("avx2", "fma", "bmi1", "bmi2", "f16c", "movbe"),
            march={
                "gnu": ("-march=haswell",),
                "intel": ("-xCORE-AVX2",),
                "intel-llvm": ("-xCORE-AVX2",),
            },
        ),
        Target(
            name="generic",
            isa="SSE2",
            vector_width=4,
            align=64,
            accumulators=12,
            host=True,
            description="any x86-64 (SSE2 baseline)",
            cpu_flags=("sse2",),
            march={"gnu": ("-march=x86-64", "-mtune=generic"), "intel": (), "intel-llvm": ()},
        ),
        Target(
            name="knl",
            isa="AVX-512 (MIC)",
            vector_width=16,
            align=64,
            accumulators=24,
            host=False,
            description="Xeon Phi x200 Knights Landing (self-booting, runs AVX-512 code natively)",
            cpu_flags=_KNL_FLAGS,
            # icx has no KNL target; gcc < 15 and clang know -march=knl (FlagRule for gcc 15).
            march={"gnu": ("-march=knl",), "intel": ("-xMIC-AVX512",)},
        ),
        Target(
            name="knc",
            isa="IMCI (KNC 512-bit)",
            vector_width=16,
            align=64,
            accumulators=24,
            host=False,
            description="Xeon Phi x100 Knights Corner coprocessor, native mode (icc -mmic, "
            "cross-compiled; its 512-bit ISA is not AVX-512)",
            # Only Intel's classic compiler, up to version 17, generates KNC code.
            march={"intel": ("-mmic",)},
        ),
    )
}


@functools.cache
def host_flags() -> frozenset[str]:
    """CPU feature flags of this machine (empty where /proc/cpuinfo is unavailable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _cache_bytes(text: str) -> int | None:
    """'48K' / '2048K' / '1M' / '32768' (sysfs cache sizes) in bytes; None if unreadable."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)B?\s*", text, re.I)
    if not m:
        return None
    return int(m[1]) << {"": 0, "K": 10, "M": 20, "G": 30}[m[2].upper()]


DEFAULT_L1D_BYTES = 32768  # where the machine does not say (x86 cores since Core 2: 32-48 KB)


@functools.cache
def host_l1d_bytes(base: str = "/sys/devices/system/cpu/cpu0/cache") -> int:
    """This machine's level-1 data cache per core, from Linux's cache description `base` (the
    index of level 1 and type Data or Unified); DEFAULT_L1D_BYTES where it does not say."""

    def read(index: str, name: str) -> str:
        with open(f"{base}/{index}/{name}") as f:
            return f.read().strip()

    try:
        for index in sorted(d for d in os.listdir(base) if d.startswith("index")):
            if read(index, "level") == "1" and read(index, "type") in ("Data", "Unified"):
                size = _cache_bytes(read(index, "size"))
                if size:
                    return size
    except OSError:
        pass
    return DEFAULT_L1D_BYTES


@functools.cache
def _cpu_identity() -> tuple[str, int]:
    """(vendor_id, cpu family) of /proc/cpuinfo; ("", 0) where unavailable."""
    vendor, family = "", 0
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "vendor_id" and not vendor:
                    vendor = value.strip()
                elif key == "cpu family" and not family:
                    family = int(value.strip() or 0)
                if vendor and family:
                    break
    except (OSError, ValueError):
        pass
    return vendor, family


def host_fma_pipes(vector_width: int) -> int:
    """Full-width FMAs this core issues per cycle at `vector_width` floats, from its vendor,
    family and flags. Every x86 core with FMA since Haswell and Zen 1 has two FMA pipes of its
    native width, except: AMD's Zen 4 (family 0x19 with AVX-512) has 256-bit pipes, so one
    512-bit FMA per cycle; Zen 1 (family 0x17) has 128-bit pipes, so one 256-bit FMA per cycle.
    SSE code has no FMA: a multiply and an add, one pair per cycle. (Intel's AVX-512 parts with
    one 512-bit FMA unit, some Xeon Bronze and Silver, cannot be told from their flags: they get
    2, which only makes the cost model favour more accumulators.)"""
    if "fma" not in host_flags() or vector_width <= 4:
        return 1
    vendor, family = _cpu_identity()
    if vendor == "AuthenticAMD":
        if vector_width == 16 and family == 0x19:
            return 1
        if vector_width == 8 and family == 0x17:
            return 1
    return 2


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
    base = next(
        (TARGETS[n] for n in ("avx512", "avx2") if TARGETS[n].runs_here()), TARGETS["generic"]
    )
    extra = ("-mprefer-vector-width=512",) if base.name == "avx512" else ()
    return Target(
        name="native",
        isa=base.isa,
        vector_width=base.vector_width,
        align=base.align,
        accumulators=base.accumulators,
        host=True,
        description=f"this machine ({base.isa}), -march=native",
        cpu_flags=base.cpu_flags,
        march={"gnu": ("-march=native", *extra), "intel": ("-xHost",), "intel-llvm": ("-xHost",)},
        l1d_bytes=host_l1d_bytes(),
        fma_pipes=host_fma_pipes(base.vector_width),
    )


def get_target(name: str) -> Target:
    """Look a target up by name ('native' is this machine)."""
    if name == "native":
        return native_target()
    if name not in TARGETS:
        raise UsageError(f"unknown target '{name}'; expected one of native, {', '.join(TARGETS)}")
    return TARGETS[name]


Version = tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class FlagRule:
    """A flag that only versions since..until (exclusive) of a compiler know, and what to pass
    elsewhere instead (None: the target cannot be built with such a version at all)."""

    flag: str
    since: Version = (0,)
    until: Version | None = None
    instead: tuple[str, ...] | None = ()
    why: str

    def applies(self, version: Version) -> bool:
        """Whether `version` lacks the flag."""
        return version < self.since or (self.until is not None and version >= self.until)


@dataclass(frozen=True, slots=True, kw_only=True)
class Compiler:
    """A C++ compiler: how to call it, with which flags, and why."""

    name: str
    family: str  # "gnu" (gcc, clang), "intel" (icc classic), "intel-llvm" (icx)
    cxx: str  # executable
    base_flags: tuple[str, ...]
    openmp: tuple[str, ...]
    note: str
    install: str = ""  # how to get it, for messages
    rules: tuple[FlagRule, ...] = ()
    user_flags: tuple[str, ...] = ()  # from $CXX after the compiler: last, so they win

    def resolve(self) -> str | None:
        """Absolute path of the executable, or None if not installed."""
        return shutil.which(self.cxx)

    def flags(
        self, target: Target, version: Version | None | str = "installed"
    ) -> tuple[str, ...]:
        """Every flag for building `target` as a shared library, for `version` of this compiler
        ("installed": the one on PATH; None, or not installed: the flags as written)."""
        if self.family not in target.march:
            able = [c.name for c in COMPILERS.values() if c.family in target.march]
            raise BuildError(
                f"compiler '{self.name}' cannot build target '{target.name}' "
                f"(it needs one of: {', '.join(able)})"
            )
        if version == "installed":
            version = self.version_tuple()
        flags: list[str] = []
        for flag in (*self.base_flags, *target.march[self.family], *self.openmp):
            rule = next((r for r in self.rules if r.flag == flag), None)
            if version is None or rule is None or not rule.applies(version):
                flags.append(flag)
            elif rule.instead is None:
                raise BuildError(
                    f"{self.name} {'.'.join(map(str, version))} cannot build target "
                    f"'{target.name}': {rule.why}"
                )
            else:
                flags.extend(rule.instead)
        return (*flags, *self.user_flags)

    def program_flags(
        self, target: Target, version: Version | None | str = "installed"
    ) -> tuple[str, ...]:
        """The flags for a standalone program: the library's, less what only a library needs."""
        return tuple(f for f in self.flags(target, version) if f not in LIBRARY_ONLY_FLAGS)

    def version(self) -> str:
        """First line of `cxx --version` (part of the build cache key)."""
        return _version(self.resolve() or self.cxx)

    def version_tuple(self) -> Version | None:
        """The installed version as numbers, e.g. (12, 2, 0); None if not installed."""
        return parse_version(self.version()) if self.resolve() else None


def parse_version(text: str) -> Version | None:
    """The first dotted number in a `--version` line: 'g++ (GCC) 12.2.0' -> (12, 2, 0)."""
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(g) for g in m.groups() if g is not None) if m else None


@functools.cache
def _version(path: str) -> str:
    try:  # a compiler that hangs here is stopped, its whole process group with it
        out = child.run([path, "--version"], timeout=VERSION_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = out.stdout or out.stderr
    return text.splitlines()[0].strip() if text else "unknown"


# -fPIC: position-independent code, which a shared library needs and a program does not.
LIBRARY_ONLY_FLAGS = frozenset({"-fPIC"})

# -O3: vectorizer and full unrolling of constant-trip loops. -fPIC: a shared library for cffi.
# -ffp-contract=fast: let a*b+c become one FMA (gcc's default outside ISO mode; clang needs it).
# No -ffast-math: it would let the compiler drop NaN/inf checks that stop a diverging run.
_GNU = ("-O3", "-std=c++17", "-fPIC", "-ffp-contract=fast")
COMPILERS: dict[str, Compiler] = {
    c.name: c
    for c in (
        Compiler(
            name="gcc",
            family="gnu",
            cxx="g++",
            base_flags=_GNU,
            openmp=("-fopenmp",),
            note="GNU g++",
            install="apt-get install g++",
            rules=(
                FlagRule(
                    flag="-march=knl",
                    until=(15,),
                    # KNL runs everything Haswell does, plus AVX-512 F and CD (not BW/DQ/VL).
                    instead=("-march=haswell", "-mavx512f", "-mavx512cd"),
                    why="GCC 15 removed the Xeon Phi CPUs (-march=knl)",
                ),
            ),
        ),
        Compiler(
            name="clang",
            family="gnu",
            cxx="clang++",
            base_flags=_GNU,
            openmp=("-fopenmp",),
            note="LLVM clang++ (with libomp)",
            install="apt-get install clang libomp-dev",
        ),
        # -qopenmp replaces the deprecated -openmp; -std=c++11 is the newest that icc 15-17
        # know fully. -fp-model fast=1 is icc's default, written out because it allows the FMA
        # contraction gcc gets from -ffp-contract=fast.
        Compiler(
            name="icc",
            family="intel",
            cxx="icpc",
            base_flags=("-O3", "-std=c++11", "-fPIC", "-fp-model", "fast=1"),
            openmp=("-qopenmp",),
            note="Intel C++ Compiler classic (icc <= 17 for -mmic)",
            install="Intel Composer XE 2013-2017 (icc <= 17 for KNC), then: "
            "source <dir>/bin/compilervars.sh intel64",
            rules=(
                FlagRule(
                    flag="-mmic",
                    until=(18,),
                    instead=None,
                    # icc 14 is the oldest with OpenMP 4 (#pragma omp simd) the kernels use.
                    why="Intel dropped Knights Corner after icc 17 (Parallel Studio XE 2017); "
                    "build with icc 14-17",
                ),
                FlagRule(
                    flag="-qopenmp",
                    since=(15,),
                    instead=("-openmp",),  # icc 14 (Composer XE 2013 SP1) knows only this one
                    why="the -q spelling of OpenMP came with icc 15",
                ),
                FlagRule(
                    flag="-qopt-zmm-usage=high",
                    since=(18,),
                    # icc 17 has no such switch; its -xCORE-AVX512 code uses zmm registers anyway.
                    why="-qopt-zmm-usage appeared in icc 18",
                ),
            ),
        ),
        Compiler(
            name="icx",
            family="intel-llvm",
            cxx="icpx",
            base_flags=("-O3", "-std=c++17", "-fPIC"),
            openmp=("-qopenmp",),
            note="Intel oneAPI DPC++/C++ (icpx)",
            install="Intel oneAPI HPC toolkit, then: source /opt/intel/oneapi/setvars.sh",
        ),
    )
}


def get_compiler(name: str | None = None) -> Compiler:
    """By name (gcc, clang, icc, icx); else from $CXX, or $CC mapped to its C++ driver; or gcc.
    $CXX may carry flags after the compiler ("g++ -march=znver4"), as make reads it: they come after
    chaosgen's flags, so they win. Raises UsageError for an unknown name or an unreadable $CXX."""
    if name is None and (os.environ.get("CXX", "").strip() or os.environ.get("CC", "").strip()):
        var = "CXX" if os.environ.get("CXX", "").strip() else "CC"
        try:  # as make and CMake read it: the compiler, then flags for every build
            words = shlex.split(os.environ[var])
        except ValueError as e:
            raise UsageError(f"${var} cannot be read as a command ({e}): {os.environ[var]!r}")
        cxx = words[0] if var == "CXX" else _cxx_of(words[0])
        base = os.path.basename(cxx)
        kind = next((k for k, pat in _FAMILY_OF_EXE if re.search(pat, base)), "gcc")
        c = COMPILERS[kind]
        return Compiler(
            name=c.name,
            family=c.family,
            cxx=cxx,
            base_flags=c.base_flags,
            openmp=c.openmp,
            note=f"{c.note} (from $CXX/$CC)",
            install=c.install,
            rules=c.rules,
            user_flags=tuple(words[1:]),
        )
    name = name or "gcc"
    if name not in COMPILERS:
        raise UsageError(f"unknown compiler '{name}'; expected one of {', '.join(COMPILERS)}")
    return COMPILERS[name]


_FAMILY_OF_EXE = (("clang", r"clang"), ("icx", r"icpx|icx"), ("icc", r"icpc|icc"))


def _cxx_of(cc: str) -> str:
    """The C++ driver of a C compiler: gcc -> g++, clang -> clang++, icc -> icpc, icx -> icpx."""
    pairs = (("clang", "clang++"), ("gcc", "g++"), ("icc", "icpc"), ("icx", "icpx"))
    for c_name, cxx_name in pairs:
        base = os.path.basename(cc)
        if base.startswith(c_name) and "++" not in base:
            return os.path.join(os.path.dirname(cc), base.replace(c_name, cxx_name, 1))
    return cc


def default_compiler_for(target: Target) -> Compiler:
    """gcc (or $CXX/$CC), except for targets only Intel's compiler builds (knc)."""
    if "gnu" in target.march:
        return get_compiler(None)
    return COMPILERS["icc"]


def require_installed(compiler: Compiler, target: Target) -> str:
    """The compiler's path, or a one-line BuildError saying how to get it."""
    path = compiler.resolve()
    if path is None:
        raise BuildError(
            f"{compiler.name} ({compiler.cxx}) is not installed here, and target {target.name} "
            f"needs it with --cc {compiler.name}; install: {compiler.install}"
        )
    return path


def describe_targets() -> list[dict]:
    """Every target with what it assumes and, per compiler, its flags and whether it is
    installed: the data `chaosgen targets` prints."""
    rows = []
    for tgt in (native_target(), *TARGETS.values()):
        default = default_compiler_for(tgt)
        compilers = []
        for c in COMPILERS.values():
            if c.family not in tgt.march:
                continue
            entry = {"name": c.name, "cxx": c.cxx, "installed": c.resolve() is not None}
            flags = c.flags if tgt.host else c.program_flags  # a library, or a program
            try:
                entry["flags"] = list(flags(tgt))
            except BuildError as e:  # installed, but a version that cannot build this target
                entry.update(flags=list(flags(tgt, version=None)), error=str(e))
            entry["version"] = c.version() if entry["installed"] else None
            entry["buildable"] = entry["installed"] and "error" not in entry
            compilers.append(entry)
        rows.append(
            {
                "name": tgt.name,
                "isa": tgt.isa,
                "vector_floats": tgt.vector_width,
                "vector_bits": tgt.vector_width * 32,
                "align": tgt.align,
                "description": tgt.description,
                "output": "library" if tgt.host else "program",
                "runs_here": tgt.runs_here(),
                "default_compiler": default.name,
                "compilers": compilers,
            }
        )
    return rows
