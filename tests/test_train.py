"""The CHAOS runtime on real MNIST: reproducibility, an independent SGD trajectory, accuracy per
scheme, checkpoints, resume, interrupts and divergence."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from reference import numpy_run

import chaosgen
from chaosgen import checkpoint
from chaosgen.cli import main
from chaosgen.data import load_mnist
from chaosgen.loader import initial_params
from chaosgen.train import Config, Runtime, Trainer
from runs import sigint_after_start

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CHAOSGEN_DATA") or ROOT.parent / "shared" / "data" / "mnist")
SMALL = "specs/small.net"


@pytest.fixture(scope="module", autouse=True)
def _at_root(tmp_path_factory):
    old = os.getcwd()
    os.chdir(ROOT)
    yield
    os.chdir(old)


@pytest.fixture(scope="module")
def mnist():
    return load_mnist(DATA)


@pytest.fixture(scope="module")
def small():
    os.chdir(ROOT)
    return chaosgen.compile(SMALL)


def _train(net, mnist, **kw) -> tuple[np.ndarray, list[dict]]:
    """Fresh weights from the spec's seed, then a Trainer run; returns final params and records."""
    net.init_weights(net.ir.training.seed)
    cfg = Config(**{"epochs": 1, "val_limit": 1000, "test_limit": 1000, **kw})
    records = Trainer(Runtime(net), mnist, cfg, quiet=True).run()
    return net.params.copy(), records


def test_sequential_is_bitwise_reproducible_and_one_thread_schemes_coincide(small, mnist):
    a, rec = _train(small, mnist, scheme="sequential", threads=1, limit=3000)
    b, _ = _train(small, mnist, scheme="sequential", threads=1, limit=3000)
    assert np.array_equal(a, b)
    assert rec[0]["train_images"] == 3000
    # With one thread, the schemes whose maths coincide give identical weights.
    for scheme, extra in (
        ("chaos", {}),
        ("hogwild", {}),
        ("delayed", {"update_every": 1}),
        ("averaged", {"batch": 1}),
    ):
        c, _ = _train(small, mnist, scheme=scheme, threads=1, limit=3000, **extra)
        assert np.array_equal(a, c), scheme


@pytest.mark.parametrize(
    "rule",
    [{}, {"momentum": 0.9, "weight_decay": 0.0005}, {"momentum": 0.5, "nesterov": True}],
    ids=["plain", "momentum_decay", "nesterov"],
)
def test_fused_dense_updates_equal_gradient_then_update_for_a_dense_first_net(
    rule, mnist, tmp_path
):
    """A net whose first layer is dense (its fused update reads the image itself), whose dense
    blocks span several lock segments and whose ReLU rows are skipped when their delta is zero,
    with per-layer multipliers: chaos (fused, the SGD step computing the gradient as it goes)
    == averaged, B=1 (through G): bitwise for the paper's rule; with momentum, weight decay or
    Nesterov within rounding (g = dz x + wd w: gcc may fuse the product into the addition, an
    FMA the stored gradient cannot have; measured 1.8e-7 after 2000 images, weights up to 0.65)."""
    spec = tmp_path / "mlp.net"
    spec.write_text(
        "network mlp\ninput size=29x29\ndense h: units=40 activation=relu\n"
        "dense h2: units=30 activation=relu lr_mult=0.5 bias_decay_mult=0\n"
        "output out: classes=10\ntrain epochs=1 eta=0.01 seed=3\n"
    )
    net = chaosgen.compile(spec, build_dir=tmp_path / "build")
    a, _ = _train(net, mnist, scheme="chaos", threads=1, limit=2000, **rule)
    b, _ = _train(net, mnist, scheme="averaged", threads=1, batch=1, limit=2000, **rule)
    if rule:
        assert np.abs(a - b).max() <= 1e-5, np.abs(a - b).max()
    else:
        assert np.array_equal(a, b)
    assert not np.array_equal(a, initial_params(net.ir, 3))  # it trained


