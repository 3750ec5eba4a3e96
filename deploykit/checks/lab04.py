"""Checks for lab 04: a fair benchmark of PyTorch vs ONNX Runtime.

The checks do not trust printed numbers: they call the learner's functions with instrumented
callables and models that record how they were called (how many times, in which order, on how
many threads, with autograd on or off, with which input), so a benchmark without warm-up, with
mismatched threads or with autograd left on is caught, whatever numbers it prints.
"""
from __future__ import annotations

import inspect
import math
import statistics
import time
from contextlib import contextmanager
from unittest import mock

import numpy as np

from . import check, require, require_result

REQUIRED_STATS = ("median_ms", "p90_ms", "samples_ms")


# ---------------------------------------------------------------- exercise 1: time_it

class SlowStart:
    """A callable that is slow for its first ``slow_calls`` calls (like a first inference), then fast.

    It counts its calls, so a benchmark that skips the warm-up, or times it, shows.
    """

    def __init__(self, slow_calls: int, slow_ms: float = 100.0, fast_ms: float = 2.0):
        self.slow_calls, self.slow_ms, self.fast_ms = slow_calls, slow_ms, fast_ms
        self.calls = 0

    def __call__(self):
        self.calls += 1
        time.sleep((self.slow_ms if self.calls <= self.slow_calls else self.fast_ms) / 1e3)
        return self.calls


def _stats(result, who: str) -> dict:
    require(isinstance(result, dict), f"{who} should return a dict with keys {list(REQUIRED_STATS)}, got {type(result).__name__}")
    missing = [k for k in REQUIRED_STATS if k not in result]
    require(not missing, f"{who}'s result is missing {missing}; return a dict with keys {list(REQUIRED_STATS)}")
    return result


@check("time_it: warm-up, repeats, median and p90")
def check_time_it(time_it) -> None:
    require(callable(time_it), "pass your function itself: check_time_it(time_it)")
    params = inspect.signature(time_it).parameters
    require("warmup" in params and "repeats" in params,
            "time_it needs the parameters `warmup` and `repeats`: time_it(fn, warmup=3, repeats=20)")
    default = params["warmup"].default
    require(default is inspect.Parameter.empty or (isinstance(default, int) and default >= 1),
            f"warmup defaults to {default!r}: a benchmark without warm-up times the one-time costs of the first "
            "call. Give it a default of at least 1")

    warmup, repeats = 3, 7
    fake = SlowStart(slow_calls=warmup)
    result = _stats(time_it(fake, warmup=warmup, repeats=repeats), "time_it")
    if fake.calls == repeats:
        require(False, f"fn was called {repeats} times for warmup={warmup}, repeats={repeats}: the warm-up never ran. "
                       "Call fn `warmup` times, untimed, before the timed calls")
    require(fake.calls == warmup + repeats,
            f"fn was called {fake.calls} times for warmup={warmup}, repeats={repeats}; expected {warmup + repeats}: "
            "`warmup` untimed calls, then `repeats` timed calls")
    samples = list(result["samples_ms"])
    require(len(samples) == repeats, f"samples_ms has {len(samples)} timings; expected one per timed call ({repeats})")
    require(all(isinstance(s, (int, float)) and s > 0 for s in samples), "samples_ms should hold positive numbers")
    require(max(samples) > 0.5,
            f"the timings look like seconds, not milliseconds (largest {max(samples):.4f}); multiply "
            "time.perf_counter() differences by 1000")
    require(max(samples) < fake.slow_ms * 0.75,
            "your samples include the slow first calls: the warm-up calls must not be timed. Time only the "
            f"{repeats} calls after the warm-up")
    median = statistics.median(samples)
    require(abs(result["median_ms"] - median) <= 1e-6 * max(1.0, median),
            f"median_ms is {result['median_ms']:.4f} but the median of your samples_ms is {median:.4f}: use "
            "statistics.median or np.median (not the mean: one interrupted run would move it)")
    ordered = sorted(samples)
    low = float(np.percentile(samples, 80))
    require(low - 1e-9 <= result["p90_ms"] <= ordered[-1] + 1e-9,
            f"p90_ms is {result['p90_ms']:.4f}, outside the range of a 90th percentile of samples_ms "
            f"({low:.4f} .. {ordered[-1]:.4f}); use np.percentile(samples, 90)")
    require(result["p90_ms"] >= result["median_ms"], "p90_ms should be at least median_ms")


