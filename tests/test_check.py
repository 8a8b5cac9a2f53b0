"""Stage 2, check: AST -> IR. Shapes against brute force, names, defaults, limits, invariants."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from specgen import conv_positions, net_descs, plain_text

from chaosgen import ir
from chaosgen.check import ATTRS, MAX_DIM, MAX_FLOATS, check
from chaosgen.errors import SpecError
from chaosgen.parse import parse_text


def _check(text: str, path: str = "t.net") -> ir.Net:
    return check(parse_text(text, path))


def _errors(text: str, path: str = "t.net") -> list[str]:
    with pytest.raises(SpecError) as err:
        _check(text, path)
    return [f"{d.loc.line}:{d.loc.col}: {d.message}" for d in err.value.diagnostics]


@settings(max_examples=300, deadline=None)
@given(desc=net_descs(max_hidden=5, max_side=9, max_maps=4, always_valid=False))
def test_shapes_match_brute_force(desc) -> None:
    """Random stacks with kernels and windows drawn freely: where sliding the windows over the
    index ranges fits everywhere, every layer's shapes and weight counts match; where it does not,
    the first misfit is the one error, located at its size attribute."""
    text = plain_text(desc)
    if not desc.valid:
        bad = next(i for i, lay in enumerate(desc.layers) if lay.out is None)
        lay = desc.layers[bad]
        prev = desc.input if bad == 0 else desc.layers[bad - 1].out
        (msg,) = _errors(text)
        key = "kernel" if lay.kind == "conv" else "window"
        line = text.splitlines()[bad + 1]
        assert msg.startswith(f"{bad + 2}:{line.index(key + '=') + len(key) + 2}: "), (msg, line)
        hw = [int(v) for v in lay.attrs[key].split("x")] * (1 if "x" in lay.attrs[key] else 2)
        fits = conv_positions(prev[1], hw[0], 1) and conv_positions(prev[2], hw[1], 1)
        assert ("is larger than its input" if not fits else "does not tile its input") in msg
        return
    net = _check(text)
    assert (net.input.maps, net.input.h, net.input.w) == desc.input
    assert len(net.layers) == len(desc.layers)
    prev = desc.input
    for lay, want in zip(net.layers, desc.layers, strict=True):
        assert lay.kind == want.kind
        assert (lay.in_shape.maps, lay.in_shape.h, lay.in_shape.w) == prev
        assert (lay.out_shape.maps, lay.out_shape.h, lay.out_shape.w) == want.out
        if want.name:
            assert lay.name == want.name
        if isinstance(lay, ir.Conv):
            assert lay.weight_shape == (want.out[0], prev[0], lay.kh, lay.kw)
            assert lay.macs == math.prod(lay.weight_shape) * want.out[1] * want.out[2]
        elif isinstance(lay, ir.Dense):
            assert lay.weight_shape == (want.out[0], math.prod(prev))
        if isinstance(lay, ir.Trainable):
            assert lay.n_weights == math.prod(lay.weight_shape) and lay.n_bias == want.out[0]
        prev = want.out
    # Parameter blocks: 16-float aligned, in layer order, disjoint, all inside n_params.
    spans = []
    for lay in net.trainable:
        spans += [(lay.w_offset, lay.n_weights), (lay.b_offset, lay.n_bias)]
    assert all(off % 16 == 0 for off, _ in spans)
    assert all(a + n <= b for (a, n), (b, _) in zip(spans, spans[1:], strict=False))
    assert spans[-1][0] + spans[-1][1] <= net.n_params < spans[-1][0] + spans[-1][1] + 16
    assert len({lay.name for lay in net.layers}) == len(net.layers)


def test_small_spec_is_the_papers_small_net(in_repo) -> None:
    """Table of the CHAOS paper: shapes and weight counts (weights + biases) of the small net."""
    from chaosgen.pipeline import front_end

    _, net = front_end("specs/small.net")
    rows = [(lay.name, str(lay.out_shape), lay.n_weights + lay.n_bias) for lay in net.layers]
    assert rows == [
        ("c1", "5x26x26", 85),
        ("p1", "5x13x13", 0),
        ("c2", "10x9x9", 1260),
        ("p2", "10x3x3", 0),
        ("f1", "50x1x1", 4550),
        ("out", "10x1x1", 510),
    ]
    assert net.training == ir.Training(epochs=70, eta=0.001, decay=0.9, seed=1)
    assert net.macs == 164_520


def test_defaults_and_names() -> None:
    """Omitted attributes take their defaults; unnamed layers are kind+number, `input`, `output`;
    a clash with a user's name gets a suffix; the network is named after the file."""
    net = _check(
        "input size=6x6\nconv maps=2 kernel=3\nconv conv2: maps=1 kernel=2\nconv maps=1 kernel=1\n"
        "dense units=3\noutput classes=2\n",
        "dir/3-layer net.net",
    )
    assert [lay.name for lay in net.layers] == ["conv1", "conv2", "conv2_2", "dense1", "output"]
    c = net.layers[0]
    assert (c.stride, c.activation, net.input.maps) == (1, "scaled_tanh", 1)
    assert net.layers[3].activation == "scaled_tanh"
    assert (net.output.activation, net.output.loss) == ("softmax", "cross_entropy")
    assert net.training == ir.Training()
    assert net.name == "net_3_layer_net"


