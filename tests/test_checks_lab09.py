"""Lab 09 checks: the right attempt passes; each wrong attempt gets its hint, not a pass.

Wrong attempts: a translation that changes the math, a fixed-batch export, the exporter's own
(unstable) logcumsumexp checked at a strong signal, a naive log(cumsum(exp)) rewrite, a rewrite
passed as the reference, a global-maximum rewrite (underflow), an intermediate tensor from the wrong layer,
from another probe, or copied from PyTorch (ONNX Runtime never run), an incomplete record; hypot_onnx written
naively (inf at 3e20), guarding only overflow (0 for tiny values), without Abs, dividing 0 by 0, returning
float64, of one input, reduced to a scalar.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from onnxscript import opset18 as op

import deploykit as dk
from deploykit.checks import lab09
from deploykit.radio import RadioNet, load_radio_split, radio_signals, train_radio_model


def outcome(capsys) -> str:
    return capsys.readouterr().out.strip()


class StableRadioNet(RadioNet):
    def magnitude(self, iq):
        i, q = iq[:, 0:1], iq[:, 1:2]
        return torch.sqrt(i * i + q * q)

    def running_energy(self, h):
        steps = h.shape[-1]
        causal = torch.ones(steps, steps, dtype=torch.bool).tril()
        pairs = h.unsqueeze(-2).expand(*h.shape[:-1], steps, steps)
        return torch.logsumexp(pairs.masked_fill(~causal, float("-inf")), dim=-1)


class NaiveRadioNet(StableRadioNet):
    def running_energy(self, h):
        return torch.log(torch.cumsum(torch.exp(h), dim=-1))   # right on paper, overflows float32


class WrongRadioNet(StableRadioNet):
    def running_energy(self, h):
        return torch.cumsum(h, dim=-1)                          # not the same function


def hypot_onnx(self, other):
    return op.Sqrt(op.Add(op.Mul(self, self), op.Mul(other, other)))


def hypot_wrong(self, other):
    return op.Sqrt(op.Add(self, other))


@pytest.fixture(scope="module")
def model():
    return train_radio_model(load_radio_split())  # trained: its features reach the ranges where exp overflows


def copy_of(cls, model):
    out = cls().eval()
    out.load_state_dict(model.state_dict())
    return out


def export(model, name, *, table=None, dynamic=True):
    sample = torch.from_numpy(radio_signals(2, seed=5)[0])
    path = dk.artifact_path(f"test_lab09/{name}.onnx")
    kwargs = {"dynamic_shapes": {"iq": {0: torch.export.Dim("batch", min=1, max=1024)}}} if dynamic else {}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        program = torch.onnx.export(model, (sample,), dynamo=True, verbose=False, input_names=["iq"],
                                    output_names=["logits"], custom_translation_table=table, **kwargs)
    program.save(path, external_data=False)
    return path


def convert(model, name):
    import litert_torch

    sample = torch.from_numpy(radio_signals(1, seed=5)[0])
    path = dk.artifact_path(f"test_lab09/{name}.tflite")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        litert_torch.convert(model, (sample,)).export(str(path))
    return path


@pytest.fixture(scope="module")
def onnx_files(model):
    table = {torch.ops.aten.hypot.default: hypot_onnx}
    return {"translated": export(model, "translated", table=table),
            "wrong_translation": export(model, "wrong_translation", table={torch.ops.aten.hypot.default: hypot_wrong}),
            "fixed_batch": export(model, "fixed_batch", table=table, dynamic=False),
            "stable": export(copy_of(StableRadioNet, model), "stable")}


# Exercises 1 and 3: ONNX -------------------------------------------------------------------

def test_onnx_translated_passes_at_the_training_level(model, onnx_files, capsys):
    assert lab09.check_onnx(onnx_files["translated"], model)
    assert outcome(capsys).startswith("[PASS]")


def test_onnx_exporters_logcumsumexp_fails_at_a_strong_signal(model, onnx_files, capsys):
    assert not lab09.check_onnx(onnx_files["translated"], model, gains=lab09.GAINS)
    assert "inf/nan" in outcome(capsys)


def test_onnx_stable_rewrite_passes_at_every_gain(model, onnx_files, capsys):
    assert lab09.check_onnx(onnx_files["stable"], model, gains=lab09.GAINS)
    assert outcome(capsys).startswith("[PASS]")


def test_onnx_translation_that_changes_the_math(model, onnx_files, capsys):
    assert not lab09.check_onnx(onnx_files["wrong_translation"], model)
    assert "sqrt(a*a + b*b)" in outcome(capsys)


def test_onnx_fixed_batch(model, onnx_files, capsys):
    assert not lab09.check_onnx(onnx_files["fixed_batch"], model)
    assert "dynamic batch" in outcome(capsys)


def test_onnx_compared_with_the_rewrite_instead_of_the_original(model, onnx_files, capsys):
    assert not lab09.check_onnx(onnx_files["stable"], copy_of(StableRadioNet, model))
    assert "ORIGINAL" in outcome(capsys)


def test_onnx_missing_file(model, capsys):
    assert not lab09.check_onnx(dk.artifact_path("test_lab09/never_written.onnx"), model)
    assert "does not exist yet" in outcome(capsys)


# Exercise 2: LiteRT ------------------------------------------------------------------------

def test_litert_stable_rewrite_passes(model, capsys):
    assert lab09.check_litert(convert(copy_of(StableRadioNet, model), "stable"), model)
    assert outcome(capsys).startswith("[PASS]")


class GlobalMaxRadioNet(StableRadioNet):
    def running_energy(self, h):   # one maximum over the whole recording: early steps underflow to log(0)
        top = h.amax(dim=-1, keepdim=True)
        return torch.log(torch.cumsum(torch.exp(h - top), dim=-1)) + top


def test_litert_global_maximum_is_diagnosed_as_underflow(model, capsys):
    """Issue 23: this learner subtracted a maximum and was told to subtract a maximum (overflow)."""
    assert not lab09.check_litert(convert(copy_of(GlobalMaxRadioNet, model), "global_max"), model)
    text = outcome(capsys)
    assert "UNDERFLOWED" in text and "OVERFLOWS" not in text


def test_litert_naive_rewrite_is_diagnosed_as_overflow(model, capsys):
    assert not lab09.check_litert(convert(copy_of(NaiveRadioNet, model), "naive"), model)
    text = outcome(capsys)
    assert "OVERFLOWS" in text and "UNDERFLOWED" not in text


def test_litert_rewrite_that_changes_the_math(model, capsys):
    assert not lab09.check_litert(convert(copy_of(WrongRadioNet, model), "wrong"), model)
    assert "exactly what torch.hypot and torch.logcumsumexp compute" in outcome(capsys)


def test_litert_training_mode(model, capsys):
    training = copy_of(RadioNet, model).train()
    assert not lab09.check_litert(dk.artifact_path("test_lab09/stable.tflite"), training)
    assert "model.eval()" in outcome(capsys)


# Exercise 4: inside the graph --------------------------------------------------------------

def hook_value(model, x, index):
    captured = {}
    hook = model.features[index].register_forward_hook(lambda m, a, out: captured.__setitem__("v", out.detach().numpy().copy()))
    with torch.inference_mode():
        model(torch.from_numpy(x))
    hook.remove()
    return captured["v"]


def ort_value(path, probe):
    """What a learner does: cut the stable model at the first ReLU, run the cut in ONNX Runtime."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(path))
    node = next(n for n in proto.graph.node if n.op_type == "Relu" and any(
        p.key == "pkg.torch.onnx.name_scopes" and "'features.1'" in p.value for p in n.metadata_props))
    cut = dk.artifact_path("test_lab09/to_first_relu.onnx")
    onnx.utils.extract_model(str(path), str(cut), ["iq"], [node.output[0]])
    return ort.InferenceSession(str(cut), providers=["CPUExecutionProvider"]).run(None, {"iq": probe})[0], cut


