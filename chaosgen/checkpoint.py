"""Checkpoints: one .npz per run state, written atomically, refused when from another network."""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import ir
from .build import atomic_write
from .errors import ChaosgenError, refuse_special_file


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
    records: list[dict] | None = None  # the log's record of every completed epoch (the truth)
    config: dict | None = None  # the run's settings (chaosgen.train.Config as a dict)
    velocity: np.ndarray | None = None  # float32, n_params: momentum's (chaosgen.update)


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
        records=np.str_(json.dumps(ck.records) if ck.records is not None else ""),
        config=np.str_(json.dumps(ck.config) if ck.config is not None else ""),
        **({} if ck.velocity is None else {"velocity": np.asarray(ck.velocity, np.float32)}),
    )
    atomic_write(Path(path), buf.getvalue())


class _Invalid(Exception):
    """A field of a checkpoint file that is missing or holds a wrong value."""


def _field(z, name: str, kind: str, optional: bool = False):
    """One scalar or array of the archive, checked against `kind`."""
    if name not in z.files:
        if optional:
            return None
        raise _Invalid(f"field '{name}' is missing")
    a = z[name]
    if kind == "params":
        if a.dtype != np.float32 or a.ndim != 1:
            raise _Invalid(f"field '{name}' is {a.dtype} of shape {a.shape}, expected float32 1-D")
        if not np.isfinite(a).all():
            raise _Invalid(f"field '{name}' holds {int((~np.isfinite(a)).sum())} NaN/inf values")
        return a
    if a.ndim != 0:
        raise _Invalid(f"field '{name}' has shape {a.shape}, expected a single value")
    checks = {
        "int": (np.issubdtype(a.dtype, np.integer), "an integer"),
        "float": (np.issubdtype(a.dtype, np.floating), "a number"),
        "bool": (a.dtype == np.bool_, "true or false"),
        "str": (a.dtype.kind == "U", "text"),
    }
    ok, want = checks[kind]
    if not ok:
        raise _Invalid(f"field '{name}' is {a.dtype}, expected {want}")
    return a.item()


def _json(z, name: str, kind: type) -> object:
    text = _field(z, name, "str", optional=name != "rng")
    if not text:
        return None
    try:
        v = json.loads(text)
    except ValueError:
        v = None
    if not isinstance(v, kind):
        raise _Invalid(f"field '{name}' is not a JSON {kind.__name__}")
    return v


def _read(path: str | Path) -> Checkpoint:
    with np.load(path, allow_pickle=False) as z:
        ck = Checkpoint(
            params=_field(z, "params", "params"),
            epoch=_field(z, "epoch", "int"),
            eta=_field(z, "eta", "float"),
            ir_hash=_field(z, "ir_hash", "str"),
            net=_field(z, "net", "str"),
            rng=_json(z, "rng", dict),  # type: ignore[arg-type]
            partial=bool(_field(z, "partial", "bool", optional=True)),
            records=_json(z, "records", list),  # type: ignore[arg-type]
            config=_json(z, "config", dict),  # type: ignore[arg-type]
            velocity=_field(z, "velocity", "params", optional=True),
        )
    if ck.velocity is not None and ck.velocity.shape != ck.params.shape:
        raise _Invalid(f"field 'velocity' has shape {ck.velocity.shape}, not the params'")
    if ck.epoch < 0:
        raise _Invalid(f"field 'epoch' is {ck.epoch}, expected at least 0")
    if not (math.isfinite(ck.eta) and ck.eta > 0):
        raise _Invalid(f"field 'eta' is {ck.eta}, expected a finite number > 0")
    if ck.records is not None and (
        [r.get("epoch") if isinstance(r, dict) else None for r in ck.records]
        != list(range(1, len(ck.records) + 1))
        or len(ck.records) != ck.epoch
    ):
        raise _Invalid(f"field 'records' does not hold epochs 1-{ck.epoch}")
    return ck


def load(path: str | Path, net: ir.Net | None = None) -> Checkpoint:
    """Read and validate a checkpoint; with `net`, refuse one written for a different network."""
    refuse_special_file(path, "a checkpoint")
    try:
        ck = _read(path)
    except FileNotFoundError:
        raise ChaosgenError(f"checkpoint {path} not found") from None
    except _Invalid as e:
        raise ChaosgenError(f"{path}: not a valid chaosgen checkpoint: {e}") from None
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
