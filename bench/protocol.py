"""The paper's full protocol for one network, timed end to end: `chaosgen train` as a user runs it.

Per epoch: train on the 60k training images, validate on them (the paper validates on the
training set), test on the 10k test images; the spec's epochs (15 for the large net). Prints the
wall time of the whole command (compile from a warm cache, data loading, every epoch) against a
budget and against the peak-bound time (the protocol's FLOPs over the FP32 peak of the threads,
bench/peak.py, measured in the same run), the sum of each phase over the epochs, the median
training rate, and the final test error.

    python bench/protocol.py                       # large, 2 threads, its 15 epochs, 90 s budget
    python bench/protocol.py --net medium --epochs 3 --budget 0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, loadavg, machine, spec_path, train_flops
from peak import peak_gflops

from chaosgen.data import find_data_dir  # common put the checkout on sys.path


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--net", default="large")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scheme", default="chaos")
    ap.add_argument("--epochs", type=int, default=None, help="default: the spec's")
    ap.add_argument("--budget", type=float, default=90.0, help="seconds (0: none)")
    ap.add_argument("--data", default=None, help="MNIST directory (else the usual places)")
    ap.add_argument("--json", default=None, metavar="FILE")
    a = ap.parse_args()

    data = find_data_dir(a.data)  # the protocol needs the real MNIST: no random fallback
    spec = spec_path(a.net)
    base = [
        sys.executable,
        "-m",
        "chaosgen.cli",
        "train",
        spec,
        "--data",
        str(data),
        "--threads",
        str(a.threads),
        "--scheme",
        a.scheme,
        "--quiet",
    ]
    if a.epochs is not None:
        base += ["--epochs", str(a.epochs)]
    # warm the build cache first: the budget is for training, not for the C++ compiler
    subprocess.run(
        [sys.executable, "-m", "chaosgen.cli", "compile", spec],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "run.jsonl"
        cmd = [*base, "--log", str(log), "--checkpoint-dir", tmp]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=os.environ | {"PYTHONUNBUFFERED": "1"})
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(f"bench: `{' '.join(cmd)}` failed (exit {proc.returncode})", file=sys.stderr)
            return proc.returncode
        epochs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]

    phases = {k: sum(e[f"seconds_{k}"] for e in epochs) for k in ("train", "val", "test")}
    # peak-bound: every multiply-add of the protocol at the measured FP32 peak of the threads
    from chaosgen.pipeline import front_end

    _, ir = front_end(spec)
    fwd = train_flops(ir) / 3  # an evaluated image: the forward pass only
    flops = sum(
        e["train_images"] * 3 * fwd
        + ((e.get("val_images") or 0) + (e.get("test_images") or 0)) * fwd
        for e in epochs
    )
    peak = peak_gflops(a.threads)
    bound = flops / (peak * 1e9)
    rate = statistics.median(e["train_images_per_s"] for e in epochs)
    last = epochs[-1]
    result = {
        "machine": machine(),
        "net": a.net,
        "threads": a.threads,
        "scheme": a.scheme,
        "epochs": len(epochs),
        "wall_s": round(wall, 2),
        "budget_s": a.budget or None,
        "phase_s": {k: round(v, 2) for k, v in phases.items()},
        "other_s": round(wall - sum(phases.values()), 2),
        "train_images_per_s_median": round(rate),
        "test_error_rate": last.get("test_error_rate"),
        "peak_gflops": round(peak, 1),
        "peak_bound_s": round(bound, 2),
        "load_after": loadavg(),
    }
    m = result["machine"]
    print(
        f"{m['cpu']}, {m['cores']} cores: {a.net}, {a.scheme}, {a.threads} threads, "
        f"{len(epochs)} epochs"
    )
    print(
        f"  wall {wall:7.1f} s"
        + (f"  (budget {a.budget:.0f} s: {wall / a.budget:.2f}x)" if a.budget else "")
    )
    print(
        f"  peak-bound {bound:7.1f} s  ({flops / 1e12:.2f} TFLOP at {peak:.0f} GFLOP/s, "
        f"{a.threads} threads): wall / peak-bound {wall / bound:.2f}x (load {loadavg()})"
    )
    print(
        "  train {train:.1f} s, validate {val:.1f} s, test {test:.1f} s".format(**phases)
        + f", other (start-up, data, checkpoints) {result['other_s']:.1f} s"
    )
    print(
        f"  training rate (median over epochs) {rate:,.0f} img/s; final test error "
        f"{result['test_error_rate']:.2%}"
    )
    if a.json:
        from chaosgen.build import atomic_write

        atomic_write(Path(a.json), json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
