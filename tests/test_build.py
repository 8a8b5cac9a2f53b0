"""Stage 4, build (and load): the content-addressed cache, forced rebuilds, compiler failures
reported in one clean message, concurrent builds, and the wheel carrying the templates."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from proc import run

import chaosgen
from chaosgen.build import CPP_NAME, LIB_NAME, cache_key
from chaosgen.cli import main
from chaosgen.pipeline import compile_spec
from chaosgen.targets import TARGETS

TINY = """\
input maps=2 size=6x6
conv c: maps=3 kernel=3 activation=relu
maxpool window=2
output classes=3
"""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A tiny spec in a fresh folder (its build cache goes beside it, in tmp_path/build)."""
    path = tmp_path / "tiny.net"
    path.write_text(TINY)
    return path


@pytest.fixture
def plain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No compiler overrides or cache switches from the caller's environment."""
    for var in ("CXX", "CC", "CHAOSGEN_REBUILD", "CHAOSGEN_USE_EDITED", "CHAOSGEN_CACHE"):
        monkeypatch.delenv(var, raising=False)


def test_second_compile_is_a_cache_hit(tiny: Path, plain_env) -> None:
    """Same spec, same compiler and flags: the library is reused, not rebuilt."""
    build = tiny.parent / "build"
    first = compile_spec(tiny, build_dir=build).build
    second = compile_spec(tiny, build_dir=build).build
    assert first is not None and second is not None
    assert (first.cached, second.cached) == (False, True)
    assert first.library == second.library and second.library.exists()
    assert first.directory.name.startswith("tiny-native-")
    assert sorted(p.name for p in first.directory.iterdir() if not p.name.startswith(".")) == [
        "chaosgen_api.h",
        LIB_NAME,
        CPP_NAME,
    ]


def test_rebuild_switch_forces_a_build(tiny: Path, plain_env, monkeypatch) -> None:
    """CHAOSGEN_REBUILD=1 compiles again into the same place, and the result still loads."""
    build = tiny.parent / "build"
    first = compile_spec(tiny, build_dir=build).build
    stamp = first.library.stat().st_mtime_ns
    monkeypatch.setenv("CHAOSGEN_REBUILD", "1")
    again = compile_spec(tiny, build_dir=build).build
    assert not again.cached and again.library == first.library
    assert again.library.stat().st_mtime_ns != stamp
    assert chaosgen.compile(tiny, build_dir=build).forward(np.zeros((2, 6, 6))).shape == (3,)


def test_cache_key_covers_code_and_flags(tiny: Path, plain_env) -> None:
    """A different target (flags) or different code gives a different build directory."""
    c = compile_spec(tiny, target="avx2", build=False)
    keys = {
        cache_key(c.source, c.compiler, TARGETS["avx2"]),
        cache_key(c.source, c.compiler, TARGETS["generic"]),
        cache_key(type(c.source)(c.source.cpp + "\n", c.source.header), c.compiler, c.target),
    }
    assert len(keys) == 3


def test_missing_compiler_is_one_clean_line(tiny: Path, plain_env, monkeypatch, capsys) -> None:
    """$CXX pointing nowhere: exit 1, a single `chaosgen: error:` line, no traceback."""
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    code = main(["compile", str(tiny), "--build-dir", str(tiny.parent / "build")])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("chaosgen: error: C++ compiler '/nonexistent/g++'")
    assert "not found" in line


def test_cxx_with_flags_is_the_compiler_then_its_flags(tiny: Path, plain_env, monkeypatch) -> None:
    """$CXX as make reads it: "g++ -DX=1" is g++ with -DX=1 after chaosgen's own flags (so a
    user's -march/-O wins), in the command and the cache key, and the library builds and runs."""
    build = tiny.parent / "build"
    plain = compile_spec(tiny, build_dir=build).build
    monkeypatch.setenv("CXX", "g++ -DCHAOSGEN_USER_FLAG=1 -O2")
    c = compile_spec(tiny, build_dir=build)
    assert c.compiler.cxx == "g++"
    cmd = c.build.command
    assert cmd[-6:-4] == ("-DCHAOSGEN_USER_FLAG=1", "-O2") and cmd.index("-O3") < len(cmd) - 6
    assert c.build.directory != plain.directory and not c.build.cached
    assert chaosgen.compile(tiny, build_dir=build).forward(np.zeros((2, 6, 6))).shape == (3,)


@pytest.mark.parametrize("value", ["g++ 'unclosed", "/nonexistent/g++ -O2"])
def test_unusable_cxx_is_one_clean_line(tiny: Path, plain_env, monkeypatch, capsys, value) -> None:
    """An unreadable $CXX (an open quote: a usage error, exit 2) or one naming no compiler
    (exit 1): one line."""
    monkeypatch.setenv("CXX", value)
    code = main(["compile", str(tiny), "--build-dir", str(tiny.parent / "build")])
    assert code == (2 if "'" in value else 1)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("chaosgen: error:")
    assert ("$CXX cannot be read" in line) if "'" in value else ("not found" in line)