# ---------------------------------------------------------- exercise 2: compare_runtimes

def _spy_model_and_onnx(path):
    """A tiny Linear model and the same model as a hand-built ONNX Gemm graph (same weights)."""
    import onnx
    import torch
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 8)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "weight", "bias"], ["logits"], transB=1)], "spy",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))

    class Spy(torch.nn.Module):
        """Records, at every forward: threads, autograd state and the input."""

        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(8, 4)
            with torch.no_grad():
                self.linear.weight.copy_(torch.from_numpy(weight))
                self.linear.bias.copy_(torch.from_numpy(bias))
            self.calls, self.threads, self.grad, self.inputs = 0, [], [], []

        def forward(self, x):
            self.calls += 1
            self.threads.append(torch.get_num_threads())
            self.grad.append(torch.is_grad_enabled())
            self.inputs.append(x)
            return self.linear(x)

    return Spy().eval()


@contextmanager
def _recording_sessions():
    """Replace ``onnxruntime.InferenceSession`` by a subclass that records options and runs."""
    import onnxruntime

    log = {"sessions": [], "runs": 0, "feeds": []}
    real = onnxruntime.InferenceSession

    class Recorder(real):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            options = self.get_session_options()
            log["sessions"].append((options.intra_op_num_threads, options.inter_op_num_threads))

        def run(self, *args, **kwargs):
            log["runs"] += 1
            feed = args[1] if len(args) > 1 else kwargs.get("input_feed", {})
            log["feeds"].append(feed)
            return super().run(*args, **kwargs)

    with mock.patch.object(onnxruntime, "InferenceSession", Recorder):
        yield log


def _one_compare(compare_runtimes, threads: int, warmup: int, repeats: int) -> None:
    import torch

    from ..paths import artifact_path

    model = _spy_model_and_onnx(path := artifact_path("lab04/spy_linear.onnx"))
    x = torch.from_numpy(np.random.default_rng(threads).standard_normal((3, 8)).astype(np.float32))
    with _recording_sessions() as log:
        result = compare_runtimes(model, path, x, threads=threads, warmup=warmup, repeats=repeats)
    require(isinstance(result, dict) and {"pytorch", "onnxruntime"} <= set(result),
            "compare_runtimes should return {'pytorch': stats, 'onnxruntime': stats}")
    for runtime in ("pytorch", "onnxruntime"):
        stats = _stats(result[runtime], f"compare_runtimes()['{runtime}']")
        require(stats["median_ms"] > 0 and stats["p90_ms"] >= stats["median_ms"],
                f"{runtime}: median_ms should be > 0 and p90_ms >= median_ms")

    # PyTorch side
    expected = warmup + repeats
    require(model.calls > 0, "the PyTorch model was never called: time model(x) for the 'pytorch' entry")
    require(model.calls != repeats,
            f"the PyTorch model ran {repeats} times for warmup={warmup}, repeats={repeats}: no warm-up. Warm up both runtimes")
    require(model.calls == expected,
            f"the PyTorch model ran {model.calls} times; expected warmup + repeats = {expected}")
    require(not any(model.grad),
            "PyTorch ran with autograd on: wrap the call in `with torch.inference_mode():` (or torch.no_grad()), "
            "otherwise PyTorch pays for training bookkeeping that ONNX Runtime never does")
    seen = sorted(set(model.threads))
    require(seen == [threads],
            f"PyTorch ran on {seen} thread(s) but threads={threads}: call torch.set_num_threads(threads) "
            "before timing PyTorch")
    require(all(inp is x or torch.equal(inp, x) for inp in model.inputs),
            "PyTorch was not given the input x: time both runtimes on the same input")

    # ONNX Runtime side
    require(log["sessions"],
            "no session was created with ort.InferenceSession inside compare_runtimes: create it there, from "
            "onnx_path and SessionOptions with the threads set, so both runtimes get the same threads")
    intra, inter = log["sessions"][-1]
    require(intra == threads,
            f"the ONNX Runtime session has intra_op_num_threads={intra} but threads={threads}"
            + (" (0 = ORT picks its own count)" if intra == 0 else "")
            + ": mismatched threads. Set SessionOptions.intra_op_num_threads = threads")
    require(inter == 1,
            f"the ONNX Runtime session has inter_op_num_threads={inter}: set it to 1 (one operator at a time, "
            "like PyTorch eager)")
    require(log["runs"] != repeats,
            f"session.run ran {repeats} times for warmup={warmup}, repeats={repeats}: no warm-up for ONNX Runtime")
    require(log["runs"] == expected, f"session.run ran {log['runs']} times; expected warmup + repeats = {expected}")
    x_np = x.numpy()
    for feed in log["feeds"]:
        arrays = list(feed.values()) if isinstance(feed, dict) else []
        require(len(arrays) == 1 and np.array_equal(np.asarray(arrays[0]), x_np),
                "ONNX Runtime was not fed the same input as PyTorch: feed {'input': x.numpy()}")


