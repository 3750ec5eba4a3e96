"""Lab 04 checks: a right answer passes, and each typical wrong answer gets a hint, not a traceback."""
from __future__ import annotations

import statistics
import time

import numpy as np
import onnxruntime as ort
import pytest

import deploykit as dk
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

def rows(models=("mlp", "resnet18"), batches=(1, 8), threads=(1, 2)):
    return [{"model": m, "batch": b, "threads": t, "pytorch_ms": 2.0, "ort_ms": 1.0}
            for m in models for b in batches for t in threads]


def test_sweep_passes_complete_results(capsys):
    result, out = outcome(capsys, lab04.check_sweep(rows(), threads=[1, 2]))
    assert result and out.startswith("[PASS]")


@pytest.mark.parametrize("results, words", [
    (rows(threads=(1,)), "expected each of [1, 2]"),
    (rows(batches=(1,)), "two batch sizes"),
    (rows(models=("mlp",)), "two models"),
    ([{"model": "digits"}], "keys"),
    ([], "finish section 3"),   # a blank exercise names the section to finish
])
def test_sweep_hints_for_incomplete_results(capsys, results, words):
    result, out = outcome(capsys, lab04.check_sweep(results, threads=[1, 2]))
    assert not result and words in out


def digits_rows(pytorch_ms, ort_ms):
    """A sweep whose digits rows carry the given medians (the check re-measures digits, batch 1, 1 thread)."""
    out = rows(models=("resnet18",))
    out += [{"model": "digits", "batch": b, "threads": t, "pytorch_ms": pytorch_ms, "ort_ms": ort_ms,
             "speedup": pytorch_ms / ort_ms} for b in (1, 8) for t in (1, 2)]
    return out


def test_sweep_passes_fair_digits_figures(capsys):
    fair_torch, fair_ort = lab04._fair_digits_ms(1)
    result, out = outcome(capsys, lab04.check_sweep(digits_rows(fair_torch, fair_ort), threads=[1, 2]))
    assert result, out


def test_sweep_hint_when_the_session_is_created_inside_the_timed_call(capsys):
    import onnxruntime as ort

    x = dk.digits_example_input(1).numpy()
    fair_torch, _ = lab04._fair_digits_ms(1)

    def unfair():  # a new session on every call: what the check must not pass
        ort.InferenceSession(str(dk.digits_onnx()), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    unfair_ort = dk.benchmark(unfair, warmup=1, repeats=10).median_ms
    result, out = outcome(capsys, lab04.check_sweep(digits_rows(fair_torch, unfair_ort), threads=[1, 2]))
    assert not result and "InferenceSession" in out


def test_sweep_hint_when_speedup_is_not_the_ratio(capsys):
    fair_torch, fair_ort = lab04._fair_digits_ms(1)
    results = digits_rows(fair_torch, fair_ort)
    results[-1]["speedup"] = fair_ort / fair_torch
    result, out = outcome(capsys, lab04.check_sweep(results, threads=[1, 2]))
    assert not result and "pytorch_ms / ort_ms" in out


def published_busy_sweep():
    """Lab 04's solution as once committed, measured at load average 2.1 on 2 cores (issue 22)."""
    table = [("digits", 1, 1, 0.471, 0.055), ("digits", 1, 2, 55.994, 0.064),
             ("digits", 32, 1, 2.018, 0.593), ("digits", 32, 2, 120.002, 0.517),
             ("digits", 256, 1, 11.703, 4.671), ("digits", 256, 2, 98.086, 8.464),
             ("resnet18", 1, 1, 126.965, 94.138), ("resnet18", 1, 2, 533.723, 138.252),
             ("resnet18", 4, 1, 467.197, 378.186), ("resnet18", 4, 2, 1649.154, 416.561)]
    return [{"model": m, "batch": b, "threads": t, "pytorch_ms": p, "ort_ms": o, "speedup": p / o}
            for m, b, t, p, o in table]


def test_sweep_hint_when_the_machine_was_busy(capsys):
    result, out = outcome(capsys, lab04.check_sweep(published_busy_sweep(), threads=[1, 2]))
    assert not result and out.startswith("[HINT]")
    assert "machine busy: re-run" in out and "0.471 ms at 1 thread and 55.994 ms at 2 threads" in out


@pytest.mark.parametrize("runtime", ["pytorch_ms", "ort_ms"])
def test_sweep_hint_when_one_runtime_is_much_slower_on_more_threads(capsys, runtime):
    results = rows()
    for row in results:
        if row["model"] == "resnet18" and row["batch"] == 8 and row["threads"] == 2:
            row[runtime] *= 10
    result, out = outcome(capsys, lab04.check_sweep(results, threads=[1, 2]))
    assert not result and "machine busy" in out and "resnet18 batch 8" in out


def test_sweep_passes_when_more_threads_are_a_little_slower(capsys):
    results = rows()  # a tiny model may lose a little on 2 threads: that is a finding, not a busy machine
    for row in results:
        if row["threads"] == 2:
            row["pytorch_ms"] *= 1.4
    result, out = outcome(capsys, lab04.check_sweep(results, threads=[1, 2]))
    assert result, out


# --------------------------------------------------------------------------- plot

def draw(results, threads=(1, 2), *, log_x=True, band=True, one=True, title=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    for model in sorted({r["model"] for r in results}):
        for t in threads:
            line = [r for r in results if r["model"] == model and r["threads"] == t]
            ax.plot([r["batch"] for r in line], [r["pytorch_ms"] / r["ort_ms"] for r in line])
    if one:
        ax.axhline(1)
    if band:
        ax.axhspan(4, 5)
        ax.axhspan(7, 10)
    ax.set(xscale="log" if log_x else "linear", xlabel="batch", ylabel="speed-up",
           title=title if title is not None else f"on {dk.cpu_model()}")
    plt.close(fig)
    return ax


def sweep_results():
    out = []
    for model, base in (("mlp", 2.0), ("resnet18", 3.0)):
        for b in (1, 8, 64):
            for t in (1, 2):
                out.append({"model": model, "batch": b, "threads": t, "pytorch_ms": base * b * t, "ort_ms": 1.0 + b})
    return out


def test_plot_passes(capsys):
    results = sweep_results()
    result, out = outcome(capsys, lab04.check_plot(draw(results), results, [1, 2]))
    assert result, out


@pytest.mark.parametrize("options, words", [
    (dict(log_x=False), "log scale"),
    (dict(band=False), "axhspan"),
    (dict(one=False), "axhline(1)"),
    (dict(title="speed-ups"), "dk.cpu_model()"),
    (dict(threads=(1,)), "one per model and thread count"),
])
def test_plot_hints(capsys, options, words):
    results = sweep_results()
    result, out = outcome(capsys, lab04.check_plot(draw(results, **options), results, [1, 2]))
    assert not result and words in out


def test_plot_hint_for_a_figure_instead_of_axes(capsys):
    results = sweep_results()
    result, out = outcome(capsys, lab04.check_plot(draw(results).figure, results, [1, 2]))
    assert not result and "Axes" in out


def test_blank_sweep_is_named_not_crashed(capsys):
    """Section 3 left blank, the lab run top to bottom: the sweep and plot checks name it."""
    import matplotlib.pyplot as plt

    assert not lab04.check_sweep([], threads=(1, 2))
    assert "section 3" in capsys.readouterr().out
    fig, ax = plt.subplots()
    assert not lab04.check_plot(ax, [], (1, 2))
    assert "section 3" in capsys.readouterr().out
    plt.close(fig)
