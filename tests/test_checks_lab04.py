"""Lab 04 checks: a right answer passes, and each typical wrong answer gets a hint, not a traceback."""
from __future__ import annotations

import statistics
import time

import numpy as np
import onnxruntime as ort
import pytest
import torch

from deploykit.checks import lab04


@pytest.fixture(autouse=True)
def _artifacts(tmp_artifacts):
    return tmp_artifacts


def outcome(capsys, result):
    out = capsys.readouterr().out
    return result, out


# ------------------------------------------------------------------------- time_it

def good_time_it(fn, warmup=3, repeats=20):
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(samples), "p90_ms": float(np.percentile(samples, 90)), "samples_ms": samples}


def no_warmup_time_it(fn, warmup=3, repeats=20):
    return good_time_it(fn, 0, repeats)


def timed_warmup_time_it(fn, warmup=3, repeats=20):
    samples = []
    for _ in range(warmup + repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    samples = samples[:repeats]  # keeps the first (slow) calls
    return {"median_ms": statistics.median(samples), "p90_ms": float(np.percentile(samples, 90)), "samples_ms": samples}


def seconds_time_it(fn, warmup=3, repeats=20):
    result = good_time_it(fn, warmup, repeats)
    return {k: (np.array(v) / 1e3).tolist() if k == "samples_ms" else v / 1e3 for k, v in result.items()}


def mean_time_it(fn, warmup=3, repeats=20):
    result = good_time_it(fn, warmup, repeats)
    result["median_ms"] = statistics.fmean(result["samples_ms"]) + 0.5
    return result


def zero_default_time_it(fn, warmup=0, repeats=20):
    return good_time_it(fn, warmup, repeats)


def test_time_it_passes_a_fair_implementation(capsys):
    result, out = outcome(capsys, lab04.check_time_it(good_time_it))
    assert result and out.startswith("[PASS]")


@pytest.mark.parametrize("wrong, words", [
    (no_warmup_time_it, "warm-up never ran"),
    (timed_warmup_time_it, "must not be timed"),
    (seconds_time_it, "seconds"),
    (mean_time_it, "median"),
    (zero_default_time_it, "default"),
    (lambda fn: None, "`warmup` and `repeats`"),
])
def test_time_it_hints_for_wrong_answers(capsys, wrong, words):
    result, out = outcome(capsys, lab04.check_time_it(wrong))
    assert not result and out.startswith("[HINT]") and words in out


def test_time_it_stub_gets_not_written_yet_hint(capsys):
    def stub(fn, warmup=3, repeats=20):
        raise NotImplementedError

    result, out = outcome(capsys, lab04.check_time_it(stub))
    assert not result and "not written yet" in out


# ------------------------------------------------------------------ compare_runtimes

def make_compare(*, set_torch=True, set_ort=True, inter=1, grad=False, warm=True, same_input=True):
    def compare_runtimes(model, onnx_path, x, threads, warmup=3, repeats=20):
        if set_torch:
            torch.set_num_threads(threads)
        else:
            torch.set_num_threads(threads + 1)

        def run_torch():
            if grad:
                return model(x)
            with torch.inference_mode():
                return model(x)

        options = ort.SessionOptions()
        if set_ort:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = inter
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        feed = {"input": x.numpy() if same_input else np.zeros_like(x.numpy())}
        w = warmup if warm else 0
        return {"pytorch": good_time_it(run_torch, w, repeats),
                "onnxruntime": good_time_it(lambda: session.run(None, feed), w, repeats)}

    return compare_runtimes


def test_compare_passes_a_fair_implementation(capsys):
    result, out = outcome(capsys, lab04.check_compare_runtimes(make_compare()))
    assert result and out.startswith("[PASS]")


@pytest.mark.parametrize("kwargs, words", [
    ({"set_ort": False}, "intra_op_num_threads=0"),
    ({"set_torch": False}, "torch.set_num_threads"),
    ({"inter": 2}, "inter_op_num_threads"),
    ({"grad": True}, "inference_mode"),
    ({"warm": False}, "no warm-up"),
    ({"same_input": False}, "same input"),
])
def test_compare_hints_for_unfair_benchmarks(capsys, kwargs, words):
    before = torch.get_num_threads()
    result, out = outcome(capsys, lab04.check_compare_runtimes(make_compare(**kwargs)))
    assert not result and out.startswith("[HINT]") and words in out
    assert torch.get_num_threads() == before  # the check restores the process-wide setting


def test_compare_hint_when_session_is_not_created_inside(capsys):
    def compare_runtimes(model, onnx_path, x, threads, warmup=3, repeats=20):
        return {"pytorch": {"median_ms": 1, "p90_ms": 1, "samples_ms": [1]},
                "onnxruntime": {"median_ms": 1, "p90_ms": 1, "samples_ms": [1]}}

    result, out = outcome(capsys, lab04.check_compare_runtimes(compare_runtimes))
    assert not result and "never called" in out


# --------------------------------------------------------------------------- sweep

def rows(models=("digits", "resnet18"), batches=(1, 8), threads=(1, 2)):
    return [{"model": m, "batch": b, "threads": t, "pytorch_ms": 2.0, "ort_ms": 1.0}
            for m in models for b in batches for t in threads]


def test_sweep_passes_complete_results(capsys):
    result, out = outcome(capsys, lab04.check_sweep(rows(), threads=[1, 2]))
    assert result and out.startswith("[PASS]")


@pytest.mark.parametrize("results, words", [
    (rows(threads=(1,)), "expected each of [1, 2]"),
    (rows(batches=(1,)), "two batch sizes"),
    (rows(models=("digits",)), "two models"),
    ([{"model": "digits"}], "keys"),
    ([], "non-empty"),
])
def test_sweep_hints_for_incomplete_results(capsys, results, words):
    result, out = outcome(capsys, lab04.check_sweep(results, threads=[1, 2]))
    assert not result and words in out
