"""Lab check functions: a passing attempt prints ``[PASS]``, a wrong one a ``[HINT]``, never a
bare traceback. Each lab has its own module (``deploykit.checks.lab01`` ...) built on these.

In solutions, the committed output is the ``[PASS]`` line, so strict ``--nbval`` fails if a
check stops passing.
"""
from __future__ import annotations

import functools
import os
from typing import Callable


class CheckFailed(Exception):
    """Raised inside a check to report a hint for the learner."""


class CheckResult:
    """What a check returns: true if it passed. It shows nothing in a notebook, because the
    check has already printed its ``[PASS]`` or ``[HINT]`` line."""

    def __init__(self, passed: bool, what: str, message: str = ""):
        self.passed, self.what, self.message = passed, what, message

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return f"CheckResult(passed={self.passed}, what={self.what!r})"

    def _ipython_display_(self) -> None:
        pass


def passed(what: str) -> CheckResult:
    print(f"[PASS] {what}")
    return CheckResult(True, what)


class CheckNotPassed(AssertionError):
    """Raised after a hint when ``DEPLOYKIT_STRICT_CHECKS=1``: how an autograder (nbgrader) sees a failed check."""


def hint(what: str, message: str) -> CheckResult:
    print(f"[HINT] {what}: {message}")
    if os.environ.get("DEPLOYKIT_STRICT_CHECKS") == "1":   # set by instructors for `nbgrader autograde`
        raise CheckNotPassed(f"{what}: {message}")
    return CheckResult(False, what, message)


def require(condition: bool, message: str) -> None:
    """Inside a check: stop with ``message`` as the hint when ``condition`` is false."""
    if not condition:
        raise CheckFailed(message)


def require_fair_benchmark(name: str, result, *, threads: int = 1, batch: int = 1,
                           min_warmup: int = 1, min_repeats: int = 20) -> None:
    """Inside a check: ``result`` is a ``dk.benchmark`` result taken at ``threads`` and ``batch``,
    with at least ``min_warmup`` warm-up calls and ``min_repeats`` timed runs."""
    from ..bench import BenchResult

    require(isinstance(result, BenchResult), f"{name} should be what dk.benchmark returns, got {type(result).__name__}")
    require(result.threads == threads, f"{name} records threads={result.threads}: set the runtime to {threads} thread(s) "
            f"(torch.set_num_threads / intra_op_num_threads={threads}) and pass threads={threads} to dk.benchmark")
    require(result.batch == batch, f"{name} records batch={result.batch}: time batches of {batch} and pass batch={batch}")
    require(result.warmup >= min_warmup, f"{name} used {result.warmup} warm-up call(s): the first calls are slower "
            f"(allocation, caches); use at least {min_warmup}")
    require(result.repeats >= min_repeats, f"{name} has {result.repeats} timed runs: use at least {min_repeats} "
            "for a stable median")
    require(0 < result.median_ms < 1000, f"{name} median {result.median_ms} ms is not a plausible per-call time")


def check(what: str) -> Callable:
    """Decorate a check body. It passes if it returns without raising :class:`CheckFailed`.

    A learner's code that is not written yet (``NotImplementedError``) or that crashes gets a
    hint naming the error instead of a traceback.
    """

    def decorate(body: Callable) -> Callable:
        @functools.wraps(body)
        def run(*args, **kwargs) -> CheckResult:
            try:
                body(*args, **kwargs)
            except CheckFailed as failure:
                return hint(what, str(failure))
            except NotImplementedError:
                return hint(what, "not written yet: replace the `raise NotImplementedError` stub with your code")
            except Exception as error:  # noqa: BLE001 - a learner's bug becomes a hint
                return hint(what, f"your code raised {type(error).__name__}: {error}")
            return passed(what)

        return run

    return decorate
