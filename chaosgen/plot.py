"""`chaosgen plot`: PNG pictures of training logs (error, loss, speed per epoch) and of speed-up
benchmarks (measured beside the performance model). matplotlib is an optional extra."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

from .build import atomic_write
from .errors import ChaosgenError, UsageError, refuse_special_file

INSTALL_HINT = "plotting needs matplotlib: pip install 'chaosgen[plot]'"
# (key prefix, name, line style, colour when one run is drawn: a split keeps its colour everywhere)
SPLITS = (
    ("train", "training", "-", "C0"),
    ("val", "validation", "--", "C1"),
    ("test", "test", ":", "C2"),
)


# --- inputs -------------------------------------------------------------------------------------
def _read_text(path: Path) -> str:
    refuse_special_file(path, "a log or benchmark result")
    try:
        return path.read_text()
    except FileNotFoundError:
        raise ChaosgenError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ChaosgenError(f"{path}: cannot read ({e})") from None


def load_run(path: str | Path) -> list[dict]:
    """The per-epoch records of a `chaosgen train --log` file, checked."""
    path = Path(path)
    records = []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ChaosgenError(f"{path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("epoch"), int):
            raise ChaosgenError(f"{path}:{n}: not an epoch record (no integer 'epoch' key)")
        records.append(rec)
    if not records:
        raise ChaosgenError(
            f"{path}: no epochs (an empty log; write one with `chaosgen train --log`)"
        )
    records.sort(key=lambda r: r["epoch"])
    return records


def load_bench(path: str | Path) -> dict:
    """A bench.json (bench/speed.py), checked for chaosgen entries."""
    path = Path(path)
    try:
        bench = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise ChaosgenError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    rows = bench.get("chaosgen") if isinstance(bench, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ChaosgenError(
            f"{path}: no 'chaosgen' measurements (expected bench/speed.py's format)"
        )
    for i, r in enumerate(rows):
        try:
            float(r["train_images_per_s"]["median"]), int(r["threads"]), str(r["net"])
        except (KeyError, TypeError, ValueError):
            raise ChaosgenError(
                f"{path}: chaosgen entry {i} lacks net, threads or train_images_per_s.median"
            ) from None
    return bench


def _pyplot_free_figure(**kw):
    """A matplotlib Figure without pyplot's global state (no display needed)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ChaosgenError(INSTALL_HINT) from None
    return Figure(**kw)


