"""An ONNX model (a chain of supported operators, as torch.onnx.export writes an nn.Sequential)
into a .net file and its weights.

The graph must be one chain from its one image input (N, C, H, W) to its one output. Supported:

input normalisation (Sub, Div, Mul by constants, before the first layer), Conv, MaxPool,
AveragePool, Gemm after Flatten or Reshape (the last Gemm is the output), Relu, Tanh, Sigmoid
and scaled tanh (Mul 2/3, Tanh, Mul 1.7159) as the preceding layer's activation (also across a
max pool), Softmax after the last Gemm, Dropout, Identity, Constant. The table of every
attribute: docs/interop.md, "Import (ONNX)".

An average pool with count_include_pad 1 and no pads is read as chaosgen's avgpool: at a
ceil-mode edge onnxruntime divides by the inputs inside the window either way (as PyTorch does).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from .. import ir
from ..errors import ChaosgenError, printable
from . import need
from .nettext import Statement, f32, name_or_none, write
from .onnx_export import LOSS_KEY, POOLS_KEY

SUPPORTED = ("Conv", "MaxPool", "AveragePool", "Gemm", "Flatten", "Reshape", "Relu", "Tanh",
             "Sigmoid", "Mul (scaled tanh)", "Softmax", "Dropout", "Identity", "Constant",
             "Sub/Div/Mul (input normalisation)")
ACTIVATIONS = {"Relu": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid"}
STANH = (2.0 / 3.0, 1.7159)  # LeCun's scaled tanh: 1.7159 tanh(2x/3)


class _Unsupported(Exception):
    """A node chaosgen cannot express: (node, what is wrong)."""


def _fail(node, what: str) -> _Unsupported:
    return _Unsupported(f"node '{node.name or node.output[0]}' ({node.op_type}): {what}")


def _square(values: list[int], node, what: str) -> int:
    if len(set(values)) != 1:
        raise _fail(node, f"{what} {values} differ along the axes; chaosgen's are equal")
    return values[0]


# list attributes of 2-D convolutions and pools: (length, smallest value)
_INT_LISTS = {"kernel_shape": (2, 1), "strides": (2, 1), "pads": (4, 0), "dilations": (2, 1)}


def _windows(n: int, k: int, s: int, end_pad: int, ceil_mode: bool) -> int:
    """Windows of k, s apart, over n inputs and end_pad after them: floor, or ceil with PyTorch's
    rule that the last window starts inside the input (Caffe's and chaosgen's sizes)."""
    if not ceil_mode:
        return (n + end_pad - k) // s + 1
    out = -(-(n + end_pad - k) // s) + 1
    return out - ((out - 1) * s >= n)


class _Reader:
    """Walks the chain node by node, collecting statements and weights."""

    def __init__(self, onnx, model):
        self.onnx = onnx
        g = model.graph
        self.consts: dict[str, np.ndarray] = {
            t.name: onnx.numpy_helper.to_array(t) for t in g.initializer
        }
        self.nodes = list(g.node)
        for n in self.nodes:
            if n.op_type == "Constant":
                self.consts[n.output[0]] = self._constant(n)
        self.users: dict[str, list] = defaultdict(list)
        for n in self.nodes:
            if n.op_type != "Constant":
                for t in n.input:
                    if t:
                        self.users[t].append(n)
        inputs = [i for i in g.input if i.name not in self.consts]
        if len(inputs) != 1 or len(g.output) != 1:
            raise ChaosgenError(
                f"the model has {len(inputs)} inputs and {len(g.output)} outputs; chaosgen "
                "imports a network of one image input and one output"
            )
        self.input, self.output = inputs[0], g.output[0].name
        self.graph_name = g.name
        self.opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                         default=0)
        # a chaosgen export's metadata: the loss, each pool's stride= and round= as written
        self.props = {p.key: p.value for p in model.metadata_props}
        try:
            pools = json.loads(self.props.get(POOLS_KEY, "{}"))
        except ValueError:
            pools = {}
        self.pools: dict = pools if isinstance(pools, dict) else {}
        self.statements: list[Statement] = []
        self.weights: list[dict[str, np.ndarray]] = []  # per statement: weight, bias
        self.norm: dict[str, str] = {}
        self.shape: tuple[int, int, int] = self._input_shape()
        self.rank = 4
        self.act_slot: int | None = None  # the statement an activation node would belong to
        self.softmax = False

    def _constant(self, n) -> np.ndarray:
        for a in n.attribute:
            if a.name == "value":
                return self.onnx.numpy_helper.to_array(a.t)
            if a.name in ("value_float", "value_int"):
                return np.array(self.onnx.helper.get_attribute_value(a))
        raise _fail(n, "a Constant without a tensor value")

    def _input_shape(self) -> tuple[int, int, int]:
        t = self.input.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if t.elem_type == self.onnx.TensorProto.FLOAT and len(dims) == 5:
            raise ChaosgenError(
                f"input '{self.input.name}': a volume {dims}; importing 3D models (N, C, D, H, "
                f"W) is not supported (chaosgen exports them; write the spec by hand)"
            )
        if t.elem_type != self.onnx.TensorProto.FLOAT or len(dims) != 4 or None in dims[1:]:
            raise ChaosgenError(
                f"input '{self.input.name}': expected float32 (N, C, H, W) with C, H, W fixed, "
                f"found {self.onnx.TensorProto.DataType.Name(t.elem_type)} {dims}"
            )
        return dims[1], dims[2], dims[3]

    # --- helpers ------------------------------------------------------------------------------
    def attrs(self, node, allowed: dict[str, object]) -> dict[str, object]:
        """The node's attributes, defaults filled in; an attribute not in `allowed` is refused."""
        got = {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}
        for k in got:
            if k not in allowed:
                raise _fail(node, f"attribute '{k}' is not supported (supported: "
                                  f"{', '.join(allowed) or 'none'})")
        out = dict(allowed)
        out.update(got)
        for k, v in out.items():
            if isinstance(v, bytes):
                out[k] = v.decode()
            n, low = _INT_LISTS.get(k, (0, 0))
            if n and v is not None and not (
                isinstance(v, list) and len(v) == n and all(isinstance(i, int) and i >= low
                                                            for i in v)):
                raise _fail(node, f"{k} {v}: expected {n} integers >= {low} (a 2-D image op)")
        if "kernel_shape" in allowed and out["kernel_shape"] is None and node.op_type != "Conv":
            raise _fail(node, "kernel_shape is required")
        return out

    def const(self, node, i: int, what: str) -> np.ndarray | None:
        """Input i of node as a constant (None when absent); a computed tensor is refused."""
        if i >= len(node.input) or not node.input[i]:
            return None
        name = node.input[i]
        if name not in self.consts:
            raise _fail(node, f"its {what} '{name}' is computed in the graph; chaosgen needs a "
                              "constant (an initializer)")
        return self.consts[name]

    def next_node(self, tensor: str):
        """The one node that reads `tensor` (None at the graph's output)."""
        users = self.users.get(tensor, [])
        if tensor == self.output and not users:
            return None
        if len(users) != 1:
            raise ChaosgenError(
                f"tensor '{tensor}' is read by {len(users)} nodes "
                f"({', '.join(n.op_type for n in users) or 'none'}, and it is not the output); "
                "chaosgen imports a chain of layers, one after another"
            )
        return users[0]

    def add(self, st: Statement, weights: dict[str, np.ndarray] | None = None) -> None:
        self.statements.append(st)
        self.weights.append(weights or {})

    # --- the walk -----------------------------------------------------------------------------
    def run(self) -> None:
        t = self.input.name
        node = self.next_node(t)
        while node is not None:
            if self.softmax:
                raise _fail(node, "follows the Softmax; chaosgen's softmax ends the network")
            t = self.step(node)
            node = self.next_node(t)
        if self.rank != 2 or not self.statements or self.statements[-1].kind != "dense":
            raise ChaosgenError(
                "the network must end in a Gemm (Linear), optionally with an activation or a "
                "Softmax: that layer is chaosgen's output"
            )

    def step(self, node) -> str:
        """Translate one node (a scaled tanh: three); returns the tensor the chain goes on from."""
        op = node.op_type
        layers_yet = bool(self.statements)
        if op in ("Sub", "Div", "Mul", "Add") and not layers_yet:
            return self.normalisation(node)
        if op == "Mul":
            return self.scaled_tanh(node)
        handler = {
            "Conv": self.conv, "MaxPool": self.pool, "AveragePool": self.pool,
            "Gemm": self.gemm, "Flatten": self.flatten, "Reshape": self.reshape,
            "Dropout": self.dropout, "Identity": self.identity,
            "Softmax": self.softmax_node,
            **{a: self.activation for a in ACTIVATIONS},
        }.get(op)
        if handler is None:
            raise _fail(node, f"operator not supported (supported: {', '.join(SUPPORTED)})")
        return handler(node)

    def identity(self, node) -> str:
        self.attrs(node, {})
        return node.output[0]

    def normalisation(self, node) -> str:
        """Sub(mean), Div(std), Mul(scale) by constants at the input, in that order."""
        op = node.op_type
        order = {"Sub": "mean", "Add": "mean", "Div": "std", "Mul": "scale"}
        key = order[op]
        rank = list(order.values()).index
        if any(rank(k) >= rank(key) for k in self.norm):
            raise _fail(node, "input normalisation must be Sub (mean), Div (std), Mul (scale), "
                              "each at most once, in that order")
        data, c = node.input[0], None
        if data not in self.consts:
            c = self.const(node, 1, "operand")
        elif op == "Mul":
            c, data = self.consts[data], node.input[1]
        if c is None or data in self.consts:
            raise _fail(node, "expected the image and a constant")
        maps = self.shape[0]
        v = np.asarray(c, np.float64)
        if v.size == maps and v.size > 1 and v.shape in ((maps,), (1, maps, 1, 1), (maps, 1, 1)):
            values = [float(np.float32(x)) for x in v.ravel()]
        elif v.size == 1:
            values = [float(np.float32(v.ravel()[0]))]
        else:
            raise _fail(node, f"a constant of shape {v.shape}: expected one value or one per "
                              f"input map ({maps})")
        if op == "Add":
            values = [-x for x in values]
        if key == "scale" and len(values) > 1:
            raise _fail(node, "a per-channel Mul: chaosgen's scale= is one number (use Div)")
        self.norm[key] = ",".join(f32(x) for x in values)
        return node.output[0]

    def conv(self, node) -> str:
        a = self.attrs(node, {"kernel_shape": None, "strides": [1, 1], "pads": [0, 0, 0, 0],
                              "dilations": [1, 1], "group": 1, "auto_pad": "NOTSET"})
        if self.rank != 4:
            raise _fail(node, "a Conv on a flat (N, features) tensor")
        if a["auto_pad"] not in ("NOTSET", "VALID"):
            raise _fail(node, f"auto_pad {a['auto_pad']} is not supported (give pads)")
        if list(a["dilations"]) != [1, 1] or a["group"] != 1:
            raise _fail(node, f"dilations {list(a['dilations'])} and group {a['group']}: "
                              "chaosgen convolutions have dilation 1 and group 1")
        w = self.const(node, 1, "weight")
        if w is None or w.ndim != 4 or w.shape[1] != self.shape[0]:
            raise _fail(node, f"weight of shape {None if w is None else w.shape}, expected "
                              f"(out, {self.shape[0]}, kh, kw)")
        b = self.const(node, 2, "bias")
        maps, _, kh, kw = w.shape
        if b is not None and b.shape != (maps,):
            raise _fail(node, f"bias of shape {b.shape}, expected ({maps},)")
        if a["kernel_shape"] not in (None, [kh, kw]):
            raise _fail(node, f"kernel_shape {a['kernel_shape']} is not the weight's {kh}x{kw}")
        stride = _square(list(a["strides"]), node, "strides")
        p = list(a["pads"])
        if p[0] != p[2] or p[1] != p[3]:
            raise _fail(node, f"pads {p} are not symmetric; chaosgen pads both sides alike")
        attrs = {"maps": str(maps), "kernel": f"{kh}x{kw}", "stride": str(stride)}
        if p[0] or p[1]:
            attrs["pad"] = f"{p[0]}x{p[1]}"
        attrs["activation"] = "linear"
        _, h, wd = self.shape
        self.shape = (maps, (h + 2 * p[0] - kh) // stride + 1, (wd + 2 * p[1] - kw) // stride + 1)
        self.add(Statement("conv", attrs, self._name(node), self._note(node)),
                 {"weight": w, "bias": b if b is not None else np.zeros(maps, w.dtype)})
        self.act_slot = len(self.statements) - 1
        return node.output[0]

    def pool(self, node) -> str:
        a = self.attrs(node, {"kernel_shape": None, "strides": None, "pads": [0, 0, 0, 0],
                              "ceil_mode": 0, "dilations": [1, 1], "storage_order": 0,
                              "count_include_pad": 0, "auto_pad": "NOTSET"})
        if self.rank != 4:
            raise _fail(node, "a pool on a flat (N, features) tensor")
        pads = list(a["pads"])
        if pads[0] or pads[1] or a["auto_pad"] not in ("NOTSET", "VALID"):
            raise _fail(node, f"pads {pads}: chaosgen's pools have no padding (only end pads "
                              "that make round=ceil's last, partial window)")
        if list(a["dilations"]) != [1, 1] or a["storage_order"] != 0:
            raise _fail(node, "dilations and storage_order must be the defaults")
        if node.op_type == "AveragePool" and a["count_include_pad"] and any(pads):
            raise _fail(node, "count_include_pad 1 with pads: chaosgen divides by the inputs "
                              "inside the window")
        (wh, ww) = a["kernel_shape"]
        (sh, sw) = a["strides"] or [1, 1]
        maps, h, w = self.shape
        if wh > h or ww > w:
            raise _fail(node, f"window {wh}x{ww} is larger than its input {h}x{w}")
        axes = ((h, wh, sh, pads[2]), (w, ww, sw, pads[3]))
        floor = tuple(_windows(n, k, s, 0, False) for n, k, s, _ in axes)
        ceil = tuple(_windows(n, k, s, 0, True) for n, k, s, _ in axes)
        size = tuple(_windows(n, k, s, e, bool(a["ceil_mode"])) for n, k, s, e in axes)
        if size not in (floor, ceil):
            raise _fail(node, f"pads {pads} and ceil_mode {a['ceil_mode']} make "
                              f"{size[0]}x{size[1]} windows over {h}x{w}; chaosgen's are "
                              f"{floor[0]}x{floor[1]} (round=floor) or {ceil[0]}x{ceil[1]} "
                              "(round=ceil)")
        attrs = {"window": f"{wh}x{ww}"}
        if (sh, sw) != (wh, ww):
            attrs["stride"] = f"{sh}x{sw}"
        tiles = (h - wh) % sh == 0 and (w - ww) % sw == 0
        if size != floor:
            attrs["round"] = "ceil"
        elif not tiles:
            attrs["round"] = "floor"
        attrs.update(self._spelling(node.name, (sh, sw), size == floor))
        self.shape = (maps, *size)
        kind = "maxpool" if node.op_type == "MaxPool" else "avgpool"
        self.add(Statement(kind, attrs, name_or_none(node.name), self._note(node)))
        if kind == "avgpool":
            self.act_slot = None  # an activation after an average is not the average of one
        return node.output[0]

    def gemm(self, node) -> str:
        a = self.attrs(node, {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0})
        if self.rank != 2:
            raise _fail(node, "a Gemm on a 4-D tensor (add a Flatten before it)")
        if a["alpha"] != 1.0 or a["transA"] != 0:
            raise _fail(node, f"alpha {a['alpha']}, transA {a['transA']}: expected 1 and 0")
        w = self.const(node, 1, "weight")
        if w is None or w.ndim != 2:
            raise _fail(node, f"weight of shape {None if w is None else w.shape}: expected 2-D")
        w = w.T if not a["transB"] else w
        n_in = self.shape[0] * self.shape[1] * self.shape[2]
        if w.ndim != 2 or w.shape[1] != n_in:
            raise _fail(node, f"weight of shape {w.shape} (as (out, in)), expected (out, {n_in})")
        b = self.const(node, 2, "bias")
        units = w.shape[0]
        if b is None or a["beta"] == 0:
            b = np.zeros(units, w.dtype)
        elif a["beta"] != 1.0 or b.size != units:
            raise _fail(node, f"beta {a['beta']} and a bias of shape {b.shape}: expected 1 and "
                              f"({units},)")
        self.shape = (units, 1, 1)
        self.add(Statement("dense", {"units": str(units), "activation": "linear"},
                           self._name(node), self._note(node)),
                 {"weight": np.ascontiguousarray(w), "bias": b.reshape(units)})
        self.act_slot = len(self.statements) - 1
        return node.output[0]

    def flatten(self, node) -> str:
        a = self.attrs(node, {"axis": 1})
        if a["axis"] != 1:
            raise _fail(node, f"axis {a['axis']}: chaosgen flattens each image (axis 1)")
        self.rank = 2
        return node.output[0]

    def reshape(self, node) -> str:
        self.attrs(node, {"allowzero": 0})
        shape = self.const(node, 1, "shape")
        if shape is None:
            raise _fail(node, "no shape input")
        size = self.shape[0] * self.shape[1] * self.shape[2]
        target = [int(v) for v in np.asarray(shape).ravel()]
        rest = target[1:]
        if target[:1] in ([0], [-1]) and rest in ([-1], [size]):
            self.rank = 2
        elif rest in ([size, 1, 1], [-1, 1, 1]) and self.shape[1:] == (1, 1) and target[0] in (
            0, -1
        ):
            self.rank = 4
        else:
            raise _fail(node, f"shape {target} from {self.shape}: chaosgen reshapes only to "
                              f"(N, {size}), or a flat tensor to (N, {size}, 1, 1)")
        return node.output[0]

    def dropout(self, node) -> str:
        a = self.attrs(node, {"ratio": 0.5, "seed": 0, "is_test": 1})
        ratio = self.const(node, 1, "ratio")
        if ratio is not None and ratio.size != 1:
            raise _fail(node, f"ratio of shape {ratio.shape}: expected one number")
        rate = float(ratio.ravel()[0]) if ratio is not None else float(a["ratio"])
        mode = self.const(node, 2, "training_mode")
        if mode is not None and bool(np.any(mode)):
            raise _fail(node, "training_mode is true; export the model in eval() mode")
        self.add(Statement("dropout", {"rate": f32(rate)}, name_or_none(node.name),
                           self._note(node)))
        self.act_slot = None  # inference's identity, but not while training: no activation across
        return node.output[0]

    def activation(self, node, kind: str | None = None) -> str:
        kind = kind or ACTIVATIONS[node.op_type]
        slot = self.act_slot
        if slot is None or self.statements[slot].attrs.get("activation") != "linear":
            what = "another activation" if slot is not None else "a layer without weights"
            raise _fail(node, f"follows {what}; chaosgen applies one activation to a conv or "
                              "Gemm (max pools may come between)")
        self.statements[slot].attrs["activation"] = kind
        return node.output[0]

    def scaled_tanh(self, node) -> str:
        """Mul(x, 2/3) -> Tanh -> Mul(1.7159), either operand order."""
        def factor(n) -> float | None:
            if n is None or n.op_type != "Mul":
                return None
            c = [self.consts.get(t) for t in n.input]
            v = c[1] if c[1] is not None else c[0]
            return float(v.ravel()[0]) if v is not None and v.size == 1 else None

        tanh = self.next_node(node.output[0])
        is_tanh = tanh is not None and tanh.op_type == "Tanh"
        last = self.next_node(tanh.output[0]) if is_tanh else None
        s, a = factor(node), factor(last)
        if s is None or a is None or not np.allclose((s, a), STANH, rtol=1e-6):
            raise _fail(node, "a Mul that is not part of a scaled tanh (Mul 2/3, Tanh, Mul "
                              "1.7159) or of the input's normalisation")
        self.activation(node, "scaled_tanh")
        return last.output[0]

    def softmax_node(self, node) -> str:
        a = self.attrs(node, {"axis": -1 if self.opset >= 13 else 1})
        if self.rank != 2 or a["axis"] not in (1, -1):
            raise _fail(node, f"axis {a['axis']} on a {self.rank}-D tensor: chaosgen's softmax "
                              "is over the classes of a Gemm's output")
        if self.act_slot != len(self.statements) - 1 or self.statements[-1].kind != "dense" or (
            self.statements[-1].attrs["activation"] != "linear"
        ):
            raise _fail(node, "a Softmax that does not directly follow the last Gemm")
        self.statements[-1].attrs["activation"] = "softmax"
        self.softmax = True
        return node.output[0]

    def _spelling(self, name: str, stride: tuple[int, int], same: bool) -> dict[str, str]:
        """A chaosgen export's own spelling of a pool's stride= and round= where it means what
        ONNX says (an explicit stride equal to the window; a round= that changes nothing)."""
        p = self.pools.get(name)
        if not isinstance(p, dict):
            return {}
        out = {}
        if (p.get("stride_h"), p.get("stride_w")) == stride:
            out["stride"] = f"{stride[0]}x{stride[1]}"
        if p.get("round") in ("floor", "ceil") and same:
            out["round"] = p["round"]
        return out

    # --- names --------------------------------------------------------------------------------
    def _name(self, node) -> str | None:
        """The layer's name: its weight's initializer name without `.weight` if that is a
        name (chaosgen's exports, PyTorch's named modules), else the node's, else none."""
        init = node.input[1]
        if init.endswith(".weight") and name_or_none(init[: -len(".weight")]):
            return init[: -len(".weight")]
        return name_or_none(node.name)

    def _note(self, node) -> str:
        return f"ONNX {node.op_type} '{printable(node.name or node.output[0])}'"


def import_onnx(path: Path, out: Path) -> tuple[str, ir.Net, dict[str, np.ndarray]]:
    """The .net text, its IR and its weights (get_weights() keys, float32) of the ONNX model at
    `path`; a model chaosgen cannot express is one ChaosgenError naming the node."""
    onnx = need("onnx", "ONNX import")
    shown = printable(str(path))
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf's DecodeError and friends: not an ONNX file
        raise ChaosgenError(f"{shown} is not an ONNX model ({type(e).__name__}: {e})") from None
    try:
        reader = _Reader(onnx, model)
        reader.run()
    except _Unsupported as e:
        raise ChaosgenError(f"{shown}: {e}") from None
    last = reader.statements[-1]
    act = last.attrs.pop("activation")
    last.kind = "output"
    # cross-entropy needs a softmax; a chaosgen export names its loss in the metadata
    loss = reader.props.get(LOSS_KEY)
    if loss not in ir.LOSSES or (loss == "cross_entropy" and act != "softmax"):
        loss = "cross_entropy" if act == "softmax" else "mse"
    last.attrs = {"classes": last.attrs["units"], "activation": act, "loss": loss}
    m, h, w = reader._input_shape()
    inp = Statement("input", {"maps": str(m), "size": f"{h}x{w}", **reader.norm})
    header = (f"Imported by chaosgen from {Path(path).name} (ONNX opset {reader.opset}, "
              f"producer {model.producer_name or 'unknown'} {model.producer_version})")
    name = reader.graph_name if reader.graph_name not in ("main_graph", "torch_jit") else None
    text, net = write([inp, *reader.statements], header, name, out, shown)
    weights = {}
    for lay, wb in zip(net.layers, reader.weights, strict=True):
        if isinstance(lay, ir.Trainable):
            for key, shape in (("weight", lay.weight_shape), ("bias", (lay.n_bias,))):
                a = np.asarray(wb[key])
                if a.shape != shape:
                    raise ChaosgenError(f"{shown}: layer {lay.name}: {key} of shape {a.shape}, "
                                        f"expected {shape}")
                if a.dtype != np.float32:
                    a = a.astype(np.float32)
                weights[f"{lay.name}.{key}"] = a
    return text, net, weights
