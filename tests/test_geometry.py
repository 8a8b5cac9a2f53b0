"""Padding, strided convs, overlapping and rounded pools, continuation lines (issue 11).

Sizes are pinned against PyTorch's own layers; compiled nets (every conv weight-gradient form,
random nets drawn by Hypothesis) against PyTorch float64 autograd and the NumPy oracle; a padded,
strided net trains on real MNIST with CHAOS on two threads.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import chaosgen_run, compare, numpy_run, random_weights, torch_run
from specgen import net_descs, plain_text, spec_texts
from test_sanitize import _check as sanitized_run
from test_sanitize import sanitizers  # noqa: F401 (the fixture)

import chaosgen
from chaosgen import codegen, tune
from chaosgen.check import check, pool_size
from chaosgen.errors import SpecError
from chaosgen.parse import parse_text
from chaosgen.pipeline import front_end
from chaosgen.targets import default_compiler_for, native_target

torch = pytest.importorskip("torch")
F = torch.nn.functional

# Random specs with the new constructs compiled, built and checked per run (~0.5 s each).
RANDOM_NETS = int(os.environ.get("CHAOSGEN_TEST_RANDOM_GEOMETRY_NETS", "24"))
DATA = Path(os.environ.get("CHAOSGEN_DATA") or ROOT.parent / "shared" / "data" / "mnist")


def _ir(text: str, name: str = "g.net"):
    return check(parse_text(text, name))


def _errors(text: str) -> list[str]:
    with pytest.raises(SpecError) as err:
        _ir(text)
    return [f"{d.loc}: {d.message}" for d in err.value.diagnostics]


# --- sizes, against PyTorch's layers ------------------------------------------------------------
def test_pool_sizes_match_pytorch_floor_and_ceil_mode() -> None:
    """Every input side 1..14, window 1..side, stride 1..5: our sizes (the checker's formula and
    a compiled spec's IR) are PyTorch's max_pool2d/avg_pool2d output sizes, ceil_mode or not."""
    checked = 0
    for n in range(1, 15):
        for k in range(1, n + 1):
            for s in range(1, 6):
                x = torch.zeros(1, 1, n, n)
                for rnd in ("floor", "ceil"):
                    want = F.max_pool2d(x, k, s, ceil_mode=rnd == "ceil").shape[-1]
                    assert F.avg_pool2d(x, k, s, ceil_mode=rnd == "ceil").shape[-1] == want
                    assert pool_size(n, k, s, rnd) == want, (n, k, s, rnd)
                    checked += 1
    assert checked > 1000
    net = _ir("input size=32\nmaxpool window=3 stride=2 round=ceil\n"
              "avgpool window=3 stride=2 round=ceil\navgpool window=3 stride=2 round=ceil\n"
              "output classes=2\n")
    assert [lay.out_shape.h for lay in net.layers[:3]] == [16, 8, 4]  # cifar10_quick's sizes


def test_conv_sizes_match_pytorch() -> None:
    """Padded, strided conv output sizes are torch.nn.Conv2d's."""
    for n, k, s, p in [(32, 5, 1, 2), (7, 3, 2, 1), (5, 4, 3, 2), (1, 3, 1, 2), (9, 2, 2, 1)]:
        net = _ir(f"input size={n}x{n + 1}\nconv maps=2 kernel={k} stride={s} pad={p}x{p - 1}\n"
                  "output classes=2\n")
        want = F.conv2d(torch.zeros(1, 1, n, n + 1), torch.zeros(2, 1, k, k), stride=s,
                        padding=(p, p - 1)).shape[-2:]
        assert (net.layers[0].out_shape.h, net.layers[0].out_shape.w) == tuple(want)


# --- checks: ranges, located errors, --emit ir ---------------------------------------------------
@pytest.mark.parametrize(
    "line, want",
    [
        ("conv c: maps=2 kernel=3 pad=3", "g.net:2:29: conv 'c': 'pad' must be between 0 and 2 "
         "(the kernel height 3 less one), found 3"),
        ("conv c: maps=2 kernel=3x2 pad=1x2", "g.net:2:31: conv 'c': 'pad' must be between 0 "
         "and 1 (the kernel width 2 less one), found 2"),
        ("conv c: maps=2 kernel=3 pad=-1", "g.net:2:29: conv 'c': 'pad' must be between 0 and 2 "
         "(the kernel height 3 less one), found -1"),
        ("conv c: maps=2 kernel=3 pad=1x1x1", "g.net:2:29: conv 'c': 'pad' must be P or PHxPW, "
         "found 3 sizes"),
        ("conv c: maps=2 kernel=3 pad=relu", "g.net:2:29: conv 'c': 'pad' must be an integer or "
         "sizes like 4x4, found 'relu'"),
        ("conv c: maps=2 kernel=9 pad=1", "g.net:2:23: conv 'c': kernel 9x9 is larger than its "
         "input 6x6 (padded 8x8)"),
        ("maxpool p: window=2 stride=0", "g.net:2:28: maxpool 'p': 'stride' must be between 1 "
         "and 65536, found 0"),
        ("avgpool p: window=2 stride=1x0", "g.net:2:28: avgpool 'p': 'stride' must be between 1 "
         "and 65536, found 0"),
        ("maxpool p: window=2 round=up", "g.net:2:27: maxpool 'p': unknown round 'up'; expected "
         "one of ceil, floor"),
        ("maxpool p: window=4", "g.net:2:19: maxpool 'p': window 4x4 does not tile its input 6x6 "
         "(pooling windows do not overlap and must divide the input exactly); add round=floor "
         "to drop the rest (PyTorch, Keras) or round=ceil for a last, partial window (Caffe)"),
        ("maxpool p: window=3 stride=2", "g.net:2:19: maxpool 'p': window 3x3 does not tile its "
         "input 6x6 (windows 2x2 apart must end exactly at the input's edge); add round=floor "
         "to drop the rest (PyTorch, Keras) or round=ceil for a last, partial window (Caffe)"),
        ("avgpool p: window=7 stride=1 round=ceil", "g.net:2:19: avgpool 'p': window 7x7 is "
         "larger than its input 6x6"),
    ],
)
def test_bad_geometry_is_a_located_error(line: str, want: str) -> None:
    assert _errors(f"input size=6\n{line}\noutput classes=2\n") == [want]


def test_new_attributes_show_in_ir_and_summary_only_when_used() -> None:
    net = _ir("input maps=3 size=32\nconv c1: maps=4 kernel=5 pad=2\n"
              "maxpool p1: window=3 stride=2 round=ceil\navgpool p2: window=2 stride=1x2 "
              "round=floor\nmaxpool p3: window=3x2 stride=3x2\noutput classes=2\n")
    d = net.describe()["layers"]
    assert (d[0]["pad_h"], d[0]["pad_w"]) == (2, 2)
    assert (d[1]["stride_h"], d[1]["stride_w"], d[1]["round"]) == (2, 2, "ceil")
    assert (d[2]["stride_h"], d[2]["stride_w"], d[2]["round"]) == (1, 2, "floor")
    assert d[3]["stride_h"] == 3 and "round" not in d[3]
    plain = _ir("input size=8\nconv maps=2 kernel=3\nmaxpool window=2\noutput classes=2\n")
    assert not {"pad_h", "stride_h", "round"} & {k for lay in plain.describe()["layers"]
                                                  for k in lay}
    rows = "\n".join(codegen.summary_rows(net))
    assert "5x5 pad 2x2" in rows and "3x3 /2x2 ceil" in rows and "2x2 /1x2 floor" in rows
    # a stride equal to the window is not shown
    assert ["p3", "maxpool", "4", "5x4", "80", "3x2"] in [r.split() for r in rows.splitlines()]


# --- continuation lines -------------------------------------------------------------------------
def test_continuation_lines_join_their_statement() -> None:
    text = ("# a header\n"
            "input maps=1   # first\n"
            "      size=8x8 # second\n"
            "conv c1: maps=2\n"
            "\n"
            "   # a comment line between\n"
            "\tkernel=3 pad=1\n"
            "output classes=3\n"
            "train epochs=2\n"
            "      eta=0.5\n")
    spec = parse_text(text, "c.net")
    joined = parse_text("input maps=1 size=8x8\nconv c1: maps=2 kernel=3 pad=1\n"
                        "output classes=3\ntrain epochs=2 eta=0.5\n", "c.net")
    assert spec == joined
    conv = spec.statements[1]
    assert str(conv.loc) == "c.net:4:1"
    assert [str(a.value.loc) for a in conv.attrs] == ["c.net:4:15", "c.net:7:9", "c.net:7:15"]
    assert check(spec).layers[0].pad_h == 1


def test_equal_indentation_starts_new_statements() -> None:
    """A whole file indented alike (the first statement's indentation is the base) is today's
    one statement per line; an indented first line continues nothing."""
    spec = parse_text("    input size=4\n    output classes=2\n", "i.net")
    assert [s.kind for s in spec.statements] == ["input", "output"]
    spec = parse_text("\n\n  # c\n  input size=4\n  output classes=2\n     loss=mse\n", "i.net")
    assert [s.kind for s in spec.statements] == ["input", "output"]
    assert [a.key for a in spec.statements[1].attrs] == ["classes", "loss"]


def test_errors_on_continuation_lines_point_at_their_line() -> None:
    errs = _errors("input size=6\nconv c: maps=2\n   kernel=3\n   pad=5\noutput classes=2\n")
    assert errs == ["g.net:4:8: conv 'c': 'pad' must be between 0 and 2 (the kernel height 3 "
                    "less one), found 5"]
    with pytest.raises(SpecError) as err:
        parse_text("network n\n  input size=4\noutput classes=2\n", "x.net")
    (d,) = err.value.diagnostics
    assert str(d.loc) == "x.net:2:3" and "continues it" in d.message


# --- compiled nets against PyTorch float64 -------------------------------------------------------
FIXED = {
    # a padded first layer (no backward data), a padded strided one after it, overlapping
    # ceil max pooling that takes the conv's activation, ceil average pooling with clipped windows
    "cifar_like": """
        input maps=3 size=13x11
        conv c1: maps=4 kernel=5x3 pad=2x1 activation=relu
        maxpool p1: window=3x3 stride=2 round=ceil
        conv c2: maps=3 kernel=3 pad=1 stride=2 activation=tanh
        avgpool p2: window=2 stride=1x2 round=ceil
        output out: classes=5
    """,
    # floor pools with a rest, a stride larger than the window, overlapping average pooling,
    # a padded conv after a pool, its pad larger along one axis
    "floor": """
        input maps=2 size=11x10
        conv c1: maps=3 kernel=3 activation=scaled_tanh
        maxpool p1: window=2 round=floor
        conv c2: maps=5 kernel=3x4 pad=2x3 activation=sigmoid
        avgpool p2: window=2 stride=1 round=floor
        maxpool p3: window=2x1 stride=3x2 round=ceil
        dense f1: units=6 activation=relu
        output out: classes=4 activation=linear loss=mse
    """,
}


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory):
    """One build cache for the module; at the end, prints the largest error of the random nets
    against PyTorch (`pytest -s`)."""
    yield tmp_path_factory.mktemp("geometry-build")
    if _WORST:
        print(f"\nrandom geometry nets: {_WORST['runs']} runs, largest scaled error vs PyTorch "
              f"{_WORST['max']:.2e}")


