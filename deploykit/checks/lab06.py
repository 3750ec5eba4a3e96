"""Checks for lab 06: convert the digits model to LiteRT, run it, compare it with ONNX Runtime.

Each check prints ``[PASS] ...`` or a ``[HINT] ...`` naming the likely mistake (model left in
training mode, channels-last input, outputs computed on different inputs, ...).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import check, require, require_fair_benchmark, require_result

TEST_ROWS = 20  # test images a check runs through the learner's model or function


def _reference(x: np.ndarray) -> np.ndarray:
    """PyTorch eval-mode logits of the course model on ``x``."""
    import torch

    from ..models import digits_model

    with torch.inference_mode():
        return digits_model().eval()(torch.from_numpy(x)).numpy()


def _test_x() -> np.ndarray:
    from ..data import load_digits_split

    return load_digits_split().x_test


def _as_array(value, name: str) -> np.ndarray:
    if isinstance(value, (list, tuple)):
        require(not (len(value) == 1 and hasattr(value[0], "shape")),
                f"{name} is a list holding one array: InferenceSession.run returns a list, take [0]")
        require(False, f"{name} is a {type(value).__name__}: stack the per-image outputs into one array "
                       "(np.concatenate(rows, axis=0))")
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    require(isinstance(value, np.ndarray), f"{name} expected a numpy array, got {type(value).__name__}")
    return value


@check("Exercise 1: the digits model converted to LiteRT")
def check_conversion(tflite_path, model=None) -> None:
    from ..litert import load_interpreter, run_tflite

    require(model is None or not getattr(model, "training", False),
            "your model is still in training mode: convert model.eval(). In training mode Dropout is a "
            "random operation litert_torch cannot convert (the error names aten.rand_like), and "
            "BatchNorm would use each batch's own statistics")
    require(isinstance(tflite_path, (str, Path)), f"expected the path of your .tflite file, got {type(tflite_path).__name__}")
    path = Path(tflite_path)
    require(path.suffix == ".tflite", f"expected a file ending in .tflite, got {path.name!r}")
    require(path.is_file(), f"{path.name} does not exist: call .export(str(tflite_path)) on what litert_torch.convert returns")
    interpreter = load_interpreter(path, num_threads=1)
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    require(len(inputs) == 1 and len(outputs) == 1, f"expected one input and one output, got {len(inputs)} and {len(outputs)}")
    shape = tuple(int(d) for d in inputs[0]["shape"])
    require(shape != (1, 8, 8, 1),
            "the model's input is channels-last (1, 8, 8, 1): for this lab keep PyTorch's NCHW layout, "
            "convert model.eval() with the example input dk.digits_example_input(1) as it is")
    require(shape == (1, 1, 8, 8), f"input shape {shape}: expected (1, 1, 8, 8), one NCHW digit; "
                                   "pass sample_args=(dk.digits_example_input(1),)")
    require(inputs[0]["dtype"] == np.float32,
            f"input dtype {np.dtype(inputs[0]['dtype']).name}: expected float32 (convert the float model, no quantisation)")
    require(tuple(int(d) for d in outputs[0]["shape"]) == (1, 10), f"output shape {outputs[0]['shape'].tolist()}: expected [1, 10] logits")
    x = _test_x()[:TEST_ROWS]
    got, want = run_tflite(interpreter, x), _reference(x)
    diff = float(np.abs(got - want).max())
    require(diff < 1e-3,
            f"the LiteRT outputs differ from the eval-mode PyTorch model by up to {diff:.3g}: did you call "
            "model.eval() before litert_torch.convert? In training mode BatchNorm uses the batch's own "
            "statistics and Dropout drops units, and that is what gets converted")


@check("Exercise 2: litert_predict runs the interpreter on every image")
def check_litert_predict(litert_predict, tflite_path) -> None:
    require(callable(litert_predict), f"expected your function litert_predict, got {type(litert_predict).__name__}")
    require(isinstance(tflite_path, (str, Path)), f"expected the path of your .tflite file, got {type(tflite_path).__name__}")
    require(Path(tflite_path).is_file(), f"{Path(tflite_path).name} does not exist yet: run Exercise 1 first "
            "(it converts the model and writes the file)")
    x = _test_x()[:TEST_ROWS]
    y = _as_array(litert_predict(tflite_path, x), "litert_predict's result")
    require(y.shape != (1, 10), f"got shape {y.shape} for {TEST_ROWS} images: the model takes one image per "
                                "invoke(); loop over the images and stack the outputs")
    require(y.shape == (TEST_ROWS, 10), f"got shape {y.shape} for {TEST_ROWS} images: expected ({TEST_ROWS}, 10)")
    require(not np.allclose(y, y[:1]),
            "every row is the same: the interpreter reuses its output buffer, so copy each result "
            "(get_tensor returns a copy; interpreter.tensor(...)() is a view) and set each image before invoke()")
    require(y.dtype == np.float32, f"result dtype {y.dtype}: expected the model's float32 logits")
    diff = float(np.abs(y - _reference(x)).max())
    require(diff < 1e-3, f"results differ from PyTorch by up to {diff:.3g}: set_tensor each image "
                         "(shape (1, 1, 8, 8)) before invoke(), then get_tensor the output")


@check("Exercise 3: ONNX Runtime and LiteRT compared on the same inputs")
def check_parity(ort_logits, litert_logits) -> None:
    require_result(ort_logits, "ort_logits", "Exercise 3")
    require_result(litert_logits, "litert_logits", "Exercise 3")
    ort_y = _as_array(ort_logits, "ort_logits")
    lite_y = _as_array(litert_logits, "litert_logits")
    x = _test_x()
    expected = (len(x), 10)
    require(ort_y.shape == expected, f"ort_logits has shape {ort_y.shape}: expected {expected}, the whole split.x_test")
    require(lite_y.shape == expected, f"litert_logits has shape {lite_y.shape}: expected {expected}, the whole split.x_test")
    require(ort_y is not lite_y, "you passed the same array twice: compute one with ONNX Runtime, one with LiteRT")
    reference = _reference(x)
    ort_ok = np.abs(ort_y - reference).max() < 1e-3
    lite_ok = np.abs(lite_y - reference).max() < 1e-3
    if not (ort_ok and lite_ok):
        same_rows = np.abs(ort_y - lite_y).max() < 1e-3
        require(same_rows, "the two outputs were not computed on the same inputs in the same order: "
                           "run both on split.x_test, unshuffled")
        require(False, "both outputs agree with each other but not with the course model on split.x_test: "
                       "use dk.digits_onnx() and your eval-mode conversion, on split.x_test")
    agreement = float((ort_y.argmax(1) == lite_y.argmax(1)).mean())
    require(agreement == 1.0, f"top-1 agreement {agreement:.2%}: expected 100% for two float32 models")


@check("Exercise 4: latency measured fairly (1 thread, batch 1, warm-up, repeats)")
def check_latency(ort_result, litert_result, tflite_path=None) -> None:
    require_result(ort_result, "ort_result", "Exercise 4")
    require_result(litert_result, "litert_result", "Exercise 4")
    for name, result in (("ort_result", ort_result), ("litert_result", litert_result)):
        require_fair_benchmark(name, result, threads=1, batch=1, min_warmup=1, min_repeats=20)
    require(ort_result.label != litert_result.label or not ort_result.label,
            "both results carry the same label: label them 'ONNX Runtime' and 'LiteRT'")
    require(ort_result is not litert_result, "you passed the same result twice")
    # Re-measure both the fair way (session and interpreter built once, outside the timing) and
    # compare: building either inside the timed function costs tens of times a call.
    fair_ort, fair_litert = _fair_latencies(tflite_path)
    for name, result, fair, built in (("ort_result", ort_result, fair_ort, "the InferenceSession"),
                                      ("litert_result", litert_result, fair_litert, "the Interpreter (or allocate_tensors)")):
        if fair is None:
            continue
        ratio = result.median_ms / fair
        require(ratio < SLOWER_THAN_FAIR, f"{name}: median {result.median_ms:.3f} ms is {ratio:.0f}x what the check "
                f"measures with {built} created once ({fair:.3f} ms): is {built} created inside the timed "
                "function? Create it once, time only the calls")
        require(ratio > 1 / SLOWER_THAN_FAIR, f"{name}: median {result.median_ms:.4f} ms is far below what one "
                f"inference takes here ({fair:.3f} ms): does the timed function really run the model?")


#: A learner's median may differ from the check's own fair measurement by this factor (load, noise).
SLOWER_THAN_FAIR = 5.0


def _fair_latencies(tflite_path) -> tuple[float, float | None]:
    """Median ms per call of ORT on dk.digits_onnx() and of LiteRT on ``tflite_path`` (None if absent)."""
    from ..bench import benchmark
    from ..exports import digits_onnx
    from ..litert import load_interpreter
    from ..quantize import session as ort_session

    one = _test_x()[:1]
    session = ort_session(digits_onnx(), threads=1)
    ort_ms = benchmark(lambda: session.run(None, {"input": one}), warmup=5, repeats=50, threads=1).median_ms
    if tflite_path is None or not Path(tflite_path).is_file():
        return ort_ms, None
    interpreter = load_interpreter(tflite_path, num_threads=1)
    index = interpreter.get_input_details()[0]["index"]

    def invoke():
        interpreter.set_tensor(index, one)
        interpreter.invoke()

    return ort_ms, benchmark(invoke, warmup=5, repeats=50, threads=1).median_ms


__all__ = ["check_conversion", "check_latency", "check_litert_predict", "check_parity"]
