"""Stage 3 for volumes: the numbers the 3D kernels (templates/conv3d.j2, pool3d.j2) print.

3D layers get direct kernels of their own, with every size a compile-time constant and the
innermost (W) axis vectorized; the 2D kernels and their planning in codegen.py are untouched."""

from __future__ import annotations

import math

from . import ir


def is_volume(lay: ir.Layer) -> bool:
    """A conv or pool layer on volumes (3D); dense layers flatten either."""
    return isinstance(lay, (ir.Conv, ir.Pool)) and lay.in_shape.volume


def view(lay: ir.Layer, needs_dx: bool) -> dict:
    """A 3D layer's constants, its template, and the scratch it needs after its activations
    (`y_scratch`: a padded conv's zero-bordered input XP) and after its deltas (`d_scratch`:
    the deltas of XP)."""
    i, o = lay.in_shape, lay.out_shape
    v = dict(volume=True, in_d=i.d, out_d=o.d, y_scratch=0, d_scratch=0)
    if isinstance(lay, ir.Pool):
        return dict(v, template="pool3d.j2", wd=lay.wd, sd=lay.sd, sh=lay.sh, sw=lay.sw)
    assert isinstance(lay, ir.Conv)
    xp = tuple(n + 2 * p for n, p in zip(i.dims, lay.pad, strict=True))
    padded = any(lay.pad)
    xp_floats = ir.align(i.maps * math.prod(xp)) if padded else 0
    return dict(
        v, kind="conv3d", template="conv3d.j2", kd=lay.kd, kh=lay.kh, kw=lay.kw,
        stride=lay.stride, pad_d=lay.pad_d, pad_h=lay.pad_h, pad_w=lay.pad_w,
        xp_d=xp[0], xp_h=xp[1], xp_w=xp[2], xp_vol=math.prod(xp), out_vol=math.prod(o.dims),
        padded=padded, xp_floats=xp_floats, y_scratch=xp_floats,
        d_scratch=xp_floats if padded and needs_dx else 0,
    )
