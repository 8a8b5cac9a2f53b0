"""tests/proc.py: a failing command's assertion carries its command, exit status and output."""

from __future__ import annotations

import sys

import pytest
from proc import run


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
