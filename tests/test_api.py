"""The Python API (README, "Python API"): compile, load, Net.forward on one image and on batches,
Net.evaluate, Net.load, train(). Checked against independent references: the per-image loop and
PyTorch float64 (tests/reference.py) for forward, a NumPy computation from the outputs for
evaluate, the CLI's own log and checkpoint for train(), checkpoints written by `chaosgen train`
for load; and every refusal of bad input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, ROOT
from reference import assert_close, random_weights, torch_run

import chaosgen
from chaosgen import ChaosgenError
from chaosgen.cli import main
from chaosgen.errors import UsageError

HAVE_TORCH = importlib.util.find_spec("torch") is not None  # the oracle, when installed
SMALL = ROOT / "specs" / "small.net"
# Two input maps (the (N, C, H, W) form is the only batch form) and a squared-error output.
TWO_MAPS = """\
network twomaps
input maps=2 size=6x6
conv c: maps=3 kernel=3 activation=relu
maxpool window=2
output out: classes=3 activation=sigmoid loss=mse
"""
# Short runs of small.net on real MNIST: the same flags for the CLI and train().
RUN = dict(epochs=2, limit=300, val_limit=100, test_limit=100, seed=7, eta=0.002)


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One build cache for the module (each spec is compiled once)."""
    return tmp_path_factory.mktemp("api-build")


@pytest.fixture(scope="module")
def small(build: Path) -> chaosgen.Net:
    net = chaosgen.compile(SMALL, build_dir=build)
    net.set_weights(random_weights(net.ir, np.random.default_rng(3)))
    return net


@pytest.fixture(scope="module")
def two_maps(build: Path, tmp_path_factory: pytest.TempPathFactory) -> chaosgen.Net:
    spec = tmp_path_factory.mktemp("twomaps") / "twomaps.net"
    spec.write_text(TWO_MAPS)
    return chaosgen.compile(spec, build_dir=build)


def _images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, *shape))


# --- forward ------------------------------------------------------------------------------------
def test_batched_forward_is_the_loop_and_torch(small: chaosgen.Net) -> None:
    """(N, H, W) float64 in Fortran order, on 1 and 2 threads: bitwise the per-image loop, and
    PyTorch float64's outputs to float32 accuracy. 37 images: not a multiple of the chunk."""
    x = np.asfortranarray(_images(37, (29, 29)))
    loop = np.stack([small.forward(im) for im in x])
    assert loop.shape == (37, 10) and loop.dtype == np.float32
    for threads in (1, 2):
        got = small.forward(x, threads=threads)
        assert got.dtype == np.float32 and np.array_equal(got, loop), threads
    assert np.array_equal(small.forward(x[:, None]), loop)  # (N, C, H, W)
    w = small.get_weights()
    for i in range(0, 37, 4) if HAVE_TORCH else ():  # the oracle, when installed
        assert_close(loop[i], torch_run(small.ir, w, x[i], 0).output, f"image {i}")


