"""deploykit.litert: cached conversions, interpreter loading, and a runner that names what it expected."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import deploykit as dk
from deploykit import litert


@pytest.fixture(scope="module")
def split():
    return dk.load_digits_split()


@pytest.fixture(scope="module")
def fp32_path():
    return litert.digits_tflite()


def test_digits_tflite_fp32_matches_pytorch(fp32_path, split):
    assert fp32_path.name == "digits_cnn.tflite" and fp32_path.stat().st_size > 0
    interpreter = litert.load_interpreter(fp32_path, num_threads=1)
    y = litert.run_tflite(interpreter, split.x_test[:32])
    with torch.inference_mode():
        ref = dk.digits_model()(torch.from_numpy(split.x_test[:32])).numpy()
    assert y.shape == (32, 10) and y.dtype == np.float32
    report = dk.parity_report(ref, y, atol=1e-4)
    assert report.allclose and report.top1_agreement == 1.0


def test_digits_tflite_is_cached(fp32_path):
    before = fp32_path.stat().st_mtime_ns
    assert litert.digits_tflite() == fp32_path
    assert fp32_path.stat().st_mtime_ns == before


@pytest.mark.parametrize("quant", ["dynamic", "int8"])
def test_quantised_variants_are_smaller_and_accurate(quant, fp32_path, split):
    path = litert.digits_tflite(quant)
    assert path.stat().st_size < 0.5 * fp32_path.stat().st_size
    y = litert.run_tflite(litert.load_interpreter(path), split.x_test)
    assert y.dtype == np.float32  # int8 outputs are dequantised
    assert (y.argmax(1) == split.y_test).mean() > 0.95


def test_static_alias_and_bad_quant():
    assert litert.digits_tflite("static") == litert.digits_tflite("int8")
    with pytest.raises(ValueError, match="expected one of None"):
        litert.digits_tflite("fp16")


def test_load_interpreter_missing_file():
    with pytest.raises(FileNotFoundError, match="expected a converted .tflite file"):
        litert.load_interpreter(dk.artifact_path("does_not_exist.tflite"))


def test_load_interpreter_wrong_suffix():
    with pytest.raises(ValueError, match="ending in .tflite"):
        litert.load_interpreter("model.onnx")


def test_load_interpreter_bad_threads(fp32_path):
    with pytest.raises(ValueError, match="positive int"):
        litert.load_interpreter(fp32_path, num_threads=0)


def test_run_tflite_wrong_dtype(fp32_path, split):
    interpreter = litert.load_interpreter(fp32_path)
    with pytest.raises(ValueError, match="expected float32"):
        litert.run_tflite(interpreter, split.x_test[:1].astype(np.float64))


def test_run_tflite_wrong_shape_names_expected(fp32_path):
    interpreter = litert.load_interpreter(fp32_path)
    with pytest.raises(ValueError, match=r"expected \(1, 1, 8, 8\)"):
        litert.run_tflite(interpreter, np.zeros((1, 1, 4, 4), np.float32))


def test_run_tflite_nhwc_input_gets_layout_hint(fp32_path, split):
    interpreter = litert.load_interpreter(fp32_path)
    with pytest.raises(ValueError, match="channels-last NHWC"):
        litert.run_tflite(interpreter, split.x_test[:4].transpose(0, 2, 3, 1))


def test_run_tflite_rejects_non_interpreter():
    with pytest.raises(TypeError, match="LiteRT Interpreter"):
        litert.run_tflite("digits_cnn.tflite", np.zeros((1, 1, 8, 8), np.float32))


def test_convert_to_tflite_argument_checks():
    model = dk.digits_model()
    with pytest.raises(ValueError, match="ending in .tflite"):
        litert.convert_to_tflite(model, (dk.digits_example_input(1),), "digits.onnx")
    with pytest.raises(TypeError, match="tuple of tensors"):
        litert.convert_to_tflite(model, dk.digits_example_input(1), "digits_bad.tflite")


@pytest.mark.parametrize("quant", [None, "int8"])
def test_invoke_call_gives_run_tflites_answer_without_numpy_per_call(quant, split):
    """The timing-friendly call returns the runtime's raw output: dequantised, it is run_tflite's."""
    interpreter = litert.load_interpreter(litert.digits_tflite(quant), num_threads=1)
    one = split.x_test[:1]
    raw = litert.invoke_call(interpreter, one)()
    output = interpreter.get_output_details()[0]
    if quant is None:
        assert raw.dtype == np.float32
        got = raw
    else:
        assert raw.dtype == np.int8  # full int8: int8 in, int8 out
        scale, zero_point = output["quantization"]
        got = (raw.astype(np.float32) - zero_point) * scale
    np.testing.assert_allclose(got, litert.run_tflite(interpreter, one), rtol=0, atol=1e-6)


def test_invoke_call_names_what_it_expected(fp32_path, split):
    interpreter = litert.load_interpreter(fp32_path)
    with pytest.raises(ValueError, match=r"expected \(1, 1, 8, 8\)"):
        litert.invoke_call(interpreter, split.x_test[:2])
    with pytest.raises(ValueError, match="float32"):
        litert.invoke_call(interpreter, split.x_test[:1].astype(np.float64))
    with pytest.raises(TypeError, match="LiteRT Interpreter"):
        litert.invoke_call("digits_cnn.tflite", split.x_test[:1])
