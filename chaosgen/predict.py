"""The CHAOS performance model: T = T_comp + T_mem, from the IR's operation counts and a machine
profile (data: `this` from `chaosgen calibrate`, `knc` from the paper's figures, or a file).

    T_comp = ep * (prep + (i * ops_train * f_train + (i + it) * ops_fwd * f_fwd) / (clock * rate))
    T_mem  = contention(p) * ep * i / p,     contention(p) = c * (p - 1)

ops_* are multiply-adds per image (forward from the IR; backward = input deltas + weight gradients
= 2x forward for conv and dense, minus the input deltas of the first layer; update = one per
parameter); f_* are operation factors (cycles per operation on one thread, which absorb
vectorization); rate(p) counts the threads' throughput in single-thread units: a core running n
hardware threads gives n / CPI(n). See docs/performance-model.md.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from . import ir
from .errors import ChaosgenError, UsageError, refuse_special_file

DEFAULT_THREADS = (1, 2, 15, 30, 60, 120, 240, 480, 960, 1920, 3840)
MACHINE_ENV = "CHAOSGEN_MACHINE"
MAX_IMAGES = 2**31 - 1  # a C int in the native runtime, as for `train`
LINE_FLOATS = 16  # 64-byte cache lines
PER_NET = ("prep_s", "contention_s", "call_s")  # a calibrated network's Factors beside its factors


# --- operation counts ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Work:
    """Operations per image, from the IR."""

    forward: int  # multiply-adds (conv, dense) and compares (pooling)
    backward: int  # input deltas + weight gradients (conv, dense), delta routing (pooling)
    update: int  # parameters written into the shared weights
    lines: int  # 64-byte lines of shared weights written per image
    blocks: tuple[int, ...]  # floats per locked block (weights + biases of one layer)
    # (forward, backward) operations per block: its layer and the pooling layers after it
    block_ops: tuple[tuple[int, int], ...] = ()

    @property
    def train(self) -> int:
        """Operations of one training image: forward, backward and update."""
        return self.forward + self.backward + self.update


def work_of(net: ir.Net) -> Work:
    """Count the operations per image of every layer and pass."""
    fwd = bwd = upd = 0
    blocks: list[int] = []
    ops: list[list[int]] = []
    for lay in net.layers:
        f, b = lay.macs, 0
        if isinstance(lay, ir.Trainable):
            # weight gradients, plus input deltas except below the first layer (nobody needs them)
            b = lay.macs * (2 if lay.index > 0 else 1)
            upd += lay.n_weights + lay.n_bias
            blocks.append(lay.b_offset + lay.n_bias - lay.w_offset)
            ops.append([0, 0])
        elif lay.index > 0:
            b = lay.in_shape.size  # pooling routes each delta back to its winner
        fwd, bwd = fwd + f, bwd + b
        if ops:  # a layer before the first trainable one has nothing to attach to
            ops[-1][0] += f
            ops[-1][1] += b
    lines = sum(math.ceil(b / LINE_FLOATS) for b in blocks)
    return Work(
        forward=fwd,
        backward=bwd,
        update=upd,
        lines=lines,
        blocks=tuple(blocks),
        block_ops=tuple((f, b) for f, b in ops),
    )


# --- machine profiles ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Factors:
    """How one network runs on one thread of a machine."""

    train: float  # cycles per training operation
    forward: float  # cycles per forward-only operation
    prep_s: float = 0.0  # sequential seconds per epoch (shuffle, thread start-up)
    contention_s: float | None = None  # c: seconds per image per extra thread (None: from lines)
    call_s: float = 0.0  # seconds a training call costs beyond its images (one per MPI chunk)
    source: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Machine:
    """A machine profile: topology, clock, CPI, operation factors, contention, power."""

    name: str
    description: str
    cores: int
    threads_per_core: int
    clock_hz: float
    cpi: dict[int, float]  # hardware threads on a core -> cycles per instruction
    beyond_hardware: str  # "time_slice" (the OS shares the cores) or "more_cores" (the paper)
    default: Factors
    nets: dict[str, Factors]
    contention_s_per_line: float  # seconds per written line per image per extra thread
    idle_w: float
    core_w: float
    power_source: str
    path: str
    data: dict

    @property
    def hw_threads(self) -> int:
        """Hardware threads of the machine."""
        return self.cores * self.threads_per_core

    def factors(self, net: str) -> tuple[Factors, bool]:
        """The network's own factors if calibrated, else the machine's default (flag False)."""
        if net in self.nets:
            return self.nets[net], True
        return self.default, False

    def cpi_of(self, n: int) -> float:
        """CPI with n hardware threads on one core (linear between the listed points)."""
        keys = sorted(self.cpi)
        if n <= keys[0]:
            return self.cpi[keys[0]]
        for lo, hi in zip(keys, keys[1:], strict=False):
            if n <= hi:
                return self.cpi[lo] + (self.cpi[hi] - self.cpi[lo]) * (n - lo) / (hi - lo)
        return self.cpi[keys[-1]]

    def rate(self, p: int) -> float:
        """Throughput of p threads in single-thread units (threads spread evenly over cores; the
        workers pick images dynamically, so the rates of the cores add up)."""
        tpc = self.threads_per_core
        if p > self.hw_threads:
            if self.beyond_hardware == "more_cores":  # a larger chip of the same cores
                return p / self.cpi_of(tpc)
            return self.rate(self.hw_threads)  # the OS time-slices: no more throughput
        per_core, extra = divmod(p, self.cores)
        rate = 0.0
        for n, count in ((per_core + 1, extra), (per_core, self.cores - extra)):
            if n and count:
                rate += count * n / self.cpi_of(n)
        return rate

    def busy_cores(self, p: int) -> int:
        """Cores of one chip with at least one thread (for the power model)."""
        return min(p, self.cores)

    def power_w(self, p: int) -> float:
        """Modelled power draw with p threads (see the profile's power source); beyond the
        hardware of a "more_cores" profile, as many chips' worth as the threads need."""
        chips = max(1.0, p / self.hw_threads) if self.beyond_hardware == "more_cores" else 1.0
        return (self.idle_w + self.core_w * min(self.busy_cores(p), self.cores)) * chips


def _factors(d: dict, source: str = "") -> Factors:
    return Factors(
        train=float(d["train"]),
        forward=float(d["forward"]),
        prep_s=float(d.get("prep_s", 0.0)),
        contention_s=None if d.get("contention_s") is None else float(d["contention_s"]),
        call_s=float(d.get("call_s", 0.0)),
        source=d.get("source", source),
    )


def machine_from_dict(d: dict, path: str = "") -> Machine:
    """Build a Machine from profile data; a missing or ill-typed key is one clear error."""
    where = path or d.get("name", "profile")
    try:
        op = d["operation_factor"]
        nets = {
            name: _factors(
                v["operation_factor"] | {k: v[k] for k in PER_NET if k in v},
                "calibrated",
            )
            for name, v in d.get("nets", {}).items()
        }
        power = d.get("power", {})
        return Machine(
            name=str(d["name"]),
            description=str(d.get("description", "")),
            cores=int(d["cores"]),
            threads_per_core=int(d.get("threads_per_core", 1)),
            clock_hz=float(d["clock_hz"]),
            cpi={int(k): float(v) for k, v in d.get("cpi", {"1": 1.0}).items()},
            beyond_hardware=d.get("beyond_hardware", "time_slice"),
            default=_factors(op, op.get("source", "")),
            nets=nets,
            contention_s_per_line=float(d["contention"]["s_per_line"]),
            idle_w=float(power.get("idle_w", 0.0)),
            core_w=float(power.get("per_core_w", 0.0)),
            power_source=str(power.get("source", "no power figure")),
            path=path,
            data=d,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ChaosgenError(
            f"{where}: not a valid machine profile ({type(e).__name__}: {e})"
        ) from None


def default_profile_path() -> Path:
    """Where `chaosgen calibrate` writes this machine's profile: $CHAOSGEN_MACHINE or the cache."""
    env = os.environ.get(MACHINE_ENV)
    try:
        return Path(env).expanduser() if env else Path.home() / ".cache/chaosgen/machine.json"
    except RuntimeError:  # no $HOME and no home in the user database
        raise ChaosgenError(
            f"no home directory for the machine profile ~/.cache/chaosgen/machine.json"
            f"{' (to expand ~ in $' + MACHINE_ENV + ')' if env else ''}; set ${MACHINE_ENV} "
            "to a file path without ~ (or give calibrate --out)"
        ) from None


def shipped_profiles() -> list[str]:
    """Names of the profiles shipped with chaosgen (chaosgen/machines/*.json)."""
    return sorted(
        p.name[:-5]
        for p in resources.files("chaosgen").joinpath("machines").iterdir()
        if p.name.endswith(".json")
    )


def read_profile(path: Path) -> Machine:
    """A profile from a JSON file."""
    refuse_special_file(path, "a machine profile")
    try:
        d = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ChaosgenError(f"{path}: no such machine profile") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ChaosgenError(f"{path}: cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise ChaosgenError(f"{path}: not JSON ({e})") from None
    if not isinstance(d, dict):
        raise ChaosgenError(f"{path}: not a machine profile (a JSON object is expected)")
    return machine_from_dict(d, str(path))


def load_machine(name: str) -> Machine:
    """'this' (calibrated profile), a shipped profile ('knc'), or a JSON file."""
    if name == "this":
        path = default_profile_path()
        if not path.exists():
            raise ChaosgenError(
                f"no profile of this machine at {path}: run `chaosgen calibrate` "
                f"(about 15 s) or pick --machine {'|'.join(shipped_profiles())}"
            )
        return read_profile(path)
    if name in shipped_profiles():
        ref = resources.files("chaosgen").joinpath("machines", f"{name}.json")
        return machine_from_dict(json.loads(ref.read_text()), f"chaosgen/machines/{name}.json")
    if Path(name).is_file() or name.endswith(".json"):
        return read_profile(Path(name))
    raise UsageError(
        f"unknown machine '{name}'; expected this, "
        f"{', '.join(shipped_profiles())} or a profile .json file"
    )


# --- the model ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Prediction:
    """Modelled time of a whole run with p threads."""

    threads: int
    epochs: int
    images: int
    val_images: int
    test_images: int
    t_prep: float  # seconds, sequential
    t_train: float  # seconds of training computation
    t_eval: float  # seconds of validation and test (forward only)
    t_mem: float  # seconds of contention for the shared weights
    rate: float  # throughput in single-thread units
    beyond_hardware: bool  # p exceeds the machine's hardware threads (extrapolated)
    energy_j: float  # modelled: power(p) x time

    @property
    def t_comp(self) -> float:
        """T_comp: sequential work plus training, validation and test computation."""
        return self.t_prep + self.t_train + self.t_eval

    @property
    def total(self) -> float:
        """T = T_comp + T_mem."""
        return self.t_comp + self.t_mem

    @property
    def per_epoch(self) -> float:
        """Seconds per epoch."""
        return self.total / self.epochs if self.epochs else 0.0


def contention_s(machine: Machine, f: Factors, work: Work, p: int) -> float:
    """MemoryContention(p): extra seconds per image (summed over threads) with p threads."""
    c = (
        f.contention_s
        if f.contention_s is not None
        else machine.contention_s_per_line * work.lines
    )
    return c * (p - 1)


def predict(
    work: Work,
    machine: Machine,
    threads: int,
    *,
    net: str = "",
    epochs: int = 1,
    images: int = 60000,
    val_images: int | None = None,
    test_images: int = 10000,
) -> Prediction:
    """T = T_comp + T_mem for `epochs` epochs of `images` training, `val_images` validation
    (default: the training images, as the paper) and `test_images` test images."""
    if threads < 1 or epochs < 0 or images < 0 or test_images < 0:
        raise UsageError("threads must be at least 1 and image and epoch counts non-negative")
    val_images = images if val_images is None else val_images
    f, _ = machine.factors(net)
    per_op = machine.cpi_of(1) / machine.clock_hz  # seconds per cycle-per-op on a lone thread
    rate = machine.rate(threads)
    t_train = epochs * images * work.train * f.train * per_op / rate
    t_eval = epochs * (val_images + test_images) * work.forward * f.forward * per_op / rate
    t_prep = epochs * f.prep_s
    t_mem = contention_s(machine, f, work, threads) * epochs * images / threads
    total = t_prep + t_train + t_eval + t_mem
    return Prediction(
        threads=threads,
        epochs=epochs,
        images=images,
        val_images=val_images,
        test_images=test_images,
        t_prep=t_prep,
        t_train=t_train,
        t_eval=t_eval,
        t_mem=t_mem,
        rate=rate,
        beyond_hardware=threads > machine.hw_threads,
        energy_j=machine.power_w(threads) * total,
    )


def train_speedup(work: Work, machine: Machine, net: str, threads: int) -> float:
    """Modelled training-only speed-up over one thread (images per second ratio; the sequential
    preparation of an epoch is left out, as a benchmark's timing leaves it out)."""

    def t(p: int) -> float:
        pr = predict(work, machine, p, net=net, images=1, val_images=0, test_images=0)
        return pr.t_train + pr.t_mem

    return t(1) / t(threads)


# --- the paper's figures (knc) ------------------------------------------------------------------
def derive_knc(large: Work, figures: dict, clock_hz: float, cpi_full: float) -> dict:
    """The two knc parameters the paper's figures fix: the operation factor (from the large net's
    one-thread time) and the contention per line (from its 244-thread time)."""
    one, full = figures["one_thread"], figures["full_chip"]
    ep, i, it = one["epochs"], one["images"], one["test_images"]
    ops = ep * (i * large.train + (i + it) * large.forward)
    factor = one["hours"] * 3600 * clock_hz / ops  # cycles per operation (CPI 1)
    p = full["threads"]
    t_comp = one["hours"] * 3600 / (p / cpi_full)  # every core full: p threads at CPI(4)
    t_mem = full["hours"] * 3600 - t_comp
    s_per_line = t_mem * p / ((p - 1) * ep * i * large.lines)
    return {"operation_factor": factor, "s_per_line": s_per_line}


def compare_paper(net: ir.Net, machine: Machine) -> list[dict]:
    """Rows: the paper's published times for this network beside the model's prediction."""
    paper = machine.data.get("paper")
    if not paper:
        raise UsageError(
            f"--compare-paper needs a profile with the paper's figures (--machine knc), "
            f"not {machine.name}"
        )
    figs = paper.get("nets", {}).get(net.name)
    if figs is None:
        raise UsageError(
            f"the paper has no figures for network '{net.name}' "
            f"(it has {', '.join(paper.get('nets', {}))})"
        )
    work, rows = work_of(net), []
    ep = figs["epochs"]
    for kind, values in (
        ("measured", figs.get("measured_h", {})),
        ("paper model", figs.get("predicted_h", {})),
    ):
        for p, hours in values.items():
            pr = predict(work, machine, int(p), net=net.name, epochs=ep)
            rows.append(
                {
                    "net": net.name,
                    "threads": int(p),
                    "epochs": ep,
                    "paper": kind,
                    "paper_h": hours,
                    "predicted_h": pr.total / 3600,
                    "t_mem_share": pr.t_mem / pr.total,
                    "deviation": pr.total / 3600 / hours - 1,
                    "fitted": f"{kind}:{p}" in figs.get("fitted", []),
                }
            )
    for p, s in figs.get("speedup", {}).items():
        t1 = predict(work, machine, 1, net=net.name, epochs=ep).total
        tp = predict(work, machine, int(p), net=net.name, epochs=ep).total
        rows.append(
            {
                "net": net.name,
                "threads": int(p),
                "epochs": ep,
                "paper": "speed-up",
                "paper_speedup": s,
                "predicted_speedup": t1 / tp,
                "deviation": t1 / tp / s - 1,
                "fitted": f"speedup:{p}" in figs.get("fitted", []),
            }
        )
    return rows


# --- command line -------------------------------------------------------------------------------
def human_time(s: float) -> str:
    """Seconds as s, min or h, three significant figures (never in exponent notation)."""
    if s < 120:
        return f"{s:.3g} s"
    if s < 7200:
        return f"{s / 60:.3g} min"
    h = s / 3600
    return f"{h:,.0f} h" if h >= 100 else f"{h:.3g} h"


def human_energy(j: float) -> str:
    """Joules as J, Wh or kWh, three significant figures."""
    if j < 360:
        return f"{j:.3g} J"
    if j < 3.6e6:
        return f"{j / 3600:.3g} Wh"
    return f"{j / 3.6e6:,.3g} kWh" if j < 3.6e9 else f"{j / 3.6e6:,.0f} kWh"


def parse_threads(text: str, flag: str = "--threads") -> list[int]:
    """'1,2,15' -> [1, 2, 15] (`flag`: --threads or --nodes, for the message)."""
    what = "thread" if flag == "--threads" else "node"
    try:
        out = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"{flag}: expected comma-separated integers, found '{text}'") from None
    if not out or min(out) < 1:
        raise UsageError(f"{flag}: every {what} count must be at least 1, found '{text}'")
    return out


def print_table(
    net: ir.Net, machine: Machine, work: Work, preds: list[Prediction], own: bool
) -> None:
    """The human-readable prediction table."""
    p0 = preds[0]
    print(
        f"{net.name} on {machine.name} ({machine.description}): {p0.epochs} epochs x "
        f"({p0.images} train + {p0.val_images} validation + {p0.test_images} test images)"
    )
    print(
        f"  per image: forward {work.forward:,} ops, training {work.train:,} ops "
        f"({work.update:,} parameter updates, {work.lines:,} cache lines)"
    )
    if not own and machine.nets:
        print(
            f"  note: {net.name} is not calibrated on this machine; using the machine's default "
            f"operation factors ({machine.default.source or 'no source'}); expect a larger error"
        )
    t1 = predict(
        work,
        machine,
        1,
        net=net.name,
        epochs=p0.epochs,
        images=p0.images,
        val_images=p0.val_images,
        test_images=p0.test_images,
    ).total
    print(
        f"  {'threads':>7} {'T_comp':>10} {'T_mem':>10} {'total':>10} {'per epoch':>10} "
        f"{'speed-up':>8} {'energy':>10}"
    )
    for p in preds:
        mark = "*" if p.beyond_hardware else " "
        print(
            f"  {p.threads:>7}{mark}{human_time(p.t_comp):>10} {human_time(p.t_mem):>10} "
            f"{human_time(p.total):>10} {human_time(p.per_epoch):>10} {t1 / p.total:>7.1f}x "
            f"{human_energy(p.energy_j):>11}"
        )
    if any(p.beyond_hardware for p in preds):
        how = (
            "as a larger chip of the same cores (the paper's assumption)"
            if machine.beyond_hardware == "more_cores"
            else "time-sliced by the OS"
        )
        print(
            f"  * beyond the machine's {machine.hw_threads} hardware threads: extrapolated, {how}"
        )
    print(f"  energy is a model: power {machine.power_source}")


def print_paper_table(rows: list[dict], machine: Machine) -> None:
    """The paper's figures beside the model's, with deviations."""
    print(
        f"the paper's figures (Viebke et al. 2017, Xeon Phi 7120P) beside the {machine.name} "
        f"profile's prediction"
    )
    print(
        f"  {'net':7} {'threads':>7} {'epochs':>6}  {'paper':12} {'paper':>9} {'model':>9} "
        f"{'deviation':>9} {'T_mem':>6}"
    )
    for r in rows:
        if "paper_h" in r:
            a, b = (
                f"{h:.4g} h" if h >= 2 else human_time(h * 3600)
                for h in (r["paper_h"], r["predicted_h"])
            )
        else:
            a, b = f"{r['paper_speedup']:.1f}x", f"{r['predicted_speedup']:.1f}x"
        fit = "  (fitted: not a check)" if r["fitted"] else ""
        share = f"{r['t_mem_share']:6.0%}" if "t_mem_share" in r else " " * 6
        print(
            f"  {r['net']:7} {r['threads']:>7} {r['epochs']:>6}  {r['paper']:12} {a:>9} "
            f"{b:>9} {r['deviation']:>+8.1%}  {share}{fit}"
        )
    print(
        "  T_mem: share of the modelled time spent in contention; the contention constant is "
        "fitted to the large net at 244 threads, so rows it dominates check little"
    )