def _check_net(path: Path, build: Path, seed: int, forms: dict | None = None) -> dict:
    """Compile (with the given weight-gradient forms), run one image, compare with PyTorch and
    NumPy; return the scaled errors against PyTorch."""
    _, net = front_end(path)
    target = native_target()
    if forms is not None:
        tune.save(net, target, default_compiler_for(target), build, forms, {})
    loaded = chaosgen.compile(path, build_dir=build)
    rng = np.random.default_rng(seed)
    loaded.set_weights(random_weights(loaded.ir, rng))
    s = loaded.ir.input
    x = rng.uniform(-1.0, 1.0, (s.maps, s.h, s.w)).astype(np.float32)
    label = int(rng.integers(loaded.ir.output.out_shape.maps))
    got = chaosgen_run(loaded, x, label)
    compare(got, numpy_run(loaded.ir, loaded.get_weights(), x, label))
    return compare(got, torch_run(loaded.ir, loaded.get_weights(), x, label))


@pytest.mark.parametrize("name", sorted(FIXED))
def test_fixed_nets_match_pytorch_with_every_weight_gradient_form(name, build_dir, tmp_path):
    """Each conv layer's every feasible weight-gradient form (round r: the r-th form of each
    layer, as `chaosgen tune` builds them; one blocking per form), forward and every gradient
    within 1e-4."""
    path = tmp_path / f"{name}.net"
    path.write_text(FIXED[name])
    _, net = front_end(path)
    cands = {
        layer: list({c.partition("/")[0]: c for c in reversed(forms)}.values())
        for layer, forms in tune.candidates(net, native_target()).items()
    }
    rounds = max(map(len, cands.values()))
    assert rounds >= 2
    worst = 0.0
    for r in range(rounds):
        forms = {layer: c[r % len(c)] for layer, c in cands.items()}
        errors = _check_net(path, build_dir, seed=r, forms=forms)
        worst = max(worst, *errors.values())
    print(f"\n{name}: {rounds} form rounds, largest scaled error vs PyTorch {worst:.2e}")


