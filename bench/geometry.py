"""Padded and strided nets: training img/s of chaosgen against PyTorch on Caffe's cifar10_quick
shapes (3x32x32; conv 32 5x5 pad 2, max pool 3x3 stride 2 ceil, conv 32 5x5 pad 2, avg pool,
conv 64 5x5 pad 2, avg pool, ip 64, ip 10) and on Caffe's MNIST LeNet shapes, in one run.

Random images (speed does not depend on the pixels). chaosgen: per-image SGD, CHAOS with 1 and 2
threads (the cost model's kernel forms; `chaosgen tune` the spec first for the tuned ones).
PyTorch: the same layers (bench/torch_peer.py), batch 1 and batch 64, 2 intra-op threads.
Prints img/s, GFLOP/s and % of the measured FP32 peak, and the ratios.

    python bench/geometry.py --images 2000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import machine, train_flops
from peak import peak_gflops

import chaosgen
from chaosgen.train import Config, Runtime

SPECS = {
    "cifar10_quick": """
        input   maps=3 size=32x32
        conv    conv1: maps=32 kernel=5 pad=2 activation=linear
        maxpool pool1: window=3 stride=2 round=ceil
        conv    conv2: maps=32 kernel=5 pad=2 activation=relu
        avgpool pool2: window=3 stride=2 round=ceil
        conv    conv3: maps=64 kernel=5 pad=2 activation=relu
        avgpool pool3: window=3 stride=2 round=ceil
        dense   ip1: units=64 activation=linear
        output  ip2: classes=10
    """,
    "caffe_lenet": """
        input   maps=1 size=28x28
        conv    conv1: maps=20 kernel=5 activation=linear
        maxpool pool1: window=2 stride=2
        conv    conv2: maps=50 kernel=5 activation=linear
        maxpool pool2: window=2 stride=2
        dense   ip1: units=500 activation=relu
        output  ip2: classes=10
    """,
}


def chaosgen_rate(net, threads: int, images: int, repeats: int) -> float:
    """Median training images/s of CHAOS on random images (after a warm-up)."""
    s = net.ir.input
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (images, s.maps, s.h, s.w)).astype(np.float32)
    y = rng.integers(0, 10, images).astype(np.int32)
    rt = Runtime(net)
    nx = rt.images(x)
    order = np.arange(images, dtype=np.int32)
    cfg = Config(scheme="chaos", threads=threads)
    rt.train(nx, y, order[: min(images, 200)], cfg, 0.001)
    return statistics.median(
        rt.train(nx, y, order, cfg, 0.001).images_per_s for _ in range(repeats)
    )


def main() -> int:
    """Print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000, help="training images per timed run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    peak = peak_gflops(1)
    print(f"machine: {machine()}; FP32 peak of one core about {peak:.1f} GFLOP/s")
    print(f"{'net':14s} {'run':24s} {'img/s':>9s} {'GFLOP/s':>8s} {'% peak':>7s} {'ratio':>6s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in SPECS.items():
            path = Path(tmp) / f"{name}.net"
            path.write_text(text)
            net = chaosgen.compile(path, build_dir=Path(tmp) / "build")
            flops = train_flops(net.ir) / 1e9
            rows = {
                f"chaosgen chaos {t} thr": (chaosgen_rate(net, t, args.images, args.repeats), t)
                for t in (1, 2)
            }
            if not args.no_torch:
                import torch_peer

                s = net.ir.input
                rng = np.random.default_rng(1)
                x = rng.uniform(0, 1, (args.images, s.maps, s.h, s.w)).astype(np.float32)
                y = rng.integers(0, 10, args.images)
                for batch in (1, 64):
                    rows[f"pytorch batch {batch}, 2 thr"] = (
                        torch_peer.train_rate(net.ir, x, y, batch, 2), 2)
            base = rows["chaosgen chaos 2 thr"][0]
            for run, (rate, threads) in rows.items():
                print(f"{name:14s} {run:24s} {rate:9,.0f} {rate * flops:8.2f} "
                      f"{100 * rate * flops / (peak * threads):6.1f}% {base / rate:6.2f}")
    print("ratio: chaosgen chaos 2 threads / the row (above 1: chaosgen faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
