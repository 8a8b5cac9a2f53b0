"""chaosgen.targets: the target and compiler registry, version-dependent flags, `chaosgen targets`,
and clear one-line errors for compilers that are missing or cannot build a target."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import DATA

from chaosgen import cli, targets
from chaosgen.errors import BuildError, UsageError
from chaosgen.targets import COMPILERS, TARGETS, parse_version


def test_every_target_is_described_and_buildable_by_some_compiler() -> None:
    for t in TARGETS.values():
        assert t.vector_width in (4, 8, 16) and t.align == 64, t.name
        assert t.march and set(t.march) <= {c.family for c in COMPILERS.values()}, t.name
        assert t.host == (t.name not in ("knl", "knc")), t.name
    assert set(TARGETS["knc"].march) == {"intel"}  # only icc (<= 17) generates KNC code
    assert TARGETS["knc"].cpu_flags == ()  # a coprocessor: never the host


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("compiler", sorted(COMPILERS))
def test_flags_are_base_then_isa_then_openmp(compiler: str, target: str) -> None:
    c, t = COMPILERS[compiler], TARGETS[target]
    if c.family not in t.march:
        with pytest.raises(BuildError, match=f"cannot build target '{target}'.*needs one of"):
            c.flags(t, version=None)
        return
    flags = c.flags(t, version=None)  # as written, whatever version is installed here
    assert flags == (*c.base_flags, *t.march[c.family], *c.openmp)
    assert "-fPIC" in flags and "-fPIC" not in c.program_flags(t, version=None)


def test_gnu_and_intel_flags_of_the_issue() -> None:
    gcc, clang, icc, icx = (COMPILERS[n] for n in ("gcc", "clang", "icc", "icx"))
    assert icc.flags(TARGETS["knc"], version=(17, 0, 4))[-2:] == ("-mmic", "-qopenmp")
    assert "-xMIC-AVX512" in icc.flags(TARGETS["knl"], version=(17,))
    assert "-march=knl" in gcc.flags(TARGETS["knl"], version=(12, 2)) + clang.flags(
        TARGETS["knl"], version=(19, 1)
    )
    assert icc.flags(targets.native_target(), version=(17,))[-2:] == ("-xHost", "-qopenmp")
    assert "-qopt-zmm-usage=high" in icc.flags(TARGETS["avx512"], version=(2021, 10, 0))
    assert "-mprefer-vector-width=512" in icx.flags(TARGETS["avx512"], version=(2024, 0))


def test_version_rules() -> None:
    gcc, icc = COMPILERS["gcc"], COMPILERS["icc"]
    knl, knc, avx512 = TARGETS["knl"], TARGETS["knc"], TARGETS["avx512"]
    # GCC 15 removed -march=knl: KNL's ISA (Haswell + AVX-512 F/CD) spelled out instead.
    assert "-march=knl" in gcc.flags(knl, version=(14, 2))
    new = gcc.flags(knl, version=(15, 1))
    assert "-march=knl" not in new and ("-march=haswell", "-mavx512f", "-mavx512cd") == new[4:7]
    # icc 14 spells OpenMP -openmp; icc 17 has no -qopt-zmm-usage; icc 18 dropped -mmic.
    assert icc.flags(knc, version=(14, 0, 2))[-2:] == ("-mmic", "-openmp")
    assert "-qopt-zmm-usage=high" not in icc.flags(avx512, version=(17, 0))
    assert "-qopt-zmm-usage=high" in icc.flags(avx512, version=(18, 0))
    with pytest.raises(BuildError, match=r"icc 18\.0 cannot build target 'knc'.*icc 14-17"):
        icc.flags(knc, version=(18, 0))


@pytest.mark.parametrize(
    ("line", "version"),
    [
        ("g++ (Debian 12.2.0-14+deb12u1) 12.2.0", (12, 2, 0)),
        ("Debian clang version 14.0.6", (14, 0, 6)),
        ("icpc (ICC) 17.0.4 20170411", (17, 0, 4)),
        ("icpc (ICC) 2021.10.0 20230609", (2021, 10, 0)),
        ("Intel(R) oneAPI DPC++/C++ Compiler 2024.0.0 (2024.0.0.20231017)", (2024, 0, 0)),
        ("unknown", None),
    ],
)
def test_parse_version(line: str, version: tuple | None) -> None:
    assert parse_version(line) == version


def test_native_target_is_the_widest_the_cpu_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    for flags, isa in (
        (set(TARGETS["avx512"].cpu_flags) | set(TARGETS["avx2"].cpu_flags), "AVX-512"),
        (set(TARGETS["avx2"].cpu_flags) | {"sse2"}, "AVX2+FMA"),
        ({"sse2"}, "SSE2"),
    ):
        monkeypatch.setattr(targets, "host_flags", lambda f=flags: frozenset(f))
        t = targets.native_target()
        assert (t.isa, t.host, t.runs_here()) == (isa, True, True)
        assert t.march["gnu"][0] == "-march=native" and t.march["intel"] == ("-xHost",)
    assert not TARGETS["knc"].runs_here()


def test_compiler_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("CC", "/opt/llvm/bin/clang-18")
    c = targets.get_compiler(None)
    assert (c.name, c.cxx) == ("clang", "/opt/llvm/bin/clang++-18")
    monkeypatch.setenv("CXX", "icpc")
    assert targets.get_compiler(None).name == "icc"
    assert targets.default_compiler_for(TARGETS["knc"]).name == "icc"
    with pytest.raises(UsageError, match="unknown compiler 'msvc'"):
        targets.get_compiler("msvc")
    with pytest.raises(UsageError, match="unknown target 'knm'"):
        targets.get_target("knm")


def test_targets_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["targets"]) == 0
    out = capsys.readouterr().out
    for name in ("native", *TARGETS):
        assert any(line.startswith(name) for line in out.splitlines()), name
    assert "-mmic" in out and "-xMIC-AVX512" in out and "-qopt-zmm-usage=high" in out

    assert cli.main(["targets", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"native", *TARGETS}
    assert rows["knc"]["output"] == "program" and rows["knc"]["runs_here"] is False
    assert rows["avx2"]["vector_bits"] == 256 and rows["knc"]["default_compiler"] == "icc"
    gcc = next(c for c in rows["generic"]["compilers"] if c["name"] == "gcc")
    assert gcc["installed"] and gcc["buildable"] and gcc["version"]
    icc = next(c for c in rows["knc"]["compilers"] if c["name"] == "icc")
    assert icc["installed"] == (shutil.which("icpc") is not None)


@pytest.mark.skipif(shutil.which("icpc") is not None, reason="icc is installed here")
@pytest.mark.parametrize("cmd", ["compile", "train"])
def test_missing_intel_compiler_for_a_host_target_is_one_line(
    cmd: str, in_repo, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [cmd, "specs/small.net", "--target", "avx2", "--cc", "icc"]
    argv += ["--data", DATA] if cmd == "train" else []  # train checks its data before compiling
    assert cli.main([*argv, "--build-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "icpc" in err and "Traceback" not in err, err


def test_knc_build_command_is_icc_mmic(in_repo, capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("icpc"):
        pytest.skip("icc is installed: its version decides the flags")
    assert cli.main(["compile", "specs/medium.net", "--target", "knc", "--emit", "cmd"]) == 0
    assert capsys.readouterr().out == (
        "icpc -O3 -std=c++11 -fp-model fast=1 -mmic -qopenmp -o chaosgen-medium main.cpp net.cpp\n"
    )
    assert cli.main(["compile", "specs/small.net", "--target", "knc", "--cc", "gcc"]) == 1
    err = capsys.readouterr().err
    assert "compiler 'gcc' cannot build target 'knc' (it needs one of: icc)" in err


def test_native_target_reads_the_l1d_size_as_getconf_does(tmp_path) -> None:
    getconf = shutil.which("getconf")
    if getconf:  # glibc's answer, an independent reader of the same hardware description
        import subprocess

        out = subprocess.run([getconf, "LEVEL1_DCACHE_SIZE"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip().isdigit() and int(out.stdout) > 0:
            assert targets.native_target().l1d_bytes == int(out.stdout)
    for level, kind, size, want in (
        ("1", "Data", "48K", 48 << 10),
        ("1", "Unified", "1M", 1 << 20),
        ("2", "Data", "48K", targets.DEFAULT_L1D_BYTES),  # no level-1 data cache described
        ("1", "Data", "garbled", targets.DEFAULT_L1D_BYTES),
    ):
        base = tmp_path / f"{level}{kind}{size}"
        (base / "index0").mkdir(parents=True)
        for name, text in (("level", "1"), ("type", "Instruction"), ("size", "32K")):
            (base / "index0" / name).write_text(text + "\n")
        (base / "index1").mkdir()
        for name, text in (("level", level), ("type", kind), ("size", size)):
            (base / "index1" / name).write_text(text + "\n")
        assert targets.host_l1d_bytes(str(base)) == want
    assert targets.host_l1d_bytes(str(tmp_path / "missing")) == targets.DEFAULT_L1D_BYTES


@pytest.mark.parametrize(
    ("vendor", "family", "flags", "width", "pipes"),
    [
        ("AuthenticAMD", 0x19, {"fma", "avx512f"}, 16, 1),  # Zen 4: 256-bit pipes
        ("AuthenticAMD", 0x19, {"fma"}, 8, 2),  # Zen 3
        ("AuthenticAMD", 0x1A, {"fma", "avx512f"}, 16, 2),  # Zen 5
        ("AuthenticAMD", 0x17, {"fma"}, 8, 1),  # Zen 1: 128-bit pipes
        ("GenuineIntel", 6, {"fma", "avx512f"}, 16, 2),  # Skylake-SP and later Xeons
        ("GenuineIntel", 6, {"fma"}, 8, 2),  # Haswell and later
        ("GenuineIntel", 6, {"fma"}, 4, 1),  # SSE code: no FMA
        ("GenuineIntel", 6, {"sse2"}, 4, 1),
    ],
)
def test_fma_pipes_from_the_cpu(monkeypatch, vendor, family, flags, width, pipes) -> None:
    monkeypatch.setattr(targets, "host_flags", lambda: frozenset(flags))
    monkeypatch.setattr(targets, "_cpu_identity", lambda: (vendor, family))
    assert targets.host_fma_pipes(width) == pipes
