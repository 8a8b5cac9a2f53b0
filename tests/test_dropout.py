"""The dropout layer: masks from a counter-based hash (checked against a NumPy transcription of the
documented formula), their statistics, the gradients under a mask against PyTorch float64 on random
nets, training that uses exactly the documented masks, reproducibility, and a real MNIST run."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from reference import chaosgen_run, compare, oracle_run, random_weights, torch_run
from specgen import net_descs, spec_texts
from test_codegen import _compare

import chaosgen
from chaosgen import codegen
from chaosgen.pipeline import front_end
from chaosgen.targets import TARGETS
from chaosgen.train import Config, Runtime, Trainer

torch = pytest.importorskip("torch")
NET = ROOT / "tests" / "nets" / "dropout.net"
DATA = Path(os.environ.get("CHAOSGEN_DATA") or ROOT.parent / "shared" / "data" / "mnist")
RANDOM_DROPOUT_NETS = int(os.environ.get("CHAOSGEN_TEST_DROPOUT_NETS", "18"))
M64 = (1 << 64) - 1
G = 0x9E3779B97F4A7C15


# --- the documented hash, transcribed in NumPy (docs/language.md, "dropout") ------------------
def _mix(z):
    """splitmix64's output function on uint64 (arrays or scalars)."""
    z = np.uint64(z) if np.isscalar(z) else z
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def documented_masks(net, seed: int, epoch: int, index: int) -> dict[str, np.ndarray]:
    """keep flags per dropout layer, from the formula in docs/language.md."""
    k = int(_mix((seed + G) & M64))
    k = int(_mix(k ^ ((epoch + G) & M64)))
    k = int(_mix(k ^ ((index + G) & M64))) | 1
    out = {}
    for d, lay in enumerate(net.dropouts, start=1):
        kd = int(_mix(k ^ ((d * G) & M64)))
        units = np.arange(1, lay.out_shape.size + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            h = _mix(np.uint64(kd) + units * np.uint64(G))
        keep = (h >> np.uint64(40)) >= np.uint64(round(lay.rate * 2**24))
        s = lay.out_shape
        out[lay.name] = keep.reshape(s.maps, s.h, s.w)
    return out


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return chaosgen.compile(NET, build_dir=tmp_path_factory.mktemp("dropout-build"))


def test_golden_dropout_net(update_golden: bool, in_repo) -> None:
    """The generated code of tests/nets/dropout.net (one vector target) and its header."""
    parsed, ir_net = front_end("tests/nets/dropout.net")
    src = codegen.render(ir_net, TARGETS["avx512"], parsed.lines)
    golden = ROOT / "tests" / "golden" / "nets"
    golden.mkdir(exist_ok=True)
    _compare(golden / "dropout.avx512.cpp", src.cpp, update_golden)
    _compare(golden / "dropout.h", src.header, update_golden)


def test_masks_follow_the_documented_hash(net) -> None:
    """The native masks are the formula of docs/language.md, bit for bit, for several keys."""
    for key in [(7, 0, 0), (7, 0, 1), (7, 3, 59999), (2**63 - 1, 12, 123456789), (0, 0, 0)]:
        got, want = net.dropout_masks(*key), documented_masks(net.ir, *key)
        assert got.keys() == want.keys() == {"d1", "d2", "d3"}
        for name in got:
            assert got[name].dtype == bool and got[name].shape == want[name].shape
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{key} {name}")


def test_mask_rate_and_independence(net) -> None:
    """Over many units and images the dropped fraction is the rate (5 sigma); masks of other
    images, epochs and seeds agree only by chance (r^2 + (1-r)^2), and a mask is reproducible."""
    keys = [(7, e, i) for e in range(3) for i in range(200)]
    masks = [net.dropout_masks(*k) for k in keys]
    for lay in net.ir.dropouts:
        r = lay.rate
        flat = np.stack([m[lay.name].ravel() for m in masks])
        n = flat.size
        assert abs((1 - flat.mean()) - r) <= 5 * math.sqrt(r * (1 - r) / n), (
            lay.name,
            flat.mean(),
        )
        chance = r * r + (1 - r) * (1 - r)
        for a, b in [(0, 1), (0, 200), (5, 405)]:  # next image; next epoch; two epochs later
            agree = float((flat[a] == flat[b]).mean())
            m = flat.shape[1]
            assert abs(agree - chance) <= 5 * math.sqrt(chance * (1 - chance) / m) + 1e-12
        units = flat[:, :-1] == flat[:, 1:]  # neighbouring units within a mask
        assert abs(units.mean() - chance) <= 5 * math.sqrt(chance * (1 - chance) / units.size)
    other_seed = net.dropout_masks(8, 0, 0)["d3"]
    assert not np.array_equal(other_seed, masks[0]["d3"])
    for k, m in zip(keys[:5], masks[:5], strict=True):
        again = net.dropout_masks(*k)
        for name in m:
            np.testing.assert_array_equal(again[name], m[name])


def test_zero_rate_keeps_every_unit(tmp_path) -> None:
    spec = tmp_path / "z.net"
    spec.write_text("input size=6x6\ndense units=40\ndropout rate=0\noutput classes=3\n")
    n = chaosgen.compile(spec, build_dir=tmp_path / "b")
    assert all(m.all() for k in range(20) for m in n.dropout_masks(1, 0, k).values())


def _oracle_check(loaded, rng: np.random.Generator, key: tuple[int, int, int]) -> dict:
    """Evaluation forward (dropout = identity) and the loss and gradients under the mask of
    `key`, against PyTorch float64 with that mask; returns the scaled errors."""
    loaded.set_weights(random_weights(loaded.ir, rng))
    s = loaded.ir.input
    x = rng.uniform(-1, 1, (s.maps, s.h, s.w)).astype(np.float32)
    label = int(rng.integers(loaded.ir.output.out_shape.maps))
    got = chaosgen_run(loaded, x, label, dropout=key)
    masks = loaded.dropout_masks(*key)
    return compare(got, oracle_run(torch_run, loaded.ir, loaded.get_weights(), x, label, masks))


def test_dropout_net_matches_torch(net) -> None:
    rng = np.random.default_rng(3)
    worst = {}
    for i in range(4):
        for k, v in _oracle_check(net, rng, (7, i, 1000 + i)).items():
            worst[k] = max(worst.get(k, 0.0), v)
    print(f"\ndropout.net vs torch float64 (same masks): largest scaled errors {worst}")
    # the mask matters: the identity (evaluation) pass gives other gradients
    x = rng.uniform(-1, 1, (1, 29, 29)).astype(np.float32)
    plain, masked = net.gradients(x, 3), net.gradients(x, 3, dropout=(7, 0, 0))
    assert all(not np.allclose(plain[k], masked[k]) for k in plain)


def test_gradients_without_a_key_treat_dropout_as_identity(net) -> None:
    """Net.gradients(x, label) with no dropout key: every dropout layer is the identity in the
    backward pass as in the forward (PyTorch float64 without dropout), whatever mask a
    training pass left behind; was zero (or that stale mask) below each dropout layer."""
    rng = np.random.default_rng(5)
    net.set_weights(random_weights(net.ir, rng))
    x = rng.uniform(-1, 1, (1, 29, 29)).astype(np.float32)
    net.gradients(x, 2, dropout=(7, 0, 0))  # leaves a training mask in the work buffer
    got = chaosgen_run(net, x, 2)
    errs = compare(got, oracle_run(torch_run, net.ir, net.get_weights(), x, 2))  # no masks
    assert max(errs.values()) < 1e-4, errs
    assert all(np.any(g != 0) for k, g in got.grads.items() if k.endswith("weight")), got.grads


_WORST: dict = {}


@pytest.fixture(scope="module")
def random_build(tmp_path_factory: pytest.TempPathFactory):
    """One folder and build cache for the random dropout nets; at the end, prints the largest
    scaled errors seen (`pytest -s`)."""
    yield tmp_path_factory.mktemp("random-dropout")
    if _WORST:
        print(f"\nrandom dropout nets vs torch float64: largest scaled errors {_WORST}")


@settings(
    max_examples=RANDOM_DROPOUT_NETS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: each net is a build
)
@given(
    spec=spec_texts(net_descs(max_hidden=3, max_side=7, dropout=True)),
    seed=st.integers(0, 2**32 - 1),
    key=st.tuples(st.integers(0, 2**63 - 1), st.integers(0, 1000), st.integers(0, 2**40)),
)
def test_random_dropout_nets_match_torch(spec, seed, key, random_build) -> None:
    """Random small nets with dropout layers anywhere (rates 0 to 0.9), compiled and built:
    evaluation forward, loss and every gradient under the exported mask match PyTorch float64."""
    _, text = spec
    folder = random_build
    path = folder / f"r{hashlib.sha256(text.encode()).hexdigest()[:12]}.net"
    path.write_bytes(text.encode())
    loaded = chaosgen.compile(path, build_dir=folder / "build")
    errors = _oracle_check(loaded, np.random.default_rng(seed), key)
    for k, v in errors.items():
        _WORST[k.split(".")[-1]] = max(_WORST.get(k.split(".")[-1], 0.0), v)
    _WORST["nets"] = _WORST.get("nets", 0) + 1


# --- training -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mnist():
    from chaosgen.data import load_mnist

    if not (DATA / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("no MNIST")
    return load_mnist(DATA)


def test_training_uses_the_documented_masks(net, mnist) -> None:
    """Three images of one-thread training (epoch 2) equal three SGD steps taken in Python with
    Net.gradients(dropout=(seed, 2, dataset index)); the next epoch's key gives other weights."""
    rt = Runtime(net)
    idx = np.array([5, 17, 3], np.int32)
    x = mnist.train_images[:20]
    y = mnist.train_labels[:20]
    cfg = Config(threads=1, scheme="chaos", seed=11)
    eta = 0.05
    net.init_weights(1)
    start = net.get_weights()
    rt.train(rt.images(x), y, idx, cfg, eta, epoch=2)
    native = net.get_weights()
    for epoch, same in ((2, True), (3, False)):
        net.set_weights(start)
        for i in idx:
            g = net.gradients(x[i], int(y[i]), dropout=(11, epoch, int(i)))
            w = net.get_weights()
            net.set_weights({k: w[k] - np.float32(eta) * g[k] for k in w})
        mine = net.get_weights()
        close = all(np.allclose(mine[k], native[k], rtol=1e-5, atol=1e-6) for k in mine)
        assert close == same, epoch


def test_sequential_dropout_training_is_bitwise_reproducible(net, mnist) -> None:
    """Two sequential runs give the same weights bit for bit; a run with another seed does not."""

    def run(seed: int) -> np.ndarray:
        net.init_weights(1)
        cfg = Config(
            epochs=2,
            scheme="sequential",
            threads=1,
            limit=300,
            val_limit=50,
            test_limit=50,
            seed=seed,
        )
        Trainer(Runtime(net), mnist, cfg, quiet=True).run()
        return net.params.copy()

    a, b, c = run(4), run(4), run(5)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_chaos_two_threads_dropout_net_learns_mnist(net, mnist) -> None:
    """A dropout net under CHAOS with two threads: a few hundred images lower the loss."""
    net.init_weights(1)
    cfg = Config(
        epochs=3, scheme="chaos", threads=2, limit=400, val_limit=200, test_limit=200, eta=0.01
    )
    records = Trainer(Runtime(net), mnist, cfg, quiet=True).run()
    losses = [r["train_loss"] for r in records]
    assert losses[-1] < 0.8 * losses[0], losses
    assert records[-1]["val_error_rate"] < 0.5, records[-1]


def test_emit_ir_shows_dropout_and_init(in_repo, capsys) -> None:
    """`--emit ir`: each dropout layer with its rate, each trainable layer's init and its scale,
    and the train statement's init."""
    import json

    from chaosgen.cli import main

    assert main(["compile", "tests/nets/dropout.net", "--emit", "ir"]) == 0
    d = json.loads(capsys.readouterr().out)
    layers = {lay["name"]: lay for lay in d["layers"]}
    assert [(n, layers[n]["kind"], layers[n]["rate"]) for n in ("d1", "d2", "d3")] == [
        ("d1", "dropout", 0.25),
        ("d2", "dropout", 0.1),
        ("d3", "dropout", 0.5),
    ]
    assert layers["d1"]["out_shape"] == layers["d1"]["in_shape"] == layers["c1"]["out_shape"]
    inits = [(layers[n]["init"], layers[n]["init_scale"]) for n in ("c1", "f1", "out")]
    assert inits == [("he", 0.0), ("xavier", 0.0), ("uniform", 0.05)]
    assert d["training"]["init"] == "default"