def test_intermediate_right_layer_passes(model, onnx_files, capsys):
    probe = radio_signals(8, seed=9)[0]
    from_ort, cut = ort_value(onnx_files["stable"], probe)
    assert lab09.check_intermediate(model, probe, from_ort, hook_value(model, probe, 1), onnx_files["stable"])
    assert lab09.check_intermediate(model, probe, from_ort, hook_value(model, probe, 1), cut)
    assert outcome(capsys).count("[PASS]") == 2


def test_intermediate_wrong_layer(model, onnx_files, capsys):
    probe = radio_signals(8, seed=9)[0]
    assert not lab09.check_intermediate(model, probe, hook_value(model, probe, 3), hook_value(model, probe, 1),
                                        onnx_files["stable"])
    assert "output of features.3" in outcome(capsys)


def test_intermediate_before_the_relu(model, onnx_files, capsys):
    probe = radio_signals(8, seed=9)[0]
    from_ort, _ = ort_value(onnx_files["stable"], probe)
    assert not lab09.check_intermediate(model, probe, from_ort, hook_value(model, probe, 0), onnx_files["stable"])
    assert "output of features.0" in outcome(capsys)


def test_intermediate_same_array_twice(model, onnx_files, capsys):
    probe = radio_signals(8, seed=9)[0]
    value, _ = ort_value(onnx_files["stable"], probe)
    assert not lab09.check_intermediate(model, probe, value, value, onnx_files["stable"])
    assert "same object" in outcome(capsys)