def _save(fig, path: Path) -> Path:
    """Render to PNG in memory, then publish atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write(path, buf.getvalue())
    return path


def _get(rec: dict, key: str) -> float | None:
    v = rec.get(key)
    return float(v) if isinstance(v, (int, float)) else None


def _label(records: list[dict]) -> str:
    c = records[-1].get("config", {})
    return f"{c.get('network', '?')} {c.get('scheme', '?')} {c.get('threads', '?')}t"


def _title(records: list[dict]) -> str:
    c, m = records[-1].get("config", {}), records[-1].get("machine", {})
    net = c.get("network") or Path(str(c.get("spec", "?"))).stem
    return f"{net}: {c.get('scheme', '?')}, {c.get('threads', '?')} threads" + (
        f" on {m['cpu']}" if m.get("cpu") else ""
    )


# --- training logs ------------------------------------------------------------------------------
def plot_runs(runs: list[list[dict]], out: Path, stem: str) -> list[Path]:
    """Error rate, loss and images/s per epoch; several runs overlay (one colour each)."""
    many = len(runs) > 1
    title = "; ".join(_label(r) for r in runs) if many else _title(runs[0])
    paths = []

    def lines(ax, key_of, scale=1.0):
        for k, run in enumerate(runs):
            for split, name, style, colour in SPLITS:
                pts = [(r["epoch"], v * scale) for r in run if (v := key_of(r, split)) is not None]
                if pts:
                    label = f"{_label(run)} {name}" if many else name
                    ax.plot(
                        *zip(*pts, strict=True),
                        style,
                        marker="o",
                        ms=3,
                        color=f"C{k}" if many else colour,
                        label=label,
                    )

    fig = _pyplot_free_figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    lines(ax, lambda r, s: _get(r, f"{s}_error_rate"), 100.0)
    ax.set(title=f"Error rate per epoch\n{title}", xlabel="epoch", ylabel="error rate (%)")
    _finish(ax)
    paths.append(_save(fig, out / f"{stem}-error-rate.png"))

    fig = _pyplot_free_figure(figsize=(11, 4.5), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    lines(ax1, lambda r, s: _get(r, f"{s}_error") if s != "train" else None)
    ax1.set(
        title="Summed loss (the paper's 'error')",
        xlabel="epoch",
        ylabel="loss summed over the images",
    )
    lines(ax2, _mean_loss)
    ax2.set(title="Mean loss per image", xlabel="epoch", ylabel="loss per image")
    fig.suptitle(f"Loss per epoch — {title}")
    _finish(ax1)
    _finish(ax2)
    paths.append(_save(fig, out / f"{stem}-loss.png"))

    fig = _pyplot_free_figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    lines(ax, lambda r, s: _get(r, f"{s}_images_per_s"))
    ax.set(
        title=f"Throughput per epoch\n{title}",
        xlabel="epoch",
        ylabel="images per second",
        yscale="log",
    )
    _finish(ax)
    _plain_log_ticks(ax)
    paths.append(_save(fig, out / f"{stem}-speed.png"))
    return paths


def _plain_log_ticks(ax) -> None:
    """1,000 rather than 10^3 on a log axis, minor ticks too (a reader wants the number)."""
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}")
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(fmt)
    ax.tick_params(axis="y", which="minor", labelsize="x-small")


def _mean_loss(rec: dict, split: str) -> float | None:
    if split == "train":
        return _get(rec, "train_loss")
    total, n = _get(rec, f"{split}_error"), _get(rec, f"{split}_images")
    return total / n if total is not None and n else None


def _finish(ax) -> None:
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


# --- speed-up -----------------------------------------------------------------------------------
def _series(rows: list[dict], key: str = "train_images_per_s") -> dict[tuple, list[tuple]]:
    """(net, scheme-or-mode) -> sorted [(threads, median, min, max)]."""
    out: dict[tuple, list[tuple]] = {}
    for r in rows:
        v = r.get(key)
        if not isinstance(v, dict) or not v.get("median"):
            continue
        k = (r["net"], r.get("scheme") or r.get("mode", ""))
        out.setdefault(k, []).append(
            (
                int(r["threads"]),
                float(v["median"]),
                float(v.get("min", v["median"])),
                float(v.get("max", v["median"])),
            )
        )
    return {k: sorted(v) for k, v in out.items()}


def plot_speedup(
    bench: dict, out: Path, stem: str, machine=None, specs: dict[str, str] | None = None
) -> list[Path]:
    """Speed-up over one thread against threads (with the ideal line and, given a machine
    profile, the model's curve), and throughput against threads."""
    cpu = bench.get("machine", {}).get("cpu", "")
    series = _series(bench["chaosgen"])
    max_p = max(p for pts in series.values() for p, *_ in pts) if series else 1
    fig = _pyplot_free_figure(figsize=(7, 5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([1, max_p], [1, max_p], "k--", lw=1, label="ideal (linear)")
    for k, ((net, scheme), pts) in enumerate(sorted(series.items())):
        base = next((m for p, m, *_ in pts if p == 1), None)
        if base is None:
            print(
                f"chaosgen: note: no 1-thread measurement of {net} {scheme}; no speed-up drawn",
                file=sys.stderr,
            )
            continue
        ps = [p for p, *_ in pts]
        ax.errorbar(
            ps,
            [m / base for _, m, *_ in pts],
            yerr=[
                [(m - lo) / base for _, m, lo, _ in pts],
                [(hi - m) / base for _, m, _, hi in pts],
            ],
            marker="o",
            capsize=3,
            color=f"C{k}",
            label=f"{net} ({scheme}), measured",
        )
        if machine is not None:
            curve = _model_curve(net, machine, max_p, (specs or {}).get(net))
            if curve:
                ax.plot(
                    *zip(*curve, strict=True),
                    ":",
                    color=f"C{k}",
                    lw=2,
                    label=f"{net}, model ({machine.name})",
                )
    ax.set(
        title="Training speed-up over one thread" + (f"\n{cpu}" if cpu else ""),
        xlabel="threads",
        ylabel="speed-up (× one thread's images/s)",
    )
    _finish(ax)
    handles, labels = ax.get_legend_handles_labels()  # each network's measured and model together
    order = sorted(
        range(len(labels)), key=lambda i: (not labels[i].startswith("ideal"), labels[i])
    )
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize="small")
    paths = [_save(fig, out / f"{stem}-speedup.png")]

    # one colour per network; line style and marker tell what was measured
    fig = _pyplot_free_figure(figsize=(9, 5), layout="constrained")
    ax = fig.add_subplot()
    kinds = (
        ("chaosgen", "train_images_per_s", "-", "o"),
        ("chaosgen", "infer_images_per_s", "--", "s"),
        ("torch", "train_images_per_s", "-.", "^"),
    )
    nets = sorted(
        {str(r.get("net")) for src in ("chaosgen", "torch") for r in bench.get(src) or []}
    )
    for source, key, style, marker in kinds:
        for (net, mode), pts in sorted(_series(bench.get(source) or [], key).items()):
            what = "inference" if key.startswith("infer") else "training"
            ax.plot(
                [p for p, *_ in pts],
                [m for _, m, *_ in pts],
                style,
                marker=marker,
                color=f"C{nets.index(net) % 10}",
                label=f"{net}: {source} {mode} {what}",
            )
    ax.set(
        title="Throughput against threads" + (f"\n{cpu}" if cpu else ""),
        xlabel="threads",
        ylabel="images per second",
        yscale="log",
    )
    _finish(ax)
    _plain_log_ticks(ax)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i])
    ax.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        fontsize="small",
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
    )
    paths.append(_save(fig, out / f"{stem}-throughput.png"))
    return paths


