"""chaosgen.data.sets and .fit: every format written here in its exact byte layout (a few hundred
images with a learnable pattern), corrupt variants, detection, fitting, normalisation, training
on each format, and fetching from a local server. No file of the real data sets is needed."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from test_data import serve  # noqa: F401  (the local http.server fixture)

from chaosgen import cli, data
from chaosgen.data import sets
from chaosgen.data.fit import choose_fit, place
from chaosgen.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST = 500, 100


def pattern(n: int, c: int, h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (n, c, h, w) whose class k (0..9) is a bright horizontal band at rows
    3k..3k+2 (scaled to h) of channel k % c, over noise: learnable by a small net in one run."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.uint8)
    x = rng.integers(0, 60, (n, c, h, w)).astype(np.uint8)
    for i, k in enumerate(y):
        r = int(k) * (h - 3) // 9
        x[i, k % c, r : r + 3] = 255
    return x, y


def idx_bytes(a: np.ndarray) -> bytes:
    magic = 2051 if a.ndim == 3 else 2049
    return b"".join(d.to_bytes(4, "big") for d in (magic, *a.shape)) + a.tobytes()


def write_idx(d: Path, gz: bool = True) -> tuple:
    d.mkdir(parents=True, exist_ok=True)
    (xtr, ytr), (xte, yte) = pattern(N_TRAIN, 1, 28, 28, 1), pattern(N_TEST, 1, 28, 28, 2)
    for name, a in (
        ("train-images-idx3-ubyte", xtr[:, 0]),
        ("train-labels-idx1-ubyte", ytr),
        ("t10k-images-idx3-ubyte", xte[:, 0]),
        ("t10k-labels-idx1-ubyte", yte),
    ):
        blob = idx_bytes(a)
        (d / (name + ".gz" * gz)).write_bytes(gzip.compress(blob) if gz else blob)
    return xtr, ytr, xte, yte


def write_batches(d: Path, seed: int, one) -> tuple:
    """The five training batches and the test batch of CIFAR-10, each written by `one`."""
    d.mkdir(parents=True, exist_ok=True)
    (xtr, ytr), (xte, yte) = (
        pattern(N_TRAIN, 3, 32, 32, seed),
        pattern(N_TEST, 3, 32, 32, seed + 1),
    )
    per = N_TRAIN // 5
    for k in range(5):
        one(d / f"data_batch_{k + 1}", xtr[k * per : (k + 1) * per], ytr[k * per : (k + 1) * per])
    one(d / "test_batch", xte, yte)
    return xtr, ytr, xte, yte


def write_cifar_bin(d: Path) -> tuple:
    """data_batch_1.bin ... test_batch.bin: records of 1 label byte + 3072 pixel bytes."""

    def one(f: Path, x: np.ndarray, y: np.ndarray) -> None:
        rec = np.concatenate([y[:, None], x.reshape(len(x), -1)], axis=1)
        f.with_suffix(".bin").write_bytes(rec.tobytes())

    out = write_batches(d, 3, one)
    (d / "batches.meta.txt").write_text("\n".join(sets.CIFAR10) + "\n\n")
    return out


def cifar_pickle(x: np.ndarray, y: np.ndarray) -> bytes:
    """A batch as the CIFAR-10 python version holds it (bytes keys, protocol 2)."""
    d = {
        b"batch_label": b"batch",
        b"labels": [int(v) for v in y],
        b"data": x.reshape(len(x), -1),
        b"filenames": [b"x.png"] * len(x),
    }
    return pickle.dumps(d, protocol=2)


def write_cifar_py(d: Path) -> tuple:
    """data_batch_1 ... test_batch: pickled dicts."""
    return write_batches(d, 5, lambda f, x, y: f.write_bytes(cifar_pickle(x, y)))


def write_npz(f: Path, **override) -> tuple:
    (xtr, ytr), (xte, yte) = pattern(N_TRAIN, 1, 20, 20, 7), pattern(N_TEST, 1, 20, 20, 8)
    arrays = dict(
        x_train=xtr[:, 0],
        y_train=ytr.astype(np.int64),
        x_test=xte[:, 0],
        y_test=yte.astype(np.int64),
    )  # (N, H, W), as Keras' mnist.npz
    arrays.update(override)
    np.savez(f, **{k: v for k, v in arrays.items() if v is not None})
    return xtr, ytr, xte, yte


WRITERS = {
    "idx": (write_idx, "mnist", "idx", lambda p: p),
    "cifar10-binary": (write_cifar_bin, "cifar10", "cifar10-binary", lambda p: p),
    "cifar10-python": (write_cifar_py, "cifar10", "cifar10-python", lambda p: p),
    "npz": (lambda p: write_npz(p / "a.npz"), "npz", "npz", lambda p: p / "a.npz"),
}


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_each_format_reads_exactly_and_is_recognised(tmp_path: Path, fmt: str) -> None:
    write, name, format_, where = WRITERS[fmt]
    tmp_path.mkdir(exist_ok=True)
    xtr, ytr, xte, yte = write(tmp_path)
    for dataset in (None, name):  # recognised from the bytes, and named
        d = sets.load_dataset(where(tmp_path), dataset)
        assert (d.name, d.format) == (name, format_)
        assert d.train_images.dtype == np.float32 and d.train_images.ndim == 4
        np.testing.assert_array_equal(d.train_images, xtr.astype(np.float32) / np.float32(255))
        np.testing.assert_array_equal(d.test_images, xte.astype(np.float32) / np.float32(255))
        assert d.train_labels.dtype == np.int32
        np.testing.assert_array_equal(d.train_labels, ytr)
        np.testing.assert_array_equal(d.test_labels, yte)
    if fmt == "cifar10-binary":
        assert d.classes == sets.CIFAR10
    # The whole CIFAR directory under its canonical folder name is found from its parent.
    if fmt.startswith("cifar10"):
        sub = tmp_path / "parent" / ("cifar-10-batches-" + ("bin" if "binary" in fmt else "py"))
        write(sub)
        assert sets.probe(sub.parent).source == sub


def test_float_npz_kept_and_raw_idx_read(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(30, 2, 5, 5)).astype(np.float64)
    np.savez(tmp_path / "f.npz", x_train=x, y_train=np.arange(30) % 3)
    d = sets.load_dataset(tmp_path / "f.npz")
    np.testing.assert_array_equal(d.train_images, x.astype(np.float32))
    assert d.classes == ("0", "1", "2") and d.test_images.shape == (0, 2, 5, 5)
    write_idx(tmp_path / "raw", gz=False)
    assert sets.load_dataset(tmp_path / "raw").train_images.shape == (N_TRAIN, 1, 28, 28)


def _info_error(capsys, target: Path, *words: str) -> None:
    """`chaosgen data info TARGET`: exit 1, one line naming the file and what is wrong."""
    assert cli.main(["data", "info", str(target)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("chaosgen: error: "), err
    assert all(w in err for w in words), err


def test_corrupt_cifar_binary(tmp_path: Path, capsys) -> None:
    write_cifar_bin(tmp_path)
    f = tmp_path / "data_batch_3.bin"
    good = f.read_bytes()
    f.write_bytes(good[:-100])  # truncated
    _info_error(capsys, tmp_path, str(f), "not a whole number of 3073-byte records")
    f.write_bytes(good + bytes(3072))  # a record of 3072 bytes appended: wrong record size
    _info_error(capsys, tmp_path, str(f), "3073-byte records")
    bad = bytearray(good)
    bad[5 * 3073] = 10  # label 10 in record 5
    f.write_bytes(bytes(bad))
    _info_error(capsys, tmp_path, str(f), "label 10 at record 5 (byte 15365)", "0..9")
    f.unlink()
    _info_error(capsys, tmp_path, "lacks data_batch_3.bin")


class Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_cifar_pickles_never_run_code(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_cifar_py(tmp_path)
    f = tmp_path / "data_batch_2"
    x, y = pattern(10, 3, 32, 32, 0)
    for payload, words in (
        ({b"data": Evil(), b"labels": []}, ["refused", "posix.system"]),
        ({b"data": x.reshape(10, -1), b"labels": [int(v) for v in y],
          b"extra": {1, 2}}, ["refused", "__builtin__.set"]),
        ({b"data": np.array([1, "a"], dtype=object), b"labels": []}, ["refused", "object"]),
        ({b"data": x.reshape(10, -1), b"labels": [int(v) for v in y[:9]]},
         ["10 images but 9 labels"]),
        ({b"data": x.reshape(10, -1), b"labels": [11] * 10}, ["label 11 at index 0"]),
        ({b"data": x.reshape(10, 3, 1024), b"labels": [1] * 10}, ["expected a uint8 array"]),
    ):  # fmt: skip
        f.write_bytes(pickle.dumps(payload, protocol=2))
        _info_error(capsys, tmp_path, str(f), *words)
        assert not (tmp_path / "pwned").exists()
    f.write_bytes(cifar_pickle(x, y)[:-50])  # truncated
    _info_error(capsys, tmp_path, str(f), "not a readable pickle")


def test_corrupt_npz(tmp_path: Path, capsys) -> None:
    f = tmp_path / "a.npz"
    nan = pattern(N_TRAIN, 1, 20, 20, 7)[0][:, 0].astype(np.float32)
    nan[3, 4, 5] = np.nan
    for override, words in (
        (dict(y_train=np.zeros((N_TRAIN, 2), np.int64)), ["y_train is int64 of shape (500, 2)"]),
        (dict(x_train=np.zeros((N_TRAIN, 20, 20), np.int32)), ["x_train is int32"]),
        (dict(x_train=np.zeros((N_TRAIN, 20), np.uint8)), ["expected uint8 or float images"]),
        (dict(y_train=np.zeros(7, np.int64)), ["x_train holds 500 images but y_train 7"]),
        (dict(x_train=nan), ["x_train image 3 holds nan", "finite"]),
        (dict(y_train=-np.ones(N_TRAIN, np.int64)), ["y_train[0] is -1"]),
        (dict(y_test=None), ["x_test and y_test come together"]),
        (dict(x_train=None), ["no array 'x_train'"]),
        (dict(y_test=np.array([0, None] * 50, object)), ["y_test is object"]),
    ):
        write_npz(f, **override)
        _info_error(capsys, f, str(f), *words)
    f.write_bytes(b"PK\x03\x04" + bytes(100))
    _info_error(capsys, f, str(f), "not a readable .npz archive")


def test_nothing_recognised_and_two_sets(tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    _info_error(capsys, tmp_path, "no data set recognised", "data fetch")
    _info_error(capsys, tmp_path / "notes.txt", "not a data set file")
    write_idx(tmp_path)
    write_npz(tmp_path / "b.npz")
    _info_error(capsys, tmp_path, "more than one data set (mnist, npz)", "--dataset")
    assert cli.main(["data", "info", str(tmp_path), "--dataset", "npz"]) == 0
    assert "format npz" in capsys.readouterr().out


def test_info_output(tmp_path: Path, capsys) -> None:
    write_cifar_bin(tmp_path)
    assert cli.main(["data", "info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cifar10, format cifar10-binary" in out and "train: 500 images 3x32x32" in out
    digest = hashlib.md5((tmp_path / "test_batch.bin").read_bytes()).hexdigest()
    assert f"test_batch.bin: 307,300 bytes, MD5 {digest}" in out
    assert "classes (10): airplane, automobile" in out


# --- fitting and normalisation ----------------------------------------------------------------
def test_fit_choices_and_placement() -> None:
    assert choose_fit((28, 28), (29, 29), None) == "pad"  # the paper's MNIST, as before
    assert choose_fit((28, 28), (28, 28), "crop") is None
    for have, want, fit, words in (
        ((32, 32), (28, 28), None, "use --fit crop"),
        ((28, 28), (32, 32), "crop", "use --fit pad or --fit center"),
        ((32, 32), (28, 28), "center", "use --fit crop"),
        ((28, 32), (32, 28), None, "images of 32x28"),
    ):
        with pytest.raises(DataError, match=words.replace("-", r"\-")):
            choose_fit(have, want, fit)
    x = np.arange(2 * 1 * 3 * 4, dtype=np.float32).reshape(2, 1, 3, 4) + 1
    for fit, expect in (
        ("pad", np.pad(x, ((0, 0), (0, 0), (0, 3), (0, 2)))),
        ("center", np.pad(x, ((0, 0), (0, 0), (1, 2), (1, 1)))),
    ):
        out = np.zeros((2, 1, 6, 6), np.float32)
        place(x, out, fit)
        np.testing.assert_array_equal(out, expect)
    out = np.zeros((2, 1, 1, 2), np.float32)
    place(x, out, "crop")
    np.testing.assert_array_equal(out, x[:, :, 1:2, 1:3])  # torchvision CenterCrop's offsets


def test_normalisation_matches_torch(tmp_path: Path) -> None:
    """The images the native runtime receives = torchvision's Normalize(mean, std) * scale on
    the padded [0, 1] pixels, computed by PyTorch in float64."""
    torch = pytest.importorskip("torch")
    from chaosgen import compile as compile_net
    from chaosgen.train import Runtime

    spec = tmp_path / "n.net"
    spec.write_text(
        "input maps=3 size=34x34 mean=0.4914,0.4822,0.4465 "
        "std=0.2470,0.2435,0.2616 scale=2\ndense units=4\noutput classes=10\n"
    )
    net = compile_net(str(spec), build_dir=str(tmp_path / "b"))
    rt = Runtime(net)
    x = pattern(6, 3, 32, 32, 1)[0].astype(np.float32) / np.float32(255)
    got = rt.images(x, "center")[:, : 3 * 34 * 34].reshape(6, 3, 34, 34)
    t = torch.nn.functional.pad(torch.tensor(x, dtype=torch.float64), (1, 1, 1, 1))
    mean = torch.tensor([0.4914, 0.4822, 0.4465], dtype=torch.float64)[:, None, None]
    std = torch.tensor([0.2470, 0.2435, 0.2616], dtype=torch.float64)[:, None, None]
    want = ((t - mean) / std * 2).numpy()
    assert np.abs(got - want).max() < 2e-6
    assert json.loads(cli_ir(spec))["input"]["scale"] == 2


def cli_ir(spec: Path) -> str:
    buf = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(buf):
        assert cli.main(["compile", str(spec), "--emit", "ir"]) == 0
    return buf.getvalue()


# --- training on every format, and the checks before compiling --------------------------------
SMALL1 = "input size={s}\nconv maps=6 kernel=5 activation=relu\nmaxpool window=2\n" \
         "output classes=10\ntrain eta=0.01 epochs=3\n"  # fmt: skip


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_training_on_each_format_learns_the_pattern(tmp_path: Path, fmt: str, capsys) -> None:
    write, _, _, where = WRITERS[fmt]
    (tmp_path / "d").mkdir()
    write(tmp_path / "d")
    maps, size = (3, "32x32") if fmt.startswith("cifar") else (1, "28x28" if fmt == "idx" else
                                                               "20x20")  # fmt: skip
    spec = tmp_path / "s.net"
    spec.write_text(SMALL1.format(s=size).replace("input ", f"input maps={maps} "))
    log = tmp_path / "log.jsonl"
    argv = ["train", str(spec), "--data", str(where(tmp_path / "d")), "--threads", "1",
            "--build-dir", str(ROOT / "build"), "--checkpoint-dir", str(tmp_path / "ck"),
            "--log", str(log), "--val-split", "100"]  # fmt: skip
    assert cli.main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    rec = json.loads(log.read_text().splitlines()[-1])
    assert "held-out val" in out and rec["config"]["val_split"] == 100
    assert rec["train_images"] == N_TRAIN - 100 and rec["val_images"] == 100
    assert rec["test_error_rate"] < 0.1, rec  # chance is 0.9


def test_mismatches_are_refused_before_compiling(tmp_path: Path, capsys) -> None:
    write_cifar_bin(tmp_path / "c")
    spec = tmp_path / "s.net"
    for text, words in (
        ("input maps=1 size=32x32\noutput classes=10\n",
         "the data has 3 channels (3x32x32), network s takes 1 (1x32x32); write `input maps=3`"),
        ("input maps=3 size=32x32\noutput classes=12\n",
         "the data has 10 classes, network s has 12 outputs; write `output classes=10`"),
        ("input maps=3 size=28x28\noutput classes=10\n",
         "the data's images are 32x32, larger than the network's 28x28; use --fit crop"),
    ):  # fmt: skip
        spec.write_text(text)
        argv = ["train", str(spec), "--data", str(tmp_path / "c"), "--build-dir",
                str(tmp_path / "b"), "--checkpoint-dir", str(tmp_path / "ck")]  # fmt: skip
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"chaosgen: error: {words}"), err
        assert err.count("\n") == 1 and not (tmp_path / "b").exists()


# --- fetching from a local server -------------------------------------------------------------
def test_fetch_fashion_and_cifar(tmp_path: Path, serve) -> None:  # noqa: F811
    mirror = tmp_path / "mirror"
    write_idx(mirror)
    table = tuple(
        (n, (mirror / n).stat().st_size, hashlib.md5((mirror / n).read_bytes()).hexdigest())
        for n, _, _ in data.FASHION_FILES
    )
    url = serve(mirror)
    data.fetch_dataset("fashion-mnist", tmp_path / "f", [url], 10, files=table)
    assert sets.probe(tmp_path / "f").format == "idx"
    # CIFAR-10: the checked archive, then only its seven members unpacked.
    write_cifar_bin(tmp_path / "src" / "cifar-10-batches-bin")
    (tmp_path / "src" / "cifar-10-batches-bin" / "readme.html").write_text("x")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-bin", "cifar-10-batches-bin")
    (mirror / "cifar-10-binary.tar.gz").write_bytes(buf.getvalue())
    table = (("cifar-10-binary.tar.gz", len(buf.getvalue()),
              hashlib.md5(buf.getvalue()).hexdigest()),)  # fmt: skip
    dest = tmp_path / "c"
    data.fetch_dataset("cifar10", dest, [url], 10, files=table)
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [*data.CIFAR10_MEMBERS, "cifar-10-binary.tar.gz"]
    )
    assert sets.load_dataset(dest).train_images.shape == (N_TRAIN, 3, 32, 32)
    bad = (("cifar-10-binary.tar.gz", len(buf.getvalue()), "0" * 32),)
    with pytest.raises(DataError, match="bad MD5"):
        data.fetch_dataset("cifar10", tmp_path / "c2", [url], 10, files=bad)
    assert not (tmp_path / "c2" / "cifar-10-binary.tar.gz").exists()


def test_normalisation_is_part_of_the_model(tmp_path: Path) -> None:
    from chaosgen.pipeline import front_end

    digests = []
    for extra in ("", " mean=0.1307 std=0.3081", " mean=0.1307 std=0.3081 scale=2"):
        spec = tmp_path / "m.net"
        spec.write_text(f"input size=28x28{extra}\noutput classes=10\n")
        digests.append(front_end(str(spec))[1].digest())
    assert len(set(digests)) == 3  # a checkpoint of one is refused by the others


def test_eval_and_val_split_on_npz(tmp_path: Path, capsys) -> None:
    write_npz(tmp_path / "a.npz")
    spec = tmp_path / "s.net"
    spec.write_text(SMALL1.format(s="20x20"))
    common = ["--data", str(tmp_path / "a.npz"), "--build-dir", str(ROOT / "build")]
    argv = ["train", str(spec), *common, "--checkpoint-dir", str(tmp_path / "ck")]
    assert cli.main([*argv, "--val-split", str(N_TRAIN)]) == 2
    assert "--val-split 500: the data has 500 training images" in capsys.readouterr().err
    assert cli.main([*argv, "--quiet", "--threads", "1"]) == 0
    weights = str(tmp_path / "ck" / "last.npz")
    assert cli.main(["eval", str(spec), *common, "--weights", weights, "--train-set"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^test: .* of 100 ", out, re.M) and re.search(
        r"^train: .* of 500 ", out, re.M
    )


def test_npz_without_a_test_split_trains(tmp_path: Path, capsys) -> None:
    """Before: an internal error reshaping the empty test set."""
    x, y = pattern(200, 1, 20, 20, 1)
    np.savez(tmp_path / "t.npz", x_train=x, y_train=y)
    spec = tmp_path / "s.net"
    spec.write_text(SMALL1.format(s="20x20"))
    log = tmp_path / "log.jsonl"
    argv = ["train", str(spec), "--data", str(tmp_path / "t.npz"), "--epochs", "1", "--log",
            str(log), "--build-dir", str(ROOT / "build"), "--checkpoint-dir",
            str(tmp_path / "c")]  # fmt: skip
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert "test none" in capsys.readouterr().out
    rec = json.loads(log.read_text())
    assert (rec["test_images"], rec["test_error_rate"], rec["val_images"]) == (0, None, 200)


MNIST = Path(os.environ.get("CHAOSGEN_DATA") or ROOT.parent / "shared" / "data" / "mnist")


@pytest.mark.skipif(not (MNIST / "t10k-images-idx3-ubyte.gz").is_file(), reason="no MNIST")
def test_paper_runs_see_the_same_images(tmp_path: Path) -> None:
    """Real MNIST through the general reader and the default fitting (28x28 -> 29x29, pad) gives
    the small net's runtime exactly the images the MNIST reader (load_mnist) gave it."""
    from chaosgen import compile as compile_net
    from chaosgen.train import Runtime

    rt = Runtime(compile_net(str(ROOT / "specs" / "small.net"), build_dir=str(ROOT / "build")))
    old = data.load_mnist(MNIST)
    new = sets.load_dataset(MNIST)
    assert (new.name, new.format, new.test_images.shape) == ("mnist", "idx", (10000, 1, 28, 28))
    np.testing.assert_array_equal(rt.images(new.test_images), rt.images(old.test_images))
    np.testing.assert_array_equal(new.test_labels, old.test_labels)


