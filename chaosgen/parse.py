"""Stage 1: spec text -> AST. Lark stays behind `parse_text`; its exceptions become SpecErrors."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import lark

from .errors import Diagnostic, SourceLoc, SpecError

GRAMMAR = Path(__file__).with_name("spec.lark")


@dataclass(frozen=True, slots=True, kw_only=True)
class Value:
    """An attribute value as written: `kind` is 'int', 'float', 'dims' or 'word'."""

    kind: str
    text: str
    loc: SourceLoc = field(compare=False)

    @property
    def number(self) -> float:
        """The numeric value (for 'int' and 'float')."""
        return float(self.text)

    @property
    def dims(self) -> tuple[int, ...]:
        """The integers of `AxBxC` (a single int gives a 1-tuple)."""
        return tuple(int(p) for p in self.text.split("x"))


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


@functools.cache
def _parser() -> lark.Lark:
    return lark.Lark(
        GRAMMAR.read_text(), parser="lalr", propagate_positions=True, maybe_placeholders=False
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
        found = "end of line" if tok.type == "_NL" else f"{str(tok)!r}"
        if tok.type == "$END":
            found = "end of file"
        msg = f"unexpected {found}"
    expected = sorted({_EXPECT_NAMES.get(t, repr(t.lower())) for t in _expected(err)})
    if expected:
        msg += f"; expected {' or '.join(expected)}"
    src = lines[line - 1] if 0 < line <= len(lines) else None
    return SpecError([Diagnostic(SourceLoc(path, line, col), msg, src)])


def _expected(err: lark.exceptions.UnexpectedInput) -> set[str]:
    return set(getattr(err, "expected", None) or getattr(err, "allowed", None) or ())


def parse_text(text: str, path: str = "<string>") -> Spec:
    """Parse spec text into an AST; raise SpecError (located) on a syntax error."""
    lines = tuple(text.splitlines())
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
    return Spec(
        path=path,
        network=network,
        statements=tuple(statements),
        network_loc=network_loc,
        lines=lines,
    )


def _value(path: str, tree: lark.Tree) -> Value:
    tok = tree.children[0]
    kind = {"dims": "dims", "word": "word"}.get(tree.data, "")
    if not kind:
        kind = "int" if tok.lstrip("+-").isdigit() else "float"
    return Value(kind=kind, text=str(tok), loc=_loc(path, tok))


def read_spec_text(path: str | Path) -> str:
    """Read a spec file, turning unreadable, empty or binary files into located errors."""
    p = Path(path)
    where = SourceLoc(str(path), 1, 1)
    try:
        data = p.read_bytes()
    except IsADirectoryError:
        raise SpecError([Diagnostic(where, "is a directory, not a spec file")]) from None
    except OSError as e:
        raise SpecError([Diagnostic(where, f"cannot read file: {e.strerror}")]) from None
    if b"\0" in data:
        raise SpecError([Diagnostic(where, "not a text file (contains NUL bytes)")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError([Diagnostic(where, f"not a UTF-8 text file (byte {e.start})")]) from None
    if not text.strip():
        raise SpecError([Diagnostic(where, "empty spec: expected an input, layers and an output")])
    return text


def parse_file(path: str | Path) -> Spec:
    """Read and parse one spec file."""
    return parse_text(read_spec_text(path), str(path))
