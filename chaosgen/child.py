"""Child processes (the C++ compiler, helper programs) that never outlive chaosgen.

A compiler is a tree of processes (g++ -> cc1plus, as, collect2 -> ld). Killing only the process
chaosgen started would leave the rest running, so each child gets a process group of its own and
the whole group is killed on a timeout or when the call is interrupted (Ctrl-C, an exception).
On Linux the group also dies with chaosgen itself, even after kill -9: the child is a small shell
that the kernel sends SIGTERM when chaosgen dies (PR_SET_PDEATHSIG), and whose trap kills its
group.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence

from .errors import ChaosgenError

_PR_SET_PDEATHSIG = 1
GRACE_S = 1  # after SIGTERM (on which gcc's driver deletes its temporary files), then SIGKILL
# On SIGTERM or SIGHUP: SIGTERM to the whole group (`kill 0`; the trap ignores its own), a
# moment to clean up, then SIGKILL to whatever is left, the shell included. `wait` returns as
# soon as a trapped signal arrives, so the trap runs at once. Otherwise the shell exits with the
# command's status.
_GUARD = (
    f'trap \'trap "" TERM HUP; kill -TERM 0; sleep {GRACE_S}; kill -KILL 0\' TERM HUP; '
    '"$@" & wait $!'
)


def _libc_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _libc_prctl()  # looked up here, not in the forked child


def _die_with(parent: int) -> None:
    """In the forked child, before exec: SIGTERM when `parent` dies; exit if it already has."""
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # died before prctl took effect: nobody would signal us
        os._exit(1)


def run(
    cmd: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `cmd` to completion, capturing stdout and stderr as text. Its whole process group is
    killed if it runs past `timeout` (then subprocess.TimeoutExpired is raised), if this call is
    interrupted, or (Linux) if this process dies. OSError if it cannot be started."""
    cmd = [os.fspath(c) for c in cmd]
    argv, preexec = cmd, None
    if _PRCTL is not None:
        _check_runnable(cmd[0], cwd)  # the shell would only say "not found" (exit 127)
        argv = ["/bin/sh", "-c", _GUARD, "chaosgen-guard", *cmd]
        preexec = functools.partial(_die_with, os.getpid())
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a group of its own: killpg reaches the whole compiler tree
        preexec_fn=preexec,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise subprocess.TimeoutExpired(cmd, timeout or 0) from None  # the command, not the guard
    except BaseException:  # Ctrl-C or any other exception: leave no process behind
        kill_group(proc)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_json(
    cmd: Sequence[str],
    what: str,
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    error: type[Exception] = ChaosgenError,
) -> object:
    """Run a helper program of chaosgen's (a microbenchmark, a timing harness) that prints one
    JSON value, with `run`'s guarantees; its JSON decoded. Raises `error` naming `what` if it
    cannot start, runs past `timeout` seconds, exits non-zero or prints no valid JSON."""
    try:
        proc = run(cmd, env=env, timeout=timeout)
    except OSError as e:
        raise error(f"{what}: cannot run {cmd[0]}: {e.strerror}") from None
    except subprocess.TimeoutExpired:
        raise error(f"{what} did not finish in {timeout:g} s") from None
    if proc.returncode != 0:
        raise error(f"{what} failed (exit {proc.returncode}): {proc.stderr.strip()[:200]}")
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise error(f"{what} wrote no valid JSON: {proc.stdout.strip()[:200]!r}") from None


def kill_group(proc: subprocess.Popen) -> None:
    """Stop every process of `proc`'s group (it leads one of its own): SIGTERM, GRACE_S seconds
    to clean up, then SIGKILL; reap `proc`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):  # the group has already gone
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=GRACE_S + 1)  # the guard shell ends the group within GRACE_S
            break
    with contextlib.suppress(ProcessLookupError):  # anything left of a group without a guard
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(OSError, ValueError):  # pipes closed by an interrupted communicate
        proc.communicate()
    proc.wait()


def _check_runnable(exe: str, cwd: str | os.PathLike[str] | None) -> None:
    """OSError, as exec would raise it, if `exe` is not an executable file."""
    path = exe if "/" not in exe or os.path.isabs(exe) else os.path.join(cwd or ".", exe)
    if "/" not in exe:
        found = shutil.which(exe)
        if found is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), exe)
        path = found
    if not os.path.isfile(path):
        code = errno.EISDIR if os.path.isdir(path) else errno.ENOENT
        raise OSError(code, os.strerror(code), exe)
    if not os.access(path, os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), exe)
