"""deploykit.bench additions of lecture 06: rounds with alternated order, tails the sample count
supports, per-round speed-ups, STREAM-like bandwidth, bytes and arithmetic intensity from a graph,
the roofline."""
from __future__ import annotations

import numpy as np
import pytest
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploykit.bench import (
    P90_MIN_SAMPLES,
    RoundsResult,
    benchmark_rounds,
    l3_cache_bytes,
    memory_traffic,
    percentile,
    roofline,
    speedup_spread,
    stream_bandwidth,
)


def test_rounds_alternate_the_order_and_keep_every_sample():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    result = benchmark_rounds(fns, rounds=3, warmup=1, repeats=2, threads=2, batch=8)
    blocks = [calls[i] for i in range(0, len(calls), 3)]  # 1 warm-up + 2 timed calls per block
    assert blocks == ["a", "b", "b", "a", "a", "b"]
    for label, r in result.items():
        assert r.label == label and len(r.rounds) == 3 and all(len(s) == 2 for s in r.rounds)
        assert len(r.samples) == 6 and r.threads == 2 and r.batch == 8 and r.warmup == 1
        assert r.min_ms <= r.median_ms <= r.max_ms


def test_tail_is_p90_only_with_enough_samples():
    few = RoundsResult("few", ((1.0, 2.0, 3.0), (4.0, 5.0, 6.0)), 0, 1, 1)
    assert few.tail == ("max", 6.0)
    samples = tuple(float(i) for i in range(1, P90_MIN_SAMPLES + 1))
    many = RoundsResult("many", (samples,), 0, None, None)
    assert many.tail == ("p90", pytest.approx(percentile(list(samples), 90)))
    text = str(few)
    assert "max 6.000 ms" in text and "p90" not in text and "2 rounds x 3 runs after 0 warm-up" in text
    assert "round medians 2.000-5.000" in text and "batch 1, 1 thread(s)" in text
    assert "p90" in str(many) and "thread" not in str(many)


def test_speedup_is_the_median_of_per_round_ratios():
    slow = RoundsResult("slow", ((10.0,), (30.0,), (20.0,)), 0, 1, 1)
    fast = RoundsResult("fast", ((5.0,), (10.0,), (20.0,)), 0, 1, 1)
    assert speedup_spread(slow, fast) == (2.0, 1.0, 3.0)
    with pytest.raises(ValueError, match="same number of rounds"):
        speedup_spread(slow, RoundsResult("x", ((1.0,),), 0, 1, 1))


def test_benchmark_rounds_refuses_bad_arguments():
    with pytest.raises(TypeError):
        benchmark_rounds({})
    with pytest.raises(TypeError):
        benchmark_rounds({"a": 3})
    for bad in ({"rounds": 0}, {"warmup": -1}, {"repeats": 0}, {"repeats": 1.5}):
        with pytest.raises(ValueError):
            benchmark_rounds({"a": lambda: None}, **bad)


def test_stream_arrays_exceed_the_cache_within_the_memory_budget(monkeypatch):
    from deploykit import bench

    monkeypatch.setattr(bench, "l3_cache_bytes", lambda default=0: 32 * 2**20)  # a 32 MiB L3
    assert bench.stream_array_bytes("copy") == bench.stream_array_bytes("triad") == 128 * 2**20
    assert bench.stream_working_set_ratio("copy") == 8.0
    monkeypatch.setattr(bench, "l3_cache_bytes", lambda default=0: 480 * 2**20)  # a server's 480 MiB L3
    assert bench.stream_arrays("copy") * bench.stream_array_bytes("copy") <= bench.STREAM_MAX_BYTES
    assert bench.stream_arrays("triad") * bench.stream_array_bytes("triad") <= bench.STREAM_MAX_BYTES
    assert 2.0 < bench.stream_working_set_ratio("copy") < 2.2  # beyond the cache, by less than 4x: said, not hidden
    with pytest.raises(ValueError, match="'copy' or 'triad'"):
        bench.stream_arrays("scale")


def test_stream_bandwidth_is_positive_and_validates():
    assert l3_cache_bytes() > 0
    for kernel in ("copy", "triad"):
        assert stream_bandwidth(kernel, array_bytes=1 << 20, repeats=3) > 0
    assert stream_bandwidth("copy", array_bytes=1 << 20, repeats=3, lib="numpy") > 0
    with pytest.raises(ValueError, match="kernel"):
        stream_bandwidth("scale")
    with pytest.raises(ValueError, match="numpy"):
        stream_bandwidth("triad", lib="numpy")
    with pytest.raises(ValueError, match="lib"):
        stream_bandwidth("copy", lib="cupy")
    with pytest.raises(ValueError, match="repeats"):
        stream_bandwidth("copy", array_bytes=1 << 16, repeats=0)


