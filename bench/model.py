"""The performance model against this machine: calibrate, then predicted against measured epochs.

`chaosgen calibrate` measures each network on one thread (and the locked updates on 1..p) with
its own epoch sizes; this script then times reduced epochs of other sizes (training i +
validation i + test it images, through the real Trainer, 1 and 2 threads) and prints the model's
error per row: the one-thread rows check reproducibility and the scaling with the image counts,
the two-thread rows the rate and contention parts. The table of docs/performance-model.md.

An epoch counts only if the process had its cores to itself (CPU share >= 0.9); the first epoch
warms up and is dropped; measured = median of the undisturbed ones.

    python bench/model.py                          # small, medium, large; 1 and 2 threads
    python bench/model.py --nets small --json model.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from common import NETS, ROOT, machine, spec_path

import chaosgen  # common put the checkout on sys.path
from chaosgen import calibrate
from chaosgen.data import find_data_dir, load_mnist
from chaosgen.pipeline import front_end
from chaosgen.predict import predict, read_profile, work_of
from chaosgen.train import Config, Runtime, Trainer

# images per reduced epoch (training = validation, test): not the calibration's sizes
SIZES = {"small": (8000, 2000), "medium": (3000, 750), "large": (3000, 750)}


def measured_epoch(spec: str, data, threads: int, n: int, nt: int) -> tuple[float, str]:
    """Median seconds of the undisturbed epochs, and how many of them were undisturbed."""
    rt = Runtime(chaosgen.compile(spec))
    cfg = Config(threads=threads, limit=n, val_limit=n, test_limit=nt)
    trainer = Trainer(rt, data, cfg, quiet=True)
    timed = calibrate.timed_epochs(trainer, 4, threads)[1:]  # the first epoch warms up
    while sum(share >= calibrate.MIN_SHARE for _, share in timed) < 3 and len(timed) < 8:
        timed += calibrate.timed_epochs(trainer, 1, threads)
    records, _ = calibrate.undisturbed(timed)
    clean = sum(share >= calibrate.MIN_SHARE for _, share in timed)
    return statistics.median(r["seconds"] for r in records), f"{clean}/{len(timed)}"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nets", nargs="+", default=list(NETS))
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--data", default=None, help="MNIST directory (else the usual places)")
    ap.add_argument("--seconds", type=float, default=None, help="calibration budget per net")
    ap.add_argument("--json", default=None, metavar="FILE")
    a = ap.parse_args()

    data_dir = find_data_dir(a.data)
    data = load_mnist(data_dir)
    specs = [spec_path(n) for n in a.nets]
    os.chdir(ROOT)  # the calibration's build cache: the checkout's build/, as chaosgen's own
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "machine.json"
        kw = {} if a.seconds is None else {"seconds": a.seconds}
        calibrate.run(specs, out=path, data_dir=str(data_dir), **kw)
        m = read_profile(path)
    rows = []
    print(
        f"\n{'net':7} {'thr':>3} {'images':>16} {'predicted':>10} {'measured':>10} {'error':>7} "
        f"{'T_mem':>9} {'w/o T_mem':>9} {'default f.':>10} {'undisturbed':>11}"
    )
    for spec in specs:
        ir_net = front_end(spec)[1]
        w, name = work_of(ir_net), ir_net.name
        n, nt = SIZES.get(name, (3000, 750))
        for p in a.threads:
            if p > (os.cpu_count() or 1):
                continue
            pr = predict(w, m, p, net=name, images=n, test_images=nt)
            measured, clean = measured_epoch(spec, data, p, n, nt)
            err = pr.total / measured - 1
            err_no_mem = (pr.total - pr.t_mem) / measured - 1
            # the machine's median factors instead of the network's own: an uncalibrated net
            default = predict(w, m, p, images=n, test_images=nt).total / measured - 1
            rows.append(
                {
                    "net": name,
                    "threads": p,
                    "images": n,
                    "test_images": nt,
                    "predicted_s": pr.total,
                    "measured_s": measured,
                    "error": err,
                    "t_mem_s": pr.t_mem,
                    "error_without_t_mem": err_no_mem,
                    "error_with_default_factors": default,
                    "undisturbed": clean,
                }
            )
            print(
                f"{name:7} {p:>3} {f'{n}+{n}+{nt}':>16} {pr.total:>9.3f}s {measured:>9.3f}s "
                f"{err:>+7.1%} {pr.t_mem * 1e3:>7.1f}ms {err_no_mem:>+9.1%} {default:>+10.1%} "
                f"{clean:>11}"
            )
    if a.json:
        out = {"machine": machine(), "profile": m.data, "rows": rows}
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
