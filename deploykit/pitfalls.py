"""A gallery of small models that ``torch.jit.trace`` records wrongly (lecture 03, lab 02, lecture 04).

Tracing runs ``forward`` once on a sample input and records the tensor operations it saw. Python
that does not produce tensor operations (an ``if`` on a tensor's value, a loop count, a Python
number, the module's ``training`` flag, a Python side effect) is executed once, at trace time, and
its result is frozen into the graph. Each model here shows one of those cases.

Stable API (other notebooks rely on it)
---------------------------------------
``PITFALLS: dict[str, Pitfall]``
    The lecture gallery, in teaching order: ``"data_dependent_if"``, ``"data_dependent_loop"``,
    ``"baked_shape"``, ``"batch_loop"``, ``"python_number"``, ``"train_mode"``, ``"side_effect"``.
``LAB02: dict[str, Pitfall]``
    Lab 02's five models (four trace wrong, one is a decoy that traces fine).
``make(key) -> (model, seen_input, unseen_input)``
    A fresh, seeded model, the input to trace it with, and an input the trace did not see on which
    the traced model differs from eager. Inputs are tuples of tensors (call ``model(*inputs)``).
``Pitfall``
    ``.key``, ``.title``, ``.cls`` (the ``nn.Module`` class), ``.kind`` (one of :data:`KINDS`),
    ``.build()``, ``.seen()``, ``.unseen()``, ``.random_input(generator)`` (many inputs for parity
    checks), ``.observe(module, inputs)`` (what to compare: the output, or for the side-effect
    model the change of its call counter), ``.explanation``.
``trace(model, inputs, **kwargs) -> TraceResult``
    ``torch.jit.trace`` with its warnings captured: ``.module`` (or None if tracing raised),
    ``.warnings`` (``"Category: first sentence"``, sorted, de-duplicated, the TorchScript deprecation
    kept apart in ``.deprecations``), ``.error``.
``first_line(text)``, ``strip_source_comments(graph_text)``, ``error_head(exc, lines)``
    Deterministic printing helpers (no file paths, no line numbers).
``quiet()``
    A context manager that swallows what torch prints and logs while an export attempt fails
    (graph dumps, symbolic-shape log lines), so that only the error you print is shown.

All models are deterministic: ``build()`` seeds torch before creating parameters.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

KINDS = ("if", "loop", "shape", "number", "train_mode", "side_effect", "none")


# --------------------------------------------------------------------------- lecture 03 gallery


class DataDependentIf(nn.Module):
    """Doubles inputs whose sum is positive, negates the others: an ``if`` on a tensor's value."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return -x


class DataDependentLoop(nn.Module):
    """Halves the input once per unit of its largest magnitude: the loop count comes from the data."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = int(x.abs().max().ceil())
        for _ in range(steps):
            x = x * 0.5
        return x


class BakedShape(nn.Module):
    """Attention-style scaling by ``1/sqrt(features)``, computed with Python's ``math`` module."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / math.sqrt(x.shape[-1])


class BatchLoop(nn.Module):
    """Sums the rows of a batch one by one in a Python loop over ``range(x.shape[0])``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = torch.zeros_like(x[0])
        for i in range(x.shape[0]):
            total = total + x[i]
        return total


class PythonNumber(nn.Module):
    """Scales by the largest value, read out with ``.item()`` as a Python float."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.abs().max().item()
        return x / scale


class TrainModeNet(nn.Module):
    """Linear -> BatchNorm -> ReLU -> Dropout: two layers that behave differently in train mode."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(torch.relu(self.bn(self.fc(x))))


class SideEffect(nn.Module):
    """Counts its calls in a Python attribute (say, for telemetry) and doubles its input."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x * 2


# --------------------------------------------------------------------------- lab 02 models
# Lab 02 prints these classes' source for the learner to read, so their docstrings and bodies name no
# pitfall. For maintainers: A branches on a tensor's value (`if`); B loops a data-dependent number of
# times; C reads the median as a Python number; D is the decoy (shape-based reshape, traces correctly);
# E loops over the batch size (a shape, unrolled). The answers live in the lab's solution and checks.


