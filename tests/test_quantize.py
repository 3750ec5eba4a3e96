"""deploykit.quantize: cached int8 digits models and the ORT mobile format."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import deploykit as dk
from deploykit import quantize as q


@pytest.fixture(scope="module")
def split():
    return dk.load_digits_split()


def test_bad_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="'dynamic' or 'static'"):
        q.quantize_digits("int4")
    with pytest.raises(ValueError, match="kind expected one of"):
        q.quantize_onnx(dk.digits_onnx(), "x.onnx", "fp16")


def test_static_without_calibration_data_is_refused():
    with pytest.raises(ValueError, match="calibration_x"):
        q.quantize_onnx(dk.digits_onnx(), "x.onnx", "static")


def test_wrong_file_types_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\.onnx"):
        q.ort_format(tmp_path / "model.tflite")
    with pytest.raises(FileNotFoundError):
        q.ort_format(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match=r"\.onnx or \.ort"):
        q.session(tmp_path / "model.pth")
    with pytest.raises(ValueError, match="ending in .onnx"):
        q.quantize_onnx(dk.digits_onnx(), "x.tflite", "dynamic")


@pytest.mark.parametrize("kind, int8_op", [("dynamic", "ConvInteger"), ("static", "QuantizeLinear")])
def test_quantize_digits_is_small_accurate_and_cached(split, kind, int8_op):
    path = q.quantize_digits(kind)
    assert path.name == f"digits_cnn.int8_{kind}.onnx"
    assert path.parent == dk.artifacts_dir()
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert int8_op in ops
    fp32_kb = q.file_size_kb(dk.digits_onnx())
    assert q.file_size_kb(path) < 0.45 * fp32_kb  # int8 weights: about a quarter, plus scales and graph
    fp32_acc = q.onnx_accuracy(dk.digits_onnx(), split.x_test, split.y_test)
    assert q.onnx_accuracy(path, split.x_test, split.y_test) >= fp32_acc - 0.02
    mtime = path.stat().st_mtime_ns
    assert q.quantize_digits(kind) == path and path.stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_ort_format_runs_and_matches_onnx(split):
    source = q.quantize_digits("dynamic")
    ort_path = q.ort_format(source)
    assert ort_path.suffix == ".ort" and ort_path.parent == dk.artifacts_dir()
    assert ort_path.read_bytes()[4:8] == b"ORTM"  # flatbuffer file identifier
    x = split.x_test[:16]
    a = q.session(source).run(None, {"input": x})[0]
    b = q.session(ort_path).run(None, {"input": x})[0]
    assert np.array_equal(a.argmax(1), b.argmax(1))
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_calibration_batches_cover_all_rows():
    x = np.zeros((130, 1, 8, 8), np.float32)
    batches = q.calibration_batches(x, batch_size=64)
    assert [len(b["input"]) for b in batches] == [64, 64, 2]
    reader = q.calibration_reader(x)
    assert sum(1 for _ in iter(reader.get_next, None)) == 3
    with pytest.raises(ValueError, match="NumPy array"):
        q.calibration_batches([1, 2, 3])
