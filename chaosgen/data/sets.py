"""Any image data set behind one function: MNIST and Fashion-MNIST IDX files, CIFAR-10 binary and
python batches, NumPy .npz arrays -> a `Dataset` of float32 (N, C, H, W) images in [0, 1] (an
.npz may also hold volumes, (N, C, D, H, W)).

The format is recognised from the files' own bytes and structure (`probe`), or named by
`--dataset`; `probe` reads headers only (IDX headers, file sizes, the .npz members' array headers),
so a data set that cannot fit the network is refused before anything is compiled or read whole.
Every problem is a DataError naming the file and what is wrong. See docs/data.md.
"""

from __future__ import annotations

import gzip
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from . import (
    GZIP_MAGIC,
    IMAGES_MAGIC,
    _file,
    _missing,
    _not_a_file,
    read_images,
    read_labels,
)

DATASETS = ("mnist", "fashion-mnist", "cifar10", "npz")
DIGITS = tuple(str(k) for k in range(10))
FASHION = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
CIFAR10 = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
# The canonical Fashion-MNIST label files (torchvision's MD5s): how IDX files say which set
# they are (the IDX header is the same for both).
FASHION_LABEL_MD5 = {"25c81989df183df01b3e8a0aad5dffbe", "bb300cfdad3c16e7a12a480ee83cd310"}
CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then the red, green and blue planes
CIFAR_TRAIN = tuple(f"data_batch_{k}" for k in range(1, 6))
CIFAR_TEST = "test_batch"
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = 0x80  # the PROTO opcode that starts every pickle of protocol 2 or later
MAX_NPZ_BYTES = 1 << 34  # 16 GiB: a header promising more is refused before reading


@dataclass(frozen=True, slots=True)
class Header:
    """What `probe` learns without reading the images: format, image shape (C, H, W), counts
    (None where only a full read tells), class names, and the files."""

    name: str  # mnist | fashion-mnist | cifar10 | npz
    format: str  # idx | cifar10-binary | cifar10-python | npz
    source: Path
    shape: tuple[int, int, int]
    train: int | None
    test: int | None
    classes: tuple[str, ...]
    files: tuple[Path, ...]


