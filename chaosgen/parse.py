"""Stage 1: spec text -> AST. Lark stays behind `parse_text`; its exceptions become SpecErrors."""

from __future__ import annotations

import bisect
import functools
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import lark

from .errors import Diagnostic, SourceLoc, SpecError, refuse_special_file, shown

MAX_INT_DIGITS = 20  # beyond every bound of the language (seeds < 2**63 have 19 digits)
# The parser (Lark, LALR in Python) needs about 0.1 ms per token: a bound on the tokens outside
# comments keeps a huge spec a quick error; 64 layers need about 1,000 tokens.
MAX_TOKENS = 20_000
MAX_FILE_BYTES = 1_000_000
_TOKEN = re.compile(r"[^\s#=:]+|[=:]")
BOM = "\ufeff"

GRAMMAR = Path(__file__).with_name("spec.lark")


@dataclass(frozen=True, slots=True, kw_only=True)
class Value:
    """An attribute value as written: `kind` is 'int', 'float', 'dims', 'word' or 'list'
    (numbers separated by commas, written back without spaces)."""

    kind: str
    text: str
    loc: SourceLoc = field(compare=False)

    @property
    def number(self) -> float:
        """The numeric value (for 'int' and 'float')."""
        return float(self.text)

    @property
    def integer(self) -> int:
        """The value of an 'int'."""
        return _integer(self.text)

    @property
    def dims(self) -> tuple[int, ...]:
        """The integers of `AxBxC` (a single int gives a 1-tuple)."""
        return tuple(_integer(p) for p in self.text.split("x"))

    @property
    def numbers(self) -> tuple[float, ...]:
        """The values of a 'list' (or of one number)."""
        return tuple(float(p) for p in self.text.split(","))


