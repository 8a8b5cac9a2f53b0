"""`chaosgen data convert`: any data set chaosgen reads -> the IDX files the standalone native
program reads (docs/data.md, "The standalone program").

The program (templates/main.cpp.j2) reads raw MNIST/Fashion-MNIST IDX files and CIFAR-10 binary
batches itself. CIFAR-10 python batches (pickles) and .npz archives (zip, maybe deflated) would
need a restricted unpickler and zlib in C++, and a Knights Corner card has no Python: they are
converted on the host instead, by the very reader `chaosgen train` uses (chaosgen.data.sets), so
the program and `chaosgen train` see the same images. The output is lossless: images that are
uint8 / 255 (every uint8 format) are stored as uint8, others (a float .npz) as float32.

Files: train-images.idx, train-labels.idx, test-images.idx, test-labels.idx. IDX as MNIST's
(big-endian: two zero bytes, a type byte, the number of dimensions, each size as uint32, the
data), images (N, C, H, W) of type 0x08 (uint8) or 0x0D (float32), labels (N,) of type 0x08
(uint8) or 0x0C (int32) when a label exceeds 255. A data set without a test split gets test
files of 0 images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..build import atomic_write
from ..errors import DataError

NAMES = ("train-images.idx", "train-labels.idx", "test-images.idx", "test-labels.idx")
IDX_TYPES = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}


def idx_bytes(a: np.ndarray) -> bytes:
    """An array of uint8, big-endian int32 or float32 as an IDX file."""
    head = bytes([0, 0, IDX_TYPES[a.dtype], a.ndim])
    return head + b"".join(int(d).to_bytes(4, "big") for d in a.shape) + a.tobytes()


def stored_images(x: np.ndarray) -> np.ndarray:
    """float32 images as loaded -> uint8 if they are exactly v / 255 (chaosgen.data.sets scales
    uint8 so), else big-endian float32: nothing is lost either way."""
    from .sets import _scaled

    u8 = np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)
    if np.array_equal(_scaled(u8), x):
        return u8
    return x.astype(">f4")


def stored_labels(y: np.ndarray) -> np.ndarray:
    return y.astype(np.uint8) if y.size == 0 or y.max() < 256 else y.astype(">i4")


def convert(source: str | Path, out: str | Path, dataset: str | None = None) -> list[str]:
    """Read `source` (chaosgen.data.sets.load_dataset) and write the four files into `out`,
    each atomically. Returns a line per file. Errors: DataError (the reader's, or `out`)."""
    from .sets import load_dataset

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: exists and is not a directory")
    d = load_dataset(source, dataset)
    if d.train_images.ndim == 5:  # the program reads and fits 2D images (templates/main.cpp.j2)
        raise DataError(
            f"{d.source}: volumes {'x'.join(map(str, d.train_images.shape[1:]))}: the native "
            f"program reads 2D images only; train a 3D network with `chaosgen train SPEC --data "
            f"{d.source}`"
        )
    arrays = (
        stored_images(d.train_images),
        stored_labels(d.train_labels),
        stored_images(d.test_images),
        stored_labels(d.test_labels),
    )
    lines = []
    for name, a in zip(NAMES, arrays, strict=True):
        try:
            atomic_write(out / name, idx_bytes(a))
        except OSError as e:
            raise DataError(f"{out / name}: cannot write ({e.strerror or e})") from None
        kind = {0x08: "uint8", 0x0C: "int32", 0x0D: "float32"}[IDX_TYPES[a.dtype]]
        lines.append(f"  {name}: {'x'.join(map(str, a.shape))} {kind}")
    return [f"{d.name} ({d.format}) from {d.source} -> {out}", *lines]


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert and say what was written."""
    for line in convert(args.source, args.out, args.dataset):
        print(line)
    print(f"the native program reads it: --data {args.out} (or DATA={args.out} ./run.sh)")
    return 0