def _matmul_relu(n=4, k=8, m=16):
    w = numpy_helper.from_array(np.zeros((k, m), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", m])], initializer=[w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_memory_traffic_counts_weights_and_activations_by_hand():
    n, k, m = 4, 8, 16
    t = memory_traffic(_matmul_relu(n, k, m), batch=n)
    assert t.flops == 2 * n * k * m
    assert t.weight_bytes == 4 * k * m
    # MatMul reads x and writes h; Relu reads h and writes y
    assert t.activation_bytes == 4 * (n * k + n * m + n * m + n * m)
    assert t.minimum_bytes == 4 * (k * m + n * k + n * m)
    assert t.bytes == t.weight_bytes + t.activation_bytes
    assert t.intensity == pytest.approx(t.flops / t.bytes) and t.max_intensity > t.intensity


def test_intensity_grows_with_batch_for_the_course_models():
    import deploykit as dk

    one, many = memory_traffic(dk.digits_onnx(), batch=1), memory_traffic(dk.digits_onnx(), batch=64)
    assert one.weight_bytes == many.weight_bytes > 0 and many.intensity > one.intensity


def test_roofline_is_the_lower_of_the_two_ceilings():
    assert roofline(100.0, 10.0, 2.0) == 20.0
    assert roofline(100.0, 10.0, 50.0) == 100.0


def test_time_scale_defaults_to_one_and_validates(monkeypatch):
    import pytest

    from deploykit.bench import time_scale

    monkeypatch.delenv("DEPLOYKIT_TIME_SCALE", raising=False)
    assert time_scale() == 1.0
    monkeypatch.setenv("DEPLOYKIT_TIME_SCALE", "50")
    assert time_scale() == 50.0
    for bad in ("fast", "0.5", "nan"):
        monkeypatch.setenv("DEPLOYKIT_TIME_SCALE", bad)
        with pytest.raises(ValueError, match="DEPLOYKIT_TIME_SCALE expected a number >= 1"):
            time_scale()


def test_lab07_frame_budget_scales_on_an_emulated_cpu(monkeypatch):
    import importlib

    from deploykit.checks import lab07

    monkeypatch.setenv("DEPLOYKIT_TIME_SCALE", "50")
    scaled = importlib.reload(lab07).FRAME_BUDGET_MS
    monkeypatch.delenv("DEPLOYKIT_TIME_SCALE")
    assert abs(importlib.reload(lab07).FRAME_BUDGET_MS * 50 - scaled) < 1e-9


# --- contended results (issue 22) ------------------------------------------------------------------

from deploykit.bench import BUSY, BenchResult, contention, machine_load, speedup_text  # noqa: E402


def _bench(median, p90):
    return BenchResult("x", median, p90, median, median, 1, 30, 1, 1, median)


def test_contention_flags_more_threads_far_slower_than_one():
    reason = contention(0.471, 55.994, threads=2)  # lab 04 as once published
    assert reason and "2 threads" in reason and "118.9x" in reason
    assert contention(10.0, 6.0) is None  # a real speed-up
    assert contention(10.0, 14.0) is None  # a little slower: synchronisation on a small model, not load
    assert contention(10.0, 25.0) is not None
    assert contention({"median_ms": 1.0, "p90_ms": 1.2}, {"median_ms": 2.5, "p90_ms": 2.6}) is not None
    # microseconds: thread wake-up on a tiny call (lecture 12's MNN, 10.7 -> 34.5 us) is not load
    assert contention(0.0107, 0.0345, threads=2) is None


def test_contention_flags_a_wide_tail_and_rounds_that_disagree():
    assert contention(_bench(1.0, 1.4)) is None
    assert "interrupted" in contention(_bench(1.0, 3.5))
    assert contention(_bench(0.010, 0.035)) is None  # a 10 us call with a 35 us p90 on a quiet machine (lecture 09)
    assert contention(_bench(1.777, 6.630)) is not None  # lab 08's ORT at 2 threads, once published
    steady = RoundsResult("a", ((1.0,) * 5, (1.1,) * 5, (1.05,) * 5), 1, 1, 1)
    moved = RoundsResult("a", ((1.0,) * 5, (2.0,) * 5, (1.0,) * 5), 1, 1, 1)
    jitter = RoundsResult("a", ((0.0077,) * 5, (0.0143,) * 5, (0.008,) * 5), 1, 1, 1)
    assert contention(steady) is None and contention(jitter) is None
    assert "round medians" in contention(moved)


def test_speedup_text_prints_busy_instead_of_a_ratio():
    assert speedup_text(_bench(2.7, 3.0), _bench(2.0, 2.2)) == "1.35x"
    assert speedup_text(_bench(2.7, 3.0), _bench(2.0, 9.0)) == BUSY
    assert speedup_text(0.471, 0.055, also=[(0.471, 55.994)]) == BUSY
    assert speedup_text(0.471, 0.055, also=[(0.471, 0.5)]) == "8.56x"


def test_machine_load_reports_the_load_and_others_share():
    load = machine_load(0.1)
    assert set(load) == {"load_average", "others_busy_fraction"}
    if load["others_busy_fraction"] is not None:
        assert 0.0 <= load["others_busy_fraction"] <= 1.0
    if load["load_average"] is not None:
        assert len(load["load_average"]) == 3 and all(v >= 0 for v in load["load_average"])


def test_the_benchmark_script_prints_busy_rows_instead_of_their_ratio():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_ort_vs_torch", Path(__file__).resolve().parents[1] / "tools" / "bench_ort_vs_torch.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    rows = [{"model": "digits", "batch": 1, "threads": t, "pytorch_ms": p, "ort_ms": o, "contended": None}
            for t, p, o in ((1, 0.471, 0.055), (2, 55.994, 0.064))]
    rows += [{"model": "resnet18", "batch": 1, "threads": t, "pytorch_ms": p, "ort_ms": o, "contended": None}
             for t, p, o in ((1, 130.0, 100.0), (2, 80.0, 55.0))]
    flagged = tool.flag_contention(rows)
    assert flagged[1]["contended"] and "118.9x" in flagged[1]["contended"]
    assert not flagged[0]["contended"] and not flagged[2]["contended"] and not flagged[3]["contended"]


def test_weight_bytes_read_counts_one_row_of_a_looked_up_table(tmp_path):
    from deploykit.bench import weight_bytes_read

    table = numpy_helper.from_array(np.ones((100, 8), np.float32), "table")  # 3200 bytes, 32 per row
    head = numpy_helper.from_array(np.ones((8, 5), np.float32), "head")  # 160 bytes, read whole
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [1])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 5])

    def save(nodes, initializers, name, domains=()):
        graph = helper.make_graph(nodes, name, [ids], [out], initializer=initializers)
        opsets = [helper.make_opsetid("", 18)] + [helper.make_opsetid(d, 1) for d in domains]
        path = tmp_path / f"{name}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=opsets), path)
        return path

    gather = helper.make_node("Gather", ["table", "ids"], ["row"])
    matmul = helper.make_node("MatMul", ["row", "head"], ["out"])
    assert weight_bytes_read(save([gather, matmul], [table, head], "untied")) == (32 + 160, 3200 + 160)
    # Tied: the output layer reads the same table through a Transpose, so a step reads all of it.
    tied = [gather, helper.make_node("Transpose", ["table"], ["table_t"]), helper.make_node("MatMul", ["row", "table_t"], ["out"])]
    assert weight_bytes_read(save(tied, [table], "tied")) == (3200, 3200)
    # A quantised table looked up by GatherBlockQuantized: its 4-bit data (stored packed) and scales, one row each.
    packed = helper.make_tensor("table_q4", TensorProto.UINT4, [100, 8], vals=bytes(400), raw=True)  # 4 bytes per row
    scales = numpy_helper.from_array(np.ones((100, 1), np.float32), "table_scales")  # 4 bytes per row
    lookup = helper.make_node("GatherBlockQuantized", ["table_q4", "ids", "table_scales"], ["row"], domain="com.microsoft",
                              block_size=8, gather_axis=0, quantize_axis=1)
    path = save([lookup, matmul], [packed, scales, head], "quantised", domains=("com.microsoft",))
    assert weight_bytes_read(path) == (4 + 4 + 160, 400 + 400 + 160)
    # Along another axis it is not a row lookup: read whole.
    sideways = helper.make_node("Gather", ["table", "ids"], ["row"], axis=1)
    assert weight_bytes_read(save([sideways, matmul], [table, head], "sideways"))[0] == 3200 + 160
