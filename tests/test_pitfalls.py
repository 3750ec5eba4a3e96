"""The pitfall gallery does what lecture 03 and lab 02 say it does."""
import pytest
import torch

from deploykit import pitfalls as P

ALL = {**P.PITFALLS, **P.LAB02}


@pytest.mark.parametrize("key", sorted(ALL))
def test_trace_diverges_on_unseen_input_only(key):
    pitfall = ALL[key]
    model, seen, unseen = P.make(key)
    result = P.trace(model, seen)
    assert result.module is not None, result.error
    model.eval()
    result.module.eval()
    if pitfall.kind == "none":
        assert P.agree(pitfall, model, result.module, unseen)
        return
    if pitfall.kind not in ("train_mode", "side_effect"):
        assert P.agree(pitfall, model, result.module, seen)
    assert not P.agree(pitfall, model, result.module, unseen)


@pytest.mark.parametrize("key", sorted(ALL))
def test_warns_flag_matches_the_tracer(key):
    pitfall = ALL[key]
    model, seen, _ = P.make(key)
    result = P.trace(model, seen)
    assert bool(result.warnings) == pitfall.warns, result.warnings
    assert all(w.startswith("TracerWarning") for w in result.warnings)
    assert all("/" not in w for w in result.warnings)


@pytest.mark.parametrize("key", sorted(ALL))
def test_script_matches_eager_on_many_inputs(key):
    pitfall = ALL[key]
    eager = pitfall.build().eval()
    scripted = torch.jit.script(pitfall.build().eval())
    generator = torch.Generator().manual_seed(0)
    for _ in range(30):
        assert P.agree(pitfall, eager, scripted, pitfall.random_input(generator))


def test_make_rejects_unknown_key():
    with pytest.raises(KeyError, match="unknown pitfall"):
        P.make("nope")


def test_kinds_and_builds_are_deterministic():
    for pitfall in ALL.values():
        assert pitfall.kind in P.KINDS
        a, b = pitfall.build(), pitfall.build()
        for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(pa, pb), name
    assert P.PITFALLS["train_mode"].build().training
    assert not P.PITFALLS["data_dependent_if"].build().training


def test_helpers_strip_paths():
    assert P.first_line("\n  File /a/b/c.py:12 broke\nmore") == "File <file> broke"
    assert P.strip_source_comments("%1 = aten::mul(%x) # /tmp/x.py:3:4") == "%1 = aten::mul(%x)"
    bad = P.trace(torch.nn.Identity(), ("not a tensor",))
    assert bad.module is None and bad.error
