"""Compiled networks against independent oracles: NumPy float64 (itself checked by central finite
differences) and PyTorch float64. Forward outputs, the loss and every gradient, float32 vs float64,
to 1e-4 of the array's scale (see reference.assert_close)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, ROOT, SHIPPED
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import (
    chaosgen_run,
    compare,
    finite_differences,
    numpy_run,
    oracle_run,
    random_weights,
    torch_run,
)
from specgen import net_descs, plain_text, spec_texts

import chaosgen
from chaosgen import tune
from chaosgen.check import check
from chaosgen.errors import ChaosgenError
from chaosgen.parse import parse_text
from chaosgen.pipeline import front_end
from chaosgen.targets import default_compiler_for, native_target
from chaosgen.train import Runtime

try:
    import torch  # noqa: F401

    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False

# Random specs compiled, built and checked per run (~1 s each); raise it for a soak test. With the
# geometry (24) and dropout (18) random nets, 60+ networks are built and checked per run.
RANDOM_NETS = int(os.environ.get("CHAOSGEN_TEST_RANDOM_NETS", "20"))

# One net per construct the finite-difference check must see: every layer kind, activation,
# stride > 1 with a floored remainder, non-square windows, every output activation and loss.
FD_SPECS = {
    "conv_max": """
        input maps=2 size=9x8
        conv maps=3 kernel=3x2 stride=2 activation=scaled_tanh
        maxpool window=2x1
        dense units=4 activation=tanh
        output classes=3
    """,
    "relu_avg_mse": """
        input maps=1 size=6x6
        conv maps=2 kernel=3 activation=relu
        avgpool window=2x4
        conv maps=3 kernel=1 activation=sigmoid
        output classes=4 activation=sigmoid loss=mse
    """,
    "softmax_mse": """
        input maps=3 size=4x5
        dense units=5 activation=linear
        dense units=3 activation=relu
        output classes=5 activation=softmax loss=mse
    """,
    "linear_out": """
        input size=5x5
        conv maps=2 kernel=2 stride=3 activation=linear
        output classes=2 activation=linear loss=mse
    """,
    "tanh_out": """
        input size=7x3
        maxpool window=7x3
        output classes=3 activation=tanh loss=mse
    """,
    "scaled_tanh_out": """
        input maps=2 size=3x3
        conv maps=2 kernel=3 activation=sigmoid
        conv maps=3 kernel=1 activation=tanh
        output classes=2 activation=scaled_tanh loss=mse
    """,
    "relu_out": """
        input size=4x4
        dense units=6 activation=scaled_tanh
        output classes=3 activation=relu loss=mse
    """,
}


def _ir(text: str, name: str = "t.net"):
    return check(parse_text(text, name))


def _image(net, rng: np.random.Generator) -> np.ndarray:
    s = net.input
    return rng.uniform(-1.0, 1.0, (s.maps, s.h, s.w)).astype(np.float32)


# --- the NumPy oracle is right ----------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FD_SPECS))
def test_numpy_oracle_matches_finite_differences(name: str) -> None:
    """Every parameter's gradient from the NumPy oracle equals a central difference (float64)."""
    net = _ir(FD_SPECS[name])
    rng = np.random.default_rng(7)
    w = {k: v.astype(np.float64) for k, v in random_weights(net, rng).items()}
    x = _image(net, rng).astype(np.float64)
    label = int(rng.integers(net.output.out_shape.maps))
    ref = numpy_run(net, w, x, label)
    fd = finite_differences(net, w, x, label, {k: np.arange(v.size) for k, v in w.items()})
    for key in w:
        np.testing.assert_allclose(
            ref.grads[key].reshape(-1), fd[key], rtol=1e-6, atol=1e-8, err_msg=key
        )


def test_numpy_oracle_matches_finite_differences_on_small_spec() -> None:
    """The same on the small spec, at 12 random entries of each parameter array."""
    net = _ir((ROOT / "specs/small.net").read_text(), "specs/small.net")
    rng = np.random.default_rng(3)
    w = {k: v.astype(np.float64) for k, v in random_weights(net, rng).items()}
    x = _image(net, rng).astype(np.float64)
    ref = numpy_run(net, w, x, 4)
    idx = {k: rng.choice(v.size, min(12, v.size), replace=False) for k, v in w.items()}
    fd = finite_differences(net, w, x, 4, idx)
    for key in w:
        np.testing.assert_allclose(
            ref.grads[key].reshape(-1)[idx[key]], fd[key], rtol=1e-6, atol=1e-8, err_msg=key
        )


