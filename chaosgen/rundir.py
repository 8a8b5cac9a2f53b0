"""The run directory of `chaosgen train`: the checkpoint directory (locked against a second
writer, cleaned of stale temporary files) and the epoch log, kept in agreement with the checkpoint.

The checkpoint is the truth: it carries every epoch record, is written first (atomically), and the
log line is appended second. Whatever moment a run is killed at, the log then holds a prefix of the
checkpoint's records, perhaps with a torn last line; `sync_log` repairs that on --resume.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

from .build import atomic_write
from .errors import ChaosgenError, refuse_special_file

LOCK_NAME = ".lock"
OWNER_NAME = ".lock.owner"  # who holds the lock: pid, host, command, since when


def _os_error(path: Path, what: str, e: OSError) -> ChaosgenError:
    return ChaosgenError(f"{path}: {what}: {e.strerror or e}")


class RunDir:
    """A locked checkpoint directory (or none) and an optional log file, checked for writing."""

    def __init__(self, checkpoint_dir: Path | None, log: Path | None):
        self.dir, self.log = checkpoint_dir, log
        self._lock: FileLock | None = None
        self._log_fd: int | None = None
        self._log_made = False

    def open(self) -> RunDir:
        """Check both locations can be written, lock the directory and the log (two runs with
        different directories may name the same --log), remove stale temp files."""
        try:
            if self.log is not None:  # first: an unwritable log leaves no directory behind
                check_log_path(self.log)
                self._lock_log(self.log)
            if self.dir is not None:
                self._lock = lock_dir(self.dir)
                for tmp in self.dir.glob(".*.tmp"):  # atomic_write's leftovers: no writer alive
                    tmp.unlink(missing_ok=True)
                ck = self.dir / "last.npz"
                if ck.is_dir():
                    raise ChaosgenError(f"{ck}: is a directory, where the checkpoint is written")
        except BaseException:
            self.close()
            raise
        return self

    def _lock_log(self, log: Path) -> None:
        """An exclusive flock on the log file itself (no lock file beside a user's file; the log
        is only ever appended to and truncated in place, so the locked inode stays the log)."""
        self._log_made = not log.exists()
        try:
            self._log_fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            fcntl.flock(self._log_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._log_made = False  # the other run's file
            raise ChaosgenError(
                f"{log}: the log is in use by another run; wait for it to end or give another "
                "--log"
            ) from None
        except OSError as e:
            raise _os_error(log, "cannot write the log", e) from None

    def close(self) -> None:
        """Release the locks (a killed process releases them too: the kernel drops its flocks).
        A log this run created and never wrote to is removed: a run that fails before its first
        epoch leaves no file."""
        if self._log_fd is not None:
            assert self.log is not None
            if self._log_made and os.fstat(self._log_fd).st_size == 0:
                self.log.unlink(missing_ok=True)
            os.close(self._log_fd)
            self._log_fd = None
        if self._lock is not None:
            assert self.dir is not None
            (self.dir / OWNER_NAME).unlink(missing_ok=True)
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunDir:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


def lock_dir(directory: Path) -> FileLock:
    """Create `directory` if needed and take its lock, or say which process holds it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock = FileLock(directory / LOCK_NAME)
        lock.acquire(timeout=0)
    except Timeout:
        raise ChaosgenError(
            f"{directory}: checkpoint directory in use by {_owner(directory)}; wait for that run "
            "to end or give another --checkpoint-dir"
        ) from None
    except OSError as e:
        raise _os_error(directory, "cannot create or lock the checkpoint directory", e) from None
    owner = {
        "pid": os.getpid(),
        "host": platform.node(),
        "command": shlex.join(sys.argv),
        "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    try:
        atomic_write(directory / OWNER_NAME, json.dumps(owner) + "\n")
    except OSError as e:
        lock.release()
        raise _os_error(directory, "cannot write in the checkpoint directory", e) from None
    return lock


def _owner(directory: Path) -> str:
    try:
        o = json.loads((directory / OWNER_NAME).read_text())
        return f"pid {o['pid']} on {o['host']} ({o['command']}) since {o['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its owner file is not written yet or unreadable)"


def check_log_path(log: Path) -> None:
    """The log must be a file (RunDir's lock opens it for writing, which checks the rest)."""
    if log.is_dir():
        raise ChaosgenError(f"{log}: is a directory; --log wants a file")
    refuse_special_file(log, "--log")


def refuse_used_log(log: Path) -> None:
    """A fresh run never deletes a log nor mixes two runs in one: a non-empty log is refused."""
    if log.exists() and log.stat().st_size > 0:
        raise ChaosgenError(
            f"{log}: the log is not empty (it holds another run's epochs); continue that run "
            "with --resume, or give another --log (chaosgen never deletes a log)"
        )


def read_log(log: Path) -> tuple[list[dict], int]:
    """The log's epoch records and the byte length of its whole lines (a torn tail after it)."""
    try:
        data = log.read_bytes() if log.exists() else b""
    except OSError as e:
        raise _os_error(log, "cannot read the log", e) from None
    whole = data[: data.rfind(b"\n") + 1]
    records = []
    for n, line in enumerate(whole.splitlines(), 1):
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if not isinstance(rec, dict) or not isinstance(rec.get("epoch"), int):
            raise ChaosgenError(f"{log}:{n}: not an epoch record of chaosgen train")
        records.append(rec)
    return records, len(whole)


def sync_log(log: Path, records: list[dict], checkpoint: Path) -> str | None:
    """Make the log hold exactly the checkpoint's records: cut a torn last line, append the
    records a kill kept from it. Returns what was repaired (None if nothing)."""
    logged, size = read_log(log)
    have = [r["epoch"] for r in logged]
    want = [r["epoch"] for r in records]
    if have != want[: len(have)]:
        raise ChaosgenError(
            f"{log}: holds epochs {_span(have)} but the checkpoint {checkpoint} has epochs "
            f"{_span(want)}: they are from different runs; give another --log"
        )
    missing = records[len(have) :]
    torn = log.exists() and log.stat().st_size > size
    if not missing and not torn:
        return None
    try:
        with open(log, "r+b" if log.exists() else "wb") as f:
            f.truncate(size)
            f.seek(size)
            f.write(b"".join(json.dumps(r).encode() + b"\n" for r in missing))
    except OSError as e:
        raise _os_error(log, "cannot repair the log", e) from None
    what = ["a torn last line removed"] if torn else []
    if missing:
        what.append(f"epochs {_span([r['epoch'] for r in missing])} added from the checkpoint")
    return ", ".join(what)


def append_record(log: Path, rec: dict, checkpoint: Path | None) -> None:
    """Append one epoch record (after the checkpoint that holds it was written)."""
    try:
        with open(log, "a") as f:
            f.write(json.dumps(rec) + "\n")
    except OSError as e:
        later = f"; {checkpoint} has the epoch and --resume adds it" if checkpoint else ""
        raise _os_error(log, f"cannot append epoch {rec['epoch']} to the log{later}", e) from None


def _span(epochs: list[int]) -> str:
    if not epochs:
        return "none"
    return f"{epochs[0]}-{epochs[-1]}" if len(epochs) > 1 else str(epochs[0])
