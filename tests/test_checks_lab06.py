"""Lab 06 checks: each passes the right answer and gives a specific hint for typical wrong ones."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import deploykit as dk
from deploykit import litert
from deploykit.checks import lab06


def outcome(capsys) -> str:
    return capsys.readouterr().out.strip()


@pytest.fixture(scope="module")
def split():
    return dk.load_digits_split()


@pytest.fixture(scope="module")
def good_path():
    return litert.digits_tflite()


def good_predict(path, x):
    interpreter = litert.load_interpreter(path, num_threads=1)
    return litert.run_tflite(interpreter, x)


# Exercise 1 ---------------------------------------------------------------------------------

def test_conversion_pass(good_path, capsys):
    assert lab06.check_conversion(good_path)
    assert outcome(capsys).startswith("[PASS]")


def test_conversion_missing_file(capsys):
    assert not lab06.check_conversion(dk.artifact_path("lab06_tests/missing.tflite"))
    assert "does not exist" in outcome(capsys)


def test_conversion_wrong_suffix(capsys):
    assert not lab06.check_conversion(dk.digits_onnx())
    assert "ending in .tflite" in outcome(capsys)


def test_conversion_forgot_eval(good_path, capsys):
    model = dk.train_digits_model().model
    model.train()  # the mistake: litert_torch.convert(model, ...) without .eval() fails, or converts training behaviour
    assert not lab06.check_conversion(dk.artifact_path("lab06_tests/missing.tflite"), model)
    assert "model.eval()" in outcome(capsys)
    assert not lab06.check_conversion(good_path, model)
    assert "training mode" in outcome(capsys)


def test_conversion_pass_with_eval_model(good_path, capsys):
    assert lab06.check_conversion(good_path, dk.digits_model())
    assert outcome(capsys).startswith("[PASS]")


def test_conversion_outputs_differ(capsys):
    import litert_torch

    path = dk.artifact_path("lab06_tests/other_weights.tflite")
    if not path.exists():
        torch.manual_seed(1)
        litert_torch.convert(dk.DigitsCNN().eval(), (dk.digits_example_input(1),)).export(str(path))
    assert not lab06.check_conversion(path)
    assert "differ from the eval-mode PyTorch model" in outcome(capsys)


def test_conversion_channels_last(capsys):
    import litert_torch

    path = dk.artifact_path("lab06_tests/nhwc.tflite")
    if not path.exists():
        wrapped = litert_torch.to_channel_last_io(dk.digits_model(), args=[0]).eval()
        litert_torch.convert(wrapped, (dk.digits_example_input(1).permute(0, 2, 3, 1),)).export(str(path))
    assert not lab06.check_conversion(path)
    assert "channels-last" in outcome(capsys)


def test_conversion_int8_model(capsys):
    assert not lab06.check_conversion(litert.digits_tflite("int8"))
    assert "expected float32" in outcome(capsys)


# Exercise 2 ---------------------------------------------------------------------------------

def test_predict_pass(good_path, capsys):
    assert lab06.check_litert_predict(good_predict, good_path)
    assert outcome(capsys).startswith("[PASS]")


def test_predict_only_first_image(good_path, capsys):
    assert not lab06.check_litert_predict(lambda path, x: good_predict(path, x[:1]), good_path)
    assert "loop over the images" in outcome(capsys)


def test_predict_returns_list(good_path, capsys):
    assert not lab06.check_litert_predict(lambda path, x: [good_predict(path, row[None]) for row in x], good_path)
    assert "stack" in outcome(capsys)


def test_predict_same_row_everywhere(good_path, capsys):
    def stale(path, x):
        y = good_predict(path, x[:1])
        return np.repeat(y, len(x), axis=0)

    assert not lab06.check_litert_predict(stale, good_path)
    assert "every row is the same" in outcome(capsys)


def test_predict_not_written(good_path, capsys):
    def stub(path, x):
        raise NotImplementedError

    assert not lab06.check_litert_predict(stub, good_path)
    assert "not written yet" in outcome(capsys)


# Exercise 3 ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def logits(split, good_path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(dk.digits_onnx()), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": split.x_test})[0], good_predict(good_path, split.x_test)


def test_parity_pass(logits, capsys):
    assert lab06.check_parity(*logits)
    assert outcome(capsys).startswith("[PASS]")


def test_parity_list_from_session_run(logits, capsys):
    ort_y, lite_y = logits
    assert not lab06.check_parity([ort_y], lite_y)
    assert "take [0]" in outcome(capsys)


def test_parity_different_inputs(logits, capsys):
    ort_y, lite_y = logits
    assert not lab06.check_parity(ort_y, lite_y[::-1].copy())
    assert "same inputs" in outcome(capsys)


def test_parity_subset(logits, capsys):
    ort_y, lite_y = logits
    assert not lab06.check_parity(ort_y, lite_y[:100])
    assert "whole split.x_test" in outcome(capsys)


def test_parity_same_array_twice(logits, capsys):
    assert not lab06.check_parity(logits[0], logits[0])
    assert "same array twice" in outcome(capsys)


def test_parity_both_on_train_mode_model(split, capsys):
    model = dk.train_digits_model().model
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        y = model(torch.from_numpy(split.x_test)).numpy()
    assert not lab06.check_parity(y, y.copy())
    assert "not with the course model" in outcome(capsys)


# Exercise 4 ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def calls(good_path):
    """One-frame calls: ORT and LiteRT built once (fair), and LiteRT built inside the call (unfair)."""
    import onnxruntime as ort

    one = dk.load_digits_split().x_test[:1]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(dk.digits_onnx()), options, providers=["CPUExecutionProvider"])
    interpreter = litert.load_interpreter(good_path, num_threads=1)
    index = interpreter.get_input_details()[0]["index"]

    def litert_once():
        interpreter.set_tensor(index, one)
        interpreter.invoke()

    def litert_built_inside():
        fresh = litert.load_interpreter(good_path, num_threads=1)
        fresh.set_tensor(index, one)
        fresh.invoke()

    def ort_built_inside():
        ort.InferenceSession(str(dk.digits_onnx()), options, providers=["CPUExecutionProvider"]).run(None, {"input": one})

    return {"ONNX Runtime": lambda: session.run(None, {"input": one}), "LiteRT": litert_once,
            "litert_built_inside": litert_built_inside, "ort_built_inside": ort_built_inside,
            "nothing": lambda: None}


@pytest.fixture
def bench(calls):
    def measure(label, fn=None, **kwargs):
        settings = dict(label=label, warmup=3, repeats=20, threads=1, batch=1)
        settings.update(kwargs)
        return dk.benchmark(calls[fn or label], **settings)
    return measure


def test_latency_pass(bench, good_path, capsys):
    assert lab06.check_latency(bench("ONNX Runtime"), bench("LiteRT"), good_path)
    assert outcome(capsys).startswith("[PASS]")


def test_latency_interpreter_built_inside_the_timed_function(bench, good_path, capsys):
    assert not lab06.check_latency(bench("ONNX Runtime"), bench("LiteRT", "litert_built_inside"), good_path)
    text = outcome(capsys)
    assert "Interpreter" in text and "created once" in text


def test_latency_session_built_inside_the_timed_function(bench, good_path, capsys):
    assert not lab06.check_latency(bench("ONNX Runtime", "ort_built_inside"), bench("LiteRT"), good_path)
    assert "InferenceSession" in outcome(capsys)


def test_latency_timed_function_does_nothing(bench, good_path, capsys):
    assert not lab06.check_latency(bench("ONNX Runtime"), bench("LiteRT", "nothing"), good_path)
    assert "really run the model" in outcome(capsys)


def test_latency_threads_not_recorded(bench, capsys):
    assert not lab06.check_latency(bench("ONNX Runtime", threads=None), bench("LiteRT"))
    assert "threads=1" in outcome(capsys)


def test_latency_no_warmup(bench, capsys):
    assert not lab06.check_latency(bench("ONNX Runtime"), bench("LiteRT", warmup=0))
    assert "warm-up" in outcome(capsys)


def test_latency_too_few_repeats(bench, capsys):
    assert not lab06.check_latency(bench("ONNX Runtime", repeats=3), bench("LiteRT"))
    assert "at least 20" in outcome(capsys)


def test_latency_not_a_bench_result(bench, capsys):
    assert not lab06.check_latency(0.01, bench("LiteRT"))
    assert "dk.benchmark" in outcome(capsys)


def test_latency_same_label(bench, capsys):
    assert not lab06.check_latency(bench("x", "LiteRT"), bench("x", "LiteRT"))
    assert "same label" in outcome(capsys)


def test_predict_before_the_file_exists(tmp_path, capsys):
    assert not lab06.check_litert_predict(good_predict, tmp_path / "digits_cnn.tflite")
    assert "run Exercise 1 first" in outcome(capsys)


# A blank exercise, run top to bottom as the grader does: the check names the exercise to finish ----

def test_parity_blank_exercise(logits, capsys):
    assert not lab06.check_parity(None, None)
    out = outcome(capsys)
    assert out.startswith("[HINT]") and "Exercise 3" in out and "ort_logits" in out


def test_parity_half_done(logits, capsys):
    assert not lab06.check_parity(logits[0], None)
    out = outcome(capsys)
    assert out.startswith("[HINT]") and "litert_logits" in out and "Exercise 3" in out


def test_latency_blank_exercise(capsys):
    assert not lab06.check_latency(None, None)
    out = outcome(capsys)
    assert out.startswith("[HINT]") and "Exercise 4" in out and "ort_result" in out
