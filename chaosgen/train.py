"""Training and evaluation: Python drives epochs, data, schedule, metrics and files; each phase
(training, validation, test) is one call into the native CHAOS runtime with the GIL released.

The module is callable: `chaosgen.train(spec, data=..., epochs=...)` is `train()` below, the
Python API's way to run what `chaosgen train` runs."""

from __future__ import annotations

import argparse
import copy
import functools
import math
import os
import platform
import sys
import threading
import time
import types
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from . import ir, rundir, update
from .errors import ChaosgenError, TrainingError, UsageError
from .loader import Net, aligned_zeros
from .threads import allowed_threads, resolve_threads, usable_cpus

# Divergence (Trainer._check_finite). Weights past MAX_WEIGHT: float32 then drops every update
# below MAX_WEIGHT * 2**-24 (0.06) and every activation saturates or overflows; initial weights
# are below 1 and no run that learns was seen past 1e2. A mean cross-entropy per image above
# MAX_LOSS_FACTOR x ln(classes) (chance's loss) over a whole epoch means the right class got a
# probability of classes**-3 (0.001) on geometric average: confidently wrong, not learning (runs
# that learn stay below ln(classes); saturated runs sit at 9-62 per image on 10 classes).
MAX_WEIGHT = 1e6
MAX_LOSS_FACTOR = 3.0
CHANCE_MARGIN = 0.5  # "learns nothing": error rate >= 1 - (1 + CHANCE_MARGIN) / classes

SCHEMES = {"chaos": 0, "sequential": 0, "hogwild": 1, "delayed": 2, "averaged": 3}
PASSES = ("forward", "backward_data", "backward_weights", "update", "lock_wait")
# How dense layers' updates reach the shared weights (templates/owner.hpp): the runtime decides,
# the segment locks as for every layer, or their rows' owners from per-image records.
DENSE_UPDATES = {"auto": 0, "locked": 1, "owner": 2}
PROGRESS_S = 0.1  # seconds between two progress updates of a running pass
# Seconds between two polls of a running pass (Runtime.train's poll): often enough for a 0.5 MB
# allreduce to advance through its fragments during a 2 ms chunk, rarely enough to cost its core
# little (a wake-up and an MPI_Test are tens of microseconds).
POLL_S = 5e-4


@dataclass
class Config:
    """How to train: the scheme and its knobs, the schedule, and how much data per phase."""

    scheme: str = "chaos"
    threads: int = 1
    epochs: int = 1
    eta: float = 0.001
    decay: float = 0.9
    seed: int = 1
    update_every: int = 8  # delayed
    batch: int = 16  # averaged
    # the update rule and schedule (chaosgen.update): torch.optim.SGD's, Caffe's lr policies
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    lr_policy: str = "exp"  # exp: eta x decay per epoch (Python); step, inv, cosine: native
    gamma: float = 0.0
    power: float = 0.0
    step_size: int = 0
    limit: int | None = None  # training images per epoch (None: all)
    val_limit: int | None = None  # validation images (None: all training images, as the paper)
    test_limit: int | None = None
    profile: bool = False
    fit: str | None = None  # pad | center | crop (chaosgen.data.fit); None: pad if smaller
    val_split: int | None = None  # hold out the last N training images for validation


@dataclass
class PhaseStats:
    """What one native call reports."""

    loss: float
    errors: int
    images: int
    seconds: float
    profile: np.ndarray | None = field(default=None, repr=False)
    threads: int = 1  # OpenMP threads that ran
    owner_blocks: int = 0  # bit b: block b's update was owner-applied (templates/owner.hpp)

    @property
    def error_rate(self) -> float:
        """Fraction of images wrongly classified."""
        return self.errors / self.images if self.images else float("nan")

    @property
    def images_per_s(self) -> float:
        """Throughput of the phase."""
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def trace_floats(net_ir: ir.Net) -> int:
    """Values per image of Runtime.train's trace: 2 + inputs + units for each dense layer."""
    return sum(2 + lay.in_shape.size + lay.out_shape.maps
               for lay in net_ir.trainable if isinstance(lay, ir.Dense))


def to_native_images(x: np.ndarray, stride: int) -> np.ndarray:
    """Copy images (N, ...) once into 64-byte aligned rows of `stride` floats."""
    n = x.shape[0]
    flat = x.reshape(n, int(np.prod(x.shape[1:])))  # -1 is ambiguous for n == 0
    out = aligned_zeros(n * stride).reshape(n, stride)
    out[:, : flat.shape[1]] = flat
    return out


