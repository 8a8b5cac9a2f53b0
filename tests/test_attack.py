"""Faults found by attacking the hardened commands and API (nan, inf and absurd flag values of
every subcommand, odd inputs to the Python API): each is one clean error, never an internal one,
a hang or a silently wrong result."""

from __future__ import annotations

import re

import numpy as np
import pytest

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