class ReluIfNegativeMean(nn.Module):
    """Lab 02, model A."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 3 + 1
        if y.mean() < 0:
            y = torch.relu(y)
        return y - 1


class RepeatedSqrt(nn.Module):
    """Lab 02, model B."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.abs() + 1
        rounds = int(torch.log2(y.max()).ceil())
        for _ in range(rounds):
            y = torch.sqrt(y)
        return y


class ThresholdByMedian(nn.Module):
    """Lab 02, model C."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        threshold = float(x.median())
        return (x > threshold).float() * x


class FlattenByShape(nn.Module):
    """Lab 02, model D."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1).softmax(dim=1)


class RunningProduct(nn.Module):
    """Lab 02, model E."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = [x[0]]
        for i in range(1, x.shape[0]):
            out.append(out[-1] * x[i])
        return torch.stack(out)


# --------------------------------------------------------------------------- registry


def _default_observe(module, inputs: tuple) -> torch.Tensor:
    with torch.no_grad():
        return module(*inputs)


def _observe_calls(module, inputs: tuple) -> torch.Tensor:
    """For the side-effect model: how much the module's call counter moved during one call."""
    before = getattr(module, "calls", 0)  # a traced module has no `calls`: its forward is a graph
    with torch.no_grad():
        module(*inputs)
    return torch.tensor(float(getattr(module, "calls", 0) - before))


def _randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@dataclass(frozen=True)
class Pitfall:
    """One model that traces wrong (or, for a decoy, right), with the inputs that show it."""

    key: str
    title: str
    cls: type
    kind: str
    seen: Callable[[], tuple]
    unseen: Callable[[], tuple]
    random_input: Callable[[torch.Generator], tuple]
    explanation: str
    warns: bool  # does torch.jit.trace emit a TracerWarning for it (checked by tests/test_pitfalls.py)
    observe: Callable = field(default=_default_observe)
    train_mode: bool = False  # built in train mode (the mistake); deployment then calls .eval()

    def build(self) -> nn.Module:
        torch.manual_seed(0)
        model = self.cls()
        return model.train() if self.train_mode else model.eval()


def _batch_random(generator: torch.Generator) -> tuple:
    batch = int(torch.randint(1, 7, (1,), generator=generator))
    return (torch.randn(batch, 4, generator=generator) * 2,)


