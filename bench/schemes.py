"""The runtime's schemes side by side: speed, speed-up over one thread, and test error.

For each network, thread count and scheme (chaos, sequential, hogwild, delayed, averaged):
train from the spec's initial weights on --epoch-images images (default: one full epoch of
60,000 for small, 10,000 for medium and large), then evaluate on the 10,000 test images. Prints
images/s, the speed-up over the same scheme on one thread and the test error rate; --json
writes bench/speed.py's format with test_error_rate filled.

    python bench/schemes.py
    python bench/schemes.py --nets small --threads 1,2 --json schemes.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import NETS, SCHEMES, Bench, fmt_spread, load_data, machine, spread
from peak import peak_gflops

from chaosgen.build import atomic_write  # common put the checkout on sys.path

DEFAULT_IMAGES = {"small": 60000, "medium": 10000, "large": 10000}


def measure(
    b: Bench, scheme: str, threads: int, images: int, repeats: int, eta: float, min_share: float
) -> dict:
    """Train from the initial weights `repeats` times; rates of all, test error of the last."""

    def run():
        b.reset()
        return b.train(scheme, threads, images, eta)

    rates, share = b.timed(run, threads, repeats, min_share)
    test = b.infer(threads, len(b.test_y))
    return {
        "net": b.name,
        "scheme": scheme,
        "threads": threads,
        "images": images,
        "train_images_per_s": spread(rates),
        "infer_images_per_s": spread([test.images_per_s]),
        "test_error_rate": round(test.error_rate, 5),
        "cpu_share": round(share, 3),
    }


def main() -> int:
    """Measure every (net, scheme, threads); print; write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default=",".join(NETS))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument(
        "--epoch-images",
        type=int,
        default=None,
        help="training images per run (default: 60000 small, 10000 medium/large)",
    )
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per configuration")
    ap.add_argument("--eta", type=float, default=None, help="default: each spec's eta")
    ap.add_argument("--data", default=None)
    ap.add_argument(
        "--min-share",
        type=float,
        default=0.9,
        help="rerun a run that got less of its cores than this (other work)",
    )
    ap.add_argument("--json", default=None, metavar="FILE")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    data = load_data(args.data, allow_random=False)  # error rates need the real images
    result = {
        "machine": machine(),
        "peak_gflops": {str(t): round(peak_gflops(t), 1) for t in sorted(set(threads) | {1})},
        "data": data.source,
        "chaosgen": [],
        "torch": [],
    }
    for net in args.nets.split(","):
        b = Bench(net, data)
        images = args.epoch_images or DEFAULT_IMAGES.get(net, 10000)
        eta = args.eta if args.eta is not None else b.net.ir.training.eta
        for scheme in args.schemes.split(","):
            for t in threads:
                if scheme == "sequential" and t != 1:
                    continue
                row = measure(b, scheme, t, images, args.repeats, eta, args.min_share)
                row["gflops"] = round(row["train_images_per_s"]["median"] * b.flops / 1e9, 2)
                result["chaosgen"].append(row)
                print(
                    f"  {net} {scheme} {t} thr: {fmt_spread(row['train_images_per_s'])} img/s, "
                    f"test error {row['test_error_rate']:.2%}",
                    file=sys.stderr,
                )
    one = {
        (r["net"], r["scheme"]): r["train_images_per_s"]["median"]
        for r in result["chaosgen"]
        if r["threads"] == 1
    }
    print(
        f"\n{result['machine']['cpu']}, {result['machine']['cores']} cores; data: {result['data']}"
    )
    head = (
        f"{'net':7} {'scheme':10} {'thr':>3} {'images':>7} {'train img/s [min-max]':>27} "
        f"{'speed-up':>8} {'test error':>10} {'cpu':>4}"
    )
    print(head)
    print("-" * len(head))
    for r in result["chaosgen"]:
        base = one.get((r["net"], r["scheme"]))
        r["speedup"] = round(r["train_images_per_s"]["median"] / base, 3) if base else None
        up = f"{r['speedup']:7.2f}x" if r["speedup"] else f"{'-':>8}"
        print(
            f"{r['net']:7} {r['scheme']:10} {r['threads']:>3} {r['images']:>7} "
            f"{fmt_spread(r['train_images_per_s']):>27} {up} {r['test_error_rate']:10.2%} "
            f"{r['cpu_share']:4.0%}"
        )
    if args.json:
        atomic_write(Path(args.json), json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
