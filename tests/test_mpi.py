"""`chaosgen train` under a real `mpirun -np 2 --oversubscribe` (one thread per rank): the model
averaging against an independent NumPy reference, the accuracy of one epoch against one process,
a rank killed with kill -9 and the job resumed, and the start-up refusals (chaosgen/mpi.py).

The jobs are skipped without mpirun or mpi4py (CI installs openmpi-bin, libopenmpi-dev and
mpi4py); the two tests without a job always run. Open MPI refuses to start as root unless
OMPI_ALLOW_RUN_AS_ROOT=1 and OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 are set (CI containers run as
root): the tests set both for their mpirun.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, ROOT
from proc import explain

from chaosgen import checkpoint as ckpt
from chaosgen.cli import main

MPIRUN = shutil.which("mpirun")
needs_mpi = pytest.mark.skipif(
    MPIRUN is None or importlib.util.find_spec("mpi4py") is None,
    reason="needs mpirun and mpi4py (apt-get install openmpi-bin libopenmpi-dev; pip install "
    "mpi4py)",
)
SMALL = str(ROOT / "specs" / "small.net")
TIMEOUT = 120


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory) -> Path:
    """One build cache for the module's jobs (both ranks share it, under its lock)."""
    return tmp_path_factory.mktemp("mpi-build")


