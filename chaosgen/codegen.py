"""Stage 3: IR -> C++. Python computes every number a template prints; templates only print."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path, PurePath

import jinja2

from . import __version__, ir
from .targets import Target

UNROLL_LIMIT = 16  # kernel and window loops up to this trip count carry a full-unroll pragma
HEADER_NAME = "chaosgen_api.h"


def template_dir() -> Path:
    """templates/ inside the installed package, or at the top of a source checkout."""
    here = Path(__file__).resolve().parent
    for cand in (here / "templates", here.parent / "templates"):
        if (cand / "net.cpp.j2").is_file():
            return cand
    raise FileNotFoundError("chaosgen templates not found (broken installation)")


@functools.cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


@dataclass(frozen=True, slots=True)
class Source:
    """The generated translation unit and its C API header."""

    cpp: str
    header: str
    header_name: str = HEADER_NAME


def display_path(path: str) -> str:
    """The spec path as printed in generated code: relative as given, never absolute."""
    p = PurePath(path)
    return p.name if p.is_absolute() else p.as_posix()


def summary_rows(net: ir.Net) -> list[str]:
    """The paper's Table 2: layer, maps, map size, neurons, kernel, weights."""
    rows = [("layer", "kind", "maps", "map size", "neurons", "kernel", "weights")]
    i = net.input
    rows.append(("input", "input", str(i.maps), f"{i.h}x{i.w}", str(i.size), "", ""))
    for lay in net.layers:
        o = lay.out_shape
        kernel = ""
        if isinstance(lay, ir.Conv):
            kernel = f"{lay.kh}x{lay.kw}" + (f" /{lay.stride}" if lay.stride > 1 else "")
        elif isinstance(lay, ir.Pool):
            kernel = f"{lay.wh}x{lay.ww}"
        size = f"{o.h}x{o.w}" if not isinstance(lay, ir.Dense) else "1"
        n_par = lay.n_weights + lay.n_bias
        rows.append(
            (lay.name, lay.kind, str(o.maps), size, str(o.size), kernel, str(n_par) if n_par else "")
        )
    total = sum(lay.n_weights + lay.n_bias for lay in net.layers)
    rows.append(("total", "", "", "", "", "", str(total)))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]


def _map_block(lay: ir.Conv, target: Target) -> int:
    """Output maps per register block: the largest divisor of the map count whose accumulators
    (maps x row vectors) fit in the accumulator budget of the target's vector registers."""
    vectors_per_row = math.ceil(lay.out_shape.w / target.vector_width)
    best = 1
    for ob in range(1, min(lay.out_shape.maps, 8) + 1):
        if lay.out_shape.maps % ob == 0 and ob * vectors_per_row <= target.accumulators:
            best = ob
    return best


def _layer_views(net: ir.Net, target: Target, lines: tuple[str, ...]) -> list[dict]:
    views: list[dict] = []
    off = 0
    first_trainable = min(lay.index for lay in net.trainable)
    for lay in net.layers:
        size = ir.align(lay.out_shape.size)
        prev = views[-1]["name"] if views else None
        src = lines[lay.loc.line - 1].split("#")[0].strip() if 0 < lay.loc.line <= len(lines) else ""
        v = dict(
            name=lay.name,
            ns=f"layer_{lay.name}",
            index=lay.index,
            kind="pool" if isinstance(lay, ir.Pool) else ("conv" if isinstance(lay, ir.Conv) else "dense"),
            template="pool.j2" if isinstance(lay, ir.Pool) else ("conv.j2" if isinstance(lay, ir.Conv) else "dense.j2"),
            source=f"{display_path(net.path)}:{lay.loc.line}: {src}",
            in_maps=lay.in_shape.maps, in_h=lay.in_shape.h, in_w=lay.in_shape.w,
            in_size=lay.in_shape.size,
            out_maps=lay.out_shape.maps, out_h=lay.out_shape.h, out_w=lay.out_shape.w,
            y_off=off, d_off=off + size,
            x="image" if prev is None else f"work + Y_{prev}",
            dx=None if prev is None else f"work + D_{prev}",
            needs_dx=lay.index > first_trainable,
            is_output=isinstance(lay, ir.Output),
            activation=getattr(lay, "activation", "linear"),
        )
        off += 2 * size
        if isinstance(lay, ir.Trainable):
            v.update(
                w_offset=lay.w_offset,
                b_offset=lay.b_offset,
                block_size=lay.b_offset + lay.n_bias - lay.w_offset,
                block=[t.index for t in net.trainable].index(lay.index),
            )
        if isinstance(lay, ir.Conv):
            v.update(kh=lay.kh, kw=lay.kw, stride=lay.stride, map_block=_map_block(lay, target))
        if isinstance(lay, ir.Pool):
            v.update(op=lay.op, wh=lay.wh, ww=lay.ww)
        views.append(v)
    return views


def render(net: ir.Net, target: Target, lines: tuple[str, ...] = ()) -> Source:
    """Render the C++ translation unit and its API header for one (network, target)."""
    layers = _layer_views(net, target, lines)
    last = layers[-1]
    ctx = dict(
        version=__version__,
        net=dict(name=net.name, path_display=display_path(net.path), input=str(net.input)),
        target=target,
        ir_hash=net.digest(),
        summary=summary_rows(net),
        header_name=HEADER_NAME,
        layers=layers,
        backward=[v for v in reversed(layers) if v["index"] >= min(t.index for t in net.trainable)],
        blocks=[v for v in layers if "block" in v],
        out=dict(name=last["name"], activation=net.output.activation, loss=net.output.loss),
        loss_text="cross-entropy of the softmax output" if net.output.loss == "cross_entropy"
        else "half the squared error against the one-hot target",
        n_params=net.n_params,
        image_size=net.input.size,
        image_stride=ir.align(net.input.size),
        output_size=net.output.out_shape.size,
        work_floats=max(layers[-1]["d_off"] + ir.align(last["out_maps"]), 16),
        unroll_limit=UNROLL_LIMIT,
    )
    env = _env()
    cpp = env.get_template("net.cpp.j2").render(ctx)
    header = env.get_template("api.h.j2").render(ctx)
    return Source(cpp=cpp, header=header)