class Runtime:
    """A loaded network plus its data in native layout; runs phases through the C API."""

    def __init__(self, net: Net):
        self.net = net
        self.ffi, self.lib = net.ffi, net.lib
        self.stride = self.lib.cg_image_stride()
        self._warned = False
        self.mults = update.multipliers(net.ir)  # float32 (blocks, 4) or None
        self.velocity: np.ndarray | None = None  # momentum's, beside net.params (checkpointed)

    def threads(self, asked: int) -> int:
        """How many threads a phase asking for `asked` really runs (OMP_THREAD_LIMIT...)."""
        allowed = allowed_threads(asked)
        return self._ran(allowed, self.lib.cg_threads(allowed))

    def _ran(self, asked: int, ran: int) -> int:
        """`ran`, after saying once if it is fewer threads than were asked for."""
        if ran < asked and not self._warned:
            self._warned = True
            env = [
                f"{k}={os.environ[k]}"
                for k in ("OMP_THREAD_LIMIT", "OMP_DYNAMIC")
                if k in os.environ
            ]
            why = f" ({', '.join(env)})" if env else ""
            print(
                f"chaosgen: warning: {asked} threads asked for, OpenMP runs {ran}{why}",
                file=sys.stderr,
            )
        return ran

    def _labels(self, labels: np.ndarray) -> np.ndarray:
        """Labels as int32, checked against the output layer (Net.checked_labels)."""
        return self.net.checked_labels(labels)

    def images(self, x: np.ndarray, fit: str | None = None) -> np.ndarray:
        """Native copy of images (N, C, H, W) or (N, H, W), or volumes (N, C, D, H, W) or
        (N, D, H, W): fitted to the input layer (`fit`: chaosgen.data.fit.choose_fit) and
        normalised by the spec's mean/std/scale, in one pass."""
        from .data.fit import choose_fit, normalise, place

        s = self.net.ir.input
        x4 = x[:, None] if x.ndim == 1 + len(s.dims) else x
        if x4.ndim != 2 + len(s.dims) or x4.shape[1] != s.maps:
            raise ChaosgenError(
                f"the data's images are {'x'.join(map(str, x.shape[1:]))}, but network "
                f"{self.net.ir.name} takes {s}"
            )
        how = choose_fit(tuple(x4.shape[2:]), s.dims, fit)
        if how is None and self.net.ir.norm is None:
            return to_native_images(x, self.stride)
        out = aligned_zeros(len(x4) * self.stride).reshape(len(x4), self.stride)
        view = out[:, : s.size].reshape(len(x4), s.maps, *s.dims)
        place(x4, view, how)
        normalise(view, self.net.ir.norm)
        return out

    def train(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        order: np.ndarray,
        cfg: Config,
        eta: float,
        progress=None,
        epoch: int = 0,
        iter0: int = 0,
        max_iter: int = 0,
        poll=None,
        dense_update: str = "auto",
        trace: np.ndarray | None = None,
    ) -> PhaseStats:
        """One training pass over images[order] (native, GIL released; Ctrl-C stops it early).
        Dropout masks hash (cfg.seed, epoch, each image's index in `images`). eta: this pass's,
        or the base of a per-iteration lr_policy, whose iterations (images; averaged: steps) are
        counted from iter0; cosine ends at max_iter. poll(): called every POLL_S seconds from
        this thread while the pass runs (chaosgen.mpi: progress of a non-blocking allreduce).
        dense_update: DENSE_UPDATES (the runtime's choice, or one forced for tests and
        benchmarks). trace: float64, for each dense layer in order len(order) x (2 + inputs +
        units), receives the owner-applied layers' records (eta, image index, x, dz) in the order
        they were applied (cg_config.trace)."""
        lab = self._labels(labels)
        threads = allowed_threads(cfg.threads)
        order = np.ascontiguousarray(order, np.int32)
        if trace is not None:
            need = len(order) * trace_floats(self.net.ir)
            if trace.dtype != np.float64 or not trace.flags.c_contiguous or trace.size < need:
                raise ValueError(f"trace: a C-contiguous float64 array of {need} values")
        stop = self.ffi.new("int *", 0)
        seen = self.ffi.new("long *", 0)
        conf = self.ffi.new(
            "cg_config *",
            dict(
                threads=threads,
                scheme=SCHEMES[cfg.scheme],
                eta=eta,
                update_every=cfg.update_every,
                batch=cfg.batch,
                stop=stop,
                progress=seen,
                seed=cfg.seed,
                epoch=epoch,
                dense_update=DENSE_UPDATES[dense_update],
                trace=self.ffi.NULL if trace is None else self.ffi.cast("double *", trace.ctypes.data),
                **self._rule(cfg, iter0, max_iter),
            ),
        )
        stats = self.ffi.new("cg_stats *")
        n_prof = self.lib.cg_n_layers() * len(PASSES)
        prof = np.zeros(n_prof, np.float64) if cfg.profile else None
        prof_ptr = (
            self.ffi.cast("double *", prof.ctypes.data) if prof is not None else self.ffi.NULL
        )

        def call() -> int:
            return self.lib.cg_train(
                self.net.ptr(self.net.params),
                self.net.ptr(images),
                self.net.ptr(lab, "int *"),
                self.net.ptr(order, "int *"),
                len(order),
                conf,
                stats,
                prof_ptr,
            )

        rc, interrupted = _run_watched(call, stop, seen, len(order), progress, poll)
        out = self._stats(rc, stats, threads, prof)
        if progress is not None:
            progress(out.images)  # the images trained, not the last hint
        if interrupted:
            raise _Interrupted(out)
        return out

    def _rule(self, cfg: Config, iter0: int, max_iter: int) -> dict:
        """The cg_config fields of the update rule (none: the paper's P -= eta g)."""
        ptr, rule = self.net.ptr, {}
        if cfg.momentum > 0:
            if self.velocity is None:
                self.velocity = aligned_zeros(self.net.ir.n_params)
            rule.update(momentum=cfg.momentum, nesterov=int(cfg.nesterov),
                        velocity=ptr(self.velocity))
        if cfg.weight_decay > 0:
            rule["weight_decay"] = cfg.weight_decay
        if self.mults is not None:
            rule["mults"] = self.ffi.cast("const float *", self.mults.ctypes.data)
        if cfg.lr_policy in update.PER_ITERATION:
            if (cfg.lr_policy == "cosine" and max_iter <= 0) or (
                cfg.lr_policy == "step" and cfg.step_size < 1
            ):  # the runtime would divide by zero
                raise ValueError(f"lr_policy {cfg.lr_policy}: max_iter or step_size missing")
            rule.update(lr_policy=update.POLICY_CODES[cfg.lr_policy], gamma=cfg.gamma,
                        power=cfg.power, step_size=cfg.step_size, iter0=iter0, max_iter=max_iter)
        return rule

    def evaluate(self, images: np.ndarray, labels: np.ndarray, threads: int) -> PhaseStats:
        """Forward only over all images: summed loss and errors."""
        if len(labels) == 0:  # an .npz without a test split
            return PhaseStats(0.0, 0, 0, 0.0)
        lab = self._labels(labels)
        threads = allowed_threads(threads)
        rc, stats = self.net.native_evaluate(images, lab, threads)
        return self._stats(rc, stats, threads)

    def _stats(self, rc: int, stats, asked: int, prof: np.ndarray | None = None) -> PhaseStats:
        """A native call's cg_stats, or the error its return code means."""
        if rc != 0:
            raise ChaosgenError(
                "the native runtime could not allocate its buffers (out of memory)"
            )
        ran = self._ran(asked, stats.threads)
        return PhaseStats(stats.loss, stats.errors, stats.images, stats.seconds, prof, ran,
                          getattr(stats, "owner_blocks", 0))


