"""Fitting a data set to a network's input (sizes, channels, classes) and the input's
normalisation, applied once while the images are copied into the runtime's native layout.

Checked from a `Header` before anything is compiled or read whole (`check_fit`); applied by
`place` (one pass, into the aligned rows the native runtime reads). See docs/data.md.
"""

from __future__ import annotations

import numpy as np

from .. import ir
from ..errors import DataError

FITS = ("pad", "center", "crop")


def choose_fit(have: tuple[int, ...], want: tuple[int, ...], fit: str | None) -> str | None:
    """The fitting that takes `have` (H, W) images, or (D, H, W) volumes, to `want`: None when
    they are equal; `fit` if it can; without `fit`, 'pad' for smaller images (the CHAOS paper's
    28x28 MNIST into 29x29: zeros at the bottom and right). Errors: DataError saying what to
    give instead."""
    if have == want:
        return None
    hs, ws = "x".join(map(str, have)), "x".join(map(str, want))
    if len(have) != len(want):
        kind = {2: "planes (H x W)", 3: "volumes (D x H x W)"}
        raise DataError(
            f"the data's images are {hs}, {kind.get(len(have), f'{len(have)} axes')}, but the "
            f"network takes {ws}, {kind.get(len(want))}; give data of the input's shape"
        )
    smaller = all(h <= w for h, w in zip(have, want, strict=True))
    larger = all(h >= w for h, w in zip(have, want, strict=True))
    if fit is None:
        if smaller:
            return "pad"
        fix = "--fit crop (centre crop)" if larger else f"images of {ws}"
        raise DataError(f"the data's images are {hs}, larger than the network's {ws}; use {fix}")
    if fit in ("pad", "center") and not smaller:
        raise DataError(
            f"--fit {fit}: the data's images ({hs}) are not smaller than the network's ({ws}); "
            + ("use --fit crop" if larger else "no fitting takes one to the other")
        )
    if fit == "crop" and not larger:
        raise DataError(
            f"--fit crop: the data's images ({hs}) are not larger than the network's ({ws}); "
            + ("use --fit pad or --fit center" if smaller else "no fitting takes one to the other")
        )
    return fit


def check_fit(
    shape: tuple[int, ...], classes: int, exact: bool, net: ir.Net, fit: str | None
) -> str | None:
    """Check data of image `shape` (C, H, W), or (C, D, H, W), and `classes` against `net`
    before any work; returns the fitting to use. `exact`: the format names its classes (MNIST,
    CIFAR-10: the output must have as many), else (npz) the output needs at least as many.
    Errors: one-line DataError with what the data has, what the network takes, and the fix."""
    s, out = net.input, net.output.out_shape.maps
    if shape[0] != s.maps:
        raise DataError(
            f"the data has {shape[0]} channel{'s' * (shape[0] != 1)} ({'x'.join(map(str, shape))}"
            f"), network {net.name} takes {s.maps} ({s}); write `input maps={shape[0]}` in the "
            "spec, or use data with as many channels"
        )
    if classes > out or (exact and classes != out):
        raise DataError(
            f"the data has {classes} classes, network {net.name} has {out} outputs; write "
            f"`output classes={classes}` in the spec"
        )
    return choose_fit(tuple(shape[1:]), s.dims, fit)


def place(x: np.ndarray, out: np.ndarray, fit: str | None) -> None:
    """Copy images `x` (N, C, h, w) into `out` (N, C, H, W, zero-filled) by `fit`: 'pad' at the
    top left (zeros below and right), 'center' in the middle (an odd margin's extra row or
    column below/right), 'crop' the middle H x W (as torchvision's CenterCrop). Volumes
    (N, C, d, h, w) likewise along every axis."""
    have, want = x.shape[2:], out.shape[2:]
    if fit is None or fit == "pad":
        out[(..., *(slice(0, h) for h in have))] = x
    elif fit == "center":
        starts = [(w - h) // 2 for h, w in zip(have, want, strict=True)]
        out[(..., *(slice(s, s + h) for s, h in zip(starts, have, strict=True)))] = x
    else:
        starts = [(h - w) // 2 for h, w in zip(have, want, strict=True)]
        out[:] = x[(..., *(slice(s, s + w) for s, w in zip(starts, want, strict=True)))]


def normalise(out: np.ndarray, norm: ir.Normalization | None) -> None:
    """In place, per channel: x <- (x - mean) / std * scale (out is (N, C, H, W))."""
    if norm is None:
        return
    c = out.shape[1]
    mean = np.broadcast_to(np.asarray(norm.mean, np.float32), (c,))
    factor = np.broadcast_to(np.float32(norm.scale) / np.asarray(norm.std, np.float32), (c,))
    for k in range(c):  # per channel: no temporary the size of the whole set
        out[:, k] -= mean[k]
        out[:, k] *= factor[k]
