"""Inference throughput of the Python API: Net.forward on a batch (cg_forward_batch, native
threads over images, GIL released) against the single-image Python loop (one Net.forward call
per image), measured interleaved in the same run on the same images.

    python bench/forward.py                          # small, lenet; 1 and 2 threads
    python bench/forward.py --nets medium --images 20000 --repeats 5

Prints img/s per (net, mode) and the batched forward's ratio to the loop; with --json, one JSON
object. Say the machine's load (/proc/loadavg) beside any number you quote.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from common import loadavg  # noqa: E402

import chaosgen  # noqa: E402


def _images(net: chaosgen.Net, n: int, data: str | None) -> np.ndarray:
    """n test images as the network reads them (MNIST, fitted and normalised as chaosgen reads
    it), or uniform random values when no data set is found."""
    s = net.ir.input
    try:
        from chaosgen.data.sets import load, open_data
        from chaosgen.train import Runtime

        d = load(open_data(data, None))
        x = Runtime(net).images(d.test_images[:n])[:, : s.size]
        if len(x) < n:
            x = np.resize(x, (n, s.size))
    except chaosgen.ChaosgenError as e:
        print(f"bench: {e}; timing on random images instead", file=sys.stderr)
        x = np.random.default_rng(0).uniform(0, 1, (n, s.size)).astype(np.float32)
    return np.ascontiguousarray(x.reshape(n, s.maps, s.h, s.w))


def _rate(call, n: int) -> float:
    """Images per second of one call over n images."""
    t0 = time.perf_counter()
    call()
    return n / (time.perf_counter() - t0)


def measure(net: chaosgen.Net, x: np.ndarray, a: argparse.Namespace) -> dict:
    """{mode: img/s and ratio to the loop}, rounds interleaved, medians kept."""
    modes = {"loop": lambda: [net.forward(im) for im in x]}
    for t in a.threads:
        modes[f"batch {t}t"] = lambda t=t: net.forward(x, threads=t)
    want = np.stack([net.forward(im) for im in x[:64]])  # and a warm-up
    for t in a.threads:
        assert np.array_equal(net.forward(x[:64], threads=t), want)
    rates: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(a.repeats):
        for m, call in modes.items():
            rates[m].append(_rate(call, len(x)))
    med = {m: statistics.median(r) for m, r in rates.items()}
    return {m: {"img_per_s": med[m], "vs_loop": med[m] / med["loop"]} for m in modes}


def main() -> None:
    """Print img/s of the loop and of the batched forward per thread count, and their ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=["small", "lenet"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the median kept")
    ap.add_argument("--data", default=None, help="MNIST (default $CHAOSGEN_DATA, else the cache)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    result: dict = {
        "load_before": loadavg(),
        "images": a.images,
        "cpus": os.cpu_count(),
        "nets": {},
    }
    for name in a.nets:
        spec = name if name.endswith(".net") else str(ROOT / "specs" / f"{name}.net")
        net = chaosgen.compile(spec)
        result["nets"][net.ir.name] = measure(net, _images(net, a.images, a.data), a)
    result["load_after"] = loadavg()
    if a.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{a.images} images, median of {a.repeats}; load before {result['load_before']}, "
          f"after {result['load_after']}")  # fmt: skip
    for name, modes in result["nets"].items():
        for m, r in modes.items():
            print(f"  {name:8} {m:10} {r['img_per_s']:12,.0f} img/s  {r['vs_loop']:6.2f}x loop")


if __name__ == "__main__":
    main()
