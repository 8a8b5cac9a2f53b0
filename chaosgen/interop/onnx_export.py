"""A checked network and its weights as an ONNX model of standard operators (opset OPSET).

One image batch in, the output layer's activations out:

    input  float32 (N, maps, h, w): pixels as chaosgen loads them (uint8 data as v / 255)
    output float32 (N, classes): what `Net.forward` returns (softmax probabilities by default)

Each layer becomes the operators below; every node and tensor is named after the layer it
comes from (`c1`, `c1.z`, ...), and every weight initializer as `get_weights()` keys it.

Conv (pads, strides), MaxPool and AveragePool (count_include_pad 0; round=ceil's partial
windows as end pads), Flatten and Gemm (transB 1) for dense layers, Reshape to (N, units, 1, 1)
before a conv or pool that follows a dense, Dropout in inference form, Relu, Tanh, Sigmoid,
Identity, Mul-Tanh-Mul for scaled tanh, Softmax, and Sub/Div/Mul for the input's mean, std and
scale. The table, and why end pads rather than ceil_mode: docs/interop.md, "Export".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import __version__, ir
from ..build import atomic_write
from ..errors import ChaosgenError
from . import need

OPSET = 17  # ONNX 1.12 (2022): every operator above; onnxruntime >= 1.12 runs it
STANH_S = np.float32(0.66666667)  # templates/prelude.hpp CG_STANH_S
STANH_A = np.float32(1.7159)  # templates/prelude.hpp CG_STANH_A
INPUT, OUTPUT = "input", "output"
LOSS_KEY = "chaosgen.loss"  # metadata_props: the output layer's loss
POOLS_KEY = "chaosgen.pools"  # metadata_props: each pool's stride and round as the spec wrote them


class _Graph:
    """Nodes and initializers being collected, with the tensor the next layer reads."""

    def __init__(self, onnx):
        self.onnx = onnx
        self.nodes: list = []
        self.inits: list = []

    def const(self, name: str, value: np.ndarray) -> str:
        """An initializer (float32 or int64 as given) named `name`."""
        self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], out: str, name: str, **attrs) -> str:
        """One node; returns its output tensor's name."""
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], name=name, **attrs))
        return out


def _pool_end_pads(lay: ir.Pool) -> tuple[int, ...]:
    """Rows and columns (and planes, on volumes) to add after the input so that whole windows
    reach round=ceil's last, partial one (0 where the windows fit). Written as pads, not as
    ceil_mode: ONNX's shape inference sizes ceil_mode without PyTorch's rule that a last window
    starts inside the input, per axis, so one axis's ceil may not be another's."""
    return tuple(max(0, (o - 1) * s + k - n) for n, o, k, s in zip(
        lay.in_shape.dims, lay.out_shape.dims, lay.window, lay.strides, strict=True))


def _activation(g: _Graph, act: str, z: str, name: str, out: str) -> str:
    """The activation `act` of tensor z, its result named `out`."""
    if act == "linear":
        return g.node("Identity", [z], out, f"{name}/linear")
    if act == "scaled_tanh":
        s = g.node("Mul", [z, g.const(f"{name}.stanh_s", STANH_S)], f"{name}.s", f"{name}/mul_s")
        t = g.node("Tanh", [s], f"{name}.t", f"{name}/tanh")
        return g.node("Mul", [t, g.const(f"{name}.stanh_a", STANH_A)], out, f"{name}/mul_a")
    op = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "softmax": "Softmax"}[act]
    attrs = {"axis": 1} if op == "Softmax" else {}
    return g.node(op, [z], out, f"{name}/{act}", **attrs)


