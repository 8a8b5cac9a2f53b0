"""CHAOS across MPI ranks against CHAOS on threads, on this machine, through `chaosgen train`.

For each network: 1 rank x 1 thread, 1 rank x 2 threads (CHAOS), and 2 ranks x 1 thread under
`mpirun` for each K (--sync-every); each run trains --epochs epochs (the full training set unless
--limit) from the same seed and reports training img/s (all epochs' images over their training
seconds), the speed-up over 1 x 1, the test error after the last epoch and the bytes each image
costs the network (the ring allreduce's 2 (N - 1) / N of the float32 weights per sync, per K
images of a rank; CHAOS on threads shares every weight through the caches instead). The ranks
talk over TCP on the loopback interface (`--mca btl self,tcp`), the path `chaosgen
calibrate-network` measures, so that the model's predictions can be checked against these runs;
--mpirun-args replaces that (for both), e.g. with a --hostfile of two hosts.
Prints a markdown table and the load average before and after (the machine may be shared:
timings then say little); --json keeps every row (bench/mpi.py --json is what
docs/performance-model.md's validation reads).

    python bench/mpi.py                                   # 3 nets x 5 configurations, 2 epochs
    python bench/mpi.py --nets small --ks 100,1000 --limit 20000 --epochs 1
    python bench/mpi.py --overlap --no-predict            # blocking against --sync-overlap
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chaosgen import netmodel  # noqa: E402

MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def run(net: str, ranks: int, threads: int, k: int | None, args, work: Path,
        overlap: bool = False) -> dict:  # fmt: skip
    """One `chaosgen train` job (`overlap`: with --sync-overlap); its figures from its log."""
    name = f"{net}-{ranks}x{threads}-{k or 0}{'-overlap' * overlap}"
    log = work / f"{name}.jsonl"
    train = [
        sys.executable, "-m", "chaosgen.cli", "train", str(ROOT / "specs" / f"{net}.net"),
        "--threads", str(threads), "--epochs", str(args.epochs), "--quiet", "--log", str(log),
        "--checkpoint-dir", str(work / name), "--build-dir", str(work / "build"),
    ]  # fmt: skip
    if args.data:
        train += ["--data", str(Path(args.data).resolve())]
    if args.limit:
        train += ["--limit", str(args.limit)]
    if ranks > 1:
        mpirun = shutil.which("mpirun") or "mpirun"
        cmd = [mpirun, "--oversubscribe", *args.mpirun, "-np", str(ranks), *train,
               "--sync-every", str(k), "--sync-rule", args.rule]  # fmt: skip
        cmd += ["--sync-overlap"] * overlap
    else:
        cmd = train
    env = {**os.environ, **MPI_ENV, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    images = sum(r["train_images"] for r in recs)
    seconds = sum(r["seconds_train"] for r in recs)
    mpi = recs[-1].get("mpi") or {}
    return {
        "net": net,
        "ranks": ranks,
        "threads": threads,
        "sync_every": k,
        "sync_rule": args.rule if ranks > 1 else None,
        "sync_overlap": overlap,
        "epochs": len(recs),
        "train_images": images,
        "seconds_train": seconds,
        "images_per_s": images / seconds,
        "test_error_rate": recs[-1]["test_error_rate"],
        "bytes_per_image": mpi.get("bytes_per_image", 0.0),
        "sync_seconds": sum((r.get("mpi") or {}).get("sync_seconds", 0.0) for r in recs),
        "syncs": sum((r.get("mpi") or {}).get("syncs", 0) for r in recs),
    }


def calibrate_net(net: str, data: str | None, tmp: Path):
    """This machine's profile of `net` (`chaosgen calibrate`), measured now into a scratch file
    that keeps the nets measured before, as bench/model.py does: just before the net's runs, so
    that a calibration and the runs it predicts share the VM's state of the moment (it has
    minutes-long slow and fast states, docs/kernels.md)."""
    from chaosgen import calibrate
    from chaosgen.predict import read_profile

    path = tmp / "machine.json"
    calibrate.run([str(ROOT / "specs" / f"{net}.net")], out=path, data_dir=data,
                  build_dir=str(tmp / "build"))  # fmt: skip
    return read_profile(path)


def predicted_seconds(row: dict, machine, network) -> float:
    """The model's training seconds for a row: each rank's shard of the epochs' images on its
    threads (chaosgen.predict), plus, under MPI, its chunks' native calls beyond one per epoch
    (the profile's call_s) and its syncs over the loopback network (chaosgen.netmodel: the
    alpha-beta allreduce plus sync_s); validation, test and the epochs' preparation are not in
    the measured training seconds, so not here either."""
    from chaosgen.pipeline import front_end
    from chaosgen.predict import predict, work_of

    _, net = front_end(str(ROOT / "specs" / f"{row['net']}.net"))
    shard = -(-row["train_images"] // row["epochs"] // row["ranks"])
    p = predict(work_of(net), machine, row["threads"], net=net.name, epochs=row["epochs"],
                images=shard, val_images=0, test_images=0)  # fmt: skip
    comm = row["syncs"] * network.model_sync_s(4 * net.n_params, row["ranks"])
    calls = max(0, row["syncs"] - row["epochs"]) * machine.factors(net.name)[0].call_s
    return p.t_train + p.t_mem + comm + calls


def model_plot(path: str) -> None:
    """The model's speed-up against nodes (1 to 1,024) for the large net on KNC nodes (240
    threads) and the small net on this machine's kind of node (2 threads, profile `this`), over
    10GbE and InfiniBand EDR, K = 100 and 10,000 (docs/performance-model.md)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from chaosgen.build import atomic_write
    from chaosgen.calibrate import _machine_for
    from chaosgen.pipeline import front_end
    from chaosgen.predict import load_machine, work_of

    nodes = [2**i for i in range(11)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    cases = (("large", "knc", 240), ("small", "this", 2))
    for ax, (name, machine_name, threads) in zip(axes, cases, strict=True):
        spec = str(ROOT / "specs" / f"{name}.net")
        _, net = front_end(spec)
        machine = load_machine("knc") if machine_name == "knc" else _machine_for("this", spec, net)
        work = work_of(net)
        for network in ("10GbE", "ib-edr"):
            for k, style in ((100, "-"), (10000, "--")):
                t = [
                    netmodel.predict_nodes(work, machine, threads, n, k,
                                           netmodel.NETWORKS[network], net.n_params,
                                           net=net.name).per_epoch
                    for n in nodes
                ]  # fmt: skip
                ax.plot(nodes, [t[0] / x for x in t], style, marker="o", ms=3,
                        label=f"{network}, K = {k:,}")  # fmt: skip
        ax.plot(nodes, nodes, ":", color="grey", label="linear")
        ax.set(xscale="log", yscale="log", xlabel="nodes", title=f"{name} net, {threads} "
               f"threads per node ({machine_name})")  # fmt: skip
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("speed-up per epoch (model)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    atomic_write(Path(path), buf.getvalue())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nets", default="small,medium,large")
    ap.add_argument("--ks", default="100,1000,10000", help="--sync-every values of the 2x1 runs")
    ap.add_argument("--rule", default="sum", choices=("sum", "average"))
    ap.add_argument(
        "--overlap",
        action="store_true",
        help="also run every 2x1 row with --sync-overlap (non-blocking allreduce)",
    )
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="training images per epoch")
    ap.add_argument("--data", default=os.environ.get("CHAOSGEN_DATA"))
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument(
        "--no-predict", action="store_true",
        help="leave out the model's prediction (for which the machine and its loopback are "
        "calibrated first, into scratch profiles)",
    )  # fmt: skip
    ap.add_argument("--model-plot", default=None, metavar="PNG",
                    help="only draw the model's speed-up against nodes into PNG")  # fmt: skip
    ap.add_argument(
        "--mpirun-args",
        default=None,
        metavar="ARGS",
        help="mpirun's arguments for the 2x1 jobs (default: TCP over loopback)",
    )
    args = ap.parse_args()
    args.mpirun = list(netmodel.LOOPBACK if args.mpirun_args is None
                       else shlex.split(args.mpirun_args))  # fmt: skip
    if args.model_plot:
        model_plot(args.model_plot)
        return 0
    if shutil.which("mpirun") is None:
        sys.exit("bench: mpirun not found: apt-get install openmpi-bin libopenmpi-dev")
    ks = [int(k) for k in args.ks.split(",")]
    before, rows = loadavg(), []
    data = str(Path(args.data).resolve()) if args.data else None
    with tempfile.TemporaryDirectory(prefix="bench-mpi-") as tmp:
        if not args.no_predict:  # the loopback's alpha, beta and sync_s
            network = netmodel.calibrate(Path(tmp) / "network.json", args.mpirun)
        for net in args.nets.split(","):
            if not args.no_predict:
                machine = calibrate_net(net, data, Path(tmp))
            # with --overlap, each K blocking then overlapped (A/B, one after the other)
            both = (False, True) if args.overlap else (False,)
            configs = [(1, 1, None, False), (1, 2, None, False),
                       *((2, 1, k, o) for k in ks for o in both)]  # fmt: skip
            for ranks, threads, k, overlap in configs:
                rows.append(run(net, ranks, threads, k, args, Path(tmp), overlap))
                if not args.no_predict and not overlap:  # the model's syncs are blocking
                    rows[-1]["predicted_seconds_train"] = predicted_seconds(
                        rows[-1], machine, network
                    )
                print(f"bench: {rows[-1]}", file=sys.stderr, flush=True)
    after = loadavg()
    base = {r["net"]: r["images_per_s"] for r in rows if r["ranks"] == r["threads"] == 1}
    print(f"load average before {before}, after {after} (2 cores; other jobs may share them)")
    print(
        f"{args.epochs} epochs of {args.limit or 'all'} training images; 2x1: --sync-rule "
        f"{args.rule}, mpirun {shlex.join(args.mpirun)}\n"
    )
    model = "" if args.no_predict else " predicted img/s | error |"
    print("| net | ranks x threads | K | img/s | speed-up | test error | bytes/image |" + model)
    print("|---|---|---:|---:|---:|---:|---:|" + "---:|---:|" * bool(model))
    for r in rows:
        k = f"{r['sync_every']:,}" if r["sync_every"] else "-"
        k += " overlap" * r["sync_overlap"]
        moved = f"{r['bytes_per_image']:,.0f}" if r["ranks"] > 1 else "(caches)"
        line = (
            f"| {r['net']} | {r['ranks']} x {r['threads']} | {k} | {r['images_per_s']:,.0f} | "
            f"{r['images_per_s'] / base[r['net']]:.2f}x | {r['test_error_rate']:.2%} | {moved} |"
        )
        if "predicted_seconds_train" in r:
            rate = r["train_images"] / r["predicted_seconds_train"]
            line += f" {rate:,.0f} | {rate / r['images_per_s'] - 1:+.1%} |"
        elif model:
            line += " - | - |"
        print(line)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"load_before": before, "load_after": after, "rows": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
