"""Checks for lab 07 (capstone): a new model deployed every way, measured, and a runtime picked.

The learner's table (``runtime -> row``) holds, per runtime: ``file`` (path of the deployed file),
``size_kb``, ``accuracy``, ``top1_agreement`` (with PyTorch eager on the test split) and
``latency`` (a ``dk.benchmark`` result, one thread, batch 1). The checks re-measure what can be
re-measured (file sizes, file types, parity) and test the decision against the stated rule.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..bench import time_scale
from . import check, ready, require, require_result

RUNTIMES = {
    "pytorch_eager": (".pth", ".pt"),
    "ort_fp32": (".onnx", ".ort"),
    "ort_int8": (".onnx", ".ort"),
    "litert_fp32": (".tflite",),
}
MIN_ACCURACY = 0.95
MAX_DROP_POINTS = 1.0
MIN_TOP1_AGREEMENT = 0.98
FRAME_BUDGET_MS = 1000 / 30 * time_scale()  # a 30 fps camera (see deploykit.bench.time_scale)
MODEL_SHARE = 0.10  # the model may take 10% of the frame budget; the camera and the UI need the rest


def _split():
    from ..data import load_digits_split

    return load_digits_split()


def _torch_logits(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


@check("the capstone model: new, trained, deployable")
def check_model(model) -> None:
    """An ``nn.Module`` the course has not shown, in eval mode, mapping (N, 1, 8, 8) to (N, 10), accurate."""
    import torch

    from ..models import DigitsCNN

    require_result(model, "model", "Exercise 1")
    require(isinstance(model, torch.nn.Module), f"expected a torch.nn.Module, got {type(model).__name__}")
    require(not isinstance(model, DigitsCNN), "that is the course's DigitsCNN: the capstone asks for a model the course "
            "has not shown (e.g. depthwise-separable convolutions, or an MLP)")
    require(not model.training, "the model is in training mode: call model.eval() before measuring and exporting "
            "(BatchNorm and Dropout behave differently in training)")
    split = _split()
    logits = _torch_logits(model, split.x_test)
    require(logits.shape == (len(split.x_test), 10), f"the model maps {split.x_test.shape} to {logits.shape}; expected (N, 10) logits")
    accuracy = float((logits.argmax(axis=1) == split.y_test).mean())
    require(accuracy >= MIN_ACCURACY, f"test accuracy {accuracy:.3f} is below {MIN_ACCURACY}: train longer (more epochs) "
            "or check the learning rate before deploying")


def _file(path, suffixes, role) -> Path:
    require(isinstance(path, (str, Path)), f"{role}: expected a path, got {type(path).__name__}")
    path = Path(path)
    require(path.suffix in suffixes, f"{role}: wrong file type {path.suffix or '(none)'!r}, expected {' or '.join(suffixes)}")
    require(path.is_file(), f"{role}: {path.name} does not exist: run the cell that writes it")
    return path


def _ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    from ..quantize import session

    sess = session(path)
    name = sess.get_inputs()[0].name
    shape = sess.get_inputs()[0].shape
    if isinstance(shape[0], int) and shape[0] == 1 and len(x) > 1:  # a fixed batch-1 export
        return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])
    return sess.run(None, {name: x})[0]


def _tflite_logits(path: Path, x: np.ndarray) -> np.ndarray:
    from ..litert import load_interpreter, run_tflite

    return run_tflite(load_interpreter(path, num_threads=1), x)

_WEIGHT_INPUT = {"Conv": 1, "Gemm": 1, "MatMul": 1, "ConvInteger": 1, "MatMulInteger": 1, "QLinearConv": 3,
                 "QLinearMatMul": 3, "QGemm": 3}


def _float_weights(proto) -> list[str]:
    """Weight-carrying nodes (Conv, Gemm, MatMul and their quantised forms) whose weight is a float initializer.

    The weight is the node's weight input, or, in the QDQ format, the input of the DequantizeLinear
    that produces it. A file's *size* does not tell: a small model carries a fixed cost (graph, scales)
    that int8 weights do not shrink.
    """
    initializers = {init.name: init for init in proto.graph.initializer}
    producers = {out: node for node in proto.graph.node for out in node.output}
    floating = []
    for node in proto.graph.node:
        index = _WEIGHT_INPUT.get(node.op_type)
        if index is None or len(node.input) <= index:
            continue
        name = node.input[index]
        source = producers.get(name)
        if source is not None and source.op_type == "DequantizeLinear":
            name = source.input[0]
        init = initializers.get(name)
        if init is not None and init.data_type in (1, 10, 11, 16):  # float, float16, double, bfloat16
            floating.append(f"{node.op_type} {node.name or name}")
    return floating


@check("deployed files: types and parity with PyTorch eager")
def check_deployments(model, files: dict) -> None:
    """``files``: runtime -> path, for every runtime in ``RUNTIMES``; each reproduces ``model``'s answers."""
    require_result(model, "model", "Exercise 1")
    require_result(files, "files", "Exercise 2")
    require(isinstance(files, dict), f"expected a dict runtime -> path, got {type(files).__name__}")
    missing = set(RUNTIMES) - set(files)
    require(not missing, f"missing runtimes {sorted(missing)}: deploy the model every way ({sorted(RUNTIMES)})")
    paths = {name: _file(files[name], RUNTIMES[name], name) for name in RUNTIMES}
    import onnx

    fp32_proto = onnx.load(str(paths["ort_fp32"])) if paths["ort_fp32"].suffix == ".onnx" else None
    if fp32_proto is not None:
        entries = sum(len(node.metadata_props) for node in fp32_proto.graph.node)
        require(entries == 0, f"ort_fp32 still carries {entries} per-node debug entries (stack traces with this "
                "machine's file paths): call dk.strip_debug_info(files['ort_fp32']) right after exporting")
    if paths["ort_int8"].suffix == ".onnx":
        int8_proto = onnx.load(str(paths["ort_int8"]))
        int8_ops = {n.op_type for n in int8_proto.graph.node}
        require(int8_ops & {"QuantizeLinear", "DynamicQuantizeLinear", "QLinearConv"},
                "ort_int8 has no int8 operators: quantise it (quantize_static with calibration data, or quantize_dynamic)")
        float_weights = _float_weights(int8_proto)
        require(not float_weights, f"ort_int8 still feeds float32 weights to {', '.join(float_weights[:3])}: quantise "
                "the weights too (weight_type=QuantType.QInt8; deploykit.quantize.quantize_onnx does it)")
    x = _split().x_test
    reference = _torch_logits(model, x)
    for name, path in paths.items():
        if name == "pytorch_eager":
            continue
        got = _ort_logits(path, x) if name.startswith("ort") else _tflite_logits(path, x)
        require(got.shape == reference.shape, f"{name} returns shape {got.shape}, eager returns {reference.shape}")
        agreement = float((got.argmax(1) == reference.argmax(1)).mean())
        if name.endswith("fp32"):
            diff = float(np.abs(got - reference).max())
            require(diff < 1e-3, f"{name} differs from eager by up to {diff:.2e}: was the model exported in eval mode, "
                    "from the same weights (export after training)?")
        require(agreement >= MIN_TOP1_AGREEMENT, f"{name} agrees with eager on only {agreement:.1%} of test images "
                f"(need {MIN_TOP1_AGREEMENT:.0%}): check calibration data and the export")


