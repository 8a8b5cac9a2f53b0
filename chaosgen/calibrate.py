"""`chaosgen calibrate`: measure this machine for the performance model. Per network: train and
validate a few hundred to a few thousand images on one thread (operation factors); run the
contention microbenchmark (templates/contention.cpp.j2) at 1 and more threads; measure peak FMA
throughput. Short runs repeated, medians kept: the machine may be shared."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from . import __version__, child, ir
from .build import atomic_write, cached_program, check_writable
from .codegen import lock_segment
from .errors import ChaosgenError, UsageError
from .options import bounded
from .predict import (
    DEFAULT_THREADS,
    MACHINE_ENV,
    MAX_IMAGES,
    Machine,
    Work,
    compare_paper,
    default_profile_path,
    load_machine,
    parse_threads,
    predict,
    print_paper_table,
    print_table,
    work_of,
)
from .targets import cpu_model, default_compiler_for, native_target
from .threads import usable_cpus

REPEATS = 3  # training measurements per network (median)
CONTENTION_REPEATS = 5  # microbenchmark runs per thread count (median)
CONTENTION_PAUSE_S = 0.5  # between two rounds of contention runs (spreads them in time)
CALL_IMAGES = 32  # images of the per-call measurement: one call of 32 against 32 calls of 1
CALL_ROUNDS = 11  # rounds of it (median): each takes milliseconds
# A run counts as undisturbed if the process got this share of its threads' cores in CPU time;
# below it, other work shared the cores (a shared machine) and the run measured that instead.
MIN_SHARE = 0.9
SHIPPED = ("small", "medium", "large")
MAX_SECONDS = 3600.0  # calibrate --seconds: an hour per network is already far more than needed
# Assumed power of this machine: no sensor is readable in a VM. EPYC 9005 (Zen 5) parts list
# 360-500 W TDP for 64-192 cores, about 2.6-5.6 W per core; we take the upper end per busy core.
POWER = {
    "idle_w": 0.0,
    "per_core_w": 5.0,
    "source": "assumed 5 W per busy core (EPYC 9005 TDP / cores, upper end); not measured",
}


def shipped_specs() -> list[str]:
    """specs/{small,medium,large}.net of a source checkout (or of the working directory)."""
    for root in (Path("specs"), Path(__file__).resolve().parent.parent / "specs"):
        found = [str(root / f"{n}.net") for n in SHIPPED if (root / f"{n}.net").is_file()]
        if found:
            return found
    return []


def cpu_hz() -> float:
    """The clock /proc/cpuinfo reports (nominal; turbo is absorbed by the operation factors)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return float(line.split(":", 1)[1]) * 1e6
    except (OSError, ValueError):
        pass
    return 2.0e9  # a stated default where the clock is unknown


def threads_per_core() -> int:
    """Hardware threads per core from sysfs (1 if unknown)."""
    p = Path("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list")
    try:
        text = p.read_text().strip()
    except OSError:
        return 1
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return max(n, 1)


# --- the microbenchmark -------------------------------------------------------------------------
def microbenchmark(build_dir: str | Path | None = None) -> Path:
    """Render and build (cached by content) the contention/peak program."""
    from .codegen import environment

    target = native_target()
    src = environment().get_template("contention.cpp.j2").render(
        version=__version__, align=target.align, unroll_limit=16
    )
    compiler = default_compiler_for(target)
    # A program, not a library: no -fPIC. -fopenmp for threads; -O3 -march=native as the nets.
    flags = [f for f in compiler.flags(target) if f != "-fPIC"]
    return cached_program(
        build_dir,
        "contention",
        {"contention.cpp": src},
        "contention.cpp",
        compiler,
        flags,
        "building the contention microbenchmark",
    )


def code_key(spec: str | Path, target: str = "native", cc: str | None = None) -> str:
    """A digest of the network's generated code for `target` with compiler `cc` (default: the
    target's) without its comments, the compiler and its flags: it changes when the code
    generator or the toolchain does (a calibration of other code is stale), not with the
    spelling of the spec's path (which only comments mention)."""
    from .pipeline import compile_spec

    c = compile_spec(spec, target=target, cc=cc, build=False)
    code, header = (
        re.sub(r"//[^\n]*|/\*.*?\*/", "", t, flags=re.S) for t in (c.source.cpp, c.source.header)
    )
    parts = (
        code,
        header,
        c.compiler.resolve() or c.compiler.cxx,
        c.compiler.version(),
        " ".join(c.compiler.flags(c.target)),
        __version__,
    )
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


