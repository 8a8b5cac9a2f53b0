"""CHAOS across nodes: every MPI rank trains with its own threads (any scheme) on a disjoint shard
of each epoch's shuffled order, and the ranks join their models every K images per rank.

    mpirun -np 4 chaosgen train specs/medium.net --threads 15 --sync-every 2000 --log run.jsonl

- Every rank draws the same permutation of the training set (one seed: the same generator state
  on every rank, checkpointed once) and trains on its shard, the images at positions
  rank, rank + N, rank + 2N, ... of it: disjoint, and together the whole epoch.
- Each shard is trained in chunks of K images (the native loop per chunk, GIL released, as
  without MPI); after every chunk the ranks join their float32 weight buffers in place by one
  MPI_Allreduce, by one of two rules (--sync-rule):
  `sum` (default): the changes since the last sync are added, p = p_sync + sum_r (p_r - p_sync):
  every image's update counts once, as the updates of CHAOS threads to the shared weights do;
  with K = 1 it is synchronous SGD on N images per step. Measured (small net, one epoch, 2 ranks
  x 1 thread, loaded machine): test error 3.45% at K = 1 and 3.43% at K = 100 against 3.33% for
  one process; the rule overshoots for large K (5.4% at K = 1,000, 9.1% at 10,000).
  `average`: the models are averaged, p = mean_r p_r (local SGD, Zinkevich et al. 2010, "Paral-
  lelized stochastic gradient descent"): each image's update counts 1/N, so one epoch learns
  about as much as 1/N epoch of one process (4.9-5.0% for every K above), but it never
  overshoots: the rule for large K or many ranks.
  Every rank runs the same number of chunks (the last ones of a shorter shard may be smaller or
  empty), so the collectives always match. --sync-overlap joins by MPI_Iallreduce while the next
  chunk trains and applies the result after it: the other ranks' changes arrive one chunk late
  (Cluster.overlapped).
- Momentum buffers (the velocity of chaosgen.update) stay local between syncs, as in local SGD
  with momentum (Lin et al. 2020, "Don't use large mini-batches, use local SGD", Algorithm 1):
  under `sum` with K = 1 the sum of the local velocities is exactly the velocity of synchronous
  SGD, and syncing them would double the bytes moved per sync. They are averaged once at the end
  of each epoch (which keeps their sum), so that the checkpoint holds one velocity every rank can
  restart from: a job resumed from epoch e trains exactly as one that was not stopped.
- Validation and test are sharded in contiguous blocks and the loss sums, error counts and image
  counts are summed over the ranks; seconds are the slowest rank's.
- Rank 0 alone prints, draws the progress bar, writes the log and the checkpoint (atomically, as
  without MPI); --resume is read on rank 0 and broadcast.

Start-up checks (each a one-line error on every rank, non-zero exit, nothing written): mpi4py or
the MPI library missing; the run directory, the data or the build failing on some rank; ranks
whose network (IR hash) or generated code and toolchain (code key) differ; ranks whose data
differ (labels and shapes). An error in one rank during training aborts the job (MPI_Abort), and
a rank that dies or a Ctrl-C to mpirun ends every rank: the checkpoint of the last finished epoch
stays intact (there is no partial checkpoint under MPI) and `--resume` continues from it.

mpi4py is imported only here, and this module only under an MPI launcher (or with --mpi).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import ChaosgenError, UsageError
from .loader import aligned_zeros
from .netmodel import FLOAT_BYTES, ring_bytes

# Environment variables by which MPI launchers tell a process it is one of a job's ranks: Open
# MPI's mpirun, MPICH/Intel MPI's Hydra, PMIx launchers (Open MPI 5, Slurm's srun --mpi=pmix).
LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")
DEFAULT_SYNC_EVERY = 100  # images per rank between two syncs
# How a sync joins the ranks' models. sum: every rank's change since the last sync is added to
# the model of that sync (each image's update counts once, as CHAOS threads' updates to the shared
# weights do; with K = 1 it is synchronous SGD on N images). average: the models are averaged
# (local SGD, Zinkevich et al. 2010): each image's update counts 1/N, the safer rule for large K.
SYNC_RULES = ("sum", "average")
INSTALL = (
    "pip install 'chaosgen[mpi]' (mpi4py), with an MPI library from the system "
    "(Debian/Ubuntu: apt-get install openmpi-bin libopenmpi-dev)"
)
MAX_SYNC_EVERY = 2**31 - 1  # images are C ints in the native runtime


def launched() -> str | None:
    """The environment variable showing that an MPI launcher started this process, or None."""
    return next((v for v in LAUNCHER_VARIABLES if v in os.environ), None)


def wanted(args: argparse.Namespace) -> bool:
    """Whether `chaosgen train` runs as an MPI rank: under a launcher, or with --mpi."""
    return bool(getattr(args, "mpi", False)) or launched() is not None


def world():
    """MPI_COMM_WORLD through mpi4py (initialised here), or a ChaosgenError saying how to
    install what is missing."""
    var = launched()
    why = f"this process runs under an MPI launcher (${var} is set)" if var else "--mpi"
    try:
        from mpi4py import MPI
    except ImportError as e:
        missing = "mpi4py is not installed" if e.name == "mpi4py" else f"MPI cannot load ({e})"
        raise ChaosgenError(f"{why}, but {missing}: {INSTALL}") from None
    except (OSError, RuntimeError) as e:  # mpi4py present, the MPI library not
        raise ChaosgenError(
            f"{why}, but the MPI library cannot be loaded ({e}): {INSTALL}"
        ) from None
    return MPI.COMM_WORLD


class RankError(ChaosgenError):
    """A check that failed on some rank, raised on every rank alike (each exits by itself)."""


@dataclass
class Cluster:
    """The ranks of one training job and what they share: `sync_every` images per rank between
    two model syncs."""

    comm: object  # mpi4py.MPI.Comm
    sync_every: int = DEFAULT_SYNC_EVERY
    rule: str = "sum"  # SYNC_RULES
    syncs: int = 0  # model joins of the current epoch
    sync_seconds: float = 0.0  # spent in them on this rank
    threads: list[int] = field(default_factory=list)  # each rank's in the last epoch
    base: np.ndarray | None = None  # the model of the last sync (rule sum; with overlap, both)
    host: str = field(default_factory=platform.node)
    overlap: bool = False  # --sync-overlap: a non-blocking allreduce, applied one chunk late
    _pending: object = None  # the MPI request of the allreduce in flight (overlap)
    _mine: np.ndarray | None = None  # this rank's change it carries (overlap)
    _total: np.ndarray | None = None  # its buffer: the change, then the ranks' sum (overlap)

    @property
    def rank(self) -> int:
        return self.comm.Get_rank()

    @property
    def size(self) -> int:
        return self.comm.Get_size()

    @property
    def root(self) -> bool:
        """Rank 0: prints, logs and checkpoints."""
        return self.rank == 0

    # --- agreement ------------------------------------------------------------------------------
    def agree(self, what: str, fn, *args):
        """fn(*args) on every rank; if it raised a ChaosgenError on any, a RankError on every rank
        naming the ranks where `what` failed and the first one's message."""
        try:
            result, err = fn(*args), None
        except ChaosgenError as e:
            result, err = None, (str(e), e.exit_code)
        errors = self.comm.allgather((err, self.host))
        bad = [(r, h, e) for r, (e, h) in enumerate(errors) if e is not None]
        if bad:
            ranks = ", ".join(str(r) for r, _, _ in bad)
            r, h, (msg, code) = bad[0]
            e = RankError(
                f"{what} failed on rank{'s' * (len(bad) > 1)} {ranks} of {self.size} "
                f"(rank {r} on {h}: {msg})"
            )
            e.exit_code = code
            raise e
        return result

    def same(self, what: str, value: str, fix: str) -> None:
        """A RankError on every rank unless `value` is the same on all of them."""
        values = self.comm.allgather((value, self.host))
        if len({v for v, _ in values}) > 1:
            listing = "; ".join(f"rank {r} ({h}): {v}" for r, (v, h) in enumerate(values))
            raise RankError(f"the ranks have different {what} ({listing}); {fix}")

    def check_same_code(self, net, args: argparse.Namespace) -> None:
        """Refuse ranks that would compile different networks (`net`: the spec's ir.Net) or
        different code, before any of them builds."""
        from .calibrate import code_key

        self.same(
            "networks (IR hashes)",
            net.digest(),
            "give every rank the same spec",
        )
        key = self.agree("computing the code key", code_key, args.spec, args.target, args.cc)
        self.same(
            "generated code or toolchains (code keys)",
            key,
            "run the same chaosgen version with the same --target and compiler on every rank",
        )

    def check_same_data(self, data) -> None:
        """Refuse ranks whose data sets differ (shapes and labels: a cheap digest)."""
        h = hashlib.sha256()
        for a in (data.train_images, data.train_labels, data.test_images, data.test_labels):
            h.update(repr(a.shape).encode())
        for a in (data.train_labels, data.test_labels):
            h.update(np.ascontiguousarray(a, np.int64).tobytes())
        self.same(
            "data sets (digest of shapes and labels)",
            h.hexdigest()[:16],
            "give every rank the same --data",
        )

    # --- collectives ----------------------------------------------------------------------------
    def average(self, buf: np.ndarray) -> None:
        """buf (float32, contiguous) <- its mean over the ranks, in place (one MPI_Allreduce)."""
        from mpi4py import MPI

        self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        buf /= self.size  # float32 division, correctly rounded

    def add_deltas(self, params: np.ndarray) -> None:
        """params <- base + the sum over the ranks of (params - base); base <- params (one
        MPI_Allreduce, in place on params)."""
        from mpi4py import MPI

        params -= self.base
        self.comm.Allreduce(MPI.IN_PLACE, params, op=MPI.SUM)
        params += self.base
        self.base[:] = params

    def join(self, params: np.ndarray) -> None:
        """Join the ranks' models by the rule now (blocking); base <- the joined model."""
        if self.rule == "sum":
            self.add_deltas(params)
        else:
            self.average(params)
            if self.base is not None:
                self.base[:] = params

    def sync(self, params: np.ndarray, last: bool = True) -> None:
        """Join the ranks' models by the rule after a chunk (`last`: the epoch's last chunk);
        counted and timed for the log. With overlap, a non-blocking join (see overlapped)."""
        t0 = time.perf_counter()
        if self.overlap:
            self.overlapped(params, last)
        else:
            self.join(params)
        self.sync_seconds += time.perf_counter() - t0
        self.syncs += 1

    def overlapped(self, params: np.ndarray, last: bool) -> None:
        """--sync-overlap: the join of the changes up to chunk c runs (MPI_Iallreduce) while
        chunk c + 1 trains, and is applied after it: p <- p + S - d, base <- base + S, with d
        this rank's change since base sent at c and S the ranks' sum of theirs (divided by N
        under `average`). So every rank's model is the joined model of sync c plus its own
        not yet joined change: the other ranks' changes arrive one chunk late. After the
        epoch's last chunk the join is blocking, so that every rank ends the epoch with the
        same model (evaluated and checkpointed). While the chunk trains, Runtime.train's
        watcher calls progress() every POLL_S seconds."""
        from mpi4py import MPI

        if self._pending is not None:
            self._pending.Wait()
            self._pending = None
            if self.rule == "average":
                self._total /= self.size  # float32 division, correctly rounded
            params += self._total
            params -= self._mine
            self.base += self._total
        if last:
            self.join(params)
            return
        if self._mine is None or self._mine.shape != params.shape:
            self._mine, self._total = np.empty_like(params), np.empty_like(params)
        np.subtract(params, self.base, out=self._mine)
        self._total[:] = self._mine
        self._pending = self.comm.Iallreduce(MPI.IN_PLACE, self._total, op=MPI.SUM)

    def progress(self) -> None:
        """Let the allreduce in flight advance (MPI_Test): Open MPI progresses a non-blocking
        collective only inside MPI calls, and a rank makes none while its chunk trains."""
        if self._pending is not None:
            self._pending.Test()

    def _sum(self, values: list[float]) -> list[float]:
        from mpi4py import MPI

        a = np.array(values, np.float64)
        self.comm.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM)
        return a.tolist()

    def _max(self, value: float) -> float:
        from mpi4py import MPI

        return self.comm.allreduce(value, op=MPI.MAX)

    def broadcast_params(self, net) -> None:
        """Every rank starts from rank 0's weights."""
        self.comm.Bcast(net.params, root=0)

    # --- phases ---------------------------------------------------------------------------------
    def shard(self, order: np.ndarray) -> np.ndarray:
        """This rank's images of an epoch's order: positions rank, rank + N, ..."""
        return np.ascontiguousarray(order[self.rank :: self.size])

    def longest(self, n: int) -> int:
        """The images of the longest shard (rank 0's) of an epoch of n."""
        return -(-n // self.size)

    def train(self, rt, x, y, order, cfg, eta, progress=None, epoch=0, iter0=0, max_iter=0):
        """Runtime.train's contract over all ranks: this rank's shard in chunks of sync_every
        images, the models joined after each; the stats summed over the ranks. A per-iteration
        lr_policy counts this rank's iterations from iter0 (an epoch is one shard: Trainer.run
        counts so), as Caffe's multi-GPU solvers count theirs."""
        from . import update
        from .train import PASSES, PhaseStats, _Interrupted

        shard = self.shard(order)
        chunks = -(-self.longest(len(order)) // self.sync_every)
        self.syncs, self.sync_seconds = 0, 0.0
        loss = errors = images = 0.0
        threads, prof = cfg.threads, None
        t0 = time.perf_counter()
        self.base = rt.net.params.copy()
        if cfg.momentum > 0 and rt.velocity is None:  # on every rank, even one without images
            rt.velocity = aligned_zeros(rt.net.ir.n_params)
        for c in range(chunks):
            part = shard[c * self.sync_every : (c + 1) * self.sync_every]
            done = c * self.sync_every

            def seen(k: int, done=done) -> None:
                progress(min(len(order), (done + k) * self.size))

            if len(part):
                try:
                    st = rt.train(
                        x, y, part, cfg, eta,
                        progress=seen if progress is not None else None,
                        epoch=epoch,
                        iter0=iter0 + update.iterations(done, cfg.scheme, cfg.batch),
                        max_iter=max_iter,
                        poll=self.progress if self._pending is not None else None,
                    )  # fmt: skip
                except _Interrupted:
                    raise ChaosgenError(
                        f"interrupted in epoch {epoch + 1} on rank {self.rank}: the checkpoint "
                        "of the last finished epoch is kept (--resume continues from it)"
                    ) from None
                loss, errors, images = loss + st.loss, errors + st.errors, images + st.images
                threads = min(threads, st.threads)
                if st.profile is not None:
                    prof = st.profile if prof is None else prof + st.profile
            self.sync(rt.net.params, last=c == chunks - 1)
        if rt.velocity is not None:  # local between syncs; one state for the checkpoint
            self.average(rt.velocity)
        seconds = self._max(time.perf_counter() - t0)
        self.threads = self.comm.allgather(threads)  # each rank's: --threads may differ
        loss, errors, images = self._sum([loss, errors, images])
        if cfg.profile:  # a rank without images has none: zeros
            mine = prof if prof is not None else np.zeros(rt.lib.cg_n_layers() * len(PASSES))
            prof = np.array(self._sum(mine.tolist()))
        return PhaseStats(loss, int(errors), int(images), seconds, prof, threads)

    def evaluate(self, rt, images: np.ndarray, labels: np.ndarray, threads: int):
        """Runtime.evaluate's contract over all ranks: contiguous blocks, sums reduced."""
        from .train import PhaseStats

        n = len(labels)
        a, b = n * self.rank // self.size, n * (self.rank + 1) // self.size
        st = rt.evaluate(images[a:b], labels[a:b], threads)
        loss, errors, count = self._sum([st.loss, st.errors, st.images])
        return PhaseStats(loss, int(errors), int(count), self._max(st.seconds), None, st.threads)

    def record(self, n_params: int, images: int) -> dict:
        """The log's `mpi` entry of an epoch: ranks, threads per rank (one number, or a list if
        the ranks ran different counts), K and what syncing cost."""
        per_sync = ring_bytes(FLOAT_BYTES * n_params, self.size)
        return {
            "ranks": self.size,
            "threads_per_rank": self.threads[0] if len(set(self.threads)) == 1 else self.threads,
            "sync_every": self.sync_every,
            "sync_rule": self.rule,
            "sync_overlap": self.overlap,
            "syncs": self.syncs,
            "sync_seconds": self._max(self.sync_seconds),
            "ring_bytes_per_sync": per_sync,
            "bytes_per_image": per_sync * self.syncs * self.size / images if images else 0.0,
        }


def run_train(args: argparse.Namespace, spec_net, on_epoch=None) -> list[dict]:
    """`chaosgen train` as one rank of an MPI job (train.run_train's flow, collectively); the
    records of the epochs trained."""
    from . import train

    if args.sync_every is None:
        args.sync_every = DEFAULT_SYNC_EVERY
    cluster = Cluster(world(), args.sync_every, args.sync_rule or "sum",
                      overlap=bool(getattr(args, "sync_overlap", False)))  # fmt: skip
    args.quiet = args.quiet or not cluster.root
    run = None
    try:
        run, ck = cluster.agree("opening the run directory", _open_run, cluster, args, spec_net)
        ck = cluster.comm.bcast(ck, root=0)
        return train._train(args, spec_net, ck, on_epoch, cluster)
    except RankError:
        raise  # every rank says it and exits by itself
    except BaseException as e:  # this rank alone (or each separately): end the whole job
        if cluster.size == 1:
            raise
        _abort(cluster, e)
        raise  # not reached: MPI_Abort ends this process
    finally:
        if run is not None:
            run.close()


def _open_run(cluster: Cluster, args, spec_net):
    from .train import open_run

    return open_run(args, spec_net) if cluster.root else (None, None)


def _abort(cluster: Cluster, e: BaseException) -> None:
    """Say what ended this rank, then end every rank (MPI_Abort: mpirun stops the others)."""
    if isinstance(e, ChaosgenError):
        text, code = e.render(), e.exit_code
    elif isinstance(e, KeyboardInterrupt):
        text, code = "chaosgen: interrupted", 130
    else:
        text, code = f"chaosgen: internal error: {type(e).__name__}: {e}", 3
    print(
        f"{text} (rank {cluster.rank} of {cluster.size} on {cluster.host}; ending the job)",
        file=sys.stderr,
        flush=True,
    )
    cluster.comm.Abort(code)


def check_flags(args: argparse.Namespace) -> None:
    """--sync-every, --sync-rule and --sync-overlap: in range, and only for a job under MPI."""
    k = getattr(args, "sync_every", None)
    if k is not None and not 1 <= k <= MAX_SYNC_EVERY:
        raise UsageError(f"--sync-every must be an integer in [1, {MAX_SYNC_EVERY}], found {k}")
    for flag, v in (
        ("--sync-every", k),
        ("--sync-rule", getattr(args, "sync_rule", None)),
        ("--sync-overlap", getattr(args, "sync_overlap", None) or None),
    ):
        if v is not None and not wanted(args):
            raise UsageError(
                f"{flag} joins the models of MPI ranks: start the job with mpirun (or give --mpi)"
            )
