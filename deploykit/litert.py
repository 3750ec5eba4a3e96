"""LiteRT (formerly TensorFlow Lite) helpers: cached ``.tflite`` conversions and a checked runner.

Lecture 08 shows the calls themselves (``litert_torch.convert(model.eval(), sample_args)``,
``.export(path)``, ``Interpreter(...)``, ``allocate_tensors``, ``set_tensor``/``invoke``/``get_tensor``,
``ai_edge_quantizer``). Later notebooks call :func:`digits_tflite`, :func:`load_interpreter` and
:func:`run_tflite`, which do the same steps once and reuse the file from ``artifacts/``.

* :func:`convert_to_tflite`: ``litert_torch.convert`` + ``.export``, cached by file name.
* :func:`digits_tflite`: the course's digits CNN as ``.tflite``: float32, dynamic-range int8
  (int8 weights, float activations) or full int8 (int8 weights and activations, calibrated on the
  digits train split), the last two made with Google's ``ai_edge_quantizer`` offline.
* :func:`load_interpreter`: ``Interpreter(model_path, num_threads)`` + ``allocate_tensors()``, with
  the XNNPACK delegate's INFO line (printed by ``allocate_tensors``, no switch) silenced.
* :func:`run_tflite`: set the input, invoke, read the output; checks shape and dtype first and
  (de)quantises for int8 input/output models, so every variant takes and returns float32.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np

from ._quiet import native_stderr_silenced
from .paths import artifact_path

#: ``quant`` values accepted by :func:`digits_tflite`, and the file each one is cached in.
DIGITS_TFLITE_FILES = {
    None: "digits_cnn.tflite",
    "dynamic": "digits_cnn_dynamic_int8.tflite",
    "int8": "digits_cnn_int8.tflite",
}
_QUANT_ALIASES = {None: None, "fp32": None, "float32": None, "dynamic": "dynamic", "int8": "int8", "static": "int8"}
CALIBRATION_SAMPLES = 200  # digits train images used to calibrate full-int8 activation ranges


def _check_tflite_name(name) -> str:
    if not isinstance(name, (str, Path)) or not str(name).endswith(".tflite"):
        raise ValueError(f"expected a file name ending in .tflite (e.g. 'digits_cnn.tflite'), got {name!r}")
    return str(name)


def convert_to_tflite(model, sample_args: tuple, name: str, *, overwrite: bool = False, **convert_kwargs) -> Path:
    """Convert ``model`` with ``litert_torch.convert(model.eval(), sample_args)`` and export it to
    ``artifacts/<name>``. Reuses an existing file unless ``overwrite``.

    ``sample_args`` is a tuple of example tensors (``(x,)`` for one input); their shapes become the
    model's fixed input shapes. Extra keyword arguments go to ``litert_torch.convert``.
    """
    import torch

    name = _check_tflite_name(name)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"convert_to_tflite expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(sample_args, torch.Tensor):
        raise TypeError("convert_to_tflite expected sample_args as a tuple of tensors, e.g. (x,), got a bare tensor")
    if not isinstance(sample_args, tuple) or not all(isinstance(a, torch.Tensor) for a in sample_args):
        raise TypeError(f"convert_to_tflite expected sample_args as a tuple of tensors, e.g. (x,), got {type(sample_args).__name__}")
    path = artifact_path(name)
    if path.exists() and not overwrite:
        return path
    import litert_torch

    edge_model = litert_torch.convert(model.eval(), sample_args, **convert_kwargs)
    edge_model.export(str(path))
    return path


def _normalise_quant(quant) -> str | None:
    if quant not in _QUANT_ALIASES:
        raise ValueError(f"quant expected one of None (float32), 'dynamic' or 'int8' ('static'), got {quant!r}")
    return _QUANT_ALIASES[quant]


@contextlib.contextmanager
def _quiet_quantizer():
    """ai_edge_quantizer's calibration prints a tqdm bar and a debugging-mode UserWarning."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), native_stderr_silenced():
        warnings.simplefilter("ignore")
        yield


