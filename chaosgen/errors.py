"""Errors of every stage, and source locations that print like gcc's (`file:line:col`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SourceLoc:
    """A 1-based position in a spec file."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


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
        """gcc style: location, message, then the source line and a caret under the column."""
        text = f"{self.loc}: error: {self.message}"
        if self.source_line is not None and self.loc.col > 0:
            line = self.source_line.rstrip("\n").expandtabs(1)
            text += f"\n {line}\n {' ' * (self.loc.col - 1)}^"
        return text


class SpecError(ChaosgenError):
    """One or more located errors in a spec file, reported together."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = sorted(diagnostics, key=lambda d: (d.loc.line, d.loc.col))
        super().__init__("\n".join(d.render() for d in self.diagnostics))

    def render(self) -> str:
        """All diagnostics, then a count, as compilers do."""
        n = len(self.diagnostics)
        return f"{self}\n{n} error{'s' if n != 1 else ''} generated."


class BuildError(ChaosgenError):
    """The C++ compiler is missing or failed."""


class DataError(ChaosgenError):
    """A data file is missing, truncated, corrupt or of the wrong kind."""


class TrainingError(ChaosgenError):
    """Training cannot go on (for example the loss became NaN)."""
