"""Stage 5: load a built library with cffi and wrap it as a `Net` (weights, forward, gradients)."""

from __future__ import annotations

import functools
import hashlib
import operator
import os
import stat
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cffi
import numpy as np

from . import ir
from .build import atomic_write, loaded_copy_name
from .errors import ChaosgenError, printable, refuse_special_file
from .threads import allowed_threads, max_threads, usable_cpus

ALIGN = 64


def aligned_zeros(n: int, dtype=np.float32) -> np.ndarray:
    """A zeroed 1-D array whose data starts on a 64-byte boundary."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.zeros(n * itemsize + ALIGN, dtype=np.uint8)
    off = (-raw.ctypes.data) % ALIGN
    return raw[off : off + n * itemsize].view(dtype)


@functools.cache
def _open(library: str, header: str) -> tuple[cffi.FFI, object]:
    """Load a library (once per path: callers pass a path unique to its content)."""
    ffi = cffi.FFI()
    ffi.cdef(header)  # the same header the C++ compiler checked
    try:
        return ffi, ffi.dlopen(_utf8(library))
    except OSError as e:  # cffi's message names the library and what dlopen said
        raise ChaosgenError(str(e)) from None


def _utf8(library: str | Path) -> str:
    """The path as cffi's dlopen takes it: it encodes as UTF-8, so a path with other bytes (a
    surrogate escape from os.fsdecode) cannot be loaded; say so instead of a UnicodeEncodeError."""
    path = str(library)
    try:
        path.encode()
    except UnicodeEncodeError:
        raise ChaosgenError(
            f"{printable(path)}: the library's path is not valid UTF-8, which cffi cannot load; "
            "build under a UTF-8 path (--build-dir or $CHAOSGEN_CACHE)"
        ) from None
    return path


def probe(library: str | Path, net: ir.Net, header: str) -> None:
    """Load `library` from this very path, check it is `net`'s, and unload it: a ChaosgenError
    says what is wrong (the build publishes only a library that passed)."""
    ffi = cffi.FFI()
    ffi.cdef(header)
    try:
        lib = ffi.dlopen(_utf8(library))
    except OSError as e:
        raise ChaosgenError(f"the library cannot be loaded ({e})") from None
    try:
        n = lib.cg_n_params()
    except AttributeError:  # the symbol is missing
        raise ChaosgenError("the library has no cg_n_params()") from None
    finally:
        ffi.dlclose(lib)
    if n != net.n_params:
        raise ChaosgenError(f"the library has {n} parameters where {net.name} has {net.n_params}")


def _content_path(library: Path) -> Path:
    """A path that holds exactly `library`'s current bytes, named by their digest. dlopen hands
    back the code it already loaded from a path (cffi's cache too), so loading a rebuilt or
    hand-edited library from its own name would run the old code; a new content gets a new
    name. The copy lives beside the library, else (a read-only cache) in a private folder."""
    try:
        data = library.read_bytes()
    except OSError as e:
        raise ChaosgenError(f"{library}: cannot read the library: {e.strerror}") from None
    name = loaded_copy_name(library.name, hashlib.sha256(data).hexdigest()[:16])
    for folder in (library.parent, _private_dir()):
        if folder is None:
            continue
        copy = folder / name
        try:
            if not (copy.is_file() and copy.stat().st_size == len(data)):
                atomic_write(copy, data)
        except OSError:
            continue
        return copy
    return library  # nowhere to write: load it from its own path, as before


def _private_dir() -> Path | None:
    """This user's folder for loaded copies in the temporary directory, if it is safely ours."""
    folder = Path(tempfile.gettempdir()) / f"chaosgen-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        st = folder.lstat()
    except OSError:
        return None
    # Another account could plant a library in a folder it made or can write to.
    mine = stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077
    return folder if mine else None


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What Net.evaluate measured over a set of images."""

    error_rate: float  # fraction of the images whose largest output is not their label
    loss: float  # mean loss per image
    errors: int  # images wrongly classified
    images: int


class Net:
    """A compiled network with its own copy of the weights (float32, PyTorch layouts)."""

    def __init__(self, net: ir.Net, library: str | Path, header: str):
        self.ir = net
        self.library = Path(library)
        self.ffi, self.lib = _open(str(_content_path(self.library)), header)
        try:
            n, ir_hash = self.lib.cg_n_params(), self.lib.cg_ir_hash()
            fits = n == net.n_params and ir_hash != self.ffi.NULL
        except AttributeError:  # a library without chaosgen's API
            fits = False
        if not fits:
            raise ChaosgenError(f"{library} does not match the network {net.name}")
        self.params = aligned_zeros(net.n_params)
        self._work = aligned_zeros(self.lib.cg_work_floats())
        self._image = aligned_zeros(self.lib.cg_image_stride())
        self.init_weights(net.training.seed)

    # --- pointers -----------------------------------------------------------------------------
    def ptr(self, a: np.ndarray, ctype: str = "float *"):
        """A cffi pointer to a contiguous array (which must outlive the call)."""
        assert a.flags.c_contiguous
        return self.ffi.cast(ctype, a.ctypes.data)

    # --- weights ------------------------------------------------------------------------------
    def init_weights(self, seed: int) -> None:
        """Start from `initial_params(ir, seed)`."""
        from .check import MAX_SEED

        seed = _integer("init_weights: seed", seed, 0, MAX_SEED)
        self.params[:] = initial_params(self.ir, seed)

    def get_weights(self) -> dict[str, np.ndarray]:
        """'<layer>.weight' / '<layer>.bias' -> float32 copies, PyTorch layouts, layer order."""
        return _unflatten(self.ir, self.params)

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Copy weights in; every key must be present with its exact shape."""
        self._copy_in(checked_weights(self.ir, weights, "set_weights"))

    def _copy_in(self, weights: dict[str, np.ndarray]) -> None:
        """Checked weights (checked_weights' result) into the parameter array."""
        for lay in self.ir.trainable:
            for key, off, _ in _blocks(lay):
                self.params[off : off + weights[key].size] = weights[key].ravel()

    def load(self, path: str | os.PathLike[str]) -> None:
        """Weights from a file: a chaosgen checkpoint (what `chaosgen train` writes, e.g.
        runs/<network>/last.npz; refused when written for another network) or an .npz keyed like
        get_weights() ('<layer>.weight' and '<layer>.bias' in PyTorch layouts, any real dtype,
        finite as float32). Errors: ChaosgenError naming the file and what is wrong; the
        weights are then unchanged."""
        self._copy_in(read_weights(path, self.ir))

    # --- one image ----------------------------------------------------------------------------
    def _load_image(self, x: np.ndarray) -> None:
        s = self.ir.input
        self._image[: s.size] = _finite_float32("input", x, self._image_shapes())

    def forward(self, x: np.ndarray, threads: int | None = None) -> np.ndarray:
        """Output-layer activations, float32. One image, (C, H, W), (H, W) when C == 1, or flat
        (C*H*W,) -> (classes,); a batch, (N, C, H, W) or (N, H, W) when C == 1 -> (N, classes),
        runs on `threads` native threads (default: the usable CPUs) with the GIL released. An
        array of the input's own shape (C, H, W) is one image: with C == 1 pass (N, 1, H, W)
        for a batch that may hold one image. x holds the values the first layer reads (the
        spec's mean/std/scale is applied where chaosgen reads a data set, not here), of any real
        dtype and memory order, converted to float32 once. Errors (ChaosgenError, before
        anything runs): another shape, a dtype that is not real numbers, NaN, or a value that is
        inf as float32."""
        nthreads = self._threads(threads)
        arr = np.asarray(x)
        if arr.shape in self._image_shapes():
            return self._forward_one(arr)
        rows = self._rows(arr)
        out = np.empty((len(rows), self.ir.output.out_shape.size), np.float32)
        if len(rows):
            ran = self.lib.cg_forward_batch(
                self.ptr(self.params), self.ptr(rows), len(rows), allowed_threads(nthreads),
                self.ptr(out),
            )  # fmt: skip
            if ran < 0:
                raise ChaosgenError(
                    "the native forward could not allocate its buffers (out of memory)"
                )
        return out

    def _forward_one(self, x: np.ndarray) -> np.ndarray:
        """forward() of one image, on this thread."""
        self._load_image(x)
        out = np.empty(self.ir.output.out_shape.size, np.float32)
        self.lib.cg_forward(
            self.ptr(self.params), self.ptr(self._work), self.ptr(self._image), self.ptr(out)
        )
        return out

    def evaluate(self, x: np.ndarray, y: np.ndarray, threads: int | None = None) -> Evaluation:
        """Error rate and mean loss of the images x (a batch, as forward() takes: (N, C, H, W),
        or (N, H, W) when C == 1; any real dtype and memory order) against their labels y (N
        integers in 0..classes-1), forward only, on `threads` native threads (default: the
        usable CPUs) with the GIL released. The loss is the spec's output loss (cross-entropy
        of the softmax, or half the squared error against the one-hot label). Errors
        (ChaosgenError, before anything runs): the shapes, dtypes, NaN/inf as in forward(), a
        label out of range, no images."""
        nthreads = self._threads(threads)
        rows = self._rows(np.asarray(x))
        lab = np.asarray(y)
        if lab.shape != (len(rows),):
            raise ChaosgenError(
                f"labels have shape {lab.shape}, expected ({len(rows)},): one per image"
            )
        if lab.dtype.kind not in "iu":
            raise ChaosgenError(
                f"labels have dtype {lab.dtype}, expected integers (class indices)"
            )
        if not len(rows):
            raise ChaosgenError("evaluate: no images")
        rc, stats = self.native_evaluate(rows, self.checked_labels(lab), allowed_threads(nthreads))
        if rc != 0:
            raise ChaosgenError(
                "the native runtime could not allocate its buffers (out of memory)"
            )
        return Evaluation(
            error_rate=stats.errors / stats.images,
            loss=stats.loss / stats.images,
            errors=int(stats.errors),
            images=int(stats.images),
        )

    def native_evaluate(self, rows: np.ndarray, labels: np.ndarray, threads: int):
        """cg_evaluate over native rows (N, image stride) and checked int32 labels: its return
        code and cg_stats (summed loss, errors, images, seconds, threads that ran)."""
        stats = self.ffi.new("cg_stats *")
        rc = self.lib.cg_evaluate(
            self.ptr(self.params),
            self.ptr(rows),
            self.ptr(labels, "int *"),
            len(labels),
            threads,
            stats,
        )
        return rc, stats

    def checked_labels(self, labels: np.ndarray) -> np.ndarray:
        """Labels as int32, checked against the output layer (a wrong one would be read out of
        the output's bounds in native code)."""
        lab = np.ascontiguousarray(labels, np.int32)
        classes = self.lib.cg_output_size()
        if lab.size and (lab.min() < 0 or lab.max() >= classes):
            bad = int(lab.min() if lab.min() < 0 else lab.max())
            raise ChaosgenError(
                f"the data holds label {bad}, but network {self.ir.name} has "
                f"{classes} classes (labels 0..{classes - 1})"
            )
        return lab

    def _threads(self, threads: int | None) -> int:
        """A `threads` argument checked (default: the usable CPUs)."""
        if threads is None:
            return usable_cpus()
        if isinstance(threads, bool):  # an int to Python, a slip here
            raise ChaosgenError(
                f"threads must be an integer in 1..{max_threads()}, found {threads}"
            )
        return _integer("threads", threads, 1, max_threads())

    def _image_shapes(self) -> tuple[tuple[int, ...], ...]:
        """The shapes forward() takes for one image."""
        s = self.ir.input  # a volume's dims are (D, H, W)
        return tuple(
            t for t in ((s.maps, *s.dims), s.dims if s.maps == 1 else None, (s.size,)) if t
        )

    def _rows(self, x: np.ndarray) -> np.ndarray:
        """A batch (N, C, H, W), or (N, H, W) when C == 1, copied once into 64-byte aligned
        float32 rows of the image stride (the native layout), checked finite. A volume's batch
        is (N, C, D, H, W), or (N, D, H, W) when C == 1."""
        s = self.ir.input
        if x.dtype.kind not in "iuf":
            raise ChaosgenError(f"input has dtype {x.dtype}, expected real numbers (float32)")
        one = (s.maps, *s.dims)
        x4 = x[:, None] if x.ndim == len(one) and s.maps == 1 else x
        if x4.shape[1:] != one:
            sides = ", ".join(map(str, s.dims))
            batch = f"(N, {s.maps}, {sides})" + (f" or (N, {sides})" if s.maps == 1 else "")
            raise ChaosgenError(
                f"input has shape {x.shape}, expected one image {one} or a batch {batch}"
            )
        n, stride = len(x4), self.lib.cg_image_stride()
        rows = aligned_zeros(n * stride).reshape(n, stride)
        with np.errstate(over="ignore", invalid="ignore"):  # checked below, after the cast
            rows[:, : s.size].reshape(x4.shape)[...] = x4
        finite = np.isfinite(rows).all(axis=1)
        if not finite.all():
            raise ChaosgenError(
                f"input image {int(np.argmin(finite))} contains NaN or inf, or values beyond "
                f"float32's range (|x| > {float(np.finfo(np.float32).max):.4g})"
            )
        return rows

    def gradients(
        self, x: np.ndarray, label: int, dropout: tuple[int, int, int] | None = None
    ) -> dict[str, np.ndarray]:
        """d loss / d parameter for one image, same keys and shapes as get_weights(). Dropout
        layers are the identity unless `dropout` = (seed, epoch, index) gives the training mask
        of that image (the one `dropout_masks(seed, epoch, index)` returns)."""
        label = _integer("label", label, 0, self.ir.output.out_shape.size - 1)
        self._load_image(x)
        g = aligned_zeros(self.ir.n_params)
        args = (self.ptr(self.params), self.ptr(self._work), self.ptr(self._image), int(label))
        if dropout is not None and self.ir.dropouts:
            self.last_loss = self.lib.cg_gradients_dropout(*args, self.ptr(g), *_key(dropout))
        else:
            self.last_loss = self.lib.cg_gradients(*args, self.ptr(g))
        return _unflatten(self.ir, g)

    def dropout_masks(self, seed: int, epoch: int, index: int) -> dict[str, np.ndarray]:
        """Each dropout layer's training mask for one image: layer name -> bool array of the
        layer's shape (maps, h, w), or (maps, d, h, w) on volumes, True where a unit is kept
        (then scaled by 1 / (1 - rate)).
        `index` is the image's index in the training set (not its position in the epoch's
        order), `epoch` counts from 0; computed by the native code that trains with it."""
        drops = self.ir.dropouts
        keep = np.zeros(sum(d.out_shape.size for d in drops) + 1, np.uint8)
        if drops:
            keep_ptr = self.ptr(keep, "unsigned char *")
            self.lib.cg_dropout_masks(*_key((seed, epoch, index)), keep_ptr)
        out, off = {}, 0
        for d in drops:
            s = d.out_shape
            out[d.name] = keep[off : off + s.size].reshape(s.maps, *s.dims).astype(bool)
            off += s.size
        return out

    def loss(self, x: np.ndarray, label: int) -> float:
        """The loss of one image (computed by the gradient pass)."""
        self.gradients(x, label)
        return float(self.last_loss)


def read_weights(path: str | os.PathLike[str], net: ir.Net) -> dict[str, np.ndarray]:
    """`net`'s weights from a file, as get_weights() keys them (float32, PyTorch layouts): a
    chaosgen checkpoint of `net` (refused when written for another network) or an .npz of
    exactly get_weights()'s keys and shapes (any real dtype, finite as float32). Errors:
    ChaosgenError naming the file and what is wrong. Used by Net.load and chaosgen export."""
    from . import checkpoint as ckpt

    name = printable(os.fsdecode(path))
    refuse_special_file(path, "weights")
    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ChaosgenError(f"weights file {name} not found") from None
    except IsADirectoryError:
        raise ChaosgenError(f"{name} is a directory, not a weights file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ChaosgenError(f"{name}: not an .npz of weights ({type(e).__name__}: {e})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ChaosgenError(
            f"{name} holds one array (.npy), not an .npz of weights keyed like get_weights() "
            "or a chaosgen checkpoint"
        )
    with z:
        if {"params", "ir_hash"} <= set(z.files):  # chaosgen.checkpoint's fields
            weights = None
        else:
            try:
                weights = {k: z[k] for k in z.files}
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
                raise ChaosgenError(
                    f"{name}: an array cannot be read ({type(e).__name__}: {e})"
                ) from None
    if weights is None:
        return _unflatten(net, ckpt.load(path, net).params)
    return checked_weights(net, weights, name)


def checked_weights(net: ir.Net, weights: object, what: str) -> dict[str, np.ndarray]:
    """`weights` checked against `net`: a mapping of exactly get_weights()'s keys, each array of
    its shape, finite once cast; returns them as float32 arrays of those shapes. Else a
    ChaosgenError that starts with `what` and says what is wrong."""
    if not isinstance(weights, Mapping):
        raise ChaosgenError(
            f"{what}: expected a dict of arrays (as get_weights() returns), found "
            f"{type(weights).__name__}"
        )
    blocks = [b for lay in net.trainable for b in _blocks(lay)]
    missing = [k for k, _, _ in blocks if k not in weights]
    extra = [k for k in weights if k not in {k for k, _, _ in blocks}]
    if missing or extra:
        raise ChaosgenError(
            f"{what}: keys do not match network {net.name}: "
            f"missing {missing or 'none'}, unexpected {extra or 'none'}"
        )
    return {
        key: _finite_float32(f"{what}: {key}", weights[key], (shape,)).reshape(shape)
        for key, _, shape in blocks
    }


def _key(dropout: tuple[int, int, int]) -> tuple[int, int, int]:
    """(seed, epoch, index) of a dropout mask, range-checked for the C API."""
    seed, epoch, index = (int(v) for v in dropout)
    if not (0 <= seed < 2**63 and 0 <= epoch < 2**31 and 0 <= index < 2**63):
        raise ChaosgenError(f"dropout key {dropout} out of range (seed, epoch, index >= 0)")
    return seed, epoch, index


def fans(lay: ir.Trainable) -> tuple[int, int]:
    """(fan_in, fan_out) as torch.nn.init's _calculate_fan_in_and_fan_out: input maps (or
    values) x kernel taps, and output maps (or units) x kernel taps."""
    shape = lay.weight_shape
    taps = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * taps, shape[0] * taps


def _finite_float32(
    what: str, a: object, shapes: tuple[tuple[int, ...] | None, ...]
) -> np.ndarray:
    """`a` as flat float32, checked: real numbers, one of `shapes`, finite after the cast (a
    float64 beyond float32's range becomes inf only there, so cast first)."""
    arr = np.asarray(a)
    if arr.dtype.kind not in "iuf":
        raise ChaosgenError(f"{what} has dtype {arr.dtype}, expected real numbers (float32)")
    if arr.shape not in shapes:
        raise ChaosgenError(f"{what} has shape {arr.shape}, expected {shapes[0]}")
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(np.float32).ravel()
    if not np.all(np.isfinite(out)):
        raise ChaosgenError(
            f"{what} contains NaN or inf, or values beyond float32's range "
            f"(|x| > {float(np.finfo(np.float32).max):.4g})"
        )
    return out


def _integer(what: str, v: object, low: int, high: int) -> int:
    """An integer (int, numpy integer; not 2.5, not '3') in [low, high], else a clear error."""
    try:
        i = operator.index(v)  # type: ignore[arg-type]
    except TypeError:
        raise ChaosgenError(f"{what} must be an integer in {low}..{high}, found {v!r}") from None
    if not low <= i <= high:
        raise ChaosgenError(f"{what} {i} is out of range {low}..{high}")
    return i


def initial_params(net: ir.Net, seed: int) -> np.ndarray:
    """The initial flat parameter array (float32, padding zero), seeded; each layer by its init=:
    default: weights and biases ~ U(+-1/sqrt(fan_in)) (PyTorch's nn.Linear/nn.Conv2d default);
    xavier: U(+-sqrt(6 / (fan_in + fan_out))) (Glorot uniform, torch.nn.init.xavier_uniform_);
    he: N(0, 2 / fan_in) (torch.nn.init.kaiming_normal_, fan_in mode, ReLU gain);
    gaussian: N(0, std^2); uniform: U(+-range). Biases are zero except with `default`. One
    generator draws every layer's weights then biases in order (default: as before init=)."""
    rng = np.random.default_rng(seed)
    params = np.zeros(net.n_params, np.float32)
    for lay in net.trainable:
        fan_in, fan_out = fans(lay)
        n, init, w = lay.n_weights, lay.init, None
        if init == "default":
            bound = 1.0 / np.sqrt(fan_in)
            w = rng.uniform(-bound, bound, n)
            params[lay.b_offset : lay.b_offset + lay.n_bias] = rng.uniform(
                -bound, bound, lay.n_bias
            )
        elif init == "xavier":
            bound = np.sqrt(6.0 / (fan_in + fan_out))
            w = rng.uniform(-bound, bound, n)
        elif init == "he":
            w = rng.normal(0.0, np.sqrt(2.0 / fan_in), n)
        elif init == "gaussian":
            w = rng.normal(0.0, lay.init_scale, n)
        else:
            assert init == "uniform", init
            w = rng.uniform(-lay.init_scale, lay.init_scale, n)
        params[lay.w_offset : lay.w_offset + n] = w
    return params


def _blocks(lay: ir.Trainable):
    yield f"{lay.name}.weight", lay.w_offset, lay.weight_shape
    yield f"{lay.name}.bias", lay.b_offset, (lay.n_bias,)


def _unflatten(net: ir.Net, flat: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    for lay in net.trainable:
        for key, off, shape in _blocks(lay):
            n = int(np.prod(shape))
            out[key] = flat[off : off + n].reshape(shape).copy()
    return out