def _stat(st: PhaseStats | None, name: str) -> float | int | None:
    """A figure of a phase, None if the phase did not run (Ctrl-C during evaluation) or had no
    images (an .npz without a test split)."""
    ran = st is not None and (st.images or name in ("images", "seconds"))
    return getattr(st, name) if ran else None


class _Interrupted(Exception):
    def __init__(self, stats: PhaseStats):
        self.stats = stats


def _run_watched(call, stop, seen, total: int, progress, poll=None) -> tuple[int, bool]:
    """Run `call` in a thread; update `progress(n)` meanwhile (and call `poll()` every POLL_S
    seconds); on Ctrl-C ask the workers to stop picking images and wait until the call has
    returned. Returns its result and whether it was interrupted.

    The wait is on an event the thread sets after the call, not on Thread.join: a join that a
    KeyboardInterrupt breaks marks a still running thread as finished (Python 3.11), and the
    caller would then read the stats and copy the weights while native workers still write them.
    """
    done = threading.Event()
    result: list = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as e:  # handed to the caller's thread
            result.append(e)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    interrupted, shown = False, time.perf_counter()
    while not done.is_set():
        try:
            if done.wait(POLL_S if poll is not None else PROGRESS_S):
                break
            if poll is not None:
                poll()
            if progress is not None and time.perf_counter() - shown >= PROGRESS_S:
                progress(min(int(seen[0]), total))
                shown = time.perf_counter()
        except KeyboardInterrupt:  # stop picking images; keep waiting for the call to return
            stop[0] = 1
            interrupted = True
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0], interrupted


def machine() -> dict:
    """The machine, as logged with every run."""
    from .targets import cpu_model

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "hostname": platform.node(),
        "python": platform.python_version(),
    }


def _bar(desc: str, total: int, quiet: bool):
    from tqdm import tqdm

    # disable=None: tqdm stays quiet when stderr is not a terminal (logs, CI).
    return tqdm(
        total=total,
        desc=desc,
        unit="img",
        leave=False,
        dynamic_ncols=True,
        disable=True if quiet else None,
    )


def _profile_table(net: Net, prof: np.ndarray, images: int) -> dict[str, dict[str, float]]:
    """Microseconds per image for every layer and pass (summed over threads)."""
    per = prof.reshape(-1, len(PASSES)) / max(images, 1) * 1e6
    return {
        lay.name: {p: round(float(per[i, j]), 3) for j, p in enumerate(PASSES)}
        for i, lay in enumerate(net.ir.layers)
    }


def print_profile(table: dict[str, dict[str, float]], out=print) -> None:
    """The paper's Table 5: time per layer and pass."""
    total = sum(sum(v.values()) for v in table.values()) or 1.0
    out(f"  {'layer':8} " + " ".join(f"{p:>17}" for p in PASSES) + f" {'share':>7}")
    for name, v in table.items():
        share = sum(v.values()) / total
        out(f"  {name:8} " + " ".join(f"{v[p]:14.2f} us" for p in PASSES) + f" {share:7.1%}")


