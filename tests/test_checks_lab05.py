"""Lab 05 checks: a right answer passes, each kind of wrong answer gets its hint."""
from __future__ import annotations

import numpy as np
import pytest

import deploykit as dk
from deploykit import quantize as q
from deploykit.bench import BenchResult
from deploykit.checks import lab05


def bench(label, median, threads=1, batch=1, warmup=10, repeats=100):
    return BenchResult(label, median, median, median, median, warmup, repeats, threads, batch, median)


@pytest.fixture(scope="module")
def split():
    return dk.load_digits_split()


@pytest.fixture(scope="module")
def results():
    return {"fp32": bench("fp32", 0.009), "dynamic": bench("dynamic", 0.034), "static": bench("static", 0.010)}


def right_size_kb(path):
    return path.stat().st_size / 1000


def make_accuracy(split):
    def accuracy_of(path):
        return q.onnx_accuracy(path, split.x_test, split.y_test)
    return accuracy_of


def test_helpers(split, capsys):
    assert lab05.check_helpers(right_size_kb, make_accuracy(split))
    assert not lab05.check_helpers(lambda p: p.stat().st_size, make_accuracy(split))
    assert "bytes" in capsys.readouterr().out
    for kib in (lambda p: p.stat().st_size / 1024, lambda p: round(p.stat().st_size / 1024, 1),
                lambda p: p.stat().st_size >> 10):  # KiB, not the course's KB, however rounded
        assert not lab05.check_helpers(kib, make_accuracy(split))
        assert "KiB" in capsys.readouterr().out
    assert lab05.check_helpers(lambda p: round(p.stat().st_size / 1000, 1), make_accuracy(split))
    capsys.readouterr()
    assert not lab05.check_helpers(lambda p: p.stat().st_size // 1000, make_accuracy(split))
    out = capsys.readouterr().out
    assert "//" in out and f"{q.file_size_kb(dk.digits_onnx()):.1f}" not in out  # the method, never the value
    assert not lab05.check_helpers(right_size_kb, lambda p: 100 * make_accuracy(split)(p))
    assert "percentage" in capsys.readouterr().out
    assert not lab05.check_helpers(right_size_kb, lambda p: q.onnx_accuracy(p, split.x_test[:50], split.y_test[:50]))
    assert "expected" in capsys.readouterr().out

    def stub(path):
        raise NotImplementedError
    assert not lab05.check_helpers(stub, stub)
    assert "not written yet" in capsys.readouterr().out


def learner_static(name, images, method="Percentile", batch=None):
    """What a learner's Exercise 3 writes: the pre-processed model, quantize_static with a reader over ``images``."""
    import contextlib
    import io

    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": images[i:i + batch]} for i in range(0, len(images), batch)])

        def get_next(self):
            return next(self.batches, None)

    batch = batch or max(size for size in range(1, 65) if len(images) % size == 0)   # histograms: one batch shape
    target = dk.artifact_path(f"test_lab05/{name}.onnx")
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(str(lab05._prepared_model()), str(target), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, method))
    return target


def test_quantized(split, capsys):
    dynamic, static = q.quantize_digits("dynamic"), q.quantize_digits("static")
    assert lab05.check_quantized(dynamic, "dynamic")
    images = split.x_train[:256]
    assert lab05.check_quantized(learner_static("percentile_256", images), "static", images)
    capsys.readouterr()
    assert not lab05.check_quantized(static, "dynamic")
    assert "statically quantised" in capsys.readouterr().out
    assert not lab05.check_quantized(dynamic, "static")
    assert "dynamically quantised" in capsys.readouterr().out
    assert not lab05.check_quantized(dk.digits_onnx(), "dynamic")
    assert "quantize_dynamic" in capsys.readouterr().out
    assert not lab05.check_quantized(dk.artifact_path("missing.onnx"), "static")
    assert "does not exist" in capsys.readouterr().out
    assert not lab05.check_quantized(q.ort_format(static), "static")
    assert "wrong file type" in capsys.readouterr().out


def test_latency(results, capsys):
    assert lab05.check_latency(results)
    capsys.readouterr()
    assert not lab05.check_latency({**results, "static": bench("static", 0.01, threads=2)})
    assert "intra_op_num_threads=1" in capsys.readouterr().out
    assert not lab05.check_latency({**results, "static": bench("static", 0.01, repeats=10)})
    assert "at least 50" in capsys.readouterr().out
    assert not lab05.check_latency({"fp32": results["fp32"]})
    assert "missing" in capsys.readouterr().out
    assert not lab05.check_latency({**results, "static": 0.01})
    assert "dk.benchmark" in capsys.readouterr().out