@check("measurement table")
def check_table(table: dict) -> None:
    """Every runtime measured: true file size, accuracy, top-1 agreement, single-thread batch-1 latency."""
    from ..bench import BenchResult

    require_result(table, "table", "Exercise 3 (it needs Exercise 2's files and runners)")
    require(isinstance(table, dict), f"expected a dict runtime -> row, got {type(table).__name__}")
    missing = set(RUNTIMES) - set(table)
    require(not missing, f"missing rows {sorted(missing)}")
    for name in RUNTIMES:
        row = table[name]
        require(isinstance(row, dict), f"table[{name!r}] should be a dict, got {type(row).__name__}")
        keys = {"file", "size_kb", "accuracy", "top1_agreement", "latency"} - set(row)
        require(not keys, f"table[{name!r}] lacks {sorted(keys)}")
        path = _file(row["file"], RUNTIMES[name], name)
        true_kb = path.stat().st_size / 1000
        kib = path.stat().st_size / 1024  # the usual wrong unit
        require(not math.isclose(row["size_kb"], kib, rel_tol=1e-2),  # KB and KiB differ by 2.4 %: rounded KiB is still KiB
                f"table[{name!r}]['size_kb'] is in KiB (st_size / 1024): the course's KB is 1000 bytes, as its MB is 10^6")
        require(math.isclose(row["size_kb"], true_kb, rel_tol=1e-3),
                f"table[{name!r}]['size_kb'] is not the size of {path.name} in KB: the file's st_size / 1000")
        require(0 <= row["accuracy"] <= 1 and 0 <= row["top1_agreement"] <= 1,
                f"table[{name!r}]: accuracy and top1_agreement are fractions between 0 and 1")
        latency = row["latency"]
        require(isinstance(latency, BenchResult), f"table[{name!r}]['latency'] should be a dk.benchmark result")
        require(latency.threads == 1 and latency.batch == 1,
                f"table[{name!r}] latency records threads={latency.threads}, batch={latency.batch}: measure one frame on one thread")
        require(latency.warmup >= 5 and latency.repeats >= 50, f"table[{name!r}] latency: use >= 5 warm-up calls and >= 50 runs")
    require(table["pytorch_eager"]["top1_agreement"] == 1.0, "eager is the reference: its top-1 agreement with itself is 1.0")