def test_train_statement_takes_defaults_for_what_it_omits() -> None:
    """`train` with some attributes: the others are ir.Training's defaults (regression: the
    defaults were read off the slots class, as member descriptors, and crashed the checker)."""
    net = _check("input size=4\noutput classes=2\ntrain eta=0.5\n")
    assert net.training == ir.Training(eta=0.5)
    assert _check("input size=4\noutput classes=2\ntrain\n").training == ir.Training()


def test_conv_stride_floors() -> None:
    """A stride that does not divide the remainder drops the last partial placement."""
    net = _check("input size=8x7\nconv maps=1 kernel=3x2 stride=3\noutput classes=2\n")
    assert str(net.layers[0].out_shape) == "1x2x2"
    assert len(conv_positions(8, 3, 3)) == 2 and len(conv_positions(7, 2, 3)) == 2


def test_limits_are_inclusive() -> None:
    """MAX_DIM itself is accepted, one more is not."""
    net = _check(f"input size=1\nconv maps={MAX_DIM} kernel=1\noutput classes=2\n")
    assert net.layers[0].out_shape.maps == MAX_DIM
    assert _errors(f"input size=1\nconv maps={MAX_DIM + 1} kernel=1\noutput classes=2\n") == [
        f"2:11: conv 'conv1': 'maps' must be between 1 and {MAX_DIM}, found {MAX_DIM + 1}"
    ]


def test_activation_memory_bound() -> None:
    """One instance's activations and deltas over MAX_FLOATS is an error at the last statement."""
    msgs = _errors("input size=4096x4096\nconv maps=16 kernel=1\noutput classes=2\n")
    assert any("exceed the bound of" in m and str(MAX_FLOATS) in m for m in msgs), msgs


def test_every_error_of_a_file_is_reported_in_line_order() -> None:
    """Independent mistakes on several lines come out together, sorted."""
    msgs = _errors(
        "train eta=0\ninput size=8\nconv c: maps=2 kernel=9\ndense c: units=0\n"
        "output classes=2 loss=hinge\n"
    )
    assert [m.split(":")[0] for m in msgs] == ["1", "3", "4", "4", "5"]
    assert "train: 'eta' must be in (0, 10], found 0" in msgs[0]
    assert "duplicate layer name 'c' (first used at line 3)" in msgs[2]


def test_verify_catches_broken_invariants() -> None:
    """ir.verify is a real check: a layer whose input is not its predecessor's output fails."""
    net = _check("input size=4\nconv maps=2 kernel=3\noutput classes=2\n")
    ir.verify(net)
    bad = dataclasses.replace(net.layers[1], in_shape=ir.Shape(maps=3, h=2, w=2))
    with pytest.raises(AssertionError):
        ir.verify(dataclasses.replace(net, layers=(net.layers[0], bad)))


