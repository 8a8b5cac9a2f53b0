"""Read a pickle without running its code: only plain containers, numbers, text, bytes and
NumPy arrays of numbers are rebuilt; anything else is refused by name.

A pickle is a program: its GLOBAL/STACK_GLOBAL opcodes import any callable and REDUCE calls it
(`os.system` included). `pickle.Unpickler.find_class` is the one door to those callables, so a
subclass that opens it only to NumPy's array reconstruction (what `ndarray.__reduce__` writes,
as in the CIFAR-10 python batches) is the restricted unpickler the Python documentation
recommends ("Restricting Globals"). Arrays of Python objects are refused as well: their elements
would be whatever the pickle says.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from ..errors import DataError

PLAIN = "plain dicts, lists, numbers, text, bytes and NumPy arrays of numbers"


def _reconstruct(cls, shape, dtype):
    """numpy's `_reconstruct(ndarray, shape, dtype)`, for plain ndarrays only."""
    if cls is not np.ndarray:
        raise pickle.UnpicklingError(f"an array of class {getattr(cls, '__name__', cls)!r}")
    return np.ndarray.__new__(np.ndarray, shape, _dtype(dtype))


def _dtype(spec, align=False, copy=True):
    """np.dtype(spec) for numeric dtypes only (an object dtype would hold arbitrary objects)."""
    d = np.dtype(spec)
    if d.hasobject or d.kind not in "biuf":
        raise pickle.UnpicklingError(f"a NumPy array of dtype {d}")
    return np.dtype(spec, align, copy)


def _encode(text, encoding="utf-8"):
    """`_codecs.encode(str, 'latin1')`: how pickle protocols 0-2 of Python 3 write bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode of something other than latin-1 text")
    return text.encode("latin-1")


_ALLOWED = {
    ("_codecs", "encode"): _encode,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
}


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        found = _ALLOWED.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"{module}.{name}")
        return found

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("a persistent reference")


def load(path: Path, blob: bytes) -> object:
    """The object pickled in `blob` (read from `path`), rebuilt without running its code.

    Errors: DataError naming the file and what it asked for (a callable, an object array) or
    why it is not a pickle."""
    try:
        obj = _Restricted(io.BytesIO(blob), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DataError(
            f"{path}: refused: the pickle asks for {e}; only {PLAIN} are read "
            "(a pickle can run code)"
        ) from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise DataError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None
    except MemoryError:
        raise DataError(f"{path}: the pickle does not fit in memory") from None
    _check_plain(path, obj)
    return obj


def _check_plain(path: Path, obj: object, depth: int = 0) -> None:
    """Every value is plain (the opcodes alone build only these, but BUILD could set state)."""
    if depth > 20:
        raise DataError(f"{path}: refused: containers nested deeper than 20")
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject or obj.dtype.kind not in "biuf":
            raise DataError(f"{path}: refused: a NumPy array of dtype {obj.dtype}")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(path, k, depth + 1)
            _check_plain(path, v, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check_plain(path, v, depth + 1)
    elif obj is not None and not isinstance(obj, (bool, int, float, str, bytes, bytearray)):
        raise DataError(f"{path}: refused: the pickle holds a {type(obj).__name__}; only {PLAIN}")