def test_one_thread_training_follows_an_independent_sgd_trajectory(small, mnist):
    """300 images of native training against plain float64 NumPy SGD in the same order."""
    net, eta, n = small, 0.01, 300
    net.init_weights(7)
    w0 = net.get_weights()
    order = np.random.default_rng(3).permutation(60000)[:n].astype(np.int32)
    rt = Runtime(net)
    images = rt.images(mnist.train_images[order])
    rt.train(
        images,
        mnist.train_labels[order],
        np.arange(n, dtype=np.int32),
        Config(scheme="sequential", threads=1),
        eta,
    )
    got = net.get_weights()

    ref = {k: v.astype(np.float64) for k, v in w0.items()}
    for i in order:
        r = numpy_run(net.ir, ref, mnist.train_images[i], int(mnist.train_labels[i]))
        for k in ref:
            ref[k] -= eta * r.grads[k]
    for k in ref:
        moved = np.abs(ref[k] - w0[k]).max()
        assert moved > 1e-3, f"{k} barely moved: not a meaningful trajectory"
        err = np.abs(got[k] - ref[k]).max()
        assert err <= 1e-4 * max(1.0, np.abs(ref[k]).max()), f"{k}: {err:.2e}"


@pytest.mark.parametrize("scheme", ["chaos", "hogwild", "delayed", "averaged"])
def test_one_epoch_with_two_threads_reaches_paper_accuracy(small, mnist, scheme):
    """One epoch of the small net on all 60,000 images: test error rate <= 4.5%."""
    _, rec = _train(small, mnist, scheme=scheme, threads=2, test_limit=None)
    assert rec[0]["train_images"] == 60000 and rec[0]["test_images"] == 10000
    assert rec[0]["test_error_rate"] <= 0.045, rec[0]


def _cli_train(tmp_path, *extra: str) -> int:
    return main(
        [
            "train",
            SMALL,
            "--threads",
            "2",
            "--limit",
            "2000",
            "--val-limit",
            "1000",
            "--test-limit",
            "1000",
            "--quiet",
            "--checkpoint-dir",
            str(tmp_path / "ck"),
            "--log",
            str(tmp_path / "run.jsonl"),
            "--data",
            str(DATA),
            *extra,
        ]
    )


