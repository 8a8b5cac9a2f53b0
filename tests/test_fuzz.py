"""Spec fuzzer: mutants of the shipped specs (token deletions, duplications and swaps, extreme
numbers, control and separator characters, long lines, byte-order marks, line ends) are either
compiled to code g++ accepts or rejected with located, printable diagnostics: never another
exception, never a hang (tests/specfuzz.py; bench/fuzz.py runs 10,000+ with g++ on each).

CHAOSGEN_FUZZ_SEED=N starts the cases at N (default 0: the same cases every run).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import traceback
from pathlib import Path

import pytest
from specfuzz import mutant, run_case

from chaosgen.targets import TARGETS, get_compiler

CASES = 300
BUILDS = 6  # distinct accepted mutants checked by g++ -fsyntax-only
SEED0 = int(os.environ.get("CHAOSGEN_FUZZ_SEED", "0"))


@pytest.fixture(scope="module")
def outcomes() -> dict:
    """Every case's outcome, or the traceback of its failure."""
    done: dict[int, object] = {}
    for seed in range(SEED0, SEED0 + CASES):
        try:
            done[seed] = run_case(mutant(seed)[1])
        except BaseException:  # noqa: BLE001 - any escape is a finding, reported with its case
            done[seed] = traceback.format_exc(limit=4)
    return done


def test_every_mutant_is_code_or_a_located_error(outcomes: dict) -> None:
    """No case raises anything but a SpecError of located, printable, bounded diagnostics, and
    no case hangs; the mutator reaches both outcomes."""
    failed = {s: o for s, o in outcomes.items() if isinstance(o, str)}
    assert not failed, "\n".join(f"case {s} (tests/specfuzz.py mutant({s})):\n{tb}"
                                 for s, tb in list(failed.items())[:5])
    accepted = sum(o.accepted for o in outcomes.values())
    assert accepted >= CASES // 20 and CASES - accepted >= CASES // 2, accepted


def test_accepted_mutants_compile(outcomes: dict, tmp_path: Path) -> None:
    """The first distinct accepted mutants pass g++ -fsyntax-only with the target's flags."""
    gxx = get_compiler("gcc")
    flags = gxx.flags(TARGETS["avx2"])
    seen: set[str] = set()
    for seed, o in outcomes.items():
        if isinstance(o, str) or not o.accepted:
            continue
        digest = hashlib.sha256(o.source.cpp.encode()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        d = tmp_path / str(seed)
        d.mkdir()
        (d / "net.cpp").write_text(o.source.cpp)
        (d / o.source.header_name).write_text(o.source.header)
        proc = subprocess.run([gxx.cxx, *flags, "-fsyntax-only", "net.cpp"], cwd=d,
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"case {seed}: {proc.stderr[:2000]}"
        if len(seen) == BUILDS:
            break
    assert len(seen) == BUILDS