@dataclass(frozen=True, slots=True)
class Dataset:
    """Images float32 (N, C, H, W) in [0, 1] (uint8 / 255) or as stored (float .npz), labels
    int32 in 0..classes-1; the test split may hold 0 images (an .npz without x_test)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]
    source: Path
    format: str
    name: str


def probe(path: str | Path, dataset: str | None = None) -> Header:
    """Recognise the data set at `path` (a directory, or an .npz file) from its bytes, or read it
    as `dataset`; headers only. Errors: DataError saying what was looked for."""
    path = Path(path)
    if dataset is not None and dataset not in DATASETS:
        raise DataError(f"unknown dataset '{dataset}'; expected one of {', '.join(DATASETS)}")
    if path.is_dir():
        for sub in ("cifar-10-batches-bin", "cifar-10-batches-py"):
            if (path / sub).is_dir() and not _any_known(path):
                path = path / sub
                break
    elif not path.exists():
        raise DataError(f"{path}: no such file or directory")
    kind = dataset or _detect(path)
    if kind in ("mnist", "fashion-mnist"):
        return _probe_idx(path, kind if dataset else None)
    if kind == "cifar10":
        return _probe_cifar(path)
    return _probe_npz(_npz_file(path))


def load(header: Header) -> Dataset:
    """Read a probed data set whole: images scaled to float32 [0, 1], labels checked."""
    return _READERS[header.format](header)


def load_dataset(path: str | Path, dataset: str | None = None) -> Dataset:
    """`load(probe(path, dataset))`."""
    return load(probe(path, dataset))


# --- detection --------------------------------------------------------------------------------
def _head(path: Path, n: int = 8) -> bytes:
    """The first `n` bytes of a file (of its gzip stream if gzipped), b'' if unreadable."""
    try:
        with open(path, "rb") as raw:
            start = raw.read(n)
            if start[:2] == GZIP_MAGIC:
                raw.seek(0)
                with gzip.GzipFile(fileobj=raw) as f:
                    return f.read(n)
            return start
    except (OSError, EOFError):
        return b""


def _any_known(directory: Path) -> bool:
    names = ("train-images-idx3-ubyte.gz", "data_batch_1.bin", "data_batch_1")
    return any(_file(directory, n) for n in names) or any(directory.glob("*.npz"))


def _detect(path: Path) -> str:
    """The data set kind at `path`, from the files' bytes (the names only say where to look)."""
    if path.is_file():
        if _head(path, 4) == ZIP_MAGIC:
            return "npz"
        raise DataError(
            f"{path}: not a data set file (only .npz archives are read as one file; give the "
            "directory of MNIST/Fashion-MNIST IDX or CIFAR-10 batches)"
        )
    found = []
    img = _file(path, "train-images-idx3-ubyte.gz")
    if img is not None and _head(img, 4) == IMAGES_MAGIC.to_bytes(4, "big"):
        found.append("mnist")
    for name in ("data_batch_1.bin", "data_batch_1"):
        f = path / name
        if f.is_file():
            head = _head(f, 1)
            if head and head[0] == PICKLE_PROTO:
                found.append("cifar10")
            elif head and f.stat().st_size % CIFAR_RECORD == 0 and head[0] < 10:
                found.append("cifar10")
    if len(list(path.glob("*.npz"))) == 1:
        found.append("npz")
    if not found:  # files of the right names but wrong bytes: their reader says what is wrong
        if img is not None:
            found.append("mnist")
        elif (path / "data_batch_1.bin").exists() or (path / "data_batch_1").exists():
            found.append("cifar10")
    if len(set(found)) == 1:
        return found[0]
    if found:
        raise DataError(
            f"{path} holds more than one data set ({', '.join(sorted(set(found)))}); "
            "choose with --dataset"
        )
    raise DataError(
        f"no data set recognised in {path}: expected MNIST/Fashion-MNIST IDX files "
        "(train-images-idx3-ubyte[.gz] ...), CIFAR-10 batches (data_batch_1.bin ... or the "
        "python data_batch_1 ...) or one .npz file; `chaosgen data fetch mnist|cifar10|"
        f"fashion-mnist --dir {path}` gets one"
    )


# --- IDX (MNIST, Fashion-MNIST) ---------------------------------------------------------------
def _idx_dims(path: Path) -> tuple[int, ...]:
    """The dimensions in an IDX image file's header (the body is not read)."""
    if (problem := _not_a_file(path)) is not None:
        raise DataError(f"{path}: {problem}")
    blob = _head(path, 16)
    if len(blob) < 16 or int.from_bytes(blob[:4], "big") != IMAGES_MAGIC:
        read_images(path)  # its reader's precise message (corrupt gzip, truncated header...)
        raise DataError(f"{path}: not an IDX image file (magic 2051 and three sizes expected)")
    return tuple(int.from_bytes(blob[i : i + 4], "big") for i in (4, 8, 12))


def _probe_idx(path: Path, named: str | None) -> Header:
    if not path.is_dir():
        raise DataError(f"{path}: MNIST-style data is a directory of four IDX files")
    missing = _missing(path)
    if missing:
        raise DataError(
            f"no IDX data in {path}: missing {', '.join(m + '[.gz]' for m in missing)}"
        )
    paths = [_file(path, n) for n in _IDX_NAMES]
    assert all(p is not None for p in paths)
    files = tuple(p for p in paths if p is not None)
    n_tr, h, w = _idx_dims(files[0])
    n_te, h2, w2 = _idx_dims(files[2])
    if (h2, w2) != (h, w):
        raise DataError(f"{files[2]}: images are {h2}x{w2}, the training images {h}x{w}")
    name = named or _idx_name(files[1])
    classes = FASHION if name == "fashion-mnist" else DIGITS
    return Header(name, "idx", path, (1, h, w), n_tr, n_te, classes, files)


