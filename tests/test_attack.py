"""Faults found by attacking the hardened commands and API (nan, inf and absurd flag values of
every subcommand, odd inputs to the Python API): each is one clean error, never an internal one,
a hang or a silently wrong result."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA  # the data is checked before the checkpoint is read

from chaosgen.cli import main
from chaosgen.errors import ChaosgenError


@pytest.mark.parametrize(
    ("argv", "flag", "what"),
    [
        (["calibrate"], "--seconds", "a number in (0, 3600]"),
        (
            ["data", "fetch", "--mirror", "http://127.0.0.1:1/"],
            "--timeout",
            "a number in (0, 3600]",
        ),
        (["predict", "specs/small.net"], "--epochs", "an integer in [1, 100,000]"),
        (["predict", "specs/small.net"], "--images", "an integer in [0, 2,147,483,647]"),
        (["predict", "specs/small.net"], "--val-images", "an integer in [0, 2,147,483,647]"),
        (["predict", "specs/small.net"], "--test-images", "an integer in [0, 2,147,483,647]"),
    ],
)
@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e30", "abc"])
def test_numeric_flags_outside_train_are_range_checked(argv, flag, what, value, capsys, in_repo):
    """Before: calibrate --seconds nan/inf and fetch --timeout inf/1e30 were internal errors,
    calibrate --seconds 1e30 ran for ever, predict --epochs 1e30... accepted any integer."""
    rc = main([*argv, flag, value])
    err = capsys.readouterr().err
    assert rc == 2, err
    (line,) = [s for s in err.splitlines() if s.startswith("chaosgen:")]
    parses = value != "abc" and (what.startswith("a number") or value == "-1")
    verb = "must be" if parses else "expected"
    assert line.startswith(f"chaosgen: error: argument {flag}: {verb} {what}, found "), line
    assert value in line


BIG = np.full((29, 29), 1e300)  # finite float64, inf as float32


@pytest.mark.parametrize(
    ("call", "message"),
    [
        # Before: 2.5 trained silently on class 2, "3" on class 3; nan/inf/None/"a" raised raw
        # ValueError, OverflowError or TypeError.
        (lambda n: n.gradients(np.zeros((29, 29)), 2.5), "label must be an integer in 0..9"),
        (lambda n: n.gradients(np.zeros((29, 29)), "3"), "label must be an integer in 0..9"),
        (lambda n: n.gradients(np.zeros((29, 29)), float("nan")), "label must be an integer"),
        (lambda n: n.loss(np.zeros((29, 29)), None), "label must be an integer in 0..9"),
        (lambda n: n.gradients(np.zeros((29, 29)), np.int64(10)), "label 10 is out of range"),
        # Before: NaN, inf and float64 overflow gave NaN outputs (or NaN gradients) silently.
        (lambda n: n.forward(np.full((29, 29), np.nan)), "input contains NaN or inf"),
        (lambda n: n.forward(np.full(841, np.inf)), "input contains NaN or inf"),
        (lambda n: n.forward(BIG), "input contains NaN or inf, or values beyond float32"),
        (lambda n: n.gradients(BIG, 3), "input contains NaN or inf"),
        # Before: a string was a raw ValueError, complex silently dropped its imaginary part.
        (lambda n: n.forward("abc"), "input has dtype <U3, expected real numbers"),
        (lambda n: n.forward(np.zeros((29, 29), complex)), "input has dtype complex128"),
        # Before: raw ValueError / TypeError from numpy's SeedSequence.
        (lambda n: n.init_weights(-1), "init_weights: seed -1 is out of range 0.."),
        (lambda n: n.init_weights(1.5), "init_weights: seed must be an integer"),
        # Before: TypeError "argument of type 'NoneType' is not iterable".
        (lambda n: n.set_weights(None), "set_weights: expected a dict of arrays"),
    ],
)
def test_python_api_misuse_is_a_clear_error(shipped_nets: dict, call, message) -> None:
    net = shipped_nets["small"]
    before = net.params.copy()
    with pytest.raises(ChaosgenError, match=re.escape(message)):
        call(net)
    np.testing.assert_array_equal(net.params, before)  # a rejected call changes nothing


def test_integer_labels_and_seeds_still_work(shipped_nets: dict) -> None:
    """numpy integers (labels as read from MNIST) and bools are integers; the result is the
    same as for the plain int."""
    net = shipped_nets["small"]
    x = np.zeros((29, 29), np.float32)
    assert net.loss(x, np.uint8(3)) == net.loss(x, 3)
    net.init_weights(np.int64(7))
    seven = net.params.copy()
    net.init_weights(7)
    np.testing.assert_array_equal(net.params, seven)


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("argv", "what"),
    [
        (["compile", "{fifo}"], "a spec"),
        (["import-weights", "specs/small.net", "{fifo}", "-o", "{tmp}/w.npz"], "a CGW1 weights"),
        (["export-weights", "specs/small.net", "{fifo}", "-o", "{tmp}/w.cgw"], "a checkpoint"),
        (["eval", "specs/small.net", "--weights", "{fifo}", "--data", DATA], "a checkpoint"),
        (["plot", "{fifo}", "--out", "{tmp}"], "a log or benchmark result"),
        (["plot", "--speedup", "{fifo}", "--out", "{tmp}"], "a log or benchmark result"),
        (["predict", "specs/small.net", "--machine", "{tmp}/m.json"], "a machine profile"),
        (["train", "specs/small.net", "--log", "{fifo}", "--checkpoint-dir", "{tmp}/ck"], "--log"),
    ],
)
def test_a_fifo_given_as_an_input_file_is_refused_not_waited_on(tmp_path, argv, what):
    """Before: every one of these blocked for ever in open() or read() (only the MNIST reader
    checked for a FIFO). A subprocess with a timeout, so that the old hang fails the test."""
    fifo = tmp_path / ("m.json" if "a machine profile" == what else "named.pipe")
    os.mkfifo(fifo)
    args = [a.format(fifo=fifo, tmp=tmp_path) for a in argv]
    proc = subprocess.run(
        [sys.executable, "-m", "chaosgen.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == (
        f"chaosgen: error: {fifo}: a FIFO (named pipe), not a regular file; {what}"
        + (" file" if what == "a CGW1 weights" else "")
        + " must be a file\n"
    )


def test_a_device_given_as_a_checkpoint_is_refused(tmp_path, capsys, in_repo):
    """Before: /dev/zero as --weights read as "contains pickled data"; a spec read as binary."""
    assert main(["eval", "specs/small.net", "--weights", "/dev/zero", "--data", DATA]) == 1
    err = capsys.readouterr().err
    assert err == (
        "chaosgen: error: /dev/zero: a device or socket, not a regular file; "
        "a checkpoint must be a file\n"
    )


def test_a_build_dir_that_is_not_utf8_is_a_clear_error(tmp_path, capsys, in_repo):
    """cffi encodes a library path as UTF-8. Before: internal error (UnicodeEncodeError)."""
    build = os.path.join(os.fsdecode(bytes(tmp_path) + b"/bad\xff\xfe"), "b")
    rc = main(["compile", "specs/small.net", "--build-dir", build, "--rebuild"])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert err.count("\n") == 1 and "internal error" not in err
    assert "bad<U+DCFF><U+DCFE>/b/small-native-" in err
    assert (
        "the library's path is not valid UTF-8, which cffi cannot load; build under a UTF-8 "
        "path (--build-dir or $CHAOSGEN_CACHE); nothing was published"
    ) in err
