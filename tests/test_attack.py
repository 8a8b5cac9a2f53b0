"""Faults found by attacking the hardened commands and API (nan, inf and absurd flag values of
every subcommand, odd inputs to the Python API): each is one clean error, never an internal one,
a hang or a silently wrong result."""

from __future__ import annotations

import pytest

from chaosgen.cli import main


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