PITFALLS: dict[str, Pitfall] = {
    p.key: p
    for p in [
        Pitfall("data_dependent_if", "An if on a tensor's value", DataDependentIf, "if",
                lambda: (torch.ones(2, 3),), lambda: (-torch.ones(2, 3),),
                lambda g: (torch.randn(2, 3, generator=g),),
                "The trace ran the branch for a positive sum and recorded only `x * 2`; a negative input "
                "takes the same recorded path.", warns=True),
        Pitfall("data_dependent_loop", "A loop whose count comes from the data", DataDependentLoop, "loop",
                lambda: (torch.full((2, 3), 0.8),), lambda: (torch.full((2, 3), 3.0),),
                lambda g: (torch.randn(2, 3, generator=g) * 3,),
                "`int(...)` turned the step count into the Python number 1 at trace time; the loop was "
                "unrolled into that many multiplications.", warns=True),
        Pitfall("baked_shape", "A shape read into Python arithmetic", BakedShape, "shape",
                lambda: (torch.ones(2, 4),), lambda: (torch.ones(2, 16),),
                lambda g: (torch.randn(2, int(torch.randint(1, 9, (1,), generator=g)), generator=g),),
                "`math.sqrt(x.shape[-1])` became the constant 2.0 (sqrt of 4 features); 16 features still "
                "divide by 2.", warns=True),
        Pitfall("batch_loop", "A Python loop over the batch (silent)", BatchLoop, "shape",
                lambda: (torch.ones(3, 2),), lambda: (torch.ones(5, 2),),
                _batch_random,
                "`range(x.shape[0])` was unrolled for a batch of 3; a batch of 5 sums only its first 3 rows. "
                "The tracer gives no warning at all.", warns=False),
        Pitfall("python_number", "A Python number from .item()", PythonNumber, "number",
                lambda: (torch.ones(2, 3),), lambda: (torch.full((2, 3), 4.0),),
                lambda g: (torch.randn(2, 3, generator=g),),
                "`.item()` returned the Python float 1.0 at trace time; the graph divides by that constant.",
                warns=True),
        Pitfall("train_mode", "A model traced in train mode", TrainModeNet, "train_mode",
                lambda: (_randn(8, 4, seed=1),), lambda: (_randn(8, 4, seed=2),),
                lambda g: (torch.randn(8, 4, generator=g),),
                "Dropout and BatchNorm were recorded in their training form; calling `.eval()` on the traced "
                "module later does not change the recorded operators.", warns=True, train_mode=True),
        Pitfall("side_effect", "A Python side effect", SideEffect, "side_effect",
                lambda: (torch.ones(2),), lambda: (torch.ones(2),),
                lambda g: (torch.randn(2, generator=g),),
                "`self.calls += 1` is Python, not a tensor operation: it ran while tracing and never again. "
                "What is observed here is how far the counter moves per call.", warns=False,
                observe=_observe_calls),
    ]
}

LAB02: dict[str, Pitfall] = {
    p.key: p
    for p in [
        Pitfall("A", "Model A", ReluIfNegativeMean, "if",
                lambda: (torch.ones(2, 3),), lambda: (-torch.ones(2, 3),),
                lambda g: (torch.randn(2, 3, generator=g),),
                "The trace saw a positive mean and recorded no ReLU.", warns=True),
        Pitfall("B", "Model B", RepeatedSqrt, "loop",
                lambda: (torch.full((2, 3), 2.0),), lambda: (torch.full((2, 3), 100.0),),
                lambda g: (torch.randn(2, 3, generator=g) * 50,),
                "`int(...)` froze the number of square roots at the traced value.", warns=True),
        Pitfall("C", "Model C", ThresholdByMedian, "number",
                lambda: (torch.arange(6.0).reshape(2, 3),), lambda: (torch.arange(6.0).reshape(2, 3) + 10,),
                lambda g: (torch.randn(2, 3, generator=g) * 5,),
                "`float(x.median())` froze the threshold at the traced median.", warns=True),
        Pitfall("D", "Model D", FlattenByShape, "none",
                lambda: (torch.ones(2, 3, 4),), lambda: (torch.ones(5, 2, 2),),
                lambda g: (torch.randn(int(torch.randint(1, 6, (1,), generator=g)), 3, 4, generator=g),),
                "`x.shape[0]` passed straight to `reshape` is recorded as a size operation: this one traces "
                "correctly.", warns=False),
        Pitfall("E", "Model E", RunningProduct, "shape",
                lambda: (torch.full((2, 4), 2.0),), lambda: (torch.full((4, 4), 2.0),),
                _batch_random,
                "`range(1, x.shape[0])` was unrolled for the traced batch size; the output keeps that "
                "many rows, silently.", warns=False),
    ]
}


def _lookup(key: str) -> Pitfall:
    if key in PITFALLS:
        return PITFALLS[key]
    if key in LAB02:
        return LAB02[key]
    raise KeyError(f"unknown pitfall {key!r}; expected one of {sorted(PITFALLS)} or lab 02's {sorted(LAB02)}")


def make(key: str) -> tuple[nn.Module, tuple, tuple]:
    """``(model, seen_input, unseen_input)`` for a gallery or lab 02 key. Inputs are tuples."""
    pitfall = _lookup(key)
    return pitfall.build(), pitfall.seen(), pitfall.unseen()


# --------------------------------------------------------------------------- tracing helpers


