"""deploykit.profiling: ONNX Runtime traces read into per-operator tables, warm-up skipped."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

import deploykit as dk
from deploykit.profiling import ort_profile


def trace(tmp_path, runs):
    """A synthetic trace: each run is (start, duration, [(op, node, start offset, duration), ...])."""
    events = []
    for start, duration, nodes in runs:
        events.append({"cat": "Session", "name": "model_run", "ts": start, "dur": duration})
        for op, node, offset, node_dur in nodes:
            events.append({"cat": "Node", "name": f"{node}_kernel_time", "ts": start + offset, "dur": node_dur,
                           "args": {"op_name": op, "provider": "CPUExecutionProvider"}})
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(events))
    return path


def test_skips_warm_up_runs_and_sums_by_operator(tmp_path):
    path = trace(tmp_path, [(0, 1000, [("Conv", "c1", 10, 900)]),                     # warm-up: slow
                            (2000, 100, [("Conv", "c1", 5, 60), ("Relu", "r1", 70, 20)]),
                            (3000, 100, [("Conv", "c1", 5, 60), ("Relu", "r1", 70, 20)])])
    profile = ort_profile(path, skip_runs=1)
    assert profile.runs == 2 and profile.run_us == 200 and profile.node_us == 160
    assert [(r.op_type, r.total_us, r.calls) for r in profile.operators] == [("Conv", 120, 2), ("Relu", 40, 2)]
    assert profile.operators[0].share == pytest.approx(0.75) and profile.node_share == pytest.approx(0.8)
    assert profile.slowest_nodes[0] == ("c1", "Conv", 60) and profile.providers == ("CPUExecutionProvider",)
    assert ort_profile(path).operators[0].total_us == 1020  # not skipping: the warm-up dominates


def test_counts_only_kernel_time_events(tmp_path):
    """Fence events carry the node's op_name too: counting them would inflate the operator's time."""
    path = trace(tmp_path, [(0, 100, [("Conv", "c1", 5, 60), ("Relu", "r1", 70, 20)])])
    events = json.loads(path.read_text())
    for suffix, offset in (("_fence_before", 1), ("_fence_after", 66)):
        events.append({"cat": "Node", "name": f"c1{suffix}", "ts": offset, "dur": 3,
                       "args": {"op_name": "Conv", "provider": "CPUExecutionProvider"}})
    events.append({"cat": "Node", "name": "c1_kernel_time", "ts": 10, "dur": 1,     # a node of another provider
                   "args": {"op_name": "Conv", "provider": "FakeNpuExecutionProvider"}})
    path.write_text(json.dumps(events))
    profile = ort_profile(path)
    assert [(r.op_type, r.total_us, r.calls) for r in profile.operators] == [("Conv", 61, 2), ("Relu", 20, 1)]
    assert profile.node_us == 81 and profile.providers == ("CPUExecutionProvider", "FakeNpuExecutionProvider")


def test_validates_its_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="end_profiling"):
        ort_profile(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON trace"):
        ort_profile(bad)
    path = trace(tmp_path, [(0, 10, [])])
    with pytest.raises(ValueError, match="cannot skip 1"):
        ort_profile(path, skip_runs=1)
    with pytest.raises(ValueError, match="skip_runs expected"):
        ort_profile(path, skip_runs=-1)


def test_reads_a_real_onnx_runtime_trace(tmp_path):
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "digits")
    session = ort.InferenceSession(str(dk.digits_onnx()), options, providers=["CPUExecutionProvider"])
    x = dk.digits_example_input(1).numpy()
    for _ in range(4):
        session.run(None, {"input": x})
    profile = ort_profile(session.end_profiling(), skip_runs=1)
    assert profile.runs == 3 and 0 < profile.node_share <= 1
    assert profile.providers == ("CPUExecutionProvider",)
    assert abs(sum(r.share for r in profile.operators) - 1) < 1e-9
    assert any("Conv" in r.op_type for r in profile.operators)