@check("compare_runtimes: same input, same threads, warm-up, autograd off")
def check_compare_runtimes(compare_runtimes) -> None:
    import torch

    require(callable(compare_runtimes), "pass your function itself: check_compare_runtimes(compare_runtimes)")
    before = torch.get_num_threads()
    try:
        for threads in (2, 1):
            _one_compare(compare_runtimes, threads, warmup=2, repeats=5)
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- exercise 3: the sweep

@check("sweep: every model at several batch sizes, each at every thread count")
def check_sweep(results, threads) -> None:
    require_result(results, "results", "section 3 (the sweep)")
    require(isinstance(results, list) and results, "results should be a non-empty list of dicts (one per measurement)")
    keys = ("model", "batch", "threads", "pytorch_ms", "ort_ms")
    for row in results:
        require(isinstance(row, dict) and all(k in row for k in keys), f"each row needs the keys {list(keys)}; got {row!r}")
        require(row["pytorch_ms"] > 0 and row["ort_ms"] > 0, f"latencies should be positive: {row!r}")
    threads = sorted(set(threads))
    models = sorted({row["model"] for row in results})
    require(len(models) >= 2, f"measure at least two models (found {models}): a small and a large one behave differently")
    for model in models:
        batches = sorted({row["batch"] for row in results if row["model"] == model})
        require(len(batches) >= 2, f"{model}: measure at least two batch sizes (found {batches})")
        for batch in batches:
            got = sorted({row["threads"] for row in results if row["model"] == model and row["batch"] == batch})
            require(got == threads, f"{model} batch {batch}: measured at threads {got}; expected each of {threads}")
    _require_quiet_sweep(results, threads)
    for row in results:
        if "speedup" in row:
            require(math.isclose(row["speedup"], row["pytorch_ms"] / row["ort_ms"], rel_tol=1e-6),
                    f"{row['model']} batch {row['batch']}: speedup should be pytorch_ms / ort_ms")
    digits_rows = [row for row in results if row["model"] == "digits" and row["threads"] == 1]
    if digits_rows:
        row = min(digits_rows, key=lambda r: r["batch"])
        fair_torch, fair_ort = _fair_digits_ms(row["batch"])
        for runtime, got, fair, cause in (
                ("pytorch_ms", row["pytorch_ms"], fair_torch, "is it timed with autograd on (torch.inference_mode), "
                 "without warm-up, or with the model or input rebuilt inside the timed call?"),
                ("ort_ms", row["ort_ms"], fair_ort, "is the InferenceSession created inside the timed call, or the "
                 "input converted (x.numpy()) there? Build both once, time only session.run")):
            ratio = got / fair
            require(1 / UNFAIR_FACTOR < ratio < UNFAIR_FACTOR,
                    f"digits batch {row['batch']}, 1 thread: your {runtime} is {got:.4f} ms, {ratio:.1f}x what the check "
                    f"measures the fair way ({fair:.4f} ms): {cause}" if ratio > 1 else
                    f"digits batch {row['batch']}, 1 thread: your {runtime} is {got:.4f} ms, far below one inference "
                    f"here ({fair:.4f} ms): does the timed call run the model on the whole batch?")