_IDX_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def _idx_name(labels: Path) -> str:
    """fashion-mnist if the training labels are Fashion-MNIST's canonical file, else mnist."""
    from . import md5

    if labels.suffix == ".gz" and labels.stat().st_size < (1 << 20):
        if md5(labels.read_bytes()) in FASHION_LABEL_MD5:
            return "fashion-mnist"
    return "mnist"


def _scaled(images: np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W) -> float32 / 255, exactly as chaosgen always scaled MNIST."""
    out = np.empty(images.shape, np.float32)
    np.divide(images, np.float32(255), out=out)
    return out


def _read_idx_set(h: Header) -> Dataset:
    split = []
    for ipath, lpath in (h.files[:2], h.files[2:]):
        images, labels = read_images(ipath), read_labels(lpath)
        if len(images) != len(labels):
            raise DataError(
                f"{ipath} holds {len(images)} images but {lpath.name} holds {len(labels)} labels"
            )
        if len(images) == 0:
            raise DataError(f"{ipath}: holds no images (its header says 0)")
        split += [_scaled(images[:, None]), labels.astype(np.int32)]
    return Dataset(*split, classes=h.classes, source=h.source, format=h.format, name=h.name)


# --- CIFAR-10 ---------------------------------------------------------------------------------
def _probe_cifar(path: Path) -> Header:
    if not path.is_dir():
        raise DataError(f"{path}: CIFAR-10 is a directory of batches (data_batch_1.bin ...)")
    binary = [path / f"{n}.bin" for n in (*CIFAR_TRAIN, CIFAR_TEST)]
    python = [path / n for n in (*CIFAR_TRAIN, CIFAR_TEST)]
    files = binary if any(f.exists() for f in binary) else python
    fmt = "cifar10-binary" if files is binary else "cifar10-python"
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise DataError(f"CIFAR-10 in {path} lacks {', '.join(missing)}")
    for f in files:
        if (problem := _not_a_file(f)) is not None:
            raise DataError(f"{f}: {problem.replace('an IDX file', 'a CIFAR-10 batch')}")
    counts: list[int | None] = [None, None]
    if fmt == "cifar10-binary":
        sizes = [f.stat().st_size for f in files]
        for f, size in zip(files, sizes, strict=True):
            if size == 0 or size % CIFAR_RECORD:
                raise DataError(
                    f"{f}: {size} bytes is not a whole number of {CIFAR_RECORD}-byte records "
                    "(1 label byte + 3x32x32 pixels); truncated or not a CIFAR-10 binary batch"
                )
        counts = [sum(sizes[:5]) // CIFAR_RECORD, sizes[5] // CIFAR_RECORD]
    classes = _cifar_classes(path, fmt)
    return Header("cifar10", fmt, path, (3, 32, 32), *counts, classes, tuple(files))


def _cifar_classes(path: Path, fmt: str) -> tuple[str, ...]:
    """The class names from batches.meta.txt (binary) when present and sane, else CIFAR-10's."""
    meta = path / "batches.meta.txt"
    if fmt == "cifar10-binary" and meta.is_file() and meta.stat().st_size < 4096:
        names = tuple(n.strip() for n in meta.read_text("latin-1").splitlines() if n.strip())
        if len(names) == 10:
            return names
    return CIFAR10


def _cifar_labels_checked(f: Path, labels: np.ndarray, record: bool) -> None:
    if labels.size and labels.max() > 9:
        i = int(np.argmax(labels > 9))
        where = f"record {i} (byte {i * CIFAR_RECORD})" if record else f"index {i}"
        raise DataError(f"{f}: label {labels[i]} at {where}; CIFAR-10 labels are 0..9")