def test_failing_compile_reports_command_and_stderr(
    tiny: Path, plain_env, monkeypatch, capsys
) -> None:
    """A hand-edited net.cpp that does not compile (the CHAOSGEN_USE_EDITED backdoor): exit 1,
    the exact command, the first lines of the compiler's stderr, no library left behind."""
    build = tiny.parent / "build"
    c = compile_spec(tiny, build_dir=build, build=False)
    key = cache_key(c.source, c.compiler, c.target)
    folder = build / f"{c.net.name}-{c.target.name}-{c.compiler.name}-{key}"
    folder.mkdir(parents=True)
    (folder / CPP_NAME).write_text("".join(f"this is not C++ {i};\n" for i in range(200)))
    monkeypatch.setenv("CHAOSGEN_USE_EDITED", "1")
    code = main(["compile", str(tiny), "--build-dir", str(build)])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith(
        "chaosgen: error: compiling tiny for native with gcc failed (exit 1)"
    )
    assert lines[1].strip().startswith(c.compiler.resolve()) and lines[1].endswith(CPP_NAME)
    assert "-shared" in lines[1]
    assert any("net.cpp:1:1: error:" in ln for ln in lines[2:])
    assert len(lines) <= 2 + 20, "only the first lines of the compiler's stderr"
    assert not (folder / LIB_NAME).exists()
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


CONCURRENT = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from chaosgen.loader import Net
    from chaosgen.pipeline import compile_spec
    spec, build, ready = sys.argv[1:4]
    open(os.path.join(ready, str(os.getpid())), "w").close()
    while len(os.listdir(ready)) < 2:  # start compiling together
        time.sleep(0.001)
    c = compile_spec(spec, build_dir=build)  # what chaosgen.compile does, keeping c.build
    net = Net(c.net, c.build.library, c.source.header)
    print(c.build.cached, net.forward(np.linspace(-1, 1, 72).reshape(2, 6, 6)).tolist())
    """
)


def test_two_processes_build_the_same_spec_at_once(tiny: Path, plain_env) -> None:
    """Both compile into the same fresh cache at the same moment: one builds, the other waits on
    the lock and finds the library; both load it and compute the same output."""
    ready = tiny.parent / "ready"
    ready.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT, str(tiny), str(tiny.parent / "build"), str(ready)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tiny.parent,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    cached = sorted(out.split(" ", 1)[0] for out, _ in results)
    assert cached == ["False", "True"], results
    outputs = {out.split(" ", 1)[1] for out, _ in results}
    assert len(outputs) == 1 and outputs.pop().startswith("[")
    (folder,) = (tiny.parent / "build").iterdir()
    assert (folder / LIB_NAME).exists()
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# --- packaging ----------------------------------------------------------------------------------
@pytest.mark.packaging
def test_wheel_ships_grammar_and_templates(tmp_path: Path) -> None:
    """`pip wheel` (in a copy of the source, so the shared checkout's build/ stays untouched)
    ships the grammar and every template; unpacked alone, it renders the checkout's C++."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, src / name)
    for folder in ("chaosgen", "templates"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    # With build isolation, as `pip install .` builds: pip brings pyproject's build requirements
    # into a fresh environment, so the test works in a fresh venv and pins those requirements.
    run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-q", "-w", tmp_path / "dist"],
        cwd=src, timeout=300,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("chaosgen-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = {f"chaosgen/templates/{p.name}" for p in (ROOT / "templates").iterdir()}
    must = {
        "chaosgen/spec.lark",
        "chaosgen/interop/onnx_export.py",
        "chaosgen/interop/prototxt.lark",
        "chaosgen/templates/net.cpp.j2",
        "chaosgen/templates/prelude.hpp",
    }
    assert must <= names
    assert {t for t in templates if t.endswith((".j2", ".hpp"))} <= names
    # Unpacked on its own (as a non-editable install would be), away from the checkout.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    shutil.copytree(ROOT / "specs", tmp_path / "specs")
    probe = (
        "import sys, chaosgen.codegen as cg\n"
        "from chaosgen.pipeline import compile_spec\n"
        "print(cg.template_dir())\n"
        "c = compile_spec('specs/small.net', target='avx2', build=False)\n"
        "sys.stdout.write(c.source.cpp)\n"
    )
    out = run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(site))
    ).stdout
    where, cpp = out.split("\n", 1)
    assert Path(where) == site / "chaosgen" / "templates"
    assert cpp == (ROOT / "tests/golden/small.avx2.cpp").read_text()
