"""Weight files at the interop boundary: in, a chaosgen checkpoint or an .npz keyed like
`Net.get_weights()` (chaosgen.loader.read_weights, which Net.load uses too); out, the latter
("<layer>.weight" / "<layer>.bias", float32, PyTorch layouts), written atomically."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..build import atomic_write
from ..loader import read_weights

__all__ = ["read_weights", "write_weights"]


def write_weights(path: str | Path, weights: dict[str, np.ndarray]) -> None:
    """An .npz of float32 arrays under their keys, written atomically."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v, np.float32) for k, v in weights.items()})
    atomic_write(Path(path), buf.getvalue())