def _model_curve(net: str, machine, max_p: int, spec: str | None) -> list[tuple[int, float]]:
    """The model's training speed-up for 1..max_p threads (empty if the spec is not found)."""
    from .pipeline import front_end
    from .predict import train_speedup, work_of

    candidates = (
        [spec]
        if spec
        else [
            f"specs/{net}.net",
            str(Path(__file__).resolve().parent.parent / "specs" / f"{net}.net"),
        ]
    )
    path = next((c for c in candidates if c and Path(c).is_file()), None)
    if path is None:
        print(
            f"chaosgen: note: no spec for network '{net}' (looked for specs/{net}.net); "
            f"no model curve",
            file=sys.stderr,
        )
        return []
    work = work_of(front_end(path)[1])
    return [(p, train_speedup(work, machine, net, p)) for p in range(1, max_p + 1)]


# --- command line -------------------------------------------------------------------------------
def add_parser(sub) -> None:
    """`chaosgen plot`."""
    p = sub.add_parser("plot", help="PNG plots of training logs or of a speed-up benchmark")
    p.add_argument(
        "logs", nargs="*", help="run.jsonl files from `chaosgen train --log` (overlaid)"
    )
    p.add_argument("--speedup", metavar="BENCH_JSON", help="plot a bench/speed.py result instead")
    p.add_argument(
        "--predicted",
        action="store_true",
        help="with --speedup: draw the performance model's curve too",
    )
    p.add_argument("--machine", default="this", help="profile for --predicted (default: this)")
    p.add_argument("--out", default=None, help="output directory (default: beside the input)")
    p.set_defaults(func=cmd_plot)


def cmd_plot(args: argparse.Namespace) -> int:
    """Write the PNGs and print their paths."""
    if args.speedup and args.logs:
        raise UsageError("give either run.jsonl files or --speedup BENCH_JSON, not both")
    if not args.speedup and not args.logs:
        raise UsageError("nothing to plot: give run.jsonl files or --speedup BENCH_JSON")
    if args.predicted and not args.speedup:
        raise UsageError("--predicted goes with --speedup")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ChaosgenError(INSTALL_HINT) from None
    first = Path(args.speedup or args.logs[0])
    out = Path(args.out) if args.out else first.parent
    if args.speedup:
        bench = load_bench(first)
        machine = None
        if args.predicted:
            from .predict import load_machine

            machine = load_machine(args.machine)
        specs = {r["net"]: r["spec"] for r in bench["chaosgen"] if isinstance(r.get("spec"), str)}
        paths = plot_speedup(bench, out, first.stem, machine, specs)
    else:
        runs = [load_run(p) for p in args.logs]
        paths = plot_runs(runs, out, first.stem if len(runs) == 1 else "runs")
    for p in paths:
        print(p)
    return 0
