"""Checks for lab 05: quantise the digits model to meet a size budget within an accuracy bound.

The budget: the file shipped in the app must be smaller than ``SIZE_BUDGET_KB`` and lose at most
``MAX_DROP_POINTS`` accuracy points against the float32 model on the digits test split.
Sizes and accuracies are measured here, by the check, not taken from the learner.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import CheckFailed, check, ready, require, require_fair_benchmark, require_result

SIZE_BUDGET_KB = 60.0
MAX_DROP_POINTS = 1.0
MODEL_SUFFIXES = (".onnx", ".ort")
#: Static int8 is calibrated with CalibrationMethod.Percentile on at most this many train images.
CALIBRATION_BUDGET = 256
CALIBRATION_METHOD = "Percentile"
DYNAMIC_OPS = {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"}
STATIC_OPS = {"QuantizeLinear", "QLinearConv", "QGemm", "QLinearMatMul"}


@lru_cache(maxsize=1)
def _split():
    from ..data import load_digits_split

    return load_digits_split()


def _accuracy(path: Path) -> float:
    from ..quantize import onnx_accuracy

    split = _split()
    return onnx_accuracy(path, split.x_test, split.y_test, threads=1)


@lru_cache(maxsize=1)
def fp32_accuracy() -> float:
    """Accuracy of the course's float32 digits model (the reference for the drop)."""
    from ..exports import digits_onnx

    return _accuracy(digits_onnx())


def _model_file(path, suffixes=MODEL_SUFFIXES) -> Path:
    require(isinstance(path, (str, Path)), f"expected a path to a model file, got {type(path).__name__}")
    path = Path(path)
    require(path.suffix in suffixes,
            f"wrong file type {path.suffix or '(no suffix)'!r}: expected an ONNX Runtime model ending in "
            f"{' or '.join(suffixes)} (a .tflite is LiteRT's, a .pth is PyTorch's)")
    require(path.is_file(), f"{path.name} does not exist yet: run your quantisation cell first")
    return path


def _onnx_ops(path: Path) -> set[str]:
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as error:  # noqa: BLE001
        raise CheckFailed(f"{path.name} is not a readable ONNX file ({type(error).__name__}): pass the .onnx you wrote") from None
    return {node.op_type for node in model.graph.node}


@check("measurement helpers: size_kb and accuracy_of")
def check_helpers(size_kb, accuracy_of) -> None:
    """``size_kb(path)`` in KB (1000 bytes, as the course's MB is 10^6 bytes) and ``accuracy_of(path)`` on the digits test split."""
    from ..exports import digits_onnx

    require(callable(size_kb) and callable(accuracy_of), "pass the two functions themselves: check_helpers(size_kb, accuracy_of)")
    path = digits_onnx()
    expected_kb = path.stat().st_size / 1000
    got_kb = size_kb(path)
    require(isinstance(got_kb, (int, float)) and not isinstance(got_kb, bool),
            f"size_kb should return a number, got {type(got_kb).__name__}")
    require(not math.isclose(got_kb, path.stat().st_size, rel_tol=1e-6),
            "size_kb returned bytes: divide by 1000 for kilobytes")
    kib = path.stat().st_size / 1024  # the usual wrong unit
    require(not math.isclose(got_kb, kib, rel_tol=1e-2),  # KB and KiB differ by 2.4 %: rounded KiB is still KiB
            "size_kb divided by 1024, which gives KiB: the course's KB is 1000 bytes, as its MB is 10^6 bytes")
    require(math.isclose(got_kb, expected_kb, rel_tol=1e-3),
            "size_kb did not give the file's size in KB: divide path.stat().st_size by 1000 with / "
            "(// and round() drop the decimals the budget is checked with)")
    got_acc = accuracy_of(path)
    require(isinstance(got_acc, (float, np.floating)), f"accuracy_of should return a float, got {type(got_acc).__name__}")
    require(0.0 <= got_acc <= 1.0, f"accuracy_of gave {got_acc}: return a fraction between 0 and 1, not a percentage")
    require(math.isclose(got_acc, fp32_accuracy(), abs_tol=1e-9),
            f"accuracy_of gave {got_acc:.4f} for the fp32 model, expected {fp32_accuracy():.4f}: score all "
            "split.x_test against split.y_test with argmax over the 10 logits")


def _activation_scales(path: Path) -> dict[str, float]:
    """Scale of every activation QuantizeLinear in a QDQ model, by the name of the tensor it quantises."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    initializers = {init.name: init for init in model.graph.initializer}
    return {node.input[0]: float(numpy_helper.to_array(initializers[node.input[1]]).reshape(-1)[0])
            for node in model.graph.node
            if node.op_type == "QuantizeLinear" and node.input[0] not in initializers and node.input[1] in initializers}


def _prepared_model() -> Path:
    """The check's own ``quant_pre_process`` of the course's digits model (what Exercise 2 prepares)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ..exports import digits_onnx
    from ..paths import artifact_path

    source, prepared = digits_onnx(), artifact_path("checks/lab05_digits_cnn.pre.onnx")
    if not prepared.exists() or prepared.stat().st_mtime < source.stat().st_mtime:
        prepared.parent.mkdir(parents=True, exist_ok=True)
        quant_pre_process(str(source), str(prepared))
    return prepared


