"""int8 quantisation and the ORT mobile format, cached in ``artifacts/``.

Lecture 07 shows the ``onnxruntime.quantization`` calls themselves; later notebooks (lecture 09,
the labs) call :func:`quantize_digits` and :func:`ort_format`, which run the same steps once and
reuse the files.

* ``quantize_digits("dynamic")``: weights stored as int8, activations quantised on the fly at run
  time (``quantize_dynamic``: ``ConvInteger`` / ``MatMulInteger``). No calibration data needed.
* ``quantize_digits("static")``: weights *and* activations int8, activation ranges calibrated on
  the digits train images (``quantize_static``, QDQ format, MinMax calibration).
* ``ort_format(path)``: the ONNX file optimised and saved as an ORT-format flatbuffer (``.ort``),
  the format of ONNX Runtime's reduced-size mobile builds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .paths import artifact_path, artifacts_dir

KINDS = ("dynamic", "static")
INPUT_NAME = "input"


def _check_onnx_path(onnx_path, role: str = "onnx_path") -> Path:
    path = Path(onnx_path)
    if path.suffix != ".onnx":
        raise ValueError(f"{role} expected an ONNX model file ending in .onnx, got {path.name!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{role}: model file not found: {path.name!r} (export it first, e.g. dk.digits_onnx())")
    return path


def _fresh(target: Path, source: Path) -> bool:
    """True when ``target`` exists and is at least as new as ``source``."""
    return target.exists() and target.stat().st_mtime >= source.stat().st_mtime


def file_size_kb(path) -> float:
    """Size of a file in kilobytes (1 KB = 1000 bytes, as ``dk.file_mb``'s MB is 10^6 bytes)."""
    return Path(path).stat().st_size / 1000


def calibration_batches(x: np.ndarray, batch_size: int = 64, input_name: str = INPUT_NAME) -> list[dict]:
    """``x`` (N, ...) float32 cut into feed dicts ``{input_name: batch}`` for a calibration reader."""
    if not isinstance(x, np.ndarray) or x.ndim < 2:
        raise ValueError(f"calibration_batches expected an (N, ...) NumPy array, got {getattr(x, 'shape', type(x).__name__)}")
    x = x.astype(np.float32, copy=False)
    return [{input_name: x[i : i + batch_size]} for i in range(0, len(x), batch_size)]


def _reader_class():
    from onnxruntime.quantization import CalibrationDataReader

    class ArrayCalibrationReader(CalibrationDataReader):
        """Feeds a list of ``{input_name: batch}`` dicts to ``quantize_static``, one per call."""

        def __init__(self, batches: list[dict]):
            self.batches = list(batches)
            self._iterator = iter(self.batches)

        def get_next(self):
            return next(self._iterator, None)

        def rewind(self):
            self._iterator = iter(self.batches)

    return ArrayCalibrationReader


def calibration_reader(x: np.ndarray, batch_size: int = 64, input_name: str = INPUT_NAME):
    """A ``CalibrationDataReader`` over ``x`` (e.g. the digits train images)."""
    return _reader_class()(calibration_batches(x, batch_size, input_name))


def quantize_onnx(onnx_path, name: str, kind: str, calibration_x: np.ndarray | None = None, *,
                  per_channel: bool = False, overwrite: bool = False) -> Path:
    """int8-quantise ``onnx_path`` into ``artifacts/<name>`` (``kind`` = ``"dynamic"`` or ``"static"``).

    ``"static"`` needs ``calibration_x`` (representative inputs, float32 NCHW). The model is first
    pre-processed (``quant_pre_process``: shape inference and graph clean-up, as the ORT docs
    recommend). Reuses an existing file newer than its source unless ``overwrite``.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if kind not in KINDS:
        raise ValueError(f"kind expected one of {KINDS}, got {kind!r}")
    source = _check_onnx_path(onnx_path)
    if not str(name).endswith(".onnx"):
        raise ValueError(f"name expected a file name ending in .onnx, got {name!r}")
    if kind == "static" and calibration_x is None:
        raise ValueError("static quantisation needs calibration_x: representative inputs such as the train images")
    target = artifact_path(name)
    if _fresh(target, source) and not overwrite:
        return target
    prepared = target.with_name(target.stem + ".pre.onnx")
    quant_pre_process(str(source), str(prepared))
    try:
        if kind == "dynamic":
            quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8, per_channel=per_channel)
        else:
            quantize_static(str(prepared), str(target), calibration_reader(calibration_x),
                            quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, per_channel=per_channel)
    finally:
        prepared.unlink(missing_ok=True)
    return target


def quantize_digits(kind: str, *, overwrite: bool = False) -> Path:
    """The course's digits CNN quantised to int8: ``artifacts/digits_cnn.int8_<kind>.onnx``.

    ``kind="dynamic"``: ``quantize_dynamic`` (int8 weights, activations quantised at run time).
    ``kind="static"``: ``quantize_static`` in QDQ format, calibrated (MinMax) on the digits train
    images. Built once from :func:`deploykit.digits_onnx`, then reused.
    """
    if kind not in KINDS:
        raise ValueError(f"quantize_digits expected kind 'dynamic' or 'static', got {kind!r}")
    from .data import load_digits_split
    from .exports import digits_onnx

    source = digits_onnx()
    calibration_x = load_digits_split().x_train if kind == "static" else None
    return quantize_onnx(source, f"digits_cnn.int8_{kind}.onnx", kind, calibration_x, overwrite=overwrite)


def ort_format(onnx_path, *, overwrite: bool = False, optimization_level: str = "all") -> Path:
    """Convert an ONNX model to the ORT mobile format: ``<name>.ort`` beside it in artifacts/.

    Does what ``python -m onnxruntime.tools.convert_onnx_models_to_ort`` does for one file: load
    the model with graph optimisations on (``optimization_level`` ``"basic"``, ``"extended"`` or
    ``"all"``; the platform-specific NCHWc layout rewrite is left out, so the file runs on ARM
    too), then save the optimised graph as an ORT flatbuffer (session config
    ``session.save_model_format = ORT``). Reuses an existing file newer than its source.
    """
    import onnxruntime as ort

    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if optimization_level not in levels:
        raise ValueError(f"optimization_level expected one of {sorted(levels)}, got {optimization_level!r}")
    source = _check_onnx_path(onnx_path)
    target = source.with_suffix(".ort")
    try:
        target.resolve().relative_to(artifacts_dir().resolve())
    except ValueError:
        target = artifact_path(source.with_suffix(".ort").name)
    if _fresh(target, source) and not overwrite:
        return target
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[optimization_level]
    options.optimized_model_filepath = str(target)
    options.add_session_config_entry("session.save_model_format", "ORT")
    disabled = ["NchwcTransformer"] if optimization_level == "all" else None
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    return target


def session(path, threads: int = 1):
    """An ONNX Runtime CPU session for a ``.onnx`` or ``.ort`` file with ``threads`` intra-op threads
    (1 by default: a "phone-like" single core)."""
    import onnxruntime as ort

    path = Path(path)
    if path.suffix not in (".onnx", ".ort"):
        raise ValueError(f"session expected a .onnx or .ort file, got {path.name!r}")
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path.name!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_accuracy(path, x: np.ndarray, y: np.ndarray, threads: int = 1) -> float:
    """Top-1 accuracy of an ONNX/ORT model file on ``x`` (float32 NCHW) with labels ``y``."""
    sess = session(path, threads)
    logits = sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32, copy=False)})[0]
    return float((logits.argmax(axis=1) == y).mean())


__all__ = [
    "KINDS", "calibration_batches", "calibration_reader", "file_size_kb", "onnx_accuracy", "ort_format",
    "quantize_digits", "quantize_onnx", "session",
]
