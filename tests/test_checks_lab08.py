"""Lab 08 checks: a right answer passes; each wrong attempt gets its hint, not a pass."""
from __future__ import annotations

import onnxruntime as ort
import pytest

import deploykit as dk
from deploykit.bench import BenchResult
from deploykit.checks import lab08
from deploykit.profiling import ort_profile


def bench(median, threads=1, warmup=5, repeats=30, batch=1):
    return BenchResult("x", median, median * 1.1, median, median * 1.2, warmup, repeats, threads, batch, median)


def good_results():
    return {"ORT fp32 all, 1t": bench(2.5), "ORT fp32 all, 2t": bench(1.9, threads=2),
            "ORT fp16 all, 1t": bench(7.0), "OpenVINO fp32, 2t": bench(2.7, threads=2)}


def outcome(capsys) -> str:
    return capsys.readouterr().out.strip()


FAIR_HERE = {1: 2.5, 2: 1.9}  # what the check's own fair measurement "finds", for the structural tests


@pytest.fixture(autouse=True)
def fair_reference(request, monkeypatch):
    # Structural tests compare with fixed figures; the tests marked `measured` let the check time the model.
    if "measured" not in request.keywords:
        monkeypatch.setattr(lab08, "_fair_reference_ms", lambda threads: FAIR_HERE[threads])


def test_results_pass(capsys):
    assert lab08.check_results(good_results())
    assert outcome(capsys).startswith("[PASS]")


@pytest.mark.parametrize("change, words", [
    (lambda r: {k: v for k, v in list(r.items())[:3]}, "at least 4"),
    (lambda r: {**r, "ORT fp32 all, 1t": bench(2.5, warmup=0)}, "warm-up"),
    (lambda r: {**r, "ORT fp32 all, 1t": bench(2.5, repeats=5)}, "at least 20"),
    (lambda r: {**r, "ORT fp32 all, 1t": bench(2.5, threads=None)}, "threads=None"),
    (lambda r: {**r, "ORT fp32 all, 1t": bench(2.5, batch=8)}, "batch=8"),
    (lambda r: {k: bench(v.median_ms) for k, v in r.items()}, "thread count is part of"),
    (lambda r: {f"ORT fp32 variant {i}": v for i, v in enumerate(r.values())}, "another precision"),
    (lambda r: {**r, "ORT fp32 all, 1t": 2.5}, "dk.benchmark"),
    (lambda r: {**r, "ORT fp32 all, 1t": bench(40.0)}, "inside the timed function"),
    (lambda r: {**r, "OpenVINO fp32, 2t": bench(0.01, threads=2)}, "far below one inference"),
])
def test_results_wrong(capsys, change, words):
    assert not lab08.check_results(change(good_results()))
    assert words in outcome(capsys)


def test_fastest(capsys):
    results = good_results()
    assert lab08.check_fastest(results, "ORT fp32 all, 2t")
    capsys.readouterr()
    assert not lab08.check_fastest(results, "ORT fp32 all, 1t")
    assert "lowest median" in outcome(capsys)
    assert not lab08.check_fastest(results, "TensorRT")
    assert "one of the names" in outcome(capsys)


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path_factory.mktemp("lab08") / "digits")
    session = ort.InferenceSession(str(dk.digits_onnx()), options, providers=["CPUExecutionProvider"])
    x = dk.digits_example_input(1).numpy()
    for _ in range(3 + 10):
        session.run(None, {"input": x})
    return session.end_profiling()


def test_profile_right(trace, capsys):
    top = ort_profile(trace, skip_runs=3).operators[0]
    assert lab08.check_profile(trace, 3, top.op_type, top.share)
    assert outcome(capsys).startswith("[PASS]")


def test_profile_read_without_warm_up(trace, capsys):
    top = ort_profile(trace).operators[0]
    assert not lab08.check_profile(trace, 0, top.op_type, top.share)
    assert "warm-up" in outcome(capsys)


def test_profile_wrong_operator_and_share(trace, capsys):
    table = ort_profile(trace, skip_runs=3)
    top, other = table.operators[0], table.operators[-1]
    assert not lab08.check_profile(trace, 3, other.op_type, top.share)
    assert "largest operator type" in outcome(capsys)
    assert not lab08.check_profile(trace, 3, top.op_type, 100 * top.share)
    assert "fraction" in outcome(capsys)
    assert not lab08.check_profile(trace, 3, top.op_type, max(0.0, top.share - 0.2))
    assert "the trace says" in outcome(capsys)


def test_profile_too_few_runs_or_no_file(trace, capsys):
    assert not lab08.check_profile(trace, 10, "Conv", 0.5)
    assert "at least 5" in outcome(capsys)
    assert not lab08.check_profile("nowhere.json", 1, "Conv", 0.5)
    assert "end_profiling" in outcome(capsys)


# --- The check times the lab's model itself: unfair timed functions that record a fair protocol.

@pytest.fixture(scope="module")
def lab_model():
    import numpy as np

    frame = np.random.default_rng(0).standard_normal((1, 3, 128, 128), dtype=np.float32)
    return lab08.lab_model_onnx(), {"input": frame}


def measured_results(path, feed, timed_1t):
    # Three fair configurations and the learner's 1-thread ORT one, timed by `timed_1t`.
    from deploykit.quantize import session as ort_session

    results = {"ORT fp32 all, 1t": dk.benchmark(timed_1t, warmup=3, repeats=20, threads=1, batch=1)}
    for name, threads in (("ORT fp32 all, 2t", 2), ("ORT fp16 all, 2t", 2), ("OpenVINO fp32, 1t", 1)):
        session = ort_session(path, threads=threads)
        results[name] = dk.benchmark(lambda s=session: s.run(None, feed), warmup=3, repeats=20, threads=threads, batch=1)
    return results


@pytest.mark.measured
def test_fairly_timed_results_pass(lab_model, capsys):
    from deploykit.quantize import session as ort_session

    path, feed = lab_model
    session = ort_session(path, threads=1)
    assert lab08.check_results(measured_results(path, feed, lambda: session.run(None, feed)))
    assert outcome(capsys).startswith("[PASS]")


@pytest.mark.measured
def test_session_built_inside_the_timed_function_is_caught(lab_model, capsys):
    from deploykit.quantize import session as ort_session

    path, feed = lab_model
    results = measured_results(path, feed, lambda: ort_session(path, threads=1).run(None, feed))
    assert not lab08.check_results(results)
    assert "inside the timed function" in outcome(capsys)


@pytest.mark.measured
def test_timed_function_that_runs_nothing_is_caught(lab_model, capsys):
    from deploykit.quantize import session as ort_session

    path, feed = lab_model
    session = ort_session(path, threads=1)
    assert not lab08.check_results(measured_results(path, feed, lambda: session))  # forgot .run(...)
    assert "far below one inference" in outcome(capsys)
