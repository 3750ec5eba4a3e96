"""deploykit.ortformat: the .onnx / .ort size breakdown lecture 07 teaches."""
from __future__ import annotations

import onnxruntime as ort
import pytest

import deploykit as dk
from deploykit.ortformat import onnx_file_summary, ort_file_summary


def test_ort_and_onnx_hold_the_same_weight_bytes(tmp_artifacts):
    onnx_path = dk.digits_onnx()
    ort_path = tmp_artifacts / "digits.ort"
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(ort_path)
    options.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"], disabled_optimizers=["NchwcTransformer"])
    as_onnx, as_ort = onnx_file_summary(onnx_path), ort_file_summary(ort_path)
    assert as_onnx.weight_bytes == as_ort.weight_bytes > 0.9 * as_onnx.file_bytes   # float32 weights dominate
    assert as_ort.nodes < as_onnx.nodes            # fused: Conv+ReLU -> FusedConv
    assert as_onnx.other_bytes > 0 and as_ort.other_bytes > 0
    assert as_onnx.file_bytes == onnx_path.stat().st_size


def test_summaries_refuse_wrong_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected an existing .ort file"):
        ort_file_summary(tmp_path / "missing.ort")
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="ending in .ort"):
        ort_file_summary(tmp_path / "model.onnx")
    (tmp_path / "fake.ort").write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match="not an ORT-format file"):
        ort_file_summary(tmp_path / "fake.ort")
