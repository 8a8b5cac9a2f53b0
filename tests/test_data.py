"""chaosgen.data: the IDX reader on the real MNIST files and on broken ones, the CLI, fetch."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from chaosgen import cli, data
from chaosgen.errors import DataError

# CI clones the repo beside shared/; $CHAOSGEN_DATA overrides.
DATA_DIR = Path(
    os.environ.get("CHAOSGEN_DATA")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
)
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
NAMES = [name for name, _, _ in data.FILES]

needs_data = pytest.mark.skipif(
    not all((DATA_DIR / n).is_file() or (DATA_DIR / n[:-3]).is_file() for n in NAMES),
    reason=f"MNIST files not found in {DATA_DIR}",
)


@pytest.fixture(scope="module")
def mnist() -> data.Mnist:
    return data.load_mnist(DATA_DIR)


# --- the real files -------------------------------------------------------------------------


@needs_data
def test_shapes_and_dtypes(mnist: data.Mnist) -> None:
    assert mnist.train_images.shape == (60000, 29, 29)
    assert mnist.test_images.shape == (10000, 29, 29)
    assert mnist.train_labels.shape == (60000,)
    assert mnist.test_labels.shape == (10000,)
    assert mnist.train_images.dtype == mnist.test_images.dtype == np.float32
    assert mnist.train_labels.dtype == mnist.test_labels.dtype == np.int32


@needs_data
def test_label_histograms(mnist: data.Mnist) -> None:
    assert np.bincount(mnist.train_labels, minlength=10).tolist() == TRAIN_COUNTS
    assert np.bincount(mnist.test_labels, minlength=10).tolist() == TEST_COUNTS


@needs_data
def test_padding_and_range(mnist: data.Mnist) -> None:
    for images in (mnist.train_images, mnist.test_images):
        assert not images[:, 28, :].any(), "bottom padding row must be zero"
        assert not images[:, :, 28].any(), "right padding column must be zero"
        assert images.min() == 0.0 and images.max() == 1.0
    # The digits sit where the file puts them: the scaled 28x28 block equals raw / 255.
    raw = data.read_images(DATA_DIR / "t10k-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(mnist.test_images[:, :28, :28], raw.astype(np.float32) / 255)


@needs_data
def test_uncompressed_files_read_the_same(mnist: data.Mnist, tmp_path: Path) -> None:
    for name in NAMES:
        (tmp_path / name[:-3]).write_bytes(gzip.decompress((DATA_DIR / name).read_bytes()))
    # A gzip file under a raw name is still recognized by its magic bytes.
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes((DATA_DIR / NAMES[3]).read_bytes())
    other = data.load_mnist(tmp_path)
    np.testing.assert_array_equal(other.test_images, mnist.test_images)
    np.testing.assert_array_equal(other.test_labels, mnist.test_labels)
    assert other.train_images.shape == (60000, 29, 29)


# --- broken files (small synthetic IDX files) -----------------------------------------------


def idx(magic: int, array: np.ndarray) -> bytes:
    """An IDX file written independently of the reader: big-endian header, then the bytes."""
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def tiny_set(directory: Path, n_train: int = 6, n_test: int = 4, compress: bool = True) -> None:
    """Four small valid files: images of value 7*i+j, labels i % 10."""
    for kind, n in (("train", n_train), ("t10k", n_test)):
        images = (np.arange(n * 28 * 28) % 256).reshape(n, 28, 28)
        for name, blob in (
            (f"{kind}-images-idx3-ubyte", idx(2051, images)),
            (f"{kind}-labels-idx1-ubyte", idx(2049, np.arange(n) % 10)),
        ):
            if compress:
                (directory / f"{name}.gz").write_bytes(gzip.compress(blob))
            else:
                (directory / name).write_bytes(blob)


def one_line_error(exc: pytest.ExceptionInfo[DataError], *words: str) -> str:
    text = exc.value.render()
    assert "\n" not in text
    for word in words:
        assert word in text, f"{word!r} not in {text!r}"
    return text


@pytest.mark.parametrize("compress", [True, False])
def test_tiny_set_loads(tmp_path: Path, compress: bool) -> None:
    tiny_set(tmp_path, compress=compress)
    d = data.load_mnist(tmp_path)
    assert d.train_images.shape == (6, 29, 29) and d.test_labels.tolist() == [0, 1, 2, 3]
    expected = (np.arange(6 * 784) % 256).reshape(6, 28, 28) / 255
    np.testing.assert_allclose(d.train_images[:, :28, :28], expected, rtol=1e-7)


def test_truncated_raw(tmp_path: Path) -> None:
    tiny_set(tmp_path, compress=False)
    f = tmp_path / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DataError) as e:
        data.load_mnist(tmp_path)
    one_line_error(e, str(f), "truncated", "4704", "4604")


def test_trailing_bytes(tmp_path: Path) -> None:
    tiny_set(tmp_path, compress=False)
    f = tmp_path / "t10k-labels-idx1-ubyte"
    f.write_bytes(f.read_bytes() + b"\0\0\0")
    with pytest.raises(DataError) as e:
        data.load_mnist(tmp_path)
    one_line_error(e, str(f), "3 bytes more")


def test_truncated_gzip(tmp_path: Path) -> None:
    tiny_set(tmp_path)
    f = tmp_path / "train-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-12])
    with pytest.raises(DataError) as e:
        data.load_mnist(tmp_path)
    one_line_error(e, str(f), "truncated gzip")


def test_corrupt_gzip(tmp_path: Path) -> None:
    tiny_set(tmp_path)
    f = tmp_path / "train-images-idx3-ubyte.gz"
    blob = bytearray(f.read_bytes())
    blob[-8] ^= 0xFF  # the CRC-32 in the trailer: the stream inflates but does not check out
    f.write_bytes(bytes(blob))
    with pytest.raises(DataError) as e:
        data.load_mnist(tmp_path)
    one_line_error(e, str(f), "corrupt gzip")


def test_header_too_short(tmp_path: Path) -> None:
    f = tmp_path / "x"
    f.write_bytes(b"\0\0\x08")
    with pytest.raises(DataError) as e:
        data.read_labels(f)
    one_line_error(e, str(f), "too short")
    f.write_bytes(idx(2051, np.zeros((2, 28, 28)))[:10])
    with pytest.raises(DataError) as e:
        data.read_images(f)
    one_line_error(e, str(f), "truncated IDX header")


def test_wrong_magic(tmp_path: Path) -> None:
    tiny_set(tmp_path)
    # Labels where images belong: the message says what the file is.
    shutil.copy(tmp_path / "t10k-labels-idx1-ubyte.gz", tmp_path / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(DataError) as e:
        data.load_mnist(tmp_path)
    one_line_error(e, "t10k-images-idx3-ubyte.gz", "magic number 2049", "label file", "2051")
    f = tmp_path / "junk"
    f.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(DataError) as e:
        data.read_images(f)
    one_line_error(e, str(f), "not an IDX image file")


def test_count_mismatch(tmp_path: Path) -> None:
    tiny_set(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx(2049, np.arange(5) % 10))
    )
    with pytest.raises(DataError) as e:
        data.load_mnist(tmp_path)
    one_line_error(e, "train-images-idx3-ubyte.gz", "6 images", "5 labels")


def test_bad_labels_and_sizes(tmp_path: Path) -> None:
    tiny_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx(2049, np.array([0, 1, 200, 3])))
    )
    with pytest.raises(DataError) as e:
        data.load_mnist(tmp_path)
    one_line_error(e, "label 200 at index 2")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(idx(2051, np.zeros((6, 32, 32))))
    with pytest.raises(DataError) as e:
        data.load_mnist(tmp_path)
    one_line_error(e, "32x32", "expected 28x28")


# --- finding the data -----------------------------------------------------------------------


def test_find_data_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, home = tmp_path / "a", tmp_path / "b", tmp_path / "home"
    for d in (a, b, home / ".cache" / "chaosgen" / "mnist"):
        d.mkdir(parents=True)
        tiny_set(d)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CHAOSGEN_DATA", str(b))
    assert data.find_data_dir(str(a)) == a
    assert data.find_data_dir(None) == b
    monkeypatch.delenv("CHAOSGEN_DATA")
    assert data.find_data_dir(None) == home / ".cache" / "chaosgen" / "mnist"


def test_find_data_dir_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CHAOSGEN_DATA", raising=False)
    with pytest.raises(DataError) as e:
        data.find_data_dir(None)
    one_line_error(
        e, "--data not given", "$CHAOSGEN_DATA not set", "home/.cache/chaosgen/mnist",
        "chaosgen data fetch --dir", "CHAOSGEN_DATA",
    )  # fmt: skip
    # A given place that is wrong is reported, not silently replaced by the default.
    tiny_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv("CHAOSGEN_DATA", str(tmp_path))
    with pytest.raises(DataError) as e:
        data.find_data_dir(None)
    one_line_error(e, f"$CHAOSGEN_DATA {tmp_path}", "lacks t10k-labels-idx1-ubyte[.gz]")


# --- the command line -----------------------------------------------------------------------


def test_cli_info_bad_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["data", "info", "--data", str(tmp_path / "nowhere")]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("chaosgen: error: ")
    assert "nowhere" in err and "Traceback" not in err
    tiny_set(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b" + bytes(40))
    assert cli.main(["data", "info", "--data", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "t10k-images-idx3-ubyte.gz" in err and "Traceback" not in err


@needs_data
def test_cli_info(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["data", "info", "--data", str(DATA_DIR)]) == 0
    out = capsys.readouterr().out
    assert str(DATA_DIR) in out and "60000 images 29x29" in out and "10000 images" in out
    assert "train  " + "  ".join(f"{c:>4}" for c in TRAIN_COUNTS) in out
    assert out.count("MD5 ok") == 4


# --- fetching from a local server -----------------------------------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def serve() -> Iterator:
    """serve(directory) -> base URL of a local HTTP server for that directory."""
    servers = []

    def start(directory: Path) -> str:
        handler = functools.partial(_Quiet, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@needs_data
def test_fetch(tmp_path: Path, serve) -> None:
    mirror = tmp_path / "mirror"
    shutil.copytree(DATA_DIR, mirror, copy_function=shutil.copyfile)
    url = serve(mirror)
    dest = tmp_path / "dest"
    lines: list[str] = []
    paths = data.fetch(dest, [url], timeout=10, log=lines.append)
    assert [p.name for p in paths] == NAMES
    for name, size, digest in data.FILES:
        blob = (dest / name).read_bytes()
        assert len(blob) == size and hashlib.md5(blob).hexdigest() == digest
    assert sorted(p.name for p in dest.iterdir()) == sorted(NAMES)  # no temp files left
    assert all("MD5 ok" in line for line in lines)
    # Present and good: skipped, so an unreachable mirror does not matter.
    lines.clear()
    data.fetch(dest, ["http://127.0.0.1:1/"], timeout=5, log=lines.append)
    assert all("present" in line for line in lines)
    assert data.load_mnist(dest).test_labels.shape == (10000,)


@needs_data
def test_fetch_refuses_bad_checksum(tmp_path: Path, serve) -> None:
    bad, good, empty = tmp_path / "bad", tmp_path / "good", tmp_path / "empty"
    shutil.copytree(DATA_DIR, bad, copy_function=shutil.copyfile)
    shutil.copytree(DATA_DIR, good, copy_function=shutil.copyfile)
    empty.mkdir()
    f = bad / "t10k-labels-idx1-ubyte.gz"
    blob = bytearray(f.read_bytes())
    blob[100] ^= 0x01  # same size, different MD5
    f.write_bytes(bytes(blob))
    bad_url, good_url, empty_url = serve(bad), serve(good), serve(empty)
    dest = tmp_path / "dest"
    with pytest.raises(DataError) as e:
        data.fetch(dest, [empty_url, bad_url], timeout=10)
    one_line_error(e, "t10k-labels-idx1-ubyte.gz", "HTTP 404", "bad MD5")
    assert not (dest / "t10k-labels-idx1-ubyte.gz").exists()
    assert sorted(p.name for p in dest.iterdir()) == sorted(NAMES[:3])  # no temp files left
    # A corrupt local copy is replaced; the bad mirror is refused and the next one used.
    (dest / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(blob))
    lines: list[str] = []
    data.fetch(dest, [empty_url, bad_url, good_url], timeout=10, log=lines.append)
    assert [("present" in line) for line in lines] == [True, True, True, False]
    assert good_url in lines[3]
    got = hashlib.md5((dest / "t10k-labels-idx1-ubyte.gz").read_bytes()).hexdigest()
    assert got == data.FILES[3][2]
    assert sorted(p.name for p in dest.iterdir()) == sorted(NAMES)
