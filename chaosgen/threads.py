"""Threads: how many this process may use, what --threads may ask for, and where OpenMP cannot
start any (a child forked after threads ran)."""

from __future__ import annotations

import functools
import os
import sys

from .errors import UsageError

# --threads above this many per usable CPU, or above MAX_THREADS, is a mistake: each thread holds
# a network instance, and a parallel region of 100,000 threads crashes the process in libgomp.
THREADS_PER_CPU = 16
MAX_THREADS = 1024


@functools.cache
def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), else every CPU of the machine.
    Taken once, at import: with OMP_PROC_BIND set, loading a network's library binds this thread
    to one CPU."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no sched_getaffinity on this OS
        return os.cpu_count() or 1


usable_cpus()


def max_threads() -> int:
    """The most worker threads chaosgen accepts here."""
    return min(MAX_THREADS, THREADS_PER_CPU * usable_cpus())


def resolve_threads(asked: int | None) -> int:
    """--threads, checked against max_threads(); default: the usable CPUs."""
    if asked is None:
        return usable_cpus()
    if asked > max_threads():
        raise UsageError(
            f"--threads {asked} is more than {max_threads()} (at most {THREADS_PER_CPU} per "
            f"usable CPU, {usable_cpus()} here, and at most {MAX_THREADS})"
        )
    return asked


# libgomp keeps its worker threads in a pool that fork() does not copy: a child forked after a
# multi-threaded call waits forever for them in its next parallel region with more than one
# thread (a known libgomp limitation; one thread works). So remember whether threads were
# started, and run such a child's phases on one thread.
_threads_started = False
_forked_after_threads = False
_fork_warned = False


def _after_fork_in_child() -> None:
    global _forked_after_threads
    _forked_after_threads = _forked_after_threads or _threads_started


os.register_at_fork(after_in_child=_after_fork_in_child)


def allowed_threads(threads: int) -> int:
    """The threads a native call may start here: `threads`, or 1 in a child forked after threads
    ran (said once); marks threads as started."""
    global _threads_started, _fork_warned
    if threads > 1 and _forked_after_threads:
        if not _fork_warned:
            _fork_warned = True
            print(
                "chaosgen: warning: this process was forked after chaosgen ran threads in its "
                "parent, and OpenMP (libgomp) cannot start threads in it without hanging: "
                "running on 1 thread; start worker processes with multiprocessing's 'spawn' or "
                "'forkserver' method to use more",
                file=sys.stderr,
            )
        return 1
    _threads_started = _threads_started or threads > 1
    return threads