def env(**extra: str) -> dict[str, str]:
    """This checkout's chaosgen, and Open MPI allowed to run as root."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "OMPI_MCA_rmaps_base_oversubscribe": "1",
        **extra,
    }


def chaosgen_argv(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "chaosgen.cli", *map(str, args)]


def mpirun(*apps: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
    """mpirun with one rank per app (MPMD: `-np 1 A : -np 1 B`), or -np 2 of a single app."""
    cmd = [MPIRUN, "--oversubscribe"]
    if len(apps) == 1:
        cmd += ["-np", "2", *apps[0]]
    else:
        for i, app in enumerate(apps):
            cmd += [":"] * (i > 0) + ["-np", "1", *app]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, cwd=kw.pop("cwd"), env=kw.pop("env", env()),
        timeout=TIMEOUT, **kw,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(explain(cmd, f"exit {proc.returncode}", proc.stdout, proc.stderr, 40))
    return proc


def train_argv(spec, run: Path, build_dir: Path, *more) -> list[str]:
    return chaosgen_argv(
        "train", spec, "--threads", "1", "--data", DATA, "--build-dir", build_dir,
        "--checkpoint-dir", run, "--log", run.with_suffix(".jsonl"), "--quiet", *more,
    )  # fmt: skip


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in run.with_suffix(".jsonl").read_text().splitlines()]


# --- K = 1 against a reference written here -----------------------------------------------------
def reference(spec: Path, build_dir: Path, rule: str, epochs: int, limit: int, seed: int,
              overlap: bool = False):  # fmt: skip
    """The job `mpirun -np 2 chaosgen train SPEC --sync-every 1 --sync-rule RULE` computes,
    written from its definition with one process and per-rank sequential native runs: every
    epoch one permutation from the seed; rank r trains the images at positions r, r + 2, ...;
    after each image of each rank the models are joined (sum: p0 + d0 + d1; average: (p0 + p1)
    / 2, float32); momentum buffers are per rank, averaged at the end of each epoch.
    overlap (--sync-overlap): each rank keeps its own model; the sum S of the changes d_r since
    the joined model b, sent after image i, is applied after image i + 1 (p_r += S - d_r, b +=
    S; S / 2 under average); after an epoch's last image the join is immediate."""
    import chaosgen
    from chaosgen.data.sets import load_dataset
    from chaosgen.loader import aligned_zeros
    from chaosgen.train import Config, Runtime

    net = chaosgen.compile(spec, build_dir=build_dir)
    net.init_weights(seed)
    rt = Runtime(net)
    t = net.ir.training
    d = load_dataset(DATA)
    x = rt.images(d.train_images)
    y = np.ascontiguousarray(d.train_labels, np.int32)
    sgd = {k: getattr(t, k) for k in ("momentum", "lr_policy", "gamma", "power")}
    cfg = Config(threads=1, epochs=epochs, eta=t.eta, decay=t.decay, seed=seed, **sgd)
    per_rank = -(-limit // 2)  # a rank counts its own iterations: an epoch is rank 0's shard
    rng = np.random.default_rng(seed)
    velocity = [aligned_zeros(net.ir.n_params) for _ in range(2)]
    eta = t.eta
    for epoch in range(epochs):
        order = rng.permutation(len(y))[:limit].astype(np.int32)
        shards = [order[0::2], order[1::2]]
        base, models, pending = net.params.copy(), [net.params.copy() for _ in (0, 1)], None
        for i in range(len(shards[0])):
            ends = []
            for r in (0, 1):
                net.params[:] = models[r]
                rt.velocity = velocity[r]
                if i < len(shards[r]):
                    rt.train(x, y, shards[r][i : i + 1], cfg, eta, epoch=epoch,
                             iter0=epoch * per_rank + i, max_iter=epochs * per_rank)  # fmt: skip
                ends.append(net.params.copy())
            if pending is not None:  # overlap: the join sent after the previous image
                total, mine = pending
                if rule == "average":
                    total = total / np.float32(2)
                for r in (0, 1):
                    ends[r] += total
                    ends[r] -= mine[r]
                base += total
                pending = None
            if overlap and i < len(shards[0]) - 1:
                mine = [e - base for e in ends]
                pending, models = (mine[0] + mine[1], mine), ends
                continue
            start = base
            if rule == "sum":
                joined = start + ((ends[0] - start) + (ends[1] - start))
            else:
                joined = (ends[0] + ends[1]) / np.float32(2)
            base, models = joined.copy(), [joined.copy(), joined.copy()]
        net.params[:] = models[0]
        mean = (velocity[0] + velocity[1]) / np.float32(2)
        velocity[0][:] = velocity[1][:] = mean
        eta *= t.decay if t.lr_policy == "exp" else 1.0
    return net.params.copy(), velocity[0]


@needs_mpi
@pytest.mark.parametrize(
    "rule, schedule, overlap",
    [
        ("sum", "decay=0.9", False),
        ("average", "lr_policy=inv gamma=0.01 power=0.75", False),
        ("sum", "decay=0.9", True),
    ],
)
def test_sync_every_1_follows_the_reference_exactly(tmp_path, build_dir, rule, schedule, overlap):
    spec = tmp_path / "small_momentum.net"  # momentum: the local velocities are part of the state
    spec.write_text(Path(SMALL).read_text().replace("decay=0.9", f"{schedule} momentum=0.5"))
    run = tmp_path / "run"
    epochs, limit, seed = 2, 101, 5  # an odd count: rank 1's shard is one image shorter
    mpirun(
        train_argv(spec, run, build_dir, "--epochs", epochs, "--limit", limit, "--seed", seed,
                   "--val-limit", 50, "--test-limit", 50, "--sync-every", 1, "--sync-rule", rule,
                   *["--sync-overlap"] * overlap),
        cwd=tmp_path,
    )  # fmt: skip
    ck = ckpt.load(run / "last.npz")
    params, velocity = reference(spec, build_dir, rule, epochs, limit, seed, overlap)
    assert ck.epoch == epochs
    assert np.array_equal(ck.params, params)
    assert np.array_equal(ck.velocity, velocity)
    rec = records(run)[-1]
    assert rec["train_images"] == limit and rec["val_images"] == 50 and rec["test_images"] == 50
    assert rec["mpi"]["ranks"] == 2 and rec["mpi"]["threads_per_rank"] == 1
    assert rec["mpi"]["sync_every"] == 1 and rec["mpi"]["sync_rule"] == rule
    assert rec["mpi"]["sync_overlap"] == overlap
    assert rec["mpi"]["syncs"] == 51  # ceil(101 / 2) chunks of one image on rank 0


# --- accuracy of a whole epoch ------------------------------------------------------------------
@needs_mpi
def test_one_epoch_test_error_within_0_3_pp_of_one_process(tmp_path, build_dir):
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(train_argv(SMALL, one, build_dir, "--epochs", 1), cwd=tmp_path, env=env(),
                   check=True, timeout=TIMEOUT)  # fmt: skip
    mpirun(train_argv(SMALL, two, build_dir, "--epochs", 1, "--sync-every", 100), cwd=tmp_path)
    a, b = records(one)[-1], records(two)[-1]
    assert a["train_images"] == b["train_images"] == 60000
    assert a["test_images"] == b["test_images"] == 10000
    assert abs(a["test_error_rate"] - b["test_error_rate"]) <= 0.003, (a, b)
    # the ring's 2 (N - 1) / N of the float32 weights per sync, per K images of a rank
    n = ckpt.load(two / "last.npz").params.size
    assert b["mpi"]["bytes_per_image"] == pytest.approx(2 * (2 - 1) / 2 * 4 * n / 100)


# --- a rank killed, the job resumed -------------------------------------------------------------
def _rank_pid(tag: str, rank: int) -> int | None:
    """The process of rank `rank` of the job whose environment holds CHAOSGEN_TEST_TAG=tag."""
    want = {f"CHAOSGEN_TEST_TAG={tag}".encode(), f"OMPI_COMM_WORLD_RANK={rank}".encode()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = set((entry / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if want <= environ:
            return int(entry.name)
    return None


@needs_mpi
def test_rank_killed_keeps_the_checkpoint_and_the_job_resumes(tmp_path, build_dir):
    run, whole = tmp_path / "run", tmp_path / "whole"
    more = ("--limit", 3000, "--val-limit", 500, "--test-limit", 500, "--sync-every", 50)
    tag = uuid.uuid4().hex
    cmd = [MPIRUN, "--oversubscribe", "-x", "CHAOSGEN_TEST_TAG", "-np", "2",
           *train_argv(SMALL, run, build_dir, "--epochs", 200, *more)]  # fmt: skip
    job = subprocess.Popen(cmd, cwd=tmp_path, env=env(CHAOSGEN_TEST_TAG=tag),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + TIMEOUT
        log = run.with_suffix(".jsonl")
        while not (log.exists() and log.read_text().count("\n") >= 1):
            assert job.poll() is None and time.monotonic() < deadline, job.communicate()
            time.sleep(0.05)
        pid = _rank_pid(tag, 1)
        assert pid is not None, "rank 1's process not found"
        os.kill(pid, signal.SIGKILL)
        out, err = job.communicate(timeout=TIMEOUT)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0, (out, err)
    ck = ckpt.load(run / "last.npz")  # whole and readable
    done = ck.epoch
    assert 1 <= done < 200 and not ck.partial
    assert [r["epoch"] for r in ck.records] == list(range(1, done + 1))
    # restarted: continues from the checkpoint, and trains exactly as a job that was not stopped
    mpirun(train_argv(SMALL, run, build_dir, "--epochs", done + 1, "--resume", *more),
           cwd=tmp_path)  # fmt: skip
    mpirun(train_argv(SMALL, whole, build_dir, "--epochs", done + 1, *more), cwd=tmp_path)
    assert [r["epoch"] for r in records(run)] == list(range(1, done + 2))
    assert np.array_equal(ckpt.load(run / "last.npz").params, ckpt.load(whole / "last.npz").params)


# --- start-up refusals --------------------------------------------------------------------------
def _refused(proc: subprocess.CompletedProcess[str], text: str) -> None:
    """Both ranks said `text` in one line, and the job failed."""
    assert proc.returncode != 0
    assert proc.stderr.count(text) == 2, proc.stderr  # mpirun may join the ranks' lines
    assert "Traceback" not in proc.stderr


@needs_mpi
def test_ranks_with_different_code_or_networks_are_refused(tmp_path, build_dir):
    run = tmp_path / "run"
    rank = train_argv(SMALL, run, build_dir, "--epochs", 1, "--limit", 100)
    proc = mpirun(rank + ["--target", "avx2"], rank, check=False, cwd=tmp_path)
    _refused(proc, "the ranks have different generated code or toolchains (code keys)")
    medium = train_argv(ROOT / "specs" / "medium.net", run, build_dir, "--epochs", 1)
    proc = mpirun(rank, medium, check=False, cwd=tmp_path)
    _refused(proc, "the ranks have different networks (IR hashes)")
    assert not (run / "last.npz").exists() and not any(build_dir.glob("medium-*"))


@needs_mpi
def test_data_missing_on_one_rank_is_refused(tmp_path, build_dir):
    run = tmp_path / "run"
    rank = train_argv(SMALL, run, build_dir, "--epochs", 1, "--limit", 100)
    proc = mpirun(rank, rank + ["--data", str(tmp_path / "nowhere")], check=False, cwd=tmp_path)
    _refused(proc, "reading the data's header failed on rank 1 of 2")
    assert not (run / "last.npz").exists()


def test_without_mpi4py_one_line_says_how_to_install(tmp_path, build_dir):
    """mpi4py absent (an import that fails as a missing module does), started with --mpi."""
    fake = tmp_path / "site" / "mpi4py"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'mpi4py'\", name='mpi4py')\n"
    )
    proc = subprocess.run(
        train_argv(SMALL, tmp_path / "run", build_dir, "--epochs", 1, "--mpi"),
        capture_output=True, text=True, cwd=tmp_path, timeout=TIMEOUT,
        env=env(PYTHONPATH=os.pathsep.join([str(fake.parent), str(ROOT)])),
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "chaosgen: error: --mpi, but mpi4py is not installed: pip install 'chaosgen[mpi]' "
        "(mpi4py), with an MPI library from the system (Debian/Ubuntu: apt-get install "
        "openmpi-bin libopenmpi-dev)"
    ]


def test_sync_flags_need_mpi(capsys):
    assert main(["train", SMALL, "--sync-every", "10"]) == 2
    assert "--sync-every joins the models of MPI ranks" in capsys.readouterr().err
    assert main(["train", SMALL, "--sync-rule", "average"]) == 2
    assert "start the job with mpirun (or give --mpi)" in capsys.readouterr().err
    assert main(["train", SMALL, "--sync-overlap"]) == 2
    assert "--sync-overlap joins the models of MPI ranks" in capsys.readouterr().err
    assert main(["train", SMALL, "--mpi", "--sync-every", "0"]) == 2
    assert "--sync-every must be an integer in [1, " in capsys.readouterr().err
