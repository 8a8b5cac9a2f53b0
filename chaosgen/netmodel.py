"""The performance model past one machine: T = T_comp + T_mem + T_comm for N nodes of `chaosgen
train` under mpirun (chaosgen/mpi.py), each node one rank with p threads.

Per epoch of I training, V validation and It test images:

    T_node(N) = the one-machine model (chaosgen.predict.predict) for ceil(I/N), ceil(V/N) and
                ceil(It/N) images with p threads: each rank trains and evaluates its shard,
                + (syncs - 1) x call_s: the shard is trained in one native call per chunk
    T_comm(N) = syncs x (T_allreduce(N, M) + sync_s),   syncs = ceil(ceil(I/N) / K)
    T_allreduce(N, M) = 2 (N - 1) alpha + 2 (N - 1) / N x M / beta

M = 4 x n_params bytes (the float32 weights), K = --sync-every. T_allreduce is the alpha-beta
(latency-bandwidth, Hockney 1994) cost of the ring allreduce: a reduce-scatter and an allgather of
N - 1 steps each, every step moving M / N bytes per rank (Patarasuk and Yuan 2009, "Bandwidth
optimal all-reduce algorithms for clusters of workstations"; Thakur, Rabenseifner and Gropp 2005,
"Optimization of collective communication operations in MPICH"). The reduction's arithmetic
(M / 4 additions per rank) is left out: below 0.1 ms for the large net. call_s (seconds a
training call costs beyond its images) is measured per network by `chaosgen calibrate`; sync_s
(a sync's cost beyond T_allreduce: its buffer arithmetic, the mpi4py call, the wait for a rank
that arrives later) by `chaosgen calibrate-network`. The blocking syncs do not overlap with
computing, so the terms add.

A network profile gives alpha (seconds) and beta (bytes per second): `10GbE` and `ib-edr` from
published figures (NETWORKS, each with its source), `this` measured by `chaosgen calibrate-network`
(the ranks of `mpirun -np 2` over TCP on the loopback interface), or a JSON file
{"name", "alpha_s", "beta_bytes_per_s", "source"[, "sync_s"]}.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import ChaosgenError, UsageError, refuse_special_file

FLOAT_BYTES = 4
NETWORK_ENV = "CHAOSGEN_NETWORK"


def ring_bytes(n_bytes: float, nodes: int) -> float:
    """Bytes each rank sends (and receives) in a ring allreduce of n_bytes: 2 (N - 1) / N of the
    buffer (a reduce-scatter, then an allgather; Patarasuk and Yuan 2009)."""
    return 2 * (nodes - 1) / nodes * n_bytes


@dataclass(frozen=True)
class Network:
    """An interconnect as the alpha-beta model sees it."""

    name: str
    alpha_s: float  # latency of one message, seconds
    beta_bytes_per_s: float  # bandwidth of one link, one direction
    source: str
    # Seconds a sync of chaosgen.mpi costs beyond the alpha-beta allreduce: its buffer arithmetic,
    # mpi4py's call, and the wait for ranks that arrive later. Measured by calibrate-network on
    # busy ranks; 0 in the published profiles, which describe the network alone.
    sync_s: float = 0.0

    def allreduce_s(self, n_bytes: float, nodes: int) -> float:
        """Seconds of one ring allreduce of n_bytes over `nodes` ranks (0 for one)."""
        if nodes <= 1:
            return 0.0
        return 2 * (nodes - 1) * self.alpha_s + ring_bytes(n_bytes, nodes) / self.beta_bytes_per_s

    def model_sync_s(self, n_bytes: float, nodes: int) -> float:
        """Seconds of one of chaosgen.mpi's syncs of n_bytes: the allreduce plus sync_s."""
        return self.allreduce_s(n_bytes, nodes) + self.sync_s * (nodes > 1)


