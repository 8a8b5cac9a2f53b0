"""Random network specs for property tests, written as text in the language itself.

Shapes are worked out here by brute force (sliding a window over index ranges and counting where
it fits), not by chaosgen's arithmetic, so the property tests can compare the two.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

HIDDEN_ACTIVATIONS = ("scaled_tanh", "tanh", "sigmoid", "relu", "linear")
OUTPUT_ACTIVATIONS = ("softmax", *HIDDEN_ACTIVATIONS)


# --- brute-force shapes -------------------------------------------------------------------------
def conv_positions(n: int, k: int, stride: int) -> list[range]:
    """Every placement of a k-wide window over indices 0..n-1, moving by `stride`, that fits."""
    placed, start = [], 0
    while True:
        window = range(start, start + k)
        if not all(i < n for i in window):
            return placed
        placed.append(window)
        start += stride


def pool_windows(n: int, k: int, stride: int, rnd: str | None) -> list[range] | None:
    """Windows of k moving by `stride` over 0..n-1, clipped to it. None: without `rnd`, the
    windows must end exactly at n. "floor": only whole windows. "ceil": windows until one
    reaches index n-1 (a window starting past n-1 would hold nothing and is never placed)."""
    whole = conv_positions(n, k, stride)
    if rnd is None:
        return whole if whole and whole[-1][-1] == n - 1 else None
    if rnd == "floor":
        return whole or None
    placed, start = [], 0
    while start < n and (not placed or placed[-1][-1] < n - 1):
        placed.append(range(start, min(start + k, n)))
        start += stride
    return placed if k <= n else None


def pool_tiles(n: int, k: int) -> list[range] | None:
    """Cut 0..n-1 into consecutive k-wide windows; None if the last one would be short."""
    tiles, rest = [], list(range(n))
    while rest:
        tile, rest = rest[:k], rest[k:]
        if len(tile) < k:
            return None
        tiles.append(range(tile[0], tile[-1] + 1))
    return tiles


@dataclass
class LayerDesc:
    """One layer as the generator meant it, with the shape brute force gives (None: invalid)."""

    kind: str
    attrs: dict[str, str]  # key -> value text, as it will be written
    name: str | None = None
    omit: tuple[str, ...] = ()  # attributes left to their defaults when written
    out: tuple[int, int, int] | None = None


@dataclass
class NetDesc:
    """A whole random spec: input shape, layers (the output last), optional train statement."""

    input: tuple[int, int, int]
    layers: list[LayerDesc]
    network: str | None = None
    train: dict[str, str] | None = None  # the train statement's attributes, if there is one

    @property
    def valid(self) -> bool:
        """Brute force found every window in place."""
        return all(lay.out is not None for lay in self.layers)


def brute_shape(shape: tuple[int, int, int], lay: LayerDesc) -> tuple[int, int, int] | None:
    """Output shape of one layer by enumeration, or None if its window does not fit."""
    maps, h, w = shape
    a = lay.attrs
    if lay.kind == "conv":
        kh, kw = _hw(a["kernel"])
        stride = int(a.get("stride", "1"))
        ph, pw = _hw(a.get("pad", "0"))  # the zeros are indices like any other
        rows = conv_positions(h + 2 * ph, kh, stride)
        cols = conv_positions(w + 2 * pw, kw, stride)
        return (int(a["maps"]), len(rows), len(cols)) if rows and cols else None
    if lay.kind in ("maxpool", "avgpool") and ("stride" in a or "round" in a):
        wh, ww = _hw(a["window"])
        sh, sw = _hw(a.get("stride", a["window"]))
        rnd = a.get("round")
        rows, cols = pool_windows(h, wh, sh, rnd), pool_windows(w, ww, sw, rnd)
        return (maps, len(rows), len(cols)) if rows and cols else None
    if lay.kind in ("maxpool", "avgpool"):
        wh, ww = _hw(a["window"])
        rows, cols = pool_tiles(h, wh), pool_tiles(w, ww)
        return (maps, len(rows), len(cols)) if rows and cols else None
    if lay.kind == "dense":
        return (int(a["units"]), 1, 1)
    if lay.kind == "dropout":
        return shape
    return (int(a["classes"]), 1, 1)


def _hw(text: str) -> tuple[int, int]:
    parts = [int(p) for p in text.split("x")]
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# --- strategies ---------------------------------------------------------------------------------
def _size_text(draw, h: int, w: int) -> str:
    """`HxW`, or a single integer for a square when the generator feels like it."""
    if h == w and draw(st.booleans()):
        return str(h)
    return f"{h}x{w}"


@st.composite
def net_descs(
    draw,
    max_hidden: int = 4,
    max_side: int = 9,
    max_maps: int = 3,
    always_valid: bool = True,
    dropout: bool = False,
    geometry: bool = False,
) -> NetDesc:
    """A random stack of conv / maxpool / avgpool / dense layers ending in an output layer.

    With always_valid, kernel and window sizes are drawn to fit (brute force decides); without,
    they are drawn freely and may be too large or fail to tile, for the shape-inference test.
    With dropout, a dropout layer may follow each hidden layer and one always precedes the output
    (only then: the other tests keep their distribution).
    With geometry, convs may have `pad=` and pools `stride=` and `round=` (overlapping windows,
    rests dropped or partial windows); without, the draws are exactly those of before.
    """
    shape = (
        draw(st.integers(1, max_maps)),
        draw(st.integers(1, max_side)),
        draw(st.integers(1, max_side)),
    )
    desc = NetDesc(input=shape, layers=[])
    cur: tuple[int, int, int] | None = shape
    for _ in range(draw(st.integers(0, max_hidden))):
        kind = draw(st.sampled_from(("conv", "maxpool", "avgpool", "dense")))
        if cur is None:
            h, w = max_side, max_side
        else:
            _, h, w = cur
        if kind == "conv" and geometry:
            ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
            kh, kw = draw(st.integers(ph + 1, h + 2 * ph)), draw(st.integers(pw + 1, w + 2 * pw))
            attrs = {
                "maps": str(draw(st.integers(1, 4))),
                "kernel": _size_text(draw, kh, kw),
                "stride": str(draw(st.integers(1, 3))),
                "pad": _size_text(draw, ph, pw),
                "activation": draw(st.sampled_from(HIDDEN_ACTIVATIONS)),
            }
            omit = set()
        elif kind in ("maxpool", "avgpool") and geometry:
            wh, ww = draw(st.integers(1, h)), draw(st.integers(1, w))
            sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
            attrs = {"window": _size_text(draw, wh, ww), "stride": _size_text(draw, sh, sw)}
            rnd = draw(st.sampled_from(("floor", "ceil", None)))
            if rnd is None and always_valid and cur is not None and not (
                pool_windows(h, wh, sh, None) and pool_windows(w, ww, sw, None)
            ):
                rnd = draw(st.sampled_from(("floor", "ceil")))  # without it, no fit
            if rnd is not None:
                attrs["round"] = rnd
            omit = set()
        elif kind == "conv":
            if always_valid:
                kh, kw = draw(st.integers(1, h)), draw(st.integers(1, w))
            else:
                kh, kw = draw(st.integers(1, max_side + 1)), draw(st.integers(1, max_side + 1))
            attrs = {
                "maps": str(draw(st.integers(1, 4))),
                "kernel": _size_text(draw, kh, kw),
                "stride": str(draw(st.integers(1, 3))),
                "activation": draw(st.sampled_from(HIDDEN_ACTIVATIONS)),
            }
            omit = draw(st.sets(st.sampled_from(("stride", "activation"))))
            if "stride" in omit:
                attrs["stride"] = "1"
            if "activation" in omit:
                attrs["activation"] = "scaled_tanh"
        elif kind in ("maxpool", "avgpool"):
            if always_valid:
                wh, ww = draw(st.sampled_from(_divisors(h))), draw(st.sampled_from(_divisors(w)))
            else:
                wh, ww = draw(st.integers(1, max_side + 1)), draw(st.integers(1, max_side + 1))
            attrs, omit = {"window": _size_text(draw, wh, ww)}, set()
        else:
            attrs = {
                "units": str(draw(st.integers(1, 6))),
                "activation": draw(st.sampled_from(HIDDEN_ACTIVATIONS)),
            }
            omit = draw(st.sets(st.just("activation")))
            if omit:
                attrs["activation"] = "scaled_tanh"
        lay = LayerDesc(kind=kind, attrs=attrs, omit=tuple(sorted(omit)))
        lay.out = brute_shape(cur, lay) if cur is not None else None
        cur = lay.out
        desc.layers.append(lay)
        if dropout and draw(st.booleans()):
            desc.layers.append(_dropout_desc(draw, cur))
    if dropout:
        desc.layers.append(_dropout_desc(draw, cur))
    loss = draw(st.sampled_from(("cross_entropy", "mse")))
    act = "softmax" if loss == "cross_entropy" else draw(st.sampled_from(OUTPUT_ACTIVATIONS))
    out = LayerDesc(
        kind="output",
        attrs={"classes": str(draw(st.integers(2, 5))), "activation": act, "loss": loss},
    )
    defaults = [
        k for k, v in (("activation", "softmax"), ("loss", "cross_entropy")) if out.attrs[k] == v
    ]
    if defaults:
        out.omit = tuple(sorted(draw(st.sets(st.sampled_from(defaults)))))
    out.out = brute_shape(cur, out) if cur is not None else None
    desc.layers.append(out)
    # Names: some given (unique), the rest left to chaosgen's kind+number scheme.
    for i, lay in enumerate(desc.layers):
        if draw(st.booleans()):  # short names, or ones that look like chaosgen's own (`conv1`)
            lay.name = draw(st.sampled_from((f"{lay.kind[0]}{i}", f"{lay.kind}{i}")))
    if draw(st.booleans()):
        desc.network = draw(st.sampled_from(("rand", "net_1", "Tiny")))
    if draw(st.booleans()):  # any subset of the train attributes (the rest take defaults)
        train = {
            "epochs": str(draw(st.integers(1, 100))),
            "eta": draw(st.sampled_from(("0.001", "0.5", "1e-3", ".25", "2"))),
            "decay": draw(st.sampled_from(("0.9", "1", "1.0"))),
            "seed": str(draw(st.integers(0, 2**31))),
        }
        keep = draw(st.sets(st.sampled_from(sorted(train))))
        desc.train = {k: v for k, v in train.items() if k in keep}
    return desc


def _dropout_desc(draw, cur: tuple[int, int, int] | None) -> LayerDesc:
    """A dropout layer after `cur` (rates from none to most units dropped)."""
    rate = draw(st.sampled_from(("0", "0.1", "0.25", "0.5", ".75", "0.9")))
    return LayerDesc(kind="dropout", attrs={"rate": rate}, out=cur)


@st.composite
def spec_texts(draw, descs=None, continuation: bool = False) -> tuple[NetDesc, str]:
    """A NetDesc and its text, written with random layout: spacing, tabs, comments, blank lines,
    CRLF line ends, attribute order, defaults omitted, square sizes as one integer; with
    continuation, a layer's attributes may also go on further-indented continuation lines."""
    desc = draw(descs if descs is not None else net_descs())
    space = st.sampled_from((" ", "  ", "\t", " \t "))
    comment = st.sampled_from(("", "", "  # a comment", "\t#x=1 kernel=4x4", "#"))
    lines = []
    if draw(st.booleans()):
        lines.append("# a random network")
    if desc.network:
        lines.append(f"network{draw(space)}{desc.network}{draw(comment)}")
    m, h, w = desc.input
    in_attrs = [f"size={_size_text(draw, h, w)}"]
    if m != 1 or draw(st.booleans()):
        in_attrs.append(f"maps={m}")
    lines.append(draw(space).join(["input", *draw(st.permutations(in_attrs))]) + draw(comment))
    for lay in desc.layers:
        attrs = [f"{k}={v}" for k, v in lay.attrs.items() if k not in lay.omit]
        head = [lay.kind] if lay.name is None else [lay.kind, f"{lay.name}:"]
        attrs = draw(st.permutations(attrs))
        cut = draw(st.integers(0, len(attrs))) if continuation else len(attrs)
        lines.append(draw(space).join([*head, *attrs[:cut]]) + draw(comment))
        for a in attrs[cut:]:  # one attribute per continuation line, indented 1 to 8
            indent = draw(st.sampled_from((" ", "\t", "        ")))
            lines.append(indent + a + draw(comment))
        if draw(st.integers(0, 4)) == 0:
            lines.append(draw(st.sampled_from(("", "   ", "# between layers"))))
    if desc.train is not None:
        attrs = [f"{k}={v}" for k, v in desc.train.items()]
        lines.append(" ".join(["train", *draw(st.permutations(attrs))]))
    end = draw(st.sampled_from(("\n", "\r\n")))
    text = end.join(lines) + (end if draw(st.booleans()) else "")
    return desc, text


