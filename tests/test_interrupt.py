"""Interrupts, threads and processes, with real signals, real OpenMP threads and a real fork():
Ctrl-C mid-epoch reports (and saves) exactly the images trained; the thread count that ran is
the one reported and logged; a child forked after threads ran does not hang."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from proc import default_sigint

import chaosgen
from chaosgen import checkpoint, threads, train
from chaosgen.data import load_mnist

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CHAOSGEN_DATA") or ROOT.parent / "shared" / "data" / "mnist")
SMALL, MEDIUM = ROOT / "specs" / "small.net", ROOT / "specs" / "medium.net"
SHORT = ["--epochs", "1", "--limit", "200", "--val-limit", "200", "--test-limit", "200"]
linux_only = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")


def _cli(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    """A real `python -m chaosgen.cli` process of this checkout (SIGINT at its default even if
    this suite runs with it ignored, as under nohup)."""
    kw.setdefault("preexec_fn", default_sigint)
    return subprocess.Popen(
        [sys.executable, "-m", "chaosgen.cli", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _tasks(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@linux_only
@pytest.mark.parametrize("threads", [1, 2])
def test_ctrl_c_mid_epoch_reports_and_saves_exactly_the_images_trained(tmp_path, threads):
    """SIGINT once the training thread runs: the message's count is the images trained (> 0),
    and with one thread the partial checkpoint holds exactly the weights of that many images."""
    how = ["--scheme", "sequential"] if threads == 1 else ["--threads", "2"]
    ck_dir = tmp_path / "ck"
    proc = _cli("train", str(MEDIUM), *how, "--data", str(DATA), "--checkpoint-dir", str(ck_dir))
    try:
        for line in proc.stdout:  # the banner: compiled, MNIST loaded
            if line.startswith("medium ("):
                break
        idle = _tasks(proc.pid)
        while _tasks(proc.pid) <= idle and proc.poll() is None:  # the native call's thread
            time.sleep(0.01)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    m = re.search(r"interrupted in epoch 1 after (\d+) images", err)
    assert m and "Traceback" not in err, err
    n = int(m.group(1))
    assert 0 < n < 60000
    ck = checkpoint.load(ck_dir / "last.npz")
    assert (ck.epoch, ck.partial) == (0, True)
    if threads == 1:  # deterministic: train the same n images here and compare bit for bit
        net = chaosgen.compile(MEDIUM)
        t = net.ir.training
        net.init_weights(t.seed)
        mnist = load_mnist(DATA)
        order = np.random.default_rng(t.seed).permutation(60000)[:n].astype(np.int32)
        rt = train.Runtime(net)
        cfg = train.Config(scheme="sequential", threads=1)
        st = rt.train(rt.images(mnist.train_images), mnist.train_labels, order, cfg, t.eta)
        assert st.images == n
        assert np.array_equal(ck.params, net.params)


@linux_only
def test_a_burst_of_ctrl_c_still_saves_and_says_so_once(tmp_path):
    """Ctrl-C pressed again and again: the first stops training, the others are ignored while
    the checkpoint is written and the process exits. Before: a later one interrupted that (exit
    130 or -2, no message, tracebacks from the interpreter's shutdown)."""
    ck_dir = tmp_path / "ck"
    proc = _cli("train", str(SMALL), "--threads", "2", "--data", str(DATA),
                "--checkpoint-dir", str(ck_dir))  # fmt: skip
    try:
        for line in proc.stdout:
            if line.startswith("small ("):
                break
        idle = _tasks(proc.pid)
        while _tasks(proc.pid) <= idle and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(0.5)
        while proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            time.sleep(0.0005)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    where = re.escape(f"; checkpoint {ck_dir / 'last.npz'}")
    assert re.fullmatch(rf"chaosgen: error: interrupted in epoch 1 after \d+ images{where}\n", err)
    assert checkpoint.load(ck_dir / "last.npz").partial


def test_an_absurd_thread_count_is_a_usage_error():
    """Before: a parallel region of 100,000 threads crashed the process (SIGSEGV)."""
    cap = threads.max_threads()
    for cmd in (["train", str(SMALL), *SHORT], ["eval", str(SMALL), "--weights", "none.npz"]):
        proc = _cli(*cmd, "--threads", "100000", "--data", str(DATA))
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, err
        assert f"chaosgen: error: --threads 100000 is more than {cap}" in err
        assert "Traceback" not in err and out == ""


def test_the_threads_that_ran_are_reported_and_logged(tmp_path):
    """OMP_THREAD_LIMIT gives fewer threads than --threads asks: banner and log say what ran,
    and a warning says it once; the usable CPUs logged are the process's, not the one CPU that
    OMP_PROC_BIND binds the main thread to once the library is loaded."""
    log = tmp_path / "run.jsonl"
    proc = _cli(
        "train", str(SMALL), "--threads", "2", *SHORT, "--data", str(DATA), "--log", str(log),
        "--checkpoint-dir", str(tmp_path / "ck"),
        env={"OMP_THREAD_LIMIT": "1", "OMP_PROC_BIND": "spread"},  # binding: to one CPU
    )  # fmt: skip
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "small (" in out and ": chaos, 1 thread, 1 epochs" in out
    warning = "chaosgen: warning: 2 threads asked for, OpenMP runs 1 (OMP_THREAD_LIMIT=1)"
    assert err.count(warning) == 1 and err.count("threads asked") == 1, err
    (rec,) = [json.loads(s) for s in log.read_text().splitlines()]
    assert (rec["config"]["threads"], rec["config"]["threads_asked"]) == (1, 2)
    assert rec["machine"]["usable_cpus"] == len(os.sched_getaffinity(0))


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs an affinity mask of two or more CPUs to shrink",
)
def test_the_default_thread_count_is_the_cpus_this_process_may_use(tmp_path):
    log = tmp_path / "run.jsonl"
    cpu = min(os.sched_getaffinity(0))
    proc = _cli(
        "train", str(SMALL), *SHORT, "--data", str(DATA), "--log", str(log),
        "--checkpoint-dir", str(tmp_path / "ck"),
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )  # fmt: skip
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert ": chaos, 1 thread, " in out and "threads asked" not in err, err
    (rec,) = [json.loads(s) for s in log.read_text().splitlines()]
    assert rec["config"]["threads"] == 1 and rec["machine"]["usable_cpus"] == 1