def test_digest_ignores_locations_and_training() -> None:
    """The IR hash changes with the network, not with layout, comments or the train statement."""
    a = _check("input size=4\nconv maps=2 kernel=3\noutput classes=2\n")
    b = _check(
        "# x\ninput   size=4x4\n\nconv maps=2 kernel=3x3\noutput classes=2\ntrain epochs=3\n"
    )
    c = _check("input size=4\nconv maps=3 kernel=3\noutput classes=2\n")
    assert a.digest() == b.digest() != c.digest()


def test_language_reference_covers_every_attribute() -> None:
    """docs/language.md documents every statement kind, attribute, activation, loss and limit."""
    from conftest import ROOT

    from chaosgen.check import ATTRS, MAX_EPOCHS, MAX_LAYERS, MAX_NAME
    from chaosgen.codegen import MAX_CODE_BYTES
    from chaosgen.errors import MAX_ERRORS
    from chaosgen.parse import MAX_FILE_BYTES, MAX_INT_DIGITS, MAX_TOKENS

    doc = (ROOT / "docs" / "language.md").read_text()
    for kind, attrs in ATTRS.items():
        assert f"`{kind}`" in doc, kind
        for key in attrs:
            assert f"| `{key}` |" in doc, (kind, key)
    for word in (*ir.OUTPUT_ACTIVATIONS, *ir.LOSSES):
        assert f"`{word}`" in doc, word
    for limit in (MAX_DIM, MAX_FLOATS, MAX_EPOCHS):
        assert str(limit) in doc, limit
    limits = (MAX_LAYERS, MAX_NAME, MAX_CODE_BYTES, MAX_ERRORS, MAX_INT_DIGITS, MAX_TOKENS)
    for limit in (*limits, MAX_FILE_BYTES):
        assert f"| {limit:,} |" in doc, limit


# --- size limits and user text in messages (issue 10) -----------------------------------------
def _stack(n: int) -> str:
    return "input size=4\n" + "dense units=2\n" * (n - 1) + "output classes=2\n"


def test_layer_count_is_bounded() -> None:
    """MAX_LAYERS layers after the input are accepted; a 1,000-layer spec is one error at the
    first layer past the bound, before any code is generated (regression: g++ took minutes)."""
    from chaosgen.check import MAX_LAYERS

    assert len(_check(_stack(MAX_LAYERS)).layers) == MAX_LAYERS
    assert _errors(_stack(1000)) == [
        f"{MAX_LAYERS + 2}:1: too many layers: 1000 after the input, at most {MAX_LAYERS} "
        "(the C++ compiler's time and memory grow with each)"
    ]


def test_names_are_bounded_and_shortened_in_messages() -> None:
    """A layer or network name over MAX_NAME characters is an error; long tokens are quoted
    shortened, with their length, in every message."""
    from chaosgen.check import MAX_NAME

    long = "n" * 5000
    msgs = _errors(
        f"network {long}\ninput size=4\ndense {long}: units=2 activation={long}\n"
        f"dense units=2 {long}=1\n{long}\noutput classes=2\n"
    )
    short = "nnnnnnnnnnnnnnnnnnnn...nnnnnnnnnn (5000 characters)"
    assert msgs == [
        f"1:1: network name of 5000 characters is too long (at most {MAX_NAME}): {short}",
        f"3:7: layer name of 5000 characters is too long (at most {MAX_NAME}): {short}",
        f"3:5028: dense '{short}': unknown activation '{short}'; expected one of scaled_tanh, "
        "tanh, sigmoid, relu, linear",
        f"4:15: dense 'dense1': unknown attribute '{short}'; expected one of "
        + ", ".join(ATTRS["dense"]),
        f"5:1: unknown statement '{short}'; expected one of input, conv, maxpool, avgpool, "
        "dropout, dense, output, train",
    ]
    assert _check(f"network {'n' * MAX_NAME}\n{_stack(2)}").name == "n" * MAX_NAME


def test_network_name_from_a_file_name_is_an_ascii_identifier() -> None:
    """It lands in C++ strings, file names and shell scripts unescaped."""
    assert _check(_stack(2), "dir/r\u00e9seau \u2603 $(x).net").name == "r_seau_____x_"
    assert _check(_stack(2), "9" * 100 + ".net").name == "net_" + "9" * 60