def test_program_trains_on_cifar_binary_as_chaosgen_sees_it(tmp_path: Path, capsys) -> None:
    """The standalone program of a 3x34x34 net with per-channel mean/std reads CIFAR-10 binary
    batches (padded below and right, normalised from the same float32 steps): its weights give
    chaosgen's runtime exactly the test figures the program logged; a bad batch is one line."""
    import subprocess

    import chaosgen
    from chaosgen import checkpoint
    from chaosgen.train import Runtime

    write_cifar_bin(tmp_path / "c")
    spec = tmp_path / "c34.net"
    spec.write_text(
        "input maps=3 size=34x34 mean=0.4914,0.4822,0.4465 std=0.2470,0.2435,0.2616\n"
        + SMALL1.split("\n", 1)[1]
    )
    out = tmp_path / "prog"
    assert cli.main(["compile", str(spec), "--program", "--cc", "gcc", "--out", str(out)]) == 0
    run = [str(out / "chaosgen-c34"), "--data", str(tmp_path / "c"), "--threads", "1"]
    proc = subprocess.run(run, cwd=out, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((out / "run.jsonl").read_text().splitlines()[-1])
    assert rec["config"]["fit"] == "pad" and rec["test_images"] == N_TEST
    assert rec["test_error_rate"] < 0.2, rec
    assert cli.main(["import-weights", str(spec), str(out / "weights.cgw")]) == 0
    net = chaosgen.compile(str(spec), build_dir=str(ROOT / "build"))
    net.params[:] = checkpoint.load(out / "weights.npz", net.ir).params
    rt = Runtime(net)
    d = sets.load_dataset(tmp_path / "c")
    st = rt.evaluate(rt.images(d.test_images), d.test_labels, 1)
    assert st.errors == rec["test_errors"]
    assert st.loss == pytest.approx(rec["test_error"], rel=1e-5)
    f = tmp_path / "c" / "test_batch.bin"
    f.write_bytes(f.read_bytes()[:-7])
    proc = subprocess.run(run, cwd=out, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert f"{f}: 307293 bytes is not a whole number of 3073-byte records" in proc.stderr


def test_files_of_known_names_but_wrong_bytes_are_named(tmp_path: Path, capsys) -> None:
    write_idx(tmp_path / "m")
    f = tmp_path / "m" / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:30])
    _info_error(capsys, tmp_path / "m", str(f), "truncated gzip file")
    write_cifar_bin(tmp_path / "c")
    f = tmp_path / "c" / "data_batch_1.bin"
    f.write_bytes(bytes([200]) + f.read_bytes()[1:])  # a first label byte of 200
    _info_error(capsys, tmp_path / "c", str(f), "label 200 at record 0 (byte 0)")
