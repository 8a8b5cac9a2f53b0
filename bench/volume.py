"""3D networks' speed: training and inference of a volumetric spec (default specs/znn3d.net) with
chaosgen's direct 3D kernels, against the FP32 peak and PyTorch (Conv3d, the same network) in
the same run, on the synthetic volumes of `chaosgen data shapes3d`.

    python bench/volume.py                          # znn3d, 1 and 2 threads, 5 repeats
    python bench/volume.py --threads 2 --images 600 --repeats 3 --profile

Prints images/s (median [min-max] of the repeats) of CHAOS training and of inference, GFLOP/s
(3 x the forward FLOPs of the layers with weights per training image), % of the FP32 peak of as
many threads (bench/peak.py), PyTorch's training images/s at batch 1 and 32 with as many
intra-op threads, and chaosgen / PyTorch. Quote the load average it prints with any number.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from common import Bench, fmt_spread, loadavg, machine, spec_path, spread, train_flops
from peak import peak_gflops

import chaosgen
from chaosgen.data.synthetic import shapes3d
from chaosgen.train import Runtime


class VolumeBench(Bench):
    """Bench on a 3D network, with synthetic volumes of its input's side (cube, ball, cross)."""

    def __init__(self, net: str, images: int):  # noqa: D107 (Bench's, other data)
        self.net = chaosgen.compile(spec_path(net))
        ir = self.net.ir
        s = ir.input
        if not s.volume or s.maps != 1 or len(set(s.dims)) != 1:
            raise SystemExit(f"bench/volume.py: {net} does not take one-map cubes ({s})")
        self.name = ir.name
        self.rt = Runtime(self.net)
        x, y = shapes3d(images, s.d, np.random.default_rng(0))
        self.raw = x
        self.x = self.rt.images(x)
        self.y = y.astype(np.int32) % ir.output.out_shape.maps
        self.test_x, self.test_y = self.x, self.y
        self.flops = train_flops(ir)
        self.kernels = "direct 3D kernels"
        self.rng = np.random.default_rng(1)


def main() -> int:
    """Measure, print the table, optionally write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default="znn3d", help="a 3D spec (name under specs/ or a path)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--images", type=int, default=600, help="images per timed pass")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batches", default="1,32", help="PyTorch batch sizes ('' for none)")
    ap.add_argument("--profile", action="store_true", help="µs per image per layer and pass")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    print(f"load average before: {loadavg()}", file=sys.stderr)
    b = VolumeBench(args.net, args.images)
    peak = {t: peak_gflops(t) for t in threads}
    rows = []
    for t in threads:
        b.reset()
        b.train("chaos", t, min(args.images, 200))  # warm-up: threads, pages, caches
        train, share = b.timed(lambda t=t: b.train("chaos", t, args.images), t, args.repeats, 0.8)
        infer, _ = b.timed(lambda t=t: b.infer(t, args.images), t, args.repeats, 0.8)
        row = {"threads": t, "train_images_per_s": spread(train),
               "infer_images_per_s": spread(infer), "cpu_share": round(share, 3),
               "gflops": spread(train)["median"] * b.flops / 1e9, "peak_gflops": peak[t]}
        if args.batches:
            from torch_peer import train_rate

            row["torch_train_images_per_s"] = {
                int(bs): spread([train_rate(b.net.ir, b.raw, b.y, int(bs), t)
                                 for _ in range(args.repeats)])
                for bs in args.batches.split(",")}
        if args.profile:
            row["profile_us_per_image"] = b.profile_table(
                b.train("chaos", t, args.images, profile=True))
        rows.append(row)
    print(f"\n{b.name} ({spec_path(args.net)}), {machine()['cpu']}; load average after: "
          f"{loadavg()}; {b.flops / 1e6:.1f} MFLOP per training image")
    for r in rows:
        t, med = r["threads"], r["train_images_per_s"]["median"]
        line = (f"{t} thr: train {fmt_spread(r['train_images_per_s'])} img/s, "
                f"{r['gflops']:.1f} GFLOP/s = {100 * r['gflops'] / r['peak_gflops']:.1f}% of "
                f"peak {r['peak_gflops']:.0f}; infer {fmt_spread(r['infer_images_per_s'])} img/s; "
                f"cpu {r['cpu_share']:.0%}")
        for bs, rate in r.get("torch_train_images_per_s", {}).items():
            line += (f"\n        PyTorch batch {bs}: {fmt_spread(rate)} img/s, chaosgen / PyTorch "
                     f"{med / rate['median']:.2f}")
        print(line)
        if "profile_us_per_image" in r:
            print("        µs per image: " + json.dumps(r["profile_us_per_image"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"net": b.name, "machine": machine(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
