"""The IR: every layer knows its shapes, parameter counts and offsets. Built once by `check`."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, fields

from .errors import NOWHERE, SourceLoc

ACTIVATIONS = ("scaled_tanh", "tanh", "sigmoid", "relu", "linear")
OUTPUT_ACTIVATIONS = ("softmax", *ACTIVATIONS)
LOSSES = ("cross_entropy", "mse")
# How a conv layer is computed (`algorithm=`): auto lets the cost model (or `chaosgen tune`) pick
# between the direct kernels and FFT convolution (docs/kernels.md, "FFT convolution").
CONV_ALGORITHMS = ("auto", "direct", "fft")
# Weight initialisations (`init=`): see chaosgen/loader.py initial_params for each law.
INITS = ("default", "xavier", "he", "gaussian", "uniform")
INIT_PARAM = {"gaussian": "std", "uniform": "range"}  # the init that takes each parameter
LR_POLICIES = ("fixed", "exp", "step", "inv", "cosine")
# Caffe's per-layer param multipliers (weights, then biases) of eta and weight_decay
MULTIPLIERS = ("lr_mult", "decay_mult", "bias_lr_mult", "bias_decay_mult")
PARAM_ALIGN = 16  # floats: each parameter block starts on a 64-byte boundary


@dataclass(frozen=True, slots=True, kw_only=True)
class Shape:
    """maps x h x w, or maps x d x h x w for a volume (d >= 1); a fully connected layer is
    units x 1 x 1. `d` is 0 for a plane: a 2D net has no depth axis at all (its IR, digest and
    generated code are what they were before volumes existed)."""

    maps: int
    h: int
    w: int
    d: int = field(default=0, metadata={"omit_default": True})  # depth: 0 for a plane

    @property
    def volume(self) -> bool:
        """A 3D map (maps x d x h x w)."""
        return self.d > 0

    @property
    def depth(self) -> int:
        """Planes per map: d for a volume, 1 for a plane."""
        return self.d or 1

    @property
    def dims(self) -> tuple[int, ...]:
        """The spatial sizes: (d, h, w) for a volume, (h, w) for a plane."""
        return (self.d, self.h, self.w) if self.d else (self.h, self.w)

    @property
    def size(self) -> int:
        """Number of values."""
        return self.maps * self.depth * self.h * self.w

    def __str__(self) -> str:
        return "x".join(str(n) for n in (self.maps, *self.dims))


@dataclass(frozen=True, slots=True, kw_only=True)
class Layer:
    """What every layer has: a name, a kind, its shapes and where it was written."""

    name: str
    index: int  # position among the layers after the input, from 0
    in_shape: Shape
    out_shape: Shape
    loc: SourceLoc = field(compare=False, default=NOWHERE)

    kind = "layer"

    @property
    def n_weights(self) -> int:
        """Weights (not biases)."""
        return 0

    @property
    def n_bias(self) -> int:
        """Biases."""
        return 0

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """PyTorch layout of the weights."""
        return ()

    @property
    def macs(self) -> int:
        """Forward multiply-adds per image."""
        return 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Trainable(Layer):
    """A layer with weights, biases and an activation; offsets index the flat parameter array."""

    activation: str
    w_offset: int
    b_offset: int
    # Initialisation (not code: left out of the digest): the law and its std= or range= (0: none),
    # the layer's own or else the train statement's.
    init: str = "default"
    init_scale: float = 0.0
    # MULTIPLIERS: training settings (the generated code does not depend on them)
    lr_mult: float = field(compare=False, default=1.0)
    decay_mult: float = field(compare=False, default=1.0)
    bias_lr_mult: float = field(compare=False, default=1.0)
    bias_decay_mult: float = field(compare=False, default=1.0)

    @property
    def n_bias(self) -> int:
        """One bias per output map (conv) or unit (dense)."""
        return self.out_shape.maps


@dataclass(frozen=True, slots=True, kw_only=True)
class Conv(Trainable):
    """Valid convolution, every output map connected to every input map. On volumes (3D, the
    input's d >= 1) the kernel is kd x kh x kw and the pad pad_d x pad_h x pad_w; on planes kd
    and pad_d are 0. The stride is the same along every axis."""

    kh: int
    kw: int
    stride: int = 1
    # zeros around the input (PyTorch's `padding`, Caffe's `pad`); 0 keeps today's valid conv
    pad_h: int = field(default=0, metadata={"omit_default": True})
    pad_w: int = field(default=0, metadata={"omit_default": True})
    kd: int = field(default=0, metadata={"omit_default": True})  # kernel depth: 0 on planes
    pad_d: int = field(default=0, metadata={"omit_default": True})
    # one of CONV_ALGORITHMS, as written; auto (the default) keeps the digest of older specs
    algorithm: str = field(default="auto", metadata={"omit_default": True})
    kind = "conv"

    @property
    def kernel(self) -> tuple[int, ...]:
        """(kd, kh, kw) on volumes, (kh, kw) on planes."""
        return (self.kd, self.kh, self.kw) if self.kd else (self.kh, self.kw)

    @property
    def pad(self) -> tuple[int, ...]:
        """(pad_d, pad_h, pad_w) on volumes, (pad_h, pad_w) on planes."""
        return (self.pad_d, self.pad_h, self.pad_w) if self.kd else (self.pad_h, self.pad_w)

    @property
    def n_weights(self) -> int:
        return self.out_shape.maps * self.in_shape.maps * math.prod(self.kernel)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_shape.maps, self.in_shape.maps, *self.kernel)

    @property
    def macs(self) -> int:
        return self.n_weights * math.prod(self.out_shape.dims)


@dataclass(frozen=True, slots=True, kw_only=True)
class Pool(Layer):
    """Max or average pooling; windows `stride_h` x `stride_w` apart (0: the window, which then
    tiles the input). `round` says how a window that does not tile was sized: "" (it tiles),
    "floor" (PyTorch, Keras: the rest is dropped) or "ceil" (Caffe: a last, partial window).
    On volumes the window is wd x wh x ww, `stride_d` planes apart; on planes wd is 0."""

    op: str  # "max" | "avg"
    wh: int
    ww: int
    stride_h: int = field(default=0, metadata={"omit_default": True})
    stride_w: int = field(default=0, metadata={"omit_default": True})
    round: str = field(default="", metadata={"omit_default": True})
    wd: int = field(default=0, metadata={"omit_default": True})  # window depth: 0 on planes
    stride_d: int = field(default=0, metadata={"omit_default": True})

    @property
    def sd(self) -> int:
        """Planes between window starts (volumes)."""
        return self.stride_d or self.wd

    @property
    def window(self) -> tuple[int, ...]:
        """(wd, wh, ww) on volumes, (wh, ww) on planes."""
        return (self.wd, self.wh, self.ww) if self.wd else (self.wh, self.ww)

    @property
    def strides(self) -> tuple[int, ...]:
        """Window starts apart along each axis: (sd, sh, sw) on volumes, (sh, sw) on planes."""
        return (self.sd, self.sh, self.sw) if self.wd else (self.sh, self.sw)

    @property
    def sh(self) -> int:
        """Rows between window starts."""
        return self.stride_h or self.wh

    @property
    def sw(self) -> int:
        """Columns between window starts."""
        return self.stride_w or self.ww

    @property
    def tiles(self) -> bool:
        """The windows cut the input into whole tiles (today's kernels)."""
        return self.strides == self.window and all(
            i == o * k for i, o, k in zip(self.in_shape.dims, self.out_shape.dims, self.window,
                                          strict=True))

    @property
    def kind(self) -> str:  # type: ignore[override]
        return f"{self.op}pool"

    @property
    def macs(self) -> int:
        return self.in_shape.size


@dataclass(frozen=True, slots=True, kw_only=True)
class Dropout(Layer):
    """Inverted dropout: while training each unit is kept with probability 1 - rate and scaled by
    1 / (1 - rate); identity in evaluation. No parameters; the output shape is the input's."""

    rate: float
    kind = "dropout"


@dataclass(frozen=True, slots=True, kw_only=True)
class Dense(Trainable):
    """Fully connected; the input is flattened in (map, row, col) order."""

    kind = "dense"

    @property
    def n_weights(self) -> int:
        return self.out_shape.maps * self.in_shape.size

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_shape.maps, self.in_shape.size)

    @property
    def macs(self) -> int:
        return self.n_weights


@dataclass(frozen=True, slots=True, kw_only=True)
class Output(Dense):
    """The last, fully connected layer, with the loss."""

    loss: str
    kind = "output"


@dataclass(frozen=True, slots=True, kw_only=True)
class Normalization:
    """The input's `mean=`, `std=`, `scale=`: the network sees (x - mean) / std * scale per
    channel, x the pixel in [0, 1] (one value, or one per input map). Applied once when the
    data is loaded (chaosgen.data.fit.normalise), not in the generated code."""

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Training:
    """Training defaults from the spec's `train` statement."""

    epochs: int = 10
    eta: float = 0.001
    decay: float = 1.0  # lr_policy exp: eta x decay after each epoch (its gamma)
    seed: int = 1
    init: str = "default"
    std: float = 0.0  # of init=gaussian (0: not given)
    range: float = 0.0  # of init=uniform (0: not given)
    # the update rule (chaosgen.update; docs/language.md, "train"): torch.optim.SGD's
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    lr_policy: str = "exp"
    gamma: float = 0.0  # step, inv (exp's is `decay`)
    power: float = 0.0  # inv
    step_size: int = 0  # step: iterations (images; averaged: steps) per factor gamma
    batch: int = 0  # the averaged scheme's step (0: the CLI's default)


@dataclass(frozen=True, slots=True, kw_only=True)
class Net:
    """A checked network: input shape, layers (input excluded) and training defaults."""

    name: str
    path: str
    input: Shape
    layers: tuple[Layer, ...]
    training: Training
    n_params: int  # floats in the flat parameter array, padding included
    input_loc: SourceLoc = field(compare=False, default=NOWHERE)
    norm: Normalization | None = None  # None: the pixels as loaded (every paper spec)

    @property
    def dropouts(self) -> tuple[Dropout, ...]:
        """Dropout layers, in order."""
        return tuple(lay for lay in self.layers if isinstance(lay, Dropout))

    @property
    def output(self) -> Output:
        """The output layer."""
        out = self.layers[-1]
        assert isinstance(out, Output)
        return out

    @property
    def trainable(self) -> tuple[Trainable, ...]:
        """Layers with parameters, in order."""
        return tuple(lay for lay in self.layers if isinstance(lay, Trainable))

    @property
    def macs(self) -> int:
        """Forward multiply-adds per image (weights x output positions, plus pooling)."""
        return sum(lay.macs for lay in self.layers)

    def digest(self) -> str:
        """A hash of everything that determines the generated code (not locations, not the
        training defaults, so a checkpoint survives a change of epochs or eta)."""
        d = self.describe()
        del d["training"]
        for lay in d["layers"]:  # initialisation and multipliers do not change the code
            for key in (*_NOT_CODE, *MULTIPLIERS):
                lay.pop(key, None)
        return hashlib.sha256(repr(d).encode()).hexdigest()[:16]

    def describe(self) -> dict:
        """A plain, JSON-ready form of the IR (also what `--emit ir` prints)."""

        def plain(obj):
            if isinstance(obj, (Shape, Layer, Training)):
                d = {"kind": obj.kind} if isinstance(obj, Layer) else {}
                # a field marked omit_default shows only when used: the IR (and its hash) of a
                # net that does not use it stays what it was before the field existed
                d.update({f.name: plain(getattr(obj, f.name)) for f in fields(obj) if f.compare
                          and not (f.metadata.get("omit_default")
                                   and getattr(obj, f.name) == f.default)})
                if isinstance(obj, Layer):
                    d.update(n_weights=obj.n_weights, n_bias=obj.n_bias, macs=obj.macs)
                if isinstance(obj, Trainable):
                    d.update({k: getattr(obj, k) for k in MULTIPLIERS})
                return d
            return obj

        inp = plain(self.input)
        if self.norm is not None:  # only when given: the paper specs' digests stay as they were
            inp.update(mean=list(self.norm.mean), std=list(self.norm.std), scale=self.norm.scale)
        return {
            "name": self.name,
            "input": inp,
            "layers": [plain(lay) for lay in self.layers],
            "training": plain(self.training),
            "n_params": self.n_params,
        }


_NOT_CODE = ("init", "init_scale")


def align(n: int, to: int = PARAM_ALIGN) -> int:
    """Round n up to a multiple of `to`."""
    return -(-n // to) * to


def verify(net: Net) -> None:
    """Assert the IR's internal invariants (a bug in chaosgen, not in the spec, if one fails)."""
    prev = net.input
    end = 0
    for i, lay in enumerate(net.layers):
        assert lay.index == i, lay
        assert lay.in_shape == prev, (lay.name, lay.in_shape, prev)
        assert min(lay.out_shape.maps, *lay.out_shape.dims) >= 1, lay
        # a volume stays a volume up to the first dense layer (2D and 3D do not mix)
        assert isinstance(lay, Dense) or lay.out_shape.volume == lay.in_shape.volume, lay
        if isinstance(lay, Trainable):
            assert lay.w_offset % PARAM_ALIGN == 0 and lay.b_offset % PARAM_ALIGN == 0
            assert lay.w_offset >= end and lay.b_offset >= lay.w_offset + lay.n_weights
            end = lay.b_offset + lay.n_bias
            assert math.prod(lay.weight_shape) == lay.n_weights
        if isinstance(lay, Dropout):
            assert lay.out_shape == lay.in_shape and 0 <= lay.rate < 1, lay
        if isinstance(lay, Pool):
            assert len(lay.window) == len(lay.in_shape.dims), lay
            for n, o, k, s in zip(lay.in_shape.dims, lay.out_shape.dims, lay.window, lay.strides,
                                  strict=True):
                assert lay.round or (n - k) % s == 0, lay
                assert (o - 1) * s < n, lay  # every window starts inside the input
        if isinstance(lay, Conv):
            assert len(lay.kernel) == len(lay.in_shape.dims), lay
            for n, o, k, p in zip(lay.in_shape.dims, lay.out_shape.dims, lay.kernel, lay.pad,
                                  strict=True):
                assert o == (n + 2 * p - k) // lay.stride + 1, lay
        prev = lay.out_shape
    assert isinstance(net.layers[-1], Output)
    assert sum(isinstance(lay, Output) for lay in net.layers) == 1
    assert net.n_params == align(end)
