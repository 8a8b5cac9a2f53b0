"""Stage 3: IR -> C++. Python computes every number a template prints; templates only print."""

from __future__ import annotations

import dataclasses
import functools
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath

import jinja2

from . import __version__, fft, ir, volume
from .errors import Diagnostic, SourceLoc, SpecError
from .targets import Target

UNROLL_LIMIT = 16  # kernel and window loops up to this trip count carry a full-unroll pragma
HEADER_NAME = "chaosgen_api.h"
# A backstop behind check.MAX_LAYERS (64 layers generate at most about 0.8 MB): g++ -O3 needs
# about 1 s and 15 MB per 30 kB of this code (docs/language.md, "Limits"); the shipped nets
# generate 60 to 75 kB.
MAX_CODE_BYTES = 1_500_000


def fftw_libs(target: Target) -> tuple[str, ...]:
    """What a build links for FFT convolutions: FFTW's single-precision library; on KNC, MKL's
    FFTW3 interface (icc -mkl: the wrappers are part of MKL; fft.hpp includes its fftw3.h)."""
    return ("-mkl",) if target.name == "knc" else ("-lfftw3f",)


def link_flags(net: ir.Net, target: Target, forms: Mapping[str, str] | None = None
               ) -> tuple[str, ...]:
    """Linker flags the generated code of `net` needs (after the sources)."""
    views = layer_views(net, target, (), forms)
    return fftw_libs(target) if any(v.get("algorithm") == "fft" for v in views) else ()


# --- user text in generated files: one escaping helper per destination (Jinja filters) ------
def comment_text(text: str) -> str:
    """`text` as one line of a C, C++ or shell comment: ASCII only, no line break, no `/*` or
    `*/`, no `??/` trigraph and no backslash at the end (a line splice would swallow the next
    line of code); every character replaced is written <U+XXXX>."""
    out = "".join(c if " " <= c <= "~" or c == "\t" else f"<U+{ord(c):04X}>" for c in text)
    out = out.replace("*/", "*<U+002F>").replace("/*", "/<U+002A>").replace("??/", "??<U+002F>")
    out = out.rstrip(" \t")
    if out.endswith("\\"):
        out = out[:-1] + "<U+005C>"
    return out


def c_string(text: str) -> str:
    """`text` as the inside of a C/C++ string literal: the same bytes (UTF-8; a file name's
    undecodable bytes as they were), `\\`, `"` and `?` (trigraphs) escaped, everything outside
    printable ASCII as a three-digit octal escape (which, unlike \\x, never swallows a digit
    after it)."""
    out = []
    for b in text.encode("utf-8", "surrogateescape"):
        c = chr(b)
        out.append("\\" + c if c in '\\"?' else c if 0x20 <= b <= 0x7E else f"\\{b:03o}")
    return "".join(out)


def shell_word(text: str) -> str:
    """`text` as one word of a POSIX shell command line (quoted only if it needs to be)."""
    return shlex.quote(text)


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_names(net: ir.Net) -> None:
    """Names land unescaped in identifiers, strings and scripts: the grammar and check.py make
    them ASCII identifiers; a name that is not is a bug in chaosgen."""
    for name in (net.name, *(lay.name for lay in net.layers)):
        assert _IDENT.fullmatch(name), f"not an identifier: {name!r}"


def template_dir() -> Path:
    """templates/ inside the installed package, or at the top of a source checkout."""
    here = Path(__file__).resolve().parent
    for cand in (here / "templates", here.parent / "templates"):
        if (cand / "net.cpp.j2").is_file():
            return cand
    raise FileNotFoundError("chaosgen templates not found (broken installation)")


@functools.cache
def environment() -> jinja2.Environment:
    """The one strict Jinja2 environment of all templates (StrictUndefined, trimmed blocks)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters.update(comment_text=comment_text, c_string=c_string, shell_word=shell_word)
    return env


@dataclass(frozen=True, slots=True)
class Source:
    """The generated translation unit and its C API header."""

    cpp: str
    header: str
    header_name: str = HEADER_NAME
    libs: tuple[str, ...] = ()  # linker flags the code needs (after the sources)


def display_path(path: str) -> str:
    """The spec path as printed in generated code: relative as given, never absolute."""
    p = PurePath(path)
    return p.name if p.is_absolute() else p.as_posix()


def summary_rows(net: ir.Net) -> list[str]:
    """The paper's Table 2: layer, maps, map size, neurons, kernel, weights."""
    rows = [("layer", "kind", "maps", "map size", "neurons", "kernel", "weights")]
    i = net.input
    rows.append(("input", "input", str(i.maps), _x(i.dims), str(i.size), "", ""))
    for lay in net.layers:
        o = lay.out_shape
        kernel = ""
        if isinstance(lay, ir.Conv):
            kernel = _x(lay.kernel) + (f" /{lay.stride}" if lay.stride > 1 else "")
            if any(lay.pad):
                kernel += f" pad {_x(lay.pad)}"
        elif isinstance(lay, ir.Pool):
            kernel = _x(lay.window)
            if lay.strides != lay.window:
                kernel += f" /{_x(lay.strides)}"
            if lay.round:
                kernel += f" {lay.round}"
        elif isinstance(lay, ir.Dropout):
            kernel = f"rate {lay.rate:g}"
        size = _x(o.dims) if not isinstance(lay, ir.Dense) else "1"
        n_par = lay.n_weights + lay.n_bias
        params = str(n_par) if n_par else ""
        rows.append((lay.name, lay.kind, str(o.maps), size, str(o.size), kernel, params))
    total = sum(lay.n_weights + lay.n_bias for lay in net.layers)
    rows.append(("total", "", "", "", "", "", str(total)))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _x(dims: tuple[int, ...]) -> str:
    """Sizes as a spec writes them: 5x5, 3x5x5."""
    return "x".join(map(str, dims))