def _integer(text: str) -> int:
    """int(text) without its leading zeros (int() refuses strings of over 4,300 digits)."""
    sign, digits = ("-" if text.startswith("-") else ""), text.lstrip("+-").lstrip("0")
    return int(sign + (digits or "0"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Attr:
    """`key=value`."""

    key: str
    value: Value
    loc: SourceLoc = field(compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Statement:
    """One line: a kind (`conv`, `train`, ...), an optional name and its attributes."""

    kind: str
    name: str | None
    attrs: tuple[Attr, ...]
    loc: SourceLoc = field(compare=False)
    name_loc: SourceLoc | None = field(compare=False, default=None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Spec:
    """A whole spec file as written."""

    path: str
    network: str | None
    statements: tuple[Statement, ...]
    network_loc: SourceLoc | None = field(compare=False, default=None)
    lines: tuple[str, ...] = field(compare=False, default=())

    def to_text(self) -> str:
        """Print back in canonical form (`parse(print(ast)) == ast`)."""
        out = [f"network {self.network}"] if self.network else []
        for s in self.statements:
            head = f"{s.kind} {s.name}:" if s.name else s.kind
            out.append(" ".join([head, *(f"{a.key}={a.value.text}" for a in s.attrs)]))
        return "\n".join(out) + "\n"


class _Continuation(lark.lark.PostLex):
    """Joins continuation lines: a line indented by more characters (a tab counts as one) than
    the line where its statement begins continues that statement, so the line end before it is
    dropped. Comment lines and blank lines between do not count; the first statement's own
    indentation is its base, so there is nothing for it to continue."""

    # a line may break wherever a statement could end (between attributes), so the lexer needs
    # no line ends where the parser takes none
    always_accept = ()

    def process(self, stream):
        base = None  # indentation of the line where the current statement began
        for tok in stream:
            if tok.type == "_NL":
                indent = len(tok.value) - tok.value.rfind("\n") - 1
                if base is not None and indent > base:
                    continue  # a continuation line: the statement goes on
                base = indent  # the next statement begins on that line
                yield tok
                continue
            if base is None:  # the first token of the file
                base = tok.column - 1
            yield tok


@functools.cache
def _parser() -> lark.Lark:
    return lark.Lark(
        GRAMMAR.read_text(),
        parser="lalr",
        propagate_positions=True,
        maybe_placeholders=False,
        postlex=_Continuation(),
    )


def _loc(path: str, tok: lark.Token | lark.Tree) -> SourceLoc:
    meta = tok if isinstance(tok, lark.Token) else tok.meta
    return SourceLoc(path, meta.line, meta.column)


_EXPECT_NAMES = {
    "NAME": "a name",
    "NUMBER": "a number",
    "DIMS": "sizes like 4x4",
    "EQUAL": "'='",
    "COLON": "':'",
    "COMMA": "','",
    "_NL": "end of line",
    "$END": "end of file",
}


def _syntax_error(
    path: str, lines: tuple[str, ...], err: lark.exceptions.UnexpectedInput
) -> SpecError:
    line, col = max(err.line, 1), max(err.column, 1)
    if isinstance(err, lark.exceptions.UnexpectedCharacters):
        bad = (
            lines[line - 1][col - 1] if line <= len(lines) and col <= len(lines[line - 1]) else "?"
        )
        msg = f"unexpected character {bad!r}"
    elif isinstance(err, lark.exceptions.UnexpectedEOF):
        msg = "unexpected end of file"
    else:
        tok = err.token
        found = "end of line" if tok.type == "_NL" else f"'{shown(str(tok))}'"
        if tok.type == "$END":
            found = "end of file"
        msg = f"unexpected {found}"
    expected = sorted({_EXPECT_NAMES.get(t, repr(t.lower())) for t in _expected(err)})
    if expected:
        msg += f"; expected {' or '.join(expected)}"
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    if col > 1 and not text[: col - 1].strip() and "end of line" in expected:
        msg += " (a line indented further than the statement above continues it)"
    src = lines[line - 1] if 0 < line <= len(lines) else None
    return SpecError([Diagnostic(SourceLoc(path, line, col), msg, src)])


def _expected(err: lark.exceptions.UnexpectedInput) -> set[str]:
    return set(getattr(err, "expected", None) or getattr(err, "allowed", None) or ())


# --- what a line is ---------------------------------------------------------------------------
# One definition for the parser, the checker, the error printer and the code generator: a leading
# byte-order mark is dropped, CR LF and a lone CR end a line as LF does, and every other line
# break Python knows (VT, FF, FS, GS, RS, NEL, U+2028, U+2029) is not a line end: form feed is
# whitespace, the others are errors (`_bad_characters`), so no tool can see other lines than ours.
def normalise(text: str) -> str:
    """The text every stage sees: no leading byte-order mark, every line ended by LF."""
    text = text.removeprefix(BOM)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def split_lines(text: str) -> tuple[str, ...]:
    """The lines of normalised text, split at LF only (not `str.splitlines`)."""
    lines = text.split("\n")
    return tuple(lines[:-1] if lines[-1] == "" else lines)


_SUSPECT = re.compile(r"[^\t\n\f\x20-\x7e]")  # candidates; non-ASCII text may still be fine


def _bad_char(c: str) -> str | None:
    """Why `c` may not appear anywhere in a spec (None: it may)."""
    cat = unicodedata.category(c)
    code = f"U+{ord(c):04X}"
    if cat == "Cc":
        return f"control character {code} is not allowed (only tab, form feed and line ends are)"
    if cat in ("Zl", "Zp"):
        what = unicodedata.name(c).lower()
        return f"{what} {code} is not allowed; lines end at LF, CR LF or CR"
    if c == BOM:
        return f"byte-order mark {code} is allowed only at the start of the file"
    if cat == "Cf":  # bidi overrides, zero-width characters: text that reads otherwise than it is
        return f"invisible character {code} ({unicodedata.name(c, '?')}) is not allowed"
    if cat == "Cs":
        return f"unpaired surrogate {code} is not allowed (the text is not valid Unicode)"
    return None


def _bad_characters(path: str, text: str, lines: tuple[str, ...]) -> list[Diagnostic]:
    """A located error for every character that is not allowed (see `normalise`)."""
    starts = [0]
    for ln in lines[:-1]:
        starts.append(starts[-1] + len(ln) + 1)
    out = []
    for m in _SUSPECT.finditer(text):
        why = _bad_char(m.group())
        if why:
            line = bisect.bisect_right(starts, m.start())
            col = m.start() - starts[line - 1] + 1
            out.append(Diagnostic(SourceLoc(path, line, col), why, lines[line - 1]))
    return out


def _too_many_tokens(path: str, lines: tuple[str, ...]) -> list[Diagnostic]:
    """An error at the first token past MAX_TOKENS (words, numbers, `=` and `:` outside
    comments), before the parser spends minutes on it."""
    seen = 0
    for n, line in enumerate(lines, 1):
        for m in _TOKEN.finditer(line.split("#", 1)[0]):
            seen += 1
            if seen > MAX_TOKENS:
                msg = (f"the spec is too large: more than {MAX_TOKENS} words, numbers and "
                       f"symbols outside comments (64 layers need about 1000)")
                return [Diagnostic(SourceLoc(path, n, m.start() + 1), msg, line)]
    return []


def parse_text(text: str, path: str = "<string>") -> Spec:
    """Parse spec text into an AST; raise SpecError (located) on a syntax error, a character
    that is not allowed or a number out of range."""
    if len(text) > MAX_FILE_BYTES:  # characters: never more than the bytes of the file
        msg = f"too large for a spec file (more than {MAX_FILE_BYTES} bytes)"
        raise SpecError([Diagnostic(SourceLoc(path, 1, 1), msg)])
    text = normalise(text)
    lines = split_lines(text)
    bad = _bad_characters(path, text, lines) or _too_many_tokens(path, lines)
    if bad:
        raise SpecError(bad)
    try:
        tree = _parser().parse(text + "\n")
    except lark.exceptions.UnexpectedInput as err:
        raise _syntax_error(path, lines, err) from None
    network, network_loc, statements = None, None, []
    for node in tree.children:
        if node.data == "network":
            loc = _loc(path, node)
            if network_loc is not None:  # the later name would silently win
                where = f"already named '{network}' at line {network_loc.line}"
                msg = f"a second 'network' statement; {where}"
                raise SpecError([Diagnostic(loc, msg, lines[loc.line - 1])])
            network, network_loc = str(node.children[0]), loc
            continue
        toks = [c for c in node.children if isinstance(c, lark.Token)]
        attrs = tuple(
            Attr(key=str(a.children[0]), value=_value(path, a.children[1]), loc=_loc(path, a))
            for a in node.children
            if isinstance(a, lark.Tree)
        )
        statements.append(
            Statement(
                kind=str(toks[0]),
                name=str(toks[1]) if len(toks) > 1 else None,
                attrs=attrs,
                loc=_loc(path, toks[0]),
                name_loc=_loc(path, toks[1]) if len(toks) > 1 else None,
            )
        )
    bad = [d for st in statements for a in st.attrs if (d := _literal_error(a.value, lines))]
    if bad:
        raise SpecError(bad)
    return Spec(
        path=path,
        network=network,
        statements=tuple(statements),
        network_loc=network_loc,
        lines=lines,
    )


def _value(path: str, tree: lark.Tree) -> Value:
    tok = tree.children[0]
    if tree.data == "numbers":
        return Value(kind="list", text=",".join(tree.children), loc=_loc(path, tok))
    kind = {"dims": "dims", "word": "word"}.get(tree.data, "")
    if not kind:
        kind = "int" if tok.lstrip("+-").isdigit() else "float"
    return Value(kind=kind, text=str(tok), loc=_loc(path, tok))


def _literal_error(v: Value, lines: tuple[str, ...]) -> Diagnostic | None:
    """A number that no attribute could take and Python should not convert: an integer of more
    than MAX_INT_DIGITS digits (int() refuses 4,300) or a float that overflows to infinity."""
    why = None
    if v.kind in ("int", "dims"):
        widest = max(len(p.lstrip("+-").lstrip("0")) for p in v.text.split("x"))
        if widest > MAX_INT_DIGITS:
            why = (f"integer of {widest} digits is out of range "
                   f"(at most {MAX_INT_DIGITS} digits): {shown(v.text)}")
    elif v.kind in ("float", "list") and not all(map(math.isfinite, v.numbers)):
        why = f"number {shown(v.text)} is out of range (beyond about 1.8e308)"
    if why is None:
        return None
    return Diagnostic(v.loc, why, lines[v.loc.line - 1])


def read_spec_text(path: str | Path) -> str:
    """Read a spec file, turning unreadable, empty or binary files into located errors."""
    p = Path(path)
    where = SourceLoc(str(path), 1, 1)
    refuse_special_file(p, "a spec")
    try:
        with p.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except IsADirectoryError:
        raise SpecError([Diagnostic(where, "is a directory, not a spec file")]) from None
    except OSError as e:
        raise SpecError([Diagnostic(where, f"cannot read file: {e.strerror}")]) from None
    if len(data) > MAX_FILE_BYTES:
        msg = f"too large for a spec file (more than {MAX_FILE_BYTES} bytes)"
        raise SpecError([Diagnostic(where, msg)])
    if b"\0" in data:
        raise SpecError([Diagnostic(where, "not a text file (contains NUL bytes)")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError([Diagnostic(where, f"not a UTF-8 text file (byte {e.start})")]) from None
    if not text.removeprefix(BOM).strip():
        raise SpecError([Diagnostic(where, "empty spec: expected an input, layers and an output")])
    return text


def parse_file(path: str | Path) -> Spec:
    """Read and parse one spec file."""
    return parse_text(read_spec_text(path), str(path))
