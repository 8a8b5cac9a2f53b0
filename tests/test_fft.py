"""FFT convolution (`conv ... algorithm=fft`, FFTW): forward, loss and every gradient against
PyTorch float64 (and the NumPy oracle) on fixed nets with every construct the FFT path handles
(stride, pad, the activation left to a max-pool, a first layer without input deltas, an input
size FFTW pads, a kernel as large as its input, volumes) and on random nets; the same nets with
`algorithm=direct` agree within float32 tolerance; `algorithm=auto` keeps the paper's nets
direct; a bad algorithm is a located error; CHAOS trains an FFT net from the CLI."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, HAVE_FFTW, ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import (
    assert_close,
    chaosgen_run,
    compare,
    numpy_run,
    oracle_run,
    random_weights,
    torch_run,
)
from specgen import spec_texts

import chaosgen
from chaosgen import cli, codegen
from chaosgen.check import check
from chaosgen.errors import SpecError
from chaosgen.parse import parse_text
from chaosgen.pipeline import front_end
from chaosgen.targets import TARGETS

needs_fftw = pytest.mark.skipif(not HAVE_FFTW, reason="FFTW (libfftw3-dev) is not installed")

try:
    import torch  # noqa: F401

    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False

SPECS = {
    # stride 2 with pad (the padded core), relu into a max-pool (the pool applies it), a first
    # layer (no input deltas), 12x12 -> transforms of 12, 14x14 padded core
    "stride_pad_pool": """
        network stride_pad_pool
        input maps=2 size=12x12
        conv c1: maps=3 kernel=5x5 activation=tanh algorithm=fft
        conv c2: maps=4 kernel=3x3 activation=relu algorithm=fft stride=2 pad=1
        maxpool p1: window=2x2
        output out: classes=5
    """,
    # non-square kernels and input, sizes FFTW pads (11 -> 12, 13 -> 14), an FFT layer after a
    # direct one, sigmoid, avg-pool, mse
    "odd_sizes_mse": """
        network odd_sizes_mse
        input maps=1 size=13x11
        conv c1: maps=2 kernel=2x4 activation=scaled_tanh algorithm=direct
        conv c2: maps=3 kernel=5x3 activation=sigmoid algorithm=fft stride=3
        avgpool p1: window=1x2
        output out: classes=4 activation=sigmoid loss=mse
    """,
    # a kernel as large as its input (one output per map), pad 2x1, linear
    "whole_kernel": """
        network whole_kernel
        input maps=3 size=7x6
        conv c1: maps=2 kernel=3x3 activation=relu algorithm=fft pad=2x1
        conv c2: maps=3 kernel=9x6 activation=linear algorithm=fft
        dense f1: units=5 activation=tanh
        output out: classes=3
    """,
    # volumes: a 5x5x5 kernel into a max-pool (the 3D pool applies no activation: the conv
    # keeps it), a padded strided 3x2x3 kernel, a depth FFTW pads (14 -> 14, 13 -> 14, 11 -> 12)
    "volume": """
        network volume
        input maps=2 size=14x13x11
        conv c1: maps=3 kernel=5x5x5 activation=relu algorithm=fft
        maxpool p1: window=2x2x2 round=floor
        conv c2: maps=4 kernel=3x2x3 stride=2 pad=1 activation=tanh algorithm=fft
        output out: classes=3
    """,
}


def _build(text: str, folder: Path, name: str):
    path = folder / f"{name}.net"
    path.write_text(text)
    return chaosgen.compile(path, build_dir=folder / "build")


def _run(loaded, seed: int):
    rng = np.random.default_rng(seed)
    weights = random_weights(loaded.ir, rng)
    loaded.set_weights(weights)
    s = loaded.ir.input
    x = rng.uniform(-1.0, 1.0, (s.maps, *s.dims)).astype(np.float32)
    label = int(rng.integers(loaded.ir.output.out_shape.maps))
    return chaosgen_run(loaded, x, label), weights, x, label


@needs_fftw
@pytest.mark.parametrize("name", sorted(SPECS))
def test_fft_matches_the_oracles_and_direct(name: str, tmp_path: Path) -> None:
    """Forward, loss and every gradient of the FFT layers match NumPy float64 (planes) and
    PyTorch float64 (1e-4 of each array's scale), and the direct kernels within float32
    tolerance."""
    text = SPECS[name]
    if name == "volume" and not HAVE_TORCH:
        pytest.skip("the volumes' oracle is PyTorch (conv3d), not installed")
    fft = _build(text, tmp_path, name)
    views = codegen.layer_views(fft.ir, TARGETS["avx512"], ())
    assert any(v.get("algorithm") == "fft" for v in views)
    got, weights, x, label = _run(fft, 7)
    if name != "volume":
        compare(got, numpy_run(fft.ir, weights, x, label))
    if HAVE_TORCH:
        compare(got, oracle_run(torch_run, fft.ir, weights, x, label))
    direct = _build(text.replace("algorithm=fft", "algorithm=direct"), tmp_path, name + "_d")
    ref, *_ = _run(direct, 7)
    assert_close(got.output, ref.output, "output vs direct", rtol=2e-5)
    for key, g in ref.grads.items():
        assert_close(got.grads[key], g, f"{key} vs direct", rtol=2e-5)


_CONV_LINE = re.compile(r"^(\s*conv\b.*)$", re.M)


@needs_fftw
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=spec_texts(), seed=st.integers(0, 2**32 - 1))
def test_random_net_by_fft_matches_the_oracles(spec, seed: int, tmp_path_factory) -> None:
    """A random spec with every conv layer on FFT matches NumPy float64 (and PyTorch)."""
    _, text = spec
    text = _CONV_LINE.sub(lambda m: m.group(1).split("#")[0] + " algorithm=fft", text)
    folder = tmp_path_factory.getbasetemp() / "fft-random"
    folder.mkdir(exist_ok=True)
    loaded = _build(text, folder, "r" + hashlib.sha256(text.encode()).hexdigest()[:12])
    got, weights, x, label = _run(loaded, seed % 1000)
    compare(got, numpy_run(loaded.ir, weights, x, label))
    if HAVE_TORCH:
        compare(got, torch_run(loaded.ir, weights, x, label))


@pytest.mark.parametrize(
    "spec", ["small", "medium", "large", "lenet", "mnist_pytorch", "cifar10_quick"]
)
def test_auto_keeps_the_shipped_nets_direct(spec: str) -> None:
    """algorithm=auto (the default): the cost model keeps every shipped net's conv layers on the
    direct kernels, and the header says so, with the estimates."""
    parsed, net = front_end(ROOT / "specs" / f"{spec}.net")
    cpp = codegen.render(net, TARGETS["avx512"], parsed.lines).cpp
    lines = [ln for ln in cpp.splitlines() if ln.startswith("// conv algorithm:")]
    convs = [lay.name for lay in net.layers if lay.kind == "conv"]
    assert [ln.split()[3:5] for ln in lines] == [[c, "direct"] for c in convs]
    assert all("cost model: direct" in ln for ln in lines)
    assert "fftw" not in cpp.lower()


def test_auto_picks_fft_for_a_large_kernel() -> None:
    """A 64x64 input with a 17x17 kernel and 16 maps, and a 24x24x24 volume with a 7x7x7 kernel
    (FFT measured 0.3x of direct): the cost model picks FFT, says why, and the build links
    FFTW."""
    text = (
        "input maps=16 size=64x64\nconv c0: maps=16 kernel=1\n"
        "conv c1: maps=16 kernel=17x17 activation=relu\noutput classes=2\n"
    )
    net = check(parse_text(text, "big.net"))
    source = codegen.render(net, TARGETS["avx512"], tuple(text.splitlines()))
    assert "// conv algorithm: c1 fft (cost model: direct" in source.cpp
    assert source.libs == ("-lfftw3f",)
    assert codegen.render(net, TARGETS["knc"]).libs == ("-mkl",)
    volume = (
        "input maps=4 size=24x24x24\nconv c0: maps=4 kernel=1\n"
        "conv c1: maps=4 kernel=7x7x7 activation=relu\noutput classes=2\n"
    )
    net = check(parse_text(volume, "vol.net"))
    cpp = codegen.render(net, TARGETS["avx512"], tuple(volume.splitlines())).cpp
    assert "// conv algorithm: c1 fft (cost model: direct" in cpp


def test_an_unknown_algorithm_is_a_located_error() -> None:
    text = "input size=8x8\nconv c1: maps=2 kernel=3 algorithm=winograd\noutput classes=2\n"
    with pytest.raises(SpecError) as e:
        check(parse_text(text, "x.net"))
    assert str(e.value).splitlines()[0] == (
        "x.net:2:36: error: conv 'c1': unknown algorithm 'winograd'; "
        "expected one of auto, direct, fft"
    )


@needs_fftw
@pytest.mark.skipif(not Path(DATA).is_dir(), reason="MNIST not found")
def test_chaos_trains_an_fft_net_from_the_cli(tmp_path: Path) -> None:
    """Two threads of CHAOS on an FFT net, from the CLI: the run finishes and learns (test error
    well below chance after one short epoch)."""
    spec = tmp_path / "fft.net"
    spec.write_text(
        "network fftnet\ninput size=29x29\n"
        "conv c1: maps=6 kernel=6x6 activation=relu algorithm=fft\n"
        "maxpool p1: window=2x2\n"
        "conv c2: maps=8 kernel=5x5 activation=relu algorithm=fft\n"
        "output out: classes=10\ntrain epochs=1 eta=0.01 seed=3\n"
    )
    log = tmp_path / "run.jsonl"
    argv = [
        "train",
        str(spec),
        "--build-dir",
        str(tmp_path / "build"),
        "--data",
        str(DATA),
        "--limit",
        "3000",
        "--val-limit",
        "200",
        "--test-limit",
        "1000",
        "--threads",
        "2",
        "--checkpoint-dir",
        str(tmp_path / "ck"),
        "--log",
        str(log),
        "--quiet",
    ]
    assert cli.main(argv) == 0
    rec = json.loads(log.read_text().splitlines()[-1])
    assert rec["config"]["scheme"] == "chaos" and rec["config"]["threads"] == 2
    assert rec["test_error_rate"] < 0.3, rec  # chance: 0.9


LIBDIR = Path("/usr/lib/x86_64-linux-gnu")


@needs_fftw
@pytest.mark.parametrize(
    "hidden",
    [("/usr/include", ("fftw3.h",)), (str(LIBDIR), ("libfftw3f.so", "libfftw3f.a"))],
    ids=["header", "library"],
)
def test_missing_fftw_is_one_line_saying_how_to_install_it(hidden, tmp_path: Path) -> None:
    """With FFTW's header (or its library) really absent, in a private mount namespace where an
    overlay whites it out: `chaosgen compile` of an FFT net exits 1 with one line that says what
    is missing and how to install it, and publishes no library."""
    folder, names = hidden
    if not (Path(folder) / names[0]).exists() or shutil.which("unshare") is None:
        pytest.skip(f"{folder}/{names[0]} is not where this test hides it")
    white = tmp_path / "whiteout"
    white.mkdir()
    spec = tmp_path / "f.net"
    spec.write_text("input size=8x8\nconv maps=2 kernel=3 algorithm=fft\noutput classes=2\n")
    mknod = " && ".join(f"mknod {white / n} c 0 0" for n in names)
    script = (
        f"{mknod} && mount -t overlay overlay -o lowerdir={white}:{folder} {folder} && "
        f"exec {sys.executable} -m chaosgen.cli compile {spec} "
        f"--build-dir {tmp_path / 'build'}"
    )
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    if "mount" in proc.stderr or "unshare" in proc.stderr or "mknod" in proc.stderr:
        pytest.skip(f"cannot hide FFTW here (needs root): {proc.stderr.strip()}")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("chaosgen: error: compiling f for native with ")
    assert lines[0].endswith(
        "FFTW (single precision), which algorithm=fft layers need, is not "
        "installed: apt-get install libfftw3-dev (or write algorithm=direct)"
    )
    assert not list((tmp_path / "build").rglob("*.so"))
