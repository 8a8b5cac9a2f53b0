"""Training and evaluation: Python drives epochs, data, schedule, metrics and files; each phase
(training, validation, test) is one call into the native CHAOS runtime with the GIL released."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from .errors import ChaosgenError, TrainingError, UsageError
from .loader import Net, aligned_zeros
from .threads import allowed_threads, resolve_threads, usable_cpus

SCHEMES = {"chaos": 0, "sequential": 0, "hogwild": 1, "delayed": 2, "averaged": 3}
PASSES = ("forward", "backward_data", "backward_weights", "update", "lock_wait")


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
    limit: int | None = None  # training images per epoch (None: all)
    val_limit: int | None = None  # validation images (None: all training images, as the paper)
    test_limit: int | None = None
    profile: bool = False


@dataclass
class PhaseStats:
    """What one native call reports."""

    loss: float
    errors: int
    images: int
    seconds: float
    profile: np.ndarray | None = field(default=None, repr=False)
    threads: int = 1  # OpenMP threads that ran

    @property
    def error_rate(self) -> float:
        """Fraction of images wrongly classified."""
        return self.errors / self.images if self.images else float("nan")

    @property
    def images_per_s(self) -> float:
        """Throughput of the phase."""
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def to_native_images(x: np.ndarray, stride: int) -> np.ndarray:
    """Copy images (N, ...) once into 64-byte aligned rows of `stride` floats."""
    n = x.shape[0]
    flat = x.reshape(n, -1)
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
        """Labels as int32, checked against the output layer (a wrong one would be read out of
        the output's bounds in native code)."""
        lab = np.ascontiguousarray(labels, np.int32)
        classes = self.lib.cg_output_size()
        if lab.size and (lab.min() < 0 or lab.max() >= classes):
            bad = int(lab.min() if lab.min() < 0 else lab.max())
            raise ChaosgenError(
                f"the data holds label {bad}, but network {self.net.ir.name} has "
                f"{classes} classes (labels 0..{classes - 1})"
            )
        return lab

    def images(self, x: np.ndarray) -> np.ndarray:
        """Native copy of a batch of images (checks their shape against the input layer)."""
        s = self.net.ir.input
        if x.shape[1:] not in ((s.maps, s.h, s.w), (s.h, s.w) if s.maps == 1 else None):
            raise ChaosgenError(
                f"the data's images are {'x'.join(map(str, x.shape[1:]))}, but network "
                f"{self.net.ir.name} takes {s.maps}x{s.h}x{s.w}"
            )
        return to_native_images(x, self.stride)

    def train(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        order: np.ndarray,
        cfg: Config,
        eta: float,
        progress=None,
    ) -> PhaseStats:
        """One training pass over images[order] (native, GIL released; Ctrl-C stops it early)."""
        lab = self._labels(labels)
        threads = allowed_threads(cfg.threads)
        order = np.ascontiguousarray(order, np.int32)
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

        rc, interrupted = _run_watched(call, stop, seen, len(order), progress)
        out = self._stats(rc, stats, threads, prof)
        if progress is not None:
            progress(out.images)  # the images trained, not the last hint
        if interrupted:
            raise _Interrupted(out)
        return out

    def evaluate(self, images: np.ndarray, labels: np.ndarray, threads: int) -> PhaseStats:
        """Forward only over all images: summed loss and errors."""
        lab = self._labels(labels)
        threads = allowed_threads(threads)
        stats = self.ffi.new("cg_stats *")
        rc = self.lib.cg_evaluate(
            self.net.ptr(self.net.params),
            self.net.ptr(images),
            self.net.ptr(lab, "int *"),
            len(lab),
            threads,
            stats,
        )
        return self._stats(rc, stats, threads)

    def _stats(self, rc: int, stats, asked: int, prof: np.ndarray | None = None) -> PhaseStats:
        """A native call's cg_stats, or the error its return code means."""
        if rc != 0:
            raise ChaosgenError(
                "the native runtime could not allocate its buffers (out of memory)"
            )
        ran = self._ran(asked, stats.threads)
        return PhaseStats(stats.loss, stats.errors, stats.images, stats.seconds, prof, ran)


class _Interrupted(Exception):
    def __init__(self, stats: PhaseStats):
        self.stats = stats


def _run_watched(call, stop, seen, total: int, progress) -> tuple[int, bool]:
    """Run `call` in a thread; update `progress(n)` meanwhile; on Ctrl-C ask the workers to stop
    picking images and wait until the call has returned. Returns its result and whether it was
    interrupted.

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
    interrupted = False
    while not done.is_set():
        try:
            if not done.wait(0.1) and progress is not None:
                progress(min(int(seen[0]), total))
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
    data: object  # chaosgen.data.Mnist
    cfg: Config
    log_path: Path | None = None
    checkpoint_dir: Path | None = None
    quiet: bool = False
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        d, rt = self.data, self.runtime
        n_tr = (
            len(d.train_labels)
            if self.cfg.limit is None
            else min(self.cfg.limit, len(d.train_labels))
        )
        self.n_train = n_tr
        self.train_x = rt.images(d.train_images)
        self.train_y = np.ascontiguousarray(d.train_labels, np.int32)
        nv = (
            len(self.train_y)
            if self.cfg.val_limit is None
            else min(self.cfg.val_limit, len(self.train_y))
        )
        self.val_x, self.val_y = self.train_x[:nv], self.train_y[:nv]
        nt = (
            len(d.test_labels)
            if self.cfg.test_limit is None
            else min(self.cfg.test_limit, len(d.test_labels))
        )
        self.test_x = rt.images(d.test_images[:nt])
        self.test_y = np.ascontiguousarray(d.test_labels[:nt], np.int32)
        self.rng = np.random.default_rng(self.cfg.seed)
        self.start_epoch = 0
        self.eta = self.cfg.eta

    @property
    def last_checkpoint(self) -> Path | None:
        """Where the newest checkpoint is written."""
        return self.checkpoint_dir / "last.npz" if self.checkpoint_dir else None

    def resume(self) -> None:
        """Continue from the last checkpoint in the checkpoint directory."""
        path = self.last_checkpoint
        if path is None or not path.exists():
            raise ChaosgenError(f"--resume: no checkpoint at {path}; train without --resume first")
        net = self.runtime.net
        ck = ckpt.load(path, net.ir)
        net.params[:] = ck.params
        self.start_epoch, self.eta = ck.epoch, ck.eta
        if ck.rng is not None:
            self.rng.bit_generator.state = ck.rng
        self.say(
            f"resuming from {path}: {ck.epoch} epochs done, eta {ck.eta:g}"
            + (" (interrupted mid-epoch)" if ck.partial else "")
        )

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)

    def save(
        self, epoch_done: int, eta_next: float, rng_state: dict, partial: bool = False
    ) -> None:
        if self.last_checkpoint is None:
            return
        net = self.runtime.net
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
            ),
        )

    def run(self) -> list[dict]:
        """Train the configured epochs; returns the per-epoch records (also logged)."""
        cfg, rt, records = self.cfg, self.runtime, []
        for epoch in range(self.start_epoch, cfg.epochs):
            rng_before = self.rng.bit_generator.state
            order = self.rng.permutation(len(self.train_y))[: self.n_train].astype(np.int32)
            eta = self.eta
            t0 = time.perf_counter()
            bar = _bar(f"epoch {epoch + 1} train", len(order), self.quiet)
            try:
                tr = rt.train(
                    self.train_x,
                    self.train_y,
                    order,
                    cfg,
                    eta,
                    progress=lambda k, bar=bar: bar.update(k - bar.n),
                )
            except _Interrupted as stop:
                bar.close()
                self._check_finite(epoch, stop.stats)
                self.save(epoch, eta, rng_before, partial=True)
                where = f"; checkpoint {self.last_checkpoint}" if self.last_checkpoint else ""
                raise ChaosgenError(
                    f"interrupted in epoch {epoch + 1} after {stop.stats.images} images{where}"
                ) from None
            bar.close()
            self._check_finite(epoch, tr)
            self.eta = eta * cfg.decay
            try:
                va = rt.evaluate(self.val_x, self.val_y, cfg.threads)
                te = rt.evaluate(self.test_x, self.test_y, cfg.threads)
            except KeyboardInterrupt:  # training of this epoch is done: keep it
                self.save(epoch + 1, self.eta, self.rng.bit_generator.state)
                where = f"; checkpoint {self.last_checkpoint}" if self.last_checkpoint else ""
                raise ChaosgenError(
                    f"interrupted while evaluating epoch {epoch + 1}{where}"
                ) from None
            rec = {
                "epoch": epoch + 1,
                "eta": eta,
                "train_loss": tr.loss / max(tr.images, 1),
                "train_error_rate": tr.error_rate,
                "val_error": va.loss,
                "val_errors": va.errors,
                "val_error_rate": va.error_rate,
                "test_error": te.loss,
                "test_errors": te.errors,
                "test_error_rate": te.error_rate,
                "train_images": tr.images,
                "val_images": va.images,
                "test_images": te.images,
                "train_images_per_s": tr.images_per_s,
                "val_images_per_s": va.images_per_s,
                "test_images_per_s": te.images_per_s,
                "seconds_train": tr.seconds,
                "seconds_val": va.seconds,
                "seconds_test": te.seconds,
                "seconds": time.perf_counter() - t0,
            }
            if tr.profile is not None:
                rec["profile_us_per_image"] = _profile_table(rt.net, tr.profile, tr.images)
            rec.update(config={**asdict(cfg), **self.meta}, machine=machine())
            self.save(epoch + 1, self.eta, self.rng.bit_generator.state)
            if self.log_path is not None:
                with open(self.log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            self.say(
                f"epoch {epoch + 1:3d}  eta {eta:.3g}  train loss {rec['train_loss']:.4f}/img  "
                f"val {va.error_rate:.2%} wrong (loss sum {va.loss:.1f})  test "
                f"{te.error_rate:.2%} wrong (loss sum {te.loss:.1f})  "
                f"s {tr.seconds:.1f}/{va.seconds:.1f}/{te.seconds:.1f}  "
                f"train {tr.images_per_s:,.0f} img/s"
            )
            if tr.profile is not None:
                print_profile(rec["profile_us_per_image"], self.say)
            records.append(rec)
        return records

    def _check_finite(self, epoch: int, tr: PhaseStats) -> None:
        params = self.runtime.net.params
        if np.isfinite(tr.loss) and np.isfinite(params).all():
            return
        where = (
            f"the last good checkpoint {self.last_checkpoint} is kept"
            if self.last_checkpoint and self.last_checkpoint.exists()
            else "no checkpoint was written"
        )
        raise TrainingError(
            f"training diverged in epoch {epoch + 1}: the loss or the weights became NaN/inf "
            f"(eta {self.eta:g}); {where}; try a smaller eta"
        )


# --- command line -------------------------------------------------------------------------------
def add_parser(sub) -> None:
    """`chaosgen train` and `chaosgen eval`."""
    from .cli import add_compile_options

    p = sub.add_parser("train", help="train a network on MNIST with CHAOS (or another scheme)")
    add_compile_options(p)
    p.add_argument("--scheme", choices=tuple(SCHEMES), default="chaos")
    p.add_argument("--threads", type=int, default=None, help="worker threads (default: all cores)")
    p.add_argument("--epochs", type=int, default=None, help="default: the spec's train epochs")
    p.add_argument("--eta", type=float, default=None, help="initial learning rate (default: spec)")
    p.add_argument(
        "--decay", type=float, default=None, help="eta factor per epoch (default: spec)"
    )
    p.add_argument("--seed", type=int, default=None, help="shuffle and init seed (default: spec)")
    p.add_argument("--update-every", type=int, default=8, help="delayed: images between updates")
    p.add_argument("--batch", type=int, default=16, help="averaged: images per synchronous step")
    p.add_argument(
        "--limit", type=int, default=None, help="training images per epoch (default all)"
    )
    p.add_argument("--val-limit", type=int, default=None, help="validation images (default all)")
    p.add_argument("--test-limit", type=int, default=None, help="test images (default all)")
    p.add_argument("--data", default=None, help="MNIST directory (default $CHAOSGEN_DATA)")
    p.add_argument("--log", default=None, help="append one JSON object per epoch to this file")
    p.add_argument("--checkpoint-dir", default=None, help="default runs/<network>")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--profile", action="store_true", help="time every layer and pass")
    p.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    p.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate saved weights on the MNIST test set")
    add_compile_options(e)
    e.add_argument("--weights", required=True, help="checkpoint .npz")
    e.add_argument("--data", default=None)
    e.add_argument("--threads", type=int, default=None)
    e.add_argument(
        "--train-set", action="store_true", help="also evaluate on the 60,000 training images"
    )
    e.set_defaults(func=cmd_eval)


def _positive(name: str, v: int | None) -> None:
    if v is not None and v < 1:
        raise UsageError(f"{name} must be at least 1, found {v}")


def cmd_train(args: argparse.Namespace) -> int:
    """Compile the spec, load MNIST, train, log and checkpoint."""
    from . import compile as compile_net
    from .codegen import summary_rows
    from .data import find_data_dir, load_mnist

    for name in ("threads", "epochs", "update_every", "batch", "limit", "val_limit", "test_limit"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    asked = resolve_threads(args.threads)
    if args.scheme == "sequential":
        if args.threads not in (None, 1):
            raise UsageError("--scheme sequential runs on one thread; drop --threads")
        asked = 1
    net = compile_net(args.spec, target=args.target, cc=args.cc, build_dir=args.build_dir)
    rt = Runtime(net)
    t = net.ir.training
    cfg = Config(
        scheme=args.scheme,
        threads=rt.threads(asked),  # what runs: the banner and the log say so
        epochs=args.epochs or t.epochs,
        eta=args.eta if args.eta is not None else t.eta,
        decay=args.decay if args.decay is not None else t.decay,
        seed=args.seed if args.seed is not None else t.seed,
        update_every=args.update_every,
        batch=args.batch,
        limit=args.limit,
        val_limit=args.val_limit,
        test_limit=args.test_limit,
        profile=args.profile,
    )
    if args.seed is not None:
        net.init_weights(cfg.seed)
    data = load_mnist(find_data_dir(args.data))
    if not args.quiet:
        print(
            f"{net.ir.name} ({args.spec}): {cfg.scheme}, "
            f"{cfg.threads} thread{'s' * (cfg.threads != 1)}, "
            f"{cfg.epochs} epochs, "
            f"eta {cfg.eta:g} x{cfg.decay:g}/epoch, library {net.library}"
        )
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
    )
    if args.resume:
        trainer.resume()
    elif args.log and Path(args.log).exists():
        Path(args.log).unlink()  # a fresh run starts a fresh log; --resume appends
    trainer.run()
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Load a checkpoint into the compiled network and report test (and train) error."""
    from . import compile as compile_net
    from .data import find_data_dir, load_mnist

    _positive("--threads", args.threads)
    asked = resolve_threads(args.threads)
    net = compile_net(args.spec, target=args.target, cc=args.cc, build_dir=args.build_dir)
    ck = ckpt.load(args.weights, net.ir)
    net.params[:] = ck.params
    data = load_mnist(find_data_dir(args.data))
    rt = Runtime(net)
    threads = rt.threads(asked)
    sets = [("test", data.test_images, data.test_labels)]
    if args.train_set:
        sets.append(("train", data.train_images, data.train_labels))
    for name, x, y in sets:
        st = rt.evaluate(rt.images(x), y, threads)
        print(
            f"{name}: error {st.loss:.2f} (mean loss {st.loss / st.images:.4f}), "
            f"{st.errors} wrong of {st.images} ({st.error_rate:.2%}), "
            f"{st.images_per_s:,.0f} img/s on {st.threads} thread{'s' * (st.threads > 1)}"
        )
    return 0