@settings(max_examples=30, deadline=None)
@given(desc=net_descs(max_hidden=3, max_side=6), seed=st.integers(0, 2**32 - 1))
def test_numpy_oracle_matches_finite_differences_on_random_nets(desc, seed: int) -> None:
    """Random stacks (no C++ needed): oracle gradients at 6 entries per array vs central
    differences."""
    net = _ir(plain_text(desc))
    rng = np.random.default_rng(seed)
    w = {k: v.astype(np.float64) for k, v in random_weights(net, rng).items()}
    x = _image(net, rng).astype(np.float64)
    label = int(rng.integers(net.output.out_shape.maps))
    ref = numpy_run(net, w, x, label)
    idx = {k: rng.choice(v.size, min(6, v.size), replace=False) for k, v in w.items()}
    fd = finite_differences(net, w, x, label, idx)
    for key in w:
        # Looser than above: a random relu or max-pool may sit within h of its kink.
        np.testing.assert_allclose(
            ref.grads[key].reshape(-1)[idx[key]], fd[key], rtol=1e-5, atol=1e-7, err_msg=key
        )


def test_numpy_oracle_matches_torch() -> None:
    """Both oracles agree to float64 round-off on every finite-difference net and small."""
    pytest.importorskip("torch")
    texts = dict(FD_SPECS, small=(ROOT / "specs/small.net").read_text())
    for name, text in texts.items():
        net = _ir(text)
        rng = np.random.default_rng(11)
        w = random_weights(net, rng)
        x = _image(net, rng)
        a, b = numpy_run(net, w, x, 1), torch_run(net, w, x, 1)
        np.testing.assert_allclose(a.output, b.output, rtol=1e-12, atol=1e-12, err_msg=name)
        assert a.loss == pytest.approx(b.loss, rel=1e-12, abs=1e-12), name
        for key in w:
            np.testing.assert_allclose(
                a.grads[key], b.grads[key], rtol=1e-10, atol=1e-12, err_msg=f"{name} {key}"
            )


# --- the shipped specs --------------------------------------------------------------------------
@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("oracle", ["numpy", "torch"])
def test_shipped_spec_matches_oracle(name: str, oracle: str, shipped_nets: dict) -> None:
    """Forward output, loss and every gradient of small/medium/large, for 3 images each."""
    if oracle == "torch":
        pytest.importorskip("torch")
    run = numpy_run if oracle == "numpy" else torch_run
    loaded = shipped_nets[name]
    rng = np.random.default_rng(5)
    loaded.set_weights(random_weights(loaded.ir, rng))
    worst: dict[str, float] = {}
    for label in (0, 3, 9):
        x = rng.uniform(-1, 1, (29, 29)).astype(np.float32)  # (h, w) form for a 1-map input
        errors = compare(
            chaosgen_run(loaded, x, label), run(loaded.ir, loaded.get_weights(), x, label)
        )
        for k, v in errors.items():
            worst[k] = max(worst.get(k, 0.0), v)
    grads = max(v for k, v in worst.items() if k not in ("output", "loss"))
    print(
        f"\n{name} vs {oracle}: largest scaled error: forward {worst['output']:.2e}, "
        f"loss {worst['loss']:.2e}, gradients {grads:.2e} "
        f"({max((k for k in worst if k not in ('output', 'loss')), key=worst.get)})"
    )


# --- the published networks (docs/language.md, "Published networks") -----------------------
# name -> (spec, images, the published preprocessing of pixels v in [0, 1] (bytes / 255), written
# from each source, not from the spec: the oracles get it, chaosgen its own normalisation).
PUBLISHED = {
    # Caffe: transform_param scale 0.00390625 on the raw bytes
    "lenet": ("specs/lenet.net", "mnist", lambda v: v * 255 * 0.00390625),
    # Caffe: the raw bytes minus the mean (per channel here; the spec says why)
    "cifar10_quick": (
        "specs/cifar10_quick.net",
        "synthetic",
        lambda v: v * 255 - 255 * np.array([0.4914, 0.4822, 0.4465])[:, None, None],
    ),
    # PyTorch: ToTensor() then Normalize((0.1307,), (0.3081,))
    "mnist_pytorch": ("specs/mnist_pytorch.net", "mnist", lambda v: (v - 0.1307) / 0.3081),
    # Keras: x_train.astype("float32") / 255
    "keras_mnist": ("tests/nets/keras_mnist.net", "mnist", lambda v: v),
}