def test_forward_shapes_and_dtypes(small: chaosgen.Net, two_maps: chaosgen.Net) -> None:
    """One image in its three forms -> (classes,); a batch -> (N, classes), also N = 0; every
    real dtype and memory order gives what its float32 values give."""
    x = _images(5, (29, 29)).astype(np.float32)
    ref = small.forward(x, threads=1)
    assert np.array_equal(small.forward(x[2]), ref[2])  # (H, W)
    assert np.array_equal(small.forward(x[2][None]), ref[2])  # (C, H, W): one image
    assert np.array_equal(small.forward(x[2].ravel()), ref[2])  # flat
    assert small.forward(x[:0]).shape == (0, 10)
    for same in (x.astype(np.float64), np.asfortranarray(x), x[:, ::-1, :][:, ::-1, :]):
        assert np.array_equal(small.forward(same), ref)
    half = x.astype(np.float16)
    assert np.array_equal(small.forward(half), small.forward(half.astype(np.float32)))
    ints = np.random.default_rng(1).integers(0, 2, (3, 29, 29), dtype=np.uint8)
    assert np.array_equal(small.forward(ints), small.forward(ints.astype(np.float32)))

    y = _images(9, (2, 6, 6), seed=2)
    out = two_maps.forward(y, threads=2)
    assert out.shape == (9, 3)
    assert np.array_equal(out, np.stack([two_maps.forward(im) for im in y]))
    assert two_maps.forward(y[0]).shape == (3,)
    if HAVE_TORCH:  # the oracle, when installed
        w = two_maps.get_weights()
        assert_close(out[4], torch_run(two_maps.ir, w, y[4], 0).output, "two maps")


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((4, 28, 28)), r"input has shape \(4, 28, 28\), expected one image \(1, 29, 29\)"
         r" or a batch \(N, 1, 29, 29\) or \(N, 29, 29\)"),
        (np.zeros((4, 2, 29, 29)), r"input has shape \(4, 2, 29, 29\)"),
        (np.zeros((4, 29, 29), complex), "input has dtype complex128, expected real numbers"),
        (np.full((4, 29, 29), 1e39), r"input image 0 contains NaN or inf, or values beyond"),
    ],
)  # fmt: skip
def test_forward_refuses_bad_input(small: chaosgen.Net, bad: np.ndarray, message: str) -> None:
    with pytest.raises(ChaosgenError, match=message):
        small.forward(bad)


def test_forward_names_the_bad_image(small: chaosgen.Net) -> None:
    """NaN (or inf after the cast to float32) is refused before any image runs, naming it."""
    x = _images(8, (29, 29))
    x[5, 3, 4] = np.nan
    with pytest.raises(ChaosgenError, match="input image 5 contains NaN or inf"):
        small.forward(x)
    x[5, 3, 4], x[6, 0, 0] = 0.0, 4e38  # finite in float64, inf in float32
    with pytest.raises(ChaosgenError, match="input image 6 contains"):
        small.evaluate(x, np.zeros(8, np.int64))


@pytest.mark.parametrize("threads", [0, -1, 10**6, 2.0, "2", True])
def test_bad_threads(small: chaosgen.Net, threads: object) -> None:
    with pytest.raises(ChaosgenError, match="threads"):
        small.forward(_images(2, (29, 29)), threads=threads)  # type: ignore[arg-type]


# --- evaluate -----------------------------------------------------------------------------------
def _numpy_evaluation(out: np.ndarray, y: np.ndarray, loss: str) -> tuple[float, float]:
    """Error rate and mean loss from forward()'s outputs, in float64."""
    p = out.astype(np.float64)
    rate = float(np.mean(p.argmax(axis=1) != y))
    if loss == "cross_entropy":  # the output is the softmax: -log p[label]
        per = -np.log(p[np.arange(len(y)), y])
    else:  # half the squared error against the one-hot label
        per = 0.5 * ((p - np.eye(p.shape[1])[y]) ** 2).sum(axis=1)
    return rate, float(per.mean())


def test_evaluate_against_numpy(small: chaosgen.Net, two_maps: chaosgen.Net) -> None:
    """Error rate and mean loss equal a NumPy computation from forward(), for a softmax /
    cross-entropy and a sigmoid / squared-error output, on 1 and 2 threads."""
    for net, shape, n in ((small, (29, 29), 203), (two_maps, (2, 6, 6), 50)):
        x = _images(n, shape, seed=4)
        classes = net.ir.output.out_shape.size
        y = np.random.default_rng(5).integers(0, classes, n)
        rate, loss = _numpy_evaluation(net.forward(x), y, net.ir.output.loss)
        for threads in (1, 2):
            ev = net.evaluate(x, y, threads=threads)
            assert ev.images == n and ev.errors == round(rate * n)
            assert ev.error_rate == pytest.approx(rate, abs=0)
            assert ev.loss == pytest.approx(loss, rel=1e-5)