@dataclass
class Trainer:
    """Epoch loop: shuffle, train, validate, test, log, checkpoint."""

    runtime: Runtime
    data: object  # chaosgen.data.sets.Dataset (or the older chaosgen.data.Mnist)
    cfg: Config
    log_path: Path | None = None
    checkpoint_dir: Path | None = None
    quiet: bool = False
    meta: dict = field(default_factory=dict)
    on_epoch: Callable[[dict], object] | None = None  # given a copy of each epoch's record
    cluster: object | None = None  # chaosgen.mpi.Cluster: one rank of an MPI job

    def __post_init__(self):
        if self.cluster is not None and not self.cluster.root:  # rank 0 alone writes and says
            self.log_path = self.checkpoint_dir = None
            self.quiet = True
        d, rt = self.data, self.runtime
        n_tr = (
            len(d.train_labels)
            if self.cfg.limit is None
            else min(self.cfg.limit, len(d.train_labels))
        )
        x = rt.images(d.train_images, self.cfg.fit)
        y = np.ascontiguousarray(d.train_labels, np.int32)
        held = self.cfg.val_split or 0  # the last `held` images validate, as Keras' split
        if held >= len(y):
            raise ChaosgenError(
                f"--val-split {held}: the data has {len(y)} training images; hold out fewer"
            )
        self.train_x, self.train_y = x[: len(y) - held], y[: len(y) - held]
        self.n_train = n_tr = min(n_tr, len(self.train_y))
        vx, vy = (x[len(y) - held :], y[len(y) - held :]) if held else (x, y)
        nv = len(vy) if self.cfg.val_limit is None else min(self.cfg.val_limit, len(vy))
        self.val_x, self.val_y = vx[:nv], vy[:nv]
        nt = (
            len(d.test_labels)
            if self.cfg.test_limit is None
            else min(self.cfg.test_limit, len(d.test_labels))
        )
        self.test_x = rt.images(d.test_images[:nt], self.cfg.fit)
        self.test_y = np.ascontiguousarray(d.test_labels[:nt], np.int32)
        self.rng = np.random.default_rng(self.cfg.seed)
        self.start_epoch = 0
        self.eta = self.cfg.eta
        self.history: list[dict] | None = []  # every completed epoch's record (checkpointed)
        self.changed: dict = {}  # settings a --resume changed: noted in the next record
        self.saved_epoch: int | None = None  # the epochs of the last whole checkpoint of this run

    @property
    def last_checkpoint(self) -> Path | None:
        """Where the newest checkpoint is written."""
        return self.checkpoint_dir / "last.npz" if self.checkpoint_dir else None

    def resume(
        self, ck: ckpt.Checkpoint, eta: float | None = None, changed: dict | None = None
    ) -> None:
        """Continue from a loaded checkpoint: `eta` (a --eta given again) replaces its eta from
        the next epoch on; `changed` settings are noted in the next record. The log is brought
        into agreement with the checkpoint first."""
        self.runtime.net.params[:] = ck.params
        if ck.velocity is not None:  # momentum continues where it stood
            self.runtime.velocity = aligned_zeros(ck.params.size)
            self.runtime.velocity[:] = ck.velocity
        self.start_epoch, self.eta = ck.epoch, ck.eta if eta is None else eta
        self.saved_epoch = ck.epoch
        self.history = None if ck.records is None else list(ck.records)  # None: an old file
        self.changed = dict(changed or {})
        if ck.rng is not None:
            self.rng.bit_generator.state = ck.rng
        else:  # weights of the native program (import-weights): replay its shuffles, as it does
            for _ in range(ck.epoch):
                self.rng.permutation(len(self.train_y))
        if self.log_path is not None and ck.records is not None:
            fixed = rundir.sync_log(self.log_path, ck.records, self.last_checkpoint)
            if fixed:
                self.say(f"log {self.log_path} repaired: {fixed}")
        self.say(
            f"resuming from {self.last_checkpoint}: {ck.epoch} epochs done, eta {self.eta:g}"
            + (" (interrupted mid-epoch)" if ck.partial else "")
        )
        if self.changed:
            self.say(
                "settings changed from the checkpoint's (noted in the next record): "
                + ", ".join(
                    f"{k} {a:g} -> {b:g}" if isinstance(a, float) else f"{k} {a} -> {b}"
                    for k, (a, b) in self.changed.items()
                )
            )

    def say(self, text: str) -> None:
        """A line on stdout unless --quiet."""
        if not self.quiet:
            print(text, flush=True)

    def save(
        self, epoch_done: int, eta_next: float, rng_state: dict, partial: bool = False
    ) -> None:
        """Write the checkpoint (weights, schedule, every epoch record) atomically."""
        if self.last_checkpoint is None:
            return
        net = self.runtime.net
        try:
            ckpt.save(
                self.last_checkpoint,
                ckpt.Checkpoint(
                    params=net.params.copy(),
                    epoch=epoch_done,
                    eta=eta_next,
                    ir_hash=net.ir.digest(),
                    net=net.ir.name,
                    rng=rng_state,
                    partial=partial,
                    records=self.history,
                    config=asdict(self.cfg),
                    velocity=self.runtime.velocity,
                ),
            )
            if not partial:
                self.saved_epoch = epoch_done
        except OSError as e:
            raise ChaosgenError(
                f"{self.last_checkpoint}: cannot write the checkpoint: {e.strerror or e}; the "
                "previous checkpoint is kept"
            ) from None

    def _commit(self, rec: dict, eta_next: float) -> None:
        """Checkpoint first (it holds the record), log second: a kill between the two leaves a
        log that --resume completes from the checkpoint."""
        if self.changed:
            rec["changed"], self.changed = self.changed, {}
        if self.history is not None:
            self.history.append(rec)
        self.save(rec["epoch"], eta_next, self.rng.bit_generator.state)
        if self.log_path is not None:
            rundir.append_record(self.log_path, rec, self.last_checkpoint)

    def run(self) -> list[dict]:
        """Train the configured epochs; returns the per-epoch records (also logged)."""
        cfg, rt, records = self.cfg, self.runtime, []
        for epoch in range(self.start_epoch, cfg.epochs):
            rng_before = self.rng.bit_generator.state
            order = self.rng.permutation(len(self.train_y))[: self.n_train].astype(np.int32)
            eta = self.eta
            # a rank of an MPI job counts its own iterations (Caffe's multi-GPU convention)
            shard = len(order) if self.cluster is None else self.cluster.longest(len(order))
            per_epoch = update.iterations(shard, cfg.scheme, cfg.batch)
            at = (epoch * per_epoch, cfg.epochs * per_epoch)  # iter0, max_iter (lr policies)
            t0 = time.perf_counter()
            bar = _bar(f"epoch {epoch + 1} train", len(order), self.quiet)
            train = rt.train if self.cluster is None else functools.partial(self.cluster.train, rt)
            try:
                tr = train(
                    self.train_x,
                    self.train_y,
                    order,
                    cfg,
                    eta,
                    progress=lambda k, bar=bar: bar.update(k - bar.n),
                    epoch=epoch,
                    iter0=at[0],
                    max_iter=at[1],
                )
            except _Interrupted as stop:
                bar.close()
                self._check_finite(epoch, stop.stats, whole=False)
                self.save(epoch, eta, rng_before, partial=True)
                where = f"; checkpoint {self.last_checkpoint}" if self.last_checkpoint else ""
                raise ChaosgenError(
                    f"interrupted in epoch {epoch + 1} after {stop.stats.images} images{where}"
                ) from None
            bar.close()
            self._check_finite(epoch, tr)
            per_iter = cfg.lr_policy in update.PER_ITERATION  # else fixed, or exp
            self.eta = eta * cfg.decay if cfg.lr_policy == "exp" else eta
            va, te = self._evaluate()
            f = _stat
            rec = {  # the order of the native program's log (chaosgen.native), key for key
                "epoch": epoch + 1,
                "eta": eta,
                "train_loss": tr.loss / max(tr.images, 1),
                "train_error_rate": tr.error_rate,
                "val_error": f(va, "loss"),
                "val_errors": f(va, "errors"),
                "val_error_rate": f(va, "error_rate"),
                "test_error": f(te, "loss"),
                "test_errors": f(te, "errors"),
                "test_error_rate": f(te, "error_rate"),
                "train_images": tr.images,
                "val_images": f(va, "images"),
                "test_images": f(te, "images"),
                "train_images_per_s": tr.images_per_s,
                "val_images_per_s": f(va, "images_per_s"),
                "test_images_per_s": f(te, "images_per_s"),
                "seconds_train": tr.seconds,
                "seconds_val": f(va, "seconds"),
                "seconds_test": f(te, "seconds"),
            }
            if per_iter:  # the effective eta at the epoch's first and last iteration
                sched = (cfg.lr_policy, eta, cfg.gamma, cfg.power, cfg.step_size, at[1])
                rec["eta"] = update.eta_at(sched[0], eta, at[0], *sched[2:])
                rec["eta_end"] = update.eta_at(sched[0], eta, at[0] + per_epoch - 1, *sched[2:])
            done = te is not None
            rec["seconds"] = time.perf_counter() - t0
            if tr.profile is not None:
                rec["profile_us_per_image"] = _profile_table(rt.net, tr.profile, tr.images)
            rec.update(config={**asdict(cfg), **self.meta}, machine=machine())
            if self.cluster is not None:
                rec["mpi"] = self.cluster.record(rt.net.ir.n_params, tr.images)
            if not done:
                rec["evaluation"] = "interrupted"
            self._commit(rec, self.eta)
            if not done:  # Ctrl-C while evaluating: the epoch is trained, kept and logged
                where = f"; checkpoint {self.last_checkpoint}" if self.last_checkpoint else ""
                raise ChaosgenError(
                    f"interrupted while evaluating epoch {epoch + 1} (logged with its "
                    f"evaluation marked interrupted){where}"
                )
            self.say(
                f"epoch {epoch + 1:3d}  eta {rec['eta']:.3g}  "
                f"train loss {rec['train_loss']:.4f}/img  "
                f"{'held-out ' * bool(cfg.val_split)}val {rec['val_error_rate']:.2%} wrong "
                f"(loss sum {rec['val_error']:.1f})  test "
                + (
                    f"{rec['test_error_rate']:.2%} wrong (loss sum {rec['test_error']:.1f})  "
                    if rec["test_images"]
                    else "none  "
                )
                + f"s {tr.seconds:.1f}/{rec['seconds_val']:.1f}/{rec['seconds_test']:.1f}  "
                f"train {tr.images_per_s:,.0f} img/s"
            )
            self._warn_if_chance(rec)
            if tr.profile is not None:
                print_profile(rec["profile_us_per_image"], self.say)
            records.append(rec)
            if self.on_epoch is not None:  # after the checkpoint and the log hold the epoch
                self.on_epoch(copy.deepcopy(rec))
        return records

    def _evaluate(self) -> tuple[PhaseStats | None, PhaseStats | None]:
        """Validation and test; None for what Ctrl-C stopped or kept from running."""
        rt = self.runtime
        run = rt.evaluate if self.cluster is None else functools.partial(self.cluster.evaluate, rt)
        try:
            va = run(self.val_x, self.val_y, self.cfg.threads)
        except KeyboardInterrupt:
            return None, None
        try:
            return va, run(self.test_x, self.test_y, self.cfg.threads)
        except KeyboardInterrupt:
            return va, None

    def _warn_if_chance(self, rec: dict) -> None:
        """A run that learns nothing: the error rate at chance level after an epoch."""
        out = self.runtime.net.ir.output
        classes = out.out_shape.size
        chance = 1 - 1 / classes
        rate = rec["val_error_rate"]
        if self.cluster is not None and not self.cluster.root:
            return
        if rate < chance - CHANCE_MARGIN / classes:
            return
        # Clearly above chance's loss (that of an untrained net) the weights run away; near it
        # they barely move.
        big = out.loss == "cross_entropy" and rec["train_loss"] > 1.1 * math.log(classes)
        why = (
            f"eta {rec['eta']:g} may be too large (the loss {rec['train_loss']:.2f}/img is "
            f"above chance's {math.log(classes):.2f})"
            if big
            else f"eta {rec['eta']:g} may be too small"
        )
        print(
            f"chaosgen: warning: epoch {rec['epoch']}: {rate:.1%} of the validation images "
            f"wrong, chance level for {classes} classes ({chance:.1%}): the net learns nothing; "
            + why,
            file=sys.stderr,
            flush=True,
        )

    def _check_finite(self, epoch: int, tr: PhaseStats, whole: bool = True) -> None:
        """Stop before a diverged state is saved: NaN/inf, runaway weights, or over a `whole`
        epoch a loss far above chance's (a divergence that saturates: the loss clamped, the
        weights growing to 1e29)."""
        params = self.runtime.net.params
        out = self.runtime.net.ir.output
        if not (np.isfinite(tr.loss) and np.isfinite(params).all()):
            what = "the loss or the weights became NaN/inf"
        elif (big := float(np.abs(params).max(initial=0.0))) > MAX_WEIGHT:
            what = f"a weight reached {big:.3g} (the bound is {MAX_WEIGHT:g})"
        elif (
            whole
            and out.loss == "cross_entropy"
            and tr.images
            and (mean := tr.loss / tr.images) > MAX_LOSS_FACTOR * math.log(out.out_shape.size)
        ):
            limit = MAX_LOSS_FACTOR * math.log(out.out_shape.size)
            what = (
                f"the mean loss per image was {mean:.1f}, above {limit:.1f} "
                f"({MAX_LOSS_FACTOR:g} x ln {out.out_shape.size}, the loss of chance)"
            )
        else:
            return
        where = (
            f"the last good checkpoint {self.last_checkpoint} (epoch {epoch}) is kept; try a "
            "smaller eta (--resume --eta ETA continues from it)"
            if self.last_checkpoint and epoch > 0 and epoch == self.saved_epoch
            else "this run wrote no checkpoint; try a smaller eta"
        )
        raise TrainingError(
            f"training diverged in epoch {epoch + 1}: {what} (eta {self.eta:g}); {where}"
        )


