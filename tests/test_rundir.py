"""The run directory of `chaosgen train` (issue 10, sections 3 and 6): the log and the checkpoint
agree after any interruption, one writer per directory, flags on --resume, validated checkpoints,
output locations checked before any work, divergence and no-learning detection, flag ranges.
Real training on real MNIST, real processes, real file systems (tmpfs mounts where root may)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

import chaosgen
from chaosgen import checkpoint
from chaosgen.cli import main
from chaosgen.errors import ChaosgenError
from runs import sigint_after_start

DATA = Path(os.environ.get("CHAOSGEN_DATA") or ROOT.parent / "shared" / "data" / "mnist")
SMALL = "specs/small.net"


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def _run_args(run: Path, spec: str, *flags: str, log: bool = True) -> list[str]:
    """`train` arguments on two threads with the run's checkpoint directory and log in `run`."""
    argv = ["train", spec, "--threads", "2", *flags, "--data", str(DATA)]
    argv += ["--checkpoint-dir", str(run / "ck")]
    return argv + (["--log", str(run / "run.jsonl")] if log else [])


def _train(run: Path, *extra: str, log: bool = True) -> int:
    """`chaosgen train` of the small net on 1,000 images per epoch, in `run`."""
    flags = ("--limit", "1000", "--val-limit", "500", "--test-limit", "500", "--quiet")
    return main([*_run_args(run, SMALL, *flags, log=log), *extra])


def _log(run: Path) -> list[dict]:
    return [json.loads(s) for s in (run / "run.jsonl").read_text().splitlines()]


def _ck(run: Path) -> checkpoint.Checkpoint:
    return checkpoint.load(run / "ck" / "last.npz")


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("chaosgen: error: "), err
    return lines[0]


@contextlib.contextmanager
def _tmpfs(path: Path, options: str):
    """A real tmpfs mounted at `path` (root only), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(directory: Path) -> Path:
    """Fill a file system to the last byte; returns the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (1 << 16, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


# --- the log and the checkpoint agree ------------------------------------------------------------
def test_resume_repairs_a_log_that_lost_its_last_line_and_has_a_torn_one(tmp_path, capsys):
    """The state a kill -9 between the checkpoint's rename and the log's append leaves (epoch 2
    missing), plus the torn fragment of an interrupted append: --resume cuts the fragment and
    adds epoch 2 from the checkpoint, then trains epoch 3."""
    assert _train(tmp_path, "--epochs", "2") == 0
    log = tmp_path / "run.jsonl"
    first, second = log.read_text().splitlines()
    log.write_text(first + "\n" + second[:37])
    assert _train(tmp_path, "--epochs", "3", "--resume") == 0
    records = _log(tmp_path)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert json.dumps(records[1]) == second
    assert _ck(tmp_path).records == records


def test_a_full_disk_tears_the_log_and_resume_repairs_it(tmp_path, capsys):
    """A real full file system under --log: the append tears the line and fails with one line
    naming the log (exit 1); the checkpoint holds the epoch; with space again --resume cuts the
    torn line and completes the log."""
    with _tmpfs(tmp_path / "fs", "size=64k") as fs:
        log = fs / "run.jsonl"
        argv = ["--log", str(log), "--profile"]  # records of about 1.7 KB
        epoch = 2
        assert _train(tmp_path, "--epochs", str(epoch), *argv, log=False) == 0
        # Until the log's last 4 KiB page has less room than a record.
        while 4096 - log.stat().st_size % 4096 > 1000:
            epoch += 1
            assert _train(tmp_path, "--epochs", str(epoch), "--resume", *argv, log=False) == 0
        size = log.stat().st_size
        filler = _fill(fs)
        capsys.readouterr()
        assert _train(tmp_path, "--epochs", str(epoch + 1), "--resume", *argv, log=False) == 1
        line = _one_error_line(capsys.readouterr().err)
        assert f"{log}: cannot append epoch {epoch + 1} to the log" in line
        assert "--resume adds it" in line and "No space left on device" in line
        assert log.stat().st_size > size and not log.read_bytes().endswith(b"\n")  # torn
        assert _ck(tmp_path).epoch == epoch + 1
        filler.unlink()
        assert _train(tmp_path, "--epochs", str(epoch + 2), "--resume", *argv, log=False) == 0
        records = [json.loads(s) for s in log.read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, epoch + 3))