def test_evaluate_on_mnist_as_the_cli(small: chaosgen.Net) -> None:
    """Real MNIST test images as chaosgen reads them: the API's numbers are the CLI's phase."""
    from chaosgen.data.sets import load, open_data
    from chaosgen.train import Runtime

    data = load(open_data(str(DATA), None))
    x, y = data.test_images[:500], data.test_labels[:500]
    rt = Runtime(small)
    st = rt.evaluate(rt.images(x), y, 2)
    ev = small.evaluate(rt.images(x)[:, : 29 * 29].reshape(-1, 29, 29), y, threads=2)
    assert (ev.errors, ev.images) == (st.errors, st.images)
    assert ev.loss == pytest.approx(st.loss / st.images, rel=1e-12)


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.zeros(3, np.int64), r"labels have shape \(3,\), expected \(4,\): one per image"),
        (np.zeros((4, 1), np.int64), r"labels have shape \(4, 1\)"),
        (np.zeros(4), "labels have dtype float64, expected integers"),
        (np.array([0, 1, 10, 2]), "the data holds label 10, but network small has 10 classes"),
        (np.array([0, -1, 0, 2]), "the data holds label -1"),
    ],
)
def test_evaluate_refuses_bad_labels(small: chaosgen.Net, labels, message: str) -> None:
    with pytest.raises(ChaosgenError, match=message):
        small.evaluate(_images(4, (29, 29)), labels)


def test_evaluate_refuses_no_images(small: chaosgen.Net) -> None:
    with pytest.raises(ChaosgenError, match="no images"):
        small.evaluate(np.zeros((0, 29, 29)), np.zeros(0, np.int64))


# --- load ---------------------------------------------------------------------------------------
def test_load_npz_of_get_weights(small: chaosgen.Net, build: Path, tmp_path: Path) -> None:
    """An .npz keyed like get_weights() (float64 here) loads, through Net.load and
    chaosgen.load; the outputs are then those of the net it came from."""
    path = tmp_path / "w.npz"
    np.savez(path, **{k: v.astype(np.float64) for k, v in small.get_weights().items()})
    x = _images(6, (29, 29))
    fresh = chaosgen.compile(SMALL, build_dir=build)
    fresh.load(path)
    assert np.array_equal(fresh.params, small.params)
    assert np.array_equal(chaosgen.load(SMALL, path, build_dir=build).forward(x), small.forward(x))


def test_load_checkpoint_of_chaosgen_train(build: Path, tmp_path: Path, monkeypatch) -> None:
    """runs/<net>/last.npz as `chaosgen train` writes it: its params, bitwise."""
    from chaosgen import checkpoint

    monkeypatch.chdir(tmp_path)
    argv = ["train", str(SMALL), "--data", str(DATA), "--build-dir", str(build), "--quiet",
            "--scheme", "sequential", "--epochs", "1", "--limit", "200", "--val-limit", "50",
            "--test-limit", "50"]  # fmt: skip
    assert main(argv) == 0
    ck = tmp_path / "runs" / "small" / "last.npz"
    net = chaosgen.load(SMALL, ck, build_dir=build)
    assert np.array_equal(net.params, checkpoint.load(ck).params)
    assert net.evaluate(_images(3, (29, 29)), np.array([1, 2, 3])).images == 3


def test_load_refusals(small: chaosgen.Net, two_maps: chaosgen.Net, tmp_path: Path) -> None:
    """Every refusal names the file; the weights are unchanged after it."""
    from chaosgen import checkpoint

    before = small.params.copy()
    ck = tmp_path / "other.npz"
    checkpoint.save(
        ck, checkpoint.Checkpoint(params=two_maps.params.copy(), epoch=0, eta=0.1,
                                  ir_hash=two_maps.ir.digest(), net=two_maps.ir.name),
    )  # fmt: skip
    weights = small.get_weights()
    missing = tmp_path / "missing.npz"
    np.savez(missing, **{k: v for k, v in list(weights.items())[1:]})
    nan = tmp_path / "nan.npz"
    np.savez(nan, **{k: np.full_like(v, np.nan) for k, v in weights.items()})
    npy = tmp_path / "one.npy"
    np.save(npy, small.params)
    text = tmp_path / "text.npz"
    text.write_text("not a zip")
    cases = {
        ck: "written for network 'twomaps'",
        missing: f"{missing}: keys do not match network small: missing \\['c1.weight'\\]",
        nan: f"{nan}: c1.weight contains NaN or inf",
        npy: f"{npy} holds one array \\(.npy\\), not an .npz of weights",
        text: f"{text}: not an .npz of weights",
        tmp_path / "absent.npz": "weights file .*absent.npz not found",
        tmp_path: "is a directory, not a weights file",
    }
    for path, message in cases.items():
        with pytest.raises(ChaosgenError, match=message):
            small.load(path)
        assert np.array_equal(small.params, before), path


