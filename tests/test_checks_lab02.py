"""Lab 02 checks: the solution passes, and typical wrong answers get a [HINT], never a traceback."""
import pytest
import torch
from torch import nn

from deploykit import pitfalls as P
from deploykit.checks import lab02

RIGHT_PREDICTIONS = {"A": "if", "B": "loop", "C": "number", "D": "none", "E": "shape"}
RIGHT_WARN = {"A": True, "B": True, "C": True, "D": False, "E": False}
RIGHT_COUNTER = {
    "A": -torch.ones(2, 3),
    "B": torch.full((2, 3), 100.0),
    "C": torch.arange(6.0).reshape(2, 3) + 10,
    "E": torch.full((4, 4), 2.0),
}


def test_predictions(capsys):
    assert lab02.check_predictions(RIGHT_PREDICTIONS)
    assert "[PASS]" in capsys.readouterr().out
    assert not lab02.check_predictions({**RIGHT_PREDICTIONS, "D": "shape"})
    out = capsys.readouterr().out
    assert "[HINT]" in out and "traces correctly" in out
    assert not lab02.check_predictions({**RIGHT_PREDICTIONS, "E": "none"})
    assert "does trace wrong" in capsys.readouterr().out
    assert not lab02.check_predictions({"A": "if"})
    assert "missing" in capsys.readouterr().out
    assert not lab02.check_predictions({**RIGHT_PREDICTIONS, "B": "while"})
    assert "not one of" in capsys.readouterr().out


def test_will_warn(capsys):
    assert lab02.check_will_warn(RIGHT_WARN)
    assert not lab02.check_will_warn({**RIGHT_WARN, "E": True})
    assert "raises no TracerWarning" in capsys.readouterr().out
    assert not lab02.check_will_warn({**RIGHT_WARN, "A": False})
    assert "does raise" in capsys.readouterr().out
    assert not lab02.check_will_warn({**RIGHT_WARN, "A": "yes"})


def test_counterexamples(capsys):
    assert lab02.check_counterexamples(RIGHT_COUNTER)
    capsys.readouterr()
    assert not lab02.check_counterexamples({**RIGHT_COUNTER, "A": torch.ones(2, 3)})
    assert "recorded with" in capsys.readouterr().out  # the traced input itself
    assert not lab02.check_counterexamples({**RIGHT_COUNTER, "A": torch.full((2, 3), 5.0)})
    assert "agree on your input" in capsys.readouterr().out
    assert not lab02.check_counterexamples({**RIGHT_COUNTER, "D": torch.ones(3, 3, 4)})
    assert "traces correctly" in capsys.readouterr().out
    assert not lab02.check_counterexamples({"A": RIGHT_COUNTER["A"]})
    assert "missing" in capsys.readouterr().out
    assert not lab02.check_counterexamples({**RIGHT_COUNTER, "E": torch.ones(0, 4)})
    assert "[HINT]" in capsys.readouterr().out


def _scripted(key):
    return torch.jit.script(lab02.MODELS[key].build())


def test_fix_accepts_scripted_and_exported(capsys):
    for key in lab02.WRONG:
        assert lab02.check_fix(key, _scripted(key)), capsys.readouterr().out

    class CumProd(nn.Module):
        def forward(self, x):
            return torch.cumprod(x, dim=0)

    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(CumProd(), (torch.ones(2, 4),), dynamic_shapes={"x": {0: batch}})
    assert lab02.check_fix("E", exported.module())
    assert not lab02.check_fix("E", exported)
    assert "exported.module()" in capsys.readouterr().out


def test_fix_hints(capsys):
    model, seen, _ = P.make("A")
    assert not lab02.check_fix("A", model)
    assert "eager model itself" in capsys.readouterr().out
    assert not lab02.check_fix("A", P.trace(model, seen).module)
    assert "torch.jit.trace" in capsys.readouterr().out

    class CumProd(nn.Module):
        def forward(self, x):
            return torch.cumprod(x, dim=0)

    static = torch.export.export(CumProd(), (torch.ones(2, 4),)).module()  # no Dim: batch frozen to 2
    assert not lab02.check_fix("E", static)
    assert "torch.export.Dim" in capsys.readouterr().out
    assert not lab02.check_fix("Z", static)
    assert "unknown model" in capsys.readouterr().out


def test_agreement_rate(capsys):
    assert lab02.check_agreement_rate(lambda e, c, xs: lab02.reference_agreement_rate(e, c, xs))

    def counts(eager, candidate, inputs):
        return float(sum(torch.allclose(eager(x), candidate(x)) for x in inputs))

    assert not lab02.check_agreement_rate(counts)
    assert "[HINT]" in capsys.readouterr().out

    def no_shape_check(eager, candidate, inputs):
        return sum(bool(torch.allclose(eager(x), candidate(x))) for x in inputs) / len(inputs)

    assert not lab02.check_agreement_rate(no_shape_check)
    assert "shape" in capsys.readouterr().out

    def not_written(eager, candidate, inputs):
        raise NotImplementedError

    assert not lab02.check_agreement_rate(not_written)
    assert "not written yet" in capsys.readouterr().out


def test_blank_exercises_name_the_exercise_to_finish(capsys):
    """What a blank lab binds before each stub (the lab's placeholders) gets 'finish Exercise N', not a traceback."""
    blank = {"A": None, "B": None, "C": None, "D": None, "E": None}
    assert not lab02.check_predictions(blank)
    assert "finish Exercise 1" in capsys.readouterr().out
    assert not lab02.check_will_warn(dict(blank))
    assert "finish Exercise 1" in capsys.readouterr().out
    assert not lab02.check_predictions(None)
    assert "finish Exercise 1" in capsys.readouterr().out
    assert not lab02.check_counterexamples(dict())
    assert "finish Exercise 2" in capsys.readouterr().out
    for key in lab02.WRONG:
        assert not lab02.check_fix(key, None)
        out = capsys.readouterr().out
        assert f"`fixed_{key.lower()}` is empty" in out and "finish Exercise 3" in out, out
    # a partly answered Exercise 1 is judged, not sent back as blank
    assert not lab02.check_predictions({**blank, "A": "if"})
    out = capsys.readouterr().out
    assert "not one of" in out and "finish Exercise 1" not in out