def test_golden_geometry_spec_matches_pytorch(build_dir) -> None:
    """tests/nets/geometry.net (cifar10_quick's layers, pinned by a golden file) on the cost
    model's forms: cifar10_quick's sizes 32 -> 16 -> 8 -> 4, and PyTorch's numbers."""
    path = ROOT / "tests" / "nets" / "geometry.net"
    _, net = front_end(path)
    assert [lay.out_shape.h for lay in net.layers[:6]] == [32, 16, 16, 8, 8, 4]
    errors = _check_net(path, build_dir, seed=7)
    print(f"\ngeometry.net: largest scaled error vs PyTorch {max(errors.values()):.2e}")


@pytest.mark.parametrize("name", sorted(FIXED))
def test_fixed_nets_are_sanitizer_clean(name: str, tmp_path: Path, sanitizers) -> None:  # noqa: F811
    """The zero-bordered buffers, the interior copies and the clipped windows under ASan and
    UBSan (exact buffer sizes), trained with every scheme on 1 and 2 threads."""
    print(sanitized_run(name, FIXED[name], tmp_path))


def test_average_pool_border_divisor_is_pytorchs() -> None:
    """PyTorch's avg_pool2d with ceil_mode divides a clipped window by its part inside the
    (unpadded) input, count_include_pad or not: the divisor chaosgen uses."""
    x = torch.arange(25.0).reshape(1, 1, 5, 5)
    for include in (True, False):
        y = F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=include)
        assert y.shape[-1] == 3 and float(y[0, 0, 2, 2]) == 24.0  # the window of x[4, 4] alone
        assert float(y[0, 0, 0, 2]) == (4.0 + 9.0) / 2