# --- train --------------------------------------------------------------------------------------
def _deterministic(rec: dict) -> dict:
    """A record without what measures time or the machine."""
    out = {k: v for k, v in rec.items() if not (k.startswith("seconds") or k.endswith("_per_s"))}
    out.pop("machine")
    return out


def test_train_matches_the_cli(build: Path, tmp_path: Path, monkeypatch) -> None:
    """chaosgen.train and `chaosgen train` with the same flags (sequential, one seed): the same
    records (the CLI's --log lines; times aside), checkpoints with bitwise equal weights, and
    on_epoch given each record as it is done."""
    monkeypatch.chdir(tmp_path)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in RUN.items()]
    argv = ["train", str(SMALL), "--data", str(DATA), "--build-dir", str(build), "--quiet",
            "--scheme", "sequential", "--checkpoint-dir", "cli", "--log", "cli.jsonl",
            *flags]  # fmt: skip
    assert main(argv) == 0
    cli_log = [json.loads(line) for line in (tmp_path / "cli.jsonl").read_text().splitlines()]

    seen: list[dict] = []
    hist = chaosgen.train(
        str(SMALL), data=DATA, scheme="sequential", checkpoint_dir=tmp_path / "api",
        on_epoch=seen.append, build_dir=str(build), **RUN,
    )  # fmt: skip
    assert [r["epoch"] for r in hist] == [1, 2] and seen == hist
    assert [_deterministic(r) for r in hist] == [_deterministic(r) for r in cli_log]
    a = np.load(tmp_path / "api" / "last.npz")["params"]
    b = np.load(tmp_path / "cli" / "last.npz")["params"]
    assert np.array_equal(a, b)
    # resume=True continues the same run: a third epoch only
    more = chaosgen.train(
        str(SMALL), data=DATA, scheme="sequential", build_dir=str(build),
        checkpoint_dir=tmp_path / "api", resume=True, **{**RUN, "epochs": 3},
    )  # fmt: skip
    assert [r["epoch"] for r in more] == [3]


@pytest.mark.parametrize(
    "options, error, message",
    [
        (dict(bogus=1), UsageError, "train\\(\\): unknown option 'bogus'; the options are "),
        (dict(epochs=2.5), UsageError, "argument --epochs: invalid int value: '2.5'"),
        (dict(resume="yes"), UsageError, "resume must be True or False"),
        (dict(eta=float("nan")), UsageError, "--eta must be a number in"),
        (dict(scheme="fast"), UsageError, "argument --scheme: invalid choice: 'fast'"),
        (dict(threads=0), UsageError, "--threads must be at least 1"),
        (dict(data="/nonexistent/mnist"), ChaosgenError, "/nonexistent/mnist"),
    ],
)
def test_train_refuses_bad_options(tmp_path: Path, options, error, message: str) -> None:
    """Refused before anything is compiled or written."""
    kw = {"data": DATA, "checkpoint_dir": tmp_path / "run", **options}
    with pytest.raises(error, match=message):
        chaosgen.train(str(SMALL), **kw)
    assert not (tmp_path / "run" / "last.npz").exists()


def test_train_is_the_module_too() -> None:
    """chaosgen.train is callable and still the module (its Trainer, Runtime, Config)."""
    from chaosgen import train

    assert callable(chaosgen.train) and train is chaosgen.train
    assert chaosgen.train.Trainer.__module__ == "chaosgen.train"
