"""Stage 1, parse: text -> AST. Round trips, value kinds, positions, located syntax errors."""

from __future__ import annotations

import pytest
from conftest import ROOT, SHIPPED
from hypothesis import given, settings
from specgen import spec_texts

from chaosgen.errors import SpecError
from chaosgen.parse import parse_file, parse_text


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_spec_round_trips(name: str, in_repo) -> None:
    """print -> parse gives the same AST, and printing is a fixed point."""
    spec = parse_file(f"specs/{name}.net")
    text = spec.to_text()
    again = parse_text(text, spec.path)
    assert again == spec
    assert again.to_text() == text
    assert spec.network == name and [s.kind for s in spec.statements][0] == "input"


@settings(max_examples=200, deadline=None)
@given(spec=spec_texts())
def test_random_spec_round_trips(spec) -> None:
    """Random layout (tabs, comments, blank lines, CRLF, attribute order): the AST holds what
    was written, and print -> parse reproduces it."""
    desc, text = spec
    ast = parse_text(text, "r.net")
    assert parse_text(ast.to_text(), "r.net") == ast
    assert ast.network == desc.network
    layers = [s for s in ast.statements if s.kind != "train"]
    assert [s.kind for s in layers] == ["input", *(lay.kind for lay in desc.layers)]
    for st, lay in zip(layers[1:], desc.layers, strict=True):
        assert st.name == lay.name
        written = {k: v for k, v in lay.attrs.items() if k not in lay.omit}
        assert {a.key: a.value.text for a in st.attrs} == written
    trains = [s for s in ast.statements if s.kind == "train"]
    assert len(trains) == (0 if desc.train is None else 1)
    if trains:
        assert {a.key: a.value.text for a in trains[0].attrs} == desc.train


def test_value_kinds_and_positions() -> None:
    """Values are typed as written; lines and columns are 1-based and point at the token."""
    text = "# header\n\nnetwork n\n  conv\tc1: maps=5 kernel=4x3 eta=1e-3 act=relu k=7\n"
    spec = parse_text(text, "x.net")
    (st,) = spec.statements
    assert (st.kind, st.name) == ("conv", "c1")
    assert str(spec.network_loc) == "x.net:3:1"
    assert str(st.loc) == "x.net:4:3" and str(st.name_loc) == "x.net:4:8"
    kinds = {a.key: (a.value.kind, a.value.text, str(a.value.loc)) for a in st.attrs}
    assert kinds == {
        "maps": ("int", "5", "x.net:4:17"),
        "kernel": ("dims", "4x3", "x.net:4:26"),
        "eta": ("float", "1e-3", "x.net:4:34"),
        "act": ("word", "relu", "x.net:4:43"),
        "k": ("int", "7", "x.net:4:50"),
    }
    assert st.attrs[1].value.dims == (4, 3) and st.attrs[2].value.number == 0.001
    assert str(st.attrs[0].loc) == "x.net:4:12"


def test_locations_do_not_count_in_equality() -> None:
    """The same statements written differently are equal ASTs (positions, comments, layout)."""
    a = parse_text("input size=4x4\noutput classes=2\n", "a.net")
    b = parse_text("# c\n\n   input\tsize=4x4   # x\r\n\r\noutput classes=2", "a.net")
    assert a == b
    assert a != parse_text("input size=4x4\noutput classes=3\n", "a.net")


def test_keywords_are_only_reserved_where_they_start_a_line() -> None:
    """`network` is a keyword, but a layer may still be called network (contextual lexing)."""
    spec = parse_text("dense network: units=3\n", "k.net")
    assert spec.statements[0].name == "network" and spec.network is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("conv c1 maps=5\n", "s.net:1:9: error: unexpected 'maps'; expected ':' or '='"),
        (
            "conv c1: maps==5\n",
            "s.net:1:15: error: unexpected '='; expected a name or a number or sizes like 4x4",
        ),
        ("conv: maps=3\n", "s.net:1:5: error: unexpected ':'; expected a name or end of line"),
        (
            "input @\n",
            "s.net:1:7: error: unexpected character '@'; expected a name or end of line",
        ),
        ("network\n", "s.net:1:8: error: unexpected end of line; expected a name"),
        (
            "input size=4\n\nnetwork a b\n",
            "s.net:3:11: error: unexpected 'b'; expected end of line",
        ),
    ],
)
def test_syntax_errors_are_located(text: str, expected: str) -> None:
    """One gcc-style diagnostic with the source line and a caret under the column."""
    with pytest.raises(SpecError) as err:
        parse_text(text, "s.net")
    (diag,) = err.value.diagnostics
    rendered = diag.render().splitlines()
    assert rendered[0] == expected
    col = int(expected.split(":")[2])
    assert rendered[2] == " " + " " * (col - 1) + "^"
    assert rendered[1] == " " + text.splitlines()[diag.loc.line - 1]


def test_parse_file_reports_the_path_as_given(in_repo) -> None:
    """Locations carry the path the user typed (relative stays relative)."""
    spec = parse_file("specs/small.net")
    assert spec.path == "specs/small.net"
    assert str(spec.statements[0].loc) == "specs/small.net:4:1"
    assert parse_file(ROOT / "specs/small.net") == parse_text(
        spec.to_text(), str(ROOT / "specs/small.net")
    )
