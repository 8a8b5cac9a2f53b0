"""Stage 2: AST -> IR. Checks names, attributes and shapes; reports all errors of a file."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

from . import ir, update
from .errors import Diagnostic, SourceLoc, SpecError, shown
from .parse import Attr, Spec, Statement, Value

MAX_DIM = 1 << 16  # maps, units, rows or columns of one layer
MAX_FLOATS = 1 << 28  # 1 GiB of float32: bound on the parameters, and on one instance's buffers
MAX_EPOCHS = 100_000
# g++ -O3 takes about 0.15 to 0.3 s and 3 to 5 MB per generated layer (docs/language.md,
# "Limits"): 64 layers build in about 20 s and 350 MB; the paper's nets have 6 to 8.
MAX_LAYERS = 64
MAX_NAME = 64  # characters of a layer or network name (they become C++ identifiers)
# Bounds of the training settings: one definition for the spec's `train` statement and the flags.
MAX_ETA = 10.0  # eta in (0, MAX_ETA]
MAX_DECAY = 1.0  # decay in (0, MAX_DECAY]
MAX_SEED = 2**63 - 1  # seed in [0, MAX_SEED]
MAX_INIT_SCALE = 10.0  # init std= and range= in (0, MAX_INIT_SCALE]: larger saturates any unit

LAYER_KINDS = ("input", "conv", "maxpool", "avgpool", "dropout", "dense", "output")
STATEMENT_KINDS = (*LAYER_KINDS, "train")


@dataclass(frozen=True, slots=True)
class AttrSpec:
    """What one attribute accepts: a value kind and a validity test with its description."""

    kinds: tuple[str, ...]
    required: bool = False
    default: object = None


_SIZE = AttrSpec(("int", "dims"), required=True)
# Initialisation, on `train` and on each layer with weights (None: the train statement's).
_INIT = {
    "init": AttrSpec(("word",)),
    "std": AttrSpec(("int", "float")),
    "range": AttrSpec(("int", "float")),
}
_NUM = ("int", "float")
_MULTS = {k: AttrSpec(_NUM, default=1.0) for k in ir.MULTIPLIERS}  # on every trainable layer
MAX_MULT = 1000.0  # a multiplier in [0, MAX_MULT]
_UPDATE_ATTRS = {  # the update rule and the schedule (checked in _Checker.update_rule)
    "momentum": AttrSpec(_NUM, default=0.0),
    "nesterov": AttrSpec(("word",), default="false"),
    "weight_decay": AttrSpec(_NUM, default=0.0),
    "lr_policy": AttrSpec(("word",)),
    "gamma": AttrSpec(_NUM),
    "power": AttrSpec(_NUM),
    "step_size": AttrSpec(("int",)),
    "batch": AttrSpec(("int",)),
}
# windows `stride` apart (default: the window); `round`: how a window that does not tile is sized
_POOL_GEOMETRY = {"stride": AttrSpec(("int", "dims")), "round": AttrSpec(("word",))}
ROUNDS = ("ceil", "floor")
ATTRS: dict[str, dict[str, AttrSpec]] = {
    "input": {
        "maps": AttrSpec(("int",), default=1),
        "size": _SIZE,
        "mean": AttrSpec(("int", "float", "list")),  # normalisation: docs/data.md
        "std": AttrSpec(("int", "float", "list")),
        "scale": AttrSpec(("int", "float")),
    },
    "conv": {
        "maps": AttrSpec(("int",), required=True),
        "kernel": _SIZE,
        "stride": AttrSpec(("int",), default=1),
        "activation": AttrSpec(("word",), default="scaled_tanh"),
        "pad": AttrSpec(("int", "dims"), default=0),
        "algorithm": AttrSpec(("word",), default="auto"),
        **_INIT,
        **_MULTS,
    },
    "maxpool": {"window": _SIZE, **_POOL_GEOMETRY},
    "avgpool": {"window": _SIZE, **_POOL_GEOMETRY},
    "dropout": {"rate": AttrSpec(("int", "float"), required=True)},
    "dense": {
        "units": AttrSpec(("int",), required=True),
        "activation": AttrSpec(("word",), default="scaled_tanh"),
        **_INIT,
        **_MULTS,
    },
    "output": {
        "classes": AttrSpec(("int",), required=True),
        "activation": AttrSpec(("word",), default="softmax"),
        "loss": AttrSpec(("word",), default="cross_entropy"),
        **_INIT,
        **_MULTS,
    },
    "train": {
        # An instance: on a slots dataclass, ir.Training.epochs is a descriptor, not the default.
        "epochs": AttrSpec(("int",), default=ir.Training().epochs),
        "eta": AttrSpec(("int", "float"), default=ir.Training().eta),
        "decay": AttrSpec(("int", "float"), default=ir.Training().decay),
        "seed": AttrSpec(("int",), default=ir.Training().seed),
        **_INIT,
        **_UPDATE_ATTRS,
    },
}
_KIND_WORDS = {
    "int": "an integer",
    "float": "a number",
    "dims": "sizes like 4x4",
    "word": "a name",
    "list": "numbers like 0.5,0.5,0.5",
}
RANKS = (2, 3)  # spatial axes: planes (HxW) and volumes (DxHxW)
_AXES = {2: "HxW", 3: "DxHxW"}
_RANK_WORD = {2: "plane (HxW)", 3: "volume (DxHxW)"}
MAX_NORM = 1e6  # bound on |mean|, std and scale: pixels are in [0, 1]
MIN_NORM = 1e-6  # std and scale at least this (a tiny std overflows float32)


class _Checker:
    def __init__(self, spec: Spec):
        self.spec = spec
        self.errors: list[Diagnostic] = []
        # spatial axes of every layer's sizes, set by the input (None: unknown after an error)
        self.rank: int | None = None
        self.input_line = 0

    def error(self, loc: SourceLoc, msg: str) -> None:
        src = self.spec.lines[loc.line - 1] if 0 < loc.line <= len(self.spec.lines) else None
        self.errors.append(Diagnostic(loc, msg, src))

    # --- attributes -----------------------------------------------------------------------
    def attrs(self, st: Statement, what: str) -> dict[str, object] | None:
        """Values of a statement's attributes, defaults filled in; None if any is wrong."""
        allowed = ATTRS[st.kind]
        seen: dict[str, Attr] = {}
        values: dict[str, object] = {}
        ok = True
        for a in st.attrs:
            if a.key in seen:
                self.error(a.loc, f"{what}: attribute '{shown(a.key)}' given twice")
                ok = False
                continue
            seen[a.key] = a
            spec = allowed.get(a.key)
            if spec is None:
                self.error(
                    a.loc,
                    f"{what}: unknown attribute '{shown(a.key)}'; "
                    f"expected one of {', '.join(allowed)}",
                )
                ok = False
                continue
            if a.value.kind not in spec.kinds:
                want = " or ".join(_KIND_WORDS[k] for k in spec.kinds)
                self.error(
                    a.value.loc, f"{what}: '{a.key}' must be {want}, found '{shown(a.value.text)}'"
                )
                ok = False
                continue
            values[a.key] = self.convert(a.value)
        for key, spec in allowed.items():
            if key not in values and key not in seen:
                if spec.required:
                    self.error(st.loc, f"{what}: missing attribute '{key}'")
                    ok = False
                else:
                    values[key] = spec.default
        return values if ok else None

    @staticmethod
    def convert(v: Value) -> object:
        if v.kind == "int":
            return v.integer
        if v.kind == "float":
            return float(v.text)
        if v.kind == "dims":
            return v.dims
        if v.kind == "list":
            return v.numbers
        return v.text

    def loc_of(self, st: Statement, key: str) -> SourceLoc:
        for a in st.attrs:
            if a.key == key:
                return a.value.loc
        return st.loc

    def count(self, st: Statement, what: str, key: str, value: int, lo: int = 1) -> bool:
        """Check lo <= value <= MAX_DIM."""
        if value < lo or value > MAX_DIM:
            self.error(
                self.loc_of(st, key),
                f"{what}: '{key}' must be between {lo} and {MAX_DIM}, found {value}",
            )
            return False
        return True

    def sizes(self, st: Statement, what: str, key: str, value: object) -> tuple[int, ...] | None:
        """A `HxW` attribute on a plane, `DxHxW` on a volume (a single int: the same size on
        every axis), each side within bounds. The input sets which (`self.rank`)."""
        rank = self.rank or (len(value) if isinstance(value, tuple) and len(value) in RANKS
                             else 2)
        dims = (value,) * rank if isinstance(value, int) else tuple(value)  # type: ignore[arg-type]
        if len(dims) != rank:
            why = ""
            if self.rank and len(dims) in RANKS:  # the other of 2D and 3D: say why not
                why = (f" (the input at line {self.input_line} is a {_RANK_WORD[rank]}: 2D and 3D "
                       f"layers do not mix)")
            self.error(
                self.loc_of(st, key),
                f"{what}: '{key}' must be {_AXES[rank]}, found {len(dims)} sizes{why}",
            )
            return None
        if all(self.count(st, what, key, d) for d in dims):
            return dims  # type: ignore[return-value]
        return None

    def word(
        self, st: Statement, what: str, key: str, value: str, allowed: tuple[str, ...]
    ) -> bool:
        if value not in allowed:
            self.error(
                self.loc_of(st, key),
                f"{what}: unknown {key} '{shown(value)}'; expected one of {', '.join(allowed)}",
            )
            return False
        return True

    # --- the network ------------------------------------------------------------------------
    def run(self) -> ir.Net | None:
        spec = self.spec
        for st in spec.statements:
            if st.kind not in STATEMENT_KINDS:
                self.error(
                    st.loc,
                    f"unknown statement '{shown(st.kind)}'; "
                    f"expected one of {', '.join(STATEMENT_KINDS)}",
                )
        statements = [st for st in spec.statements if st.kind in STATEMENT_KINDS]
        trains = [st for st in statements if st.kind == "train"]
        for st in trains[1:]:
            self.error(st.loc, "a second 'train' statement; give all training settings in one")
        training = self.training(trains[0]) if trains else ir.Training()
        layer_sts = [st for st in statements if st.kind in LAYER_KINDS]
        names = self.names(layer_sts)
        if len(layer_sts) > MAX_LAYERS + 1:  # the input is not a layer
            self.error(
                layer_sts[MAX_LAYERS + 1].loc,
                f"too many layers: {len(layer_sts) - 1} after the input, at most {MAX_LAYERS} "
                f"(the C++ compiler's time and memory grow with each)",
            )
        if spec.network is not None and len(spec.network) > MAX_NAME:
            self.error(
                spec.network_loc or SourceLoc(spec.path, 1, 1),
                f"network name of {len(spec.network)} characters is too long "
                f"(at most {MAX_NAME}): {shown(spec.network)}",
            )

        if not layer_sts or layer_sts[0].kind != "input":
            where = layer_sts[0].loc if layer_sts else SourceLoc(spec.path, 1, 1)
            self.error(where, "the network must begin with an 'input' statement")
        for st in layer_sts[1:]:
            if st.kind == "input":
                self.error(st.loc, "a second 'input'; only the first statement may be an input")
        outputs = [st for st in layer_sts if st.kind == "output"]
        if not outputs:
            last = layer_sts[-1].loc if layer_sts else SourceLoc(spec.path, 1, 1)
            self.error(last, "the network has no 'output' layer; end it with `output classes=N`")
        else:
            after = layer_sts[layer_sts.index(outputs[0]) + 1 :]
            for st in after:
                self.error(st.loc, f"layer '{shown(names[id(st)])}' comes after the output layer")

        net = self.layers(layer_sts, names, training) if layer_sts else None
        if self.errors:
            raise SpecError(self.errors)
        assert net is not None
        ir.verify(net)
        return net

    def names(self, layer_sts: list[Statement]) -> dict[int, str]:
        """User names, checked for duplicates; then kind+number for the unnamed ones."""
        names: dict[int, str] = {}
        first: dict[str, Statement] = {}
        for st in layer_sts:
            if st.name is None:
                continue
            if len(st.name) > MAX_NAME:
                self.error(
                    st.name_loc or st.loc,
                    f"layer name of {len(st.name)} characters is too long (at most {MAX_NAME}): "
                    f"{shown(st.name)}",
                )
            elif st.name in first:
                prev = first[st.name].loc
                self.error(
                    st.name_loc or st.loc,
                    f"duplicate layer name '{st.name}' (first used at line {prev.line})",
                )
            first.setdefault(st.name, st)
            names[id(st)] = st.name
        counters: dict[str, int] = {}
        for st in layer_sts:
            if st.name is None:
                if st.kind in ("input", "output"):
                    base = st.kind
                else:
                    counters[st.kind] = counters.get(st.kind, 0) + 1
                    base = f"{st.kind}{counters[st.kind]}"
                name, k = base, 1
                while name in first:
                    k += 1
                    name = f"{base}_{k}"
                first[name] = st
                names[id(st)] = name
        return names

    def training(self, st: Statement) -> ir.Training:
        a = self.attrs(st, "train")
        if a is None:
            return ir.Training()
        ok = True
        if not 1 <= a["epochs"] <= MAX_EPOCHS:  # type: ignore[operator]
            self.error(
                self.loc_of(st, "epochs"),
                f"train: 'epochs' must be between 1 and {MAX_EPOCHS}, found {a['epochs']}",
            )
            ok = False
        if not 0 < a["eta"] <= MAX_ETA:  # type: ignore[operator]
            self.error(
                self.loc_of(st, "eta"),
                f"train: 'eta' must be in (0, {MAX_ETA:g}], found {a['eta']}",
            )
            ok = False
        if not 0 < a["decay"] <= MAX_DECAY:  # type: ignore[operator]
            self.error(
                self.loc_of(st, "decay"),
                f"train: 'decay' must be in (0, {MAX_DECAY:g}], found {a['decay']}",
            )
            ok = False
        if not 0 <= a["seed"] <= MAX_SEED:  # type: ignore[operator]
            self.error(
                self.loc_of(st, "seed"),
                f"train: 'seed' must be a non-negative integer, found {a['seed']}",
            )
            ok = False
        init = self.init_of(st, "train", a, ir.Training())
        rule = update.check_train(self, st, a)
        if not ok or init is None or rule is None:
            return ir.Training()
        return ir.Training(
            epochs=int(a["epochs"]),
            eta=float(a["eta"]),
            decay=float(a["decay"]),
            seed=int(a["seed"]),  # type: ignore[arg-type]
            init=init[0],
            **{ir.INIT_PARAM[init[0]]: init[1]} if init[0] in ir.INIT_PARAM else {},
            **rule,
        )

    def init_of(
        self, st: Statement, what: str, a: dict, training: ir.Training
    ) -> tuple[str, float] | None:
        """(init, its std= or range= or 0) of a statement, the train statement's where the
        statement gives none; None after an error (each reported at its attribute)."""
        init = a["init"] if a["init"] is not None else training.init
        if a["init"] is not None and not self.word(st, what, "init", init, ir.INITS):
            return None
        ok = True
        for key in ("std", "range"):
            v = a[key]
            if v is None:
                continue
            if ir.INIT_PARAM.get(init) != key:
                takes = next(k for k, p in ir.INIT_PARAM.items() if p == key)
                self.error(
                    self.loc_of(st, key),
                    f"{what}: '{key}' is the parameter of init={takes}, but the init here is "
                    f"{init}",
                )
                ok = False
            elif not 0 < v <= MAX_INIT_SCALE:
                self.error(
                    self.loc_of(st, key),
                    f"{what}: '{key}' must be in (0, {MAX_INIT_SCALE:g}], found {v}",
                )
                ok = False
        if not ok:
            return None
        key = ir.INIT_PARAM.get(init)
        if key is None:
            return init, 0.0
        scale = a[key] if a[key] is not None else getattr(training, key)
        # The train statement may leave it to each layer (Caffe's nets give a std per layer).
        if not scale and st.kind != "train":
            self.error(
                self.loc_of(st, "init") if a["init"] else st.loc,
                f"{what}: init={init} needs '{key}=' (on the layer or the train statement)",
            )
            return None
        return init, float(scale)

    def layers(
        self, sts: list[Statement], names: dict[int, str], training: ir.Training
    ) -> ir.Net | None:
        in_st = sts[0] if sts[0].kind == "input" else None
        shape: ir.Shape | None = None
        if in_st is not None:
            a = self.attrs(in_st, "input")
            if a is not None:
                size = a["size"]
                n = len(size) if isinstance(size, tuple) else 2  # type: ignore[arg-type]
                if n not in RANKS:
                    self.error(
                        self.loc_of(in_st, "size"),
                        f"input: 'size' must be HxW (a plane) or DxHxW (a volume), "
                        f"found {n} sizes",
                    )
                    size = None
                else:
                    self.rank, self.input_line = n, in_st.loc.line
                dims = self.sizes(in_st, "input", "size", size) if size is not None else None
                if self.count(in_st, "input", "maps", a["maps"]) and dims:  # type: ignore
                    shape = ir.Shape(maps=a["maps"], h=dims[-2], w=dims[-1],  # type: ignore
                                     d=dims[0] if len(dims) == 3 else 0)
                if shape is not None and shape.size > MAX_FLOATS:  # the image buffer, too
                    self.error(
                        in_st.loc,
                        f"input: {shape} = {shape.size} values exceed the bound of {MAX_FLOATS} "
                        f"floats (1 GiB)",
                    )
                    shape = None
        input_shape = shape
        norm = self.normalization(in_st, a, shape) if in_st is not None and a else None
        self.train_settings = training
        layers: list[ir.Layer] = []
        offset = 0
        for st in sts:
            if st.kind == "input":
                continue
            name = names[id(st)]
            what = f"{st.kind} '{shown(name)}'"
            a = self.attrs(st, what)
            if a is None:
                shape = None  # shapes below an error are unknown: check only their attributes
                continue
            make = _BUILDERS[st.kind]
            lay = make(
                self, st, what, a, name=name, index=len(layers), in_shape=shape, offset=offset
            )
            if isinstance(lay, ir.Trainable):
                mults = update.check_multipliers(self, st, what, a)
                lay = None if mults is None else dataclasses.replace(lay, **mults)
            if lay is None:
                shape = None
                continue
            if isinstance(lay, ir.Trainable):
                offset = ir.align(lay.b_offset + lay.n_bias)
                if offset > MAX_FLOATS:
                    self.error(
                        st.loc,
                        f"{what}: the parameters exceed the bound of {MAX_FLOATS} floats (1 GiB); "
                        f"found {offset}",
                    )
                    shape = None
                    continue
            layers.append(lay)
            shape = lay.out_shape
        if shape is not None:
            work = sum(lay.out_shape.size for lay in layers)
            if work * 2 > MAX_FLOATS:
                self.error(
                    sts[-1].loc,
                    f"the activations and deltas of one network instance ({2 * work} floats) "
                    f"exceed the bound of {MAX_FLOATS} floats (1 GiB)",
                )
        if self.errors or input_shape is None:
            return None
        return ir.Net(
            name=self.spec.network or _stem(self.spec.path),
            path=self.spec.path,
            input=input_shape,
            layers=tuple(layers),
            training=training,
            n_params=ir.align(offset),
            input_loc=in_st.loc if in_st else sts[0].loc,
            norm=norm,
        )

    def normalization(
        self, st: Statement, a: dict[str, object], shape: ir.Shape | None
    ) -> ir.Normalization | None:
        """The input's mean/std/scale (None if none given): one value or one per map, std and
        scale in [MIN_NORM, MAX_NORM], |mean| <= MAX_NORM."""
        if all(a[k] is None for k in ("mean", "std", "scale")):
            return None
        got: dict[str, object] = {}
        for key, lo, default in (("mean", -MAX_NORM, (0.0,)), ("std", MIN_NORM, (1.0,))):
            v = a[key]
            vals = default if v is None else (v if isinstance(v, tuple) else (float(v),))
            if shape is not None and len(vals) not in (1, shape.maps):
                self.error(
                    self.loc_of(st, key),
                    f"input: '{key}' needs 1 value or one per map ({shape.maps}), "
                    f"found {len(vals)}",
                )
            elif not all(lo <= x <= MAX_NORM for x in vals):
                self.error(
                    self.loc_of(st, key),
                    f"input: '{key}' values must be in [{lo:g}, {MAX_NORM:g}], found "
                    + ",".join(f"{x:g}" for x in vals),
                )
            got[key] = tuple(float(x) for x in vals)
        scale = 1.0 if a["scale"] is None else float(a["scale"])  # type: ignore[arg-type]
        if not MIN_NORM <= scale <= MAX_NORM:
            self.error(
                self.loc_of(st, "scale"),
                f"input: 'scale' must be in [{MIN_NORM:g}, {MAX_NORM:g}], found {scale:g}",
            )
        return ir.Normalization(mean=got["mean"], std=got["std"], scale=scale)  # type: ignore

    # --- one builder per layer kind: (checker, statement, what, attrs, **common) -> Layer | None
    def conv(self, st, what, a, *, name, index, in_shape, offset):
        k = self.sizes(st, what, "kernel", a["kernel"])
        ok = self.count(st, what, "maps", a["maps"]) & self.count(st, what, "stride", a["stride"])
        ok &= self.word(st, what, "activation", a["activation"], ir.ACTIVATIONS)
        ok &= self.word(st, what, "algorithm", a["algorithm"], ir.CONV_ALGORITHMS)
        pad = self.padding(st, what, a["pad"], k)
        if k and pad and in_shape is not None:
            padded = tuple(n + 2 * p for n, p in zip(in_shape.dims, pad, strict=True))
            if any(kk > n for kk, n in zip(k, padded, strict=True)):
                note = f" (padded {_x(padded)})" if any(pad) else ""
                self.error(
                    self.loc_of(st, "kernel"),
                    f"{what}: kernel {_x(k)} is larger than its input {_x(in_shape.dims)}{note}",
                )
                return None
        init = self.init_of(st, what, a, self.train_settings)
        if not (k and ok and pad and init) or in_shape is None:
            return None
        s = a["stride"]
        # PyTorch's and Caffe's size: floor((H + 2 * pad - kernel) / stride) + 1, on every axis
        dims = [(n + 2 * p - kk) // s + 1 for n, p, kk in zip(in_shape.dims, pad, k, strict=True)]
        out = ir.Shape(maps=a["maps"], h=dims[-2], w=dims[-1], d=in_shape.d and dims[0])
        n_w = out.maps * in_shape.maps * math.prod(k)
        depth = dict(kd=k[0], pad_d=pad[0]) if len(k) == 3 else {}
        return ir.Conv(
            name=name,
            index=index,
            in_shape=in_shape,
            out_shape=out,
            loc=st.loc,
            activation=a["activation"],
            w_offset=offset,
            b_offset=ir.align(offset + n_w),
            kh=k[-2],
            kw=k[-1],
            stride=s,
            init=init[0],
            init_scale=init[1],
            pad_h=pad[-2],
            pad_w=pad[-1],
            **depth,
            algorithm=a["algorithm"],
        )

    def pool(self, st, what, a, *, name, index, in_shape, offset):
        win = self.sizes(st, what, "window", a["window"])
        stride = self.sizes(st, what, "stride", a["stride"]) if a["stride"] is not None else win
        rnd = a["round"]
        ok = rnd is None or self.word(st, what, "round", rnd, ROUNDS)
        if not (win and stride and ok) or in_shape is None:
            return None
        dims = in_shape.dims
        if any(k > n for k, n in zip(win, dims, strict=True)):
            self.error(
                self.loc_of(st, "window"),
                f"{what}: window {_x(win)} is larger than its input {_x(dims)}",
            )
            return None
        if rnd is None and any((n - k) % s for n, k, s in zip(dims, win, stride, strict=True)):
            how = (
                "pooling windows do not overlap and must divide the input exactly"
                if stride == win
                else f"windows {_x(stride)} apart must end exactly at the input's edge"
            )
            self.error(
                self.loc_of(st, "window"),
                f"{what}: window {_x(win)} does not tile its input {_x(dims)} "
                f"({how}); add round=floor to drop the rest (PyTorch, Keras) or round=ceil "
                f"for a last, partial window (Caffe)",
            )
            return None
        out_dims = [pool_size(n, k, s, rnd or "floor")
                    for n, k, s in zip(dims, win, stride, strict=True)]
        out = ir.Shape(maps=in_shape.maps, h=out_dims[-2], w=out_dims[-1],
                       d=in_shape.d and out_dims[0])
        given = a["stride"] is not None
        depth = dict(wd=win[0], stride_d=stride[0] if given else 0) if len(win) == 3 else {}
        return ir.Pool(
            name=name,
            index=index,
            in_shape=in_shape,
            out_shape=out,
            loc=st.loc,
            op=st.kind[:3],
            wh=win[-2],
            ww=win[-1],
            stride_h=stride[-2] if given else 0,
            stride_w=stride[-1] if given else 0,
            round=rnd or "",
            **depth,
        )

    def padding(self, st, what, value, kernel) -> tuple[int, ...] | None:
        """`pad=P`, `pad=PHxPW` (planes) or `pad=PDxPHxPW` (volumes): 0 <= each < its kernel
        side (a larger pad only adds outputs that see nothing but zeros; PyTorch allows it,
        Caffe too, but it is never meant)."""
        rank = len(kernel) if kernel else self.rank or 2
        dims = (value,) * rank if isinstance(value, int) else tuple(value)
        loc = self.loc_of(st, "pad")
        if len(dims) != rank:
            want = "P or PHxPW" if rank == 2 else "P or PDxPHxPW"
            self.error(loc, f"{what}: 'pad' must be {want}, found {len(dims)} sizes")
            return None
        sides = ("height", "width") if rank == 2 else ("depth", "height", "width")
        for d, k, side in zip(dims, kernel or (None,) * rank, sides, strict=True):
            if d < 0 or (k is not None and d >= k) or d > MAX_DIM:
                top = f"{k - 1} (the kernel {side} {k} less one)" if k is not None else MAX_DIM
                self.error(loc, f"{what}: 'pad' must be between 0 and {top}, found {d}")
                return None
        return dims  # type: ignore[return-value]

    def dense(self, st, what, a, *, name, index, in_shape, offset):
        is_out = st.kind == "output"
        key = "classes" if is_out else "units"
        ok = self.count(st, what, key, a[key], lo=2 if is_out else 1)
        acts = ir.OUTPUT_ACTIVATIONS if is_out else ir.ACTIVATIONS
        ok &= self.word(st, what, "activation", a["activation"], acts)
        if is_out:
            ok &= self.word(st, what, "loss", a["loss"], ir.LOSSES)
            if ok and a["loss"] == "cross_entropy" and a["activation"] != "softmax":
                self.error(
                    self.loc_of(st, "loss"),
                    f"{what}: loss cross_entropy needs activation softmax, "
                    f"found {a['activation']}",
                )
                ok = False
        init = self.init_of(st, what, a, self.train_settings)
        if not (ok and init) or in_shape is None:
            return None
        out = ir.Shape(maps=a[key], h=1, w=1, d=1 if in_shape.volume else 0)  # 2D or 3D stays
        n_w = out.maps * in_shape.size
        if n_w > MAX_FLOATS:
            self.error(
                st.loc, f"{what}: {n_w} weights exceed the bound of {MAX_FLOATS} floats (1 GiB)"
            )
            return None
        common = dict(
            name=name,
            index=index,
            in_shape=in_shape,
            out_shape=out,
            loc=st.loc,
            activation=a["activation"],
            w_offset=offset,
            b_offset=ir.align(offset + n_w),
            init=init[0],
            init_scale=init[1],
        )
        if is_out:
            return ir.Output(**common, loss=a["loss"])
        return ir.Dense(**common)

    def dropout(self, st, what, a, *, name, index, in_shape, offset):
        rate = a["rate"]
        if not 0 <= rate < 1:
            self.error(
                self.loc_of(st, "rate"),
                f"{what}: 'rate' (the fraction of units dropped) must be in [0, 1), found {rate}",
            )
            return None
        if in_shape is None:
            return None
        return ir.Dropout(
            name=name,
            index=index,
            in_shape=in_shape,
            out_shape=in_shape,
            loc=st.loc,
            rate=float(rate),
        )


_BUILDERS: dict[str, Callable] = {
    "conv": _Checker.conv,
    "maxpool": _Checker.pool,
    "avgpool": _Checker.pool,
    "dropout": _Checker.dropout,
    "dense": _Checker.dense,
    "output": _Checker.dense,
}


def pool_size(n: int, k: int, s: int, rnd: str) -> int:
    """Windows of k, s apart, over n values: floor((n - k) / s) + 1 (PyTorch, Keras), or with
    "ceil" ceil((n - k) / s) + 1 (Caffe), less a last window that would start past the input
    (PyTorch's ceil_mode rule; Caffe applies it only with padding, which pools here lack)."""
    if rnd == "floor":
        return (n - k) // s + 1
    out = -(-(n - k) // s) + 1
    return out - 1 if (out - 1) * s >= n else out


def _x(dims) -> str:
    """Sizes as written in a spec: 5x5, 3x5x5."""
    return "x".join(str(n) for n in dims)


def _stem(path: str) -> str:
    """A network name from a file name: an ASCII C identifier (it lands in generated code, file
    names and shell scripts), at most MAX_NAME characters."""
    import re
    from pathlib import Path

    stem = re.sub(r"[^A-Za-z0-9_]", "_", Path(path).stem) or "net"
    return (stem if not stem[0].isdigit() else f"net_{stem}")[:MAX_NAME]


def check(spec: Spec) -> ir.Net:
    """Turn an AST into a verified IR, or raise SpecError with every problem found."""
    net = _Checker(spec).run()
    assert net is not None
    return net
