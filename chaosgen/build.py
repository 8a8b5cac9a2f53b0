"""Stage 4: C++ -> shared library, in a content-addressed cache, published atomically."""

from __future__ import annotations

import contextlib
import errno
import functools
import glob
import hashlib
import json
import math
import os
import secrets
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from . import __version__, child
from .codegen import Source
from .errors import BuildError, ChaosgenError, UsageError
from .targets import Compiler, Target

LIB_NAME = "libnet.so"
CPP_NAME = "net.cpp"
OWNER_NAME = ".lock.owner"  # who holds .lock, since when: for the message of a process waiting
HINT = "use --build-dir or $CHAOSGEN_CACHE to build elsewhere"
# Generous: the shipped nets build in seconds; a compile past this is stuck or far too big.
COMPILE_TIMEOUT_S = 600.0
LOCK_NOTE_S = 1.0  # wait this long for a build lock silently, then say who holds it
FULL_BYTES = 1 << 20  # a file system with less free space than this counts as full


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


def check_writable(path: Path, what: str) -> None:
    """Before long work whose result atomic_write puts at `path`: `path` is no directory and its
    folder (created if missing) takes a new file. Raises ChaosgenError (one line) otherwise, so
    a measurement is not lost at its end to a path that could never be written."""
    if path.is_dir():
        raise ChaosgenError(f"{path}: is a directory; {what} goes to a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ChaosgenError(
            f"{path}: cannot write {what} there: a file stands where its folder should be"
        ) from None
    except OSError as e:
        raise ChaosgenError(f"{path}: cannot create its folder: {e.strerror or e}") from None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ChaosgenError(f"{path}: cannot write {what} there: {e.strerror or e}") from None


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


