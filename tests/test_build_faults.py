"""Stage 4, build, when things go wrong: a build cache that cannot be written (a file in the way,
a read-only or full file system), a compiler that says it succeeded but wrote nothing or garbage,
a compile that hangs or is killed, a compile waiting on another's lock, and a library rebuilt in
the same process. Real processes, real mounts, real signals; fake compilers are shell scripts."""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from filelock import FileLock
from proc import default_sigint

import chaosgen
from chaosgen.build import CPP_NAME, LIB_NAME, OWNER_NAME, cache_key
from chaosgen.cli import main
from chaosgen.pipeline import compile_spec

TINY = """\
input maps=2 size=6x6
conv c: maps=3 kernel=3 activation=relu
maxpool window=2
output classes=3
"""
HINT = "(use --build-dir or $CHAOSGEN_CACHE to build elsewhere)"


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny spec in a fresh folder, with no compiler or cache settings from the caller."""
    for var in (
        "CXX",
        "CC",
        "CHAOSGEN_REBUILD",
        "CHAOSGEN_USE_EDITED",
        "CHAOSGEN_CACHE",
        "CHAOSGEN_COMPILE_TIMEOUT",
    ):
        monkeypatch.delenv(var, raising=False)
    path = tmp_path / "tiny.net"
    path.write_text(TINY)
    return path


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """Exit status and stderr lines of `chaosgen argv`, in this process."""
    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def leftovers(folder: Path) -> list[str]:
    """Temporary files (and a library) that a failed build must not leave behind."""
    if not folder.is_dir():
        return []
    return sorted(
        p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name == LIB_NAME
    )


def fake_compiler(folder: Path, name: str, body: str) -> Path:
    """A shell script standing in for g++: answers --version, finds the -o argument in $out,
    then runs `body`."""
    path = folder / name
    path.write_text(
        "#!/bin/sh\n"
        f'case "$1" in --version) echo "{name} 1.0"; exit 0;; esac\n'
        'out=""; prev=""\n'
        'for a in "$@"; do [ "$prev" = "-o" ] && out="$a"; prev="$a"; done\n'
        f"{body}\n"
    )
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A fresh tmpfs mounted at `where` (skip the test where mounting is not permitted)."""
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


