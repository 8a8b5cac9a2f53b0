"""3D networks (volumes, issue 16): compiled 3D conv and pooling kernels against PyTorch's conv3d,
max_pool3d and avg_pool3d in float64 (forward, loss and every gradient, to 1e-4 of each array's
scale: reference.compare), on fixed nets and on Hypothesis-drawn random 3D nets; the 3D spec's
golden file; (N, C, D, H, W) data; and the synthetic volumetric task trained from the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proc import run
from reference import chaosgen_run, compare, oracle_run, random_weights, torch_run
from specgen import volume_texts
from test_codegen import _compare

import chaosgen
from chaosgen import codegen
from chaosgen.data.fit import choose_fit, place
from chaosgen.data.synthetic import shapes3d
from chaosgen.errors import ChaosgenError
from chaosgen.pipeline import front_end
from chaosgen.targets import TARGETS

torch = pytest.importorskip("torch")

# Random 3D specs compiled, built and checked per run (~1 to 3 s each); raise for a soak test.
RANDOM_VOLUMES = int(os.environ.get("CHAOSGEN_TEST_RANDOM_VOLUMES", "6"))
SPEC = ROOT / "specs" / "znn3d.net"

# Between them: every hidden activation on a 3D conv, stride 2, pads that differ per axis, a
# one-integer kernel and pad (a cube), non-cubic kernels and windows, max and avg pooling with
# strides, overlapping windows, round=floor and round=ceil (clipped windows), two input maps,
# dropout, a dense layer between volumes, both losses, and more maps than one register block
# holds (a full block, then a smaller one: 29 = 24 + 5, 31 = 24 + 7 on AVX-512).
FIXED = {
    "tanh_max_ceil": """
        input maps=2 size=7x8x9
        conv c1: maps=3 kernel=3x2x4 stride=2 pad=1x0x2 activation=scaled_tanh
        maxpool p1: window=2x2x2 stride=1 round=ceil
        conv c2: maps=2 kernel=2 activation=tanh
        avgpool p2: window=2x1x2 round=ceil
        dense f: units=5 activation=sigmoid
        output classes=3
    """,
    "relu_avg_mse": """
        input size=6x6x6
        conv c1: maps=2 kernel=3 pad=1 activation=relu
        avgpool p1: window=3x2x2 stride=2x2x1 round=floor
        conv c2: maps=3 kernel=1 activation=linear
        dropout d: rate=0.3
        conv c3: maps=2 kernel=2x2x2 activation=sigmoid
        output classes=4 activation=linear loss=mse
    """,
    "many_maps": """
        input maps=3 size=4x5x6
        conv c1: maps=29 kernel=2 activation=relu
        conv c2: maps=31 kernel=1x2x3 activation=tanh
        conv c3: maps=2 kernel=1 activation=scaled_tanh
        output classes=3
    """,
    "dense_between": """
        input size=5x4x3
        maxpool p1: window=3x2x2 stride=1x2x1 round=floor
        dense f: units=6 activation=relu
        conv c1: maps=3 kernel=1 activation=tanh
        output classes=2 activation=sigmoid loss=mse
    """,
}


def _check_against_torch(loaded, seed: int) -> dict[str, float]:
    """Random weights and volume: chaosgen's evaluation output, and its loss and gradients under
    a dropout mask (key (seed, 0, 0)), against PyTorch float64 with that mask."""
    rng = np.random.default_rng(seed)
    loaded.set_weights(random_weights(loaded.ir, rng))
    s = loaded.ir.input
    x = rng.uniform(-1, 1, (s.maps, *s.dims)).astype(np.float32)
    label = int(rng.integers(loaded.ir.output.out_shape.maps))
    key = (seed, 0, 0) if loaded.ir.dropouts else None
    got = chaosgen_run(loaded, x, label, dropout=key)
    masks = loaded.dropout_masks(*key) if key else None
    ref = oracle_run(torch_run, loaded.ir, loaded.get_weights(), x, label, masks)
    return compare(got, ref)


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory):
    """One build cache and spec folder for this module's networks."""
    return tmp_path_factory.mktemp("volumes")


