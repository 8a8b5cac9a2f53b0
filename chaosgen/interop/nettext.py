"""Spec text written by the importers: statements in, a .net file out, checked by chaosgen's own
front end (so an imported network obeys every rule a hand-written one does)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import ir
from ..check import check
from ..errors import ChaosgenError, SpecError
from ..parse import parse_text

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def f32(x: float) -> str:
    """The shortest decimal that reads back as the same float32 (0.1 for float32(0.1)): a value
    that went through float32 is written as its author wrote it."""
    return np.format_float_positional(np.float32(x), unique=True, trim="-")


def name_or_none(text: str) -> str | None:
    """`text` as a layer name if it is one (an identifier of at most 64 characters), else None
    (chaosgen then names the layer after its kind)."""
    return text if _NAME.fullmatch(text) else None


@dataclass
class Statement:
    """One statement: `kind [name:] key=value ...` (values already as spec text)."""

    kind: str
    attrs: dict[str, str] = field(default_factory=dict)
    name: str | None = None
    note: str = ""  # a comment written after it: where it came from

    def text(self) -> str:
        """The statement as a line."""
        head = f"{self.kind} {self.name}:" if self.name else self.kind
        line = " ".join([head, *(f"{k}={v}" for k, v in self.attrs.items())])
        return f"{line}  # {self.note}" if self.note else line


def write(statements: list[Statement], header: str, network: str | None,
          out: Path, source: str) -> tuple[str, ir.Net]:
    """The spec text of `statements` and its checked IR. A layer name used twice is dropped
    (chaosgen numbers it); an error of chaosgen's checker is a bug of the importer or a model
    beyond the language, reported as one line naming the source."""
    seen: set[str] = set()
    for st in statements:
        if st.name is not None and st.name in seen:
            st.name = None
        if st.name is not None:
            seen.add(st.name)
    lines = [f"# {line}" for line in header.splitlines()]
    if network and name_or_none(network):
        lines.append(f"network {network}")
    lines += [st.text() for st in statements]
    text = "\n".join(lines) + "\n"
    try:
        net = check(parse_text(text, str(out)))
    except SpecError as e:
        first = e.diagnostics[0]
        raise ChaosgenError(
            f"{source}: the translated network is not valid chaosgen: {first.message} "
            f"(in `{first.source_line.strip() if first.source_line else ''}`)"
        ) from None
    return text, net
