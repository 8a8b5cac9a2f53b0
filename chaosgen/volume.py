"""Stage 3 for volumes: the numbers the 3D kernels (templates/conv3d.j2, pool3d.j2) print.

3D layers get direct kernels of their own, with every size a compile-time constant and the
innermost (W) axis vectorized; the 2D kernels and their planning in codegen.py are untouched."""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import ir
from .errors import Diagnostic, SpecError
from .targets import Target

# The kernels keep a block's accumulators, whole rows along W, in arrays on the thread's stack
# (registers, when they fit): a bound of 128 KB keeps far below any thread's stack (2 MB or more)
# and allows rows of 32,768 floats, wider than any volume that fits MAX_FLOATS sensibly.
MAX_ACC_FLOATS = 32768


def is_volume(lay: ir.Layer) -> bool:
    """A conv or pool layer on volumes (3D); dense layers flatten either."""
    return isinstance(lay, (ir.Conv, ir.Pool)) and lay.in_shape.volume


@dataclass(frozen=True, slots=True)
class MapBlock:
    """Maps per register block, `maps` at a time up to `full`, then one block of `rem`."""

    maps: int
    full: int
    rem: int


def _block(maps: int, vectors_each: int, budget: int) -> MapBlock:
    """As many maps per block as their accumulators (each map `vectors_each` vectors) fit in
    the target's budget: each map's sum is its own dependency chain, so a block of several hides
    the FMA latency that a single row's chain waits on. The rest of the maps form one smaller
    block."""
    m = max(1, min(maps, budget // vectors_each))
    return MapBlock(maps=m, full=maps - maps % m, rem=maps % m)


def view(lay: ir.Layer, needs_dx: bool, target: Target) -> dict:
    """A 3D layer's constants, its template, and the scratch it needs after its activations
    (`y_scratch`: a conv's copy XP of its input, zero-bordered if padded) and after its deltas
    (`d_slack` right after them, then `d_scratch`: the deltas of XP if padded, and the spread
    deltas backward data reads)."""
    i, o = lay.in_shape, lay.out_shape
    v = dict(volume=True, in_d=i.d, out_d=o.d, y_scratch=0, d_slack=0, d_scratch=0)
    if isinstance(lay, ir.Pool):
        # with round=ceil the last window along an axis may run past the input: clipped
        clipped = any((n_out - 1) * st + k > n for n, n_out, k, st in zip(
            i.dims, o.dims, lay.window, lay.strides, strict=True))
        return dict(v, template="pool3d.j2", wd=lay.wd, sd=lay.sd, sh=lay.sh, sw=lay.sw,
                    clipped=clipped)
    assert isinstance(lay, ir.Conv)
    xp = tuple(n + 2 * p for n, p in zip(i.dims, lay.pad, strict=True))
    padded = any(lay.pad)
    # Rows run in whole vectors: forward's and the weight gradient's last row reads XP up to
    # (span - 1) * stride + kw - 1 past its start; the weight gradient reads span deltas.
    vw, budget = target.vector_width, target.accumulators
    span = ir.align(o.w, vw)
    xp_span = ir.align(xp[2], vw)
    last_row = i.maps * math.prod(xp) - xp[2]
    xp_floats = ir.align(max(i.maps * math.prod(xp), last_row + (span - 1) * lay.stride + lay.kw))
    # backward data reads each delta row spread to the stride with kw - 1 zeros before it, and
    # after it as many as the last vector's widest shift reads
    dz_row = xp_span + lay.kw - 1
    dz_floats = ir.align(o.maps * o.d * o.h * dz_row) if needs_dx else 0
    dxp_floats = ir.align(i.maps * math.prod(xp)) if padded and needs_dx else 0
    widest = max(span, xp_span, lay.kw * span)
    if widest > MAX_ACC_FLOATS:
        raise SpecError([Diagnostic(lay.loc, (
            f"{lay.kind} '{lay.name}': rows of {widest} accumulators (the kernel's width x the "
            f"output's, or the padded input's width, in whole vectors) exceed the 3D kernels' "
            f"bound of {MAX_ACC_FLOATS}: use a narrower volume or kernel"))])
    return dict(
        v, kind="conv3d", template="conv3d.j2", kd=lay.kd, kh=lay.kh, kw=lay.kw,
        stride=lay.stride, pad_d=lay.pad_d, pad_h=lay.pad_h, pad_w=lay.pad_w,
        xp_d=xp[0], xp_h=xp[1], xp_w=xp[2], xp_vol=math.prod(xp), out_vol=math.prod(o.dims),
        span=span, xp_span=xp_span, padded=padded,
        # register blocks: forward over output maps, backward data over input maps, the weight
        # gradient over output maps (each with KW accumulator rows)
        f=_block(o.maps, span // vw, budget), b=_block(i.maps, xp_span // vw, budget),
        g=_block(o.maps, lay.kw * span // vw, budget),
        xp_floats=xp_floats, y_scratch=xp_floats,
        d_slack=span - o.w, dz_row=dz_row, dz_after_dxp=dxp_floats,
        d_scratch=dxp_floats + dz_floats,
    )
