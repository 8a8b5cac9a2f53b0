"""chaosgen.data: the IDX reader on the real MNIST files and on broken ones, the CLI, fetch."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from chaosgen import cli, data
from chaosgen.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
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
    assert str(DATA_DIR) in out and "60000 images 1x28x28" in out and "10000 images" in out
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


# --- more broken files: every one a single line naming the file, never a traceback ---------


def _load_error(directory: Path, *words: str) -> str:
    with pytest.raises(DataError) as e:
        data.load_mnist(directory)
    return one_line_error(e, *words)


@pytest.mark.parametrize("kind", ["train", "t10k"])
def test_a_well_formed_file_of_zero_images(tmp_path: Path, kind: str) -> None:
    """Before: accepted; `eval` then failed with an internal error, `train` printed nan."""
    tiny_set(tmp_path)
    for name, blob in (
        (f"{kind}-images-idx3-ubyte.gz", idx(2051, np.zeros((0, 28, 28)))),
        (f"{kind}-labels-idx1-ubyte.gz", idx(2049, np.zeros(0))),
    ):
        (tmp_path / name).write_bytes(gzip.compress(blob))
    _load_error(tmp_path, f"{tmp_path / kind}-images-idx3-ubyte.gz: holds no images")


def test_what_stands_where_a_file_should_be_is_named(tmp_path: Path) -> None:
    """Before: a directory, a broken link or a FIFO was reported as a missing file."""
    tiny_set(tmp_path)
    f = tmp_path / "t10k-images-idx3-ubyte.gz"
    f.unlink()
    f.mkdir()
    _load_error(tmp_path, f"{f}: a directory, not an IDX file")
    f.rmdir()
    f.symlink_to(tmp_path / "gone")
    _load_error(tmp_path, f"{f}: a broken symbolic link (to {tmp_path / 'gone'})")
    f.unlink()
    os.mkfifo(f)  # reading it would block forever
    _load_error(tmp_path, f"{f}: not a regular file")
    # A regular file a read fails on (as root, chmod cannot make one): EIO at address 0.
    f.unlink()
    f.symlink_to("/proc/self/mem")
    _load_error(tmp_path, f"{f}: cannot read (Input/output error)")
    # The uncompressed twin, if it is a file, is still found beside the directory.
    f.unlink()
    f.mkdir()
    raw = tmp_path / "t10k-images-idx3-ubyte"
    raw.write_bytes(idx(2051, np.zeros((4, 28, 28))))
    assert data.load_mnist(tmp_path).test_images.shape == (4, 29, 29)


def _gzip_bomb(path: Path, header: bytes, gigabytes: int) -> None:
    """An IDX header, then `gigabytes` GB of zeros, as a multi-member gzip file of a few MB."""
    member = gzip.compress(bytes(1 << 20), compresslevel=9)
    with open(path, "wb") as f:
        f.write(gzip.compress(header))
        for _ in range(gigabytes * 1024):
            f.write(member)


def test_files_far_larger_than_their_header_are_not_read_whole(tmp_path: Path) -> None:
    """A gzip bomb and a huge sparse raw file, both with a header promising 4 images, read in a
    process limited to 1 GB of memory. Before: MemoryError, an internal error."""
    header = idx(2051, np.zeros((4, 28, 28)))
    for name, make in (
        ("t10k-images-idx3-ubyte.gz", lambda f: _gzip_bomb(f, header, 2)),
        ("t10k-images-idx3-ubyte", lambda f: (f.write_bytes(header), os.truncate(f, 8 << 30))),
    ):
        d = tmp_path / name.replace(".", "_")
        d.mkdir()
        tiny_set(d)
        (d / "t10k-images-idx3-ubyte.gz").unlink()
        make(d / name)
        script = (
            "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
            "from chaosgen.cli import main; sys.exit(main(sys.argv[1:]))"
        )
        proc = subprocess.run(
            [sys.executable, "-c", script, "data", "info", "--data", str(d)],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"},
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr == (
            f"chaosgen: error: {d / name}: over 67,108,864 bytes more than the header promises "
            "(4x28x28); not a clean IDX file\n"
        )


def test_labels_beyond_the_networks_classes_are_refused(tmp_path: Path, capsys) -> None:
    """MNIST on a 5-class network. Before: read outside the output in native code; then: refused
    after compiling and loading, by the labels; now: before compiling, by the format's classes."""
    tiny_set(tmp_path)
    spec = tmp_path / "five.net"
    spec.write_text("input size=29x29\ndense h: units=8\noutput out: classes=5\n")
    argv = ["train", str(spec), "--data", str(tmp_path), "--quiet", "--epochs", "1"]
    rc = cli.main(
        [*argv, "--build-dir", str(tmp_path / "b"), "--checkpoint-dir", str(tmp_path / "ck")]
    )
    err = capsys.readouterr().err
    assert rc == 1, err
    assert err == (  # refused before compiling: MNIST names 10 classes
        "chaosgen: error: the data has 10 classes, network five has 5 outputs; write "
        "`output classes=10` in the spec\n"
    )
    assert not (tmp_path / "b").exists()


# --- no home directory ----------------------------------------------------------------------


def _homeless(tmp_path: Path, *argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`chaosgen ARGV` with $HOME unset and no user database entry (a private mount namespace
    hides /etc/passwd): Python cannot find a home directory at all."""
    (tmp_path / "passwd").write_text("")
    (tmp_path / "nsswitch.conf").write_text("passwd: files\ngroup: files\n")
    setup = " && ".join(
        f"mount --bind {tmp_path / name} /etc/{name}" for name in ("passwd", "nsswitch.conf")
    )
    environ = {k: v for k, v in os.environ.items() if k not in ("HOME", data.ENV_VAR)}
    return subprocess.run(
        ["unshare", "--mount", "sh", "-c", f'{setup} && exec "$@"', "sh", sys.executable,
         "-m", "chaosgen.cli", *argv],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )  # fmt: skip


def _can_hide_home(tmp_path: Path) -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = _homeless(tmp_path, "--version")
    return probe.returncode == 0


def test_no_home_directory(tmp_path: Path) -> None:
    """Before: `--data DIR` with no home directory was an internal error (RuntimeError)."""
    if not _can_hide_home(tmp_path):
        pytest.skip("needs root and unshare --mount to hide the user database")
    tiny_set(tmp_path)
    ok = _homeless(tmp_path, "data", "info", "--data", str(tmp_path))
    assert ok.returncode == 0 and "train: 6 images" in ok.stdout, ok.stderr
    ok = _homeless(tmp_path, "data", "info", env={data.ENV_VAR: str(tmp_path)})
    assert ok.returncode == 0, ok.stderr
    for argv, words in (
        (["data", "info"], ["no home directory", "--data", "$CHAOSGEN_DATA"]),
        (["data", "fetch"], ["no home directory", "--dir", "$CHAOSGEN_DATA"]),
        (["data", "info", "--data", "~/mnist"], ["--data ~/mnist: no home directory"]),
        (["train", "specs/small.net"], ["no home directory", "--data", "$CHAOSGEN_DATA"]),
        (["predict", "specs/small.net", "--machine", "this"],
         ["no home directory", "$CHAOSGEN_MACHINE"]),
        (["calibrate"], ["no home directory", "$CHAOSGEN_MACHINE", "--out"]),
    ):
        bad = _homeless(tmp_path, *argv)
        assert bad.returncode == 1, bad.stderr
        assert bad.stderr.startswith("chaosgen: error: ") and bad.stderr.count("\n") == 1
        assert all(w in bad.stderr for w in words), bad.stderr