def test_log_and_checkpoint_then_resume_continues_at_the_right_epoch(tmp_path):
    assert _cli_train(tmp_path, "--epochs", "1", "--eta", "0.005") == 0
    ck = checkpoint.load(tmp_path / "ck" / "last.npz")
    assert ck.epoch == 1 and ck.eta == pytest.approx(0.0045)
    assert _cli_train(tmp_path, "--epochs", "3", "--resume") == 0
    lines = [json.loads(s) for s in (tmp_path / "run.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert [r["eta"] for r in lines] == pytest.approx([0.005, 0.0045, 0.00405])
    for key in (
        "train_loss",
        "val_error_rate",
        "test_error_rate",
        "train_images_per_s",
        "seconds",
    ):
        assert all(key in r for r in lines), key
    assert all(0 <= r["test_error_rate"] <= 1 for r in lines)
    assert (
        lines[-1]["test_error_rate"] < 0.2
    )  # 6,000 images of training: sane, far from chance (0.9)
    assert lines[0]["machine"]["cpu"] and lines[0]["config"]["threads"] == 2
    assert checkpoint.load(tmp_path / "ck" / "last.npz").epoch == 3


def test_resume_keeps_the_runs_scheme_unless_told(tmp_path):
    """A --resume without --scheme continues with the checkpoint's scheme and its knob (here
    delayed, every 4 images), and --update-every is accepted for it; a --scheme given is a
    change of the run, recorded in the next epoch's line."""
    assert _cli_train(tmp_path, "--epochs", "1", "--scheme", "delayed", "--update-every", "4") == 0
    assert _cli_train(tmp_path, "--epochs", "2", "--resume", "--update-every", "4") == 0
    assert _cli_train(tmp_path, "--epochs", "3", "--resume", "--scheme", "chaos") == 0
    lines = [json.loads(s) for s in (tmp_path / "run.jsonl").read_text().splitlines()]
    assert [r["config"]["scheme"] for r in lines] == ["delayed", "delayed", "chaos"]
    assert [r["config"]["update_every"] for r in lines] == [4, 4, 4]
    assert "changed" not in lines[1] or "scheme" not in lines[1]["changed"]
    assert lines[2]["changed"]["scheme"] == ["delayed", "chaos"]
    # the checkpoint's scheme is chaos now: --batch is a usage error, the run untouched
    assert _cli_train(tmp_path, "--epochs", "4", "--resume", "--batch", "8") == 2
    assert checkpoint.load(tmp_path / "ck" / "last.npz").epoch == 3


def test_checkpoint_of_another_network_is_refused(tmp_path, capsys):
    assert _cli_train(tmp_path, "--epochs", "1") == 0
    rc = main(
        [
            "eval",
            "specs/medium.net",
            "--weights",
            str(tmp_path / "ck" / "last.npz"),
            "--data",
            str(DATA),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "written for network 'small'" in err and "Traceback" not in err
    assert (
        main(["eval", SMALL, "--weights", str(tmp_path / "ck" / "last.npz"), "--data", str(DATA)])
        == 0
    )


def test_divergence_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    assert _cli_train(tmp_path, "--epochs", "1") == 0
    good = (tmp_path / "ck" / "last.npz").read_bytes()
    spec = tmp_path / "linear.net"
    spec.write_text(
        "input maps=1 size=29x29\ndense units=30 activation=linear\n"
        "output classes=10 activation=linear loss=mse\n"
    )
    rc = main(
        [
            "train",
            str(spec),
            "--eta",
            "10",
            "--limit",
            "2000",
            "--quiet",
            "--data",
            str(DATA),
            "--checkpoint-dir",
            str(tmp_path / "ck"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "diverged in epoch 1" in err and "Traceback" not in err
    # The checkpoint there is another run's: not called this run's last good one.
    assert "this run wrote no checkpoint; try a smaller eta" in err
    assert (tmp_path / "ck" / "last.npz").read_bytes() == good


def test_ctrl_c_writes_a_checkpoint_and_resume_continues(tmp_path):
    """A real SIGINT to a real `chaosgen train` process in the middle of training."""
    spec = "specs/medium.net"  # epochs long enough to be interrupted inside one
    common = [
        sys.executable,
        "-m",
        "chaosgen.cli",
        "train",
        spec,
        "--threads",
        "2",
        "--data",
        str(DATA),
        "--checkpoint-dir",
        str(tmp_path / "ck"),
    ]
    rc, err = sigint_after_start([*common[3:], "--epochs", "3"], 1.5)
    assert rc == 1, err
    assert "Traceback" not in err
    m = re.search(r"interrupted (in|while evaluating) epoch (\d+)", err)
    assert m, err
    epoch, in_training = int(m.group(2)), m.group(1) == "in"
    ck = checkpoint.load(tmp_path / "ck" / "last.npz")
    # Mid-training: a partial checkpoint of the epoch; during evaluation: the trained epoch.
    assert (ck.partial, ck.epoch) == ((True, epoch - 1) if in_training else (False, epoch))
    resumed = subprocess.run(
        [
            *common,
            "--epochs",
            str(epoch),
            "--resume",
            "--quiet",
            "--limit",
            "500",
            "--val-limit",
            "500",
            "--test-limit",
            "500",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoint.load(tmp_path / "ck" / "last.npz").epoch == epoch


def test_bad_options_are_usage_errors(capsys):
    assert main(["train", SMALL, "--threads", "0"]) == 2
    assert main(["train", SMALL, "--scheme", "sequential", "--threads", "2"]) == 2
    assert "Traceback" not in capsys.readouterr().err
