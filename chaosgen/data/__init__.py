"""MNIST: read the original IDX files (gzip or raw), pad to 29x29, scale to [0, 1]; fetch them
(and Fashion-MNIST, CIFAR-10). The other formats and the general loader: chaosgen.data.sets.

Two choices shape every image the runtime sees:

- **29x29, not 28x28.** The CHAOS paper (Viebke et al.) feeds 29x29 images, the input size of
  Simard et al.'s and Ciresan et al.'s MNIST CNNs. Each 28x28 digit gets one zero row at the
  bottom and one zero column at the right, so it keeps its pixel coordinates (row r, column c of
  the file is row r, column c of the array) and nothing is resampled.
- **Pixels are uint8 / 255 as float32**, so background is exactly 0.0 and full ink exactly 1.0;
  no mean subtraction or standardization (the network spec can add that if it wants).

Files are recognized as gzip by their magic bytes (1f 8b), not by their names, and checked
against the IDX header: magic 2051 (images) or 2049 (labels), dimensions, and exactly the bytes
the header promises. Every problem is a `DataError` naming the file. Nothing is cached on disk.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import math
import os
import stat
import sys
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .. import __version__
from ..build import atomic_write
from ..errors import DataError

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
ROWS = COLS = 28  # as stored in the files
SIZE = 29  # as fed to the network (see the module docstring)
GZIP_MAGIC = b"\x1f\x8b"

# (file, bytes, md5) of the canonical gzipped files, as listed by torchvision.
FILES: tuple[tuple[str, int, str], ...] = (
    ("train-images-idx3-ubyte.gz", 9912422, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    ("train-labels-idx1-ubyte.gz", 28881, "d53e105ee54ea40749a09fcbcd1e9432"),
    ("t10k-images-idx3-ubyte.gz", 1648877, "9fb629c4189551a2d022fa330f9573f3"),
    ("t10k-labels-idx1-ubyte.gz", 4542, "ec29112dd5afa0611ce80d1b7f02629c"),
)
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
ENV_VAR = "CHAOSGEN_DATA"
HOW_TO_GET = (
    "get it with `chaosgen data fetch --dir {dir}`, or point CHAOSGEN_DATA at a folder with "
    "the four IDX files"
)


@dataclass(frozen=True, slots=True)
class Mnist:
    """The four arrays: images (n, 29, 29) float32 in [0, 1], labels (n,) int32 in 0..9."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def default_data_dir() -> Path:
    """Where `chaosgen data fetch` puts the files when no directory is given."""
    home = _expand("~") if os.environ.get("HOME") != "" else None
    if home is None:
        raise DataError(
            "no home directory ($HOME is unset or empty) for the default data directory "
            f"~/.cache/chaosgen/mnist; give the directory with --data (--dir for `data fetch`) "
            f"or ${ENV_VAR}"
        )
    return home / ".cache" / "chaosgen" / "mnist"


