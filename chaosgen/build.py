"""Stage 4: C++ -> shared library, in a content-addressed cache, published atomically."""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from . import __version__
from .codegen import Source
from .errors import BuildError
from .targets import Compiler, Target

LIB_NAME = "libnet.so"
CPP_NAME = "net.cpp"


def cache_root(override: str | Path | None = None) -> Path:
    """--build-dir, else $CHAOSGEN_CACHE, else ./build."""
    return Path(override or os.environ.get("CHAOSGEN_CACHE") or "build")


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write a file so that readers see the old content or the new, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@dataclass(frozen=True, slots=True)
class Build:
    """Where a build lives and how it was made."""

    directory: Path
    library: Path
    command: tuple[str, ...]
    cached: bool
    seconds: float


def command(compiler: Compiler, target: Target, out: str = LIB_NAME) -> tuple[str, ...]:
    """The exact compiler command line for a shared library, run inside the build directory."""
    return (
        compiler.resolve() or compiler.cxx,
        *compiler.flags(target),
        "-shared",
        "-o",
        out,
        CPP_NAME,
    )


def cache_key(source: Source, compiler: Compiler, target: Target) -> str:
    """Digest of all that changes the library: code, compiler identity, flags, version."""
    h = hashlib.sha256()
    for part in (
        source.cpp,
        source.header,
        compiler.resolve() or compiler.cxx,
        compiler.version(),
        " ".join(compiler.flags(target)),
        __version__,
    ):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def build(
    source: Source,
    name: str,
    target: Target,
    compiler: Compiler,
    root: str | Path | None = None,
    force: bool | None = None,
) -> Build:
    """Build (or find in the cache) the shared library for `source`."""
    t0 = time.perf_counter()
    if compiler.resolve() is None:
        raise BuildError(
            f"C++ compiler '{compiler.cxx}' ({compiler.name}) not found on PATH; install it or "
            f"pick "
            f"another with --cc (gcc, clang) or $CXX"
        )
    force = force if force is not None else os.environ.get("CHAOSGEN_REBUILD", "") not in ("", "0")
    key = cache_key(source, compiler, target)
    directory = cache_root(root) / f"{name}-{target.name}-{compiler.name}-{key}"
    lib = directory / LIB_NAME
    cpp = directory / CPP_NAME
    cmd = command(compiler, target)
    if lib.exists() and not force:
        return Build(directory, lib, cmd, True, time.perf_counter() - t0)
    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory / ".lock")):
        if lib.exists() and not force:  # another process finished it while we waited
            return Build(directory, lib, cmd, True, time.perf_counter() - t0)
        # Hand-tuning backdoor: with CHAOSGEN_USE_EDITED=1 an edited net.cpp in the cache is kept.
        if not (cpp.exists() and os.environ.get("CHAOSGEN_USE_EDITED") == "1"):
            atomic_write(cpp, source.cpp)
        atomic_write(directory / source.header_name, source.header)
        tmp = directory / f".{LIB_NAME}.{os.getpid()}.tmp"
        run_and_publish(
            command(compiler, target, tmp.name),
            directory,
            tmp,
            lib,
            f"compiling {name} for {target.name} with {compiler.name}",
        )
    return Build(directory, lib, cmd, False, time.perf_counter() - t0)


def run_and_publish(run: tuple[str, ...], cwd: Path, tmp: Path, final: Path, what: str) -> None:
    """Run a compiler command that writes `tmp`, then rename it to `final` (atomic publish).
    A failure raises BuildError with the command and the first lines of the compiler's stderr."""
    try:
        proc = subprocess.run(run, capture_output=True, text=True, cwd=cwd)
    except OSError as e:
        raise BuildError(f"cannot run {run[0]}: {e.strerror}") from None
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        head = "\n".join(proc.stderr.strip().splitlines()[:20])
        raise BuildError(f"{what} failed (exit {proc.returncode}):\n  {shlex.join(run)}\n{head}")
    os.replace(tmp, final)


def cached_program(
    root: str | Path | None,
    name: str,
    files: dict[str, str],
    main: str,
    compiler: Compiler,
    flags: tuple[str, ...] | list[str],
    what: str,
) -> Path:
    """A helper program (a microbenchmark, a timing harness) compiled from `files`, written side
    by side, with `main` the file compiled: built once into the cache directory
    `<name>-<digest of the files, compiler version and flags>` under a file lock, published
    atomically. Returns the executable."""
    if compiler.resolve() is None:
        raise BuildError(
            f"C++ compiler '{compiler.cxx}' not found: {what} needs it ({compiler.install})"
        )
    parts = [f"{k}\0{v}" for k, v in sorted(files.items())] + [compiler.version(), *flags]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    directory = cache_root(root) / f"{name}-{key}"
    exe = directory / name.split("-")[0]
    if exe.exists():
        return exe
    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory / ".lock")):
        if not exe.exists():
            for fname, text in files.items():
                atomic_write(directory / fname, text)
            tmp = directory / f".{exe.name}.{os.getpid()}.tmp"
            cmd = (compiler.resolve() or compiler.cxx, *flags, "-o", tmp.name, main)
            run_and_publish(cmd, directory, tmp, exe, what)
    return exe