def test_a_full_disk_under_the_checkpoint_keeps_the_last_good_one(tmp_path, capsys):
    """Full: refused at start, naming the directory. Nearly full (room for the lock's owner file,
    not for a checkpoint): the epoch's checkpoint fails with one line naming it, exit 1, the
    previous one intact and no temporary file left."""
    with _tmpfs(tmp_path / "fs", "size=256k") as fs:
        ck_dir = ["--checkpoint-dir", str(fs / "ck")]
        assert _train(tmp_path, "--epochs", "1", *ck_dir, log=False) == 0
        good = (fs / "ck" / "last.npz").read_bytes()
        filler = _fill(fs)
        capsys.readouterr()
        assert _train(tmp_path, "--epochs", "2", "--resume", *ck_dir, log=False) == 1
        assert _one_error_line(capsys.readouterr().err) == (
            f"chaosgen: error: {fs / 'ck'}: cannot write in the checkpoint directory: "
            "No space left on device"
        )
        os.truncate(filler, filler.stat().st_size - 8192)
        assert _train(tmp_path, "--epochs", "2", "--resume", *ck_dir, log=False) == 1
        assert _one_error_line(capsys.readouterr().err) == (
            f"chaosgen: error: {fs / 'ck' / 'last.npz'}: cannot write the checkpoint: No space "
            "left on device; the previous checkpoint is kept"
        )
        assert (fs / "ck" / "last.npz").read_bytes() == good
        assert sorted(p.name for p in (fs / "ck").iterdir()) == [".lock", "last.npz"]


def test_ctrl_c_while_evaluating_logs_the_epoch(tmp_path):
    """A real SIGINT while the medium net evaluates 60,000 validation images (it trains on 50):
    the epoch is checkpointed and logged with its evaluation marked interrupted, so the log never
    skips an epoch; --resume continues with the next."""
    common = _run_args(tmp_path, "specs/medium.net", "--limit", "50", "--test-limit", "100")
    rc, err = sigint_after_start([*common, "--epochs", "20"], 2.0)
    assert rc == 1 and "Traceback" not in err, err
    m = re.search(r"interrupted while evaluating epoch (\d+) \(logged", err)
    assert m, err
    epoch = int(m[1])
    records = _log(tmp_path)
    assert [r["epoch"] for r in records] == list(range(1, epoch + 1))
    assert records[-1]["evaluation"] == "interrupted" and records[-1]["test_error_rate"] is None
    assert records[-1]["train_images"] == 50
    ck = _ck(tmp_path)
    assert (ck.epoch, ck.partial, ck.records) == (epoch, False, records)
    resume = ["--epochs", str(epoch + 1), "--resume", "--quiet", "--val-limit", "100"]
    assert main([*common, *resume]) == 0
    assert [r["epoch"] for r in _log(tmp_path)] == list(range(1, epoch + 2))


def test_kill_9_at_any_moment_leaves_log_and_checkpoint_that_resume_agrees(tmp_path):
    """Real SIGKILLs at several moments of runs of short epochs (each checkpoint, log append and
    evaluation takes a few ms, so the kills land in all of them over the runs): after each, a
    --resume that finishes leaves a log equal to the checkpoint's records, epochs 1..n."""
    flags = ("--limit", "300", "--val-limit", "100", "--test-limit", "100", "--quiet")
    argv = _run_args(tmp_path, SMALL, *flags)
    done = 0
    for i, delay in enumerate((0.35, 0.8)):
        extra = ["--resume"] if i else []
        cmd = [sys.executable, "-m", "chaosgen.cli", *argv, "--epochs", "100000", *extra]
        proc = subprocess.Popen(cmd, cwd=ROOT)
        # Wait for the first epoch of this run, then kill it some time later.
        while not (tmp_path / "ck" / "last.npz").exists() or _ck(tmp_path).epoch <= done:
            time.sleep(0.02)
            assert proc.poll() is None
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = _ck(tmp_path).epoch
        assert main([*argv, "--epochs", str(done + 1), "--resume"]) == 0
        done += 1
        records = _log(tmp_path)
        assert [r["epoch"] for r in records] == list(range(1, done + 1))
        assert _ck(tmp_path).records == records
        assert not list((tmp_path / "ck").glob(".*.tmp"))


