"""Lab 07 checks: a right answer passes, each kind of wrong answer gets its hint.

A small MLP (not the lab's solution model) is trained and deployed once for the module.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import deploykit as dk
from deploykit.bench import BenchResult
from deploykit.checks import lab07
from deploykit.quantize import quantize_onnx


class MLP(nn.Module):
    """forward(x): dk.export_onnx names the dynamic batch dimension of an argument called ``x``."""

    def __init__(self, hidden=64, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.net(x)


def bench(median, threads=1, batch=1):
    return BenchResult("x", median, median * 1.1, median, median, 10, 100, threads, batch, median)


@pytest.fixture(scope="module")
def split():
    return dk.load_digits_split()


@pytest.fixture(scope="module")
def mlp(split):
    model = MLP()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    for _ in range(150):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    return model.eval()


@pytest.fixture(scope="module")
def files(mlp, split):
    import litert_torch

    example = torch.from_numpy(split.x_test[:2])
    out = {"pytorch_eager": dk.artifact_path("test_lab07/mlp.pth")}
    torch.save(mlp.state_dict(), out["pytorch_eager"])
    out["ort_fp32"] = dk.export_onnx(mlp, example, "test_lab07/mlp.onnx", overwrite=True)
    out["ort_int8"] = quantize_onnx(out["ort_fp32"], "test_lab07/mlp.int8.onnx", "static", split.x_train, overwrite=True)
    out["litert_fp32"] = dk.artifact_path("test_lab07/mlp.tflite")
    litert_torch.convert(mlp, (example[:1],)).export(str(out["litert_fp32"]))
    return out


@pytest.fixture
def table(files):
    rows = {}
    for name, path in files.items():
        rows[name] = {"file": path, "size_kb": path.stat().st_size / 1000, "accuracy": 0.97,
                      "top1_agreement": 1.0, "latency": bench(0.01 if name != "pytorch_eager" else 0.2)}
    return rows


def test_model(mlp, capsys):
    assert lab07.check_model(mlp)
    capsys.readouterr()
    assert not lab07.check_model(dk.DigitsCNN().eval())
    assert "DigitsCNN" in capsys.readouterr().out
    training = copy.deepcopy(mlp).train()
    assert not lab07.check_model(training)
    assert "model.eval()" in capsys.readouterr().out
    torch.manual_seed(1)
    assert not lab07.check_model(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval())
    assert "train longer" in capsys.readouterr().out
    assert not lab07.check_model(nn.Sequential(nn.Flatten(), nn.Linear(64, 5)).eval())
    assert "expected (N, 10)" in capsys.readouterr().out
    assert not lab07.check_model("model.onnx")
    assert "torch.nn.Module" in capsys.readouterr().out


def test_deployments(mlp, files, split, capsys):
    assert lab07.check_deployments(mlp, files)
    capsys.readouterr()
    assert not lab07.check_deployments(mlp, {k: v for k, v in files.items() if k != "litert_fp32"})
    assert "missing runtimes" in capsys.readouterr().out
    assert not lab07.check_deployments(mlp, {**files, "litert_fp32": files["ort_fp32"]})
    assert "wrong file type" in capsys.readouterr().out
    assert not lab07.check_deployments(mlp, {**files, "ort_int8": files["ort_fp32"]})
    assert "no int8 operators" in capsys.readouterr().out
    other = MLP(seed=2).eval()
    stale = dk.export_onnx(other, torch.from_numpy(split.x_test[:2]), "test_lab07/other.onnx", overwrite=True)
    assert not lab07.check_deployments(mlp, {**files, "ort_fp32": stale})
    assert "eval mode" in capsys.readouterr().out


def test_table(table, capsys):
    assert lab07.check_table(table)
    capsys.readouterr()
    wrong_size = {**table, "ort_int8": {**table["ort_int8"], "size_kb": table["ort_int8"]["size_kb"] * 1024}}
    assert not lab07.check_table(wrong_size)
    assert "st_size / 1000" in capsys.readouterr().out
    kib = {**table, "ort_int8": {**table["ort_int8"], "size_kb": table["ort_int8"]["file"].stat().st_size / 1024}}
    assert not lab07.check_table(kib)
    assert "KiB" in capsys.readouterr().out
    two_threads = {**table, "ort_fp32": {**table["ort_fp32"], "latency": bench(0.01, threads=2)}}
    assert not lab07.check_table(two_threads)
    assert "one thread" in capsys.readouterr().out
    assert not lab07.check_table({k: v for k, v in table.items() if k != "ort_int8"})
    assert "missing rows" in capsys.readouterr().out
    percent = {**table, "ort_fp32": {**table["ort_fp32"], "accuracy": 97.0}}
    assert not lab07.check_table(percent)
    assert "fractions" in capsys.readouterr().out


def test_decision(table, capsys):
    smallest = min(lab07.eligible(table), key=lambda name: table[name]["size_kb"])
    assert smallest == "ort_int8"
    assert lab07.check_decision(table, "ort_int8")
    capsys.readouterr()
    assert not lab07.check_decision(table, "pytorch_eager")
    assert "reference" in capsys.readouterr().out
    assert not lab07.check_decision(table, "ort_fp32")
    assert "smaller" in capsys.readouterr().out
    slow = {**table, "ort_int8": {**table["ort_int8"], "latency": bench(50.0)}}
    assert not lab07.check_decision(slow, "ort_int8")
    assert "fails a gate" in capsys.readouterr().out
    inaccurate = {**table, "ort_int8": {**table["ort_int8"], "accuracy": 0.90}}
    assert "ort_int8" not in lab07.eligible(inaccurate)
    assert not lab07.check_decision(table, "tensorrt")
    assert "one of" in capsys.readouterr().out


def test_deployments_small_stripped_model_passes(split, capsys):
    """The old size rule (int8 < 0.6 x fp32) failed small stripped models whose weights are int8."""
    import litert_torch

    small = MLP(hidden=16, seed=3)
    optimiser = torch.optim.Adam(small.parameters(), lr=1e-2)
    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    for _ in range(100):
        optimiser.zero_grad()
        nn.functional.cross_entropy(small(x), y).backward()
        optimiser.step()
    small.eval()
    example = torch.from_numpy(split.x_test[:2])
    out = {"pytorch_eager": dk.artifact_path("test_lab07/small.pth")}
    torch.save(small.state_dict(), out["pytorch_eager"])
    out["ort_fp32"] = dk.export_onnx(small, example, "test_lab07/small.onnx", overwrite=True)
    dk.strip_debug_info(out["ort_fp32"])
    out["ort_int8"] = quantize_onnx(out["ort_fp32"], "test_lab07/small.int8.onnx", "static", split.x_train, overwrite=True)
    out["litert_fp32"] = dk.artifact_path("test_lab07/small.tflite")
    litert_torch.convert(small, (example[:1],)).export(str(out["litert_fp32"]))
    assert out["ort_int8"].stat().st_size > 0.6 * out["ort_fp32"].stat().st_size  # the case the old rule got wrong
    assert lab07.check_deployments(small, out), capsys.readouterr().out


def test_deployments_debug_metadata_left_in(mlp, files, split, capsys):
    import onnx

    proto = onnx.load(str(files["ort_fp32"]))
    proto.graph.node[0].metadata_props.add(key="pkg.torch.onnx.stack_trace", value="File /home/me/lab07.py, line 3")
    unstripped = dk.artifact_path("test_lab07/mlp_unstripped.onnx")
    onnx.save(proto, str(unstripped))
    assert not lab07.check_deployments(mlp, {**files, "ort_fp32": unstripped})
    assert "dk.strip_debug_info" in capsys.readouterr().out


def test_deployments_int8_file_with_float_weights(mlp, files, split, capsys):
    """A QDQ pair on the input only: int8 operators in the file, but every weight still float32."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(str(files["ort_fp32"]))
    graph = proto.graph
    source = graph.input[0].name
    graph.initializer.extend([numpy_helper.from_array(np.array(1 / 255, np.float32), "in_scale"),
                              numpy_helper.from_array(np.array(0, np.int8), "in_zero")])
    for node in graph.node:
        node.input[:] = ["input_dq" if name == source else name for name in node.input]
    graph.node.insert(0, helper.make_node("DequantizeLinear", ["input_q", "in_scale", "in_zero"], ["input_dq"]))
    graph.node.insert(0, helper.make_node("QuantizeLinear", [source, "in_scale", "in_zero"], ["input_q"]))
    activations_only = dk.artifact_path("test_lab07/mlp.activations_only.onnx")
    onnx.save(proto, str(activations_only))
    assert not lab07.check_deployments(mlp, {**files, "ort_int8": activations_only})
    assert "float32 weights" in capsys.readouterr().out