@pytest.mark.parametrize("word", ["nan", "inf", "NaN", "infinity"])
def test_nan_and_inf_are_not_numbers(word: str) -> None:
    """Written as words, they are names: a located error where a number is expected."""
    assert _errors(f"input size=4\noutput classes=2\ntrain eta={word}\n") == [
        f"3:11: train: 'eta' must be an integer or a number, found '{word}'"
    ]


def test_error_echoes_its_own_line_after_a_form_feed() -> None:
    """A form feed in a comment does not shift the lines an error shows (regression: the error
    printer split lines at form feeds too, and showed the line before)."""
    with pytest.raises(SpecError) as err:
        _check("# a\fb\ninput size=4\nconv c1: maps=0 kernel=1\noutput classes=2\n")
    (diag,) = err.value.diagnostics
    assert (diag.loc.line, diag.source_line) == (3, "conv c1: maps=0 kernel=1")


def test_volume_shapes_match_brute_force() -> None:
    """A 3D net (input DxHxW): every axis sized as the windows that fit, counted one by one."""
    net = _check(
        "input maps=2 size=9x10x11\n"
        "conv c1: maps=3 kernel=3x2x4 stride=2 pad=1x0x2\n"
        "maxpool p1: window=2x2x1 stride=1x2x1 round=floor\n"
        "avgpool p2: window=2 round=floor\n"
        "dense f: units=4\n"
        "output classes=2\n"
    )
    c1, p1, p2 = net.layers[:3]
    dims = [len(conv_positions(n + 2 * p, k, 2)) for n, p, k in
            zip((9, 10, 11), (1, 0, 2), (3, 2, 4), strict=True)]
    assert c1.out_shape == ir.Shape(maps=3, d=dims[0], h=dims[1], w=dims[2])
    assert (c1.kernel, c1.pad, c1.n_weights) == ((3, 2, 4), (1, 0, 2), 3 * 2 * 3 * 2 * 4)
    dims = [len(conv_positions(n, k, s)) for n, k, s in
            zip(dims, (2, 2, 1), (1, 2, 1), strict=True)]
    assert p1.out_shape.dims == tuple(dims) and p1.window == (2, 2, 1)
    dims = [len(conv_positions(n, 2, 2)) for n in dims]
    assert p2.out_shape.dims == tuple(dims) and str(p2.in_shape) == "3x" + "x".join(
        map(str, p1.out_shape.dims))
    assert net.layers[3].in_shape.size == 3 * math.prod(dims)


def test_plane_and_volume_do_not_mix() -> None:
    """A 3D size in a 2D net and a 2D size in a 3D net: located errors that say why."""
    assert _errors("input size=8x8\nconv c: maps=2 kernel=3x3x3\noutput classes=2\n") == [
        "2:23: conv 'c': 'kernel' must be HxW, found 3 sizes (the input at line 1 is a plane "
        "(HxW): 2D and 3D layers do not mix)"
    ]
    assert _errors("input size=4x8x8\nmaxpool p: window=2x2\noutput classes=2\n") == [
        "2:19: maxpool 'p': 'window' must be DxHxW, found 2 sizes (the input at line 1 is a "
        "volume (DxHxW): 2D and 3D layers do not mix)"
    ]
    assert _errors("input size=4x8x8\nconv c: maps=1 kernel=3 pad=1x1\noutput classes=2\n") == [
        "2:29: conv 'c': 'pad' must be P or PDxPHxPW, found 2 sizes"
    ]
    assert _errors("input size=4x8x8\nconv c: maps=1 kernel=5x3x3\noutput classes=2\n") == [
        "2:23: conv 'c': kernel 5x3x3 is larger than its input 4x8x8"
    ]
    assert _errors("input size=5x8x8\nmaxpool p: window=2\noutput classes=2\n") == [
        "2:19: maxpool 'p': window 2x2x2 does not tile its input 5x8x8 (pooling windows do not "
        "overlap and must divide the input exactly); add round=floor to drop the rest "
        "(PyTorch, Keras) or round=ceil for a last, partial window (Caffe)"
    ]