# --- --log semantics -----------------------------------------------------------------------------
def test_a_fresh_run_refuses_a_used_log_and_leaves_it_alone(tmp_path, capsys):
    assert _train(tmp_path, "--epochs", "1") == 0
    before = (tmp_path / "run.jsonl").read_bytes()
    ck_before = (tmp_path / "ck" / "last.npz").read_bytes()
    capsys.readouterr()
    assert _train(tmp_path, "--epochs", "1", "--data", str(tmp_path / "nowhere")) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line == (
        f"chaosgen: error: {tmp_path / 'run.jsonl'}: the log is not empty (it holds another "
        "run's epochs); continue that run with --resume, or give another --log (chaosgen never "
        "deletes a log)"
    )
    assert (tmp_path / "run.jsonl").read_bytes() == before
    assert (tmp_path / "ck" / "last.npz").read_bytes() == ck_before
    (tmp_path / "run.jsonl").write_text("")  # an empty log is free to use
    assert _train(tmp_path, "--epochs", "1") == 0
    assert [r["epoch"] for r in _log(tmp_path)] == [1]


# --- one writer per checkpoint directory -------------------------------------------------------
HOLD = """
import sys, time
from pathlib import Path
from chaosgen.rundir import lock_dir
lock = lock_dir(Path(sys.argv[1]))  # held while the object lives
print("locked", flush=True)
time.sleep(600)
"""


def test_a_second_run_on_a_locked_directory_is_refused_naming_the_first(tmp_path, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "ck"), "--marker"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        assert _train(tmp_path, "--epochs", "1", "--data", str(tmp_path / "nowhere")) == 1
        line = _one_error_line(capsys.readouterr().err)
        assert f"{tmp_path / 'ck'}: checkpoint directory in use by pid {holder.pid} on " in line
        assert "--marker" in line and " since 20" in line and "UTC" in line
        assert not (tmp_path / "run.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    # The killed holder's lock died with it; its stale temporary files are removed at start.
    stale = tmp_path / "ck" / ".last.npz.x1y2.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert _train(tmp_path, "--epochs", "1") == 0
    assert not stale.exists() and sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        ".lock",
        "last.npz",
    ]


HOLD_LOG = """
import sys
from pathlib import Path
from chaosgen.rundir import RunDir
run = RunDir(Path(sys.argv[1]), Path(sys.argv[2])).open()  # a run with its own directory
print("locked", flush=True)
sys.stdin.read()
run.close()
"""


def test_two_runs_with_one_log_second_is_refused_and_the_log_kept(tmp_path, capsys):
    """Two runs in different checkpoint directories naming the same --log would interleave
    their epochs in it: the second is refused in one line; nothing of the first is touched."""
    log = tmp_path / "run.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOG, str(tmp_path / "other"), str(log)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        assert _train(tmp_path, "--epochs", "1") == 1
        line = _one_error_line(capsys.readouterr().err)
        assert f"{log}: the log is in use by another run" in line
        assert log.exists() and log.stat().st_size == 0  # the holder's (empty) log, kept
        assert not (tmp_path / "ck" / "last.npz").exists()
    finally:
        holder.communicate("")  # the holder closes its run: an unused log it made is removed
    assert holder.returncode == 0 and not log.exists()
    assert _train(tmp_path, "--epochs", "1") == 0 and len(_log(tmp_path)) == 1


