"""Lab 02 (tracing pitfalls): checks for predicting, proving, fixing and verifying five models.

The models are ``deploykit.pitfalls.LAB02`` (``"A"`` ... ``"E"``): four trace wrong, one is a decoy.
Every check prints ``[PASS]`` or a ``[HINT]`` that points at the mistake without giving the answer.
"""
from __future__ import annotations

import warnings

import torch

from .. import pitfalls as P
from . import check, ready, require, require_result, unfinished

MODELS = P.LAB02
#: What the lab's given cells must never print (tests/test_lab_integrity.py): the answers of Exercise 1.
ANSWER_PHRASES = ("decoy", "traces correctly", "depends on the data", "read as a python float", "in a python loop",
                  "only for inputs whose mean")
WRONG = tuple(k for k, p in MODELS.items() if p.kind != "none")

_KIND_HINTS = {
    "if": "look for a Python `if` whose condition is a tensor",
    "loop": "look for a loop whose number of rounds is computed from tensor values",
    "number": "look for a tensor turned into a Python number (`float(...)`, `.item()`)",
    "shape": "look for a Python loop over a size of the input (`range(x.shape[...])`)",
    "none": "look again: is every use of the input a tensor operation the tracer records?",
}


@check("predict what goes wrong")
def check_predictions(predictions: dict) -> None:
    require_result(predictions, "predictions", "Exercise 1")
    require(not isinstance(predictions, dict) or not all(unfinished(v) for v in predictions.values()),
            "`predictions` is still all None: finish Exercise 1 (and run its cell) first")
    require(isinstance(predictions, dict), f"predictions should be a dict like {{'A': 'if', ...}}, got {type(predictions).__name__}")
    missing = sorted(set(MODELS) - set(predictions))
    require(not missing, f"predict every model; missing {missing}")
    for key, value in predictions.items():
        require(value in P.KINDS, f"model {key}: {value!r} is not one of {list(P.KINDS)}")
    for key in sorted(MODELS):
        want = MODELS[key].kind
        got = predictions[key]
        if got == want:
            continue
        if want == "none":
            require(False, f"model {key}: it traces correctly. `x.shape[0]` passed straight to a tensor method is "
                           "recorded as a size operation; only Python arithmetic or loops on sizes get frozen")
        if got == "none":
            require(False, f"model {key} does trace wrong: {_KIND_HINTS[want]}")
        require(False, f"model {key}: not {got!r}; {_KIND_HINTS[want]}")


@check("predict which traces warn")
def check_will_warn(will_warn: dict) -> None:
    require_result(will_warn, "will_warn", "Exercise 1")
    require(not isinstance(will_warn, dict) or not all(unfinished(v) for v in will_warn.values()),
            "`will_warn` is still all None: finish Exercise 1 (and run its cell) first")
    require(isinstance(will_warn, dict), f"will_warn should be a dict like {{'A': True, ...}}, got {type(will_warn).__name__}")
    missing = sorted(set(MODELS) - set(will_warn))
    require(not missing, f"answer for every model; missing {missing}")
    for key in sorted(MODELS):
        want = MODELS[key].warns
        require(isinstance(will_warn[key], bool), f"model {key}: answer True or False, got {will_warn[key]!r}")
        if will_warn[key] == want:
            continue
        if want:
            require(False, f"model {key} does raise a TracerWarning: the tracer warns when a tensor is converted "
                           "to a Python bool/int/float")
        require(False, f"model {key} raises no TracerWarning: check it with `P.trace(model, seen).warnings`. "
                       "A loop over `range(x.shape[0])` never converts a tensor, so the tracer has nothing to warn about")


def _as_inputs(value) -> tuple:
    if isinstance(value, torch.Tensor):
        return (value,)
    require(isinstance(value, tuple) and all(isinstance(v, torch.Tensor) for v in value),
            f"give the input as a tensor or a tuple of tensors, got {type(value).__name__}")
    return value


def _traced(key: str):
    model, seen, _ = P.make(key)
    result = P.trace(model, seen)
    require(result.module is not None, f"model {key} failed to trace: {result.error}")
    return model.eval(), result.module.eval(), seen