def test_intermediate_copied_from_pytorch_never_ran_onnx_runtime(model, onnx_files, capsys):
    """Issue 23: `onnx_intermediate = torch_intermediate.copy()` used to pass."""
    probe = radio_signals(8, seed=9)[0]
    from_ort, _ = ort_value(onnx_files["stable"], probe)
    torch_intermediate = hook_value(model, probe, 1)
    if np.array_equal(from_ort, torch_intermediate):  # the telltale: ONNX Runtime's kernels round differently
        pytest.skip("ONNX Runtime is bit-identical to PyTorch on this CPU: a copy is indistinguishable (and true)")
    assert not lab09.check_intermediate(model, probe, torch_intermediate.copy(), torch_intermediate, onnx_files["stable"])
    assert "copied from PyTorch" in outcome(capsys)


def test_intermediate_without_the_onnx_file(model, onnx_files, capsys):
    probe = radio_signals(8, seed=9)[0]
    from_ort, _ = ort_value(onnx_files["stable"], probe)
    assert not lab09.check_intermediate(model, probe, from_ort, hook_value(model, probe, 1))
    assert "onnx_file=" in outcome(capsys)


def test_intermediate_from_another_probe_is_a_hint_not_a_crash_of_the_check(model, onnx_files, capsys):
    """Issue 23: tensors of another probe made the check itself raise IndexError, reported as the learner's."""
    probe, other = radio_signals(8, seed=9)[0], radio_signals(8, seed=10)[0]
    from_ort, _ = ort_value(onnx_files["stable"], other)
    assert not lab09.check_intermediate(model, probe, from_ort, hook_value(model, other, 1), onnx_files["stable"])
    text = outcome(capsys)
    assert "same probe" in text and "raised" not in text


# Exercise 5: the record --------------------------------------------------------------------

def test_breakages_right(capsys):
    assert lab09.check_breakages({"onnx": ["aten.hypot", "aten.logcumsumexp"],
                                  "litert": ["aten.hypot.default", "torch.logcumsumexp"]})
    assert outcome(capsys).startswith("[PASS]")


@pytest.mark.parametrize("record, words", [
    ({"onnx": ["aten.hypot"], "litert": ["aten.hypot", "aten.logcumsumexp"]}, "silent failures"),
    ({"onnx": ["aten.hypot", "aten.logcumsumexp"], "litert": ["aten.hypot"]}, "convert again after each fix"),
    ({"onnx": ["aten.hypot", "aten.logcumsumexp", "aten.conv1d"], "litert": ["aten.hypot", "aten.logcumsumexp"]},
     "handled"),
    ({"onnx": "aten.hypot", "litert": []}, "list of operator names"),
    (["aten.hypot"], "keys 'onnx' and 'litert'"),
])
def test_breakages_wrong(capsys, record, words):
    assert not lab09.check_breakages(record)
    assert words in outcome(capsys)


def test_rewrites_used_here_are_what_the_tests_say(model):
    """The test's stable rewrite equals the original; the naive one overflows at gain 100."""
    x = torch.from_numpy(radio_signals(4, seed=3)[0])
    with torch.inference_mode():
        assert torch.allclose(copy_of(StableRadioNet, model)(x * 100), model(x * 100), atol=1e-3, rtol=1e-4)
        assert not torch.isfinite(copy_of(NaiveRadioNet, model)(x * 100)).all()