def to_onnx(net: ir.Net, weights: dict[str, np.ndarray]):
    """The ModelProto of `net` with `weights` (get_weights() keys), checked by onnx.checker."""
    onnx = need("onnx", "ONNX export")
    g = _Graph(onnx)
    spatial = len(net.input.dims)  # 2 (planes) or 3 (volumes): ONNX's Conv and pools take both
    x, rank = INPUT, 2 + spatial
    maps = net.input.maps
    if net.norm is not None:  # (x - mean) / std * scale, per channel or for all
        def per_channel(v: tuple[float, ...]) -> np.ndarray:
            a = np.asarray(v, np.float32)
            return a.reshape(1, maps, *[1] * spatial) if a.size > 1 else a.reshape(())

        x = g.node("Sub", [x, g.const("input.mean", per_channel(net.norm.mean))],
                   "input.centred", "input/mean")
        x = g.node("Div", [x, g.const("input.std", per_channel(net.norm.std))],
                   "input.scaled", "input/std")
        x = g.node("Mul", [x, g.const("input.scale", np.float32(net.norm.scale))],
                   "input.normalised", "input/scale")
    for lay in net.layers:
        n = lay.name
        out = OUTPUT if isinstance(lay, ir.Output) else f"{n}.y"
        if isinstance(lay, (ir.Conv, ir.Pool)) and rank == 2:  # after a dense: units x 1 x 1
            ones = [1] * spatial
            shape = g.const(f"{n}.shape", np.array([-1, lay.in_shape.maps, *ones], np.int64))
            x, rank = g.node("Reshape", [x, shape], f"{n}.x", f"{n}/reshape"), 2 + spatial
        if isinstance(lay, ir.Conv):
            w = g.const(f"{n}.weight", weights[f"{n}.weight"])
            b = g.const(f"{n}.bias", weights[f"{n}.bias"])
            z = g.node("Conv", [x, w, b], f"{n}.z", n, kernel_shape=list(lay.kernel),
                       strides=[lay.stride] * spatial, pads=list(lay.pad) * 2,
                       dilations=[1] * spatial, group=1)
            x = _activation(g, lay.activation, z, n, out)
        elif isinstance(lay, ir.Pool):
            attrs = dict(kernel_shape=list(lay.window), strides=list(lay.strides),
                         pads=[0] * spatial + list(_pool_end_pads(lay)))
            if lay.op == "avg":  # the divisor: the inputs inside the window, pads not counted
                x = g.node("AveragePool", [x], out, n, count_include_pad=0, **attrs)
            else:
                x = g.node("MaxPool", [x], out, n, **attrs)
        elif isinstance(lay, ir.Dropout):
            ratio = g.const(f"{n}.ratio", np.float32(lay.rate))
            x = g.node("Dropout", [x, ratio], out, n)
        elif isinstance(lay, ir.Dense):
            if rank > 2:
                x, rank = g.node("Flatten", [x], f"{n}.x", f"{n}/flatten", axis=1), 2
            w = g.const(f"{n}.weight", weights[f"{n}.weight"])
            b = g.const(f"{n}.bias", weights[f"{n}.bias"])
            z = g.node("Gemm", [x, w, b], f"{n}.z", n, alpha=1.0, beta=1.0, transB=1)
            x = _activation(g, lay.activation, z, n, out)
        else:  # a new layer kind must be given its operators here
            raise AssertionError(f"no ONNX form for {lay.kind}")
    h = onnx.helper
    s = net.input
    graph = h.make_graph(
        g.nodes, net.name,
        [h.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, ["N", s.maps, *s.dims])],
        [h.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT,
                                  ["N", net.output.out_shape.size])],
        initializer=g.inits,
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)],
                         producer_name="chaosgen", producer_version=__version__)
    # The loss is training, not inference; kept so that an import gives the same network back.
    # So are the pools' stride= and round= as written where ONNX has one spelling for two
    # (stride=2 on a 2x2 window; round= on windows that tile): they are part of the IR's digest.
    pools = {lay.name: {"stride_h": lay.stride_h, "stride_w": lay.stride_w, "round": lay.round,
                        **({"stride_d": lay.stride_d} if lay.wd else {})}
             for lay in net.layers if isinstance(lay, ir.Pool)}
    h.set_model_props(model, {LOSS_KEY: net.output.loss, POOLS_KEY: json.dumps(pools)})
    model.doc_string = f"{net.name} from {Path(net.path).name} (chaosgen IR {net.digest()})"
    onnx.checker.check_model(model, full_check=True)
    return model


def export(net: ir.Net, weights: dict[str, np.ndarray], out: str | Path) -> int:
    """Write `net` with `weights` as ONNX to `out` (atomically); returns the file's size."""
    data = to_onnx(net, weights).SerializeToString()
    try:
        atomic_write(Path(out), data)
    except OSError as e:
        raise ChaosgenError(f"cannot write {out}: {e.strerror or e}") from None
    return len(data)
