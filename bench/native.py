"""Training throughput of the standalone native program (`chaosgen compile --program`) against
`chaosgen train` (the cffi library built from the same net.cpp), measured interleaved in the same
run on the same MNIST images with the same flags; both figures are the `train_images_per_s` of
their own JSON log (the same timer around the same cg_train call).

    python bench/native.py                           # small and lenet, 2 threads
    python bench/native.py --nets medium --limit 20000 --threads 1 --repeats 5

Prints img/s per (net, runner) and the program's ratio to chaosgen train. Say the machine's load
(/proc/loadavg, printed) beside any number you quote.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import loadavg  # noqa: E402

from chaosgen import data, native  # noqa: E402


def _raw_mnist(source: str | None, out: Path) -> Path:
    """The four MNIST files gunzipped into out (both runners read the same raw files)."""
    d = data.find_data_dir(source)
    for name, _, _ in data.FILES:
        blob = (d / name).read_bytes() if (d / name).exists() else None
        raw = gzip.decompress(blob) if blob else (d / name.removesuffix(".gz")).read_bytes()
        (out / name.removesuffix(".gz")).write_bytes(raw)
    return out


def _rate(log: Path) -> float:
    return float(json.loads(log.read_text().splitlines()[-1])["train_images_per_s"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nets", default="small,lenet", help="comma-separated specs/ names or paths")
    p.add_argument("--data", default=None, help="MNIST directory (default: as chaosgen finds it)")
    p.add_argument("--limit", type=int, default=5000, help="training images per run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs of each runner")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = p.parse_args()
    from chaosgen.errors import ChaosgenError

    try:
        return _bench(args)
    except ChaosgenError as e:
        print(f"bench/native.py: {e}", file=sys.stderr)
        return 1


def _bench(args: argparse.Namespace) -> int:
    """Build, run interleaved, print."""
    out: dict = {"load_before": loadavg(), "threads": args.threads, "limit": args.limit}
    with tempfile.TemporaryDirectory(prefix="bench-native-") as tmp:
        tmp = Path(tmp)
        raw = _raw_mnist(args.data, tmp)
        for net in args.nets.split(","):
            spec = net if net.endswith(".net") else str(ROOT / "specs" / f"{net}.net")
            ir_net, _, _, prog = native.emit_program(spec, "native", "gcc", tmp / f"p-{net}")
            common = ["--epochs", "1", "--limit", str(args.limit), "--val-limit", "100",
                      "--test-limit", "1", "--threads", str(args.threads), "--quiet"]  # fmt: skip
            rates: dict[str, list[float]] = {"program": [], "chaosgen train": []}
            for k in range(args.repeats):
                log = tmp / f"{net}-p{k}.jsonl"
                subprocess.run([str(prog.executable), "--data", str(raw), "--log", str(log),
                                *common], cwd=prog.directory, check=True)  # fmt: skip
                rates["program"].append(_rate(log))
                log = tmp / f"{net}-t{k}.jsonl"
                subprocess.run([sys.executable, "-m", "chaosgen.cli", "train", spec, "--cc", "gcc",
                                "--data", str(raw), "--log", str(log), "--checkpoint-dir",
                                str(tmp / f"ck{k}"), *common], cwd=ROOT, check=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
                rates["chaosgen train"].append(_rate(log))
            med = {k: statistics.median(v) for k, v in rates.items()}
            out[ir_net.name] = {"img_per_s": med, "runs": rates,
                                "ratio": med["program"] / med["chaosgen train"]}  # fmt: skip
    out["load_after"] = loadavg()
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"load {out['load_before']} -> {out['load_after']}; {args.threads} threads, "
          f"{args.limit} images per run, median of {args.repeats} interleaved runs")  # fmt: skip
    for name, r in out.items():
        if isinstance(r, dict):
            print(
                f"{name:10} program {r['img_per_s']['program']:8.0f} img/s   chaosgen train "
                f"{r['img_per_s']['chaosgen train']:8.0f} img/s   ratio {r['ratio']:.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
