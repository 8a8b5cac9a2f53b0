"""What bench/speed.py and bench/schemes.py share: data, networks, timing, the JSON record."""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import chaosgen  # noqa: E402
from chaosgen.train import Config, Runtime, _profile_table  # noqa: E402

NETS = ("small", "medium", "large")  # the CHAOS paper's


def shipped_nets() -> list[str]:
    """Every specs/*.net of the checkout that takes images (bench/volume.py times the 3D ones):
    the paper's three first, then the others by name."""
    from chaosgen.pipeline import front_end

    names = sorted(p.stem for p in (ROOT / "specs").glob("*.net")
                   if not front_end(p)[1].input.volume)
    return [n for n in NETS if n in names] + [n for n in names if n not in NETS]


SCHEMES = ("chaos", "sequential", "hogwild", "delayed", "averaged")


@dataclass
class Data:
    """Training and test images (N, 29, 29) float32 in [0, 1], labels int32; their source."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str


def load_data(arg: str | None, allow_random: bool = True) -> Data:
    """MNIST from --data / $CHAOSGEN_DATA / the usual places; else (speed only) random images."""
    from chaosgen.data import find_data_dir, load_mnist
    from chaosgen.errors import ChaosgenError

    try:
        d = find_data_dir(arg)
        m = load_mnist(d)
        return Data(m.train_images, m.train_labels, m.test_images, m.test_labels, f"MNIST {d}")
    except ChaosgenError as e:
        if not allow_random:
            raise
        print(f"bench: {e}; timing on random images instead", file=sys.stderr)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (70000, 29, 29)).astype(np.float32)
    y = rng.integers(0, 10, 70000).astype(np.int32)
    return Data(x[:60000], y[:60000], x[60000:], y[60000:], "random")


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages (say them beside any number you quote)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def spec_path(net: str) -> str:
    """specs/<net>.net of the checkout (or a path as given)."""
    p = Path(net)
    return str(p) if p.suffix == ".net" else str(ROOT / "specs" / f"{net}.net")


def net_images(ir, data: Data) -> tuple:
    """Images for `ir` from `data`, with the fitting the runtime applies (None, 'pad' or 'crop'):
    MNIST for a one-map input of 10 or more classes (the paper's 29x29 cropped to LeNet's 28x28,
    as `--fit crop`; ReLU sparsity, hence speed, depends on the pixels), else random images of the
    input's shape and random labels (speed does not depend on them otherwise). Returns train x, y,
    test x, y, the fitting and where the images came from."""
    s, classes = ir.input, ir.output.out_shape.maps
    h, w = data.train_images.shape[1:]
    if s.maps == 1 and data.train_images.ndim == 3 and classes >= 10:
        fit = (
            None
            if (h, w) == (s.h, s.w)
            else "pad"
            if h <= s.h and w <= s.w
            else ("crop" if h >= s.h and w >= s.w else "neither")
        )
        if fit != "neither":
            return (
                data.train_images,
                data.train_labels,
                data.test_images,
                data.test_labels,
                fit,
                data.source + (f" (--fit {fit})" if fit else ""),
            )
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (70000, s.maps, s.h, s.w)).astype(np.float32)
    y = rng.integers(0, classes, 70000).astype(np.int32)
    return x[:60000], y[:60000], x[60000:], y[60000:], None, f"random {s.maps}x{s.h}x{s.w}"


def recipe(ir) -> dict:
    """The Config fields of the spec's update rule (momentum, Nesterov, weight decay), which
    `chaosgen train` would use: the speed of a published net is the speed of its recipe. The
    learning-rate policy stays a constant eta (a per-image scalar, not a cost)."""
    t = ir.training
    return {"momentum": t.momentum, "nesterov": t.nesterov, "weight_decay": t.weight_decay}


def compile_net(net: str, tuned: bool = True):
    """Build (cached) and load; the loaded network starts from the spec's seeded weights. With
    `tuned`, first `chaosgen tune` it here unless a tuning record exists (a user who cares about
    speed tunes once; the benchmark measures that build)."""
    from chaosgen import tune
    from chaosgen.pipeline import front_end
    from chaosgen.targets import default_compiler_for, native_target

    if tuned:
        _, ir_net = front_end(spec_path(net))
        target = native_target()
        compiler = default_compiler_for(target)
        if tune.load(ir_net, target, compiler, None) is None:
            tune.tune(ir_net, target, compiler, None, say=lambda m: print(m, file=sys.stderr))
    return chaosgen.compile(spec_path(net))


def train_flops(ir) -> float:
    """FLOPs per training image: 3 x the forward multiply-adds of the layers with weights x 2."""
    return 6.0 * sum(lay.macs for lay in ir.trainable)


def _with_share(call, threads: int):
    """call() -> PhaseStats, with cpu_share: process CPU time / (wall time x threads)."""
    c0, t0 = time.process_time(), time.perf_counter()
    st = call()
    wall = time.perf_counter() - t0
    st.cpu_share = (time.process_time() - c0) / (wall * threads) if wall > 0 else 1.0
    return st


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max (the JSON's measurement triple)."""
    return {
        "median": float(statistics.median(values)),
        "min": float(min(values)),
        "max": float(max(values)),
    }