def first_line(text: str) -> str:
    """The first non-empty line of ``text``, with file paths and line numbers removed."""
    for line in str(text).splitlines():
        line = line.strip()
        if line:
            line = re.sub(r"(/[^\s:'\"]+)+\.py(:\d+)?", "<file>", line)
            return line
    return ""


def strip_source_comments(graph_text: str) -> str:
    """A TorchScript graph printout without its ``# /path/file.py:12:4`` source comments.

    Also drops the ``___torch_mangle_N.`` prefixes TorchScript adds to class names (N counts the
    classes compiled so far, so it changes when cells run in another order)."""
    text = "\n".join(re.sub(r"\s+#\s.*$", "", line) for line in str(graph_text).splitlines())
    return re.sub(r"___torch_mangle_\d+\.", "", text)


def error_head(exc: BaseException, lines: int = 3) -> str:
    """``"ErrorType: ..."`` and the first ``lines`` non-empty lines of its message, paths removed."""
    body = [first_line(line) for line in str(exc).splitlines() if line.strip()][:lines]
    return f"{type(exc).__name__}: " + "\n    ".join(body)


@contextlib.contextmanager
def quiet():
    """Silence torch's stdout/stderr prints and log records (not exceptions) inside the block."""
    torch_logger = logging.getLogger("torch")
    level = torch_logger.level
    torch_logger.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        torch_logger.setLevel(level)


@dataclass
class TraceResult:
    module: object | None
    warnings: list[str]
    deprecations: list[str]
    error: str | None = None

    def __repr__(self) -> str:
        state = f"error {self.error!r}" if self.error else "traced"
        return f"TraceResult({state}, warnings={self.warnings})"


def format_warning(record) -> str:
    """``"Category: first sentence"`` of a captured warning (no paths, no line numbers)."""
    sentence = re.split(r"\.\s+(?=[A-Z])", first_line(record.message))[0].rstrip(".")
    return f"{record.category.__name__}: {sentence}"


def trace(model: nn.Module, inputs: tuple, **kwargs) -> TraceResult:
    """``torch.jit.trace(model, inputs, **kwargs)`` with every warning captured, never printed.

    Warnings are returned sorted and de-duplicated (the tracer's own sanity check traces twice,
    so each appears twice otherwise). ``FutureWarning`` deprecation notices of TorchScript are
    kept apart in ``deprecations``. If tracing raises, ``module`` is None and ``error`` holds
    ``"ErrorType: first line"``.
    """
    if not isinstance(inputs, tuple):
        inputs = (inputs,)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        try:
            traced = torch.jit.trace(model, inputs, **kwargs)
            error = None
        except Exception as exc:  # noqa: BLE001 - the error is the lesson
            traced, error = None, f"{type(exc).__name__}: {first_line(exc)}"
    found = {format_warning(r) for r in records}
    deprecations = sorted(w for w in found if w.startswith("FutureWarning"))
    others = sorted(w for w in found if not w.startswith("FutureWarning"))
    return TraceResult(traced, others, deprecations, error)


def observe(pitfall: Pitfall, module, inputs: tuple) -> torch.Tensor:
    """What the gallery compares for ``pitfall`` (its output, or its side effect)."""
    return pitfall.observe(module, inputs)


def agree(pitfall: Pitfall, eager, candidate, inputs: tuple, atol: float = 1e-5) -> bool:
    """True if ``candidate`` matches ``eager`` on ``inputs`` (same shape, values within ``atol``)."""
    try:
        a = observe(pitfall, eager, inputs)
        b = observe(pitfall, candidate, inputs)
    except Exception:  # noqa: BLE001 - a candidate that crashes does not agree
        return False
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=atol, rtol=1e-5))


__all__ = [
    "KINDS", "LAB02", "PITFALLS", "Pitfall", "TraceResult", "agree", "error_head", "first_line", "make", "observe",
    "quiet", "strip_source_comments", "trace",
]