# --- command line -------------------------------------------------------------------------------
def add_parser(sub) -> None:
    """`chaosgen train` and `chaosgen eval`."""
    from .mpi import DEFAULT_SYNC_EVERY, SYNC_RULES
    from .options import add_compile_options

    p = sub.add_parser("train", help="train a network on MNIST with CHAOS (or another scheme)")
    add_compile_options(p)
    p.add_argument(
        "--scheme",
        choices=tuple(SCHEMES),
        default=None,
        help="default: chaos; a --resume continues with the run's own",
    )
    p.add_argument("--threads", type=int, default=None, help="worker threads (default: all cores)")
    p.add_argument("--epochs", type=int, default=None, help="default: the spec's train epochs")
    p.add_argument("--eta", type=float, default=None, help="initial learning rate (default: spec)")
    p.add_argument(
        "--decay", type=float, default=None, help="eta factor per epoch (default: spec)"
    )
    p.add_argument("--seed", type=int, default=None, help="shuffle and init seed (default: spec)")
    p.add_argument(
        "--update-every", type=int, default=None, help="delayed: images between updates (8)"
    )
    p.add_argument(
        "--batch", type=int, default=None, help="averaged: images per synchronous step (16)"
    )
    p.add_argument(
        "--limit", type=int, default=None, help="training images per epoch (default all)"
    )
    p.add_argument("--val-limit", type=int, default=None, help="validation images (default all)")
    p.add_argument("--test-limit", type=int, default=None, help="test images (default all)")
    add_data_options(p)
    p.add_argument(
        "--val-split", type=int, default=None, metavar="N",
        help="validate on the last N training images, held out of training (default: validate "
        "on the training images, as the CHAOS paper)",
    )  # fmt: skip
    p.add_argument(
        "--log", default=None, help="one JSON object per epoch (a new file, or --resume's)"
    )
    p.add_argument("--checkpoint-dir", default=None, help="default runs/<network>")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--profile", action="store_true", help="time every layer and pass")
    p.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    p.add_argument(
        "--sync-every", type=int, default=None, metavar="K",
        help="under mpirun: join the ranks' models every K images per rank (default "
        f"{DEFAULT_SYNC_EVERY})",
    )  # fmt: skip
    p.add_argument(
        "--sync-rule", choices=SYNC_RULES, default=None,
        help="under mpirun: add the ranks' changes since the last sync (sum, default) or average "
        "their models (average)",
    )  # fmt: skip
    p.add_argument(
        "--sync-overlap", action="store_true",
        help="under mpirun: join the models by a non-blocking allreduce while the next chunk "
        "trains (the other ranks' changes arrive one chunk late; see chaosgen.mpi)",
    )  # fmt: skip
    p.add_argument(
        "--mpi", action="store_true",
        help="run as an MPI rank (implied under mpirun; needs mpi4py: pip install '.[mpi]')",
    )  # fmt: skip
    p.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate saved weights on the MNIST test set")
    add_compile_options(e)
    e.add_argument("--weights", required=True, help="checkpoint .npz")
    add_data_options(e)
    e.add_argument("--threads", type=int, default=None)
    e.add_argument(
        "--train-set", action="store_true", help="also evaluate on the 60,000 training images"
    )
    e.set_defaults(func=cmd_eval)