# Each layer's output (maps, h, w) and activation, and the parameter count, as the sources give
# them (Caffe's blob shapes, PyTorch's Net, Keras' model.summary(): "Total params: 34,826").
PUBLISHED_SHAPES = {
    "lenet": (
        [
            ((20, 24, 24), "linear"),
            ((20, 12, 12), None),
            ((50, 8, 8), "linear"),
            ((50, 4, 4), None),
            ((500, 1, 1), "relu"),
            ((10, 1, 1), "softmax"),
        ],
        431_080,
    ),
    "cifar10_quick": (
        [
            ((32, 32, 32), "relu"),
            ((32, 16, 16), None),
            ((32, 16, 16), "relu"),
            ((32, 8, 8), None),
            ((64, 8, 8), "relu"),
            ((64, 4, 4), None),
            ((64, 1, 1), "linear"),
            ((10, 1, 1), "softmax"),
        ],
        145_578,
    ),
    "mnist_pytorch": (
        [
            ((32, 26, 26), "relu"),
            ((64, 24, 24), "relu"),
            ((64, 12, 12), None),
            ((64, 12, 12), None),
            ((128, 1, 1), "relu"),
            ((128, 1, 1), None),
            ((10, 1, 1), "softmax"),
        ],
        1_199_882,
    ),
    "keras_mnist": (
        [
            ((32, 26, 26), "relu"),
            ((32, 13, 13), None),
            ((64, 11, 11), "relu"),
            ((64, 5, 5), None),
            ((64, 5, 5), None),
            ((10, 1, 1), "softmax"),
        ],
        34_826,
    ),
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_nets_have_the_sources_shapes(name: str) -> None:
    """Every layer's output shape and activation, and the number of parameters, are the
    source's (the oracles build their nets from the IR, so they cannot see a wrong layer)."""
    net = _ir((ROOT / PUBLISHED[name][0]).read_text(), PUBLISHED[name][0])
    layers, n_params = PUBLISHED_SHAPES[name]
    got = [
        ((lay.out_shape.maps, lay.out_shape.h, lay.out_shape.w), getattr(lay, "activation", None))
        for lay in net.layers
    ]
    assert got == layers
    assert sum(t.n_weights + t.n_bias for t in net.trainable) == n_params


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict:
    """The published networks, compiled once for this module (built on first use)."""
    build = tmp_path_factory.mktemp("published-build")
    return {
        name: chaosgen.compile(ROOT / spec, build_dir=build)
        for name, (spec, _, _) in PUBLISHED.items()
    }


def _pixels(kind: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n images (N, C, H, W) as loaded (bytes / 255) and their labels: the first real MNIST test
    images, or random bytes as three 32x32 planes for the CIFAR-10 net."""
    if kind == "synthetic":
        return rng.integers(0, 256, (n, 3, 32, 32)) / 255.0, rng.integers(0, 10, n)
    from chaosgen.data import read_images, read_labels

    found = [Path(DATA) / f for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")]
    if not all(f.is_file() for f in found):
        pytest.skip(f"no MNIST in {DATA}")
    return read_images(found[0])[:n, None] / 255.0, read_labels(found[1])[:n].astype(int)


@pytest.mark.parametrize("name", PUBLISHED)
@pytest.mark.parametrize("oracle", ["numpy", "torch"])
def test_published_net_matches_oracle(name: str, oracle: str, published: dict) -> None:
    """Caffe's LeNet and cifar10_quick, PyTorch's and Keras' MNIST nets, on 3 images each (real
    MNIST test images; random 3x32x32 bytes for CIFAR-10): the input as the network sees it is the
    source's preprocessing, and the evaluation output, the loss and every gradient under the
    training dropout mask of the image match the oracle."""
    if oracle == "torch":
        pytest.importorskip("torch")
    run = numpy_run if oracle == "numpy" else torch_run
    loaded = published[name]
    net = loaded.ir
    rng = np.random.default_rng(11)
    raw, labels = _pixels(PUBLISHED[name][1], 3, rng)
    seen = Runtime(loaded).images(raw.astype(np.float32))[:, : net.input.size]
    weights = random_weights(net, rng)
    # pre-activations of order 1 whatever the input's range (cifar10_quick's is +-255)
    first = f"{net.trainable[0].name}.weight"
    weights[first] /= max(1.0, float(np.sqrt(np.mean(PUBLISHED[name][2](raw[0]) ** 2))))
    loaded.set_weights(weights)
    worst: dict[str, float] = {}
    for i, (v, label) in enumerate(zip(raw, labels, strict=True)):
        x = PUBLISHED[name][2](v)  # float64, from the source's preprocessing
        np.testing.assert_allclose(seen[i], x.reshape(-1), rtol=1e-6, atol=1e-5 * np.abs(x).max())
        key = (net.training.seed, i, 1000 + i)  # (seed, epoch, index in the training set)
        masks = loaded.dropout_masks(*key) if net.dropouts else None
        got = chaosgen_run(loaded, seen[i].reshape(x.shape), int(label), key)
        ref = oracle_run(run, net, loaded.get_weights(), x, int(label), masks)
        for k, e in compare(got, ref).items():
            worst[k] = max(worst.get(k, 0.0), e)
    assert all(m.any() and not m.all() for m in (masks or {}).values())  # a real mask
    grads = max(v for k, v in worst.items() if k not in ("output", "loss"))
    print(
        f"\n{name} vs {oracle}: largest scaled error: forward {worst['output']:.2e}, "
        f"loss {worst['loss']:.2e}, gradients {grads:.2e}"
    )


# --- random networks, compiled and built --------------------------------------------------------
@pytest.fixture(scope="module")
def random_build(tmp_path_factory: pytest.TempPathFactory):
    """One build cache and spec folder for every random network of this module; at the end,
    prints how many distinct networks were built and the largest errors seen (`pytest -s`)."""
    folder = tmp_path_factory.mktemp("random-nets")
    yield folder
    if _WORST:
        print(
            f"\nrandom nets: {len(_WORST['nets'])} distinct networks (IR hashes), "
            f"{_WORST['runs']} runs; largest scaled error: forward {_WORST['output']:.2e}, "
            f"gradients {_WORST['grads']:.2e}"
        )


_WORST: dict = {}


def _note(digest: str, errors: dict[str, float]) -> None:
    _WORST.setdefault("nets", set()).add(digest)
    _WORST["runs"] = _WORST.get("runs", 0) + 1
    grads = max(v for k, v in errors.items() if k not in ("output", "loss"))
    _WORST["output"] = max(_WORST.get("output", 0.0), errors["output"])
    _WORST["grads"] = max(_WORST.get("grads", 0.0), grads)


@settings(max_examples=RANDOM_NETS, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=spec_texts(), seed=st.integers(0, 2**32 - 1), pick=st.randoms(use_true_random=False))
def test_random_net_matches_oracles(spec, seed: int, pick, random_build) -> None:
    """A random spec, written as text, compiled to C++, built with gcc and loaded: its forward
    output and gradients match the NumPy oracle, and PyTorch when installed. Each conv layer's
    weight gradient uses a form (and taps blocking) drawn from what `chaosgen tune` would time,
    forced through a tuning record, so every form meets shapes the shipped specs do not have."""
    desc, text = spec
    path = random_build / f"r{hashlib.sha256(text.encode()).hexdigest()[:12]}.net"
    path.write_bytes(text.encode())
    _, net = front_end(path)
    target = native_target()
    forms = {layer: pick.choice(c) for layer, c in tune.candidates(net, target).items()}
    tune.save(net, target, default_compiler_for(target), random_build / "build", forms, {})
    loaded = chaosgen.compile(path, build_dir=random_build / "build")
    rng = np.random.default_rng(seed)
    loaded.set_weights(random_weights(loaded.ir, rng))
    x = _image(loaded.ir, rng)
    label = int(rng.integers(loaded.ir.output.out_shape.maps))
    got = chaosgen_run(loaded, x, label)
    _note(loaded.ir.digest(), compare(got, numpy_run(loaded.ir, loaded.get_weights(), x, label)))
    if HAVE_TORCH:
        compare(got, torch_run(loaded.ir, loaded.get_weights(), x, label))


# --- the weights API ----------------------------------------------------------------------------
def test_weights_layout_and_round_trip(shipped_nets: dict) -> None:
    """get_weights gives PyTorch layouts in layer order; set_weights then get_weights is exact."""
    loaded = shipped_nets["small"]
    w = loaded.get_weights()
    assert {k: v.shape for k, v in w.items()} == {
        "c1.weight": (5, 1, 4, 4),
        "c1.bias": (5,),
        "c2.weight": (10, 5, 5, 5),
        "c2.bias": (10,),
        "f1.weight": (50, 90),
        "f1.bias": (50,),
        "out.weight": (10, 50),
        "out.bias": (10,),
    }
    assert list(w) == [
        "c1.weight",
        "c1.bias",
        "c2.weight",
        "c2.bias",
        "f1.weight",
        "f1.bias",
        "out.weight",
        "out.bias",
    ]
    assert all(v.dtype == np.float32 for v in w.values())
    new = random_weights(loaded.ir, np.random.default_rng(0))
    loaded.set_weights(new)
    for k, v in loaded.get_weights().items():
        np.testing.assert_array_equal(v, new[k])


def test_default_init_is_pytorch_style(shipped_nets: dict) -> None:
    """Fresh weights: seeded by the spec's train seed (two instances agree), within
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases, spread over that range."""
    from chaosgen.loader import Net

    old = shipped_nets["small"]
    header = (old.library.parent / "chaosgen_api.h").read_text()
    a, b = (Net(old.ir, old.library, header).get_weights() for _ in range(2))
    for lay in old.ir.trainable:
        bound = 1 / np.sqrt(lay.n_weights // lay.out_shape.maps)
        for key in (f"{lay.name}.weight", f"{lay.name}.bias"):
            np.testing.assert_array_equal(a[key], b[key])
            assert np.abs(a[key]).max() <= bound, key
        assert np.abs(a[f"{lay.name}.weight"]).max() > 0.9 * bound  # not a narrower law
    assert np.std(a["c2.weight"]) == pytest.approx(1 / np.sqrt(3 * 125), rel=0.05)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda w: w.pop("f1.bias"), r"missing \['f1.bias'\]"),
        (lambda w: w.update(extra=np.zeros(3)), r"unexpected \['extra'\]"),
        (
            lambda w: w.update({"c2.weight": np.zeros((10, 5, 5))}),
            r"c2.weight has shape \(10, 5, 5\), expected \(10, 5, 5, 5\)",
        ),
        (
            lambda w: w.update({"out.weight": np.zeros((50, 10))}),
            r"out.weight has shape \(50, 10\), expected \(10, 50\)",
        ),
        (lambda w: w["c1.bias"].__setitem__(0, np.nan), r"c1.bias contains NaN"),
    ],
)
def test_set_weights_rejects_bad_input(mutate, message: str, shipped_nets: dict) -> None:
    """Missing, extra, misshapen or non-finite weights raise a ChaosgenError naming the key, and
    leave the weights as they were (no half-applied update)."""
    loaded = shipped_nets["small"]
    before = loaded.get_weights()
    w = random_weights(loaded.ir, np.random.default_rng(1))
    mutate(w)
    with pytest.raises(ChaosgenError, match=message):
        loaded.set_weights(w)
    for k, v in loaded.get_weights().items():  # a rejected call changes nothing
        np.testing.assert_array_equal(v, before[k])


def test_bad_image_and_label_are_errors(shipped_nets: dict) -> None:
    """A wrong image shape or an out-of-range label is a ChaosgenError, not a crash."""
    loaded = shipped_nets["small"]
    with pytest.raises(ChaosgenError, match=r"input has shape \(28, 28\)"):
        loaded.forward(np.zeros((28, 28)))
    with pytest.raises(ChaosgenError, match="label 10 is out of range 0..9"):
        loaded.gradients(np.zeros((29, 29)), 10)
    with pytest.raises(ChaosgenError, match="label -1"):
        loaded.gradients(np.zeros((29, 29)), -1)
