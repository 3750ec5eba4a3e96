"""Lab check functions: a passing attempt prints ``[PASS]``, a wrong one a ``[HINT]``, never a
bare traceback. Each lab has its own module (``deploykit.checks.lab01`` ...) built on these.

In solutions, the committed output is the ``[PASS]`` line, so strict ``--nbval`` fails if a
check stops passing.
"""
from __future__ import annotations

import functools
import os
import traceback
from pathlib import Path
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


def unfinished(value) -> bool:
    """True for what a lab's given code binds before an exercise is done: ``None``, ``...``, an empty
    dict/list/tuple/set/string."""
    if value is None or value is Ellipsis:
        return True
    return isinstance(value, (dict, list, tuple, set, frozenset, str)) and len(value) == 0


def require_result(value, name: str, exercise: str) -> None:
    """Inside a check: stop with a hint naming ``exercise`` when ``value`` (the learner's ``name``) is still
    the placeholder the lab binds before that exercise is done. The pattern for every lab: given code
    binds each result a check reads (``table = {}``, ``choice = None``) *before* the exercise's stub, so
    a blank exercise reaches the check as a placeholder, never as a ``NameError`` in the check cell."""
    require(not unfinished(value), f"`{name}` is empty: finish {exercise} (and run its cell) first")


def ready(exercise: str, **results) -> bool:
    """For a lab's given cell that uses earlier results: ``if lab07.ready("Exercise 2", files=files):``.
    True when every result is filled in; otherwise prints which exercise to finish and returns False,
    so a blank exercise leaves later cells quiet instead of raising ``KeyError`` far from its cause."""
    missing = [name for name, value in results.items() if unfinished(value)]
    if missing:
        print(f"(skipped: {', '.join(f'`{name}`' for name in missing)} still empty: finish {exercise} first)")
        return False
    return True


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


_PACKAGE = Path(__file__).resolve().parents[1]


def _raised_in_learner_code(error: BaseException) -> bool:
    """True if a frame of ``error``'s traceback, below the check, is the learner's code (a notebook cell or a
    file outside deploykit and the installed packages): then the learner's function failed. If every frame
    is deploykit's or a library's, the check failed on its own (or on a value it could not read)."""
    import sysconfig

    libraries = {Path(sysconfig.get_paths()[key]).resolve() for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    for frame in traceback.extract_tb(error.__traceback__)[1:]:   # [0] is the decorator's own call
        path = frame.filename
        if path.startswith("<") or "ipykernel" in path:
            return True
        resolved = Path(path).resolve()
        if not ({_PACKAGE, *libraries} & {resolved, *resolved.parents}):
            return True
    return False


def check(what: str, *, timed: bool = False) -> Callable:
    """Decorate a check body. It passes if it returns without raising :class:`CheckFailed`.

    A learner's code that is not written yet (``NotImplementedError``) or that crashes gets a
    hint naming the error instead of a traceback. An error raised with no learner code on the stack
    (the check failing on what it was given) is reported as such, never as "your code raised".
    ``timed=True`` marks a check that times something on this machine (its verdict may need a re-run
    on a quiet machine); ``tools/grade.py`` says so in its tables.
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
                if _raised_in_learner_code(error):
                    return hint(what, f"your code raised {type(error).__name__}: {error}")
                return hint(what, f"the check could not use what you passed ({type(error).__name__}: {error}). "
                            "Compare its type and contents with what the exercise asks for; if they match, the "
                            "check itself is at fault: report it to your instructor")
            return passed(what)

        run.timed = timed
        return run

    return decorate
