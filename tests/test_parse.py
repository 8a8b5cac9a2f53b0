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
    # (the statements equally indented: a line indented further would continue the one above)
    text = "# header\n\n  network n\n  conv\tc1: maps=5 kernel=4x3 eta=1e-3 act=relu k=7\n"
    spec = parse_text(text, "x.net")
    (st,) = spec.statements
    assert (st.kind, st.name) == ("conv", "c1")
    assert str(spec.network_loc) == "x.net:3:3"
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


# --- one definition of a line, characters, numbers, output size (issue 10) --------------------
SMALL = "input size=4x4\nconv c1: maps=2 kernel=3\noutput classes=2\n"
CC = "control character U+{} is not allowed (only tab, form feed and line ends are)"


@pytest.mark.parametrize(
    "text",
    [
        "\ufeff" + SMALL,  # a UTF-8 byte-order mark
        SMALL.replace("\n", "\r\n"),  # CR LF
        SMALL.replace("\n", "\r"),  # CR only (classic Mac OS)
        "input size=4x4\r\nconv c1: maps=2 kernel=3\routput classes=2",  # mixed, no last end
    ],
    ids=["bom", "crlf", "cr", "mixed"],
)
def test_line_ends_and_bom_are_accepted(text: str) -> None:
    """The same statements at the same lines and columns whatever the line ends (regression: a
    BOM was an 'unexpected character', a CR-only file one long line)."""
    spec = parse_text(text, "e.net")
    assert spec == parse_text(SMALL, "e.net")
    assert [str(s.loc) for s in spec.statements] == ["e.net:1:1", "e.net:2:1", "e.net:3:1"]
    assert spec.lines == ("input size=4x4", "conv c1: maps=2 kernel=3", "output classes=2")


@pytest.mark.parametrize(
    "char, message",
    [
        ("\v", CC.format("000B")),
        ("\x1c", CC.format("001C")),
        ("\x1e", CC.format("001E")),
        ("\x85", CC.format("0085")),
        ("\x1b", CC.format("001B")),
        ("\u2028", "line separator U+2028 is not allowed; lines end at LF, CR LF or CR"),
        ("\u2029", "paragraph separator U+2029 is not allowed; lines end at LF, CR LF or CR"),
        ("\u202e", "invisible character U+202E (RIGHT-TO-LEFT OVERRIDE) is not allowed"),
        ("\ufeff", "byte-order mark U+FEFF is allowed only at the start of the file"),
        ("\ud800", "unpaired surrogate U+D800 is not allowed (the text is not valid Unicode)"),
    ],
)
def test_other_line_breaks_and_invisible_characters_are_located_errors(
    char: str, message: str
) -> None:
    """Every line break str.splitlines() knows besides LF/CR is an error at its own line and
    column, even inside a comment, and the echoed line is that line with the character shown
    as <U+XXXX> (regression: the parser split at LF, the error printer at all of them, so a
    message showed another line's text)."""
    text = f"input size=4\n# note{char}conv c1: maps=2 kernel=3 \\\nconv c2: maps=0{char}\n"
    with pytest.raises(SpecError) as err:
        parse_text(text, "c.net")
    assert [(str(d.loc), d.message) for d in err.value.diagnostics] == [
        ("c.net:2:7", message),
        ("c.net:3:16", message),
    ]
    code = f"<U+{ord(char):04X}>"
    rendered = err.value.render().splitlines()
    assert rendered[1:3] == [f" # note{code}conv c1: maps=2 kernel=3 \\", " " * 7 + "^"]
    assert rendered[4:6] == [f" conv c2: maps=0{code}", " " * 16 + "^"]


def test_form_feed_is_whitespace_not_a_line_end() -> None:
    """A form feed separates tokens like a space and does not start a line: the statement
    after it keeps its line number."""
    spec = parse_text("input\fsize=4 # a\fb\nconv c1:\fmaps=2 kernel=3\n", "f.net")
    assert [str(s.loc) for s in spec.statements] == ["f.net:1:1", "f.net:2:1"]
    assert str(spec.statements[1].attrs[0].value.loc) == "f.net:2:15"
    assert spec.lines[1] == "conv c1:\fmaps=2 kernel=3"


@pytest.mark.parametrize(
    "value, message",
    [
        ("1" + "0" * 4999, "integer of 5000 digits is out of range (at most 20 digits): "
         "10000000000000000000...0000000000 (5000 characters)"),
        ("-" + "9" * 21, "integer of 21 digits is out of range (at most 20 digits): "
         "-999999999999999999999"),
        ("4x" + "7" * 300, "integer of 300 digits is out of range (at most 20 digits): "
         "4x777777777777777777...7777777777 (302 characters)"),
        ("1e99999", "number 1e99999 is out of range (beyond about 1.8e308)"),
        ("-2.5e309", "number -2.5e309 is out of range (beyond about 1.8e308)"),
        ("9" * 400 + ".5", "number 99999999999999999999...99999999.5 (402 characters) "
         "is out of range (beyond about 1.8e308)"),
    ],
)
def test_absurd_numbers_are_located_errors(value: str, message: str) -> None:
    """Numbers no attribute could take are errors at the number, quoted shortened (regression:
    a 5,000-digit integer made int() raise, an internal error)."""
    with pytest.raises(SpecError) as err:
        parse_text(f"input size=4\ntrain   seed={value}\n", "n.net")
    assert [(str(d.loc), d.message) for d in err.value.diagnostics] == [("n.net:2:14", message)]


