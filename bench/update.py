"""Training speed of a paper net with the paper's update (w -= eta g) and with momentum + weight
decay (torch.optim.SGD's rule, chaosgen.update), measured interleaved in the same run.

    python bench/update.py                       # small, 1 and 2 threads, chaos
    python bench/update.py --nets medium --images 20000 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import chaosgen  # noqa: E402
from chaosgen.data import find_data_dir, load_mnist  # noqa: E402
from chaosgen.train import Config, Runtime  # noqa: E402

RULES = {
    "paper": {},
    "momentum+wd": dict(momentum=0.9, weight_decay=0.0005),
    "nesterov+wd+inv": dict(momentum=0.9, nesterov=True, weight_decay=0.0005, lr_policy="inv",
                            gamma=0.0001, power=0.75),
}


def main() -> None:
    """Print img/s per (net, threads, rule) and each rule's ratio to the paper's."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=["small"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--scheme", default="chaos")
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    d = load_mnist(find_data_dir())
    print(f"{'net':8} {'threads':>7} {'rule':16} {'img/s':>9} {'vs paper':>8}")
    for name in a.nets:
        net = chaosgen.compile(ROOT / "specs" / f"{name}.net")
        rt = Runtime(net)
        x, y = rt.images(d.train_images[: a.images]), d.train_labels[: a.images]
        order = np.arange(a.images, dtype=np.int32)
        for threads in a.threads:
            rates: dict[str, list[float]] = {r: [] for r in RULES}
            for _ in range(a.repeats):  # interleaved: drifts of the machine hit every rule
                for rule, kw in RULES.items():
                    net.init_weights(1)
                    rt.velocity = None
                    cfg = Config(scheme=a.scheme, threads=threads, **kw)
                    st = rt.train(x, y, order, cfg, 0.001, max_iter=a.images)
                    rates[rule].append(st.images / st.seconds)
            base = statistics.median(rates["paper"])
            for rule, r in rates.items():
                med = statistics.median(r)
                print(f"{name:8} {threads:7d} {rule:16} {med:9,.0f} {med / base:8.3f}")


if __name__ == "__main__":
    main()