def test_budget(tmp_path, capsys):
    assert lab05.check_budget(q.quantize_digits("static"))
    capsys.readouterr()
    assert not lab05.check_budget(dk.digits_onnx())
    assert "over the 60 KB budget" in capsys.readouterr().out
    wrong = tmp_path / "digits.tflite"
    wrong.write_bytes(b"TFL3")
    assert not lab05.check_budget(wrong)
    assert "wrong file type" in capsys.readouterr().out


def test_budget_accuracy_drop(tmp_path, capsys):
    """A small file that has lost accuracy: the weights of the last layer zeroed."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(q.quantize_digits("dynamic")))
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.int8 and array.ndim == 2:
            init.CopyFrom(numpy_helper.from_array(np.zeros_like(array), init.name))
    broken = dk.artifact_path("test_lab05/broken.onnx")
    onnx.save(model, str(broken))
    assert not lab05.check_budget(broken)
    assert "points below fp32" in capsys.readouterr().out


def test_choice(results, capsys):
    assert lab05.check_choice("static", results)
    capsys.readouterr()
    assert not lab05.check_choice("fp32", results)
    assert "too big" in capsys.readouterr().out
    assert not lab05.check_choice("dynamic", results)
    assert "'static' is faster" in capsys.readouterr().out
    assert not lab05.check_choice("int4", results)
    assert "should be" in capsys.readouterr().out


def test_ort_file(capsys):
    static = q.quantize_digits("static")
    assert lab05.check_ort_file(q.ort_format(static))
    capsys.readouterr()
    assert not lab05.check_ort_file(static)
    assert "ORT format" in capsys.readouterr().out
    fake = dk.artifact_path("test_lab05/fake.ort")
    fake.write_bytes(static.read_bytes())
    assert not lab05.check_ort_file(fake)
    assert "not an ORT flatbuffer" in capsys.readouterr().out


@pytest.mark.parametrize("images, words", [
    (lambda split: split.x_test[:256], "are test images"),                                   # part of the test split
    (lambda split: np.concatenate([split.x_train[:192], split.x_test[:64]]), "64 of your 256"),  # train + test
    (lambda split: split.x_test[:300], "are test images"),
    (lambda split: split.x_train[:320], "budget is 256"),
    (lambda split: np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32), "not train images"),
])
def test_static_calibration_data_that_is_not_allowed(split, capsys, images, words):
    # Issue 23 §2: calibrating on part of the test split, or train+test, or over the budget, never passes.
    data = images(split)
    path = learner_static("calibrated_on_other_data", data)
    assert not lab05.check_quantized(path, "static", data)
    assert words in capsys.readouterr().out


def test_static_calibrated_on_test_but_train_images_passed(split, capsys):
    path = learner_static("calibrated_on_test", split.x_test[:256])
    assert not lab05.check_quantized(path, "static", split.x_train[:256])
    assert "pass exactly the images" in capsys.readouterr().out


def test_static_with_minmax_or_no_images(split, capsys):
    images = split.x_train[:128]
    path = learner_static("minmax_128", images, method="MinMax")
    assert not lab05.check_quantized(path, "static", images)
    assert "CalibrationMethod.Percentile" in capsys.readouterr().out
    assert not lab05.check_quantized(path, "static")
    assert "calibration_images" in capsys.readouterr().out


def test_static_batching_does_not_matter(split, capsys):
    images = split.x_train[:64]
    assert lab05.check_quantized(learner_static("percentile_64_in_16s", images, batch=16), "static", images)
    assert capsys.readouterr().out.startswith("[PASS]")


def test_blank_exercises_get_a_hint_naming_the_exercise(capsys):
    assert not lab05.check_latency({})
    assert "finish Exercise 4" in capsys.readouterr().out
    assert not lab05.check_choice(None, {"fp32": 1, "dynamic": 1, "static": 1})
    assert "finish Exercise 5" in capsys.readouterr().out


def write_ort(source, target, disabled):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(target)
    options.add_session_config_entry("session.save_model_format", "ORT")
    options.log_severity_level = 3  # the "hardware specific optimizations" warning is the point of the test
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    return target


def test_ort_file_with_the_x86_only_nchwc_layout(capsys):
    from deploykit.ortformat import ort_node_types

    target = write_ort(dk.digits_onnx(), dk.artifact_path("test_lab05/fp32_nchwc.ort"), [])
    if not any(domain == "com.microsoft.nchwc" for domain, _ in ort_node_types(target)):
        pytest.skip("this CPU gets no NCHWc layout from ONNX Runtime (it is x86 AVX2/AVX-512 only)")
    assert not lab05.check_ort_file(target)
    assert "NchwcTransformer" in capsys.readouterr().out
    portable = write_ort(dk.digits_onnx(), dk.artifact_path("test_lab05/fp32_portable.ort"), ["NchwcTransformer"])
    assert not any(domain == "com.microsoft.nchwc" for domain, _ in ort_node_types(portable))
    assert not lab05.check_ort_file(portable)  # portable, but the float32 file is over the size budget
    assert "budget" in capsys.readouterr().out