# --- flags on --resume ---------------------------------------------------------------------------
def test_resume_honours_eta_and_decay_and_notes_the_change(tmp_path, capsys):
    assert _train(tmp_path, "--epochs", "1", "--eta", "0.005", "--decay", "0.9") == 0
    capsys.readouterr()
    argv = ["--epochs", "3", "--resume", "--eta", "0.002", "--decay", "0.5"]
    assert _train(tmp_path, *argv[:-1], "0.5") == 0
    records = _log(tmp_path)
    assert [r["eta"] for r in records] == pytest.approx([0.005, 0.002, 0.001])
    assert records[1]["changed"] == {"decay": [0.9, 0.5], "eta": [pytest.approx(0.0045), 0.002]}
    assert "changed" not in records[2] and records[2]["config"]["decay"] == 0.5
    assert _ck(tmp_path).eta == pytest.approx(0.0005)


def test_resume_says_what_changed_on_stdout(tmp_path, capsys):
    """Flags not given keep the run's values (--limit 500); given ones are changes, said."""
    assert _train(tmp_path, "--epochs", "1", "--limit", "500") == 0
    capsys.readouterr()
    argv = [
        "train",
        SMALL,
        "--epochs",
        "2",
        "--resume",
        "--eta",
        "0.01",
        "--threads",
        "2",
        "--test-limit",
        "100",
        "--val-limit",
        "100",
        "--data",
        str(DATA),
        "--checkpoint-dir",
        str(tmp_path / "ck"),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert (
        "settings changed from the checkpoint's (noted in the next record): val_limit 500 -> "
        "100, test_limit 500 -> 100, eta 0.0009 -> 0.01\n"
    ) in out
    assert _ck(tmp_path).records[1]["train_images"] == 500


def test_resume_refuses_another_seed_and_nothing_to_do_touches_nothing(tmp_path, capsys):
    assert _train(tmp_path, "--epochs", "2", "--seed", "4") == 0
    files = {p: p.read_bytes() for p in (tmp_path / "run.jsonl", tmp_path / "ck" / "last.npz")}
    capsys.readouterr()
    assert _train(tmp_path, "--epochs", "3", "--resume", "--seed", "5") == 2
    assert _one_error_line(capsys.readouterr().err) == (
        "chaosgen: error: --seed 5: this run started with seed 4 and its shuffle continues from "
        "the checkpoint; drop --seed, or start a new run"
    )
    assert (
        main(
            [
                "train",
                SMALL,
                "--epochs",
                "2",
                "--resume",
                "--seed",
                "4",
                "--checkpoint-dir",
                str(tmp_path / "ck"),
                "--log",
                str(tmp_path / "run.jsonl"),
                "--data",
                str(tmp_path / "nowhere"),
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == (
        "nothing to do: 2 epochs done, --epochs 2; raise --epochs\n"
    )
    assert {p: p.read_bytes() for p in files} == files


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory) -> Path:
    """A run directory with one epoch of the small net, trained once for the module."""
    run = tmp_path_factory.mktemp("one-epoch")
    old = os.getcwd()
    os.chdir(ROOT)
    try:
        assert _train(run, "--epochs", "1", log=False) == 0
    finally:
        os.chdir(old)
    return run


# --- checkpoints validated on load --------------------------------------------------------------
def _fields(path: Path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("params", "nan", "field 'params' holds 1 NaN/inf values"),
        ("params", "inf", "field 'params' holds 1 NaN/inf values"),
        ("params", "float64", "field 'params' is float64 of shape"),
        ("params", "2d", "field 'params' is float32 of shape (1, 6480), expected float32 1-D"),
        ("epoch", np.int64(-1), "field 'epoch' is -1, expected at least 0"),
        ("epoch", np.float64(1.5), "field 'epoch' is float64, expected an integer"),
        ("eta", np.float64(-0.1), "field 'eta' is -0.1, expected a finite number > 0"),
        ("eta", np.float64(0), "field 'eta' is 0.0, expected a finite number > 0"),
        ("eta", np.float64(np.nan), "field 'eta' is nan, expected a finite number > 0"),
        ("eta", np.str_("fast"), "field 'eta' is <U4, expected a number"),
        ("partial", np.int64(3), "field 'partial' is int64, expected true or false"),
        ("net", np.array(["a", "b"]), "field 'net' has shape (2,), expected a single value"),
        ("rng", np.str_("[1, 2"), "field 'rng' is not a JSON dict"),
        ("records", np.str_("{}"), "field 'records' is not a JSON list"),
        ("records", np.str_("[]"), "field 'records' does not hold epochs 1-1"),
        ("ir_hash", None, "field 'ir_hash' is missing"),
    ],
)
def test_a_corrupt_checkpoint_is_refused_naming_the_field(
    one_epoch, tmp_path, capsys, field, value, message
):
    shutil.copytree(one_epoch / "ck", tmp_path / "ck")
    path = tmp_path / "ck" / "last.npz"
    z = _fields(path)
    if field == "params":
        p = z["params"].copy()
        z["params"] = {
            "nan": p,
            "inf": p,
            "float64": p.astype(np.float64),
            "2d": p.reshape(1, -1),
        }[value]
        if value in ("nan", "inf"):
            z["params"][7] = float(value)
    elif value is None:
        del z[field]
    else:
        z[field] = value
    bad = tmp_path / "bad.npz"
    np.savez(bad, **z)
    with pytest.raises(ChaosgenError) as e:
        checkpoint.load(bad)
    assert str(e.value).startswith(f"{bad}: not a valid chaosgen checkpoint: {message}")
    capsys.readouterr()
    assert main(["eval", SMALL, "--weights", str(bad), "--data", str(DATA)]) == 1
    assert _one_error_line(capsys.readouterr().err) == f"chaosgen: error: {e.value}"
    os.replace(bad, path)  # and --resume refuses it before any work
    assert _train(tmp_path, "--epochs", "2", "--resume", "--data", str(tmp_path / "no")) == 1
    assert message in _one_error_line(capsys.readouterr().err)


# --- output locations checked before any work ---------------------------------------------------
@pytest.mark.parametrize(
    "where, message",
    [
        ("ck-under-file", "cannot create or lock the checkpoint directory: Not a directory"),
        ("ck-is-file", "cannot create or lock the checkpoint directory: File exists"),
        ("log-is-dir", "is a directory; --log wants a file"),
        ("log-under-file", "cannot write the log: Not a directory"),
        ("log-dir-missing", "cannot write the log: No such file or directory"),
        ("ck-in-proc", "cannot create or lock the checkpoint directory: No such file or"),
    ],
)
def test_unwritable_outputs_are_refused_before_compiling_or_loading(
    tmp_path, capsys, where, message
):
    """--data names no directory: only an error about the outputs shows they came first."""
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    ck, log = tmp_path / "ck", tmp_path / "run.jsonl"
    ck, log = {
        "ck-under-file": (tmp_path / "file" / "ck", log),
        "ck-is-file": (tmp_path / "file", log),
        "log-is-dir": (ck, tmp_path / "dir"),
        "log-under-file": (ck, tmp_path / "file" / "run.jsonl"),
        "log-dir-missing": (ck, tmp_path / "missing" / "run.jsonl"),
        "ck-in-proc": (Path("/proc/self/no-such/ck"), log),
    }[where]
    bad = log if where.startswith("log") else ck
    rc = main(
        [
            "train",
            SMALL,
            "--checkpoint-dir",
            str(ck),
            "--log",
            str(log),
            "--data",
            str(tmp_path / "nowhere"),
            "--build-dir",
            str(tmp_path / "build"),
        ]
    )
    assert rc == 1
    assert _one_error_line(capsys.readouterr().err).startswith(
        f"chaosgen: error: {bad}: {message}"
    )
    assert not (tmp_path / "build").exists()  # nothing was compiled


def test_a_read_only_checkpoint_directory_is_refused_before_any_work(tmp_path, capsys):
    with _tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        rc = main(
            [
                "train",
                SMALL,
                "--checkpoint-dir",
                str(ro / "ck"),
                "--data",
                str(tmp_path / "nowhere"),
            ]
        )
    assert rc == 1
    assert _one_error_line(capsys.readouterr().err) == (
        f"chaosgen: error: {ro / 'ck'}: cannot create or lock the checkpoint directory: "
        "Read-only file system"
    )


# --- numbers -------------------------------------------------------------------------------------
def test_a_saturating_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    """eta 10 on the small net: the loss saturates near 61 per image while nothing becomes NaN;
    the run stops at that epoch instead of writing it. The advice works: --resume --eta."""
    assert _train(tmp_path, "--epochs", "1", "--limit", "2000") == 0
    good = (tmp_path / "ck" / "last.npz").read_bytes()
    log = (tmp_path / "run.jsonl").read_bytes()
    capsys.readouterr()
    assert _train(tmp_path, "--epochs", "2", "--limit", "2000", "--resume", "--eta", "10") == 1
    line = _one_error_line(capsys.readouterr().err)
    assert re.fullmatch(
        r"chaosgen: error: training diverged in epoch 2: the mean loss per image was \d\d\.\d, "
        r"above 6\.9 \(3 x ln 10, the loss of chance\) \(eta 10\); the last good checkpoint "
        + re.escape(str(tmp_path / "ck" / "last.npz"))
        + r" \(epoch 1\) is kept; try a smaller eta \(--resume --eta ETA continues from it\)",
        line,
    ), line
    assert (tmp_path / "ck" / "last.npz").read_bytes() == good
    assert (tmp_path / "run.jsonl").read_bytes() == log
    assert _train(tmp_path, "--epochs", "2", "--limit", "2000", "--resume", "--eta", "0.001") == 0
    assert [r["epoch"] for r in _log(tmp_path)] == [1, 2]


def test_runaway_weights_with_a_finite_loss_stop_the_run(tmp_path, capsys):
    """ReLU into a linear output with mse at eta 1: the weights pass 1e14 while loss and weights
    stay finite (mse has no chance-level loss to compare with): the weight bound stops it."""
    spec = tmp_path / "runaway.net"
    spec.write_text(
        "network runaway\ninput size=29x29\ndense h: units=40 activation=relu\n"
        "output out: classes=10 activation=linear loss=mse\n"
    )
    argv = ["train", str(spec), "--eta", "1", "--limit", "2000", "--threads", "1", "--epochs", "1"]
    argv += ["--quiet", "--data", str(DATA), "--checkpoint-dir", str(tmp_path / "ck")]
    assert main(argv) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert re.fullmatch(
        r"chaosgen: error: training diverged in epoch 1: a weight reached \d(\.\d+)?e\+\d\d "
        r"\(the bound is 1e\+06\) \(eta 1\); this run wrote no checkpoint; try a smaller eta",
        line,
    ), line
    assert not (tmp_path / "ck" / "last.npz").exists()


def test_a_run_that_learns_nothing_is_warned_about(tmp_path, capsys):
    assert _train(tmp_path, "--epochs", "1", "--limit", "2000", "--eta", "1e-9") == 0
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(
        r"chaosgen: warning: epoch 1: \d\d\.\d% of the validation images wrong, chance level "
        r"for 10 classes \(90\.0%\): the net learns nothing; eta 1e-09 may be too small",
        err,
    ), err
    assert _train(tmp_path, "--epochs", "2", "--resume", "--eta", "0.005") == 0
    assert capsys.readouterr().err == ""  # a run that learns: no warning


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--eta", "nan", "--eta must be a number in (0, 10], found nan"),
        ("--eta", "inf", "--eta must be a number in (0, 10], found inf"),
        ("--eta", "-0.1", "--eta must be a number in (0, 10], found -0.1"),
        ("--eta", "0", "--eta must be a number in (0, 10], found 0.0"),
        ("--eta", "50", "--eta must be a number in (0, 10], found 50.0"),
        ("--decay", "40", "--decay must be a number in (0, 1], found 40.0"),
        ("--decay", "-0.5", "--decay must be a number in (0, 1], found -0.5"),
        ("--decay", "nan", "--decay must be a number in (0, 1], found nan"),
        ("--seed", "-1", "--seed must be an integer in [0, 9223372036854775807], found -1"),
        ("--seed", str(2**63), f"--seed must be an integer in [0, {2**63 - 1}], found {2**63}"),
        ("--epochs", "0", "--epochs must be an integer in [1, 100000], found 0"),
        ("--epochs", "100001", "--epochs must be an integer in [1, 100000], found 100001"),
        ("--limit", "0", "--limit must be an integer in [1, 2147483647], found 0"),
        ("--limit", str(10**12), f"--limit must be an integer in [1, 2147483647], found {10**12}"),
        ("--val-limit", "-5", "--val-limit must be an integer in [1, 2147483647], found -5"),
        ("--test-limit", str(2**31), "--test-limit must be an integer in [1, 2147483647]"),
        ("--update-every", "0", "--update-every must be an integer in [1, 2147483647], found 0"),
        ("--batch", str(2**40), "--batch must be an integer in [1, 2147483647]"),
    ],
)
def test_numeric_flags_out_of_range_are_usage_errors(tmp_path, capsys, flag, value, message):
    """The spec's ranges (chaosgen.check), exit 2, before any file is made."""
    rc = main(["train", SMALL, flag, value, "--checkpoint-dir", str(tmp_path / "ck")])
    assert rc == 2
    assert _one_error_line(capsys.readouterr().err).startswith(f"chaosgen: error: {message}")
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--update-every", "4"], "--update-every is the delayed scheme's"),
        (["--update-every", "4", "--scheme", "hogwild"], "this run's scheme is hogwild"),
        (["--batch", "64", "--scheme", "delayed"], "--batch is the averaged scheme's"),
    ],
)
def test_a_flag_of_another_scheme_is_a_usage_error(tmp_path, capsys, argv, message):
    """--update-every (delayed) and --batch (averaged) with a scheme that never reads them: exit
    2 naming the scheme that does, before any file is made (they were silently ignored)."""
    rc = main(["train", SMALL, *argv, "--checkpoint-dir", str(tmp_path / "ck")])
    assert rc == 2
    assert message in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "ck").exists()