def add_data_options(p: argparse.ArgumentParser) -> None:
    """--data, --dataset and --fit (docs/data.md)."""
    from .data.fit import FITS
    from .data.sets import DATASETS

    p.add_argument(
        "--data", default=None, metavar="DIR|FILE",
        help="data set directory or .npz file (default $CHAOSGEN_DATA, else the MNIST cache)",
    )  # fmt: skip
    p.add_argument(
        "--dataset", choices=DATASETS, default=None, help="its format (default: recognised)"
    )
    p.add_argument(
        "--fit", choices=FITS, default=None,
        help="images of another size than the input: pad bottom/right (default for smaller "
        "ones), center (centre-pad) or crop (centre-crop)",
    )  # fmt: skip


def checked_data(args: argparse.Namespace, net: ir.Net):
    """The data set's header, checked against `net` (channels, classes, fitting) before any
    compiling or reading; returns it and the fitting to use."""
    from .data.fit import check_fit
    from .data.sets import open_data

    h = open_data(args.data, args.dataset)
    held = getattr(args, "val_split", None)
    if held and h.train is not None and held >= h.train:
        raise UsageError(f"--val-split {held}: the data has {h.train} training images")
    exact = h.format != "npz"
    return h, check_fit(h.shape, len(h.classes), exact, net, args.fit)


def _positive(name: str, v: int | None) -> None:
    if v is not None and v < 1:
        raise UsageError(f"{name} must be at least 1, found {v}")


MAX_COUNT = 2**31 - 1  # images and steps are C ints in the native runtime
# Settings a --resume may give without it counting as a change of the run: eta is compared with
# the checkpoint's next eta instead; epochs is where to stop; threads and profile change no number.
NOT_CHANGES = ("eta", "epochs", "threads", "profile")


def check_train_flags(args: argparse.Namespace) -> None:
    """The numeric flags of `train` in the ranges of the spec's `train` statement (usage error)."""
    from .check import MAX_DECAY, MAX_EPOCHS, MAX_ETA, MAX_SEED

    _positive("--threads", args.threads)
    ranges = {
        "eta": (0.0, MAX_ETA, f"a number in (0, {MAX_ETA:g}]"),
        "decay": (0.0, MAX_DECAY, f"a number in (0, {MAX_DECAY:g}]"),
        "seed": (-1, MAX_SEED, f"an integer in [0, {MAX_SEED}]"),
        "epochs": (0, MAX_EPOCHS, f"an integer in [1, {MAX_EPOCHS}]"),
        **{
            k: (0, MAX_COUNT, f"an integer in [1, {MAX_COUNT}]")
            for k in ("update_every", "batch", "limit", "val_limit", "test_limit", "val_split")
        },
    }
    for name, (low, high, what) in ranges.items():
        v = getattr(args, name)
        if v is not None and not (math.isfinite(v) and low < v <= high):
            raise UsageError(f"--{name.replace('_', '-')} must be {what}, found {v}")
    if getattr(args, "scheme", None) or not getattr(args, "resume", False):
        check_scheme_flags(args, getattr(args, "scheme", None) or "chaos")
    # else a --resume's scheme is the checkpoint's: train_config checks it once that is read


def check_scheme_flags(args: argparse.Namespace, scheme: str) -> None:
    """--update-every and --batch belong to the delayed and averaged schemes (usage error)."""
    for flag, owner, what in (
        ("update_every", "delayed", "images between updates"),
        ("batch", "averaged", "images per synchronous step"),
    ):
        if getattr(args, flag, None) is not None and scheme != owner:
            raise UsageError(
                f"--{flag.replace('_', '-')} is the {owner} scheme's ({what}); this run's scheme "
                f"is {scheme}: add --scheme {owner}, or drop --{flag.replace('_', '-')}"
            )


