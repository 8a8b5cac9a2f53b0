"""Command-line option helpers shared by the subcommands' parsers. The CLI (chaosgen.cli) owns
them; they live apart from it so that the modules registering subcommands (train, tune, data,
predict) need not import the CLI: nothing imports chaosgen.cli (tests/test_imports.py)."""

from __future__ import annotations

import argparse
import math


def bounded(kind: type[int] | type[float], low: float, high: float, low_open: bool = False):
    """An argparse `type`: a finite `kind` in [low, high] ((low, high] with low_open); anything
    else (nan, inf, out of range, not a number) is a usage error that names the range."""

    def fmt(x: float) -> str:
        return f"{int(x):,}" if kind is int else f"{x:g}"

    what = "an integer" if kind is int else "a number"
    what += f" in {'(' if low_open else '['}{fmt(low)}, {fmt(high)}]"

    def parse(text: str) -> int | float:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, found {text!r}") from None
        if not (math.isfinite(v) and (low < v if low_open else low <= v) and v <= high):
            raise argparse.ArgumentTypeError(f"must be {what}, found {text}")
        return v

    return parse


def add_compile_options(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that compiles a spec."""
    p.add_argument("spec", help="network spec file (.net)")
    p.add_argument(
        "--target", default="native", help="native (default), avx512, avx2, generic, knl, knc"
    )
    p.add_argument(
        "--cc", default=None, help="compiler: gcc (default), clang, icc, icx; or $CXX/$CC"
    )
    p.add_argument(
        "--build-dir", default=None, help="build cache (default $CHAOSGEN_CACHE or ./build)"
    )