def _reference_scales(images: np.ndarray, method: str) -> dict[str, float]:
    """Activation scales of a static QDQ int8 model calibrated with ``method`` on ``images`` (the check's own run).
    MinMax and Percentile do not depend on how the images are cut into batches (of one shape)."""
    import contextlib
    import io
    import tempfile

    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    batch = max(size for size in range(1, 65) if len(images) % size == 0)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(images[i:i + batch] for i in range(0, len(images), batch))

        def get_next(self):
            chunk = next(self.batches, None)
            return None if chunk is None else {"input": chunk}

    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / f"reference_{method}.onnx"
        with contextlib.redirect_stdout(io.StringIO()):   # the histogram methods print their progress
            quantize_static(str(_prepared_model()), str(target), Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=getattr(CalibrationMethod, method))
        return _activation_scales(target)


def _same_scales(mine: dict, reference: dict) -> bool:
    shared = [name for name in reference if name in mine and name != "input"]
    return len(shared) >= 3 and all(math.isclose(mine[name], reference[name], rel_tol=1e-3) for name in shared)


def _check_calibration(path: Path, calibration) -> None:
    """``calibration``: the images the learner's reader fed to ``quantize_static``. No test image, train images
    only, within the budget, and the file's scales are those Percentile calibration on them gives."""
    require(calibration is not None, "pass the images you calibrated on as well: "
            "check_quantized(static_path, 'static', calibration_images)")
    images = np.asarray(calibration)
    require(images.ndim == 4 and images.shape[1:] == (1, 8, 8) and images.dtype == np.float32,
            f"calibration_images should be digits images, float32 (N, 1, 8, 8), got {images.dtype} {images.shape}")
    split = _split()
    test_rows = {row.tobytes() for row in split.x_test}
    leaked = sum(row.tobytes() in test_rows for row in images)
    require(leaked == 0, f"{leaked} of your {len(images)} calibration images are test images (split.x_test): the "
            "accuracy you report on the test split would be optimistic. Calibrate on split.x_train only")
    train_rows = {row.tobytes() for row in split.x_train}
    require(all(row.tobytes() in train_rows for row in images), "some calibration images are not train images: "
            "calibrate on images of split.x_train, as they are (float32, NCHW, scaled to [0, 1])")
    require(len(images) <= CALIBRATION_BUDGET, f"{len(images)} calibration images: the budget is "
            f"{CALIBRATION_BUDGET}; see whether fewer are enough")
    mine = _activation_scales(path)
    if _same_scales(mine, _reference_scales(images, CALIBRATION_METHOD)):
        return
    require(not _same_scales(mine, _reference_scales(images, "MinMax")),
            f"{path.name} was calibrated with MinMax, quantize_static's default: set "
            f"calibrate_method=CalibrationMethod.{CALIBRATION_METHOD}")
    raise CheckFailed(f"{path.name}'s activation scales are not what {CALIBRATION_METHOD} calibration on the images "
                      "you passed gives: quantise the pre-processed model (prepared_path), and pass exactly the images "
                      "your reader fed to quantize_static")


@check("int8 quantised model")
def check_quantized(path, kind: str, calibration=None) -> None:
    """``path`` is an int8 model of the given ``kind`` ("dynamic" or "static"), smaller than fp32; a static one
    calibrated with Percentile on ``calibration`` (at most ``CALIBRATION_BUDGET`` train images, no test image)."""
    from ..exports import digits_onnx

    require(kind in ("dynamic", "static"), f"kind should be 'dynamic' or 'static', got {kind!r}")
    path = _model_file(path, (".onnx",))
    ops = _onnx_ops(path)
    if kind == "dynamic":
        require(ops & DYNAMIC_OPS,
                f"{path.name} has no dynamic int8 operators ({sorted(DYNAMIC_OPS)}): use quantize_dynamic"
                + ("; it looks statically quantised (QuantizeLinear)" if ops & STATIC_OPS else ""))
    else:
        require(ops & STATIC_OPS,
                f"{path.name} has no QuantizeLinear/QLinear operators: use quantize_static with a CalibrationDataReader"
                + ("; it looks dynamically quantised" if ops & DYNAMIC_OPS else ""))
        require(not ops & {"DynamicQuantizeLinear"}, "a static model should not quantise activations at run time")
    fp32_kb = digits_onnx().stat().st_size / 1000
    kb = path.stat().st_size / 1000
    require(kb < 0.5 * fp32_kb, f"{path.name} is {kb:.1f} KB, not much smaller than fp32 ({fp32_kb:.1f} KB): "
            "were the weights quantised (weight_type=QuantType.QInt8)?")
    accuracy = _accuracy(path)
    require(accuracy >= 0.9, f"{path.name} scores only {accuracy:.3f}: check the calibration data "
            "(digits train images, float32, NCHW, scaled to [0, 1])")
    if kind == "static":
        _check_calibration(path, calibration)