def open_run(
    args: argparse.Namespace, net: ir.Net
) -> tuple[rundir.RunDir, ckpt.Checkpoint | None]:
    """Before any work: the checkpoint directory created and locked, the log writable, and with
    --resume the checkpoint loaded and validated (a fresh run refuses a used log)."""
    ck_dir = Path(args.checkpoint_dir or Path("runs") / net.name)
    log = Path(args.log) if args.log else None
    run = rundir.RunDir(ck_dir, log).open()
    try:
        if not args.resume:
            if log is not None:
                rundir.refuse_used_log(log)
            return run, None
        path = ck_dir / "last.npz"
        if not path.exists():
            raise ChaosgenError(f"--resume: no checkpoint at {path}; train without --resume first")
        return run, ckpt.load(path, net)
    except BaseException:
        run.close()
        raise


# the update rule's settings: the spec's (no flags; a checkpoint's config keeps a run's own)
UPDATE_KEYS = ("momentum", "nesterov", "weight_decay", "lr_policy", "gamma", "power", "step_size")


def train_config(
    args: argparse.Namespace, threads: int, t: ir.Training, ck: ckpt.Checkpoint | None
) -> tuple[Config, dict]:
    """The run's settings: a flag given wins, else (on --resume) the run's own value, else the
    spec's. Returns them and what a --resume changes ({name: [old, new]})."""
    old = (ck.config or {}) if ck is not None else {}
    spec = {
        "epochs": t.epochs,
        "eta": t.eta,
        "decay": t.decay,
        "seed": t.seed,
        "update_every": 8,
        "batch": t.batch or 16,
        **{k: getattr(t, k) for k in UPDATE_KEYS},
    }
    keys = (
        "epochs",
        "eta",
        "decay",
        "seed",
        "update_every",
        "batch",
        "limit",
        "val_limit",
        "test_limit",
        "fit",
        "val_split",
        *UPDATE_KEYS,
    )
    given = {k: getattr(args, k, None) for k in keys if getattr(args, k, None) is not None}
    if "decay" in given and spec["lr_policy"] != "exp":
        raise UsageError(
            f"--decay is lr_policy exp's factor per epoch; the spec's lr_policy is "
            f"{spec['lr_policy']}"
        )
    if "seed" in given and "seed" in old and given["seed"] != old["seed"]:
        raise UsageError(
            f"--seed {given['seed']}: this run started with seed {old['seed']} and its shuffle "
            "continues from the checkpoint; drop --seed, or start a new run"
        )
    values = {k: given.get(k, old.get(k, spec.get(k))) for k in keys}
    scheme = getattr(args, "scheme", None) or old.get("scheme") or "chaos"  # a run keeps its own
    check_scheme_flags(args, scheme)
    cfg = Config(scheme=scheme, threads=threads, profile=args.profile, **values)
    changed = {}
    if ck is not None:
        now = asdict(cfg)
        changed = {
            k: [old[k], now[k]]
            for k in old
            if k not in NOT_CHANGES and k in now and old[k] != now[k]
        }
        if args.eta is not None and args.eta != ck.eta:  # the eta of the next epoch
            changed["eta"] = [ck.eta, args.eta]
    return cfg, changed


def cmd_train(args: argparse.Namespace) -> int:
    """`chaosgen train`: run_train."""
    run_train(args)
    return 0


def run_train(
    args: argparse.Namespace, on_epoch: Callable[[dict], object] | None = None
) -> list[dict]:
    """Check the flags and the run directory before any work, then train (directory locked);
    returns the records of the epochs trained (`train`, the Python API, and the CLI's). Under
    an MPI launcher (or with --mpi) as one rank of the job (chaosgen.mpi)."""
    from . import mpi
    from .pipeline import front_end

    check_train_flags(args)
    mpi.check_flags(args)
    resolve_threads(args.threads)  # an absurd --threads is a usage error before any work
    _, spec_net = front_end(args.spec)  # its name is the default checkpoint directory's
    if mpi.wanted(args):
        return mpi.run_train(args, spec_net, on_epoch)
    run, ck = open_run(args, spec_net)
    try:
        return _train(args, spec_net, ck, on_epoch)
    finally:
        run.close()


def _train(
    args: argparse.Namespace,
    spec_net: ir.Net,
    ck: ckpt.Checkpoint | None,
    on_epoch: Callable[[dict], object] | None = None,
    cluster=None,
) -> list[dict]:
    """Compile the spec, load MNIST, train, log and checkpoint (as one rank of `cluster`, a
    chaosgen.mpi.Cluster: each step checked on every rank)."""
    from . import compile as compile_net
    from .codegen import summary_rows
    from .data.sets import load

    asked = resolve_threads(args.threads)
    cfg, changed = train_config(args, asked, spec_net.training, ck)
    if cfg.scheme == "sequential":
        if args.threads not in (None, 1):
            raise UsageError("--scheme sequential runs on one thread; drop --threads")
        asked = cfg.threads = 1
    if ck is not None and ck.epoch >= cfg.epochs:
        if cluster is None or cluster.root:
            print(f"nothing to do: {ck.epoch} epochs done, --epochs {cfg.epochs}; raise --epochs")
        return []
    each = cluster.agree if cluster is not None else lambda _what, fn, *a: fn(*a)
    if cluster is not None:
        cluster.check_same_code(spec_net, args)
    # what runs: pad when smaller, if not given
    header, cfg.fit = each("reading the data's header", checked_data, args, spec_net)
    net = each("compiling", compile_net, args.spec, args.target, args.cc, args.build_dir)
    rt = Runtime(net)
    cfg.threads = rt.threads(asked)  # what runs: the banner and the log say so
    if args.seed is not None and ck is None:
        net.init_weights(cfg.seed)
    data = each("loading the data", load, header)
    if cluster is not None:
        cluster.check_same_data(data)
        cluster.broadcast_params(net)
    if not args.quiet:
        print(
            f"{net.ir.name} ({args.spec}): {cfg.scheme}, "
            f"{cfg.threads} thread{'s' * (cfg.threads != 1)}, "
            f"{cfg.epochs} epochs, "
            + (f"eta {cfg.eta:g} x{cfg.decay:g}/epoch" if cfg.lr_policy not in
               update.PER_ITERATION else f"eta {cfg.eta:g} lr_policy {cfg.lr_policy}")
            + (f", momentum {cfg.momentum:g}" if cfg.momentum else "")
            + (f", weight_decay {cfg.weight_decay:g}" if cfg.weight_decay else "")
            + f", library {net.library}"
        )
        if cluster is not None:
            print(f"  mpi: {cluster.size} rank{'s' * (cluster.size != 1)} x {cfg.threads} "
                  f"thread{'s' * (cfg.threads != 1)}, models joined ({cluster.rule}"
                  f"{', overlapped' * cluster.overlap}) every {cluster.sync_every} images per "
                  "rank")
        print(f"  data: {header.name} ({header.format}) from {header.source}")
        for row in summary_rows(net.ir):
            print("  " + row)
    ck_dir = Path(args.checkpoint_dir or Path("runs") / net.ir.name)
    trainer = Trainer(
        rt,
        data,
        cfg,
        Path(args.log) if args.log else None,
        ck_dir,
        quiet=args.quiet,
        meta={
            "spec": args.spec,
            "network": net.ir.name,
            "ir_hash": net.ir.digest(),
            "target": args.target,
            "library": str(net.library),
            "threads_asked": asked,
        },
        on_epoch=on_epoch,
        cluster=cluster,
    )
    if ck is not None:
        trainer.resume(ck, args.eta, changed)
    return trainer.run()