def test_leading_zeros_do_not_count_as_digits() -> None:
    """A long run of zeros before a small integer is that integer."""
    spec = parse_text(f"input size={'0' * 5000}29\n", "z.net")
    assert spec.statements[0].attrs[0].value.dims == (29,)


def test_long_line_is_shown_as_a_window_around_the_column() -> None:
    """An error far into a 100 kB line shows about 100 characters around the column, with '...'
    at each cut end and the caret under the offending character."""
    text = "input size=4 " + "k" * 100_000 + "=1 @\n"
    with pytest.raises(SpecError) as err:
        parse_text(text, "w.net")
    (diag,) = err.value.diagnostics
    assert diag.loc.col == 100_017
    head, line, caret = diag.render().splitlines()
    assert head.startswith("w.net:1:100017: error: unexpected character '@'")
    assert line.startswith(" ...kkk") and line.endswith("k=1 @") and len(line) == 1 + 3 + 100
    assert line[len(caret) - 1] == "@" and caret.strip() == "^"


def test_error_output_is_capped() -> None:
    """Of 6,000 errors on one 24 kB line, 20 are printed (each with a bounded echo), then how
    many were not, then the count of all (regression: each echoed the whole line); the same
    for 10,000 errors on as many lines."""
    text = "input size=4\nconv c1: maps=2 kernel=3 " + "bad=1 " * 6_000 + "\noutput classes=2\n"
    with pytest.raises(SpecError) as err:
        check_text(text)
    out = err.value.render()
    lines = out.splitlines()
    assert len(err.value.diagnostics) == 6_000
    assert sum(": error: " in ln for ln in lines) == 20
    assert lines[-2:] == ["5980 more errors not shown", "6000 errors generated."]
    assert len(out) < 20 * 400
    with pytest.raises(SpecError) as err:
        check_text("input size=4\n" + "bogus\n" * 10_000 + "output classes=2\n")
    assert err.value.render().splitlines()[-2:] == [
        "9980 more errors not shown",
        "10000 errors generated.",
    ]


def check_text(text: str):
    """Parse and check (the front end on a string)."""
    from chaosgen.check import check

    return check(parse_text(text, "t.net"))


def test_cli_reports_absurd_input_as_located_errors(tmp_path, capsys) -> None:
    """Through `chaosgen compile`: a 5,000-digit number is exit 1 with one located message (not
    an internal error); a file with a BOM and CR-only line ends compiles."""
    from chaosgen.cli import main

    bad = tmp_path / "digits.net"
    bad.write_text(f"input size=29\noutput classes={'9' * 5000}\n")
    assert main(["compile", str(bad), "--emit", "ir"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "internal error" not in err and "Traceback" not in err
    assert err.splitlines()[0] == (
        f"{bad}:2:16: error: integer of 5000 digits is out of range (at most 20 digits): "
        "99999999999999999999...9999999999 (5000 characters)"
    )
    assert len(err) < 500
    ok = tmp_path / "mac.net"
    ok.write_bytes(b"\xef\xbb\xbfinput size=29\r# old Mac\routput classes=10\r")
    assert main(["compile", str(ok), "--emit", "ast"]) == 0
    assert capsys.readouterr().out == "input size=29\noutput classes=10\n"


def test_source_window_cuts_both_ends_around_the_column() -> None:
    """A column in the middle of a long line: '...' on both sides, the caret on its character;
    escapes for unprintable characters shift the caret with them."""
    from chaosgen.errors import source_window

    line = "a" * 150 + "X" + "b" * 149
    shown, caret = source_window(line, 151)
    assert shown == "..." + "a" * 50 + "X" + "b" * 49 + "..." and shown[caret] == "X"
    assert source_window("\v\vX", 3) == ("<U+000B><U+000B>X", 16)
    assert source_window("short", 3) == ("short", 2)


def test_spec_size_is_bounded_before_parsing(tmp_path) -> None:
    """More than MAX_TOKENS tokens outside comments is one error at the first token past the
    bound (regression: 100,000 lines kept the parser busy for minutes); comments do not count;
    a file over MAX_FILE_BYTES is an error at file:1:1 without reading it all."""
    from chaosgen.parse import MAX_FILE_BYTES, MAX_TOKENS

    # every line is 4 tokens (`dense`, `units`, `=`, `2`): exactly MAX_TOKENS in all
    n = (MAX_TOKENS - 8) // 4
    assert 4 * n + 8 == MAX_TOKENS
    fits = "input size=4  # " + "c " * 50_000 + "\n" + "dense units=2\n" * n
    spec = parse_text(fits + "output classes=2\n", "big.net")
    assert len(spec.statements) == 2 + n
    with pytest.raises(SpecError) as err:
        parse_text(fits + "output classes=2 k=1\n", "big.net")
    (diag,) = err.value.diagnostics
    assert (diag.loc.line, diag.loc.col) == (2 + n, 18)
    assert diag.message == (
        f"the spec is too large: more than {MAX_TOKENS} words, numbers and symbols outside "
        "comments (64 layers need about 1000)"
    )
    huge = tmp_path / "huge.net"
    huge.write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    with pytest.raises(SpecError) as err:
        parse_file(huge)
    assert str(err.value) == (
        f"{huge}:1:1: error: too large for a spec file (more than {MAX_FILE_BYTES} bytes)"
    )
    with pytest.raises(SpecError, match=r"^s.net:1:1: error: too large for a spec file"):
        parse_text("#" * (MAX_FILE_BYTES + 1), "s.net")
    huge.write_bytes(b"#" * MAX_FILE_BYTES)
    with pytest.raises(SpecError, match="no 'output' layer"):
        from chaosgen.check import check

        check(parse_file(huge))
