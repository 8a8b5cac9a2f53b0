"""Helpers of the tests that drive a real `chaosgen train` process."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from conftest import ROOT


def sigint_after_start(argv: list[str], seconds: float) -> tuple[int, str]:
    """Run `chaosgen <argv>` from the checkout, send SIGINT `seconds` after its header line
    (printed once compiled and MNIST is loaded); returns its exit status and stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "chaosgen.cli", *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if "threads" in line:
            break
    time.sleep(seconds)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err