def eligible(table: dict) -> list[str]:
    """Runtimes that pass the gates: accurate, faithful to eager, fast enough for the frame budget."""
    best = table["pytorch_eager"]["accuracy"]
    return [
        name for name, row in table.items()
        if name != "pytorch_eager"
        and 100 * (best - row["accuracy"]) <= MAX_DROP_POINTS
        and row["top1_agreement"] >= MIN_TOP1_AGREEMENT
        and row["latency"].p90_ms <= MODEL_SHARE * FRAME_BUDGET_MS
    ]


@check("deployment decision")
def check_decision(table: dict, choice: str) -> None:
    """``choice``: among the runtimes that pass the gates (see :func:`eligible`), the smallest file."""
    require_result(table, "table", "Exercise 3")
    require_result(choice, "choice", "Exercise 4")
    require(isinstance(table, dict) and set(RUNTIMES) <= set(table), "table lacks runtimes: run Exercise 3 for all of "
            f"{sorted(RUNTIMES)} first (check_table tells what is missing)")
    require(choice in RUNTIMES, f"choice should be one of {sorted(RUNTIMES)}, got {choice!r}")
    require(choice != "pytorch_eager", "PyTorch eager is the reference, not a phone runtime (it ships the whole of "
            "PyTorch): pick one of the deployed runtimes")
    ok = eligible(table)
    require(ok, "no runtime passes the gates; check your measurements")
    row = table[choice]
    require(choice in ok, f"{choice!r} fails a gate: accuracy drop <= {MAX_DROP_POINTS:g} point, top-1 agreement >= "
            f"{MIN_TOP1_AGREEMENT:.0%}, p90 latency <= {MODEL_SHARE * FRAME_BUDGET_MS:.1f} ms "
            f"(it has {row['accuracy']:.4f}, {row['top1_agreement']:.1%}, {row['latency'].p90_ms:.3f} ms)")
    smallest = min(ok, key=lambda name: table[name]["size_kb"])
    require(choice == smallest, f"{choice!r} passes the gates, but {smallest!r} does too and its file is smaller "
            f"({table[smallest]['size_kb']:.1f} vs {row['size_kb']:.1f} KB): once every runtime is fast enough, "
            "the smaller download wins")


__all__ = ["ready", "FRAME_BUDGET_MS", "MAX_DROP_POINTS", "MIN_TOP1_AGREEMENT", "MODEL_SHARE", "RUNTIMES", "check_decision",
           "check_deployments", "check_model", "check_table", "eligible"]