def test_blank_exercises_get_a_hint_naming_the_exercise(mlp, capsys):
    # Issue 23 §3: with an exercise left blank, the lab's given code leaves its placeholders
    # (model = None, files = {}, table = {}, choice = None): each later check names the exercise to finish.
    assert not lab07.check_model(None)
    assert "finish Exercise 1" in capsys.readouterr().out
    assert not lab07.check_deployments(mlp, {})
    assert "finish Exercise 2" in capsys.readouterr().out
    assert not lab07.check_table({})
    assert "finish Exercise 3" in capsys.readouterr().out
    assert not lab07.check_decision({}, None)
    assert "finish Exercise 3" in capsys.readouterr().out
    assert not lab07.check_decision({"ort_fp32": {}}, None)
    assert "finish Exercise 4" in capsys.readouterr().out
    assert not lab07.check_decision({"ort_fp32": {}}, "ort_fp32")
    assert "table lacks runtimes" in capsys.readouterr().out


def test_ready_guards_given_cells(capsys):
    assert lab07.ready("Exercise 2", files={"a": 1})
    assert capsys.readouterr().out == ""
    assert not lab07.ready("Exercise 2", files={}, table=None)
    assert capsys.readouterr().out.strip() == "(skipped: `files`, `table` still empty: finish Exercise 2 first)"


def test_a_checks_own_failure_is_not_blamed_on_the_learner(files, capsys):
    # A value the check cannot read fails inside deploykit, not in the learner's code: said as such.
    assert not lab07.check_table({name: {"file": files[name], "size_kb": "big", "accuracy": 1, "top1_agreement": 1,
                                         "latency": None} for name in lab07.RUNTIMES})
    text = capsys.readouterr().out
    assert "your code raised" not in text and "the check could not use what you passed (TypeError" in text

    def learner_runner():
        raise ValueError("learner bug")

    from deploykit.checks import check

    @check("demo")
    def demo(fn):
        fn()

    assert not demo(learner_runner)
    assert "your code raised ValueError: learner bug" in capsys.readouterr().out
