"""Helpers of the tests that drive a real `chaosgen train` process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from conftest import ROOT
from proc import default_sigint


def _tasks(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:  # not Linux, or the process is gone
        return 0


def sigint_after_start(argv: list[str], seconds: float) -> tuple[int, str]:
    """Run `chaosgen <argv>` from the checkout, send SIGINT `seconds` after training started (the
    header line is printed once compiled and MNIST is loaded; then, on Linux, the native call's
    thread appears); returns its exit status and stderr. SIGINT is at its default in the child
    even where this suite runs with it ignored (nohup)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "chaosgen.cli", *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    try:
        for line in proc.stdout:
            if "threads" in line:
                break
        idle = _tasks(proc.pid)
        deadline = time.monotonic() + 120
        while idle and _tasks(proc.pid) <= idle and proc.poll() is None:
            assert time.monotonic() < deadline, "training did not start within 120 s"
            time.sleep(0.01)
        time.sleep(seconds)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    return proc.returncode, err