def _run(exe: Path, *args) -> dict:
    """The microbenchmark's JSON (it dies with chaosgen, and is stopped if it hangs)."""
    what = f"{exe.name} {' '.join(map(str, args))}"
    return child.run_json([exe, *map(str, args)], what, timeout=300)  # type: ignore[return-value]


def undisturbed(samples: Sequence[tuple[float, float]]) -> tuple[list[float], bool]:
    """Values of (value, cpu share) samples that had their cores to themselves (share >=
    MIN_SHARE); all of them, flagged False, if none did."""
    clean = [v for v, share in samples if share >= MIN_SHARE]
    return (clean, True) if clean else ([v for v, _ in samples], False)


def contention_blocks(work: Work, train_s: float) -> list[str]:
    """The microbenchmark's block arguments of a network: size:segment:forward_s:backward_s,
    each layer's private compute its share (by operation counts) of `train_s` per image."""
    return [
        f"{size}:{lock_segment(size)}:"
        f"{train_s * f / work.train:.9g}:{train_s * b / work.train:.9g}"
        for size, (f, b) in zip(work.blocks, work.block_ops, strict=True)
    ]


def measure_contention(
    exe: Path, nets: dict[str, tuple[Work, float]], threads: Sequence[int], seconds: float
) -> dict[str, tuple[dict[int, float], float, list[float], bool]]:
    """Seconds per image in the locked updates of each network (name: (work, train_s)) per thread
    count, in rounds: every round runs every network at every thread count once, rounds
    CONTENTION_PAUSE_S apart, until each network has three undisturbed rounds (at least
    CONTENTION_REPEATS rounds, at most twice as many). So a network's samples span the whole
    measurement, not one burst of it: this VM has minutes-long states in which every cross-core
    line transfer is several times slower (docs/kernels.md), and the samples of one network
    taken back to back all fell in one state. Per network: the median per count over the
    undisturbed runs; the contention c, the median over the undisturbed rounds of each round's
    slope of c(p) - c(1) against p - 1 (over all rounds if none was undisturbed); every round's
    slope (their spread shows a state change during the calibration); and whether any round was
    undisturbed."""
    samples = {name: {p: [] for p in threads} for name in nets}  # (value, cpu share) per run
    args = {
        name: (max(20, min(5000, int(seconds / CONTENTION_REPEATS / len(threads) / t))),
               contention_blocks(w, t))
        for name, (w, t) in nets.items()
    }  # fmt: skip

    def enough(per_p: dict) -> bool:  # three rounds whose every run was undisturbed
        shares = zip(*([share for _, share in v] for v in per_p.values()), strict=True)
        return sum(min(r) >= MIN_SHARE for r in shares) >= 3

    for k in range(2 * CONTENTION_REPEATS):
        if k:
            time.sleep(CONTENTION_PAUSE_S)
        for name, (images, blocks) in args.items():
            for p in threads:
                r = _run(exe, "contention", p, images, *blocks)
                samples[name][p].append((r["update_s_per_image"], r["cpu_share"]))
        if k + 1 >= CONTENTION_REPEATS and all(enough(v) for v in samples.values()):
            break
    extra = [p for p in threads if p > 1]
    out = {}
    for name, per_p in samples.items():
        got = {p: undisturbed(v) for p, v in per_p.items()}
        medians = {p: statistics.median(v) for p, (v, _) in got.items()}
        # per round: c(p) = slope * (p - 1), least squares through the origin over the counts,
        # from that round's runs only (a state that lasts the round cancels out of the pairs)
        slopes, clean = [], []
        for k in range(len(per_p[1]) if extra else 0):
            pts = [(p - 1, per_p[p][k][0] - per_p[1][k][0]) for p in extra]
            slopes.append(sum(x * y for x, y in pts) / sum(x * x for x, _ in pts))
            clean.append(all(per_p[p][k][1] >= MIN_SHARE for p in threads))
        kept = [v for v, ok in zip(slopes, clean, strict=True) if ok]
        slope = max(0.0, statistics.median(kept or slopes)) if slopes else 0.0
        out[name] = (medians, slope, slopes, bool(kept) or not slopes)
    return out