def test_flag_ranges_are_the_specs(tmp_path, capsys):
    """One definition: the spec checker reports the same bounds as the flags."""
    spec = tmp_path / "s.net"
    text = (ROOT / SMALL).read_text()
    spec.write_text(re.sub(r"^train .*$", "train eta=11 decay=40", text, flags=re.M))
    assert main(["compile", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "train: 'eta' must be in (0, 10], found 11" in err
    assert "train: 'decay' must be in (0, 1], found 40" in err


def test_set_weights_checks_after_the_cast_to_float32():
    net = chaosgen.compile(SMALL)
    before = net.params.copy()
    w = net.get_weights()
    key = next(iter(w))
    for value, message in (
        (w[key].astype(np.float64) * 0 + 1e39, "contains NaN or inf, or values beyond float32"),
        (np.full(w[key].shape, np.nan), "contains NaN or inf"),
        (np.full(w[key].shape, "x"), f"{key} has dtype <U1, expected real numbers"),
        (w[key].astype(np.complex64), f"{key} has dtype complex64, expected real numbers"),
    ):
        with pytest.raises(ChaosgenError, match=re.escape(message)):
            net.set_weights({**w, key: value})
        assert np.array_equal(net.params, before)
    net.set_weights({**w, key: w[key].astype(np.float64) * 0 + 3e38})  # within range: kept
    assert net.get_weights()[key].max() == np.float32(3e38)
    net.params[:] = before