# --- the cache cannot be written ----------------------------------------------------------------
@pytest.mark.parametrize("what", ["library", "program"])
@pytest.mark.parametrize("how", ["--build-dir", "CHAOSGEN_CACHE"])
def test_build_cache_under_a_file_is_one_line(
    tiny: Path, how: str, what: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """The cache given as (a folder under) a regular file, for a library or a standalone
    program: exit 1, one line naming the file."""
    blocker = tiny.parent / "not-a-folder"
    blocker.write_text("x")
    # (The standalone program reads MNIST: a net with MNIST's input.)
    spec = ROOT / "specs/small.net" if what == "program" else tiny
    argv = ["compile", str(spec), *(["--program"] if what == "program" else [])]
    if how == "--build-dir":
        argv += ["--build-dir", str(blocker)]
    else:
        monkeypatch.setenv("CHAOSGEN_CACHE", str(blocker / "cache"))
    code, err = run_cli(argv, capsys)
    assert (code, err) == (1, [f"chaosgen: error: {blocker}: is not a directory {HINT}"])


def test_build_cache_on_a_read_only_file_system(tiny: Path, capsys) -> None:
    """Nothing can be created: one line naming the folder. A cache made before and mounted
    read-only still serves (and loads) its library; forcing a rebuild there is one line."""
    ro = tiny.parent / "ro"
    with tmpfs(ro, "ro"):
        code, err = run_cli(["compile", str(tiny), "--build-dir", str(ro / "cache")], capsys)
        c = compile_spec(tiny, build=False)
        name = f"tiny-native-gcc-{cache_key(c.source, c.compiler, c.target)}"
        assert code == 1
        assert err == [
            f"chaosgen: error: {ro / 'cache' / name}: cannot create the build directory: "
            f"Read-only file system {HINT}"
        ]
    with tmpfs(ro, "size=4m"):
        built = compile_spec(tiny, build_dir=ro).build
        x = np.linspace(-1, 1, 72).reshape(2, 6, 6)
        expected = chaosgen.compile(tiny, build_dir=ro).forward(x)
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        again = compile_spec(tiny, build_dir=ro).build
        assert again.cached and again.library == built.library
        assert np.array_equal(chaosgen.compile(tiny, build_dir=ro).forward(x), expected)
        code, err = run_cli(["compile", str(tiny), "--build-dir", str(ro), "--rebuild"], capsys)
        assert code == 1
        assert err == [
            f"chaosgen: error: {built.directory / '.lock'}: cannot lock the build directory: "
            f"Read-only file system {HINT}"
        ]


def test_build_cache_on_a_full_file_system(tiny: Path, capsys) -> None:
    """A file system too small for the sources: the file that could not be written is named;
    room for the sources but not the library: the folder is named. Neither leaves a library or
    a temporary file behind."""
    c = compile_spec(tiny, build=False)
    pages = math.ceil(len(c.source.cpp) / 4096) + math.ceil(len(c.source.header) / 4096)
    full = tiny.parent / "full"
    with tmpfs(full, "size=8k"):
        code, err = run_cli(["compile", str(tiny), "--build-dir", str(full)], capsys)
        (folder,) = full.iterdir()
        assert code == 1
        assert err == [
            f"chaosgen: error: {folder / CPP_NAME}: cannot write: No space left on device {HINT}"
        ]
        assert leftovers(folder) == [] and not (folder / CPP_NAME).exists()
    # The sources and the lock's owner file fit; the library (tens of kB) does not.
    with tmpfs(full, f"size={(pages + 2) * 4}k"):
        code, err = run_cli(["compile", str(tiny), "--build-dir", str(full)], capsys)
        (folder,) = full.iterdir()
        assert code == 1
        assert err == [
            f"chaosgen: error: {folder}: no space left on device while compiling tiny for "
            f"native with gcc {HINT}"
        ]
        assert leftovers(folder) == [] and (folder / CPP_NAME).read_text() == c.source.cpp


# --- the compiler says it succeeded, but -----------------------------------------------------
# A valid ELF header of this machine (head's own), then random bytes.
ELF_GARBAGE = 'head -c 20 /proc/self/exe > "$out"; head -c 4096 /dev/urandom >> "$out"'
BAD_OUTPUT = {
    "nothing": (":", "wrote no output file"),
    "empty": (': > "$out"', "its output file is empty"),
    "garbage": ('head -c 4096 /dev/urandom > "$out"', "its output is not an ELF file"),
    "elf-garbage": (ELF_GARBAGE, "the library cannot be loaded ("),
    "not-ours": (
        'exec g++ -shared -fPIC -o "$out" -x c++ /dev/null',
        "the library has no cg_n_params()",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_OUTPUT))
def test_compiler_output_is_checked_before_it_is_published(
    tiny: Path, kind: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A compiler that exits 0 having written nothing, an empty file, random bytes, a broken
    ELF file, or a library that is not this network's: exit 1, one line naming the compiler and
    what was wrong, and nothing in the cache that a later compile would take for a library."""
    body, problem = BAD_OUTPUT[kind]
    cxx = fake_compiler(tiny.parent, f"fake-{kind}", body)
    monkeypatch.setenv("CXX", str(cxx))
    build = tiny.parent / "build"
    code, err = run_cli(["compile", str(tiny), "--build-dir", str(build)], capsys)
    assert code == 1 and len(err) == 1, err
    head = f"chaosgen: error: compiling tiny for native with gcc: {cxx} exited 0 but {problem}"
    assert err[0].startswith(head), err
    assert err[0].endswith("; nothing was published")
    (folder,) = build.iterdir()
    assert leftovers(folder) == []


def test_a_library_for_another_machine_is_refused(
    tiny: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """An ELF file of another architecture (this Python's header with e_machine changed) is
    not published as a library for this machine."""
    exe = Path("/proc/self/exe").read_bytes()[:20]
    other = 0xB7 if int.from_bytes(exe[18:20], "little") != 0xB7 else 0x3E  # aarch64 / x86-64
    head = exe[:18] + other.to_bytes(2, "little") + b"\0" * 100
    octal = "".join(f"\\{b:03o}" for b in head)
    cxx = fake_compiler(tiny.parent, "fake-cross", f'printf "{octal}" > "$out"')
    monkeypatch.setenv("CXX", str(cxx))
    build = tiny.parent / "build"
    code, err = run_cli(["compile", str(tiny), "--build-dir", str(build)], capsys)
    assert code == 1
    assert err == [
        f"chaosgen: error: compiling tiny for native with gcc: {cxx} exited 0 but its output is "
        f"an ELF file for machine {other}, not for this one "
        f"({int.from_bytes(exe[18:20], 'little')}); nothing was published"
    ]


# --- compiles that hang, are killed, or wait ---------------------------------------------------
def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def hang(pids: Path) -> str:
    """A fake compiler's body that hangs in a child, as g++ waits for cc1plus; both pids are
    appended to `pids`."""
    return f"echo $$ >> {pids}; sleep 300 & echo $! >> {pids}; wait"


def survivors(pids: set[int], patience: float = 10.0) -> set[int]:
    """Those of `pids` still alive after up to `patience` seconds (killed ones need a moment)."""
    deadline = time.monotonic() + patience
    while (left := {p for p in pids if alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_a_hanging_compile_is_stopped_with_its_children(
    tiny: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """CHAOSGEN_COMPILE_TIMEOUT=1 and a compiler that hangs (in a child of its own, as g++ runs
    cc1plus): exit 1, one line, and neither the compiler nor its child survives."""
    pids = tiny.parent / "pids"
    cxx = fake_compiler(
        tiny.parent, "fake-hang", f"echo $$ >> {pids}; sleep 300 & echo $! >> {pids}; wait"
    )
    monkeypatch.setenv("CXX", str(cxx))
    monkeypatch.setenv("CHAOSGEN_COMPILE_TIMEOUT", "1")
    build = tiny.parent / "build"
    code, err = run_cli(["compile", str(tiny), "--build-dir", str(build)], capsys)
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(
        "chaosgen: error: compiling tiny for native with gcc did not finish in 1 s and was "
        f"stopped (set CHAOSGEN_COMPILE_TIMEOUT=<seconds> to allow longer): {cxx} "
    )
    started = {int(p) for p in pids.read_text().split()}
    left = survivors(started)
    for pid in left:  # the processes this test started
        os.kill(pid, signal.SIGKILL)
    assert len(started) == 2 and left == set()
    (folder,) = build.iterdir()
    assert leftovers(folder) == []


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf"])
def test_a_bad_compile_timeout_is_a_usage_error(
    tiny: Path, value: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("CHAOSGEN_COMPILE_TIMEOUT", value)
    code, err = run_cli(["compile", str(tiny), "--build-dir", str(tiny.parent / "b")], capsys)
    assert (code, err) == (
        2,
        [f"chaosgen: error: CHAOSGEN_COMPILE_TIMEOUT={value}: expected a number of seconds > 0"],
    )


def descendants(root: int) -> dict[int, str]:
    """pid -> command name of every process below `root`."""
    parent, name = {}, {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            head, tail = stat.rsplit(")", 1)
            parent[int(d.name)] = int(tail.split()[1])
            name[int(d.name)] = head.split("(", 1)[1]
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        p = frontier.pop()
        for c, pp in parent.items():
            if pp == p and c not in found:
                found[c] = name[c]
                frontier.append(c)
    return found


def cli_process(*argv: str, cwd: Path) -> subprocess.Popen[str]:
    """`python -m chaosgen.cli argv` of this checkout, as a process of its own."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "chaosgen.cli", *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# C++ that keeps cc1plus busy for minutes (constant evaluation, each call within gcc's limit of
# operations) and silent: a compiler writing to the pipe of a dead chaosgen would die of SIGPIPE.
SLOW_CPP = (
    "template <long K> constexpr long spin() { long s = 0; for (long i = 0; i < 1000; ++i) "
    "for (long j = 0; j < 1000; ++j) s += (i ^ j) + K; return s; }\n"
) + "".join(f"static_assert(spin<{k}>() != 0);\n" for k in range(100))


def test_kill_9_mid_compile_kills_the_compiler(tiny: Path) -> None:
    """kill -9 of chaosgen while g++ runs cc1plus (on a hand-edited net.cpp that takes minutes
    to compile): no process of that compile survives, g++ had time to delete its temporary
    files, and the build lock is free at once (the operating system releases a dead holder's
    lock)."""
    build = tiny.parent / "build"
    c = compile_spec(tiny, build=False)
    folder = build / f"tiny-native-gcc-{cache_key(c.source, c.compiler, c.target)}"
    folder.mkdir(parents=True)
    (folder / CPP_NAME).write_text(SLOW_CPP)
    temp = tiny.parent / "temp"
    temp.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), CHAOSGEN_USE_EDITED="1", TMPDIR=str(temp))
    proc = subprocess.Popen(
        [sys.executable, "-m", "chaosgen.cli", "compile", str(tiny), "--build-dir", str(build)],
        cwd=tiny.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    tree: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 120
        # Until cc1plus runs and has opened its output (assembly, in $TMPDIR).
        while "cc1plus" not in tree.values() or not list(temp.iterdir()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "cc1plus never started"
            tree = descendants(proc.pid)
            time.sleep(0.01)
        proc.kill()
        proc.communicate()
        assert survivors(set(tree)) == set(), tree
        assert list(temp.iterdir()) == []
    finally:
        for pid in survivors(set(tree), patience=0):  # the processes this test started
            os.kill(pid, signal.SIGKILL)
    lock = FileLock(str(folder / ".lock"))
    lock.acquire(timeout=0)
    lock.release()
    assert not (folder / LIB_NAME).exists()


def test_a_compile_waiting_on_the_lock_says_who_holds_it(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second compile of the same spec while the first is still compiling (its compiler
    waits for the test's go-ahead): the second says once on stderr which process holds the lock
    and since when, waits, and finds the library built."""
    go = tiny.parent / "go"
    held = fake_compiler(
        tiny.parent, "held-gcc", f'while [ ! -e {go} ]; do sleep 0.05; done; exec g++ "$@"'
    )
    monkeypatch.setenv("CXX", str(held))
    build = tiny.parent / "build"
    argv = ("compile", str(tiny), "--build-dir", str(build))
    first = cli_process(*argv, cwd=tiny.parent)
    second = None
    try:
        deadline = time.monotonic() + 60
        while not list(build.glob(f"*/{OWNER_NAME}")):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.01)
        (owner,) = build.glob(f"*/{OWNER_NAME}")
        since = time.strftime("%H:%M:%S", time.localtime(json.loads(owner.read_text())["since"]))
        second = cli_process(*argv, cwd=tiny.parent)
        ready, _, _ = select.select([second.stderr], [], [], 60)
        note = second.stderr.readline().rstrip("\n") if ready else "(nothing in 60 s)"
    finally:
        go.touch()  # the first compile goes on, in any case
    (out1, err1), (out2, err2) = first.communicate(timeout=120), second.communicate(timeout=120)
    assert note == (
        f"chaosgen: waiting for {owner.parent}: locked by pid {first.pid} on "
        f"{socket.gethostname()} since {since} (compiling tiny for native with gcc)"
    )
    assert (first.returncode, second.returncode) == (0, 0), (err1, err2)
    assert (err1, err2) == ("", "")  # said once
    assert "(built in" in out1 and out2.rstrip().endswith("(cached)")
    assert not owner.exists()


def test_interrupting_a_compile_kills_the_compiler(tiny: Path) -> None:
    """SIGINT (Ctrl-C) to chaosgen mid-compile: it reports the interrupt and exits 130, and no
    process of the compile survives."""
    pids = tiny.parent / "pids"
    hang = fake_compiler(
        tiny.parent, "fake-hang", f"echo $$ >> {pids}; sleep 300 & echo $! >> {pids}; wait"
    )
    env_cxx = {"CXX": str(hang)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "chaosgen.cli", "compile", str(tiny), "--build-dir",
         str(tiny.parent / "build")],
        cwd=tiny.parent, env=dict(os.environ, PYTHONPATH=str(ROOT), **env_cxx),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (pids.exists() and len(pids.read_text().split()) == 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip() == "chaosgen: interrupted", err
    started = {int(p) for p in pids.read_text().split()}
    left = survivors(started)
    for pid in left:  # the processes this test started
        os.kill(pid, signal.SIGKILL)
    assert left == set()


# --- the same process, a rebuilt library -------------------------------------------------------
def test_a_rebuild_in_the_same_process_runs_the_new_code(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compile and load; hand-edit net.cpp (the CHAOSGEN_USE_EDITED backdoor) so that the first
    output is 42; rebuild in this process: the new net runs the edited code, the old one still
    its own."""
    build = tiny.parent / "build"
    x = np.linspace(-1, 1, 72).reshape(2, 6, 6)
    old = chaosgen.compile(tiny, build_dir=build)
    before = old.forward(x)
    assert 0 < before[0] < 1  # a softmax
    cpp = compile_spec(tiny, build_dir=build).build.directory / CPP_NAME
    copy = "std::memcpy(output, net::output(work), sizeof(float) * net::OUTPUT_SIZE);"
    text = cpp.read_text()
    assert text.count(copy) == 1
    cpp.write_text(text.replace(copy, copy + " output[0] = 42.0f;"))
    monkeypatch.setenv("CHAOSGEN_USE_EDITED", "1")
    monkeypatch.setenv("CHAOSGEN_REBUILD", "1")
    new = chaosgen.compile(tiny, build_dir=build)
    after = new.forward(x)
    assert after[0] == 42.0 and np.array_equal(after[1:], before[1:])
    assert np.array_equal(old.forward(x), before)
    # Loaded from a copy named by its digest; the previous build's copy went with the rebuild.
    (copy,) = cpp.parent.glob(".libnet-*.so")
    assert copy.read_bytes() == (cpp.parent / LIB_NAME).read_bytes()
    # Rebuilt once more from the same edited source: the same code, loaded once.
    third = chaosgen.compile(tiny, build_dir=build)
    assert third.forward(x)[0] == 42.0 and third.lib is new.lib


# --- tuning records in the cache -----------------------------------------------------------------
def test_tuning_record_that_cannot_be_written_names_the_path(tiny: Path) -> None:
    """`chaosgen tune` records into a cache under a regular file: a BuildError naming it."""
    from chaosgen import tune
    from chaosgen.errors import BuildError
    from chaosgen.pipeline import front_end
    from chaosgen.targets import default_compiler_for, native_target

    blocker = tiny.parent / "not-a-folder"
    blocker.write_text("x")
    _, net = front_end(tiny)
    target = native_target()
    with pytest.raises(BuildError) as e:
        tune.save(net, target, default_compiler_for(target), blocker, {"c": "wide"}, {})
    assert str(e.value) == f"{blocker}: is not a directory {HINT}"


@pytest.mark.parametrize("text", ["[]", "{}", '{"cpu": 1}', "nul", '"forms"'])
def test_a_damaged_tuning_record_is_ignored(tiny: Path, text: str) -> None:
    """A tuning record that is not one (a list, no forms, not JSON): the cost model decides, as
    without a record."""
    from chaosgen import tune
    from chaosgen.pipeline import front_end
    from chaosgen.targets import default_compiler_for, native_target

    _, net = front_end(tiny)
    target = native_target()
    compiler = default_compiler_for(target)
    record = tune.record_path(net, target, compiler, tiny.parent / "build")
    record.parent.mkdir(parents=True)
    record.write_text(text)
    assert tune.load(net, target, compiler, tiny.parent / "build") is None
    with_record = compile_spec(tiny, build_dir=tiny.parent / "build", build=False).source
    assert with_record == compile_spec(tiny, build_dir=tiny.parent / "b2", build=False).source


def test_the_next_build_removes_temporaries_of_killed_builds(tiny: Path) -> None:
    """Temporary files a killed build left (of the library and of the sources) are removed by
    the next build that holds the lock; files that are not chaosgen's stay."""
    build = tiny.parent / "build"
    c = compile_spec(tiny, build=False)
    folder = build / f"tiny-native-gcc-{cache_key(c.source, c.compiler, c.target)}"
    folder.mkdir(parents=True)
    stale = [f".{LIB_NAME}.99999.0badf00d.tmp", f".{CPP_NAME}.k2j3h4.tmp"]
    for name in [*stale, ".notes.tmp"]:
        (folder / name).write_text("half")
    assert compile_spec(tiny, build_dir=build).build.directory == folder
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".tmp") == [".notes.tmp"]