_WORST: dict = {}


@settings(max_examples=RANDOM_NETS, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=spec_texts(net_descs(max_hidden=3, max_side=9, geometry=True), continuation=True),
    seed=st.integers(0, 2**32 - 1),
    pick=st.randoms(use_true_random=False),
)
def test_random_geometry_nets_match_pytorch(spec, seed, pick, build_dir) -> None:
    """Random nets with pad=, strides, overlapping and rounded pools, written with continuation
    lines: the brute-force shapes are chaosgen's, and forward and every gradient match PyTorch
    float64 (and NumPy), each conv layer's weight-gradient form drawn among the feasible ones."""
    desc, text = spec
    assert desc.valid
    folder = build_dir / "random"
    folder.mkdir(exist_ok=True)
    path = folder / f"r{hashlib.sha256(text.encode()).hexdigest()[:12]}.net"
    path.write_bytes(text.encode())
    _, net = front_end(path)
    shapes = [(lay.out_shape.maps, lay.out_shape.h, lay.out_shape.w) for lay in net.layers]
    assert shapes == [lay.out for lay in desc.layers]
    assert check(parse_text(plain_text(desc), "p.net")).describe()["layers"] == \
        net.describe()["layers"]
    forms = {layer: pick.choice(c) for layer, c in tune.candidates(net, native_target()).items()}
    errors = _check_net(path, folder, seed, forms)
    _WORST["max"] = max(_WORST.get("max", 0.0), *errors.values())
    _WORST["runs"] = _WORST.get("runs", 0) + 1


# --- training on real MNIST ---------------------------------------------------------------------
TRAIN_SPEC = """
input   maps=1 size=29x29
conv    c1: maps=6 kernel=5 pad=2                       # 6 x 29x29
maxpool p1: window=3 stride=2 round=ceil                # 6 x 14x14
conv    c2: maps=8 kernel=3 pad=1 stride=2              # 8 x 7x7
avgpool p2: window=3 stride=2 round=ceil                # 8 x 3x3
dense   f1: units=32
output  out: classes=10
train   epochs=3 eta=0.01
        decay=1 seed=1
"""


def test_padded_strided_net_trains_on_mnist_with_chaos(tmp_path) -> None:
    """A few hundred real MNIST images, CHAOS on two threads: the training loss falls epoch by
    epoch and the validation loss falls."""
    from chaosgen.data import load_mnist
    from chaosgen.train import Config, Runtime, Trainer

    if not any(DATA.glob("train-images-idx3-ubyte*")):
        pytest.skip("no MNIST")
    spec = tmp_path / "geo.net"
    spec.write_text(TRAIN_SPEC)
    net = chaosgen.compile(spec, build_dir=tmp_path / "build")
    net.init_weights(1)
    cfg = Config(scheme="chaos", threads=2, epochs=3, eta=0.01, decay=1.0, limit=400,
                 val_limit=400, test_limit=200)
    recs = Trainer(Runtime(net), load_mnist(DATA), cfg, quiet=True).run()
    losses = [r["train_loss"] for r in recs]
    print("\ntrain loss per epoch:", json.dumps(losses), "val error", recs[-1]["val_error"])
    assert losses[0] > losses[1] > losses[2]
    assert recs[-1]["val_error"] < recs[0]["val_error"]
