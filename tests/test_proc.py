"""tests/proc.py: a failing command's assertion carries its command, exit status and output."""

from __future__ import annotations

import signal
import sys

import pytest
from proc import default_sigint, run


def test_failure_shows_command_status_and_output_tail() -> None:
    code = "import sys; print('x' * 5000 + 'OUT-END'); sys.stderr.write('ERR-END'); sys.exit(3)"
    with pytest.raises(AssertionError) as e:
        run([sys.executable, "-c", code])
    msg = str(e.value)
    assert msg.startswith("command failed (exit status 3): ")
    assert "OUT-END" in msg and "ERR-END" in msg and "[...]" in msg  # the tail, cut at the front
    assert len(msg) < 4000 + 1000


def test_timeout_shows_what_was_printed_so_far() -> None:
    code = "import time; print('started', flush=True); time.sleep(30)"
    with pytest.raises(AssertionError, match=r"timed out after 1 s(.|\n)*started"):
        run([sys.executable, "-c", code], timeout=1)


def test_success_returns_the_output() -> None:
    assert run([sys.executable, "-c", "print('hi')"]).stdout == "hi\n"


def test_default_sigint_gives_a_child_ctrl_c_back() -> None:
    """Started with SIGINT ignored (as under nohup), a Python child has no KeyboardInterrupt
    handler unless default_sigint restores the default first."""
    code = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    probe = [sys.executable, "-c", code]
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ignored = run(probe).stdout
        restored = run(probe, preexec_fn=default_sigint).stdout
    finally:
        signal.signal(signal.SIGINT, before)
    assert (ignored, restored) == ("False\n", "True\n")
