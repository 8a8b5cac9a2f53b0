"""`chaosgen data shapes3d`: a synthetic volumetric task, written as an .npz that `chaosgen train
--data` reads. Each volume holds one solid shape in noise: 0 a cube, 1 a ball, 2 a cross (three
orthogonal bars through one centre), at a random place and size; the network must say which.
A stand-in, small enough for one short run, for the volumes ZNN segments (docs/language.md,
"Volumes")."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

from ..build import atomic_write
from ..errors import DataError

CLASSES = ("cube", "ball", "cross")
MIN_SIZE = 10  # voxels per side: room for a shape of radius 3 and its margin


def shapes3d(n: int, size: int, rng: np.random.Generator, noise: float = 0.3
             ) -> tuple[np.ndarray, np.ndarray]:
    """n volumes float32 (n, 1, size, size, size) and their labels int64 (n,), balanced over
    CLASSES in random order: 1 inside the shape, 0 outside, plus Gaussian noise of std `noise`.
    A shape's radius r (half the cube's side, the ball's radius, each bar's half length) is
    drawn from [3, min(size / 4 + 1.5, (size - 3) / 2)]; its centre keeps it a voxel inside
    the volume; the cross's bars are 3 voxels thick. Errors: DataError for size < MIN_SIZE or
    n < 1."""
    if size < MIN_SIZE or n < 1:
        raise DataError(f"shapes3d: need size >= {MIN_SIZE} and n >= 1, found {size} and {n}")
    labels = rng.permutation(np.arange(n) % len(CLASSES))
    x = rng.normal(0.0, noise, (n, 1, size, size, size)).astype(np.float32)
    z, r_, c = np.meshgrid(*[np.arange(size)] * 3, indexing="ij")
    for k, label in enumerate(labels):
        r = rng.uniform(3.0, min(size / 4 + 1.5, (size - 3) / 2))
        centre = rng.uniform(r + 1, size - r - 2, 3)
        d = [np.abs(a - m) for a, m in zip((z, r_, c), centre, strict=True)]
        if label == 0:
            inside = np.maximum(np.maximum(d[0], d[1]), d[2]) <= r
        elif label == 1:
            inside = d[0] ** 2 + d[1] ** 2 + d[2] ** 2 <= r * r
        else:
            bar = [(d[a] <= r) & (d[(a + 1) % 3] <= 1) & (d[(a + 2) % 3] <= 1) for a in range(3)]
            inside = bar[0] | bar[1] | bar[2]
        x[k, 0][inside] += 1.0
    return x, labels.astype(np.int64)


def write_shapes3d(out: Path, size: int, train: int, test: int, seed: int,
                   noise: float) -> None:
    """x_train, y_train, x_test, y_test of shapes3d into `out` (written atomically)."""
    rng = np.random.default_rng(seed)
    x_tr, y_tr = shapes3d(train, size, rng, noise)
    x_te, y_te = shapes3d(test, size, rng, noise)
    buf = io.BytesIO()
    np.savez(buf, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    try:
        atomic_write(out, buf.getvalue())
    except OSError as e:
        raise DataError(f"cannot write {out}: {e.strerror or e}") from None


def add_parser(data_sub) -> None:
    """`chaosgen data shapes3d` under `chaosgen data`."""
    p = data_sub.add_parser("shapes3d", help="write a synthetic volumetric task (cube, ball, "
                                             "cross in noise) as an .npz")
    p.add_argument("--out", required=True, help="the .npz file to write")
    p.add_argument("--size", type=int, default=18, help="voxels per side (default 18)")
    p.add_argument("--train", type=int, default=1500, help="training volumes (default 1500)")
    p.add_argument("--test", type=int, default=300, help="test volumes (default 300)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--noise", type=float, default=0.3, help="std of the noise (default 0.3)")
    p.set_defaults(func=cmd_shapes3d)


def cmd_shapes3d(args: argparse.Namespace) -> int:
    """Write the data set and say where."""
    write_shapes3d(Path(args.out), args.size, args.train, args.test, args.seed, args.noise)
    print(f"{args.out}: {args.train} training and {args.test} test volumes "
          f"{args.size}x{args.size}x{args.size} of {', '.join(CLASSES)}")
    return 0