def _evaluate_in_child(rt: train.Runtime, x: np.ndarray, y: np.ndarray, conn) -> None:
    import io

    sys.stderr = io.StringIO()
    st = rt.evaluate(x, y, 2)
    order = np.arange(100, dtype=np.int32)
    tr = rt.train(x, y, order, train.Config(threads=2), 1e-4)
    conn.send((st.threads, st.errors, (tr.threads, tr.images), sys.stderr.getvalue()))


def test_a_child_forked_after_threads_ran_runs_on_one_thread_instead_of_hanging(small_mnist):
    """Evaluation and training in a child forked after threads ran here: one thread each, said
    once. Before: the child waited forever inside libgomp for its parent's thread pool."""
    net = chaosgen.compile(SMALL)
    rt = train.Runtime(net)
    x, y = rt.images(small_mnist.test_images[:500]), small_mnist.test_labels[:500]
    parent = rt.evaluate(x, y, 2)  # starts libgomp's threads in this process
    assert parent.threads == 2
    ctx = multiprocessing.get_context("fork")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=_evaluate_in_child, args=(rt, x, y, theirs))
    child.start()
    try:
        got = ours.recv() if ours.poll(120) else None
        child.join(30)
    finally:
        child.kill()
        child.join()
    assert got is not None, "the forked child hung"
    threads, errors, trained, err = got
    assert (threads, errors, trained) == (1, parent.errors, (1, 100))
    assert err.count("chaosgen: warning: this process was forked") == 1
    assert "'spawn' or 'forkserver'" in err
    assert child.exitcode == 0
    assert rt.evaluate(x, y, 2).threads == 2  # the parent itself is unaffected


@pytest.fixture(scope="module")
def small_mnist():
    return load_mnist(DATA)


def test_the_native_program_reports_its_threads_and_refuses_absurd_ones(tmp_path):
    """The standalone program (templates/main.cpp.j2) follows the same rules as chaosgen train."""
    from chaosgen.cli import main

    out = tmp_path / "program"
    assert main(["compile", str(SMALL), "--program", "--out", str(out)]) == 0
    exe = out / "chaosgen-small"
    bad = subprocess.run([exe, "--threads", "100000"], capture_output=True, text=True, cwd=out)
    assert bad.returncode == 2, bad.stderr
    cap = threads.max_threads()
    assert f"error: --threads 100000 is more than {cap}" in bad.stderr
    log = tmp_path / "run.jsonl"
    ok = subprocess.run(  # run.sh unpacks the gzipped IDX files the program reads
        [out / "run.sh", *SHORT, "--threads", "2", "--log", str(log), "--quiet"],
        capture_output=True, text=True, cwd=out,
        env={**os.environ, "OMP_THREAD_LIMIT": "1", "DATA": str(DATA)},
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "warning: 2 threads asked for, OpenMP runs 1" in ok.stderr
    (rec,) = [json.loads(s) for s in log.read_text().splitlines()]
    assert (rec["config"]["threads"], rec["config"]["threads_asked"]) == (1, 2)
    assert rec["machine"]["usable_cpus"] == len(os.sched_getaffinity(0))