def _read_cifar_binary(h: Header) -> Dataset:
    parts = []
    for f in h.files:
        try:
            raw = np.fromfile(f, np.uint8)
        except OSError as e:
            raise DataError(f"{f}: cannot read ({e.strerror or e})") from None
        if raw.size == 0 or raw.size % CIFAR_RECORD:
            raise DataError(f"{f}: {raw.size} bytes is not a whole number of {CIFAR_RECORD}-byte "
                            "records; truncated or not a CIFAR-10 binary batch")  # fmt: skip
        rec = raw.reshape(-1, CIFAR_RECORD)
        _cifar_labels_checked(f, rec[:, 0], record=True)
        parts.append((rec[:, 1:].reshape(-1, 3, 32, 32), rec[:, 0]))
    return _cifar_dataset(h, parts)


def _read_cifar_python(h: Header) -> Dataset:
    from .safepickle import load as safe_load

    parts = []
    for f in h.files:
        try:
            blob = f.read_bytes()
        except OSError as e:
            raise DataError(f"{f}: cannot read ({e.strerror or e})") from None
        if not blob or blob[0] != PICKLE_PROTO:
            raise DataError(f"{f}: not a CIFAR-10 python batch (not a pickle of protocol >= 2)")
        d = safe_load(f, blob)
        if not isinstance(d, dict):
            raise DataError(f"{f}: holds a {type(d).__name__}, expected a dict (data, labels)")
        d = {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in d.items()}
        data, labels = d.get("data"), d.get("labels")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
                or data.shape[1] != 3072:  # fmt: skip
            what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data)
            raise DataError(f"{f}: 'data' is {what}, expected a uint8 array (N, 3072)")
        if not isinstance(labels, list) or not all(type(v) is int for v in labels):
            raise DataError(f"{f}: 'labels' is not a list of integers")
        if len(labels) != len(data):
            raise DataError(f"{f}: {len(data)} images but {len(labels)} labels")
        lab = np.array(labels, np.int64)
        if lab.size and lab.min() < 0:
            raise DataError(f"{f}: label {lab.min()}; CIFAR-10 labels are 0..9")
        _cifar_labels_checked(f, lab, record=False)
        parts.append((data.reshape(-1, 3, 32, 32), lab))
    return _cifar_dataset(h, parts)


def _cifar_dataset(h: Header, parts: list[tuple[np.ndarray, np.ndarray]]) -> Dataset:
    train_x = np.concatenate([p[0] for p in parts[:5]])
    train_y = np.concatenate([p[1] for p in parts[:5]]).astype(np.int32)
    test_x, test_y = parts[5]
    return Dataset(_scaled(train_x), train_y, _scaled(test_x), test_y.astype(np.int32),
                   classes=h.classes, source=h.source, format=h.format, name=h.name)  # fmt: skip


