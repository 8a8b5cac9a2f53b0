"""The crossover between direct and FFT convolution (`algorithm=direct|fft`) on this machine.

For each (map size, kernel size, input maps = output maps) a net `input -> conv c0 (1x1) -> conv
c1 -> output` is built twice, c1 direct (the cost model's weight-gradient form) and c1 by FFT,
and the three passes of c1 (forward, backward data, weight gradient; the 1x1 c0 makes c1 need
its input deltas) are timed by `chaosgen tune`'s timing program, the two builds alternating,
median of --rounds. Prints microseconds per image, fft/direct, and what algorithm=auto's cost
model picks (with its estimates). Say the machine's load beside any number you quote.

    python bench/fft.py                                # the 2D grid of docs/kernels.md
    python bench/fft.py --sizes 32 --kernels 5,9 --maps 16 --rounds 3
    python bench/fft.py --volume                       # 3D: cubes of volumes and kernels
    python bench/fft.py --znn                          # training img/s of a ZNN-like 3D net
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


def spec(size: int, kernel: int, maps: int, rank: int = 2) -> str:
    """The benchmark net for one point of the grid (`rank` 3: cubes)."""
    cube = "x".join([str(size)] * rank)
    return (
        f"network fft{rank}d_s{size}_k{kernel}_m{maps}\n"
        f"input maps={maps} size={cube}\n"
        f"conv c0: maps={maps} kernel=1 activation=linear algorithm=direct\n"
        f"conv c1: maps={maps} kernel={'x'.join([str(kernel)] * rank)} activation=relu "
        "algorithm=auto\n"
        "output out: classes=2\n"
    )


# A ZNN-like 3D net (Zlateski, Lee, Seung 2015: 3D ConvNets for electron-microscopy volumes):
# ALGO is direct or fft for every conv layer
ZNN = """network znnlike_ALGO
input   maps=1 size=32x32x32
conv    c1: maps=8 kernel=5x5x5 activation=relu algorithm=ALGO
maxpool p1: window=2x2x2 round=floor
conv    c2: maps=8 kernel=7x7x7 activation=relu algorithm=ALGO
maxpool p2: window=2x2x2 round=floor
output  out: classes=3
train   epochs=1 eta=0.01 seed=1 init=he
"""


def znn(rounds: int, root: str) -> None:
    """Training img/s of ZNN (above) with direct and with FFT conv layers: `chaosgen train`, one
    thread, on `chaosgen data shapes3d --size 32`, alternating, median of `rounds`."""
    import json
    import subprocess

    tmp = Path(tempfile.mkdtemp(prefix="znn-", dir=root))  # this run's specs, logs, checkpoints
    data = Path(root) / "shapes32.npz"
    if not data.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "chaosgen.cli",
                "data",
                "shapes3d",
                "--out",
                str(data),
                "--size",
                "32",
                "--train",
                "300",
                "--test",
                "60",
            ],
            check=True,
            cwd=ROOT,
        )
    rates: dict[str, list[float]] = {"direct": [], "fft": []}
    for r in range(rounds):
        for algo in rates:
            path = tmp / f"znn_{algo}.net"
            path.write_text(ZNN.replace("ALGO", algo))
            log = tmp / f"znn_{algo}_{r}.jsonl"
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "chaosgen.cli",
                    "train",
                    str(path),
                    "--data",
                    str(data),
                    "--threads",
                    "1",
                    "--limit",
                    "150",
                    "--val-limit",
                    "20",
                    "--test-limit",
                    "20",
                    "--log",
                    str(log),
                    "--checkpoint-dir",
                    str(tmp / f"ck_{algo}"),
                    "--build-dir",
                    root,
                    "--quiet",
                ],
                check=True,
                cwd=ROOT,
            )
            rates[algo].append(json.loads(log.read_text().splitlines()[-1])["train_images_per_s"])
    d, f = (statistics.median(rates[a]) for a in ("direct", "fft"))
    print(
        f"ZNN-like 3D net (1x32^3, 8 maps 5x5x5, pool, 8 maps 7x7x7, pool), CHAOS 1 thread: "
        f"direct {d:.1f} img/s, fft {f:.1f} img/s, fft / direct {f / d:.2f}x "
        f"(rounds: direct {rates['direct']}, fft {rates['fft']})"
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
    ap.add_argument("--volume", action="store_true", help="3D: cube volumes and kernels")
    ap.add_argument("--znn", action="store_true", help="train a ZNN-like 3D net both ways")
    args = ap.parse_args()
    rank = 3 if args.volume else 2
    target = get_target("native")
    compiler = default_compiler_for(target)
    root = args.build_dir or tempfile.mkdtemp(prefix="chaosgen-bench-fft-")
    print(f"load before: {loadavg()}")
    if args.znn:
        znn(args.rounds, root)
        print(f"load after: {loadavg()}")
        return 0
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
                text = spec(size, kernel, maps, rank)
                net = check(parse_text(text, f"<bench {size}/{kernel}>"))
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
                cube, kcube = ("x".join([str(n)] * rank) for n in (size, kernel))
                print(
                    f"| {cube} | {kcube} | {maps} | {d:.1f} | {f:.1f} | {f / d:.2f} | {pick} |",
                    flush=True,
                )
    print(f"load after: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
