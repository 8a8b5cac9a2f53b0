"""Training and inference speed of chaosgen against the FP32 peak and PyTorch, in one run.

For every shipped network (specs/*.net; or --nets: names or spec paths), thread count and
scheme: training and inference images/s (median, min and max of --repeats runs of --images
images), GFLOP/s (3 x forward FLOPs per training image), % of the measured FP32 peak, the ratio
to 1 thread and to each PyTorch configuration (batch 1 and batch 64 with 2 threads, Hogwild with
2 processes, batch 64 in channels-last layout, batch 64 under torch.compile) and to the best of
them, both sides training with the spec's update rule (momentum, weight decay). Images:
MNIST for one-map nets (fitted), else random. Prints one table; --json writes the same numbers
(the format `chaosgen plot --speedup` reads).

    python bench/speed.py                                  # all nets, 1 and 2 threads, chaos
    python bench/speed.py --nets lenet,/tmp/cifar10_quick.net --images 5000
    python bench/speed.py --nets small --images 20000 --profile
    python bench/speed.py --schemes all --json bench.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import (
    SCHEMES,
    Bench,
    fmt_spread,
    load_data,
    loadavg,
    machine,
    shipped_nets,
    spread,
)
from peak import peak_gflops

from chaosgen.build import atomic_write  # common put the checkout on sys.path

# PyTorch peers: mode -> (batch, memory layout, torch.compile'd); hogwild: processes, batch 1
TORCH_MODES = {
    "batch1": (1, "contiguous", False),
    "batch64": (64, "contiguous", False),
    "hogwild": (1, "contiguous", False),
    "chlast64": (64, "channels_last", False),
    "compile64": (64, "contiguous", True),
}


def measure_chaosgen(
    b: Bench, scheme: str, threads: int, images: int, repeats: int, profile: bool, min_share: float
) -> dict:
    """Median/min/max training and inference rates of one configuration (after a warm-up)."""
    b.reset()
    b.train(scheme, threads, min(images, 2000))  # warm-up: threads, pages, caches
    train, share = b.timed(lambda: b.train(scheme, threads, images), threads, repeats, min_share)
    infer, _ = b.timed(lambda: b.infer(threads, images), threads, repeats, min_share)
    row = {
        "net": b.name,
        "scheme": scheme,
        "threads": threads,
        "images": images,
        "train_images_per_s": spread(train),
        "infer_images_per_s": spread(infer),
        "test_error_rate": None,
        "cpu_share": round(share, 3),
    }
    if profile:
        row["profile_us_per_image"] = b.profile_table(
            b.train(scheme, threads, images, profile=True)
        )
    return row


def measure_torch(b: Bench, mode: str, threads: int, images: int, repeats: int) -> dict | None:
    """PyTorch's rate in one configuration: median/min/max of `repeats` runs (the model built,
    compiled and warmed up once, before them). None, with the reason printed, if the mode
    cannot run here (torch.compile without a working toolchain)."""
    from torch_peer import Peer, PeerUnavailable, hogwild_rate

    batch, layout, compiled = TORCH_MODES[mode]
    s = b.net.ir.input

    def sample():
        order = b.order(images)
        x = b.x[order, : s.size].reshape(-1, s.maps, *s.dims)
        return x, b.y[order]

    peer = None
    if mode != "hogwild":
        try:
            peer = Peer(b.net.ir, *sample(), batch, threads, layout, compiled)
        except PeerUnavailable as e:
            print(f"  torch {b.name} {mode}: not measured ({e})", file=sys.stderr)
            return None
    rates = []
    for _ in range(repeats):
        x, y = sample()
        rates.append(hogwild_rate(b.net.ir, x, y, threads) if peer is None else peer.rate(x, y))
    return {
        "net": b.name,
        "mode": mode,
        "threads": threads,
        "images": images,
        "train_images_per_s": spread(rates),
    }


def print_table(result: dict) -> None:
    """One line per chaosgen configuration, with the ratio to each PyTorch mode; then PyTorch."""
    peak = result["peak_gflops"]
    torch_rate = {
        (r["net"], r["mode"]): r["train_images_per_s"]["median"] for r in result["torch"]
    }
    modes = [m for m in TORCH_MODES if any(k[1] == m for k in torch_rate)]
    best = {}  # each net's fastest PyTorch peer (median img/s) and its mode
    for (net, mode), rate in torch_rate.items():
        if rate > best.get(net, (0.0, ""))[0]:
            best[net] = (rate, mode)
    one_thread = {  # x 1 thr: the 2-thread scaling of a row (CHAOS's target: 1.6x and more)
        (r["net"], r["scheme"]): r["train_images_per_s"]["median"]
        for r in result["chaosgen"]
        if r["threads"] == 1
    }
    print(
        f"\n{result['machine']['cpu']}, {result['machine']['cores']} cores; FP32 peak "
        + ", ".join(f"{v:.0f} GFLOP/s ({t} thr)" for t, v in peak.items())
    )
    load = f"{result['load_before']} before, {result['load_after']} after"
    print(f"load average (1, 5, 15 min): {load}")
    for net, source in result["data"].items():
        print(f"{net}: images {source}")
    head = (
        f"{'net':13} {'scheme':10} {'thr':>3} {'train img/s [min-max]':>27} "
        f"{'infer img/s [min-max]':>29} {'GFLOP/s':>8} {'%peak':>6} {'cpu':>4} {'x 1 thr':>7}"
        + "".join(f" {'x torch ' + m:>16}" for m in modes)
        + f" {'x best peer':>21}"
    )
    for net, kernels in result.get("kernels", {}).items():
        print(f"{net}: {kernels}")
    print(head)
    print("-" * len(head))
    for r in result["chaosgen"]:
        line = (
            f"{r['net']:13} {r['scheme']:10} {r['threads']:>3} "
            f"{fmt_spread(r['train_images_per_s']):>27} {fmt_spread(r['infer_images_per_s']):>29} "
            f"{r['gflops']:8.1f} {r['percent_peak']:5.1f}% {r['cpu_share']:4.0%}"
        )
        one = one_thread.get((r["net"], r["scheme"]))
        line += f" {r['train_images_per_s']['median'] / one:6.2f}x" if one else f" {'-':>7}"
        for m in modes:
            t = torch_rate.get((r["net"], m))
            line += f" {r['train_images_per_s']['median'] / t:15.1f}x" if t else f" {'-':>16}"
        if r["net"] in best:
            rate, mode = best[r["net"]]
            line += f" {r['train_images_per_s']['median'] / rate:8.1f}x ({mode:>9})"
        print(line)
    if result["torch"]:
        print(f"\n{'PyTorch':13} {'mode':10} {'thr':>3} {'train img/s [min-max]':>27}")
        for r in result["torch"]:
            rate = fmt_spread(r["train_images_per_s"])
            print(f"{r['net']:13} {r['mode']:10} {r['threads']:>3} {rate:>27}")
    for r in result["chaosgen"]:
        if "profile_us_per_image" in r:
            from chaosgen.train import print_profile

            what = f"{r['net']} {r['scheme']} {r['threads']} thr"
            print(f"\nprofile {what} (µs per image, summed over threads)")
            print_profile(r["profile_us_per_image"])


def main() -> int:
    """Measure, print, write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--nets",
        default=",".join(shipped_nets()),
        help="comma-separated names under specs/ or .net paths (default: every specs/*.net)",
    )
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--schemes", default="chaos", help="comma-separated, or 'all'")
    ap.add_argument("--images", type=int, default=20000, help="training images per timed run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--torch-images",
        type=int,
        default=3000,
        help="images per PyTorch run (batch 64: 8x as many)",
    )
    ap.add_argument("--torch-threads", type=int, default=2)
    ap.add_argument(
        "--torch-modes",
        default=",".join(TORCH_MODES),
        help=f"comma-separated PyTorch peers among {', '.join(TORCH_MODES)} (default: all)",
    )
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--data", default=None, help="MNIST directory (else the usual places)")
    ap.add_argument("--profile", action="store_true", help="also time every layer and pass")
    ap.add_argument(
        "--min-share",
        type=float,
        default=0.9,
        help="rerun a run that got less of its cores than this (other work)",
    )
    ap.add_argument("--json", default=None, metavar="FILE")
    args = ap.parse_args()
    unknown = set(args.torch_modes.split(",")) - set(TORCH_MODES)
    if unknown:
        ap.error(
            f"unknown --torch-modes {', '.join(sorted(unknown))}; "
            f"expected {', '.join(TORCH_MODES)}"
        )
    # cpu: the lowest share of its cores a timed run's process got (1.0: nothing else ran)
    nets = args.nets.split(",")
    threads = [int(t) for t in args.threads.split(",")]
    schemes = list(SCHEMES) if args.schemes == "all" else args.schemes.split(",")

    data = load_data(args.data)
    peak = {str(t): round(peak_gflops(t), 1) for t in sorted(set(threads) | {1})}
    result = {
        "machine": machine(),
        "load_before": loadavg(),
        "peak_gflops": peak,
        "data": {},
        "chaosgen": [],
        "torch": [],
    }
    result["kernels"] = {}
    for net in nets:
        b = Bench(net, data)
        net = b.name
        result["kernels"][net] = b.kernels
        result["data"][net] = b.source
        for scheme in schemes:
            for t in threads:
                if scheme == "sequential" and t != 1:
                    continue
                row = measure_chaosgen(
                    b, scheme, t, args.images, args.repeats, args.profile, args.min_share
                )
                row["gflops"] = round(row["train_images_per_s"]["median"] * b.flops / 1e9, 2)
                p = peak.get(str(t)) or peak["1"] * t
                row["percent_peak"] = round(100 * row["gflops"] / p, 1)
                result["chaosgen"].append(row)
                print(
                    f"  {net} {scheme} {t} thr: {fmt_spread(row['train_images_per_s'])} img/s",
                    file=sys.stderr,
                )
        if not args.no_torch:
            try:
                import torch  # noqa: F401
            except ImportError:
                print("bench: PyTorch is not installed; no PyTorch columns", file=sys.stderr)
                args.no_torch = True
                continue
            for mode in args.torch_modes.split(","):
                n = args.torch_images * (8 if TORCH_MODES[mode][0] > 1 else 1)
                row = measure_torch(b, mode, args.torch_threads, n, args.repeats)
                if row is None:
                    continue
                result["torch"].append(row)
                print(
                    f"  torch {net} {mode}: {fmt_spread(row['train_images_per_s'])} img/s",
                    file=sys.stderr,
                )
    result["load_after"] = loadavg()
    print_table(result)
    if args.json:
        atomic_write(Path(args.json), json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