def quantize_tflite(float_path, kind: str, name: str, *, calibration: np.ndarray | None = None,
                    overwrite: bool = False) -> Path:
    """Quantise a float ``.tflite`` with ``ai_edge_quantizer`` (offline, post-training).

    ``kind="dynamic"``: recipe ``dynamic_wi8_afp32`` (int8 weights, float activations; no data).
    ``kind="int8"``: recipe ``static_wi8_ai8`` (int8 weights and activations, int8 input/output);
    ``calibration`` is an ``(N, ...)`` float32 array of representative inputs, run one at a time.
    """
    from ai_edge_quantizer import quantizer, recipe

    kind = _normalise_quant(kind)
    if kind is None:
        raise ValueError("quantize_tflite expected kind 'dynamic' or 'int8', got a float32 kind")
    name = _check_tflite_name(name)
    float_path = Path(float_path)
    if not float_path.is_file():
        raise FileNotFoundError(f"float model not found: {float_path.name!r} (expected a converted .tflite file)")
    path = artifact_path(name)
    if path.exists() and not overwrite:
        return path
    q = quantizer.Quantizer(str(float_path))
    with _quiet_quantizer():
        if kind == "dynamic":
            q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
            result = q.quantize(enable_progress_bar=False, enable_progress_report=False)
        else:
            if calibration is None or len(calibration) == 0:
                raise ValueError("quantize_tflite(kind='int8') expected calibration inputs: an (N, ...) float32 array")
            q.load_quantization_recipe(recipe.static_wi8_ai8())
            with native_stderr_silenced():
                from ai_edge_litert.interpreter import Interpreter

                signatures = Interpreter(model_path=str(float_path)).get_signature_list()
            (signature, io_names), = signatures.items()
            (input_name,) = io_names["inputs"]
            samples = [{input_name: np.asarray(row[None], dtype=np.float32)} for row in calibration]
            calibration_result = q.calibrate({signature: samples}, num_threads=1)
            result = q.quantize(calibration_result, enable_progress_bar=False, enable_progress_report=False)
        path.unlink(missing_ok=True)  # export_model(overwrite=True) would log a WARNING on the root logger
        result.export_model(str(path))
    return path


def digits_tflite(quant: str | None = None, overwrite: bool = False) -> Path:
    """The course's digits CNN as LiteRT, batch 1, input ``(1, 1, 8, 8)`` float32 (NCHW, as in PyTorch).

    ``quant``: ``None`` (float32, ``litert_torch.convert``), ``"dynamic"`` (int8 weights, float
    activations) or ``"int8"`` / ``"static"`` (full integer: int8 weights, activations, input and
    output; calibrated on the first 200 digits train images). Cached in ``artifacts/``.
    """
    from .models import digits_example_input, digits_model

    kind = _normalise_quant(quant)
    float_path = artifact_path(DIGITS_TFLITE_FILES[None])
    if not float_path.exists() or (overwrite and kind is None):
        float_path = convert_to_tflite(digits_model(), (digits_example_input(1),), float_path.name, overwrite=True)
    if kind is None:
        return float_path
    calibration = None
    if kind == "int8":
        from .data import load_digits_split

        calibration = load_digits_split().x_train[:CALIBRATION_SAMPLES]
    return quantize_tflite(float_path, kind, DIGITS_TFLITE_FILES[kind], calibration=calibration, overwrite=overwrite)


def load_interpreter(path, num_threads: int | None = None):
    """``ai_edge_litert.interpreter.Interpreter`` for ``path``, tensors allocated, ready to invoke.

    ``num_threads``: CPU threads for the kernels (``None``: LiteRT's default). The XNNPACK INFO
    line that ``allocate_tensors`` prints to the native stderr is silenced.
    """
    from ai_edge_litert.interpreter import Interpreter

    path = Path(path)
    if path.suffix != ".tflite":
        raise ValueError(f"load_interpreter expected a LiteRT model file ending in .tflite, got {path.name!r}")
    if not path.is_file():
        raise FileNotFoundError(f"LiteRT model not found: {path.name!r} (expected a converted .tflite file; run the conversion cell first)")
    if num_threads is not None and (not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1):
        raise ValueError(f"num_threads expected a positive int or None, got {num_threads!r}")
    with native_stderr_silenced():
        interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        interpreter.allocate_tensors()
    return interpreter


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(detail["dtype"])


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if scale == 0:
        return y.astype(np.float32)
    return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)