# Published figures (not measured here). Bandwidths are the link's data rate after encoding,
# which MPI reaches within a few percent for messages of a megabyte and more.
NETWORKS = {
    "10GbE": Network(
        "10GbE",
        alpha_s=15e-6,
        beta_bytes_per_s=1.25e9,
        source="10 Gb/s data rate (IEEE 802.3ae-2002: 10GBASE-R, 64b/66b at 10.3125 GBd) = "
        "1.25 GB/s; latency 15 us: MPI over the kernel's TCP stack on 10GbE adapters measures "
        "10-20 us one-way for small messages (OSU latency benchmark figures published for "
        "10GbE NICs; e.g. Balaji et al., 'Sockets vs. RDMA interface over 10-Gigabit networks', "
        "IPDPS 2005, report about 10 us for TCP)",
    ),
    "ib-edr": Network(
        "ib-edr",
        alpha_s=1.0e-6,
        beta_bytes_per_s=12.1e9,
        source="InfiniBand EDR 4x: 4 lanes x 25.78125 Gb/s, 64b/66b = 100 Gb/s = 12.5 GB/s "
        "(InfiniBand Architecture Specification 1.3); MPI over Mellanox ConnectX-4 EDR: about "
        "1 us small-message latency and 12.1 GB/s large-message bandwidth (MVAPICH2 "
        "point-to-point figures published by the Ohio State University's MVAPICH project)",
    ),
}
# Message sizes of the loopback calibration: latency-bound to bandwidth-bound, up to twice the
# large net's 0.48 MB.
SIZES = (8, 1024, 16384, 131072, 524288, 1048576)
REPEATS = 30
BUSY_S = 1e-3  # work on every rank between two timed syncs (a short chunk of training)