def fmt_spread(s: dict[str, float]) -> str:
    """'12,345 [12,001-12,777]'."""
    return f"{s['median']:>9,.0f} [{s['min']:,.0f}-{s['max']:,.0f}]"


def machine() -> dict:
    """CPU model and processor count, as recorded with every result."""
    from chaosgen.targets import cpu_model
    from chaosgen.threads import usable_cpus

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cpus": usable_cpus()}


class Bench:
    """One compiled network with its data in native layout, timed through the runtime."""

    def __init__(self, net: str, data: Data):
        self.net = compile_net(net)
        self.name = self.net.ir.name
        self.rt = Runtime(self.net)
        x, y, tx, ty, fit, self.source = net_images(self.net.ir, data)
        self.x = self.rt.images(x, fit)
        self.y = np.ascontiguousarray(y, np.int32)
        self.test_x = self.rt.images(tx, fit)
        self.test_y = np.ascontiguousarray(ty, np.int32)
        self.flops = train_flops(self.net.ir)
        # the generated code's own line on its kernel choices (tuned or the cost model's)
        cpp = (self.net.library.parent / "net.cpp").read_text().splitlines()
        conv_line = (ln[3:] for ln in cpp[:8] if ln.startswith("// conv "))
        self.kernels = next(conv_line, "no conv layers")
        self.rng = np.random.default_rng(1)

    def reset(self) -> None:
        """The spec's seeded initial weights (and no momentum yet)."""
        self.net.init_weights(self.net.ir.training.seed)
        self.rt.velocity = None

    def order(self, images: int) -> np.ndarray:
        """`images` training indices: a fresh shuffle, repeated if more than the training set."""
        n = len(self.y)
        reps = -(-images // n)
        return np.concatenate([self.rng.permutation(n) for _ in range(reps)])[:images].astype(
            np.int32
        )

    def train(
        self, scheme: str, threads: int, images: int, eta: float = 0.001, profile: bool = False
    ):
        """One timed training pass with the spec's update rule (PhaseStats, .cpu_share set)."""
        cfg = Config(scheme=scheme, threads=threads, profile=profile, **recipe(self.net.ir))
        order = self.order(images)
        return _with_share(lambda: self.rt.train(self.x, self.y, order, cfg, eta), threads)

    def infer(self, threads: int, images: int):
        """One timed forward-only pass over `images` test (then training) images."""
        x, y = self.test_x, self.test_y
        if images > len(y):
            x, y = self.x, self.y
        return _with_share(lambda: self.rt.evaluate(x[:images], y[:images], threads), threads)

    def timed(self, run, threads: int, repeats: int, min_share: float, retries: int = 3):
        """`repeats` rates of run() (images/s) and the lowest CPU share among them. A run whose
        process got less than `min_share` of `threads` cores (other work on the machine) is run
        again, up to `retries` times per repeat: on 2 cores, one busy neighbour halves a thread
        and a preempted lock holder stalls the other."""
        rates, shares = [], []
        for _ in range(repeats):
            for attempt in range(retries + 1):
                st = run()
                if st.cpu_share >= min_share or attempt == retries:
                    break
                print(
                    f"  (disturbed run: {st.cpu_share:.0%} of {threads} cores; again)",
                    file=sys.stderr,
                )
            rates.append(st.images_per_s)
            shares.append(st.cpu_share)
        return rates, min(shares)

    def test_error_rate(self, threads: int) -> float:
        """Error rate on the whole test set."""
        return self.rt.evaluate(self.test_x, self.test_y, threads).error_rate

    def profile_table(self, stats) -> dict:
        """µs per image for every layer and pass (summed over threads)."""
        return _profile_table(self.net, stats.profile, stats.images)