def test_intermediate_blank_exercise_names_it(model, onnx_files, capsys):
    """Exercise 4 left blank and the lab run top to bottom (as the grader runs it): a hint, not a NameError."""
    probe = radio_signals(8, seed=9)[0]
    assert not lab09.check_intermediate(model, probe, None, None, onnx_file=onnx_files["stable"])
    out = outcome(capsys)
    assert out.startswith("[HINT]") and "Exercise 4" in out and "onnx_intermediate" in out


# check_hypot: the learner's ONNX Script hypot_onnx run eagerly against torch.hypot (Exercise 1).

def _right_hypot(self, other):
    a, b = op.Abs(self), op.Abs(other)
    big, small = op.Max(a, b), op.Min(a, b)
    ratio = op.Div(small, big)
    ratio = op.Where(op.IsNaN(ratio), small, ratio)
    return op.Mul(big, op.Sqrt(op.Add(op.Mul(ratio, ratio), [1.0])))


def _naive_hypot(self, other):
    return op.Sqrt(op.Add(op.Mul(self, self), op.Mul(other, other)))


def _hypot_without_abs(self, other):
    big, small = op.Max(self, other), op.Min(self, other)
    ratio = op.Div(small, big)
    ratio = op.Where(op.IsNaN(ratio), small, ratio)
    return op.Mul(big, op.Sqrt(op.Add(op.Mul(ratio, ratio), [1.0])))


def _hypot_dividing_by_zero(self, other):
    a, b = op.Abs(self), op.Abs(other)
    big, small = op.Max(a, b), op.Min(a, b)
    ratio = op.Div(small, big)
    return op.Mul(big, op.Sqrt(op.Add(op.Mul(ratio, ratio), [1.0])))


def _hypot_as_float64(self, other):
    return op.Cast(_right_hypot(self, other), to=11)   # TensorProto.DOUBLE


def _hypot_guarding_only_overflow(self, other):
    """Scaled where the larger magnitude is huge, naive elsewhere: tiny values' squares still underflow to 0."""
    big = op.Max(op.Abs(self), op.Abs(other))
    return op.Where(op.Greater(big, [1e18]), _right_hypot(self, other), _naive_hypot(self, other))


def _hypot_of_one_input(self, other):
    return op.Abs(self)


def _hypot_summed(self, other):
    return op.ReduceSum(_right_hypot(self, other), keepdims=0)


def test_hypot_right_passes(capsys):
    assert lab09.check_hypot(_right_hypot)
    assert "[PASS]" in outcome(capsys)


@pytest.mark.parametrize("attempt, words", [
    (_naive_hypot, ["you return inf", "divides the smaller magnitude by the larger"]),
    (_hypot_guarding_only_overflow, ["you return 0", "rounds to 0", "larger magnitude"]),
    (_hypot_without_abs, ["you return -5", "op.Abs"]),
    (_hypot_dividing_by_zero, ["(0, 0)", "nan", "0 / 0"]),
    (_hypot_as_float64, ["float64", "float32"]),
    (_hypot_of_one_input, ["torch.hypot gives a different value", "both inputs"]),
    (_hypot_summed, ["shape", "elementwise"]),
    (lambda self, other: 5.0, ["a tensor", "float"]),
    (None, ["finish Exercise 1"]),
    ("hypot", ["should be a function"]),
])
def test_hypot_wrong_attempts_get_a_hint(attempt, words, capsys):
    assert not lab09.check_hypot(attempt)
    out = outcome(capsys)
    assert out.startswith("[HINT]"), out
    for word in words:
        assert word in out, (word, out)
    assert "Where(op.IsNaN" not in out and "op.Sqrt(op.Add" not in out   # the method, never the code


def test_hypot_not_written_yet(capsys):
    def stub(self, other):
        raise NotImplementedError

    assert not lab09.check_hypot(stub)
    assert "not written yet" in outcome(capsys)


def test_hypot_cases_cover_what_the_naive_form_gets_wrong():
    """The large and tiny cases are where sqrt(a*a + b*b) leaves float32; ordinary values where it does not."""
    for kind, expect_finite_nonzero in (("large", False), ("tiny", False), ("ordinary", True)):
        a, b = (np.array(v, dtype=np.float32) for v in lab09.HYPOT_CASES[kind])
        with np.errstate(over="ignore", under="ignore"):
            naive = np.sqrt(a * a + b * b)
        want = torch.hypot(torch.from_numpy(a), torch.from_numpy(b)).numpy()
        assert np.isclose(naive, want, rtol=4e-6, atol=0).all() == expect_finite_nonzero, kind