@check("single-thread latency table")
def check_latency(results: dict) -> None:
    """``results``: label -> ``dk.benchmark`` result for "fp32", "dynamic" and "static", 1 thread, batch 1."""
    require_result(results, "results", "Exercise 4")
    require(isinstance(results, dict), f"expected a dict label -> BenchResult, got {type(results).__name__}")
    missing = {"fp32", "dynamic", "static"} - set(results)
    require(not missing, f"missing entries {sorted(missing)}: measure all three models")
    for label, result in results.items():  # a phone-like single core, one frame at a time
        require_fair_benchmark(f"results[{label!r}]", result, threads=1, batch=1, min_warmup=5, min_repeats=50)


@check("budget met: size and accuracy")
def check_budget(path) -> None:
    """The file to ship: below ``SIZE_BUDGET_KB`` and within ``MAX_DROP_POINTS`` of fp32 accuracy."""
    path = _model_file(path)
    kb = path.stat().st_size / 1000
    require(kb < SIZE_BUDGET_KB, f"{path.name} is {kb:.1f} KB, over the {SIZE_BUDGET_KB:.0f} KB budget: quantise the "
            "weights to int8 (a quarter of float32's bytes)")
    accuracy = _accuracy(path)
    drop = 100 * (fp32_accuracy() - accuracy)
    require(drop <= MAX_DROP_POINTS, f"accuracy {accuracy:.4f} is {drop:.2f} points below fp32 ({fp32_accuracy():.4f}), "
            f"more than the {MAX_DROP_POINTS:g} allowed: calibrate on representative data (the train images), "
            "try per_channel=True, or keep a sensitive layer in float with nodes_to_exclude")


@check("choice: the fastest model within budget")
def check_choice(choice: str, results: dict) -> None:
    """``choice`` ("fp32", "dynamic" or "static") meets the budget and is the fastest that does."""
    from ..quantize import quantize_digits
    from ..exports import digits_onnx

    require_result(results, "results", "Exercise 4")
    require_result(choice, "choice", "Exercise 5")
    require(choice in ("fp32", "dynamic", "static"), f"choice should be 'fp32', 'dynamic' or 'static', got {choice!r}")
    require(isinstance(results, dict) and {"fp32", "dynamic", "static"} <= set(results),
            "pass your latency results dict too: check_choice(choice, results)")
    files = {"fp32": digits_onnx(), "dynamic": quantize_digits("dynamic"), "static": quantize_digits("static")}

    def within(label):
        path = files[label]
        return path.stat().st_size / 1000 < SIZE_BUDGET_KB and 100 * (fp32_accuracy() - _accuracy(path)) <= MAX_DROP_POINTS

    require(within(choice), f"{choice!r} does not meet the budget (size < {SIZE_BUDGET_KB:.0f} KB and drop <= "
            f"{MAX_DROP_POINTS:g} point): fp32 is too big")
    eligible = [label for label in files if within(label)]
    fastest = min(eligible, key=lambda label: results[label].median_ms)
    require(choice == fastest, f"{choice!r} meets the budget, but by your own measurements {fastest!r} is faster "
            f"({results[fastest].median_ms:.4f} vs {results[choice].median_ms:.4f} ms median)")


@check("ORT-format file for the app")
def check_ort_file(path) -> None:
    """An ``.ort`` flatbuffer within the budget (the file that goes into the app's assets)."""
    path = _model_file(path)
    require(path.suffix == ".ort", f"{path.name} is an ONNX protobuf: convert it to the ORT format (.ort), "
            "e.g. with session option session.save_model_format=ORT or convert_onnx_models_to_ort")
    require(path.read_bytes()[4:8] == b"ORTM", f"{path.name} ends in .ort but is not an ORT flatbuffer (no 'ORTM' identifier)")
    from ..ortformat import ort_node_types

    x86_only = sorted(op for domain, op in ort_node_types(path) if domain == "com.microsoft.nchwc")
    require(not x86_only, f"{path.name} holds x86-only NCHWc nodes ({', '.join(x86_only)}): an ARM phone cannot run "
            "them. Write the file again with disabled_optimizers=[\"NchwcTransformer\"] in ort.InferenceSession(...)")
    check_budget.__wrapped__(path)


__all__ = ["CALIBRATION_BUDGET", "MAX_DROP_POINTS", "ready", "SIZE_BUDGET_KB", "check_budget", "check_choice", "check_helpers", "check_latency",
           "check_ort_file", "check_quantized", "fp32_accuracy"]
