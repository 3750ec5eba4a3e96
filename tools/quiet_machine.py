#!/usr/bin/env python
"""One timing job at a time, on a quiet machine.

Everything that executes notebooks for committing (``tools/execute_notebooks.py``,
``tools/profile_notebooks.py``) runs inside :func:`quiet_machine`: it takes an exclusive lock
(``/tmp/course-cpu.lock``, or ``$COURSE_CPU_LOCK``) so two authors' jobs never share the cores, then
waits until the CPUs are idle (measured from ``/proc/stat`` over one second) before it starts.

    with quiet_machine():
        ...  # execute a notebook

A shell command that loads the CPU for long (a pytest run of notebooks) takes the same lock with
``python tools/quiet_machine.py -- COMMAND ...``.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

LOCK_PATH = Path(os.environ.get("COURSE_CPU_LOCK", "/tmp/course-cpu.lock"))
HELD_VARIABLE = "COURSE_CPU_LOCK_HELD"  # set for child processes, so a nested job does not wait on itself
QUIET_BUSY_FRACTION = 0.15  # at most this share of all CPUs busy before a job starts


def busy_fraction(seconds: float = 1.0) -> float:
    """Share of all CPU time spent busy (not idle or iowait) over ``seconds``, from /proc/stat."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    total = max(total1 - total0, 1)
    return 1.0 - (idle1 - idle0) / total


def wait_until_quiet(limit: float = QUIET_BUSY_FRACTION, timeout: float = 600.0, quiet_seconds: int = 3) -> float:
    """Block until the CPUs have been below ``limit`` busy for ``quiet_seconds`` in a row.

    Returns the last busy fraction. Raises TimeoutError when the machine stays busy."""
    if not Path("/proc/stat").exists():
        return 0.0  # not Linux: nothing to measure
    deadline = time.monotonic() + timeout
    quiet_in_a_row, busy = 0, 1.0
    while quiet_in_a_row < quiet_seconds:
        busy = busy_fraction()
        quiet_in_a_row = quiet_in_a_row + 1 if busy < limit else 0
        if time.monotonic() > deadline:
            raise TimeoutError(f"the machine stayed busy ({busy:.0%} of the CPUs in use) for {timeout:.0f} s; "
                               "timings taken now would not be results. Stop the other jobs and re-run.")
    return busy


@contextlib.contextmanager
def quiet_machine(timeout: float = 1800.0, verbose: bool = True):
    """Hold the course's CPU lock and wait for idle CPUs (no-op inside a job that already holds it)."""
    if os.environ.get(HELD_VARIABLE):
        yield
        return
    LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_PATH, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if verbose:
                print(f"waiting for another timing job to finish ({LOCK_PATH} is locked)", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        os.environ[HELD_VARIABLE] = "1"
        try:
            wait_until_quiet(timeout=timeout)
            yield
        finally:
            os.environ.pop(HELD_VARIABLE, None)
            fcntl.flock(handle, fcntl.LOCK_UN)


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "--" or len(argv) < 2:
        print("usage: python tools/quiet_machine.py -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    with quiet_machine():
        return subprocess.call(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