def command(compiler: Compiler, target: Target, out: str = LIB_NAME,
            libs: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The exact compiler command line for a shared library, run inside the build directory
    (`libs`: what the code links, e.g. FFTW, after the source)."""
    return (
        compiler.resolve() or compiler.cxx,
        *compiler.flags(target),
        "-shared",
        "-o",
        out,
        CPP_NAME,
        *libs,
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
    verify: Callable[[Path], None] | None = None,
) -> Build:
    """Build (or find in the cache) the shared library for `source`. `verify(path)` loads the
    new library once before it is published (ChaosgenError if it is not the right one)."""
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
    cmd = command(compiler, target, libs=source.libs)
    if lib.exists() and not force:
        return Build(directory, lib, cmd, True, time.perf_counter() - t0)
    what = f"compiling {name} for {target.name} with {compiler.name}"
    make_dir(directory)
    with locked(directory, what, (LIB_NAME, CPP_NAME, source.header_name)):
        if lib.exists() and not force:  # another process finished it while we waited
            return Build(directory, lib, cmd, True, time.perf_counter() - t0)
        # Hand-tuning backdoor: with CHAOSGEN_USE_EDITED=1 an edited net.cpp in the cache is kept.
        if not (cpp.exists() and os.environ.get("CHAOSGEN_USE_EDITED") == "1"):
            write(cpp, source.cpp)
        write(directory / source.header_name, source.header)
        tmp = _temp_name(lib)
        run_and_publish(
            command(compiler, target, tmp.name, source.libs),
            directory,
            tmp,
            lib,
            what,
            host_binary=bool(target.cpu_flags),  # knc's code is for the coprocessor's ISA
            verify=verify,
        )
        # Copies the loader made of the previous library (see loader.py): stale now.
        for old in directory.glob(loaded_copy_name(LIB_NAME, "*")):
            with contextlib.suppress(OSError):
                old.unlink()
    return Build(directory, lib, cmd, False, time.perf_counter() - t0)


def loaded_copy_name(library: str, digest: str) -> str:
    """The name of the copy of `library` that the loader opens: named by its content's digest,
    because dlopen gives back the code it already loaded from a path, even after a rebuild."""
    p = Path(library)
    return f".{p.stem}-{digest}{p.suffix}"


def _temp_name(final: Path) -> Path:
    """A temporary name beside `final`, unique to this build (not only to this process: a
    library loaded from it once stays known to dlopen under this name)."""
    return final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def run_and_publish(
    run: tuple[str, ...],
    cwd: Path,
    tmp: Path,
    final: Path,
    what: str,
    host_binary: bool = False,
    verify: Callable[[Path], None] | None = None,
) -> None:
    """Run a compiler command that writes `tmp`; check what it wrote (a non-empty ELF file, of
    this machine's kind if `host_binary`, then `verify(tmp)`), and only then rename it to `final`
    (atomic publish). Any failure is a BuildError and leaves neither `tmp` nor a new `final`.
    The compiler dies with chaosgen and is stopped after `compile_timeout()` seconds."""
    try:
        limit = compile_timeout()
        try:
            proc = child.run(run, cwd=cwd, timeout=limit)
        except OSError as e:
            raise BuildError(f"cannot run {e.filename or run[0]}: {e.strerror or e}") from None
        except subprocess.TimeoutExpired:
            raise BuildError(
                f"{what} did not finish in {limit:g} s and was stopped (set "
                f"CHAOSGEN_COMPILE_TIMEOUT=<seconds> to allow longer): {shlex.join(run)}"
            ) from None
        if proc.returncode != 0:
            raise _compile_failure(proc, run, cwd, what)
        problem = _output_problem(tmp, host_binary)
        if problem is None and verify is not None:
            try:
                verify(tmp)
            except ChaosgenError as e:
                problem = str(e)
        if problem is not None:
            raise BuildError(f"{what}: {run[0]} exited 0 but {problem}; nothing was published")
        try:
            os.replace(tmp, final)
        except OSError as e:
            raise cache_error(e, final, "publish the build") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def compile_timeout() -> float:
    """Seconds a compile may take: $CHAOSGEN_COMPILE_TIMEOUT, else COMPILE_TIMEOUT_S."""
    raw = os.environ.get("CHAOSGEN_COMPILE_TIMEOUT", "").strip()
    if not raw:
        return COMPILE_TIMEOUT_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (0 < seconds < math.inf):
        raise UsageError(f"CHAOSGEN_COMPILE_TIMEOUT={raw}: expected a number of seconds > 0")
    return seconds


def _compile_failure(
    proc: subprocess.CompletedProcess[str], run: tuple[str, ...], cwd: Path, what: str
) -> BuildError:
    """The compiler failed: its command and the first lines of its stderr; or, if it ran out of
    space, which place is full."""
    if "fftw3.h" in proc.stderr or "-lfftw3f" in proc.stderr:  # header or library missing
        return BuildError(
            f"{what}: FFTW (single precision), which algorithm=fft layers need, is not "
            "installed: apt-get install libfftw3-dev (or write algorithm=direct)"
        )
    full = {os.strerror(errno.ENOSPC), "No space left on device"}
    if any(text in proc.stderr for text in full):
        # The compiler writes its intermediate files to $TMPDIR, its output into the cache.
        if _free_bytes(cwd) < FULL_BYTES:
            return BuildError(f"{cwd}: no space left on device while {what} ({HINT})")
        tmp = tempfile.gettempdir()
        if _free_bytes(Path(tmp)) < FULL_BYTES:
            return BuildError(
                f"{tmp}: no space left on device while {what} (the compiler's temporary "
                "files; set $TMPDIR to a folder with space)"
            )
    head = "\n".join(proc.stderr.strip().splitlines()[:20])
    return BuildError(f"{what} failed (exit {proc.returncode}):\n  {shlex.join(run)}\n{head}")


def _free_bytes(path: Path) -> float:
    try:
        st = os.statvfs(path)
    except OSError:
        return math.inf
    return st.f_bavail * st.f_frsize


def _output_problem(path: Path, host_binary: bool) -> str | None:
    """What is wrong with a compiler's output file, or None: it must exist and be an ELF file
    (of this machine's class, byte order and architecture if `host_binary`)."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except FileNotFoundError:
        return "wrote no output file"
    except OSError as e:
        return f"its output cannot be read ({e.strerror})"
    if not head:
        return "its output file is empty"
    host = _host_elf()
    if host is None:  # not an ELF platform: nothing more we can check here
        return None
    if head[:4] != _ELF_MAGIC:
        return "its output is not an ELF file"
    if host_binary and _elf_kind(head) != _elf_kind(host):
        return (
            f"its output is an ELF file for machine {_elf_machine(head)}, not for this one "
            f"({_elf_machine(host)})"
        )
    return None


_ELF_MAGIC = b"\x7fELF"


@functools.cache
def _host_elf() -> bytes | None:
    """The ELF header of the running Python, or None where executables are not ELF."""
    for exe in ("/proc/self/exe", sys.executable):
        try:
            with open(exe, "rb") as f:
                head = f.read(20)
        except OSError:
            continue
        return head if head[:4] == _ELF_MAGIC and len(head) == 20 else None
    return None


def _elf_kind(head: bytes) -> tuple[int, int, int]:
    """Class (32/64 bit), byte order and machine of an ELF header."""
    return head[4], head[5], _elf_machine(head)


def _elf_machine(head: bytes) -> int:
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")


def cached_program(
    root: str | Path | None,
    name: str,
    files: dict[str, str],
    main: str,
    compiler: Compiler,
    flags: tuple[str, ...] | list[str],
    what: str,
    libs: tuple[str, ...] = (),
) -> Path:
    """A helper program (a microbenchmark, a timing harness) compiled from `files`, written side
    by side, with `main` the file compiled: built once into the cache directory
    `<name>-<digest of the files, compiler version and flags>` under a file lock, published
    atomically. Returns the executable."""
    if compiler.resolve() is None:
        raise BuildError(
            f"C++ compiler '{compiler.cxx}' not found: {what} needs it ({compiler.install})"
        )
    parts = [f"{k}\0{v}" for k, v in sorted(files.items())] + [compiler.version(), *flags, *libs]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    directory = cache_root(root) / f"{name}-{key}"
    exe = directory / name.split("-")[0]
    if exe.exists():
        return exe
    make_dir(directory)
    with locked(directory, what, (*files, exe.name)):
        if not exe.exists():
            for fname, text in files.items():
                write(directory / fname, text)
            tmp = _temp_name(exe)
            cmd = (compiler.resolve() or compiler.cxx, *flags, "-o", tmp.name, main, *libs)
            run_and_publish(cmd, directory, tmp, exe, what, host_binary=True)
    return exe


# --- the cache directory: creating, writing, locking ---------------------------------------------
def cache_error(e: OSError, path: Path, doing: str) -> BuildError:
    """A file-system failure in the build cache, as one line that names the path."""
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        # Some folder on the way is a file: name that one.
        start = Path(e.filename) if isinstance(e.filename, str) else path
        blocker = next(
            (p for p in reversed((start, *start.parents)) if p.exists() and not p.is_dir()), None
        )
        if blocker is not None:
            return BuildError(f"{blocker}: is not a directory ({HINT})")
    return BuildError(f"{path}: cannot {doing}: {e.strerror or e} ({HINT})")


def make_dir(directory: Path) -> None:
    """Create a build directory (and its parents); BuildError naming the path if impossible."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise cache_error(e, directory, "create the build directory") from None


def write(path: Path, data: str | bytes) -> None:
    """atomic_write into the cache; BuildError naming the file if the file system refuses."""
    try:
        atomic_write(path, data)
    except OSError as e:
        raise cache_error(e, path, "write") from None


@contextlib.contextmanager
def locked(directory: Path, what: str, files: Iterable[str] = ()) -> Iterator[None]:
    """Hold the lock of a build directory for `what`. If another process holds it, say once on
    stderr which one and since when, then wait (the operating system releases the lock of a
    process that dies). Once it is ours, the temporary files that killed builds left of `files`
    are removed (only lock holders write them)."""
    lock = FileLock(str(directory / ".lock"))
    try:
        try:
            lock.acquire(timeout=LOCK_NOTE_S)
        except Timeout:
            note = f"chaosgen: waiting for {directory}: {_holder(directory)}"
            print(note, file=sys.stderr, flush=True)
            lock.acquire()
    except OSError as e:
        raise cache_error(e, directory / ".lock", "lock the build directory") from None
    owner = directory / OWNER_NAME
    try:
        for name in (*files, OWNER_NAME):  # atomic_write's and _temp_name's
            for stale in directory.glob(f"{glob.escape('.' + name)}.*.tmp"):
                with contextlib.suppress(OSError):
                    stale.unlink()
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "what": what}
        with contextlib.suppress(OSError):  # only a courtesy to waiters; a full disk fails later
            atomic_write(owner, json.dumps(me) + "\n")
        yield
    finally:
        with contextlib.suppress(OSError):
            owner.unlink(missing_ok=True)
        lock.release()


def _holder(directory: Path) -> str:
    """Who holds a build directory's lock, from what the holder wrote beside it."""
    try:
        info = json.loads((directory / OWNER_NAME).read_text())
        since = time.strftime("%H:%M:%S", time.localtime(float(info["since"])))
        return f"locked by pid {int(info['pid'])} on {info['host']} since {since} ({info['what']})"
    except (OSError, ValueError, KeyError, TypeError):  # not written yet, or just removed
        return "locked by another process"
