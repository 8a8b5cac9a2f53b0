"""Errors of every stage, and source locations that print like gcc's (`file:line:col`)."""

from __future__ import annotations

import os
import stat
import unicodedata
from dataclasses import dataclass

MAX_SHOWN = 40  # characters of a user's token quoted in a message
WINDOW = 100  # characters of a source line shown around the column
MAX_ERRORS = 20  # diagnostics printed, like gcc's -fmax-errors


def printable(text: str) -> str:
    """`text` with every character a terminal would act on (controls, invisible formatting,
    separators, surrogates) written as <U+XXXX>; tabs become spaces."""
    return "".join(_printable_char(c) for c in text)


def _printable_char(c: str) -> str:
    if c == "\t":
        return " "
    if " " <= c <= "~" or (c > "\x7f" and unicodedata.category(c)[0] not in "CZ"):
        return c
    return f"<U+{ord(c):04X}>"


def shown(text: str, limit: int = MAX_SHOWN) -> str:
    """A user's token as quoted in a message: printable, and a long one shortened to its ends
    and its length (a 5,000-digit number is not echoed whole)."""
    if len(text) > limit:
        keep = limit // 2
        text = f"{text[:keep]}...{text[-keep // 2 :]} ({len(text)} characters)"
    return printable(text)


@dataclass(frozen=True, slots=True)
class SourceLoc:
    """A 1-based position in a spec file."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{printable(self.file)}:{self.line}:{self.col}"


NOWHERE = SourceLoc("<none>", 0, 0)


class ChaosgenError(Exception):
    """Base of every error chaosgen reports to a user as one clean message (never a traceback)."""

    exit_code = 1

    def render(self) -> str:
        """The text printed to stderr."""
        return f"chaosgen: error: {self}"


class UsageError(ChaosgenError):
    """Command-line misuse (exit status 2, like argparse)."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One located message about a spec."""

    loc: SourceLoc
    message: str
    source_line: str | None = None

    def render(self) -> str:
        """gcc style: location, message, then the source line and a caret under the column (of a
        long line, a window around the column; characters a terminal would act on, escaped)."""
        text = f"{self.loc}: error: {self.message}"
        if self.source_line is not None and self.loc.col > 0:
            line, caret = source_window(self.source_line, self.loc.col)
            text += f"\n {line}\n {' ' * caret}^"
        return text


def source_window(line: str, col: int, width: int = WINDOW) -> tuple[str, int]:
    """The part of `line` shown under a message (all of it, or `width` characters around the
    1-based column with '...' at a cut end), printable, and the caret's offset in it."""
    i = col - 1
    lo, hi = 0, len(line)
    if hi > width:
        lo = max(0, min(i - width // 2, hi - width))
        hi = lo + width
    before, rest = printable(line[lo:i]), printable(line[i:hi])
    if lo > 0:
        before = "..." + before
    if hi < len(line):
        rest += "..."
    return before + rest, len(before)


class SpecError(ChaosgenError):
    """One or more located errors in a spec file, reported together."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = sorted(diagnostics, key=lambda d: (d.loc.line, d.loc.col))
        text = "\n".join(d.render() for d in self.diagnostics[:MAX_ERRORS])
        more = len(self.diagnostics) - MAX_ERRORS
        if more > 0:
            text += f"\n{more} more error{'s' if more != 1 else ''} not shown"
        super().__init__(text)

    def render(self) -> str:
        """The first MAX_ERRORS diagnostics, then a count of all, as compilers do."""
        n = len(self.diagnostics)
        return f"{self}\n{n} error{'s' if n != 1 else ''} generated."


class BuildError(ChaosgenError):
    """The C++ compiler is missing or failed."""


class DataError(ChaosgenError):
    """A data file is missing, truncated, corrupt or of the wrong kind."""


class TrainingError(ChaosgenError):
    """Training cannot go on (for example the loss became NaN)."""


def refuse_special_file(path: str | os.PathLike[str], what: str) -> None:
    """A FIFO, socket or device where chaosgen reads a file is an error now, not a read that
    blocks for ever (a FIFO without a writer) or never ends (/dev/zero). A missing file or a
    directory is left to the caller, which says so in its own words."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return
    kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device or socket"
    raise ChaosgenError(
        f"{printable(os.fsdecode(path))}: {kind}, not a regular file; {what} must be a file"
    )
