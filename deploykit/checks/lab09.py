"""Checks for lab 09: RadioNet made to export (ONNX) and convert (LiteRT), with parity proved.

Every check compares with the learner's *original* ``RadioNet`` (``torch.hypot``,
``torch.logcumsumexp``), never with a rewritten copy: a fix that changes the math fails. The checks
run their own inputs: several batch sizes, and signals at a receiver gain of 1 and of 100 (a real
radio's input level varies; a rewrite that overflows or underflows ``exp`` shows up there). What a check
computes itself (hooks, its own ONNX Runtime or LiteRT runs) is guarded, so a failure there is never
reported as the learner's error.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import check, ready, require, require_result

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


def _first_non_finite(path: Path, x: np.ndarray) -> tuple[str, float] | None:
    """Run ``path`` on ``x`` with every intermediate tensor kept; the first operator (in execution order)
    whose output holds inf or nan, as ``(OPERATOR, +inf / -inf / nan)``, or ``None`` if none does or the
    file cannot be inspected. The check's own tool: a failure here is never the learner's."""
    try:
        from ai_edge_litert import schema_py_generated as schema
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        from .._quiet import native_stderr_silenced

        model = schema.Model.GetRootAs(path.read_bytes(), 0)
        names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        sub = model.Subgraphs(0)
        import warnings

        with native_stderr_silenced(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            interpreter = Interpreter(model_path=str(path), num_threads=1, experimental_preserve_all_tensors=True,
                                      experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
            interpreter.allocate_tensors()
        source = interpreter.get_input_details()[0]
        rows = [x[i:i + 1] for i in range(len(x))] if source["shape"][0] == 1 else [x]
        for row in rows:                                     # a batch-1 file runs one recording at a time
            with native_stderr_silenced():
                interpreter.set_tensor(source["index"], row.astype(np.float32))
                interpreter.invoke()
            for i in range(sub.OperatorsLength()):           # operators are stored in execution order
                op = sub.Operators(i)
                code = model.OperatorCodes(op.OpcodeIndex())
                for index in op.OutputsAsNumpy():
                    value = interpreter.get_tensor(int(index))
                    if value.dtype.kind == "f" and not np.isfinite(value).all():
                        bad = value[~np.isfinite(value)]
                        kind = float("nan") if np.isnan(bad).all() else float(bad[~np.isnan(bad)][0])
                        return names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "an operator"), kind
    except Exception:  # noqa: BLE001 - the diagnosis is a bonus; without it the check still gives its hint
        return None
    return None


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
            seen = "inf/nan" if not np.isfinite(got).all() else f"off by up to {diff:.3g}"
            first = _first_non_finite(path, x)
            if first is not None and first[1] < 0:
                require(False, f"your LiteRT model matches at gain {GAINS[0]:g} but not for a strong signal (gain "
                        f"{gain:g}: {seen}). Inside the file, the first non-finite tensor is -inf, made by {first[0]}: "
                        "exp() UNDERFLOWED to 0 at some steps and log(0) = -inf. Subtracting one maximum over the whole "
                        "recording makes the early steps, far below it, vanish; each step t needs the maximum of the "
                        "values it sums (the steps s <= t), which is what torch.logsumexp over only those steps does")
            if first is not None:
                require(False, f"your LiteRT model matches at gain {GAINS[0]:g} but not for a strong signal (gain "
                        f"{gain:g}: {seen}). Inside the file, the first non-finite tensor is {first[1]:g}, made by "
                        f"{first[0]}: exp() of large values OVERFLOWS float32 (above about 88). Subtract a maximum "
                        "before exp and add it back after log, as torch.logsumexp does")
            require(False, f"your LiteRT model matches at gain {GAINS[0]:g} but not for a strong signal (gain {gain:g}: "
                    f"{seen}): look for an exp() whose input grows with the signal, and keep it in float32's range "
                    "(subtract the maximum of the values each step sums, as torch.logsumexp does)")
        require(ok, f"LiteRT differs from the original model by up to {diff:.3g} at gain {gain:g}: your rewrite "
                "must compute exactly what torch.hypot and torch.logcumsumexp compute (check the running sum "
                "includes every step up to and including t)")


#: (a, b) pairs check_hypot feeds, by what they test: ordinary values, both signs, a zero, both zero, squares
#: beyond float32's range (a*a overflows above ~1.8e19) and below it (a*a underflows to 0 below ~1e-19, still
#: normal floats: no subnormal, whose handling some CPUs flush).
HYPOT_CASES = {
    "ordinary": ([3.0, 0.5, 12.0, 1.0], [4.0, 1.2, 5.0, 1.0]),
    "negative": ([-3.0, 3.0, -3.0, -7.0], [4.0, -4.0, -4.0, 0.0]),
    "one zero": ([0.0, 5.0, 0.0], [5.0, 0.0, -2.5]),
    "both zero": ([0.0], [0.0]),
    "large": ([3e20, -3e20, 1e30, 2e37], [4e20, 4e20, 1.0, 2e37]),
    "tiny": ([3e-25, -3e-25, 1e-30], [4e-25, 4e-25, 0.0]),
}


def _hypot_result(hypot_onnx, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    result = hypot_onnx(a, b)
    value = getattr(result, "value", result)     # an ONNX Script function run eagerly returns a Tensor (.value)
    require(isinstance(value, np.ndarray), "hypot_onnx should return what its last op.* call returns (a tensor), "
            f"got {type(result).__name__}")
    require(value.dtype == np.float32, f"hypot_onnx returns {value.dtype} for float32 inputs: keep the result float32 "
            "like its inputs (the next node of the exported graph expects float32; a Cast or a float64 constant "
            "changes the type)")
    require(value.shape == a.shape, f"hypot_onnx returns shape {value.shape} for inputs of shape {a.shape}: "
            "hypot is elementwise, one result per (a, b) pair (no reduction over the values)")
    return value


@check("hypot_onnx computes torch.hypot, safely for any magnitude")
def check_hypot(hypot_onnx) -> None:
    """Run the learner's ONNX Script ``hypot_onnx`` eagerly on float32 arrays (``HYPOT_CASES``) and compare with
    ``torch.hypot``: equal within a few float32 steps, inf/0 only where torch.hypot gives them."""
    import torch

    require_result(hypot_onnx, "hypot_onnx", "Exercise 1")
    require(callable(hypot_onnx), f"hypot_onnx should be a function of (self, other), got {type(hypot_onnx).__name__}")
    for kind, (a_list, b_list) in HYPOT_CASES.items():
        a, b = np.array(a_list, dtype=np.float32), np.array(b_list, dtype=np.float32)
        want = torch.hypot(torch.from_numpy(a), torch.from_numpy(b)).numpy()
        got = _hypot_result(hypot_onnx, a, b)
        for i in range(len(a)):
            at = f"at (a, b) = ({a[i]:.3g}, {b[i]:.3g}) you return {got[i]:.3g}"
            if np.isclose(got[i], want[i], rtol=4e-6, atol=0):
                continue
            if np.isnan(got[i]) and a[i] == 0 and b[i] == 0:
                require(False, f"{at}: dividing by the larger magnitude is 0 / 0 there. Decide what the ratio is "
                        "when both inputs are 0 (op.Where on a condition) instead of dividing blindly")
            if kind == "negative" or (np.isfinite(got[i]) and got[i] < 0):
                require(False, f"{at}: hypot is a length, never negative, and the same for (-a, b), (a, -b), "
                        "(-a, -b). Take the magnitudes (op.Abs) of both inputs before comparing or dividing them")
            if kind == "large" and np.isinf(got[i]):
                require(False, f"{at}: a square of a value this large does not fit in float32 (max ~3.4e38). "
                        "torch.hypot never squares the inputs themselves: it divides the smaller magnitude by "
                        "the larger one, squares that ratio (at most 1), and multiplies back")
            if kind == "tiny" and got[i] == 0:
                require(False, f"{at}: a square of a value this small rounds to 0 in float32 (underflow). Scaling "
                        "by the larger magnitude before squaring (a ratio at most 1) avoids tiny squares too")
            require(False, f"{at}, torch.hypot gives a different value ({kind} inputs): hypot(a, b) is the length "
                    "sqrt(a² + b²) of both inputs; compute it from a ratio of the two magnitudes so that nothing "
                    "squared leaves float32's range")


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


def _name_scopes(node) -> str:
    return next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "")


def _onnx_runtime_intermediate(path: Path, probe: np.ndarray) -> np.ndarray | None:
    """ONNX Runtime's own tensor after ``features.1`` for ``probe``, from the learner's file (the whole
    model or a sub-model cut from it): the node the exporter recorded for ``features.1`` made a graph
    output, the model run here. ``None`` if the file has no such node."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(path))
    node = next((n for n in proto.graph.node if n.op_type == "Relu" and "'features.1'" in _name_scopes(n)), None)
    if node is None:
        return None
    name = node.output[0]
    if name not in {o.name for o in proto.graph.output}:
        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([name], {session.get_inputs()[0].name: probe})[0]