# --- NumPy .npz ---------------------------------------------------------------------------------
def _npz_file(path: Path) -> Path:
    if path.is_dir():
        found = sorted(path.glob("*.npz"))
        if len(found) != 1:
            raise DataError(f"{path}: holds {len(found)} .npz files; give the file with --data")
        return found[0]
    return path


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{member: (shape, dtype)} of the arrays of an .npz, from their .npy headers only."""
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = {(1, 0): np.lib.format.read_array_header_1_0,
                            (2, 0): np.lib.format.read_array_header_2_0}.get(version)  # fmt: skip
                    if read is None:
                        raise ValueError(f"unsupported .npy version {version}")
                    shape, _, dtype = read(f)
                out[info.filename.removesuffix(".npy")] = (shape, dtype)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz archive ({e})") from None
    return out


def _probe_npz(path: Path) -> Header:
    if (problem := _not_a_file(path)) is not None:
        raise DataError(f"{path}: {problem.replace('an IDX file', 'an .npz file')}")
    heads = _npz_headers(path)
    for key in ("x_train", "y_train"):
        if key not in heads:
            raise DataError(f"{path}: no array '{key}' (it holds: {', '.join(heads) or 'none'})")
    if ("x_test" in heads) != ("y_test" in heads):
        raise DataError(f"{path}: x_test and y_test come together (one is missing)")
    shape = None
    counts = []
    for split in ("train", "test"):
        if f"x_{split}" not in heads:
            counts.append(0)
            continue
        (xs, xd), (ys, yd) = heads[f"x_{split}"], heads[f"y_{split}"]
        if xd.kind not in "uf" or (xd.kind == "u" and xd != np.uint8) or len(xs) not in (3, 4, 5):
            raise DataError(
                f"{path}: x_{split} is {xd} of shape {xs}; expected uint8 or float images "
                "(N, C, H, W) or (N, H, W), or volumes (N, C, D, H, W)"
            )
        chw = tuple(xs[1:]) if len(xs) >= 4 else (1, *xs[1:])
        if min(xs) < 1 or math.prod(xs) * xd.itemsize > MAX_NPZ_BYTES:
            raise DataError(f"{path}: x_{split} of shape {xs} is empty or too large")
        if shape is not None and chw != shape:
            raise DataError(f"{path}: x_test images are {chw}, x_train's {shape}")
        shape = chw
        if yd.kind not in "iu" or len(ys) != 1:
            raise DataError(f"{path}: y_{split} is {yd} of shape {ys}; expected integers (N,)")
        if ys[0] != xs[0]:
            raise DataError(f"{path}: x_{split} holds {xs[0]} images but y_{split} {ys[0]} labels")
        counts.append(xs[0])
    assert shape is not None
    top = max(int(_npz_labels(path, k).max(initial=0)) for k in ("y_train", "y_test")
              if k in heads)  # fmt: skip
    classes = tuple(str(k) for k in range(top + 1))
    return Header("npz", "npz", path, shape, counts[0], counts[1], classes, (path,))


def _npz_array(path: Path, key: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            return z[key]
    except ValueError as e:  # an object array (allow_pickle=False), a corrupt member
        raise DataError(f"{path}: array '{key}' cannot be read safely ({e})") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(f"{path}: array '{key}' is corrupt ({e})") from None


def _npz_labels(path: Path, key: str) -> np.ndarray:
    y = _npz_array(path, key)
    if y.size and y.min() < 0:
        i = int(np.argmax(y < 0))
        raise DataError(f"{path}: {key}[{i}] is {y[i]}; labels are 0..classes-1")
    if y.size and y.max() >= 1 << 16:
        raise DataError(f"{path}: {key} holds label {y.max()}; at most 65535 classes")
    return y


def _read_npz(h: Header) -> Dataset:
    path = h.files[0]
    out = []
    for split in ("train", "test"):
        if h.test == 0 and split == "test":
            out += [np.zeros((0, *h.shape), np.float32), np.zeros(0, np.int32)]
            continue
        x = _npz_array(path, f"x_{split}")
        x = x.reshape(len(x), *h.shape)
        if x.dtype == np.uint8:
            x = _scaled(x)
        else:
            x = x.astype(np.float32)
            if not np.isfinite(x).all():
                i = int(np.argwhere(~np.isfinite(x))[0][0])
                v = x[i][~np.isfinite(x[i])][0]
                raise DataError(
                    f"{path}: x_{split} image {i} holds {v} (NaN/inf, or beyond float32's "
                    "range); images must be finite"
                )
        out += [x, _npz_labels(path, f"y_{split}").astype(np.int32)]
    return Dataset(*out, classes=h.classes, source=path, format=h.format, name=h.name)


_READERS = {
    "idx": _read_idx_set,
    "cifar10-binary": _read_cifar_binary,
    "cifar10-python": _read_cifar_python,
    "npz": _read_npz,
}


def open_data(arg: str | None, dataset: str | None) -> Header:
    """The data set of `--data ARG` (else $CHAOSGEN_DATA, else the default MNIST directory),
    probed; a path that does not exist gets find_data_dir's message (where it looked, how to
    get the data)."""
    from . import data_source, find_data_dir

    _, path = data_source(arg)
    if not path.exists() and dataset in (None, "mnist"):
        find_data_dir(arg)
    return probe(path, dataset)
