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

:class:`LoadMonitor` measures what OTHER processes did to the machine while a job ran (all CPU time
the kernel counted in ``/proc/stat``, minus the CPU time of this process and of every process it
started): ``tools/execute_notebooks.py`` refuses to save a notebook executed while others were busy,
and stamps the figures into the notebook's metadata; ``tests/test_executed_quiet.py`` reads them.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from deploykit.bench import QUIET_OTHERS_FRACTION, cpu_seconds, others_busy_fraction  # noqa: E402

LOCK_PATH = Path(os.environ.get("COURSE_CPU_LOCK", "/tmp/course-cpu.lock"))
HELD_VARIABLE = "COURSE_CPU_LOCK_HELD"  # set for child processes, so a nested job does not wait on itself
QUIET_BUSY_FRACTION = QUIET_OTHERS_FRACTION  # at most this share of all CPUs busy before a job starts
# At most this share of all CPUs used by OTHER processes during a timed job (deploykit.bench says why).
MAX_OTHERS_BUSY_FRACTION = QUIET_OTHERS_FRACTION


def busy_fraction(seconds: float = 1.0) -> float:
    """Share of all CPU time spent busy (not idle or iowait) over ``seconds``, from /proc/stat."""
    before = cpu_seconds()
    time.sleep(seconds)
    after = cpu_seconds()
    return others_busy_fraction(before, after, 0.0) if before and after else 0.0


def _own_cpu_seconds() -> float:
    """CPU seconds of this process, of its finished (reaped) children, and of its live descendants."""
    times = os.times()
    seconds = times.user + times.system + times.children_user + times.children_system
    try:
        import psutil

        for child in psutil.Process().children(recursive=True):
            try:
                cpu = child.cpu_times()
                seconds += cpu.user + cpu.system + cpu.children_user + cpu.children_system
            except psutil.Error:
                pass
    except ImportError:
        pass
    return seconds


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages (zeros where the OS has none)."""
    try:
        return os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)


class LoadMonitor:
    """What other processes did to the CPUs while a job ran.

        with LoadMonitor() as monitor:
            ...  # run the notebook (its kernel is a child: its CPU time is ours, not "others")
        monitor.stamp()  # {"others_busy_fraction": 0.02, "others_busy_max": 0.05, ...}

    ``others_busy_fraction``: over the whole run, the share of all CPUs busy in processes that are not
    this one or its descendants. ``others_busy_max``: the highest such share over any ``interval``-second
    window (sampled by a thread; a descendant that exits between samples may hide its last moments).
    The load average is recorded too, but it counts the job's own threads, so it is not the criterion.
    """

    def __init__(self, interval: float = 2.0):
        self.interval = interval
        self.others_max = 0.0
        self._stop = None
        self._thread = None

    @staticmethod
    def _others(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
        return others_busy_fraction(before[:2], after[:2], after[2] - before[2])

    def _sample(self) -> tuple[float, float, float]:
        return (*cpu_seconds(), _own_cpu_seconds())

    def _watch(self) -> None:
        previous = self._sample()
        while not self._stop.wait(self.interval):
            current = self._sample()
            self.others_max = max(self.others_max, self._others(previous, current))
            previous = current

    def __enter__(self) -> "LoadMonitor":
        import threading

        self.load_start = load_average()[0]
        self.started = time.perf_counter()
        self.begin = self._sample() if cpu_seconds() is not None else None
        if self.begin is not None:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self.seconds = time.perf_counter() - self.started
        self.load_end = load_average()[0]
        self.others_fraction = self._others(self.begin, self._sample()) if self.begin is not None else 0.0
        self.others_max = max(self.others_max, self.others_fraction)

    @property
    def quiet(self) -> bool:
        return self.others_fraction <= MAX_OTHERS_BUSY_FRACTION

    def stamp(self, busy_fraction_start: float | None = None) -> dict:
        """Figures to record with the job's result (rounded: they are facts about one run)."""
        stamp = {
            "cpu": _cpu_model(),
            "logical_cores": os.cpu_count(),
            "load_1min_start": round(self.load_start, 2),
            "load_1min_end": round(self.load_end, 2),
            "others_busy_fraction": round(self.others_fraction, 3),
            "others_busy_max": round(self.others_max, 3),
            "max_others_busy_fraction": MAX_OTHERS_BUSY_FRACTION,
            "seconds": round(self.seconds, 1),
        }
        if busy_fraction_start is not None:
            stamp["busy_fraction_start"] = round(busy_fraction_start, 3)
        return stamp


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def wait_until_quiet(limit: float = QUIET_BUSY_FRACTION, timeout: float = 600.0, quiet_seconds: int = 3) -> float:
    """Block until the CPUs have been below ``limit`` busy for ``quiet_seconds`` in a row.

    Returns the last busy fraction. Raises TimeoutError when the machine stays busy."""
    if cpu_seconds() is None:
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
    """Hold the course's CPU lock and wait for idle CPUs (no-op inside a job that already holds it).

    Yields the busy fraction of the machine measured just before the job starts (None when nested)."""
    if os.environ.get(HELD_VARIABLE):
        yield None
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
            yield wait_until_quiet(timeout=timeout)  # the busy fraction the job started at
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