def _fixed(name: str, build):
    """FIXED[name] written to a file, compiled and loaded (cached across this module's tests)."""
    path = build / f"{name}.net"
    path.write_text("\n".join(line.strip() for line in FIXED[name].strip().splitlines()) + "\n")
    return chaosgen.compile(path, build_dir=build / "cache")


@pytest.mark.parametrize("name", sorted(FIXED))
def test_fixed_volume_net_matches_torch(name: str, build) -> None:
    """Each fixed 3D net, on two random weight sets and volumes."""
    loaded = _fixed(name, build)
    for seed in (1, 2):
        _check_against_torch(loaded, seed)


@pytest.mark.parametrize("name", sorted(FIXED))
def test_fixed_volume_net_exports_to_onnx(name: str, build) -> None:
    """Each fixed 3D net exported to ONNX (3D Conv, MaxPool, AveragePool, the Reshape after a
    dense layer): onnxruntime's outputs on 8 random volumes equal chaosgen's forward (1e-5)."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from chaosgen.interop.onnx_export import to_onnx

    loaded = _fixed(name, build)
    rng = np.random.default_rng(4)
    weights = random_weights(loaded.ir, rng)
    loaded.set_weights(weights)
    s = loaded.ir.input
    x = rng.uniform(-1, 1, (8, s.maps, *s.dims)).astype(np.float32)
    sess = ort.InferenceSession(to_onnx(loaded.ir, weights).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert np.abs(got - loaded.forward(x)).max() <= 1e-5


def test_shipped_volume_spec_matches_torch(build) -> None:
    """specs/znn3d.net (5x5x5 and 3x3x3 kernels, 2x2x2 max-pooling, ceil) against PyTorch."""
    _check_against_torch(chaosgen.compile(SPEC, build_dir=build / "cache"), 3)


@settings(max_examples=RANDOM_VOLUMES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(spec=volume_texts(), seed=st.integers(0, 2**32 - 1))
def test_random_volume_net_matches_torch(spec, seed: int, build) -> None:
    """A random 3D spec, written as text, compiled, built and loaded: its shapes are the brute
    force's, and its output, loss and gradients match PyTorch float64."""
    shapes, text = spec
    path = build / f"v{hashlib.sha256(text.encode()).hexdigest()[:12]}.net"
    path.write_text(text)
    loaded = chaosgen.compile(path, build_dir=build / "cache")
    got = [None if lay.kind == "dense" else (lay.out_shape.maps, *lay.out_shape.dims)
           for lay in loaded.ir.layers[:-1]]
    assert got == shapes, text
    _check_against_torch(loaded, seed)


def test_golden_volume_spec(update_golden: bool, in_repo) -> None:
    """The generated code of specs/znn3d.net (one vector target): the 3D kernels pinned."""
    parsed, net = front_end("specs/znn3d.net")
    src = codegen.render(net, TARGETS["avx512"], parsed.lines)
    _compare(ROOT / "tests" / "golden" / "nets" / "znn3d.avx512.cpp", src.cpp, update_golden)


# --- data: (N, C, D, H, W) ---------------------------------------------------------------------
def test_volumes_fit_along_every_axis() -> None:
    """pad, center and crop of volumes, against slicing written out by hand."""
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(2, 1, 3, 4, 5)).astype(np.float32)
    out = np.zeros((2, 1, 5, 6, 7), np.float32)
    place(x, out, choose_fit((3, 4, 5), (5, 6, 7), None))
    assert (out[:, :, :3, :4, :5] == x).all() and out.sum() == pytest.approx(x.sum())
    out[:] = 0
    place(x, out, "center")
    assert (out[:, :, 1:4, 1:5, 1:6] == x).all() and out.sum() == pytest.approx(x.sum())
    small = np.zeros((2, 1, 1, 2, 3), np.float32)
    place(x, small, choose_fit((3, 4, 5), (1, 2, 3), "crop"))
    assert (small == x[:, :, 1:2, 1:3, 1:4]).all()
    with pytest.raises(ChaosgenError, match=r"images are 28x28, planes .* takes 18x18x18, "
                                            r"volumes"):
        choose_fit((28, 28), (18, 18, 18), None)


