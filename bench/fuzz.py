"""Fuzz the front end and code generator with mutants of the shipped specs, and g++ with what
they accept. Each case must end as code (which g++ accepts) or as a SpecError of located,
printable diagnostics (tests/specfuzz.py); anything else is a failure, listed with its seed.

    python bench/fuzz.py --cases 10000 --build syntax --jobs 2

--build syntax runs `g++ -fsyntax-only` on every distinct accepted mutant, --build full compiles
each as the cffi library (-O3, slow); exit status 1 if any case failed.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import re
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from specfuzz import mutant, run_case  # noqa: E402

from chaosgen.targets import TARGETS, get_compiler  # noqa: E402


def _gxx(source, mode: str, where: Path) -> tuple[bool, float, str]:
    """g++ on one generated translation unit: (ok, seconds, the start of its errors)."""
    gxx = get_compiler("gcc")
    (where / "net.cpp").write_text(source.cpp)
    (where / source.header_name).write_text(source.header)
    tail = ["-fsyntax-only"] if mode == "syntax" else ["-shared", "-o", "net.so"]
    t0 = time.perf_counter()
    proc = subprocess.run([gxx.cxx, *gxx.flags(TARGETS["avx2"]), *tail, "net.cpp"], cwd=where,
                          capture_output=True, text=True)
    return proc.returncode == 0, time.perf_counter() - t0, proc.stderr[:500]


def main() -> int:
    """Run the cases, print a summary."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0, help="first case (default 0)")
    ap.add_argument("--build", choices=("none", "syntax", "full"), default="syntax")
    ap.add_argument("--jobs", type=int, default=2, help="parallel g++ runs")
    args = ap.parse_args()

    t0 = time.perf_counter()
    kinds: collections.Counter[str] = collections.Counter()
    failures: list[tuple[int, str]] = []
    sources: dict[str, tuple[int, object]] = {}
    accepted = slowest = 0
    slowest_seed = -1
    for seed in range(args.seed, args.seed + args.cases):
        t = time.perf_counter()
        try:
            o = run_case(mutant(seed)[1])
        except BaseException:  # noqa: BLE001 - every escape is a finding
            failures.append((seed, traceback.format_exc(limit=3)))
            continue
        if time.perf_counter() - t > slowest:
            slowest, slowest_seed = time.perf_counter() - t, seed
        if o.accepted:
            accepted += 1
            sources.setdefault(hashlib.sha256(o.source.cpp.encode()).hexdigest(), (seed, o.source))
        else:  # the message's kind: numbers and quoted text left out
            kinds[re.sub(r"'[^']*'|\b\d+\b", "_", o.first_error)[:70]] += 1
    front = time.perf_counter() - t0
    print(f"{args.cases} cases (seeds {args.seed}..{args.seed + args.cases - 1}) in {front:.0f} s:"
          f" {accepted} accepted ({len(sources)} distinct sources), "
          f"{args.cases - accepted - len(failures)} located errors, {len(failures)} failures; "
          f"slowest case {slowest:.2f} s (seed {slowest_seed})")
    print("most frequent first errors:")
    for kind, n in kinds.most_common(15):
        print(f"  {n:6d}  {kind}")
    for seed, tb in failures[:10]:
        print(f"FAILED case {seed}:\n{tb}")

    bad_builds: list[tuple[int, str]] = []
    if args.build != "none" and sources:
        t1 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
            def one(item):
                seed, source = item
                where = Path(tmp) / str(seed)
                where.mkdir()
                return seed, _gxx(source, args.build, where)

            results = list(pool.map(one, sources.values()))
        times = sorted(r[1] for _, r in results)
        bad_builds = [(seed, r[2]) for seed, r in results if not r[0]]
        print(f"g++ ({args.build}) on {len(results)} distinct accepted sources in "
              f"{time.perf_counter() - t1:.0f} s: {len(results) - len(bad_builds)} ok, "
              f"{len(bad_builds)} failed; per source median {times[len(times) // 2]:.2f} s, "
              f"max {times[-1]:.2f} s")
        for seed, err in bad_builds[:10]:
            print(f"g++ FAILED on case {seed}:\n{err}")
    return 1 if failures or bad_builds else 0


if __name__ == "__main__":
    sys.exit(main())