def plain_text(desc: NetDesc) -> str:
    """A NetDesc written plainly: input on line 1, then one layer per line, every attribute."""
    m, h, w = desc.input
    lines = [f"input maps={m} size={h}x{w}"]
    for lay in desc.layers:
        head = f"{lay.kind} {lay.name}:" if lay.name else lay.kind
        lines.append(" ".join([head, *(f"{k}={v}" for k, v in lay.attrs.items())]))
    if desc.train is not None:
        lines.append(" ".join(["train", *(f"{k}={v}" for k, v in desc.train.items())]))
    return "\n".join(lines) + "\n"


# --- volumes (3D nets) --------------------------------------------------------------------------
def _x(dims) -> str:
    return "x".join(map(str, dims))


@st.composite
def volume_texts(draw, max_side: int = 7, max_hidden: int = 3) -> tuple[list, str]:
    """A valid random 3D spec: input DxHxW, then conv (kernel, stride, pad per axis), max/avg
    pooling (window, stride, round per axis), dropout or dense layers, and an output. Returns
    ([(maps, d, h, w) after each layer by brute force, or None after a dense layer], text)."""
    maps = draw(st.integers(1, 2))
    dims = [draw(st.integers(2, max_side)) for _ in range(3)]
    lines = [f"input maps={maps} size={_x(dims)}"]
    shapes: list = []
    flat = False
    for k in range(draw(st.integers(1, max_hidden))):
        kind = draw(st.sampled_from(("conv", "conv", "maxpool", "avgpool", "dropout", "dense")))
        if flat and kind != "dense":
            kind = "dense"
        if kind == "conv":
            pad = [draw(st.integers(0, 1)) for _ in dims]
            kern = [draw(st.integers(max(1, p + 1), min(3, n + 2 * p)))
                    for n, p in zip(dims, pad, strict=True)]
            stride = draw(st.integers(1, 2))
            maps = draw(st.integers(1, 3))
            act = draw(st.sampled_from(HIDDEN_ACTIVATIONS))
            cube = len(set(kern)) == 1 and draw(st.booleans())
            pads = str(pad[0]) if len(set(pad)) == 1 and draw(st.booleans()) else _x(pad)
            lines.append(f"conv c{k}: maps={maps} kernel={kern[0] if cube else _x(kern)} "
                         f"stride={stride} pad={pads} activation={act}")
            dims = [len(conv_positions(n + 2 * p, kk, stride))
                    for n, p, kk in zip(dims, pad, kern, strict=True)]
        elif kind in ("maxpool", "avgpool"):
            win = [draw(st.integers(1, min(3, n))) for n in dims]
            rnd = draw(st.sampled_from(("floor", "ceil")))
            if draw(st.booleans()):
                stride = [draw(st.integers(1, 3)) for _ in dims]
                extra = f" stride={_x(stride)}"
            else:
                stride, extra = win, ""
            lines.append(f"{kind} p{k}: window={_x(win)}{extra} round={rnd}")
            dims = [len(pool_windows(n, w, s, rnd)) for n, w, s in zip(dims, win, stride,
                                                                         strict=True)]
        elif kind == "dropout":
            lines.append(f"dropout d{k}: rate=0.25")
        else:
            maps, dims, flat = draw(st.integers(1, 5)), [1, 1, 1], True
            lines.append(f"dense f{k}: units={maps} activation="
                         f"{draw(st.sampled_from(HIDDEN_ACTIVATIONS))}")
        shapes.append(None if flat else (maps, *dims))
    act, loss = draw(st.sampled_from((("softmax", "cross_entropy"), ("sigmoid", "mse"),
                                      ("linear", "mse"), ("tanh", "mse"))))
    lines.append(f"output classes={draw(st.integers(2, 4))} activation={act} loss={loss}")
    return shapes, "\n".join(lines) + "\n"