def measure_peak(exe: Path, threads: Sequence[int], seconds: float = 0.2) -> dict[int, float]:
    """GFLOP/s of p threads running independent FMA chains (median of three)."""
    return {
        p: statistics.median(_run(exe, "peak", p, seconds)["gflops"] for _ in range(3))
        for p in threads
    }


# --- training speed -----------------------------------------------------------------------------
def _data(data_dir: str | None, n: int):
    """MNIST if it can be found, else random images (timing does not depend on pixel values)."""
    from .data import find_data_dir, load_mnist

    try:
        d = load_mnist(find_data_dir(data_dir))
        return d, "mnist"
    except ChaosgenError:
        if data_dir is not None:
            raise
    rng = np.random.default_rng(0)
    x = rng.random((n, 29, 29), dtype=np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    return SimpleNamespace(
        train_images=x, train_labels=y, test_images=x, test_labels=y
    ), "synthetic"


def timed_epochs(trainer, count: int, threads: int) -> list[tuple[dict, float]]:
    """Run `count` epochs one at a time: each record with the share of `threads` cores the
    process had in CPU time meanwhile (near 1: undisturbed by other work)."""
    out = []
    for k in range(count):
        trainer.start_epoch, trainer.cfg.epochs = k, k + 1
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        (rec,) = trainer.run()
        r1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
        cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
        out.append((rec, cpu / (wall * threads)))
    return out


def _probe(rt, data) -> tuple[float, int]:
    """Rough seconds per training image: double the batch until it takes 50 ms."""
    from .train import Config

    n = 32
    while True:
        x = rt.images(data.train_images[:n])
        t0 = time.perf_counter()
        rt.train(x, data.train_labels[:n], np.arange(n, dtype=np.int32), Config(), 1e-4)
        t = time.perf_counter() - t0
        if t >= 0.05 or n >= len(data.train_labels):
            return t / n, n
        n = min(2 * n, len(data.train_labels))


def measure_call(rt, data) -> float:
    """Seconds one Runtime.train call costs beyond its images (a Python thread started and
    joined, the labels checked, the cffi config built, the native team started): an MPI rank
    makes one call per --sync-every chunk. Per round, CALL_IMAGES one-image calls against one
    call of the same images, (many - one) / (CALL_IMAGES - 1); the median of CALL_ROUNDS rounds
    (one thread: the runs under mpirun in bench/mpi.py have one per rank)."""
    from .train import Config

    n = CALL_IMAGES
    # all the labels, as training passes them: every call checks them (Net.checked_labels)
    x, y = rt.images(data.train_images[:n]), data.train_labels
    order, cfg = np.arange(n, dtype=np.int32), Config(threads=1)
    rounds = []
    for _ in range(CALL_ROUNDS):
        t0 = time.perf_counter()
        rt.train(x, y, order, cfg, 1e-4)
        one = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(n):
            rt.train(x, y, order[i : i + 1], cfg, 1e-4)
        rounds.append((time.perf_counter() - t0 - one) / (n - 1))
    return max(0.0, statistics.median(rounds))


def measure_net(
    spec: str,
    seconds: float,
    full,
    kind: str,
    build_dir: str | None,
    log: Callable[[str], None],
) -> dict:
    """Time reduced epochs on one thread through the real Trainer: seconds per training image,
    per forward image, and the sequential rest of an epoch (medians of REPEATS epochs)."""
    from . import compile as compile_net
    from .train import Config, Runtime, Trainer

    net = compile_net(spec, build_dir=build_dir)
    rt = Runtime(net)
    per_image, _ = _probe(rt, full)
    call_s = measure_call(rt, full)
    # One epoch = n training + n validation + n/4 test images, about seconds / REPEATS long.
    n = int(min(len(full.train_labels), max(200, seconds / REPEATS / (per_image * 1.6))))
    nt = min(len(full.test_labels), max(50, n // 4))
    data = SimpleNamespace(
        train_images=full.train_images[:n],
        train_labels=full.train_labels[:n],
        test_images=full.test_images[:nt],
        test_labels=full.test_labels[:nt],
    )
    # One more epoch than measured: the first warms caches and the allocator, and is dropped.
    # Up to twice as many while fewer than REPEATS were undisturbed by other work.
    cfg = Config(threads=1, eta=1e-4, decay=1.0, limit=n, val_limit=n, test_limit=nt)
    trainer = Trainer(rt, data, cfg, quiet=True)
    timed = timed_epochs(trainer, REPEATS + 1, 1)[1:]
    while sum(share >= MIN_SHARE for _, share in timed) < REPEATS and len(timed) < 2 * REPEATS:
        timed += timed_epochs(trainer, 1, 1)
    records, clean = undisturbed(timed)
    w = work_of(net.ir)
    train_s = statistics.median(r["seconds_train"] / r["train_images"] for r in records)
    fwd_s = statistics.median(
        (r["seconds_val"] + r["seconds_test"]) / (r["val_images"] + r["test_images"])
        for r in records
    )
    prep_s = statistics.median(
        max(0.0, r["seconds"] - r["seconds_train"] - r["seconds_val"] - r["seconds_test"])
        for r in records
    )
    log(
        f"  {net.ir.name}: {n} training + {n} validation + {nt} test images x {REPEATS} on "
        f"1 thread ({kind} data): {1 / train_s:,.0f} training img/s, "
        f"{1 / fwd_s:,.0f} forward img/s, {call_s * 1e6:.0f} us per training call"
    )
    return {
        "net": net.ir.name,
        "spec": spec,
        "ir_hash": net.ir.digest(),
        "code_key": code_key(spec),
        "work": w,
        "images": n,
        "test_images": nt,
        "data": kind,
        "train_s_per_image": train_s,
        "forward_s_per_image": fwd_s,
        "prep_s": prep_s,
        "call_s": call_s,
        "undisturbed": clean,
    }


def _contention_fallback(
    nets: dict, name: str, work: Work, slope: float, clean: bool
) -> tuple[float, str]:
    """The contention to keep, and where it comes from. Threads that had to share one core never
    move cache lines between cores, so a disturbed measurement shows almost none: prefer this
    network's previous undisturbed value, else other networks' scaled by the lines written."""
    if clean:
        return slope, "measured"
    prev = nets.get(name, {})
    if prev.get("contention_undisturbed") and "contention_s" in prev:
        return prev["contention_s"], "kept from the previous calibration (this one was disturbed)"
    others = [
        v["contention_s"] / v["lines"]
        for k, v in nets.items()
        if k != name and v.get("contention_undisturbed")
    ]
    if others:
        return statistics.median(others) * work.lines, "other networks' per line (disturbed)"
    return slope, "measured (disturbed)"


# --- the whole calibration ----------------------------------------------------------------------
def run(
    specs: Sequence[str],
    out: Path,
    seconds: float = 2.0,
    data_dir: str | None = None,
    build_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Measure, then merge into the profile at `out` (networks measured before are kept).
    Raises ChaosgenError before measuring when `out` cannot be written."""
    check_writable(out, "the machine profile")
    t_start = time.perf_counter()
    cores = usable_cpus()  # threads beyond the affinity mask would only time-slice
    clock = cpu_hz()
    tpc = threads_per_core()
    physical = max(1, cores // tpc)
    exe = microbenchmark(build_dir)
    load = os.getloadavg()[0]
    log(
        f"calibrating {cpu_model()}: {physical} cores x {tpc} threads, clock {clock / 1e9:.2f} GHz"
    )
    if cores < (os.cpu_count() or cores):
        log(
            f"  note: this process may use {cores} of the machine's {os.cpu_count()} CPUs "
            "(affinity mask): the profile describes those"
        )
    if load > 0.5:
        log(
            f"  note: load average {load:.1f} before starting: other work is running, so the "
            f"numbers may be pessimistic; calibrate again when the machine is quiet"
        )
    old = {}
    if out.exists():
        try:
            old = json.loads(out.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("cpu") != cpu_model() or old.get("cores") != physical:
            old = {}  # another machine's profile: start afresh
    nets = dict(old.get("nets", {}))
    extra = sorted({2, cores} - {1}) if cores > 1 else []
    full, kind = _data(data_dir, 20000)
    measured = {}
    for spec in specs:
        m = measure_net(spec, seconds * 0.6, full, kind, build_dir, log)
        measured[m.pop("net")] = m
    contention = measure_contention(
        exe,
        {name: (m["work"], m["train_s_per_image"]) for name, m in measured.items()},
        [1, *extra],
        seconds * 0.4,
    )
    for net_name, m in measured.items():
        w = m.pop("work")
        c, slope, rounds, c_clean = contention[net_name]
        slope, how = _contention_fallback(nets, net_name, w, slope, c_clean)
        nets[net_name] = {
            **m,
            "operation_factor": {
                "train": m["train_s_per_image"] * clock / w.train,
                "forward": m["forward_s_per_image"] * clock / w.forward,
            },
            "contention_s": slope,
            "lines": w.lines,
            "update_s_per_image": {str(p): v for p, v in c.items()},
            "contention_rounds_s": rounds,
            "contention_undisturbed": c_clean or how != "measured (disturbed)",
            "contention_source": how,
        }
        if not (m["undisturbed"] and c_clean):
            log(
                f"  note: other work shared the cores during every {net_name} measurement "
                "(calibrate again when the machine is quiet)"
            )
        spread = f"; rounds {min(rounds) * 1e6:.2f}..{max(rounds) * 1e6:.2f} us" if rounds else ""
        log(
            f"  {net_name}: contention {slope * 1e6:.2f} us per image per extra thread "
            f"({w.lines} lines written per image; {how}{spread})"
        )
        if rounds and min(rounds) > 0 and max(rounds) > 2 * min(rounds):
            log(
                f"  note: {net_name}'s contention changed more than twofold between rounds: "
                "the machine changed state during the calibration (the median is kept)"
            )
    peak = measure_peak(exe, sorted({1, cores}))
    log(
        "  peak: "
        + ", ".join(f"{g:.0f} GFLOP/s on {p} thread{'s' * (p > 1)}" for p, g in peak.items())
    )
    med = {
        k: statistics.median(v["operation_factor"][k] for v in nets.values())
        for k in ("train", "forward")
    }
    clean = [v for v in nets.values() if v.get("contention_undisturbed")] or list(nets.values())
    per_line = statistics.median(v["contention_s"] / v["lines"] for v in clean)
    profile = {
        "name": "this",
        "description": f"{cpu_model()}, {physical} cores (calibrated)",
        "cpu": cpu_model(),
        "cores": physical,
        "threads_per_core": tpc,
        "clock_hz": clock,
        "clock_source": "/proc/cpuinfo (nominal; boost clocks are absorbed by the factors)",
        # Measured CPI exists only for one thread per core; SMT parts get the paper's KNC ratio
        # (2 with four threads) as a stated guess, interpolated linearly.
        "cpi": {"1": 1.0} if tpc == 1 else {"1": 1.0, str(tpc): 1.0 + (tpc - 1) / 3},
        "beyond_hardware": "time_slice",
        "operation_factor": {
            **med,
            "prep_s": statistics.median(v["prep_s"] for v in nets.values()),
            "call_s": statistics.median(v.get("call_s", 0.0) for v in nets.values()),
            "source": f"median over {', '.join(sorted(nets))}",
        },
        "contention": {
            "model": "c(p) = s_per_line * lines * (p - 1)",
            "s_per_line": per_line,
            "source": "median over calibrated networks of the microbenchmark's slope",
        },
        "nets": nets,
        "peak_gflops": {str(p): g for p, g in peak.items()},
        "power": POWER,
        "calibration": {
            "chaosgen": __version__,
            "seconds": time.perf_counter() - t_start,
            "load_before": load,
            "load_after": os.getloadavg()[0],
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
    }
    atomic_write(out, json.dumps(profile, indent=2) + "\n")
    return profile


# --- command line: `chaosgen predict` (which calibrates a missing network on demand) and
# `chaosgen calibrate` -----------------------------------------------------------------------
def add_parser(sub) -> None:
    """`chaosgen predict` and `chaosgen calibrate`."""
    from .check import MAX_EPOCHS

    p = sub.add_parser(
        "predict", help="predict training time and energy with the performance model"
    )
    p.add_argument("spec", help="network spec file (.net)")
    p.add_argument(
        "--threads",
        default=",".join(map(str, DEFAULT_THREADS)),
        help="comma-separated thread counts (default: the paper's, 1 to 3840)",
    )
    p.add_argument(
        "--machine",
        default="this",
        help="this (calibrated; default), knc (the paper's Xeon Phi 7120P) or a .json",
    )
    images = bounded(int, 0, MAX_IMAGES)
    p.add_argument(
        "--epochs",
        type=bounded(int, 1, MAX_EPOCHS),
        default=None,
        help="default: the spec's train epochs",
    )
    p.add_argument("--images", type=images, default=60000, help="training images per epoch")
    p.add_argument("--val-images", type=images, default=None, help="default: the training images")
    p.add_argument("--test-images", type=images, default=10000)
    p.add_argument(
        "--compare-paper",
        action="store_true",
        help="with --machine knc: the paper's published times beside the model's",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--nodes", default=None,
        help="comma-separated node counts: one rank of --threads threads per node, joined over "
        "--network every --sync-every images (chaosgen/netmodel.py)",
    )  # fmt: skip
    p.add_argument(
        "--network", default="10GbE", help="with --nodes: 10GbE (default), ib-edr, this "
        "(chaosgen calibrate-network) or a .json",
    )  # fmt: skip
    p.add_argument("--sync-every", type=bounded(int, 1, MAX_IMAGES), default=100, metavar="K",
                   help="with --nodes: images per node between two model syncs (default 100)")
    p.set_defaults(func=cmd_predict)
    n = sub.add_parser("calibrate-network",
                       help="measure MPI's allreduce over loopback TCP for --network this")
    n.add_argument("--out", default=None, help="default $CHAOSGEN_NETWORK or "
                   "~/.cache/chaosgen/network.json")  # fmt: skip
    n.add_argument(
        "--mpirun-args", default=None, metavar="ARGS",
        help="mpirun's arguments instead of loopback TCP's, e.g. '--hostfile HOSTS' to measure "
        "a real network",
    )  # fmt: skip
    n.set_defaults(func=cmd_calibrate_network)

    c = sub.add_parser("calibrate", help="measure this machine for the performance model (~15 s)")
    c.add_argument("specs", nargs="*", help="networks to calibrate (default: the shipped specs)")
    c.add_argument(
        "--out",
        default=None,
        help=f"profile file (default ${MACHINE_ENV} or ~/.cache/chaosgen/machine.json)",
    )
    c.add_argument(
        "--seconds",
        type=bounded(float, 0, MAX_SECONDS, low_open=True),
        default=2.0,
        help="measuring time per network",
    )
    c.add_argument(
        "--data", default=None, help="MNIST directory (default: synthetic images if none)"
    )
    c.add_argument(
        "--build-dir", default=None, help="build cache (default $CHAOSGEN_CACHE or ./build)"
    )
    c.set_defaults(func=cmd_calibrate)


def _machine_for(name: str, spec_path: str, net: ir.Net) -> Machine:
    """Load the profile; for `this`, first calibrate (briefly) a network that is missing or whose
    generated code changed since it was calibrated."""
    if name != "this":
        return load_machine(name)
    path = default_profile_path()
    m = load_machine(name) if path.exists() else None
    if m is None:
        why = "no profile of this machine"
    elif net.name not in m.nets:
        why = f"network {net.name} not calibrated"
    elif m.data["nets"][net.name].get("code_key") != code_key(spec_path):
        why = f"the generated code of {net.name} changed since it was calibrated"
    else:
        return m
    print(
        f"chaosgen: {why} ({path}); calibrating {spec_path} briefly (run `chaosgen calibrate` "
        "for a fuller profile)",
        file=sys.stderr,
    )
    run([spec_path], out=path, seconds=1.0, log=lambda s: print(s, file=sys.stderr))
    return load_machine(name)


def cmd_predict(args: argparse.Namespace) -> int:
    """Print the model's time (and energy) per thread count."""
    from .pipeline import front_end

    threads = parse_threads(args.threads)
    _, net = front_end(args.spec)
    if args.compare_paper and args.machine == "this":
        raise UsageError("--compare-paper compares with the paper's machine: add --machine knc")
    machine = _machine_for(args.machine, args.spec, net)
    if args.compare_paper:
        rows = compare_paper(net, machine)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print_paper_table(rows, machine)
        return 0
    epochs = args.epochs or net.training.epochs
    work = work_of(net)
    if args.nodes:
        return _predict_nodes(args, net, machine, work, threads)
    preds = [
        predict(
            work,
            machine,
            p,
            net=net.name,
            epochs=epochs,
            images=args.images,
            val_images=args.val_images,
            test_images=args.test_images,
        )
        for p in threads
    ]
    f, own = machine.factors(net.name)
    if args.json:
        print(
            json.dumps(
                {
                    "net": net.name,
                    "spec": args.spec,
                    "machine": machine.name,
                    "machine_file": machine.path,
                    "calibrated_net": own,
                    "work": asdict(work) | {"train": work.train},
                    "predictions": [
                        asdict(p)
                        | {"t_comp": p.t_comp, "total": p.total, "per_epoch": p.per_epoch}
                        for p in preds
                    ],
                },
                indent=2,
            )
        )
        return 0
    print_table(net, machine, work, preds, own)
    return 0


def _predict_nodes(args, net: ir.Net, machine: Machine, work: Work, threads: list[int]) -> int:
    """`predict --nodes`: the cluster model's table (one thread count per node)."""
    from . import netmodel

    nodes = parse_threads(args.nodes, "--nodes")
    if len(threads) != 1:
        raise UsageError("--nodes: give one --threads count (the threads of every node)")
    network = netmodel.load_network(args.network)
    kw = dict(images=args.images, val_images=args.val_images, test_images=args.test_images)
    if args.json:
        rows = [
            asdict(netmodel.predict_nodes(work, machine, threads[0], n, args.sync_every, network,
                                          net.n_params, net=net.name, **kw))
            for n in nodes
        ]  # fmt: skip
        print(json.dumps({"net": net.name, "network": asdict(network), "rows": rows}, indent=2))
        return 0
    netmodel.print_cluster(net, machine, work, threads[0], nodes, args.sync_every, network, **kw)
    return 0


def cmd_calibrate_network(args: argparse.Namespace) -> int:
    """`chaosgen calibrate-network`: alpha and beta of this machine's loopback."""
    from . import netmodel

    how = shlex.split(args.mpirun_args) if args.mpirun_args is not None else netmodel.LOOPBACK
    load = os.getloadavg()[0]
    if load > 0.5:  # busy ranks that other work deschedules wait for each other in every sync
        print(f"note: load average {load:.1f}: other work is running, so sync_s (and alpha) "
              "will be pessimistic; calibrate again when the machine is quiet")  # fmt: skip
    net = netmodel.calibrate(Path(args.out) if args.out else None, how)
    print(f"mpirun -np 2 {shlex.join(how)}: alpha {net.alpha_s * 1e6:.3g} us, beta "
          f"{net.beta_bytes_per_s / 1e9:.3g} GB/s, a sync's fixed cost {net.sync_s * 1e6:.3g} us "
          f"-> {args.out or netmodel.default_path()}")  # fmt: skip
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Measure this machine and write its profile."""
    out = Path(args.out) if args.out else default_profile_path()
    specs = args.specs or shipped_specs()
    if not specs:
        raise UsageError("no specs to calibrate: name one or more .net files")
    run(
        specs,
        out=out,
        seconds=args.seconds,
        data_dir=args.data,
        build_dir=args.build_dir,
        log=print,
    )
    print(f"profile written to {out}")
    return 0
