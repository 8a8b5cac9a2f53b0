"""A Caffe net .prototxt (and its solver) as a .net file: the architecture, fillers, multipliers
and the solver's settings; Caffe's weights (.caffemodel) are not read.

Data layers (or `Input`, or `--input-shape`) give the input and its scale and mean;
Convolution, Pooling (MAX, AVE; Caffe's ceil sizing), InnerProduct, ReLU, TanH, Sigmoid (in
place, also after a max pool), Dropout and the loss (SoftmaxWithLoss, Softmax, EuclideanLoss)
the layers; fillers and `param` multipliers their init= and multipliers; the solver's SGD
settings the `train` statement, as averaged steps of the data layer's batch (Caffe's mini-batch
steps). The table of every field: docs/interop.md, "Import (Caffe)".

Caffe's `xavier` filler is U(+-sqrt(3 / fan_in)), chaosgen's Glorot's U(+-sqrt(6 / (fan_in +
fan_out))): the import keeps the name and says so in the file (as specs/lenet.net does).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import lark

from .. import ir
from ..errors import ChaosgenError, Diagnostic, SourceLoc, SpecError, printable
from .nettext import Statement, name_or_none, write

SUPPORTED = ("Input", "Data", "ImageData", "MemoryData", "HDF5Data", "DummyData",
             "Convolution", "Pooling", "InnerProduct", "ReLU", "TanH", "Sigmoid", "Dropout",
             "Softmax", "SoftmaxWithLoss", "EuclideanLoss", "Accuracy")
DATA_LAYERS = ("Data", "ImageData", "MemoryData", "HDF5Data", "DummyData", "WindowData")
ACTIVATIONS = {"ReLU": "relu", "TanH": "tanh", "Sigmoid": "sigmoid"}
POLICIES = ("fixed", "step", "inv")  # Caffe's policies with a chaosgen equivalent
MAX_BYTES = 1_000_000
XAVIER_NOTE = ("Caffe's xavier filler is U(+-sqrt(3/fan_in)); chaosgen's xavier is Glorot's "
               "(docs/language.md)")


# --- protobuf text format -------------------------------------------------------------------
class _Located(Exception):
    """An error at a place in the prototxt."""

    def __init__(self, loc: SourceLoc, message: str):
        super().__init__(message)
        self.loc = loc


@dataclass(frozen=True, slots=True)
class Field:
    """One field as written: its name, its value (text of a scalar, a Message, or a list of
    texts) and where it is."""

    name: str
    value: object
    loc: SourceLoc


class Message:
    """A message: its fields in order (a repeated field appears once per value)."""

    def __init__(self, fields: list[Field], loc: SourceLoc):
        self.fields, self.loc = fields, loc

    def all(self, name: str) -> list[Field]:
        """Every value of a field."""
        return [f for f in self.fields if f.name == name]

    def where(self, name: str) -> SourceLoc:
        """Where a field is written (else where the message is)."""
        found = self.all(name)
        return found[-1].loc if found else self.loc

    def get(self, name: str, default: str | None = None) -> str | None:
        """The last value of a scalar field (protobuf's rule for a repeated singular field)."""
        texts = self.texts(name)
        return texts[-1] if texts else default

    def texts(self, name: str) -> list[str]:
        """Every value of a repeated scalar field (`[a, b]` lists included); a message there is
        a located error."""
        return [text for _, text in self._located_texts(name)]

    def _located_texts(self, name: str) -> list[tuple[SourceLoc, str]]:
        out: list[tuple[SourceLoc, str]] = []
        for f in self.all(name):
            if isinstance(f.value, Message):
                raise _Located(f.loc, f"{name}: expected a value, found a message")
            out += [(f.loc, v) for v in (f.value if isinstance(f.value, list) else [f.value])]
        return out

    def subs(self, name: str) -> list[Message]:
        """Every value of a repeated message field; a scalar there is a located error."""
        for f in self.all(name):
            if not isinstance(f.value, Message):
                raise _Located(f.loc, f"{name}: expected a message {{ ... }}")
        return [f.value for f in self.all(name)]  # type: ignore[misc]

    def sub(self, name: str) -> Message:
        """The last value of a message field (an empty message when absent)."""
        found = self.subs(name)
        return found[-1] if found else Message([], self.loc)

    def ints(self, name: str, low: int) -> list[int]:
        """Every value of a repeated integer field, each at least `low`."""
        out = []
        for loc, text in self._located_texts(name):
            try:
                v = int(text)
            except ValueError:
                raise _Located(loc, f"{name}: expected an integer, found '{text}'") from None
            if v < low:
                raise _Located(loc, f"{name}: {v} is less than {low}")
            out.append(v)
        return out


@functools.cache
def _parser() -> lark.Lark:
    grammar = resources.files("chaosgen.interop").joinpath("prototxt.lark").read_text()
    return lark.Lark(grammar, parser="lalr", propagate_positions=True)


def parse_prototxt(path: Path) -> tuple[Message, tuple[str, ...]]:
    """A .prototxt file as a Message, and its lines (for located errors)."""
    shown = printable(str(path))
    try:
        data = path.read_bytes()[: MAX_BYTES + 1]
    except OSError as e:
        raise ChaosgenError(f"{shown}: cannot read: {e.strerror or e}") from None
    if len(data) > MAX_BYTES:
        raise ChaosgenError(f"{shown}: larger than {MAX_BYTES:,} bytes; not a Caffe prototxt")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ChaosgenError(f"{shown}: not UTF-8 text (byte {e.start}); not a prototxt") from None
    lines = tuple(text.splitlines())
    try:
        tree = _parser().parse(text)
    except lark.exceptions.UnexpectedInput as e:
        line, col = max(e.line, 1), max(e.column, 1)
        what = ("unexpected end of file" if isinstance(e, lark.exceptions.UnexpectedEOF) else
                "unexpected character" if isinstance(e, lark.exceptions.UnexpectedCharacters)
                else f"unexpected '{printable(str(e.token))}'")
        src = lines[line - 1] if 0 < line <= len(lines) else None
        raise SpecError([Diagnostic(SourceLoc(str(path), line, col),
                                    f"{what} (protobuf text format)", src)]) from None
    return _message(str(path), tree.children, SourceLoc(str(path), 1, 1)), lines


def _message(path: str, children, loc: SourceLoc) -> Message:
    fields = []
    for ch in children:
        name, rest = str(ch.children[0]), ch.children[1:]
        at = SourceLoc(path, ch.children[0].line, ch.children[0].column)
        if ch.data == "message_field":
            value: object = _message(path, rest, at)
        elif ch.data == "list_field":
            value = [_scalar(v) for v in rest]
        else:
            value = _scalar(rest[0])
        fields.append(Field(name, value, at))
    return Message(fields, loc)


def _scalar(tree) -> str:
    if tree.data == "string":  # adjacent strings are one
        return "".join(bytes(str(t)[1:-1], "utf-8").decode("unicode_escape") for t in
                       tree.children)
    return str(tree.children[0]).rstrip("fF") if tree.data == "number" else str(tree.children[0])


# --- the net ----------------------------------------------------------------------------------
def _read(msg: Message, name: str, kind: type, default=None):
    """A scalar field as `kind` (int or float), else `default`; a wrong value is located."""
    v = msg.get(name)
    if v is None:
        return default
    try:
        return kind(str(v))
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise _Located(msg.where(name), f"{name}: expected {what}, found '{v}'") from None


def _int(msg: Message, name: str, default: int | None = None) -> int | None:
    v = _read(msg, name, int, default)
    if v is not None and v < 0:
        raise _Located(msg.where(name), f"{name}: {v} is negative")
    return v


def _number(msg: Message, name: str, default: float | None = None) -> float | None:
    return _read(msg, name, float, default)


def _text(v: float) -> str:
    """A number as the spec writes it (integers without a point)."""
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(float(v))


def _hw(p: Message, what: str, default: int | None, low: int) -> tuple[int, int] | None:
    """Caffe's `what` (`kernel_size`, `stride`, `pad`: one value, or height and width) or
    `what_h` and `what_w`, each at least `low`."""
    base = {"kernel": "kernel_size"}.get(what, what)
    h, w = p.ints(f"{what}_h", low), p.ints(f"{what}_w", low)
    if h or w:
        if not (h and w):
            raise _Located(p.loc, f"{what}_h and {what}_w go together")
        return h[-1], w[-1]
    nums = p.ints(base, low)
    if len(nums) > 2:
        raise _Located(p.all(base)[2].loc, f"{base}: at most two values (height, width)")
    if not nums:
        return None if default is None else (default, default)
    return nums[0], nums[-1]


class _Net:
    """The walk over the layers, in order, along the data blob."""

    def __init__(self, path: Path, proto: Message, input_shape: tuple[int, int, int] | None):
        self.path, self.proto = path, proto
        self.statements: list[Statement] = []
        declared = self._declared_shape()
        self.shape = input_shape or declared
        self.input = self.shape  # set for good by the input layer
        self.norm: dict[str, str] = {}
        self.batch: int | None = None
        # the blob the next layer reads: a deploy net's top-level `input`, else the input layer's
        self.blob: str | None = str(proto.get("input", "data")) if declared else None
        self.act_slot: int | None = None
        self.loss: str | None = None
        self.warnings: list[str] = []  # what was left out, for the user and the file

    def _declared_shape(self) -> tuple[int, int, int] | None:
        dims = self.proto.ints("input_dim", 1)
        shapes = self.proto.subs("input_shape")
        if shapes:
            dims = shapes[0].ints("dim", 1)
        return self._nchw(dims, self.proto.loc) if dims else None

    def _nchw(self, dims: list[int], loc: SourceLoc) -> tuple[int, int, int]:
        if len(dims) != 4:
            raise _Located(loc, f"input shape {dims}: expected 4 dims (N, C, H, W)")
        return dims[1], dims[2], dims[3]

    def run(self) -> None:
        if self.proto.all("layers"):
            raise _Located(self.proto.where("layers"), "the V1 `layers` format (before 2015); "
                           "upgrade it with Caffe's upgrade_net_proto_text")
        for layer in self.proto.subs("layer"):
            if self._phase(layer) == "TEST":
                continue
            self.layer(layer)
        if not self.statements or self.statements[-1].kind != "dense":
            raise _Located(self.proto.loc, "the net must end in an InnerProduct (with its "
                           "loss or softmax): that layer is chaosgen's output")
        if self.shape is None:
            raise _Located(self.proto.loc, "no input layer")

    @staticmethod
    def _phase(layer: Message) -> str | None:
        return layer.sub("include").get("phase")

    def _param(self, layer: Message, key: str) -> Message:
        return layer.sub(key)

    def layer(self, layer: Message) -> None:
        kind = layer.get("type", "") or ""
        name = layer.get("name", "") or ""
        at = layer.where("type")
        tops, bottoms = layer.texts("top"), layer.texts("bottom")
        if kind in ("Input", *DATA_LAYERS):
            return self.data(layer, kind, tops, at)
        if kind == "Accuracy":
            return None
        if self.blob is None:
            raise _Located(at, f"layer '{name}' ({kind}) comes before the input layer")
        if not bottoms or bottoms[0] != self.blob:
            raise _Located(layer.where("bottom"), f"layer '{name}' reads '{bottoms[:1]}', not "
                           f"'{self.blob}': chaosgen imports a chain of layers")
        handler = {"Convolution": self.conv, "Pooling": self.pool, "InnerProduct": self.dense,
                   "Dropout": self.dropout, "Softmax": self.softmax,
                   "SoftmaxWithLoss": self.softmax, "EuclideanLoss": self.euclidean,
                   **{k: self.activation for k in ACTIVATIONS}}.get(kind)
        if handler is None:
            raise _Located(at, f"layer '{printable(name)}' of type {printable(kind)} is not "
                           f"supported (supported: {', '.join(SUPPORTED)})")
        if self.loss is not None:
            raise _Located(at, f"layer '{name}' follows the loss; the loss ends the net")
        handler(layer, kind, name, at)
        if tops:
            self.blob = tops[0]
        return None

    def data(self, layer: Message, kind: str, tops: list[str], at: SourceLoc) -> None:
        if self.blob is not None:
            raise _Located(at, "a second input layer")
        self.blob = tops[0] if tops else "data"
        if kind == "Input":
            shapes = self._param(layer, "input_param").subs("shape")
            if shapes:
                self.shape = self._nchw(shapes[0].ints("dim", 1), shapes[0].loc)
        if self.shape is None:
            raise _Located(at, f"the {kind} layer does not give the images' shape; add "
                           "--input-shape CxHxW (e.g. 1x28x28 for MNIST)")
        self.input = self.shape
        t = self._param(layer, "transform_param")
        scale = _number(t, "scale")
        means = [_number(Message([f], f.loc), "mean_value") or 0.0 for f in t.all("mean_value")]
        if t.get("mean_file") is not None:  # the architecture still comes in; say what not
            self.warnings.append(
                f"{t.where('mean_file')}: mean_file {printable(t.get('mean_file') or '')} (a mean "
                "image) is not imported: chaosgen subtracts a mean per channel; add "
                "mean=R,G,B (pixels in [0, 1]) to the input statement")
        for key in ("crop_size", "mirror"):
            if t.get(key) not in (None, "false", "0"):
                raise _Located(t.where(key), f"transform_param {key}: chaosgen has no "
                               "data augmentation")
        if means:
            self.norm["mean"] = ",".join(_text(m / 255) for m in means)
        if scale is not None:  # Caffe: (raw - mean_value) x scale; chaosgen: raw / 255 first
            self.norm["scale"] = _text(scale * 255)
        batch = _int(self._param(layer, "data_param"), "batch_size")
        batch = batch or _int(self._param(layer, "image_data_param"), "batch_size")
        self.batch = batch

    def _trainable(self, layer: Message, p: Message, attrs: dict[str, str]) -> None:
        """Fillers and param multipliers, as chaosgen attributes."""
        wf = p.sub("weight_filler")
        if wf.fields:
            ftype = wf.get("type", "constant")
            if ftype == "xavier":
                attrs["init"] = "xavier"
            elif ftype == "msra":
                attrs["init"] = "he"
            elif ftype == "gaussian":
                attrs.update(init="gaussian", std=_text(_number(wf, "std", 1.0)))
            elif ftype == "uniform":
                lo, hi = _number(wf, "min", 0.0), _number(wf, "max", 1.0)
                if lo != -hi:
                    raise _Located(wf.loc, f"uniform filler [{lo}, {hi}]: chaosgen's is "
                                   "symmetric (range=)")
                attrs.update(init="uniform", range=_text(hi))
            else:
                raise _Located(wf.where("type"), f"weight_filler {ftype}: not supported "
                               "(xavier, msra, gaussian, uniform)")
        bf = p.sub("bias_filler")
        if bf.fields and (_number(bf, "value", 0.0) != 0.0 or
                          bf.get("type", "constant") != "constant"):
            raise _Located(bf.loc, "bias_filler: chaosgen's biases start at 0 (constant 0)")
        if p.get("bias_term") in ("false", "0"):
            raise _Located(p.where("bias_term"), "bias_term false: chaosgen's layers have biases")
        params = layer.subs("param")
        for (w_key, b_key), src in (
            (("lr_mult", "bias_lr_mult"), "lr_mult"), (("decay_mult", "bias_decay_mult"),
                                                       "decay_mult")):
            for key, param in zip((w_key, b_key), params, strict=False):
                v = _number(param, src)
                if v is not None and v != 1:
                    attrs[key] = _text(v)

    def conv(self, layer: Message, kind: str, name: str, at: SourceLoc) -> None:
        p = self._param(layer, "convolution_param")
        if _int(p, "group", 1) != 1 or any(d != 1 for d in p.ints("dilation", 1)):
            raise _Located(p.loc, "group and dilation must be 1")
        kh, kw = _hw(p, "kernel", None, 1) or (0, 0)
        sh, sw = _hw(p, "stride", 1, 1)
        ph, pw = _hw(p, "pad", 0, 0)
        if sh != sw:
            raise _Located(p.loc, f"stride {sh}x{sw}: chaosgen's conv stride is one number")
        maps = _int(p, "num_output", 0)
        if not maps or not kh:
            raise _Located(p.loc, "num_output and kernel_size are required")
        attrs = {"maps": str(maps), "kernel": f"{kh}x{kw}"}
        if sh != 1:
            attrs["stride"] = str(sh)
        if ph or pw:
            attrs["pad"] = f"{ph}x{pw}" if ph != pw else str(ph)
        attrs["activation"] = "linear"
        self._trainable(layer, p, attrs)
        _, h, w = self.shape
        self.shape = (maps, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sh + 1)
        self._add(Statement("conv", attrs, name_or_none(name), f"{kind} '{name}'"), act=True)

    def pool(self, layer: Message, kind: str, name: str, at: SourceLoc) -> None:
        p = self._param(layer, "pooling_param")
        op = p.get("pool", "MAX")
        if op not in ("MAX", "AVE"):
            raise _Located(p.where("pool"), f"pool {op}: chaosgen pools are MAX and AVE")
        maps, h, w = self.shape
        if p.get("global_pooling", "false") in ("true", "1"):
            (kh, kw), (sh, sw) = (h, w), (1, 1)
        else:
            kh, kw = _hw(p, "kernel", None, 1) or (0, 0)
            sh, sw = _hw(p, "stride", 1, 1)
        if _hw(p, "pad", 0, 0) != (0, 0):
            raise _Located(p.where("pad"), "pooling pad: chaosgen's pools have no padding")
        if not kh or kh > h or kw > w:
            raise _Located(p.loc, f"window {kh}x{kw} over a {h}x{w} input")
        caffe = tuple(-(-(n - k) // s) + 1 for n, k, s in ((h, kh, sh), (w, kw, sw)))
        if any((o - 1) * s >= n for o, n, s in zip(caffe, (h, w), (sh, sw), strict=True)):
            raise _Located(p.where("stride"), f"stride {sh}x{sw} beyond window {kh}x{kw}: "
                           "Caffe's last window starts past the input; chaosgen cannot size it so")
        attrs = {"window": f"{kh}x{kw}", "stride": f"{sh}x{sw}" if sh != sw else str(sh)}
        if (h - kh) % sh or (w - kw) % sw:
            attrs["round"] = "ceil"
        self.shape = (maps, *caffe)
        kind_ = "maxpool" if op == "MAX" else "avgpool"
        self._add(Statement(kind_, attrs, name_or_none(name), f"Pooling '{name}'"),
                  act=op == "MAX" and self.act_slot is not None)

    def dense(self, layer: Message, kind: str, name: str, at: SourceLoc) -> None:
        p = self._param(layer, "inner_product_param")
        if _int(p, "axis", 1) != 1 or p.get("transpose", "false") != "false":
            raise _Located(p.loc, "axis must be 1 and transpose false")
        units = _int(p, "num_output", 0)
        if not units:
            raise _Located(p.loc, "num_output is required")
        attrs = {"units": str(units), "activation": "linear"}
        self._trainable(layer, p, attrs)
        self.shape = (units, 1, 1)
        self._add(Statement("dense", attrs, name_or_none(name), f"{kind} '{name}'"), act=True)

    def dropout(self, layer: Message, kind: str, name: str, at: SourceLoc) -> None:
        rate = _number(self._param(layer, "dropout_param"), "dropout_ratio", 0.5)
        self._add(Statement("dropout", {"rate": _text(rate)}, name_or_none(name),
                            f"Dropout '{name}'"), act=False)

    def activation(self, layer: Message, kind: str, name: str, at: SourceLoc) -> None:
        if kind == "ReLU" and _number(self._param(layer, "relu_param"), "negative_slope", 0):
            raise _Located(at, "a leaky ReLU (negative_slope): chaosgen's relu has slope 0")
        slot = self.act_slot
        if slot is None or self.statements[slot].attrs["activation"] != "linear":
            raise _Located(at, f"{kind} '{name}' does not follow a Convolution or InnerProduct "
                           "(max pools may come between) without an activation")
        self.statements[slot].attrs["activation"] = ACTIVATIONS[kind]

    def _last_dense(self, at: SourceLoc, what: str) -> Statement:
        last = self.statements[-1] if self.statements else None
        if last is None or last.kind != "dense" or self.act_slot != len(self.statements) - 1:
            raise _Located(at, f"{what} must follow the last InnerProduct")
        return last

    def softmax(self, layer: Message, kind: str, name: str, at: SourceLoc) -> None:
        last = self._last_dense(at, kind)
        if last.attrs["activation"] != "linear":
            raise _Located(at, f"{kind} after an activation: chaosgen's softmax is the output's")
        last.attrs["activation"] = "softmax"
        self.loss = "cross_entropy"

    def euclidean(self, layer: Message, kind: str, name: str, at: SourceLoc) -> None:
        self._last_dense(at, kind)
        self.loss = "mse"

    def _add(self, st: Statement, act: bool) -> None:
        self.statements.append(st)
        if st.kind in ("conv", "dense"):
            self.act_slot = len(self.statements) - 1
        elif not act:  # max pools keep the slot (max commutes with a monotone activation)
            self.act_slot = None


def _solver(path: Path, batch: int | None) -> tuple[dict[str, str], list[str]]:
    """The solver's settings as `train` attributes, and notes for the file's header."""
    proto, _ = parse_prototxt(path)
    b = batch or 1
    attrs: dict[str, str] = {}
    notes = []
    base_lr = _number(proto, "base_lr")
    if base_lr is not None:
        attrs["eta"] = _text(base_lr / b)
        notes.append(f"eta = base_lr {_text(base_lr)} / batch {b}: chaosgen's averaged "
                     "scheme sums the batch's gradients (train with --scheme averaged)")
    if b > 1:
        attrs["batch"] = str(b)
    for key in ("momentum", "weight_decay"):
        v = _number(proto, key)
        if v:
            attrs[key] = _text(v)
    policy = proto.get("lr_policy", "fixed")
    if policy not in POLICIES:
        raise _Located(proto.where("lr_policy"), f"lr_policy {policy}: chaosgen takes "
                       f"{', '.join(POLICIES)} from Caffe (its exp is per epoch)")
    attrs["lr_policy"] = policy
    if policy in ("step", "inv"):
        attrs["gamma"] = _text(_number(proto, "gamma", 0.0) or 0.0)
    if policy == "inv":
        attrs["power"] = _text(_number(proto, "power", 0.0) or 0.0)
    if policy == "step":
        attrs["step_size"] = str(_int(proto, "stepsize", 0))
    if proto.get("type", proto.get("solver_type", "SGD")) not in ("SGD", "Nesterov"):
        raise _Located(proto.where("type"), "solver type: chaosgen's update is SGD (momentum, "
                       "Nesterov)")
    if proto.get("type") == "Nesterov":
        attrs["nesterov"] = "true"
    max_iter = _int(proto, "max_iter")
    if max_iter:
        notes.append(f"max_iter {max_iter} x batch {b} = {max_iter * b:,} images: "
                     "epochs = that / the training images")
    notes.append("Caffe's momentum keeps the learning rate inside the velocity; chaosgen's is "
                 "torch.optim.SGD's (the same while eta is constant)")
    return attrs, notes


def import_caffe(path: Path, out: Path, solver: str | None = None,
                 input_shape: str | None = None) -> tuple[str, ir.Net, list[str]]:
    """The .net text and IR of a Caffe net prototxt (with its solver's settings as `train`),
    and warnings about what was left out; what chaosgen cannot express is a located error
    naming the layer."""
    shape = None
    if input_shape:
        try:
            c, h, w = (int(v) for v in input_shape.lower().split("x"))
            shape = (c, h, w)
        except ValueError:
            from ..errors import UsageError

            raise UsageError(f"--input-shape {input_shape}: expected CxHxW (1x28x28)") from None
    proto, lines = parse_prototxt(path)
    net = _Net(path, proto, shape)
    try:
        net.run()
        train, notes = _solver(Path(solver), net.batch) if solver else ({}, [])
    except _Located as e:
        src_lines = lines if e.loc.file == str(path) else parse_prototxt(Path(e.loc.file))[1]
        src = src_lines[e.loc.line - 1] if 0 < e.loc.line <= len(src_lines) else None
        raise SpecError([Diagnostic(e.loc, str(e), src)]) from None
    last = net.statements[-1]
    act = last.attrs.pop("activation")
    units = last.attrs.pop("units")
    last.kind = "output"
    last.attrs = {"classes": units, "activation": act,
                  "loss": net.loss or ("cross_entropy" if act == "softmax" else "mse"),
                  **last.attrs}
    m, h, w = net.input
    inp = Statement("input", {"maps": str(m), "size": f"{h}x{w}", **net.norm})
    stmts = [inp, *net.statements]
    if train:
        stmts.append(Statement("train", train))
    header = "\n".join([f"Imported by chaosgen from {path.name}"
                        + (f" and {Path(solver).name}" if solver else "")
                        + " (Caffe prototxt; weights are not imported)",
                        *([XAVIER_NOTE] if any(st.attrs.get("init") == "xavier"
                                               for st in net.statements) else []), *notes,
                        *(f"warning: {w}" for w in net.warnings)])
    name = proto.get("name") or None
    return (*write(stmts, header, name, out, printable(str(path))), net.warnings)