@check("parity inside the graph, at the first ReLU")
def check_intermediate(model, probe, onnx_intermediate, torch_intermediate, onnx_file=None) -> None:
    """``onnx_intermediate``: the ONNX model's tensor after ``features.1`` on ``probe``, from ONNX Runtime;
    ``torch_intermediate``: PyTorch's, from a forward hook; ``onnx_file``: the ONNX file you ran (the whole
    stable model, or the sub-model you cut from it). Both tensors must be that layer's output, and equal;
    the check runs ``onnx_file`` in ONNX Runtime itself to see that ``onnx_intermediate`` came from there."""
    require_result(onnx_intermediate, "onnx_intermediate", "Exercise 4")
    require_result(torch_intermediate, "torch_intermediate", "Exercise 4")
    _require_original(model)
    probe = np.asarray(probe, dtype=np.float32)
    require(probe.ndim == 3 and probe.shape[1:] == (2, 64), f"probe should be recordings (N, 2, 64), got {probe.shape}")
    path = _existing(onnx_file, ".onnx", "Exercise 3 and your Exercise 4 cell") if onnx_file is not None else None
    require(path is not None, "pass the ONNX file you ran as onnx_file= (stable_onnx_path, or the sub-model you "
            "cut from it): the check runs it in ONNX Runtime itself")
    values = _hooked(model, probe)   # the check's own forward pass: its failure is never the learner's
    want = values["features.1"]
    for name, got in (("torch_intermediate", torch_intermediate), ("onnx_intermediate", onnx_intermediate)):
        got = np.asarray(got)
        require(got.shape == want.shape, f"{name} has shape {got.shape}; the first ReLU's output on probe has "
                f"{want.shape} (batch, 16 channels, 64 steps)")
        if not np.allclose(got, want, atol=ATOL):
            other = [layer for layer, value in values.items() if value.shape == got.shape and np.allclose(got, value, atol=ATOL)]
            if other:
                require(False, f"{name} is the output of {other[0]} ({type(model.get_submodule(other[0])).__name__}), "
                        "not of features.1, the ReLU after the first convolution")
            require(False, f"{name} does not match the output of features.1 on probe: compute it on the same probe "
                    "recordings you pass to the check, with the model in eval mode")
    require(not np.shares_memory(np.asarray(onnx_intermediate), np.asarray(torch_intermediate)),
            "the two arrays are the same object: take one from ONNX Runtime, one from the forward hook")
    try:
        from_ort = _onnx_runtime_intermediate(path, probe)
    except Exception as error:  # noqa: BLE001 - the learner's file, not the learner's code, failed to run
        require(False, f"ONNX Runtime cannot run {path.name} on probe ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:160]}): pass the .onnx file your onnx_intermediate came from")
    require(from_ort is not None, f"{path.name} has no Relu node from features.1 (metadata_props, key "
            "pkg.torch.onnx.name_scopes): pass the stable ONNX file of Exercise 3, or a sub-model cut from it")
    mine = np.asarray(onnx_intermediate)
    copied = any(np.array_equal(mine, ref) and not np.array_equal(from_ort, ref) for ref in (want, np.asarray(torch_intermediate)))
    require(not copied, "onnx_intermediate is bit for bit PyTorch's tensor, and ONNX Runtime's is not (its kernels "
            "round differently): it was copied from PyTorch, not computed by ONNX Runtime. Run your ONNX file "
            "(or the sub-model ending at that node) in an InferenceSession on probe")
    require(np.allclose(mine, from_ort, atol=1e-5, rtol=1e-5),
            f"onnx_intermediate is not what ONNX Runtime returns for {path.name} on probe: take it from "
            "session.run on that file")


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


__all__ = ["BREAKS_LITERT", "BREAKS_ONNX", "GAINS", "HYPOT_CASES", "check_breakages", "check_hypot", "check_intermediate",
           "check_litert", "check_onnx", "ready"]