@dataclass(frozen=True, slots=True)
class WideBlock:
    """Register blocking of a wide-row correlation: `maps` output planes at a time, each computed
    `rows` output rows at a time as one span of `vecs` vectors (rows `pitch` apart, the columns
    between them thrown away). A row too long for the registers is cut into `cols` pieces."""

    rows: int
    cols: int  # pieces per row (then rows == 1), else 1
    vecs: int
    span: int  # vecs x vector width: the constant trip count of the vector loop
    maps: int
    chunks: int  # row chunks x cols; the last row chunk may run past the last row
    full: int  # maps covered by whole blocks; the other maps % `maps` form one smaller block
    rem: int

    def edges(self, rows_total: int, row_len: int) -> dict:
        """What the chunks store, as constants (a store loop of run-time length made gcc keep
        the accumulators in memory): `rows` rows of `row_max` values each, except the last row
        chunk (`last_rows` rows, if `short_rows`) and the last piece of every row (`last_n`
        values, if `short_cols`), for a pass over `rows_total` rows of `row_len`."""
        last_rows = rows_total - (self.chunks // self.cols - 1) * self.rows
        row_max = min(row_len, self.span)
        last_n = row_len - (self.cols - 1) * self.span
        return dict(rows_total=rows_total, row_max=row_max, last_rows=last_rows, last_n=last_n,
                    short_rows=last_rows < self.rows, short_cols=last_n < row_max)

    def last_start(self, pitch: int) -> int:
        """Wide index where the last chunk starts."""
        return (self.chunks // self.cols - 1) * self.rows * pitch + (self.cols - 1) * self.span


# cycles from an FMA to the next on the same accumulator (Skylake to Sapphire Rapids, Zen 2 to 5)
FMA_LATENCY = 4


def _core_cycles(fmas: int, loads: int, target: Target) -> int:
    """Estimated cycles of one step of a register-blocked loop: `fmas` FMAs into as many
    independent accumulators (target.fma_pipes per cycle, each accumulator's next FMA at least
    FMA_LATENCY cycles later: fewer accumulators than latency x pipes leave the pipes idle) and
    `loads` cycles of loads and broadcasts."""
    if not fmas:
        return 0
    return max(-(-fmas // target.fma_pipes), FMA_LATENCY, loads)


def _block_cycles(maps: int, vecs: int, target: Target) -> int:
    """Estimated cycles per tap and input plane of one wide-row block (see _wide_block)."""
    return _core_cycles(maps * vecs, 2 * vecs + maps, target)


def _wide_block(rows: int, width: int, pitch: int, maps: int, target: Target,
                max_maps: int | None = None) -> WideBlock:
    """The blocking with the fewest estimated cycles: per tap and input plane a block of m maps
    and v vectors does m * v FMAs (one per cycle) and v unaligned input loads (which straddle
    cache lines: about two cycles each) plus m weight broadcasts; the accumulators (m * v
    vectors) must fit the target's budget, and m at most `max_maps`."""
    vw, budget = target.vector_width, target.accumulators
    maps_cap = min(maps, max_maps or maps)
    shapes = []  # (rows per chunk, pieces per row, vectors)
    for r in range(1, rows + 1):
        vecs = -(-((r - 1) * pitch + width) // vw)
        if vecs > budget:
            break
        shapes.append((r, 1, vecs))
    if width > vw:  # pieces of one row (the only way when a row is longer than the registers)
        shapes += [(1, -(-width // (v * vw)), v) for v in range(1, budget + 1) if v * vw < width]
    best: tuple | None = None
    for r, cols, vecs in shapes:
        chunks = -(-rows // r) * cols
        for m in range(1, min(maps_cap, budget // vecs) + 1):
            cost = chunks * (maps // m * _block_cycles(m, vecs, target)
                             + _block_cycles(maps % m, vecs, target))
            key = (cost, -m, chunks)
            if best is None or key < best[0]:
                best = (key, WideBlock(rows=r, cols=cols, vecs=vecs, span=vecs * vw, maps=m,
                                       chunks=chunks, full=maps - maps % m, rem=maps % m))
    assert best is not None
    return best[1]


REDUCE_COST = 8  # cycles to add up the lanes of one accumulator vector (log2(16) shuffle+adds)


def _dot_block(maps: int, cols: int, vecs: int, target: Target) -> tuple[int, int, int]:
    """(maps, taps, cycles per kernel row and input map) of the weight gradient as dot products:
    per vector a block of m maps x t taps of one kernel row loads m deltas and t unaligned
    inputs and does m * t FMAs, then adds up the lanes of its m * t accumulators."""
    budget = target.accumulators

    def cycles(m: int, t: int) -> int:
        if not (m and t):
            return 0
        return vecs * _core_cycles(m * t, m + 2 * t, target) + m * t * REDUCE_COST

    best: tuple | None = None
    for m in range(1, min(maps, budget) + 1):
        for t in range(1, min(cols, budget // m) + 1):
            total = sum(cycles(mm, tt) * nm * nt for mm, nm in ((m, maps // m), (maps % m, 1))
                        for tt, nt in ((t, cols // t), (cols % t, 1)))
            key = (total, -m * t, -t)
            if best is None or key < best[0]:
                best = (key, (m, t, total))
    assert best is not None
    return best[1]


SCATTER_COST = 1  # cycles per gradient value added into G from a transposed tile
EXTRACT_COST = 3  # cycles per gradient row added into G from a wide-row accumulator
DOT_SLOWDOWN = 2.2  # measured / estimated cycles of the dot form (Zen 4: unaligned loads)
TRANSPOSE_COST = 1  # cycles per delta copied into the transposed (position-major) layout
UNROLL_COST = 2  # cycles per copy instruction into the unrolled input of the taps form
# measured / estimated cycles of the taps form (Zen 4). 0.95, was 1.1: of the 12 conv layers of
# specs/ that `chaosgen tune` measured (all but lenet's), the model now picks the best on 8, was 3
TAPS_SLOWDOWN = 0.95


def _lanes_block(maps: int, kh: int, kw: int, positions: int, target: Target) -> dict | None:
    """The weight gradient vectorized over output maps: per output position a block of kr whole
    kernel rows x ov map vectors loads ov deltas and kr * kw input values (broadcast) and does
    kr * kw * ov FMAs. None if one kernel row does not fit the accumulator budget."""
    vw, budget = target.vector_width, target.accumulators
    vecs = -(-maps // vw)
    ov = min(vecs, budget // kw)
    if ov < 1:
        return None
    kr = min(kh, budget // (kw * ov))

    def cycles(rows: int, v: int) -> int:
        return _core_cycles(rows * kw * v, v + rows * kw, target) if rows and v else 0

    per_position = sum(cycles(r, v) * nr * nv for r, nr in ((kr, kh // kr), (kh % kr, 1))
                       for v, nv in ((ov, vecs // ov), (vecs % ov, 1)))
    return dict(l_pitch=vecs * vw, l_ov=ov, l_ov_full=vecs - vecs % ov, l_ov_rem=vecs % ov,
                l_kr=kr, l_kr_full=kh - kh % kr, l_kr_rem=kh % kr,
                l_cycles=positions * per_position)


def taps_shapes(maps: int, n_taps: int, target: Target) -> list[tuple[int, int, int]]:
    """Register blockings (m maps, v tap vectors, estimated cycles per output position) of the
    "taps" form, cheapest first: per position a block broadcasts m deltas, loads v vectors of
    the unrolled input and does m * v FMAs (at most the accumulator budget). Among equal
    estimates: more accumulators, then fewer loads (m + v), then more maps (each vector of the
    unrolled input, the stream, serves m of them: measured, large c3 6x4 22.1 us, 4x6 23.8, 2x12
    43.9)."""
    vw, budget = target.vector_width, target.accumulators
    vecs = -(-n_taps // vw)

    def cycles(m: int, v: int) -> int:
        return _core_cycles(m * v, m + v, target) if m and v else 0

    shapes = []
    for m in range(1, min(maps, budget) + 1):
        for v in range(1, min(vecs, budget // m) + 1):
            per_position = sum(cycles(mm, vv) * nm * nv
                               for mm, nm in ((m, maps // m), (maps % m, 1))
                               for vv, nv in ((v, vecs // v), (vecs % v, 1)))
            shapes.append((per_position, -m * v, m + v, -m, v))
    return [(-neg_m, v, cost) for cost, _, _, neg_m, v in sorted(shapes)]


def _taps_block(maps: int, n_taps: int, positions: int, target: Target,
                shape: tuple[int, int] | None = None) -> dict:
    """The weight gradient as a small GEMM vectorized over the taps of all input maps
    (n = c * TAPS + ky * KW + kx), from the input unrolled position-major (XT[q][n]), with the
    cheapest register blocking of taps_shapes (or `shape`, which `chaosgen tune` measured);
    each block adds its accumulators into G, where each map's taps are contiguous."""
    vw = target.vector_width
    vecs = -(-n_taps // vw)
    shapes = taps_shapes(maps, n_taps, target)
    m, v, per_position = next((s for s in shapes if s[:2] == shape), shapes[0])
    return dict(t_maps=m, t_maps_full=maps - maps % m, t_maps_rem=maps % m,
                t_vecs=v, t_vecs_full=vecs - vecs % v, t_vecs_rem=vecs % v,
                # full-size blocks up to here hold real taps only; at most one more holds padding
                t_vecs_real=n_taps // (v * vw) * v,
                xt_pitch=vecs * vw, t_cycles=positions * per_position + maps * vecs * RMW_COST)


COMPACT_COST = 2  # cycles per row piece copied into (or added back from) a compact plane
RMW_COST = 3  # cycles per vector added into memory (load, add, store)


def _pass_cost(block: WideBlock, taps_x_planes: int, target: Target) -> int:
    """Estimated cycles of a wide-row pass: every chunk and map block, per tap and input plane."""
    per_chunk = (block.full // block.maps * _block_cycles(block.maps, block.vecs, target)
                 + _block_cycles(block.rem, block.vecs, target))
    return block.chunks * per_chunk * taps_x_planes


def _forward_plan(lay: ir.Conv, target: Target) -> dict:
    """Forward, in the cheaper layout. "wide": output row i, column j at wide index
    p = i * IN_W + j reads input STRIDE * p + ky * IN_W + kx (the spare columns between rows are
    computed and thrown away). "compact" (stride 1): the input copied once per kernel column kx
    into planes XC[c][kx] of IN_H rows x OUT_W columns; position q = i * OUT_W + j reads
    XC[c][kx][q + ky * OUT_W]: no lane is wasted."""
    i, o, s, vw = lay.in_shape, lay.out_shape, lay.stride, target.vector_width
    taps_x_planes = lay.kh * lay.kw * i.maps
    f = _wide_block(o.h, o.w, i.w, o.maps, target)
    read = ((i.maps - 1) * i.h * i.w + f.last_start(i.w) * s + (lay.kh - 1) * i.w + lay.kw - 1
            + (f.span - 1) * s + 1)
    wide = dict(f=f, f_form="wide", f_row_len=o.w, f_edges=f.edges(o.h, o.w), f_in_row=i.w * s,
                f_in_col=s, f_acc_pitch=i.w,
                f_plane=i.h * i.w, f_p_step=s, f_ky_step=i.w, f_kx_step=1, xc_plane=0,
                xc_floats=0, f_reads_past_x=read - i.size,
                f_cost=_pass_cost(f, taps_x_planes, target))
    if s != 1:
        return wide
    xc_plane = i.h * o.w
    c = _wide_block(1, o.h * o.w, 0, o.maps, target)
    xc_read = ((i.maps * lay.kw - 1) * xc_plane + c.last_start(0) + (lay.kh - 1) * o.w + c.span)
    compact = dict(f=c, f_form="compact", f_row_len=o.h * o.w, f_edges=c.edges(1, o.h * o.w),
                   f_in_row=0, f_in_col=1,
                   f_acc_pitch=0, f_plane=lay.kw * xc_plane, f_p_step=1, f_ky_step=o.w,
                   f_kx_step=xc_plane, xc_plane=xc_plane,
                   xc_floats=ir.align(max(i.maps * lay.kw * xc_plane, xc_read)), f_reads_past_x=0,
                   f_cost=_pass_cost(c, taps_x_planes, target)
                   + i.maps * lay.kw * i.h * -(-o.w // vw) * COMPACT_COST)
    return min(wide, compact, key=lambda p: p["f_cost"])


# Data a kernel re-reads and expects to find in L1: three quarters of the target's L1d (the rest
# is for the stream it reads alongside). Measured with a 32 KB L1d on the shipped nets' backward
# data, maps per block: large c3 24 -> 6 (22.3 -> 17.7 us), medium c2 12 -> 5 (42.0 -> 39.3 us);
# half of L1 (16 KB) gave medium c2 4 maps and 60.7 us.
L1_REUSE_FRACTION = 0.75


def l1_reuse_bytes(target: Target) -> int:
    """Bytes of re-read data a kernel may expect to stay in the target's L1d."""
    return int(target.l1d_bytes * L1_REUSE_FRACTION)


def _backward_plan(lay: ir.Conv, target: Target, wide_pitch: int) -> dict:
    """Backward data tap by tap, in the cheaper layout: for tap t, a block of input maps gets the
    sum over output maps of weight x deltas (in registers), added into memory shifted by the
    tap. "wide": deltas in wide rows (zero between rows), added to dx itself. "compact" (stride
    1): compact deltas, added to planes DXC[c][kx] of IN_H rows x OUT_W columns, which are then
    added to dx shifted by kx. Only true products are computed, unlike a full correlation."""
    i, o, s, vw = lay.in_shape, lay.out_shape, lay.stride, target.vector_width
    taps = lay.kh * lay.kw
    # A block of m input maps reads the weights W[o][c0..c0+m][*] once per tap: m * TAPS *
    # OUT_MAPS floats that must stay in L1 across the taps, or every tap streams them from L2.
    max_maps = max(1, l1_reuse_bytes(target) // (4 * taps * o.maps)) if taps > 1 else None
    b = _wide_block(o.h, o.w, i.w, i.maps, target, max_maps)
    rmw = b.chunks * i.maps * taps * b.vecs * RMW_COST
    wide = dict(b=b, b_form="wide", b_row_len=o.w, b_edges=b.edges(o.h, o.w),
                b_src_plane=wide_pitch, b_src_row=i.w,
                b_acc_pitch=i.w, t_map=i.h * i.w, t_ky=i.w, t_kx=1, t_row=i.w * s, t_col=s,
                dxc_floats=0, b_src_read=(o.maps - 1) * wide_pitch + b.last_start(i.w) + b.span,
                b_cost=_pass_cost(b, taps * o.maps, target) + rmw)
    if s != 1:
        return wide
    xc_plane = i.h * o.w
    c = _wide_block(1, o.h * o.w, 0, i.maps, target, max_maps)
    rmw = c.chunks * i.maps * taps * c.vecs * RMW_COST
    compact = dict(b=c, b_form="compact", b_row_len=o.h * o.w, b_edges=c.edges(1, o.h * o.w),
                   b_src_plane=o.h * o.w, b_src_row=0,
                   b_acc_pitch=0, t_map=lay.kw * xc_plane, t_ky=o.w, t_kx=xc_plane, t_row=0,
                   t_col=1, dxc_floats=ir.align(i.maps * lay.kw * xc_plane),
                   b_src_read=(o.maps - 1) * o.h * o.w + c.last_start(0) + c.span,
                   b_cost=_pass_cost(c, taps * o.maps, target) + rmw
                   + i.maps * lay.kw * i.h * -(-o.w // vw) * (COMPACT_COST + RMW_COST))
    return min(wide, compact, key=lambda p: p["b_cost"])


WEIGHT_FORMS = ("wide", "dot", "lanes", "taps")


def _weights_plan(lay: ir.Conv, target: Target, w_vecs: int, forced: str | None = None) -> dict:
    """The weight gradient in the cheapest of four forms. "wide": the gradient plane (KH rows
    at pitch IN_W) is a wide-row correlation of the input with the deltas as the kernel. "dot":
    dot products over the wide index of the deltas (zero between rows) and the input shifted by
    each tap; the lanes are added up at the end. "lanes": vectorized over output maps, from the
    deltas transposed to position-major order. "taps": vectorized over the taps of all input
    maps, from the input unrolled to position-major order (see _taps_block). `forced` (a form
    `chaosgen tune` measured fastest) wins over the estimates where the layer allows it."""
    i, o, s, vw = lay.in_shape, lay.out_shape, lay.stride, target.vector_width
    taps, in_plane = lay.kh * lay.kw, i.h * i.w
    g = _wide_block(lay.kh, lay.kw, i.w, o.maps, target)
    costs = {"wide": _pass_cost(g, i.maps * o.h * o.w, target)
             + i.maps * o.maps * lay.kh * -(-lay.kw // vw) * EXTRACT_COST}
    g_read = ((i.maps - 1) * in_plane + g.last_start(i.w) + (o.h - 1) * s * i.w + (o.w - 1) * s
              + g.span)
    d_maps, d_cols, d_cycles = _dot_block(o.maps, lay.kw, w_vecs, target)
    costs["dot"] = i.maps * lay.kh * d_cycles * DOT_SLOWDOWN
    d_read = (i.maps - 1) * in_plane + (lay.kh - 1) * i.w + lay.kw - 1 + (w_vecs * vw - 1) * s + 1
    lanes = _lanes_block(o.maps, lay.kh, lay.kw, o.h * o.w, target)
    if lanes:
        costs["lanes"] = (i.maps * lanes["l_cycles"] + i.maps * taps * o.maps * SCATTER_COST
                          + o.size * TRANSPOSE_COST)
    # a forced form may carry a blocking: "taps/6x4" (6 maps x 4 tap vectors)
    forced, _, shape_text = (forced or "").partition("/")
    shape = tuple(int(k) for k in shape_text.split("x")) if shape_text else None
    taps_plan = _taps_block(o.maps, i.maps * taps, o.h * o.w, target, shape)
    # a kernel row of kw floats is copied in power-of-two pieces of up to a vector (kw = 5: 4 + 1)
    pieces = lay.kw // vw + bin(lay.kw % vw).count("1")
    costs["taps"] = (taps_plan["t_cycles"] * TAPS_SLOWDOWN
                     + o.h * o.w * i.maps * lay.kh * pieces * UNROLL_COST)
    form = forced if forced in costs else min(costs, key=costs.__getitem__)
    trans_floats = {"lanes": ir.align(o.h * o.w * lanes["l_pitch"]) if lanes else 0,
                    "taps": o.h * o.w * taps_plan["xt_pitch"]}.get(form, 0)
    return dict(
        grad_form=form, grad_costs=costs, **(lanes or {}), **taps_plan,
        g=g, g_ky_step=s * i.w,
        d_span=w_vecs * vw, d_maps=d_maps, d_maps_full=o.maps - o.maps % d_maps,
        d_maps_rem=o.maps % d_maps, d_cols=d_cols, d_cols_full=lay.kw - lay.kw % d_cols,
        d_cols_rem=lay.kw % d_cols,
        trans_floats=ir.align(trans_floats),
        g_reads_past_x={"dot": d_read, "wide": g_read, "lanes": 0, "taps": 0}[form] - i.size,
    )


def _conv_view(lay: ir.Conv, target: Target, needs_dx: bool = True,
               grad_form: str | None = None) -> dict:
    """Every number the conv kernels print: each pass's plan, the scratch they need (after this
    layer's activations: the compact input; after its deltas: the wide deltas, the transposed
    deltas, the compact input deltas) and how far past its input the layer reads."""
    vw = target.vector_width
    i, o = lay.in_shape, lay.out_shape
    # The deltas in wide rows (pitch IN_W, zero between rows), for the wide backward data and
    # the dot form of the weight gradient.
    w_vecs = -(-((o.h - 1) * i.w + o.w) // vw)
    v = dict(kh=lay.kh, kw=lay.kw, stride=lay.stride, taps=lay.kh * lay.kw, in_plane=i.h * i.w,
             out_plane=o.h * o.w, wide_pitch=w_vecs * vw)
    v.update(_forward_plan(lay, target))
    v.update(_backward_plan(lay, target, w_vecs * vw) if needs_dx else dict(b_form=None))
    v.update(_weights_plan(lay, target, w_vecs, grad_form))
    wide = needs_dx and v["b_form"] == "wide" or v["grad_form"] == "dot"
    b_wide = needs_dx and v["b_form"] == "wide"
    wide_floats = 0
    if wide:
        wide_floats = ir.align(max(o.maps * w_vecs * vw, v["b_src_read"] if b_wide else 0))
    d_slack = max(v["b_src_read"] - o.size, 0) if needs_dx and v["b_form"] == "compact" else 0
    d_data = ir.align(o.size + d_slack)
    dxc_floats = v["dxc_floats"] if needs_dx else 0
    v.update(
        xc_from_y=None,  # set by the work layout
        wide_floats=wide_floats, wide_from_d=d_data, trans_from_d=d_data + wide_floats,
        dxc_from_d=d_data + wide_floats + v["trans_floats"],
        d_floats=d_data + wide_floats + v["trans_floats"] + dxc_floats,
        reads_past_x=max(v["f_reads_past_x"], v["g_reads_past_x"], 0),
    )
    return _choose_algorithm(lay, v, needs_dx, grad_form, vw)


def _choose_algorithm(lay: ir.Conv, v: dict, needs_dx: bool, tuned: str | None,
                      vector_width: int) -> dict:
    """Direct kernels (the view `v`) or FFT, as the spec asks; for algorithm=auto, what
    `chaosgen tune` measured faster (`tuned`: "fft", or the weight-gradient form of the direct
    kernels it measured fastest), else the cheaper estimate (cycles per image). The FFT plan
    itself is made in layer_views, from the layer as written (fft.plan pads in the transform)."""
    direct = v["f_cost"] + (v["b_cost"] if needs_dx else 0) + v["grad_costs"][v["grad_form"]]
    v.update(_decide(lay, direct, needs_dx, tuned, vector_width))
    if v["algorithm"] == "fft":  # (its input is read by the FFT plan's copy only)
        v.update(grad_form="fft", reads_past_x=0)
    return v


def _decide(lay: ir.Conv, direct: float, needs_dx: bool, tuned: str | None,
            vector_width: int) -> dict:
    """algorithm ("direct" or "fft"), algorithm_why and both estimates, given the direct kernels'
    estimate `direct` (cycles per image) and what tuning recorded for the layer (or None)."""
    if lay.algorithm == "direct":
        return dict(algorithm="direct", algorithm_why="algorithm=direct in the spec",
                    direct_cost=direct)
    by_fft = fft.cost(lay, needs_dx, vector_width)
    estimate = f"cost model: direct {direct / 1e3:.0f}k, fft {by_fft / 1e3:.0f}k cycles"
    floats = fft.scratch(lay)[1]
    if floats > MAX_FFT_FLOATS:  # the out x in kernel spectra of every worker
        what = (f"{lay.kind} '{lay.name}': FFT would need {floats} floats of scratch per worker "
                f"(above the bound of {MAX_FFT_FLOATS}, 1 GiB)")
        if lay.algorithm == "fft":
            raise SpecError([Diagnostic(lay.loc, f"{what}: use algorithm=direct or fewer maps")])
        return dict(algorithm="direct", algorithm_why=f"{what}; {estimate}", direct_cost=direct,
                    fft_cost=by_fft)
    if lay.algorithm == "fft":
        use, why = True, "algorithm=fft in the spec"
    elif tuned:
        use, why = tuned == "fft", f"measured faster by `chaosgen tune`; {estimate}"
    else:
        use, why = by_fft < direct, estimate
    return dict(algorithm="fft" if use else "direct", algorithm_why=why, direct_cost=direct,
                fft_cost=by_fft)


MAX_FFT_FLOATS = 1 << 28  # check.MAX_FLOATS: the bound on one instance's buffers, for FFT's too

# Cycles (of the cost model's scale) per vector of multiply-adds of the 3D direct kernels
# (conv3d.j2), fitted with FFT's constants (chaosgen/fft.py) to bench/fft.py --volume.
VOLUME_CYCLES_PER_VECTOR = 1.4


def _volume_algorithm(lay: ir.Conv, needs_dx: bool, target: Target, tuned: str | None) -> dict:
    """A 3D conv's algorithm: the direct kernels' estimate is their multiply-adds in vectors,
    for forward, the weight gradient and (if needed) backward data."""
    passes = 3 if needs_dx else 2
    direct = passes * lay.macs / target.vector_width * VOLUME_CYCLES_PER_VECTOR
    return _decide(lay, direct, needs_dx, tuned, target.vector_width)


LOCK_SEGMENT_FLOATS = 2048  # floats per update lock (8 KB): see lock_segment
MAX_SEGMENTS = 64  # per block: the runtime keeps a block's pending segments in one 64-bit mask


def lock_segment(block_size: int) -> int:
    """Floats per lock segment of a parameter block. CHAOS serializes the writers of a layer; one
    lock per segment of the layer instead lets a second writer start on the segments the first
    is not touching, so the threads do not queue behind each other's whole update (measured in
    bench/speed.py --profile, pass lock_wait). A multiple of 16 floats, so every segment starts
    on a cache line; at most MAX_SEGMENTS per block."""
    per = max(LOCK_SEGMENT_FLOATS, -(-block_size // MAX_SEGMENTS))
    return ir.align(per)


# records of a dense layer the owner-applied update (templates/owner.hpp) applies in one pass over
# its rows: per vector of weights, N inputs, N deltas and N learning rates beside the weight and
# velocity, 3 N + 2 registers (14 of AVX2's 16)
OWNER_BATCH = 4
DENSE_ROWS = 8  # units per dense forward block: independent dot products hide the FMA latency
# rows of W added into dx together by the sparse backward data: one load and store of dx per
# BD_ROWS multiply-adds (the loads of W stream; dx stays in cache)
DENSE_BD_ROWS = 4


def _dense_view(lay: ir.Dense, target: Target) -> dict:
    """Dense blocking: forward DENSE_ROWS units at a time; backward data in column blocks of up
    to the accumulator budget of vectors, the last block only as wide as the input needs (its
    reads past a row of W stay within the next row, or the biases after the last one)."""
    vw, n, out = target.vector_width, lay.in_shape.size, lay.out_shape.maps
    rows = min(out, DENSE_ROWS)
    vecs = -(-n // vw)
    per = min(vecs, target.accumulators)
    return dict(in_full=n - n % vw, rows=rows, rows_full=out - out % rows, rows_rem=out % rows,
                cols=per * vw, cols_full=vecs // per * per * vw, cols_rem=vecs % per * vw)


def _reads_past(lay: ir.Layer | None, target: Target, needs_dx: bool,
                forms: Mapping[str, str] | None = None) -> int:
    """How many floats past the end of its input `lay` may read (wide-row vector spans)."""
    if not isinstance(lay, ir.Conv) or lay.pad_h or lay.pad_w or lay.kd:
        # a padded conv reads its input once, to copy it into its zero-bordered buffer; the 3D
        # kernels (and FFT) read only inside their input
        return 0
    return _conv_view(lay, target, needs_dx, (forms or {}).get(lay.name))["reads_past_x"]


def layer_views(net: ir.Net, target: Target, lines: tuple[str, ...],
                forms: Mapping[str, str] | None = None) -> list[dict]:
    """Every number the templates print, per layer (also what `chaosgen tune` inspects: each conv
    layer's feasible weight-gradient forms and their estimated costs)."""
    views: list[dict] = []
    off = 0
    first_trainable = min(lay.index for lay in net.trainable)
    for k, lay in enumerate(net.layers):
        nxt = net.layers[k + 1] if k + 1 < len(net.layers) else None
        needs_dx = lay.index > first_trainable
        tuned = (forms or {}).get(lay.name)
        vol, conv = None, None
        if isinstance(lay, ir.Conv) and volume.is_volume(lay):
            choice = _volume_algorithm(lay, needs_dx, target, tuned)
            if choice["algorithm"] == "fft":  # kind conv3d: it keeps its activation (pool3d.j2)
                conv = dict(choice, kind="conv3d", grad_form="fft", reads_past_x=0)
            else:
                vol = dict(volume.view(lay, needs_dx, target), **choice)
        elif volume.is_volume(lay):
            vol = volume.view(lay, needs_dx, target)
        elif isinstance(lay, ir.Conv):
            conv = _conv_view(padded_core(lay), target, needs_dx, tuned)
        if conv and conv["algorithm"] == "fft":
            conv.update(fft.plan(lay, needs_dx))
        # Work layout: Y (with room for the next layer's reads past its end), then D, then the
        # conv kernels' scratch.
        nxt_dx = nxt is not None and nxt.index > first_trainable
        y_data = ir.align(lay.out_shape.size + _reads_past(nxt, target, nxt_dx, forms))
        # a max-pool keeps each window's choice (the offset of its maximum) after its outputs
        codes = ir.align(lay.out_shape.size) if isinstance(lay, ir.Pool) and lay.op == "max" else 0
        if isinstance(lay, ir.Dropout):  # its mask (0 or the scale) after its outputs
            codes = ir.align(lay.out_shape.size)
        y_size = y_data + (conv["xc_floats"] if conv else 0) + codes
        d_size = conv["d_floats"] if conv else ir.align(lay.out_shape.size)
        if vol:  # a 3D conv's XP ends the activations' region, where the deltas begin
            d_size = ir.align(lay.out_shape.size + vol["d_slack"])
            vol.update(xp_from_y=y_size, dxp_from_d=d_size,
                       dz_from_d=d_size + vol.get("dz_after_dxp", 0))
            y_size, d_size = y_size + vol["y_scratch"], d_size + vol["d_scratch"]
        fft_layer = conv is not None and conv["algorithm"] == "fft"
        pad = _pad_layout(lay, conv, y_size, d_size, needs_dx) if conv and not fft_layer else None
        if pad:
            y_size, d_size = pad["y_size"], pad["d_size"]
        prev = views[-1]["name"] if views else None
        has_src = 0 < lay.loc.line <= len(lines)
        src = lines[lay.loc.line - 1].split("#")[0].strip() if has_src else ""
        kind = "dense"
        if isinstance(lay, (ir.Pool, ir.Conv)):
            kind = "pool" if isinstance(lay, ir.Pool) else "conv"
        elif isinstance(lay, ir.Dropout):
            kind = "dropout"
        v = dict(
            name=lay.name,
            ns=f"layer_{lay.name}",
            index=lay.index,
            kind=kind,
            template=f"{kind}.j2",
            source=f"{display_path(net.path)}:{lay.loc.line}: {src}",
            in_maps=lay.in_shape.maps, in_h=lay.in_shape.h, in_w=lay.in_shape.w,
            in_size=lay.in_shape.size,
            out_maps=lay.out_shape.maps, out_h=lay.out_shape.h, out_w=lay.out_shape.w,
            y_off=off, d_off=off + y_size, end=off + y_size + d_size,
            x="image" if prev is None else f"work + Y_{prev}",
            dx=None if prev is None else f"work + D_{prev}",
            needs_dx=needs_dx,
            is_output=isinstance(lay, ir.Output),
            activation=getattr(lay, "activation", "linear"),
        )
        off += y_size + d_size
        if isinstance(lay, ir.Trainable):
            v.update(
                w_offset=lay.w_offset,
                b_offset=lay.b_offset,
                block_size=lay.b_offset + lay.n_bias - lay.w_offset,
                block=[t.index for t in net.trainable].index(lay.index),
                segment=lock_segment(lay.b_offset + lay.n_bias - lay.w_offset),
            )
            v["segments"] = -(-v["block_size"] // v["segment"])
        if conv:
            v.update(conv, xc_from_y=y_data)
            if conv["algorithm"] == "fft":  # its scratch, after the deltas, from the activations
                v["fft_from_y"] = y_size + conv["fft_from_d"]
        if pad:
            v.update(pad)
        if isinstance(lay, ir.Pool):
            # rows of a quarter vector or less waste most lanes: max-pool backward then goes
            # window by window, one store each, to the input forward chose
            v.update(op=lay.op, wh=lay.wh, ww=lay.ww, codes_from_y=y_data,
                     scatter=lay.out_shape.w * 4 <= target.vector_width)
            if not lay.tiles and not vol:
                v.update(pool_view(lay))
        if isinstance(lay, ir.Dense):
            # deltas often exactly zero (ReLU off, dropped units): backward data reads only the
            # rows of the others; elsewhere the unit loop keeps its constant trip count
            sparse = not isinstance(lay, ir.Output) and (
                v["activation"] == "relu" or isinstance(nxt, ir.Dropout))
            v.update(_dense_view(lay, target), sparse_delta=sparse, bd_rows=DENSE_BD_ROWS)
        if isinstance(lay, ir.Dropout):
            v.update(dropout_view(lay, net, y_data))
        if vol:
            v.update(vol)
        v["activation_in_pool"] = False
        views.append(v)
    _activation_into_max_pool(views)
    for v in views:
        if v.get("pad_h") or v.get("pad_w"):
            # the unpadded kernels, on the zero-bordered input, in a namespace of their own
            v["core"] = dict(v, ns="core", template="conv.j2")
    return views


DROPOUT_BITS = 24  # a unit is dropped when the top 24 bits of its hash are below rate x 2^24


def dropout_view(lay: ir.Dropout, net: ir.Net, mask_from_y: int) -> dict:
    """A dropout layer's constants: its ordinal among the dropout layers (salt of its key), the
    drop threshold round(rate x 2^24) (so the rate is exact to 2^-25) and the kept units' scale
    1 / (1 - rate) (inverted dropout: evaluation needs no rescaling)."""
    return dict(
        rate=lay.rate, ordinal=net.dropouts.index(lay), mask_from_y=mask_from_y,
        size=lay.out_shape.size, threshold=round(lay.rate * (1 << DROPOUT_BITS)),
        scale=f"{1.0 / (1.0 - lay.rate):#.9g}f",  # 2 -> 2.00000000f
    )


def pool_view(lay: ir.Pool) -> dict:
    """A pool whose windows overlap, leave a rest (round=floor) or run past the edge (ceil):
    window (i, j) covers rows i * SH .. min(i * SH + WH, IN_H) - 1 (likewise columns); the
    average divides by that clipped count (Caffe; PyTorch's avg_pool2d with ceil_mode)."""
    i, o = lay.in_shape, lay.out_shape
    # windows wholly inside the input: the first i_full rows and j_full columns of windows (with
    # round=ceil only the last row and column of windows can run past the edge, to rh/cw)
    i_full, j_full = (i.h - lay.wh) // lay.sh + 1, (i.w - lay.ww) // lay.sw + 1
    return dict(sh=lay.sh, sw=lay.sw, template="pool_window.j2",
                clipped=i_full < o.h or j_full < o.w,
                i_full=min(i_full, o.h), j_full=min(j_full, o.w),
                last_rh=i.h - (o.h - 1) * lay.sh, last_cw=i.w - (o.w - 1) * lay.sw)


def padded_core(lay: ir.Conv) -> ir.Conv:
    """The valid (unpadded) conv that a padded one runs on its zero-bordered input buffer of
    (H + 2 pad_h) x (W + 2 pad_w): same weights, same outputs."""
    if not (lay.pad_h or lay.pad_w):
        return lay
    i = lay.in_shape
    padded = ir.Shape(maps=i.maps, h=i.h + 2 * lay.pad_h, w=i.w + 2 * lay.pad_w)
    return dataclasses.replace(lay, in_shape=padded, pad_h=0, pad_w=0)


def _pad_layout(lay: ir.Conv, conv: dict, y_size: int, d_size: int, needs_dx: bool) -> dict:
    """A padded conv's buffers: after its activations (and the core's scratch) the padded input
    XP, with room for the core's reads past its end (zero, like the border); after its deltas
    (and the core's scratch) the padded input's deltas DXP, whose interior goes to dx."""
    if not (lay.pad_h or lay.pad_w):
        return {}
    i, ph, pw = lay.in_shape, lay.pad_h, lay.pad_w
    xp_h, xp_w = i.h + 2 * ph, i.w + 2 * pw
    xp_floats = ir.align(i.maps * xp_h * xp_w + conv["reads_past_x"])
    dxp_floats = ir.align(i.maps * xp_h * xp_w) if needs_dx else 0
    return dict(
        pad_h=ph, pad_w=pw, x_h=i.h, x_w=i.w, x_maps=i.maps, xp_h=xp_h, xp_w=xp_w,
        in_h=xp_h, in_w=xp_w, in_size=i.maps * xp_h * xp_w,
        xp_from_y=y_size, xp_floats=xp_floats, dxp_from_d=d_size,
        # XP ends where the deltas begin: backward_weights finds it from them
        xp_before_d=xp_floats,
        y_size=y_size + xp_floats, d_size=d_size + dxp_floats,
        template="conv_pad.j2",
    )


def _activation_into_max_pool(views: list[dict]) -> None:
    """A conv layer followed by a max-pool stores z and leaves its activation f to the pool:
    max f(z) = f(max z) for a non-decreasing f, so f runs on the pooled outputs only (a quarter of
    them or fewer). Back-propagation is unchanged: a window's delta times f'(its output) goes to
    the window's first maximal z (where f is flat, f' is 0 at ties: the choice does not matter)."""
    for conv, pool in zip(views, views[1:], strict=False):
        if conv["kind"] == "conv" and pool.get("op") == "max" and conv["activation"] != "linear":
            conv["activation_in_pool"] = True
            pool["activation"] = conv["activation"]


def _grad_form_label(v: dict) -> str:
    """'c3 taps (2 maps x 12 vectors)', 'c2 lanes': a conv layer's weight-gradient form."""
    label = f"{v['name']} {v['grad_form']}"
    if v["grad_form"] == "taps":
        label += f" ({v['t_maps']} maps x {v['t_vecs']} vectors)"
    return label


def render(net: ir.Net, target: Target, lines: tuple[str, ...] = (),
           forms: Mapping[str, str] | None = None, tuned_on: str | None = None) -> Source:
    """Render the C++ translation unit and its API header for one (network, target). `forms`:
    the weight-gradient form per conv layer (from `chaosgen tune`, measured on `tuned_on`);
    other layers get the cost model's choice."""
    _check_names(net)
    layers = layer_views(net, target, lines, forms)
    blocks = [v for v in layers if "block" in v]
    last = layers[-1]
    first_trainable = min(t.index for t in net.trainable)
    ctx = dict(
        version=__version__,
        net=dict(name=net.name, path_display=display_path(net.path), input=str(net.input)),
        target=target,
        ir_hash=net.digest(),
        summary=summary_rows(net),
        header_name=HEADER_NAME,
        layers=layers,
        grad_forms=", ".join(_grad_form_label(v) for v in layers
                             if v["kind"] == "conv" and v["algorithm"] == "direct"),
        algorithms=[f"{v['name']} {v['algorithm']} ({v['algorithm_why']})"
                    for v in layers if v["kind"] in ("conv", "conv3d")],
        fft=any(v.get("algorithm") == "fft" for v in layers),
        tuned_on=tuned_on,
        backward=[v for v in reversed(layers) if v["index"] >= first_trainable],
        blocks=blocks,
        # each block's first lock segment, then the total
        segment0=[sum(b["segments"] for b in blocks[:k]) for k in range(len(blocks) + 1)],
        out=dict(name=last["name"], activation=net.output.activation, loss=net.output.loss),
        loss_text="cross-entropy of the softmax output" if net.output.loss == "cross_entropy"
        else "half the squared error against the one-hot target",
        n_params=net.n_params,
        image_size=net.input.size,
        # room past each image for the first layer's wide-row reads
        image_stride=ir.align(net.input.size + _reads_past(net.layers[0], target, False, forms)),
        output_size=net.output.out_shape.size,
        work_floats=max(last["end"], 16),
        dropout=[v for v in layers if v["kind"] == "dropout"],
        unroll_limit=UNROLL_LIMIT,
        owner_batch=OWNER_BATCH,
    )
    env = environment()
    cpp = env.get_template("net.cpp.j2").render(ctx)
    header = env.get_template("api.h.j2").render(ctx)
    if len(cpp) > MAX_CODE_BYTES:
        where = SourceLoc(net.path, net.input_loc.line or 1, net.input_loc.col or 1)
        msg = (f"the generated code ({len(cpp)} bytes) exceeds the limit of {MAX_CODE_BYTES} "
               f"bytes (the C++ compiler's time and memory grow with it): use fewer layers")
        raise SpecError([Diagnostic(where, msg)])
    return Source(cpp=cpp, header=header, libs=fftw_libs(target) if ctx["fft"] else ())
