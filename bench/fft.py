"""The crossover between direct and FFT convolution (`algorithm=direct|fft`) on this machine.

For each (map size, kernel size, input maps = output maps) a net `input -> conv c0 (1x1) -> conv
c1 -> output` is built twice, c1 direct (the cost model's weight-gradient form) and c1 by FFT,
and the three passes of c1 (forward, backward data, weight gradient; the 1x1 c0 makes c1 need
its input deltas) are timed by `chaosgen tune`'s timing program, the two builds alternating,
median of --rounds. Prints microseconds per image, fft/direct, and what algorithm=auto's cost
model picks (with its estimates). Say the machine's load beside any number you quote.

    python bench/fft.py                                # the 2D grid of docs/kernels.md
    python bench/fft.py --sizes 32 --kernels 5,9 --maps 16 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import loadavg  # noqa: E402

from chaosgen import codegen, tune  # noqa: E402
from chaosgen.check import check  # noqa: E402
from chaosgen.parse import parse_text  # noqa: E402
from chaosgen.targets import default_compiler_for, get_target  # noqa: E402


def spec(size: int, kernel: int, maps: int) -> str:
    """The benchmark net for one point of the grid."""
    return (
        f"network fft_s{size}_k{kernel}_m{maps}\n"
        f"input maps={maps} size={size}x{size}\n"
        f"conv c0: maps={maps} kernel=1 activation=linear algorithm=direct\n"
        f"conv c1: maps={maps} kernel={kernel} activation=relu algorithm=auto\n"
        "output out: classes=2\n"
    )


def ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=ints, default=[16, 32, 64])
    ap.add_argument("--kernels", type=ints, default=[3, 5, 9, 13])
    ap.add_argument("--maps", type=ints, default=[4, 16])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--build-dir", default=None, help="cache of the timing programs")
    args = ap.parse_args()
    target = get_target("native")
    compiler = default_compiler_for(target)
    root = args.build_dir or tempfile.mkdtemp(prefix="chaosgen-bench-fft-")
    print(f"load before: {loadavg()}")
    print(
        "| map size | kernel | maps | direct us | fft us | fft / direct | auto picks "
        "(model: direct, fft kcycles) |"
    )
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for kernel in args.kernels:
            for maps in args.maps:
                if kernel > size:
                    continue
                net = check(parse_text(spec(size, kernel, maps), f"<bench {size}/{kernel}>"))
                times: dict[str, list[float]] = {"direct": [], "fft": []}
                for _ in range(args.rounds):
                    for algo in times:
                        us = tune._time_form(net, target, compiler, {"c1": algo}, root, True)
                        times[algo].append(us["c1"])
                d, f = (statistics.median(times[a]) for a in ("direct", "fft"))
                v = next(v for v in codegen.layer_views(net, target, ()) if v["name"] == "c1")
                pick = (
                    f"{v['algorithm']} ({v['direct_cost'] / 1e3:.0f}, {v['fft_cost'] / 1e3:.0f})"
                )
                print(
                    f"| {size}x{size} | {kernel}x{kernel} | {maps} | {d:.1f} | {f:.1f} | "
                    f"{f / d:.2f} | {pick} |",
                    flush=True,
                )
    print(f"load after: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