def _require_quiet_sweep(results, threads) -> None:
    """The same work at more threads far slower than at 1 thread: the machine was busy, not the runtime slow."""
    from ..bench import contention

    one = min(threads)
    for row in results:
        if row["threads"] == one:
            continue
        base = [r for r in results if (r["model"], r["batch"], r["threads"]) == (row["model"], row["batch"], one)]
        if not base:
            continue
        for key, runtime in (("pytorch_ms", "PyTorch"), ("ort_ms", "ONNX Runtime")):
            reason = contention(base[0][key], row[key], threads=row["threads"])
            require(reason is None,
                    f"machine busy: re-run. {runtime}, {row['model']} batch {row['batch']}: {base[0][key]:.3f} ms at "
                    f"{one} thread and {row[key]:.3f} ms at {row['threads']} threads. The same work on more threads "
                    "is never that much slower unless the threads waited for cores that other programs held; a "
                    "speed-up computed from these numbers measures the load, not the runtimes. Check the load "
                    "average (dk.print_machine_info()), close what else is running, then run the sweep again")


#: A sweep's figure may differ from the check's own fair measurement by this factor (noise, load).
UNFAIR_FACTOR = 4.0


def _fair_digits_ms(batch: int) -> tuple[float, float]:
    """Median ms of the digits model at ``batch``, one thread: PyTorch eager and ONNX Runtime, the fair way."""
    import torch

    from ..bench import benchmark
    from ..exports import digits_onnx
    from ..models import digits_example_input, digits_model
    from ..quantize import session as ort_session

    x = digits_example_input(batch)
    model = digits_model().eval()
    session = ort_session(digits_onnx(), threads=1)
    feed = {session.get_inputs()[0].name: x.numpy()}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        def run_torch():
            with torch.inference_mode():
                model(x)
        torch_ms = benchmark(run_torch, warmup=5, repeats=30, threads=1).median_ms
    finally:
        torch.set_num_threads(before)
    ort_ms = benchmark(lambda: session.run(None, feed), warmup=5, repeats=30, threads=1).median_ms
    return torch_ms, ort_ms


# ---------------------------------------------------------------- exercise 4: the plot

@check("plot: speed-up against batch size, one line per model and thread count")
def check_plot(ax, results, threads) -> None:
    from matplotlib.axes import Axes

    require_result(results, "results", "section 3 (the sweep)")
    require(isinstance(ax, Axes), f"pass the Axes you drew on (fig, ax = plt.subplots()), got {type(ax).__name__}")
    require(ax.get_xscale() == "log", "the batch sizes span 1 to 256: use a log scale on x (ax.set_xscale('log'))")
    require(ax.get_xlabel().strip() and ax.get_ylabel().strip(), "label both axes (what is on x, what is on y, in which unit)")
    from ..bench import cpu_model

    require(cpu_model() in ax.get_title(), "put the CPU in the title (dk.cpu_model()): a speed-up belongs to a machine")
    lines = [line for line in ax.get_lines() if len(line.get_xdata()) >= 2 and len(set(map(float, line.get_ydata()))) > 1]
    models = {row["model"] for row in results}
    expected = len(models) * len(set(threads))
    require(len(lines) >= expected, f"{len(lines)} data line(s): draw one per model and thread count ({expected})")
    plotted = {round(float(y), 6) for line in lines for y in line.get_ydata()}
    measured = {round(float(row["pytorch_ms"] / row["ort_ms"]), 6) for row in results}
    require(measured <= plotted, "some measured speed-ups are not on the plot: plot pytorch_ms / ort_ms of every row")
    flat_at_one = [line for line in ax.get_lines() if set(map(float, line.get_ydata())) == {1.0}]
    require(flat_at_one, "draw the line of no speed-up: ax.axhline(1)")
    require(len(ax.patches) >= 2, "shade the notes' two claims as bands: ax.axhspan(4, 5) and ax.axhspan(7, 10)")


__all__ = ["SlowStart", "check_compare_runtimes", "check_plot", "check_sweep", "check_time_it"]
