"""Lab 03 checks: the solution passes, and typical wrong answers get a [HINT], never a traceback."""
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import deploykit as dk
from deploykit.checks import lab03


def _export(path, model=None, *, dynamic=True, input_names=("input",), external_data=False):
    model = dk.digits_model() if model is None else model
    torch.onnx.export(
        model, (dk.digits_example_input(2),), str(path),
        input_names=list(input_names), output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}} if dynamic else None,
        dynamo=True, external_data=external_data, verbose=False,
    )
    return path


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("lab03") / "good.onnx")


def _validate(path) -> bool:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError:
        return False
    return True


def _reports(path, batches=(1, 7, 64), reference_is_ort=False):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x_test = dk.load_digits_split().x_test
    reports = {}
    for n in batches:
        x = x_test[:n]
        candidate = session.run(None, {"input": x})[0]
        with torch.inference_mode():
            reference = candidate if reference_is_ort else dk.digits_model()(torch.from_numpy(x)).numpy()
        reports[n] = dk.parity_report(reference, candidate)
    return reports


def test_export_passes(good, capsys):
    assert lab03.check_export(good)
    assert "[PASS]" in capsys.readouterr().out


def test_export_hints(tmp_path, capsys):
    assert not lab03.check_export(tmp_path / "missing.onnx")
    assert "run your export cell" in capsys.readouterr().out
    assert not lab03.check_export(_export(tmp_path / "fixed.onnx", dynamic=False))
    out = capsys.readouterr().out
    assert "[HINT]" in out and "batch dimension is fixed at 2" in out
    assert not lab03.check_export(_export(tmp_path / "named.onnx", input_names=("images",)))
    assert "input_names" in capsys.readouterr().out
    assert not lab03.check_export(_export(tmp_path / "external.onnx", external_data=True))
    assert "external_data=False" in capsys.readouterr().out
    assert not lab03.check_export(_export(tmp_path / "untrained.onnx", model=dk.DigitsCNN().eval()))
    assert "does not compute the trained digits model" in capsys.readouterr().out
    assert not lab03.check_export(123)
    assert "[HINT]" in capsys.readouterr().out


def test_validator(good, capsys):
    assert lab03.check_validator(_validate, good)
    assert "[PASS]" in capsys.readouterr().out
    assert not lab03.check_validator(lambda path: True, good)
    assert "returned True for a file with a broken edge" in capsys.readouterr().out

    def raises(path):
        onnx.checker.check_model(str(path))
        return True

    assert not lab03.check_validator(raises, good)
    assert "catch it and return False" in capsys.readouterr().out
    assert not lab03.check_validator(_validate(good), good)  # passed the result, not the function
    assert "not its result" in capsys.readouterr().out
    assert not list(good.parent.glob("*_broken_by_check.onnx"))  # the check cleans up after itself


def test_parity(good, capsys):
    assert lab03.check_parity(_reports(good))
    assert "[PASS]" in capsys.readouterr().out
    assert not lab03.check_parity(_reports(good, batches=(1,)))
    assert "only at batch 1" in capsys.readouterr().out
    assert not lab03.check_parity(_reports(good, batches=(1, 7)))
    assert "missing [64]" in capsys.readouterr().out
    one = _reports(good, batches=(1,))[1]
    assert not lab03.check_parity({1: one, 7: one, 64: one})  # the same batch reused
    assert "expected (7, 10)" in capsys.readouterr().out
    assert not lab03.check_parity(_reports(good, reference_is_ort=True))
    assert "compare a runtime with itself" in capsys.readouterr().out
    reports = _reports(good)
    x = dk.load_digits_split().x_test[:7]
    with torch.inference_mode():
        reference = dk.digits_model()(torch.from_numpy(x)).numpy()
    reports[7] = dk.parity_report(reference, reference + 0.5)
    assert not lab03.check_parity(reports)
    assert "outputs differ" in capsys.readouterr().out
    assert not lab03.check_parity([1, 7, 64])
    assert "[HINT]" in capsys.readouterr().out


def test_graph_reading(good, capsys):
    facts = lab03.graph_facts(good)
    assert facts["op_counts"]["Conv"] == 2 and "BatchNormalization" not in facts["op_counts"]
    assert lab03.check_graph_reading(good, facts["op_counts"], facts["initializer_sizes"], facts["parameter_count"])
    assert "[PASS]" in capsys.readouterr().out

    proto = onnx.load(str(good))
    by_name = dict(Counter(n.name for n in proto.graph.node))
    assert not lab03.check_graph_reading(good, by_name, facts["initializer_sizes"], facts["parameter_count"])
    assert "node names" in capsys.readouterr().out
    ranks = {t.name: len(t.dims) for t in proto.graph.initializer}
    assert not lab03.check_graph_reading(good, facts["op_counts"], ranks, facts["parameter_count"])
    assert "len(dims) is the rank" in capsys.readouterr().out
    torch_count = dk.count_parameters(dk.digits_model())
    assert torch_count != facts["parameter_count"]
    assert not lab03.check_graph_reading(good, facts["op_counts"], facts["initializer_sizes"], torch_count)
    assert "PyTorch model's parameter count" in capsys.readouterr().out
    assert not lab03.check_graph_reading(good, facts["op_counts"], facts["initializer_sizes"], len(facts["initializer_sizes"]))
    assert "number of initializer tensors" in capsys.readouterr().out
    wrong_ops = {**facts["op_counts"], "Conv": 1}
    assert not lab03.check_graph_reading(good, wrong_ops, facts["initializer_sizes"], facts["parameter_count"])
    assert "does not match the file" in capsys.readouterr().out
    assert np.int64(facts["parameter_count"]) == facts["parameter_count"]
    assert lab03.check_graph_reading(good, facts["op_counts"], facts["initializer_sizes"], np.int64(facts["parameter_count"]))


def test_blank_exercises_are_named_not_crashed(capsys):
    """Sections 3 and 4 left blank, the lab run top to bottom (as the grader does): hints naming them."""
    assert not lab03.check_parity({})
    assert "section 3" in capsys.readouterr().out
    assert not lab03.check_graph_reading(dk.digits_onnx(), {}, {}, None)
    assert "section 4" in capsys.readouterr().out
