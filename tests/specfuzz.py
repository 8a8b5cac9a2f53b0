"""A seeded mutator of the shipped specs and the one property every mutant must have: the front
end and code generator either produce code or raise a SpecError of located, printable
diagnostics; never another exception (used by tests/test_fuzz.py and bench/fuzz.py)."""

from __future__ import annotations

import random
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chaosgen import codegen
from chaosgen.check import check
from chaosgen.errors import SpecError
from chaosgen.parse import parse_text
from chaosgen.targets import TARGETS

ROOT = Path(__file__).resolve().parent.parent
# The shipped specs, and the test nets that use every construct the paper's nets do not (pad,
# strided and ceil/floor pools, continuation lines, dropout, init=, the update rule).
SEEDS = {
    p.name: p.read_text()
    for p in sorted([*(ROOT / "specs").glob("*.net"), *(ROOT / "tests" / "nets").glob("*.net")])
}

EXTREME = [
    "0", "-1", "1", "2", "65536", "65537", "2147483648", "9223372036854775808", "1" + "0" * 5000,
    "0" * 5000 + "7", "1e99999", "-1e99999", "1e-99999", "nan", "inf", "-inf", "1.5", "0x10",
    "99x99x99", "1x65536", "65536x65536", "4x", "x4", "1e308", "+5", ".", "1" * 30,
]
CHARS = [
    "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\u202e", "\u200b", "\ufeff",
    "\x00", "\x1b", "\x7f", "\r", "\t", "\n", "\u00e9", "\U0001f600", "\\", '"', "'", "*/", "/*",
    "??/", "#", "=", ":", "x", ".", "-", "\udcff",
]


def _tokens(text: str) -> list[re.Match]:
    return list(re.finditer(r"[^\s=:]+|[=:]", text))


def _splice(text: str, start: int, end: int, new: str) -> str:
    return text[:start] + new + text[end:]


def _delete_token(t: str, r: random.Random) -> str:
    toks = _tokens(t)
    m = r.choice(toks)
    return _splice(t, m.start(), m.end(), "")


def _duplicate_token(t: str, r: random.Random) -> str:
    m = r.choice(_tokens(t))
    return _splice(t, m.end(), m.end(), " " + m.group() * r.choice([1, 1, 2, 50]))


def _swap_tokens(t: str, r: random.Random) -> str:
    a, b = sorted(r.sample(_tokens(t), 2), key=lambda m: m.start())
    return t[: a.start()] + b.group() + t[a.end() : b.start()] + a.group() + t[b.end() :]


def _extreme_number(t: str, r: random.Random) -> str:
    nums = list(re.finditer(r"(?<==)[^\s#]+", t))
    m = r.choice(nums)
    return _splice(t, m.start(), m.end(), r.choice(EXTREME))


def _insert_char(t: str, r: random.Random) -> str:
    i = r.randrange(len(t) + 1)
    return _splice(t, i, i, r.choice(CHARS))


def _repeat_line(t: str, r: random.Random) -> str:
    lines = t.split("\n")
    i = r.randrange(len(lines))
    n = r.choice([1, 2, 60, 70, 1000])
    return "\n".join(lines[:i] + [lines[i]] * n + lines[i:])


def _delete_line(t: str, r: random.Random) -> str:
    lines = t.split("\n")
    del lines[r.randrange(len(lines))]
    return "\n".join(lines)


def _long_line(t: str, r: random.Random) -> str:
    i = r.randrange(len(t) + 1)
    return _splice(t, i, i, r.choice([" k=1" * 5000, "n" * 20000, " " * 50000, "@" * 3000]))


def _line_ends(t: str, r: random.Random) -> str:
    return r.choice(["\ufeff" + t, t.replace("\n", "\r\n"), t.replace("\n", "\r"), t + "\\"])


def _truncate(t: str, r: random.Random) -> str:
    return t[: r.randrange(len(t) + 1)]


MUTATIONS: list[Callable[[str, random.Random], str]] = [
    _delete_token, _duplicate_token, _swap_tokens, _extreme_number, _extreme_number,
    _insert_char, _insert_char, _repeat_line, _delete_line, _long_line, _line_ends, _truncate,
]


def mutant(seed: int) -> tuple[str, str]:
    """The mutant of case `seed`: (name of the spec it came from, text)."""
    r = random.Random(seed)
    name = r.choice(sorted(SEEDS))
    text = SEEDS[name]
    for _ in range(r.choice([1, 1, 2, 3])):
        if _tokens(text) and len(_tokens(text)) >= 2 and re.search(r"=[^\s#]", text):
            text = r.choice(MUTATIONS)(text, r)
        else:
            text = _insert_char(text, r)
    return name, text


@dataclass(frozen=True)
class Outcome:
    """What the front end and code generator made of one mutant."""

    accepted: bool
    first_error: str = ""  # the first diagnostic's message, if rejected
    source: codegen.Source | None = None


class Hang(Exception):
    """A case ran past its time budget."""


def run_case(text: str, path: str = "fuzz.net", budget: int = 20) -> Outcome:
    """Parse, check and render `text`; assert the property (see the module docstring). A case
    that runs past `budget` seconds raises Hang (a hang is a failure, not a slow case)."""

    def alarm(signum, frame):
        raise Hang(f"no result after {budget} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(budget)
    try:
        try:
            spec = parse_text(text, path)
            net = check(spec)
            source = codegen.render(net, TARGETS["avx2"], spec.lines)
        except SpecError as err:
            assert_located(err, path)
            return Outcome(False, err.diagnostics[0].message)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert source.cpp.isascii() and source.header.isascii()
    return Outcome(True, source=source)


def assert_located(err: SpecError, path: str) -> None:
    """Every diagnostic is at a real line and column of `path`; the report is printable text of
    bounded size (at most 20 diagnostics, each with a bounded echo)."""
    assert err.diagnostics, "a SpecError without diagnostics"
    for d in err.diagnostics:
        assert d.loc.file == path and d.loc.line >= 1 and d.loc.col >= 1, d
        assert len(d.message) < 600, d.message[:200]
    text = err.render()
    assert all(line.isprintable() for line in text.split("\n")), repr(text[:300])
    assert len(text) < 20 * 1000 + 200, len(text)
