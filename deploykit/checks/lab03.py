"""Lab 03 (export and parity): checks for exporting the digits model with a dynamic batch,
validating it, proving parity at several batch sizes, and reading its graph programmatically.

Every check prints ``[PASS]`` or a ``[HINT]`` that points at the mistake without giving the answer.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from . import check, require, require_result

INPUT_NAME, OUTPUT_NAME = "input", "logits"
REQUIRED_BATCHES = (1, 7, 64)


def _path(path) -> Path:
    require(isinstance(path, (str, Path)), f"pass the path of your .onnx file, got {type(path).__name__}")
    path = Path(path)
    require(path.suffix == ".onnx", f"expected a file ending in .onnx, got {path.name!r}")
    require(path.is_file(), f"{path.name} does not exist yet: run your export cell first")
    return path


def _dims(value_info) -> list:
    return [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in value_info.type.tensor_type.shape.dim]


def _load(path: Path):
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as error:  # noqa: BLE001
        require(False, f"{path.name} is not a readable ONNX file ({type(error).__name__}); export it again")


def _digits_reference(x: np.ndarray) -> np.ndarray:
    import torch

    from ..models import digits_model

    with torch.inference_mode():
        return digits_model()(torch.from_numpy(x)).numpy()


@check("export with a dynamic batch")
def check_export(path) -> None:
    import onnx
    import onnxruntime as ort

    from ..data import load_digits_split

    path = _path(path)
    proto = _load(path)
    external = [t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    require(not external, f"the weights are in a separate .data file ({len(external)} external tensors): pass "
                          "`external_data=False` so the model ships as one self-contained file")
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    names = [i.name for i in inputs]
    require(names == [INPUT_NAME], f"the graph's input is called {names}, expected [{INPUT_NAME!r}]: pass "
                                   "`input_names=[...]` to torch.onnx.export (without it the exporter uses the argument name of forward)")
    outputs = [o.name for o in proto.graph.output]
    require(outputs == [OUTPUT_NAME], f"the graph's output is called {outputs}, expected [{OUTPUT_NAME!r}]: pass `output_names=[...]`")
    dims = _dims(inputs[0])
    require(len(dims) == 4, f"the input has {len(dims)} dimensions {dims}; the digits model takes (batch, 1, 8, 8)")
    require(isinstance(dims[0], str), f"the batch dimension is fixed at {dims[0]} (the example's batch size): declare it "
                                      "dynamic with `dynamic_shapes={'x': {0: torch.export.Dim('batch')}}` "
                                      "(`x` is the name of forward's argument)")
    require(dims[1:] == [1, 8, 8], f"input dimensions {dims}: only the batch (dimension 0) should be dynamic, the rest (1, 8, 8)")
    out_dims = _dims(proto.graph.output[0])
    require(isinstance(out_dims[0], str), f"the output's batch dimension is fixed at {out_dims[0]}; it should follow the input's")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = load_digits_split().x_test[:7]
    got = session.run(None, {INPUT_NAME: x})[0]
    want = _digits_reference(x)
    require(got.shape == want.shape, f"ONNX Runtime returned shape {got.shape} for a batch of 7, expected {want.shape}")
    require(np.allclose(got, want, atol=1e-4, rtol=1e-3),
            "the file runs but does not compute the trained digits model: export `dk.digits_model()` "
            "(trained, in eval mode), not a fresh `DigitsCNN()` or a model in train mode")


@check("validate with onnx.checker")
def check_validator(validate, path) -> None:
    import onnx

    require(callable(validate), f"pass your function itself (validate), not its result; got {type(validate).__name__}")
    path = _path(path)
    verdict = validate(path)
    require(isinstance(verdict, bool), f"validate(path) should return True or False, got {verdict!r}")
    require(verdict is True, f"validate says your own export ({path.name}) is invalid; it should pass onnx.checker")
    broken = onnx.load(str(path))
    broken.graph.node[-1].input[0] = "a_tensor_nobody_produces"
    broken_path = path.with_name(path.stem + "_broken_by_check.onnx")
    onnx.save(broken, str(broken_path))
    try:
        try:
            verdict = validate(broken_path)
        except onnx.checker.ValidationError:
            require(False, "on an invalid file your function let onnx.checker's ValidationError escape: catch it and return False")
        require(verdict is False, "validate returned True for a file with a broken edge: call "
                                  "`onnx.checker.check_model(...)` and return False when it raises ValidationError")
    finally:
        broken_path.unlink(missing_ok=True)


@check("parity at several batch sizes")
def check_parity(reports: dict) -> None:
    from ..parity import ParityReport

    require_result(reports, "reports", "section 3 (parity at several batch sizes)")
    require(isinstance(reports, dict), f"reports should be a dict {{batch size: ParityReport}}, got {type(reports).__name__}")
    missing = [b for b in REQUIRED_BATCHES if b not in reports]
    if missing == [b for b in REQUIRED_BATCHES if b != 1] and 1 in reports:
        require(False, "parity only at batch 1 proves little about a dynamic batch: also compare at batch 7 and 64")
    require(not missing, f"compare at batch sizes {list(REQUIRED_BATCHES)}; missing {missing}")
    for batch in REQUIRED_BATCHES:
        report = reports[batch]
        require(isinstance(report, ParityReport), f"batch {batch}: expected the result of dk.parity_report(...), got {type(report).__name__}")
        require(report.shape == (batch, 10), f"batch {batch}: the report compares arrays of shape {report.shape}; "
                                             f"expected ({batch}, 10): feed {batch} images to both runtimes")
        require(report.allclose, f"batch {batch}: outputs differ (max |diff| {report.max_abs_diff:.2e}); use the "
                                 "same images for PyTorch and ONNX Runtime, in eval mode, float32")
        require(report.top1_agreement == 1.0, f"batch {batch}: top-1 agreement {report.top1_agreement:.0%}, expected 100%")
    require(any(reports[b].max_abs_diff > 0 for b in REQUIRED_BATCHES),
            "every difference is exactly 0: did you compare a runtime with itself? The reference is PyTorch "
            "(dk.digits_model()), the candidate ONNX Runtime")


def graph_facts(path) -> dict:
    """The answers of the last exercise, computed from the file (used by the check)."""
    import onnx

    proto = onnx.load(str(path))
    sizes = {t.name: int(np.prod(t.dims)) for t in proto.graph.initializer}
    return {
        "op_counts": dict(Counter(n.op_type for n in proto.graph.node)),
        "initializer_sizes": sizes,
        "parameter_count": sum(sizes.values()),
    }


@check("read the graph programmatically")
def check_graph_reading(path, op_counts: dict, initializer_sizes: dict, parameter_count: int) -> None:
    require_result(op_counts, "op_counts", "section 4 (read the graph)")
    path = _path(path)
    facts = graph_facts(path)
    require(isinstance(op_counts, dict), f"op_counts should be a dict {{op_type: count}}, got {type(op_counts).__name__}")
    node_names = {n.name for n in _load(path).graph.node}
    require(not (set(op_counts) & node_names) or set(op_counts) == set(facts["op_counts"]),
            "op_counts is keyed by node names; count by `node.op_type` (Conv, Relu, ...) instead")
    require(dict(op_counts) == facts["op_counts"],
            f"op_counts does not match the file: expected the keys {sorted(facts['op_counts'])} "
            f"with one count per node of graph.node, got {dict(sorted(op_counts.items()))}")
    require(isinstance(initializer_sizes, dict), f"initializer_sizes should be a dict {{name: number of values}}, got {type(initializer_sizes).__name__}")
    require(set(initializer_sizes) == set(facts["initializer_sizes"]),
            f"initializer_sizes should have one entry per graph.initializer ({len(facts['initializer_sizes'])}), "
            f"got {len(initializer_sizes)}")
    wrong = sorted(k for k, v in initializer_sizes.items() if v != facts["initializer_sizes"][k])
    if wrong:
        name = wrong[0]
        shaped = facts["initializer_sizes"][name]
        require(False, f"{name}: you have {initializer_sizes[name]!r}, expected the number of values ({shaped}): "
                       "multiply the entries of `tensor.dims` (len(dims) is the rank, not the size)")
    require(isinstance(parameter_count, (int, np.integer)), f"parameter_count should be an int, got {type(parameter_count).__name__}")
    from ..models import count_parameters, digits_model

    if parameter_count == count_parameters(digits_model()):
        require(False, "that is the PyTorch model's parameter count; count the values stored in the file's "
                       "initializers (they differ: look at what happened to BatchNorm)")
    if parameter_count == len(facts["initializer_sizes"]):
        require(False, "that is the number of initializer tensors; count the values inside them")
    require(parameter_count == facts["parameter_count"],
            f"parameter_count {parameter_count} does not match the sum of initializer sizes")


__all__ = ["check_export", "check_graph_reading", "check_parity", "check_validator", "graph_facts"]