def _expand(path: str) -> Path | None:
    """`path` with a leading ~ expanded; None if it needs a home directory there is none of."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # $HOME unset and no home in the password database
        return None


def _given(path: str, option: str) -> Path:
    """A directory the user gave (--data, $CHAOSGEN_DATA, --dir), ~ expanded."""
    expanded = _expand(path)
    if expanded is None:
        raise DataError(
            f"{option} {path}: no home directory ($HOME is not set) to expand ~ in; "
            "give the directory without ~"
        )
    return expanded


# ---------------------------------------------------------------------------------------------
# Reading


# Extra bytes counted after the data before a file is called "far larger" than its header says
# (a file of wrong contents, or a gzip bomb, is never read whole).
EXTRA_COUNTED = 1 << 26


def _read_at_most(f: BinaryIO, n: int) -> bytes:
    """Up to `n` bytes of `f`, read in chunks (a header's `n` may be absurd)."""
    parts: list[bytes] = []
    while n > 0 and (chunk := f.read(min(n, 1 << 24))):
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _not_a_file(path: Path) -> str | None:
    """What is wrong if `path` is not a readable regular file (a FIFO would block a read)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            return f"a broken symbolic link (to {os.readlink(path)}), not an IDX file"
        return "no such file"
    except OSError as e:
        return f"cannot read ({e.strerror or e})"
    if stat.S_ISREG(mode):
        return None
    return f"{'a directory' if stat.S_ISDIR(mode) else 'not a regular file'}, not an IDX file"


def _read_idx(path: Path, magic: int, what: str) -> np.ndarray:
    """An unsigned-byte IDX array (gzip recognized by its magic bytes), checked against its
    header; only as many bytes are read as the header promises (and a bounded count more)."""
    if (problem := _not_a_file(path)) is not None:
        raise DataError(f"{path}: {problem}")
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == GZIP_MAGIC
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw) if gzipped else raw as f:
                return _parse_idx(path, f, magic, what)
    except EOFError:
        raise DataError(
            f"{path}: truncated gzip file (the compressed stream ends early)"
        ) from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: corrupt gzip file ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def _parse_idx(path: Path, f: BinaryIO, magic: int, what: str) -> np.ndarray:
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    blob = _read_at_most(f, header)
    if len(blob) < 4:
        raise DataError(f"{path}: {len(blob)} bytes, too short for an IDX header")
    found = int.from_bytes(blob[:4], "big")
    if found != magic:
        known = {IMAGES_MAGIC: " (an image file)", LABELS_MAGIC: " (a label file)"}.get(found, "")
        raise DataError(
            f"{path}: not an IDX {what} file: magic number {found}{known}, expected {magic}"
        )
    if len(blob) < header:
        raise DataError(f"{path}: truncated IDX header ({len(blob)} of {header} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(blob, ">u4", ndim, 4))
    promised = math.prod(dims)  # Python ints: a corrupt header cannot overflow
    shape = "x".join(map(str, dims))
    try:
        body = _read_at_most(f, promised)
    except MemoryError:
        raise DataError(
            f"{path}: {shape} {what}s ({promised:,} bytes) do not fit in memory"
        ) from None
    if len(body) < promised:
        raise DataError(
            f"{path}: truncated: the header promises {promised} bytes of {what}s ({shape}), "
            f"the file holds {len(body)}"
        )
    extra = 0
    while extra <= EXTRA_COUNTED and (chunk := f.read(1 << 20)):
        extra += len(chunk)
    if extra:
        more = f"{extra}" if extra <= EXTRA_COUNTED else f"over {EXTRA_COUNTED:,}"
        raise DataError(
            f"{path}: {more} bytes more than the header promises ({shape}); not a clean IDX file"
        )
    return np.frombuffer(body, np.uint8, promised).reshape(dims)


def read_images(path: str | Path) -> np.ndarray:
    """An IDX image file (magic 2051) as a read-only uint8 (n, rows, cols) view of its bytes."""
    return _read_idx(Path(path), IMAGES_MAGIC, "image")


def read_labels(path: str | Path) -> np.ndarray:
    """An IDX label file (magic 2049) as read-only uint8 (n,), every label checked to be 0..9."""
    path = Path(path)
    labels = _read_idx(path, LABELS_MAGIC, "label")
    if labels.size and labels.max() > 9:
        i = int(np.argmax(labels > 9))
        raise DataError(f"{path}: label {labels[i]} at index {i}; MNIST labels are 0..9")
    return labels


def pad_and_scale(images: np.ndarray) -> np.ndarray:
    """uint8 (n, 28, 28) -> float32 (n, 29, 29): /255, a zero row below, a zero column right."""
    n = images.shape[0]
    out = np.zeros((n, SIZE, SIZE), np.float32)
    np.divide(images, np.float32(255), out=out[:, :ROWS, :COLS])
    return out


def _file(directory: Path, name: str) -> Path | None:
    """`name` (ending .gz) or its uncompressed twin, whichever is a file (gzip preferred), else
    whichever exists (a directory, a broken link...: reading it says what is wrong)."""
    candidates = (directory / name, directory / name.removesuffix(".gz"))
    for exists in (os.path.isfile, os.path.lexists):
        for candidate in candidates:
            if exists(candidate):
                return candidate
    return None


def _missing(directory: Path) -> list[str]:
    """The canonical names (without .gz) of the files `directory` lacks."""
    return [name.removesuffix(".gz") for name, _, _ in FILES if _file(directory, name) is None]


def _split(directory: Path, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """One split ('train' or 't10k'): checked, padded, scaled images and int32 labels."""
    ipath = _file(directory, f"{kind}-images-idx3-ubyte.gz")
    lpath = _file(directory, f"{kind}-labels-idx1-ubyte.gz")
    if ipath is None or lpath is None:
        missing = ", ".join(f"{m}[.gz]" for m in _missing(directory))
        raise DataError(
            f"no MNIST data in {directory}: missing {missing}; {HOW_TO_GET.format(dir=directory)}"
        )
    images = read_images(ipath)
    labels = read_labels(lpath)
    if images.shape[1:] != (ROWS, COLS):
        raise DataError(
            f"{ipath}: images are {images.shape[1]}x{images.shape[2]}, expected {ROWS}x{COLS}"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{ipath} holds {len(images)} images but {lpath.name} holds {len(labels)} labels"
        )
    if len(images) == 0:
        raise DataError(f"{ipath}: holds no images (its header says 0)")
    return pad_and_scale(images), labels.astype(np.int32)


def load_mnist(directory: str | Path) -> Mnist:
    """Read the four IDX files in `directory` (gzipped or not) into padded, scaled arrays."""
    directory = Path(directory)
    train_images, train_labels = _split(directory, "train")
    test_images, test_labels = _split(directory, "t10k")
    return Mnist(train_images, train_labels, test_images, test_labels)


def _sources(arg: str | None) -> Iterator[tuple[str, Path | None]]:
    """The places data may live, in order of precedence, each with where it came from (the
    default only when asked for: it needs a home directory)."""
    env = os.environ.get(ENV_VAR) or None
    yield "--data", _given(arg, "--data") if arg else None
    yield f"${ENV_VAR}", _given(env, f"${ENV_VAR}") if env else None
    yield "default", default_data_dir()


def data_source(arg: str | None) -> tuple[str, Path]:
    """The directory `find_data_dir(arg)` considers, and what chose it (--data, env, default)."""
    return next((label, path) for label, path in _sources(arg) if path is not None)


def find_data_dir(arg: str | None = None) -> Path:
    """The MNIST directory: `--data`, else $CHAOSGEN_DATA, else ~/.cache/chaosgen/mnist.

    The first of these that is given is the one used: a mistyped --data or $CHAOSGEN_DATA is
    reported, never silently replaced by another copy of the data.
    """
    _, directory = data_source(arg)
    missing = _missing(directory)
    if not missing:
        return directory
    looked = []
    for name, path in _sources(arg):
        if path is not None:
            looked.append(f"{name} {path}")
            break
        looked.append(f"{name} not {'given' if name == '--data' else 'set'}")
    if not directory.is_dir():
        problem = f"{directory} is not a directory"
    elif len(missing) == len(FILES):
        problem = f"{directory} holds none of the four IDX files"
    else:
        problem = f"{directory} lacks {', '.join(m + '[.gz]' for m in missing)}"
    raise DataError(
        f"no MNIST data: {problem} (looked at: {'; '.join(looked)}); "
        + HOW_TO_GET.format(dir=directory)
    )


# ---------------------------------------------------------------------------------------------
# Fetching


def md5(data: bytes) -> str:
    """Hex MD5 of `data` (an integrity check against the published values, not security)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _download(url: str, size: int, timeout: float) -> bytes:
    """At most `size + 1` bytes from `url`, so a wrong page is refused without reading it all."""
    request = urllib.request.Request(url, headers={"User-Agent": f"chaosgen/{__version__}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read(size + 1)


def fetch(
    directory: str | Path,
    mirrors: Sequence[str] | None = None,
    timeout: float = 30.0,
    log: Callable[[str], None] | None = None,
    files: tuple[tuple[str, int, str], ...] = FILES,
) -> list[Path]:
    """Download the four gzipped IDX files into `directory`, checked by size and MD5.

    Mirrors are tried in order for each file; a download with the wrong size or checksum is
    refused (never written) and the next mirror tried. A file already present with the right
    checksum is kept. Each file is written atomically. Returns the four paths.
    """
    directory = Path(directory)
    mirrors = tuple(mirrors) if mirrors else MIRRORS
    say = log or (lambda _: None)
    paths = []
    for name, size, digest in files:
        path = directory / name
        paths.append(path)
        if path.is_file() and md5(path.read_bytes()) == digest:
            say(f"{name}: present, checksum ok")
            continue
        failures = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + name
            try:
                data = _download(url, size, timeout)
            except urllib.error.HTTPError as e:
                failures.append(f"{url}: HTTP {e.code} {e.reason}")
                continue
            except urllib.error.URLError as e:
                failures.append(f"{url}: {e.reason}")
                continue
            except (OSError, ValueError) as e:  # timeouts, resets, malformed URLs
                failures.append(f"{url}: {e}")
                continue
            if len(data) != size:
                failures.append(f"{url}: refused, wrong size ({len(data)} bytes, expected {size})")
                continue
            if (got := md5(data)) != digest:
                failures.append(f"{url}: refused, bad MD5 {got} (expected {digest})")
                continue
            try:
                atomic_write(path, data)
                path.chmod(0o644)  # public data; mkstemp's 0600 would hide it from other users
            except OSError as e:
                raise DataError(f"{path}: cannot write ({e.strerror or e})") from None
            say(f"{name}: {size:,} bytes from {url}, MD5 ok")
            break
        else:
            raise DataError(f"could not fetch {name}: " + "; ".join(failures))
    return paths


# Other data sets: (file, bytes, md5) of the canonical files and where to get them. Fashion-MNIST:
# torchvision's MD5s and Keras' sizes; CIFAR-10: the binary archive on the authors' page.
FASHION_FILES: tuple[tuple[str, int, str], ...] = (
    ("train-images-idx3-ubyte.gz", 26421880, "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    ("train-labels-idx1-ubyte.gz", 29515, "25c81989df183df01b3e8a0aad5dffbe"),
    ("t10k-images-idx3-ubyte.gz", 4422102, "bef4ecab320f06d8554ea6380940ec79"),
    ("t10k-labels-idx1-ubyte.gz", 5148, "bb300cfdad3c16e7a12a480ee83cd310"),
)
CIFAR10_FILES: tuple[tuple[str, int, str], ...] = (
    ("cifar-10-binary.tar.gz", 170052171, "c32a1d4ab5d03f1284b67883e8d87530"),
)
CIFAR10_MEMBERS = (
    *(f"data_batch_{k}.bin" for k in range(1, 6)),
    "test_batch.bin",
    "batches.meta.txt",
)
FETCHABLE: dict[str, tuple[tuple[tuple[str, int, str], ...], tuple[str, ...]]] = {
    "mnist": (FILES, MIRRORS),
    "fashion-mnist": (
        FASHION_FILES,
        (
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
    ),
    "cifar10": (CIFAR10_FILES, ("https://www.cs.toronto.edu/~kriz/",)),
}


def fetch_dataset(
    name: str,
    directory: str | Path,
    mirrors: Sequence[str] | None = None,
    timeout: float = 30.0,
    log: Callable[[str], None] | None = None,
    files: tuple[tuple[str, int, str], ...] | None = None,
) -> list[Path]:
    """`fetch` for `name` (mnist, fashion-mnist, cifar10); CIFAR-10's checked archive is then
    unpacked: only its six batches and batches.meta.txt, each written atomically beside it.
    `files` replaces the canonical table (tests)."""
    table, default_mirrors = FETCHABLE[name]
    paths = fetch(directory, mirrors or default_mirrors, timeout, log, files or table)
    if name != "cifar10":
        return paths
    import tarfile

    directory = Path(directory)
    out = []
    try:
        with tarfile.open(paths[0], "r:gz") as tar:
            for member in CIFAR10_MEMBERS:
                try:
                    info = tar.getmember(f"cifar-10-batches-bin/{member}")
                except KeyError:
                    what = f"no cifar-10-batches-bin/{member} in it"
                    raise DataError(f"{paths[0]}: {what}") from None
                f = tar.extractfile(info) if info.isfile() else None
                if f is None:
                    raise DataError(f"{paths[0]}: {info.name} is not a regular file")
                atomic_write(directory / member, f.read())
                (directory / member).chmod(0o644)
                out.append(directory / member)
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise DataError(f"{paths[0]}: corrupt archive ({e})") from None
    (log or (lambda _: None))(f"unpacked {len(out)} files into {directory}")
    return out


# ---------------------------------------------------------------------------------------------
# Command line


def add_parser(sub) -> None:
    """`chaosgen data fetch`, `chaosgen data info` and `chaosgen data convert`."""
    from ..options import bounded

    p = sub.add_parser("data", help="get a data set, or show what a data directory holds")
    data_sub = p.add_subparsers(dest="data_command", metavar="{fetch,info,convert,shapes3d}",
                                required=True)
    f = data_sub.add_parser("fetch", help="download MNIST, Fashion-MNIST or CIFAR-10, checked")
    f.add_argument("dataset", nargs="?", choices=tuple(FETCHABLE), default="mnist")
    f.add_argument(
        "--dir",
        default=None,
        help="where to put them (default $CHAOSGEN_DATA, else ~/.cache/chaosgen/mnist)",
    )
    f.add_argument(
        "--mirror",
        action="append",
        metavar="URL",
        help="base URL to download from instead of the public mirrors (repeat to try several in "
        "order; file:// works)",
    )
    f.add_argument(
        "--timeout",
        type=bounded(float, 0, 3600, low_open=True),
        default=30.0,
        help="seconds per request (default 30)",
    )
    f.set_defaults(func=cmd_fetch)
    i = data_sub.add_parser("info", help="format, shapes, classes, counts and checksums")
    i.add_argument("dir", nargs="?", default=None, help="data directory or .npz file")
    i.add_argument("--data", default=None, help="the same (default $CHAOSGEN_DATA)")
    i.add_argument("--dataset", default=None, help="its format (default: recognised)")
    i.set_defaults(func=cmd_info)
    from .convert import cmd_convert

    c = data_sub.add_parser(
        "convert", help="write any data set as the IDX files the native program reads"
    )
    c.add_argument("source", help="data directory or .npz file (any format `train` reads)")
    c.add_argument("--out", required=True, help="directory for the four .idx files")
    c.add_argument("--dataset", default=None, help="its format (default: recognised)")
    c.set_defaults(func=cmd_convert)
    from .synthetic import add_parser

    add_parser(data_sub)


def cmd_fetch(args: argparse.Namespace) -> int:
    """Download into --dir (or $CHAOSGEN_DATA, or the default) and say what happened."""
    directory = _given(args.dir, "--dir") if args.dir else data_source(None)[1]
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    fetch_dataset(args.dataset, directory, args.mirror, args.timeout, log)
    print(f"{args.dataset} is in {directory}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Print where the data is, its format, shapes, classes, counts and checksums."""
    from .sets import load, open_data

    arg = args.dir or args.data
    h = open_data(arg, args.dataset)
    d = load(h)
    print(f"data: {h.source} (from {data_source(arg)[0]}), {h.name}, format {h.format}")
    canonical = {n: m for n, _, m in FETCHABLE.get(h.name, ((), ()))[0]}
    for path in h.files:
        digest = md5(path.read_bytes())
        check = {True: "MD5 ok", False: "MD5 differs from canonical", None: "MD5"}[
            digest == canonical[path.name] if path.name in canonical else None
        ]
        print(f"  {path.name}: {path.stat().st_size:,} bytes, {check} {digest}")
    for split, images in (("train", d.train_images), ("test", d.test_images)):
        lo, hi = float(images.min(initial=0)), float(images.max(initial=0))
        shape = "x".join(map(str, images.shape[1:]))
        print(f"{split}: {len(images)} images {shape} float32, pixels in [{lo:g}, {hi:g}]")
    k = len(h.classes)
    print(f"classes ({k}): " + ", ".join(h.classes[:20]) + (" ..." if k > 20 else ""))
    if k <= 20:
        print("label " + " ".join(f"{c:>5}" for c in range(k)))
        for split, labels in (("train", d.train_labels), ("test", d.test_labels)):
            counts = np.bincount(labels, minlength=k)
            print(f"{split:<5} " + " ".join(f"{c:>5}" for c in counts))
    return 0
