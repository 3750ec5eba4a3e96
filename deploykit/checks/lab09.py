"""Checks for lab 09: RadioNet made to export (ONNX) and convert (LiteRT), with parity proved.

Every check compares with the learner's *original* ``RadioNet`` (``torch.hypot``,
``torch.logcumsumexp``), never with a rewritten copy: a fix that changes the math fails. The checks
run their own inputs: several batch sizes, and signals at a receiver gain of 1 and of 100 (a real
radio's input level varies; a rewrite that overflows ``exp`` shows up there).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import check, require

#: Receiver gains the checks feed: the training level and a strong signal.
GAINS = (1.0, 100.0)
ATOL, RTOL = 1e-4, 1e-4
#: What broke in lab 09, as the check reads the learner's record (aliases accepted).
BREAKS_ONNX = {"hypot", "logcumsumexp"}  # hypot: no translation; logcumsumexp: translated, but inf at gain >= 3
BREAKS_LITERT = {"hypot", "logcumsumexp"}
MODULE_NAMES = ("features.0", "features.1", "features.2", "features.3")


def _inputs(batch: int, gain: float, seed: int) -> np.ndarray:
    from ..radio import radio_signals

    x, _ = radio_signals(batch, seed=100 + seed)
    return (x * gain).astype(np.float32)


def _torch_logits(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def _require_original(model) -> None:
    import torch

    from ..radio import RadioNet

    require(isinstance(model, RadioNet), f"pass the original trained RadioNet (`model`), got {type(model).__name__}")
    require(type(model).magnitude is RadioNet.magnitude and type(model).running_energy is RadioNet.running_energy,
            "pass the ORIGINAL model (`model`, with torch.hypot and torch.logcumsumexp): the check compares your "
            "file with it, so a rewrite that changed the math cannot pass")
    require(not model.training, "the model is in training mode: call model.eval()")
    require(isinstance(model, torch.nn.Module), "expected a torch.nn.Module")


def _existing(path, suffix: str, exercise: str) -> Path:
    require(isinstance(path, (str, Path)), f"expected the path of your {suffix} file, got {type(path).__name__}")
    path = Path(path)
    require(path.suffix == suffix, f"expected a file ending in {suffix}, got {path.name!r}")
    require(path.is_file(), f"{path.name} does not exist yet: run {exercise} first")
    return path


def _closeness(got: np.ndarray, want: np.ndarray) -> tuple[bool, float]:
    finite = bool(np.isfinite(got).all())
    diff = float(np.abs(got - want).max()) if finite else float("inf")
    return finite and np.allclose(got, want, atol=ATOL, rtol=RTOL), diff


@check("RadioNet in ONNX, equal to PyTorch")
def check_onnx(onnx_path, model, gains=(1.0,)) -> None:
    """A self-contained ``.onnx`` of standard operators with a dynamic batch, equal to ``model`` on
    recordings at each receiver gain in ``gains`` (batch sizes 1 and 7 at the first, 3 at the others)."""
    import onnx
    import onnxruntime as ort

    _require_original(model)
    path = _existing(onnx_path, ".onnx", "your export cell")
    proto = onnx.load(str(path), load_external_data=False)
    require(not any(init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer),
            "the weights are in a separate .data file: export with external_data=False (one file to ship)")
    custom = sorted({f"{n.domain}::{n.op_type}" for n in proto.graph.node if n.domain not in ("", "ai.onnx")})
    require(not custom, f"the graph has custom-domain nodes {custom}: build the translation from standard ONNX "
            "operators (op.Mul, op.Add, op.Sqrt), so every runtime can run it")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    require(len(inputs) == 1 and inputs[0].name == "iq", f"expected one input named 'iq', got {[i.name for i in inputs]}")
    require(not isinstance(inputs[0].shape[0], int) or inputs[0].shape[0] is None,
            f"the batch dimension is fixed to {inputs[0].shape[0]}: export with a dynamic batch "
            "(dynamic_shapes with torch.export.Dim) so the app can send any number of recordings")
    require(isinstance(gains, (list, tuple)) and gains and all(g > 0 for g in gains), f"gains should be a tuple of "
            f"positive receiver gains, e.g. lab09.GAINS, got {gains!r}")
    cases = [(1, gains[0]), (7, gains[0])] + [(3, gain) for gain in gains[1:]]
    for seed, (batch, gain) in enumerate(cases):
        x = _inputs(batch, gain, seed)
        got = session.run(None, {"iq": x})[0]
        ok, diff = _closeness(got, _torch_logits(model, x))
        if not ok and not np.isfinite(got).all() and gain != gains[0]:
            require(False, f"ONNX Runtime returns inf/nan at gain {gain:g} (batch {batch}), though it matched at gain "
                    f"{gains[0]:g}: an exp() in the graph overflows or underflows float32. The exporter's own "
                    "translation of logcumsumexp does; export a model whose running_energy is written stably "
                    "(your RadioNetLite)")
        require(ok, f"ONNX Runtime differs from PyTorch by up to {diff:.3g} (batch {batch}, gain {gain:g}): does "
                "your translation compute hypot(a, b) = sqrt(a*a + b*b) from both of its inputs? (the square root "
                "of a negative number is nan)")


@check("RadioNet in LiteRT, equal to the original PyTorch model")
def check_litert(tflite_path, model) -> None:
    """A ``.tflite`` that loads, runs, and equals the *original* model at every input level."""
    from ..litert import load_interpreter, run_tflite

    _require_original(model)
    path = _existing(tflite_path, ".tflite", "your conversion cell")
    try:
        interpreter = load_interpreter(path, num_threads=1)
    except Exception as error:  # noqa: BLE001 - the learner sees the reason, not a traceback
        require(False, f"the interpreter cannot load {path.name} ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:160]}): a converted file is not a runnable one; rewrite with "
                "operators that have LiteRT kernels (arithmetic, comparisons, reductions, where)")
    for seed, gain in enumerate(GAINS):
        x = _inputs(6, gain, seed)
        got, want = run_tflite(interpreter, x), _torch_logits(model, x)
        ok, diff = _closeness(got, want)
        if not ok and gain != GAINS[0]:
            require(False, f"your LiteRT model matches at gain {GAINS[0]:g} but not for a strong signal (gain {gain:g}: "
                    f"{'inf/nan' if not np.isfinite(got).all() else f'off by up to {diff:.3g}'}): exp() of large "
                    "values overflows float32 (above about 88). Subtract a maximum before exp and add it back after "
                    "log, as torch.logsumexp does")
        require(ok, f"LiteRT differs from the original model by up to {diff:.3g} at gain {gain:g}: your rewrite "
                "must compute exactly what torch.hypot and torch.logcumsumexp compute (check the running sum "
                "includes every step up to and including t)")


def _hooked(model, x: np.ndarray) -> dict[str, np.ndarray]:
    import torch

    values = {}
    hooks = [model.get_submodule(name).register_forward_hook(
        lambda module, args, out, name=name: values.__setitem__(name, out.detach().numpy()))
        for name in MODULE_NAMES]
    try:
        with torch.inference_mode():
            model(torch.from_numpy(x))
    finally:
        for hook in hooks:
            hook.remove()
    return values


@check("parity inside the graph, at the first ReLU")
def check_intermediate(model, probe, onnx_intermediate, torch_intermediate) -> None:
    """``onnx_intermediate``: the ONNX model's tensor after ``features.1`` on ``probe``; ``torch_intermediate``:
    PyTorch's, from a forward hook. Both must be that layer's output, and equal."""
    _require_original(model)
    probe = np.asarray(probe, dtype=np.float32)
    require(probe.ndim == 3 and probe.shape[1:] == (2, 64), f"probe should be recordings (N, 2, 64), got {probe.shape}")
    values = _hooked(model, probe)
    want = values["features.1"]
    for name, got in (("torch_intermediate", torch_intermediate), ("onnx_intermediate", onnx_intermediate)):
        got = np.asarray(got)
        require(got.shape == want.shape, f"{name} has shape {got.shape}; the first ReLU's output on probe has "
                f"{want.shape} (batch, 16 channels, 64 steps)")
        if not np.allclose(got, want, atol=ATOL):
            other = [layer for layer, value in values.items() if value.shape == got.shape and np.allclose(got, value, atol=ATOL)]
            require(not other, f"{name} is the output of {other[0]} ({type(model.get_submodule(other[0])).__name__}), "
                    "not of features.1, the ReLU after the first convolution")
            require(False, f"{name} does not match the output of features.1 on probe: compute it on the same probe "
                    "recordings, in eval mode")
    require(not np.shares_memory(np.asarray(onnx_intermediate), np.asarray(torch_intermediate)),
            "the two arrays are the same object: take one from ONNX Runtime, one from the forward hook")


def _normalise(names) -> set[str]:
    out = set()
    for name in names:
        name = str(name).lower().strip().removeprefix("torch.").removeprefix("aten.").removeprefix("prims.")
        out.add(name.split(".")[0])
    return out


@check("what broke, recorded")
def check_breakages(breakages: dict) -> None:
    """``breakages``: ``{"onnx": [...], "litert": [...]}``, the operators that failed on each path,
    loudly (an error) or silently (wrong numbers)."""
    require(isinstance(breakages, dict) and {"onnx", "litert"} <= set(breakages),
            "breakages should be a dict with the keys 'onnx' and 'litert', each a list of operator names")
    for path, expected in (("onnx", BREAKS_ONNX), ("litert", BREAKS_LITERT)):
        names = breakages[path]
        require(isinstance(names, (list, tuple, set)), f"breakages[{path!r}] should be a list of operator names")
        got = _normalise(names)
        missing, extra = expected - got, got - expected
        require(not extra, f"breakages[{path!r}] lists {sorted(extra)}, which the {path} path handled: record only "
                "what failed (the error names it: 'No ONNX function found for ...' / 'Lowering not found: ...')")
        require(not missing, f"breakages[{path!r}] misses an operator that failed there: convert again after each "
                "fix (a converter stops at the first operator it cannot lower), and count silent failures too "
                "(an operator that exports but returns inf for a strong signal)")


__all__ = ["BREAKS_LITERT", "BREAKS_ONNX", "GAINS", "check_breakages", "check_intermediate", "check_litert", "check_onnx"]
