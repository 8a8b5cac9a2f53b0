"""The dense layers' update on two (or more) threads: the segment locks against the owner-applied
records (templates/owner.hpp) and the runtime's own choice, measured interleaved in one run.

For every net (shipped specs by default, each with its own recipe: momentum, weight decay),
thread count and dense update mode: training images/s (median, min and max of --repeats runs,
the modes taking turns so that the machine's drifts hit each alike), the ratio to the locked
update, and the share of its cores the process got (below 1: other work shared the machine).

    python bench/dense_update.py                                   # every shipped net, 2 threads
    python bench/dense_update.py --nets lenet,mnist_pytorch --threads 1,2 --repeats 7
    python bench/dense_update.py --nets lenet --profile            # per-layer update times too
"""

from __future__ import annotations

import argparse
import statistics
import sys

from common import Bench, _with_share, fmt_spread, load_data, loadavg, recipe, shipped_nets, spread

from chaosgen.train import Config, print_profile  # common put the checkout on sys.path

MODES = ("locked", "owner", "auto")


def main() -> int:
    """Measure, print one table (and the profiles with --profile)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default=",".join(shipped_nets()), help="comma-separated")
    ap.add_argument("--threads", default="2", help="comma-separated thread counts")
    ap.add_argument("--images", type=int, default=6000, help="training images per timed run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scheme", default="chaos", choices=("chaos", "hogwild"))
    ap.add_argument("--data", default=None, help="MNIST directory (else the usual places)")
    ap.add_argument("--profile", action="store_true", help="one profiled run per mode after")
    args = ap.parse_args()
    data = load_data(args.data)
    print(f"load average before: {loadavg()}")
    rows = []
    for name in args.nets.split(","):
        b = Bench(name, data)
        for t in (int(s) for s in args.threads.split(",")):
            rates: dict[str, list[float]] = {m: [] for m in MODES}
            shares: dict[str, list[float]] = {m: [] for m in MODES}
            owned: dict[str, int] = {}

            def run(mode: str, images: int, profile: bool = False):
                b.reset()
                cfg = Config(scheme=args.scheme, threads=t, profile=profile, **recipe(b.net.ir))
                order = b.order(images)
                return _with_share(
                    lambda: b.rt.train(b.x, b.y, order, cfg, 0.001, dense_update=mode), t)

            for m in MODES:
                run(m, min(args.images, 1000))  # warm-up
            for _ in range(args.repeats):
                for m in MODES:
                    st = run(m, args.images)
                    rates[m].append(st.images_per_s)
                    shares[m].append(st.cpu_share)
                    owned[m] = st.owner_blocks
            base = statistics.median(rates["locked"])
            for m in MODES:
                layers = [lay.name for k, lay in enumerate(b.net.ir.trainable) if owned[m] >> k & 1]
                rows.append((b.name, t, m, spread(rates[m]), statistics.median(rates[m]) / base,
                             min(shares[m]), ",".join(layers) or "-"))
                print(f"  {b.name} {t} thr {m}: {fmt_spread(rows[-1][3])} img/s", file=sys.stderr)
            if args.profile:
                for m in MODES:
                    st = run(m, args.images, profile=True)
                    print(f"\nprofile {b.name} {t} thr {m} (µs per image, summed over threads)")
                    print_profile(b.profile_table(st))
    print(f"\nload average after: {loadavg()}")
    head = (f"{'net':13} {'thr':>3} {'dense update':12} {'train img/s [min-max]':>27} "
            f"{'x locked':>8} {'cpu':>4}  owner-applied layers")
    print(head)
    print("-" * len(head))
    for net, t, m, r, ratio, share, layers in rows:
        print(f"{net:13} {t:3d} {m:12} {fmt_spread(r):>27} {ratio:7.2f}x {share:4.0%}  {layers}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
