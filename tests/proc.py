"""Run a command from a test so that its failure explains itself.

`subprocess.run(..., check=True, capture_output=True)` fails with a bare CalledProcessError: the
output that says why is captured and never shown. `run` raises an AssertionError carrying the
command, its exit status and the tail of what it printed instead.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from collections.abc import Sequence

TAIL = 4000  # characters of each stream kept in the message


def run(
    cmd: Sequence[str | os.PathLike[str]], *, tail: int = TAIL, **kwargs
) -> subprocess.CompletedProcess[str]:
    """subprocess.run with text output captured; AssertionError with the output unless exit 0."""
    kwargs = {"capture_output": True, "text": True, **kwargs}
    args = [os.fspath(c) for c in cmd]
    try:
        proc = subprocess.run(args, **kwargs)
    except subprocess.TimeoutExpired as e:
        why = f"timed out after {e.timeout} s"
        raise AssertionError(explain(args, why, e.stdout, e.stderr, tail)) from None
    if proc.returncode != 0:
        why = f"exit status {proc.returncode}"
        raise AssertionError(explain(args, why, proc.stdout, proc.stderr, tail))
    return proc


def default_sigint() -> None:
    """preexec_fn for a child a test will send SIGINT: a shell that starts jobs in the background
    (nohup, `cmd &` in a script, some CI runners) leaves SIGINT ignored, the child inherits that,
    and Python then installs no KeyboardInterrupt handler, so the signal would do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def explain(
    args: Sequence[str],
    why: str,
    stdout: str | bytes | None,
    stderr: str | bytes | None,
    tail: int = TAIL,
) -> str:
    """The command, what went wrong and the last `tail` characters of each output stream."""
    parts = [f"command failed ({why}): {shlex.join(args)}"]
    for name, text in (("stdout", stdout), ("stderr", stderr)):
        if isinstance(text, bytes):  # TimeoutExpired keeps bytes even with text=True
            text = text.decode(errors="replace")
        text = (text or "").rstrip()
        if len(text) > tail:
            text = "[...]\n" + text[-tail:]
        parts.append(f"--- {name} ---\n{text}" if text else f"--- {name}: (empty)")
    return "\n".join(parts)