@check("inputs that prove each trace wrong")
def check_counterexamples(counterexamples: dict) -> None:
    require_result(counterexamples, "counterexamples", "Exercise 2")
    require(isinstance(counterexamples, dict), f"counterexamples should be a dict like {{'A': tensor, ...}}, got {type(counterexamples).__name__}")
    for key in sorted(counterexamples):
        require(key in MODELS, f"unknown model {key!r}; expected some of {sorted(MODELS)}")
        if MODELS[key].kind == "none":
            inputs = _as_inputs(counterexamples[key])
            eager, traced, _ = _traced(key)
            require(False, f"model {key} traces correctly, so no input can prove it wrong (eager and traced agree "
                           f"on yours: {P.agree(MODELS[key], eager, traced, inputs)}); leave it out")
    missing = sorted(set(WRONG) - set(counterexamples))
    require(not missing, f"give an input for every model that traces wrong; missing {missing}")
    for key in WRONG:
        inputs = _as_inputs(counterexamples[key])
        eager, traced, seen = _traced(key)
        same_as_seen = all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(inputs, seen))
        require(not same_as_seen, f"model {key}: that is the input the trace was recorded with; of course it agrees")
        try:
            with torch.no_grad():
                eager(*inputs)
        except Exception as error:  # noqa: BLE001
            require(False, f"model {key}: the eager model cannot run on your input ({type(error).__name__}); "
                           f"use the same number of dimensions as the seen input {tuple(seen[0].shape)}")
        require(not P.agree(MODELS[key], eager, traced, inputs),
                f"model {key}: eager and traced agree on your input, so it takes the same path as the traced one. "
                f"{_KIND_HINTS[MODELS[key].kind].capitalize()}, and pick values (or a size) that change it")


def _is_trace(candidate) -> bool:
    return isinstance(candidate, torch.jit.TopLevelTracedModule)


@check("fixed model agrees with eager on many inputs")
def check_fix(key: str, candidate, trials: int = 200) -> None:
    require(key in MODELS, f"unknown model {key!r}; expected one of {sorted(MODELS)}")
    require_result(candidate, f"fixed_{key.lower()}", f"Exercise 3 (model {key})")
    pitfall = MODELS[key]
    require(not isinstance(candidate, torch.export.ExportedProgram),
            "pass the runnable module: `exported.module()`, not the ExportedProgram itself")
    require(not _is_trace(candidate), "that is a torch.jit.trace result: a trace is what we are fixing")
    require(not isinstance(candidate, pitfall.cls),
            f"that is the eager model itself; pass its scripted (torch.jit.script) or exported "
            f"(torch.export.export(...).module()) version")
    require(isinstance(candidate, (torch.jit.ScriptModule, torch.fx.GraphModule)),
            f"expected a scripted module or `torch.export.export(...).module()`, got {type(candidate).__name__}")
    eager = pitfall.build().eval()
    generator = torch.Generator().manual_seed(1234)
    cases = [pitfall.seen(), pitfall.unseen()] + [pitfall.random_input(generator) for _ in range(trials)]
    for i, inputs in enumerate(cases):
        if not P.agree(pitfall, eager, candidate, inputs):
            shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
            where = "the seen input" if i == 0 else "the unseen input" if i == 1 else f"random input #{i - 1}"
            require(False, f"model {key}: differs from eager on {where} (shape {shapes}). If it was exported with "
                           "the sample's sizes, declare the sizes that vary with torch.export.Dim; if a branch was "
                           "frozen, use torch.cond")


def reference_agreement_rate(eager, candidate, inputs, atol: float = 1e-5) -> float:
    agreeing = 0
    for x in inputs:
        x = x if isinstance(x, tuple) else (x,)
        try:
            with torch.no_grad():
                a, b = eager(*x), candidate(*x)
        except Exception:  # noqa: BLE001 - a candidate that crashes does not agree
            continue
        agreeing += a.shape == b.shape and bool(torch.allclose(a, b, atol=atol))
    return agreeing / len(inputs)


@check("agreement_rate")
def check_agreement_rate(agreement_rate) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eager_a, traced_a, _ = _traced("A")
        eager_e, traced_e, _ = _traced("E")
    generator = torch.Generator().manual_seed(7)
    inputs_a = [torch.randn(2, 3, generator=generator) for _ in range(40)]
    got = agreement_rate(eager_a, eager_a, inputs_a)
    require(isinstance(got, float), f"agreement_rate should return a float fraction, got {type(got).__name__}")
    require(got == 1.0, f"a model compared with itself should agree on every input (1.0), you returned {got}")
    want = reference_agreement_rate(eager_a, traced_a, inputs_a)
    got = agreement_rate(eager_a, traced_a, inputs_a)
    require(got != want * len(inputs_a) or want == 0, "return the fraction of inputs that agree (0..1), not the count")
    require(abs(got - want) < 1e-9,
            f"on model A's trace you returned {got:.3f}, expected {want:.3f}: compare each input's outputs with "
            "torch.allclose, count those that agree, divide by the number of inputs")
    inputs_e = [torch.randn(n, 4, generator=generator) for n in (2, 2, 3, 4, 5)]
    try:
        got = agreement_rate(eager_e, traced_e, inputs_e)
    except RuntimeError as error:
        require(False, f"outputs of different shapes crashed your function ({str(error).splitlines()[0][:80]}...): "
                       "a shape mismatch means the outputs disagree; compare shapes before values")
    want = reference_agreement_rate(eager_e, traced_e, inputs_e)
    require(abs(got - want) < 1e-9, f"on model E's trace you returned {got:.3f}, expected {want:.3f}: outputs of "
                                    "different shapes must count as disagreeing")


__all__ = ["MODELS", "WRONG", "ready", "check_agreement_rate", "check_counterexamples", "check_fix", "check_predictions",
           "check_will_warn"]