def default_path() -> Path:
    """Where `chaosgen calibrate-network` writes the loopback profile."""
    env = os.environ.get(NETWORK_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache/chaosgen/network.json"


def load_network(name: str) -> Network:
    """'10GbE', 'ib-edr', 'this' (calibrated, see calibrate()) or a JSON file."""
    if name in NETWORKS:
        return NETWORKS[name]
    path = default_path() if name == "this" else Path(name)
    if name == "this" and not path.exists():
        raise ChaosgenError(
            f"no network profile of this machine at {path}: run `chaosgen calibrate-network` "
            f"(needs mpirun and mpi4py; about 10 s) or pick --network {'|'.join(NETWORKS)}"
        )
    if name != "this" and not (path.suffix == ".json" or path.is_file()):
        raise UsageError(
            f"--network {name}: not {', '.join(NETWORKS)}, this, or a .json network profile"
        )
    refuse_special_file(path, "a network profile")
    try:
        d = json.loads(path.read_text())
        return Network(str(d["name"]), float(d["alpha_s"]), float(d["beta_bytes_per_s"]),
                       str(d.get("source", path)), float(d.get("sync_s", 0.0)))  # fmt: skip
    except FileNotFoundError:
        raise ChaosgenError(f"{path}: no such network profile") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ChaosgenError(f"{path}: cannot read ({e})") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ChaosgenError(f"{path}: not a network profile ({type(e).__name__}: {e})") from None


# --- calibration on the loopback interface --------------------------------------------------
def fit(sizes: list[int], seconds: list[float], nodes: int = 2) -> tuple[float, float]:
    """alpha, beta of T = 2 (N - 1) alpha + 2 (N - 1) / N x M / beta by least squares of the
    relative error (each size weighs alike: the small ones fix alpha, the large ones beta)."""
    steps = 2 * (nodes - 1)
    t = np.asarray(seconds, np.float64)
    a = (
        np.column_stack([np.full(len(sizes), steps), np.asarray(sizes) * steps / nodes])
        / t[:, None]
    )
    (alpha, inv_beta), *_ = np.linalg.lstsq(a, np.ones_like(t), rcond=None)
    return max(float(alpha), 0.0), 1.0 / max(float(inv_beta), 1e-15)


def _busy(seconds: float) -> None:
    """A chunk's stand-in between two syncs: a thread started and joined (Runtime.train runs its
    native call in one) that keeps its core busy for `seconds`."""
    import threading

    def spin() -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    t = threading.Thread(target=spin)
    t.start()
    t.join()


def measure() -> None:
    """Run under mpirun: per size, the median seconds of (1) a bare in-place float32 allreduce,
    the ranks released together by a barrier (alpha and beta), and (2) chaosgen.mpi's sync
    (rule sum: subtract, allreduce, add, copy), each after BUSY_S of work on every rank and no
    barrier, as in training: what it costs beyond (1) is the sync's fixed cost (sync_s). Rank 0
    prints both as JSON."""
    from mpi4py import MPI

    from .mpi import Cluster

    comm = MPI.COMM_WORLD
    bare, synced = {}, {}
    for size in SIZES:
        buf = np.ones(size // FLOAT_BYTES, np.float32)
        times = []
        for _ in range(REPEATS + 3):
            comm.Barrier()
            t0 = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            times.append(time.perf_counter() - t0)
        times = comm.allreduce(times[3:], op=MPI.SUM)  # both ranks' samples
        bare[size] = float(np.median(times))
        cluster = Cluster(comm, base=np.zeros_like(buf))
        times = []
        for _ in range(REPEATS + 3):
            _busy(BUSY_S)
            t0 = time.perf_counter()
            cluster.sync(buf)
            times.append(time.perf_counter() - t0)
        times = comm.allreduce(times[3:], op=MPI.SUM)
        synced[size] = float(np.median(times))
    if comm.rank == 0:
        print(json.dumps({"nodes": comm.size, "seconds": bare, "sync_seconds": synced}))


LOOPBACK = ("--mca", "btl", "self,tcp", "--mca", "btl_tcp_if_include", "lo")


def calibrate(out: Path | None = None, mpirun_args: Sequence[str] = LOOPBACK) -> Network:
    """Measure alpha and beta of `mpirun -np 2 MPIRUN_ARGS` (default: over TCP on the loopback
    interface, the path bench/mpi.py's jobs take; a --hostfile measures a real network); write
    the profile atomically."""
    from . import child
    from .build import atomic_write

    mpirun = shutil.which("mpirun")
    if mpirun is None:
        raise ChaosgenError(
            "mpirun not found: install an MPI (Debian/Ubuntu: apt-get install openmpi-bin "
            "libopenmpi-dev) and pip install 'chaosgen[mpi]'"
        )
    cmd = [mpirun, "--oversubscribe", *mpirun_args, "-np", "2", sys.executable, "-m",
           "chaosgen.netmodel"]  # fmt: skip
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent),
                                          os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    got = child.run_json(cmd, "the allreduce microbenchmark", timeout=300, env=env)
    sizes = sorted(int(s) for s in got["seconds"])
    alpha, beta = fit(sizes, [got["seconds"][str(s)] for s in sizes], got["nodes"])
    bare = Network("this", alpha, beta, "")
    # the sync's cost beyond the fitted allreduce, per size; their median (it should not depend
    # on the size: what depends on it is in beta)
    extra = [got["sync_seconds"][str(s)] - bare.allreduce_s(s, got["nodes"]) for s in sizes]
    sync_s = max(0.0, float(np.median(extra)))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    net = Network(
        "this",
        alpha,
        beta,
        f"measured: mpirun -np 2 {' '.join(mpirun_args)}, in-place float32 MPI_Allreduce, "
        f"median of {REPEATS} per size, sizes {sizes[0]}..{sizes[-1]} bytes; sync_s: median "
        f"over the sizes of chaosgen.mpi's sync after {BUSY_S * 1e3:g} ms of work per rank "
        f"minus the fitted allreduce; load average {load:.2f}",
        sync_s,
    )
    path = out or default_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    record = asdict(net) | {
        "measured_seconds": got["seconds"],
        "measured_sync_seconds": got["sync_seconds"],
    }
    atomic_write(path, (json.dumps(record, indent=2) + "\n").encode())
    return net


# --- the cluster model ------------------------------------------------------------------------
@dataclass(frozen=True)
class ClusterPrediction:
    """One node count's epoch."""

    nodes: int
    t_node: float  # seconds per epoch of one node's computation and contention
    t_comm: float  # seconds per epoch in allreduces
    syncs: int

    @property
    def per_epoch(self) -> float:
        return self.t_node + self.t_comm


def predict_nodes(
    work, machine, threads: int, nodes: int, sync_every: int, network: Network, n_params: int,
    *, net: str = "", images: int = 60000, val_images: int | None = None,
    test_images: int = 10000,
) -> ClusterPrediction:  # fmt: skip
    """T_node + T_comm of one epoch on `nodes` nodes (module docstring); n_params: the floats
    of the weight buffer the ranks allreduce (ir.Net.n_params). T_node includes the per-call
    cost (machine profile: call_s) of the chunks beyond the one call a process makes alone;
    T_comm the syncs' fixed cost (network profile: sync_s)."""
    from .predict import predict

    val = images if val_images is None else val_images
    shard = math.ceil(images / nodes)
    p = predict(
        work,
        machine,
        threads,
        net=net,
        epochs=1,
        images=shard,
        val_images=math.ceil(val / nodes),
        test_images=math.ceil(test_images / nodes),
    )
    syncs = math.ceil(shard / sync_every) if nodes > 1 else 0
    # a rank trains its shard in `syncs` native calls (one per chunk), one without MPI
    calls = machine.factors(net)[0].call_s * max(syncs - 1, 0)
    t_comm = syncs * network.model_sync_s(FLOAT_BYTES * n_params, nodes)
    return ClusterPrediction(nodes, p.total + calls, t_comm, syncs)


def dominates_from(work, machine, threads: int, sync_every: int, network: Network,
                   n_params: int, limit: int = 1 << 20, **kw) -> int | None:  # fmt: skip
    """The smallest node count (powers of two up to `limit`) at which T_comm exceeds T_node."""
    n = 2
    while n <= limit:
        c = predict_nodes(work, machine, threads, n, sync_every, network, n_params, **kw)
        if c.t_comm > c.t_node:
            return n
        n *= 2
    return None


def print_cluster(spec_net, machine, work, threads: int, nodes: list[int], sync_every: int,
                  network: Network, **kw) -> None:  # fmt: skip
    """The table of `chaosgen predict --nodes`."""
    from .predict import human_time

    kw = dict(kw, net=spec_net.name)
    n_params = spec_net.n_params
    rows = [predict_nodes(work, machine, threads, n, sync_every, network, n_params, **kw)
            for n in nodes]  # fmt: skip
    one = predict_nodes(work, machine, threads, 1, sync_every, network, n_params, **kw)
    mb = FLOAT_BYTES * n_params / 1e6
    print(
        f"{spec_net.name} on N x {machine.name} ({threads} threads each), network {network.name} "
        f"(alpha {network.alpha_s * 1e6:.3g} us, beta {network.beta_bytes_per_s / 1e9:.3g} GB/s"
        f"{f', sync_s {network.sync_s * 1e6:.3g} us' if network.sync_s else ''}), "
        f"models joined every {sync_every:,} images per node ({mb:.3g} MB of weights, ring "
        "allreduce)"
    )
    print(f"  network: {network.source}")
    print(f"  {'nodes':>6} {'T_node':>10} {'T_comm':>10} {'per epoch':>10} {'speed-up':>9} "
          f"{'efficiency':>10}")  # fmt: skip
    for r in rows:
        s = one.per_epoch / r.per_epoch
        print(f"  {r.nodes:>6} {human_time(r.t_node):>10} {human_time(r.t_comm):>10} "
              f"{human_time(r.per_epoch):>10} {s:>8.1f}x {s / r.nodes:>9.0%}")  # fmt: skip
    for k in sorted({sync_every, 100, 1000, 10000}):
        n = dominates_from(work, machine, threads, k, network, n_params, **kw)
        where = (
            f"exceeds computation from {n:,} nodes"
            if n
            else "stays below computation up to 1,048,576 nodes"
        )
        print(f"  K = {k:>6,}: communication {where}")


if __name__ == "__main__":
    measure()