def _io_details(interpreter) -> tuple[dict, dict, tuple[int, ...]]:
    """(input detail, output detail, input shape) of a one-input, one-output model, read once."""
    if not hasattr(interpreter, "get_input_details"):
        raise TypeError(f"expected a LiteRT Interpreter (see load_interpreter), got {type(interpreter).__name__}")
    io_details = getattr(interpreter, "_deploykit_io", None)
    if io_details is None:  # get_*_details builds fresh dicts on every call: read them once per interpreter
        inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"expected a LiteRT model with one input and one output, got {len(inputs)} and {len(outputs)}")
        io_details = (inputs[0], outputs[0], tuple(int(d) for d in inputs[0]["shape"]))
        try:
            interpreter._deploykit_io = io_details
        except AttributeError:
            pass
    return io_details


def run_tflite(interpreter, x) -> np.ndarray:
    """Run a one-input, one-output LiteRT model on ``x`` and return the output as float32.

    ``x`` must be float32 with the model's input shape; for a batch-1 model an ``(N, ...)`` batch
    is run one row at a time and stacked. An int8 (quantised) input is quantised with the model's
    scale and zero point, an int8 output dequantised, so float and int8 models compare directly.
    """
    if not hasattr(interpreter, "get_input_details"):
        raise TypeError(f"run_tflite expected a LiteRT Interpreter (see load_interpreter), got {type(interpreter).__name__}")
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"run_tflite expected a numpy float32 array, got {type(x).__name__}")
    inp, out, expected = _io_details(interpreter)
    if x.dtype != np.float32:
        raise ValueError(f"input dtype {x.dtype} does not match: expected float32 (convert with x.astype(np.float32))")
    if x.shape == expected:
        rows = [x]
    elif expected and expected[0] == 1 and x.ndim == len(expected) and tuple(x.shape[1:]) == expected[1:]:
        rows = [x[i : i + 1] for i in range(len(x))]
    else:
        hint = ""
        if x.ndim == 4 and len(expected) == 4 and tuple(x.shape[1:]) == (expected[2], expected[3], expected[1]):
            hint = " (your input looks channels-last NHWC; this model takes NCHW: x.transpose(0, 3, 1, 2))"
        elif x.ndim == 4 and len(expected) == 4 and tuple(x.shape[1:]) == (expected[3], expected[1], expected[2]):
            hint = " (your input looks channels-first NCHW; this model takes NHWC: x.transpose(0, 2, 3, 1))"
        raise ValueError(f"input shape {tuple(x.shape)} does not match: expected {expected}{hint}")
    quantised_in = np.issubdtype(inp["dtype"], np.integer)
    results = []
    for row in rows:
        interpreter.set_tensor(inp["index"], _quantize(row, inp) if quantised_in else np.ascontiguousarray(row))
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])
        results.append(_dequantize(y, out) if np.issubdtype(y.dtype, np.integer) else y.copy())
    return results[0] if len(results) == 1 else np.concatenate(results, axis=0)


def invoke_call(interpreter, x):
    """A zero-argument function that runs ``interpreter`` on ``x`` the way an app calls it:
    ``set_tensor``, ``invoke``, ``get_tensor``, nothing else.

    ``x`` (float32, exactly the model's input shape) is converted to the model's input type once,
    here: quantised with the model's scale and zero point for an int8 input. Timing the returned
    function therefore measures the runtime, not NumPy (:func:`run_tflite` quantises and
    dequantises on every call, which is convenient for comparing outputs but not for timing).
    The function returns the raw output tensor (int8 for an int8 output).
    """
    inp, out, expected = _io_details(interpreter)
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        raise ValueError(f"invoke_call expected a float32 numpy array, got {getattr(x, 'dtype', type(x).__name__)}")
    if tuple(x.shape) != expected:
        raise ValueError(f"input shape {tuple(x.shape)} does not match: expected {expected}")
    ready = _quantize(x, inp) if np.issubdtype(inp["dtype"], np.integer) else np.ascontiguousarray(x)
    in_index, out_index = inp["index"], out["index"]

    def call() -> np.ndarray:
        interpreter.set_tensor(in_index, ready)
        interpreter.invoke()
        return interpreter.get_tensor(out_index)

    return call


__all__ = [
    "CALIBRATION_SAMPLES", "DIGITS_TFLITE_FILES", "convert_to_tflite", "digits_tflite", "invoke_call",
    "load_interpreter", "quantize_tflite", "run_tflite",
]
