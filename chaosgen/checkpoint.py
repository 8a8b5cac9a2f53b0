"""Checkpoints: one .npz per run state, written atomically, refused when from another network."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import ir
from .build import atomic_write
from .errors import ChaosgenError


@dataclass
class Checkpoint:
    """Weights (the flat parameter array) and where training stood."""

    params: np.ndarray  # float32, n_params (PyTorch layouts at the IR's offsets)
    epoch: int  # epochs completed
    eta: float  # learning rate for the next epoch
    ir_hash: str
    net: str
    rng: dict | None = None  # numpy bit-generator state for the next shuffle
    partial: bool = False  # written on an interrupt, in the middle of epoch `epoch + 1`


def save(path: str | Path, ck: Checkpoint) -> None:
    """Write atomically: a reader sees the previous checkpoint or this one, whole."""
    buf = io.BytesIO()
    np.savez(
        buf,
        params=np.asarray(ck.params, np.float32),
        epoch=np.int64(ck.epoch),
        eta=np.float64(ck.eta),
        ir_hash=np.str_(ck.ir_hash),
        net=np.str_(ck.net),
        rng=np.str_(json.dumps(ck.rng) if ck.rng is not None else ""),
        partial=np.bool_(ck.partial),
    )
    atomic_write(Path(path), buf.getvalue())


def load(path: str | Path, net: ir.Net | None = None) -> Checkpoint:
    """Read a checkpoint; with `net`, refuse one written for a different network."""
    try:
        with np.load(path, allow_pickle=False) as z:
            ck = Checkpoint(
                params=z["params"].astype(np.float32),
                epoch=int(z["epoch"]),
                eta=float(z["eta"]),
                ir_hash=str(z["ir_hash"]),
                net=str(z["net"]),
                rng=json.loads(str(z["rng"])) if str(z["rng"]) else None,
                partial=bool(z["partial"]) if "partial" in z else False,
            )
    except FileNotFoundError:
        raise ChaosgenError(f"checkpoint {path} not found") from None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ChaosgenError(
            f"{path} is not a chaosgen checkpoint ({type(e).__name__}: {e})"
        ) from None
    if net is not None:
        if ck.ir_hash != net.digest():
            raise ChaosgenError(
                f"checkpoint {path} was written for network '{ck.net}' (IR {ck.ir_hash}), "
                f"not for '{net.name}' (IR {net.digest()}); use the spec it was trained with"
            )
        if ck.params.shape != (net.n_params,):
            raise ChaosgenError(
                f"checkpoint {path} has {ck.params.size} parameters, expected {net.n_params}"
            )
    return ck