def test_shapes3d_classes_differ() -> None:
    """The synthetic task: balanced classes, and without noise each volume is its shape: a cube
    fills its bounding box; a cross lies within 1 voxel of two of its centre's axes; a ball
    does not fill its box and reaches beyond that."""
    x, y = shapes3d(60, 16, np.random.default_rng(1), noise=0.0)
    assert x.shape == (60, 1, 16, 16, 16) and np.bincount(y).tolist() == [20, 20, 20]
    for vol, label in zip(x[:, 0], y, strict=True):
        nz = np.argwhere(vol > 0.5)
        lo, hi = nz.min(axis=0), nz.max(axis=0)
        fill = len(nz) / np.prod(hi - lo + 1)
        on_bars = ((np.abs(nz - (lo + hi) / 2) <= 1).sum(axis=1) >= 2).all()
        assert {0: fill == 1.0, 1: fill < 0.8 and not on_bars, 2: fill < 1 and on_bars}[
            int(label)], (label, fill, on_bars)


# --- the synthetic task, trained from the CLI ---------------------------------------------------
def test_volumes_train_with_chaos_from_the_cli(tmp_path) -> None:
    """`chaosgen data shapes3d` then `chaosgen train specs/znn3d.net --data FILE.npz` with CHAOS
    on 2 threads: the test error of the last epoch is low (chance is 2/3)."""
    data = tmp_path / "shapes.npz"
    cli = [sys.executable, "-m", "chaosgen.cli"]
    run([*cli, "data", "shapes3d", "--out", data, "--train", "900", "--test", "300",
         "--seed", "5"], cwd=ROOT)
    log = tmp_path / "log.jsonl"
    run([*cli, "train", SPEC, "--data", data, "--scheme", "chaos", "--threads", "2",
         "--epochs", "4", "--log", log, "--checkpoint-dir", tmp_path / "run",
         "--build-dir", tmp_path / "build", "--quiet"], cwd=ROOT)
    last = json.loads(log.read_text().splitlines()[-1])
    assert last["test_images"] == 300 and last["test_error_rate"] < 0.1, last


# --- what refuses volumes, in one line --------------------------------------------------------
def test_what_volumes_cannot_do_is_one_line_each(tmp_path) -> None:
    """The standalone program, 2D data for a 3D net, volumes converted for the program and
    rows too wide for the kernels' accumulators: a one-line error (located for the spec), exit
    status 1, no traceback, nothing written."""
    cli = [sys.executable, "-m", "chaosgen.cli"]
    flat = tmp_path / "flat.npz"
    np.savez(flat, x_train=np.zeros((4, 1, 18, 18), np.float32), y_train=np.arange(4) % 3)
    vols = tmp_path / "vols.npz"
    np.savez(vols, x_train=np.zeros((4, 1, 3, 4, 5), np.float32), y_train=np.arange(4) % 3)
    wide = tmp_path / "wide.net"
    wide.write_text("input size=1x1x40000\nconv c: maps=1 kernel=1x1x2\noutput classes=2\n")
    cases = [
        (["compile", SPEC, "--program", "--out", tmp_path / "prog"],
         "the standalone program reads 2D images only, and this network takes volumes"),
        (["train", SPEC, "--data", flat, "--epochs", "1", "--build-dir", tmp_path / "b"],
         "the data's images are 18x18, planes (H x W), but the network takes 18x18x18"),
        (["data", "convert", vols, "--out", tmp_path / "idx"],
         f"{vols}: volumes 1x3x4x5: the native program reads 2D images only"),
        (["compile", wide, "--emit", "cpp"],
         f"{wide}:2:1: error: conv 'c': rows of 80000 accumulators"),
    ]
    for args, message in cases:
        proc = subprocess.run([*cli, *map(str, args)], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 1 and message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and not proc.stdout.strip(), proc
    assert not (tmp_path / "prog").exists() and not (tmp_path / "idx").exists()
