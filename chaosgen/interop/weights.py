"""Weight files at the interop boundary: a chaosgen checkpoint or an .npz keyed like
`Net.get_weights()` ("<layer>.weight" / "<layer>.bias", float32, PyTorch layouts) in; the latter
out, written atomically."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from .. import checkpoint, ir
from ..build import atomic_write
from ..errors import ChaosgenError, printable, refuse_special_file
from ..loader import _unflatten, checked_weights


def from_params(net: ir.Net, params: np.ndarray) -> dict[str, np.ndarray]:
    """The flat parameter array (at the IR's offsets) as get_weights() keys and shapes."""
    return _unflatten(net, params)


def read_weights(path: str | Path, net: ir.Net) -> dict[str, np.ndarray]:
    """A checkpoint of `net` (refused when written for another network) or an .npz of exactly
    `net`'s keys and shapes, as float32 arrays; any other file is a one-line ChaosgenError."""
    shown = printable(str(path))
    refuse_special_file(path, "a weights file")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.files)
            if "params" in keys and "ir_hash" in keys:  # a chaosgen checkpoint
                arrays = None
            else:
                arrays = {k: z[k] for k in keys}
    except FileNotFoundError:
        raise ChaosgenError(f"weights file {shown} not found") from None
    except IsADirectoryError:
        raise ChaosgenError(f"{shown} is a directory, not a weights file (.npz)") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ChaosgenError(
            f"{shown} is not a chaosgen checkpoint or an .npz of weights ({type(e).__name__}: {e})"
        ) from None
    if arrays is None:
        return from_params(net, checkpoint.load(path, net).params)
    return checked_weights(net, arrays, f"{shown} (get_weights() keys, or a checkpoint)")


def write_weights(path: str | Path, weights: dict[str, np.ndarray]) -> None:
    """An .npz of float32 arrays under their keys, written atomically."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v, np.float32) for k, v in weights.items()})
    atomic_write(Path(path), buf.getvalue())