def cmd_eval(args: argparse.Namespace) -> int:
    """Load a checkpoint into the compiled network and report test (and train) error."""
    from . import compile as compile_net
    from .data.sets import load
    from .pipeline import front_end

    _positive("--threads", args.threads)
    asked = resolve_threads(args.threads)
    header, fit = checked_data(args, front_end(args.spec)[1])
    net = compile_net(args.spec, target=args.target, cc=args.cc, build_dir=args.build_dir)
    ck = ckpt.load(args.weights, net.ir)
    net.params[:] = ck.params
    data = load(header)
    rt = Runtime(net)
    threads = rt.threads(asked)
    sets = [("test", data.test_images, data.test_labels)]
    if args.train_set:
        sets.append(("train", data.train_images, data.train_labels))
    for name, x, y in sets:
        if len(y) == 0:
            print(f"{name}: no images")
            continue
        st = rt.evaluate(rt.images(x, fit), y, threads)
        print(
            f"{name}: error {st.loss:.2f} (mean loss {st.loss / st.images:.4f}), "
            f"{st.errors} wrong of {st.images} ({st.error_rate:.2%}), "
            f"{st.images_per_s:,.0f} img/s on {st.threads} thread{'s' * (st.threads > 1)}"
        )
    return 0


# --- the Python API -----------------------------------------------------------------------------
class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str):  # a bad option of train(): an exception, not an exit
        raise UsageError(f"train(): {message}")


def train(
    spec: str | os.PathLike[str],
    *,
    data: str | os.PathLike[str] | None = None,
    epochs: int | None = None,
    threads: int | None = None,
    scheme: str | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    on_epoch: Callable[[dict], object] | None = None,
    quiet: bool = True,
    **options: object,
) -> list[dict]:
    """Train `spec` as `chaosgen train` does (the same checks, Trainer, checkpoints and log) and
    return the records of the epochs trained: one dict per epoch, the lines `--log` writes
    (epoch, eta, train_loss, val_/test_error_rate, images per second, config, machine...).

    data: a data set directory or .npz (default $CHAOSGEN_DATA, else the MNIST cache); epochs,
    scheme (chaos, sequential, hogwild, delayed, averaged; default chaos, or a resumed run's
    own), threads (default: the usable CPUs): as the CLI's flags; checkpoint_dir: default runs/<network>, as the CLI (last.npz, written
    after every epoch); on_epoch(record): called after each epoch is checkpointed and logged;
    quiet: no banner, progress bars or epoch lines (True here; the CLI prints them). **options:
    every other `chaosgen train` flag by its name with underscores (eta, decay, seed,
    update_every, batch, limit, val_limit, test_limit, dataset, fit, val_split, log, resume,
    profile, target, cc, build_dir; under mpirun: sync_every, sync_rule, sync_overlap, mpi, see
    chaosgen.mpi);
    None or False leaves a flag out. Errors: UsageError for an unknown option or a bad value
    (named as its flag), and every error of `chaosgen train` (ChaosgenError: the spec, the data,
    the run directory, divergence, Ctrl-C after the interrupted epoch was checkpointed)."""
    given: dict[str, object] = dict(
        data=data, epochs=epochs, threads=threads, scheme=scheme,
        checkpoint_dir=checkpoint_dir, quiet=quiet, **options,
    )  # fmt: skip
    parser = _RaisingParser(prog="chaosgen", add_help=False)
    sub = parser.add_subparsers(parser_class=_RaisingParser)
    add_parser(sub)
    defaults = vars(sub.choices["train"].parse_args(["--", "spec"]))  # every flag's, by name
    known = sorted(set(defaults) - {"spec", "func"})
    argv: list[str] = []
    for name, value in given.items():
        if name not in known:
            raise UsageError(
                f"train(): unknown option {name!r}; the options are {', '.join(known)}"
            )
        flag = "--" + name.replace("_", "-")
        if defaults[name] is False:  # a switch
            if not isinstance(value, bool):
                raise UsageError(f"train(): {name} must be True or False, found {value!r}")
            argv += [flag] if value else []
        elif value is not None:
            if isinstance(value, (float, np.floating)):
                value = repr(float(value))  # every digit: the same float arrives
            argv.append(f"{flag}={os.fspath(value) if isinstance(value, os.PathLike) else value}")
    args = parser.parse_args(["train", *argv, "--", os.fspath(spec)])
    return run_train(args, on_epoch)


class _Callable(types.ModuleType):
    """`chaosgen.train` is both this module and the API's training function (the name the Python
    API gives it): calling the module calls train()."""

    def __call__(self, *args: object, **kwargs: object) -> list[dict]:
        return train(*args, **kwargs)  # type: ignore[arg-type]


sys.modules[__name__].__class__ = _Callable
