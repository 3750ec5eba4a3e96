"""deploykit.lm_graphs: the prefill and decode wrappers return the model's own logits and cache (no export)."""
from __future__ import annotations

import pytest
import torch

from deploykit import language_model as lm
from deploykit.lm_graphs import DECODE_INPUTS, OUTPUTS, PREFILL_INPUTS, Decode, Prefill


@pytest.fixture(scope="module")
def model():
    model, _ = lm.load_language_model()
    model.set_attn_implementation("eager")  # what the lectures export
    return model


@pytest.fixture(scope="module")
def ids(model):
    return torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))


def test_names_are_the_graphs_inputs_and_outputs():
    assert PREFILL_INPUTS == ["input_ids"]
    assert DECODE_INPUTS == ["input_ids", "past_keys", "past_values"]
    assert OUTPUTS == ["logits", "present_keys", "present_values"]


def test_prefill_returns_the_models_logits_and_stacked_cache(model, ids):
    cfg = model.config
    with torch.inference_mode():
        logits, keys, values = Prefill(model)(ids)
        out = model(input_ids=ids, use_cache=True)
    assert torch.equal(logits, out.logits)
    shape = (cfg.num_hidden_layers, 2, cfg.num_key_value_heads, ids.shape[1], cfg.head_dim)
    assert tuple(keys.shape) == tuple(values.shape) == shape
    for i, layer in enumerate(out.past_key_values.layers):
        assert torch.equal(keys[i], layer.keys) and torch.equal(values[i], layer.values)


def test_decode_continues_the_prefill_like_a_longer_prefill(model, ids):
    # Prefill 11 tokens, decode the 12th: the logits and the cache a prefill of all 12 gives.
    with torch.inference_mode():
        _, past_keys, past_values = Prefill(model)(ids[:, :-1])
        logits, keys, values = Decode(model)(ids[:, -1:], past_keys, past_values)
        full_logits, full_keys, full_values = Prefill(model)(ids)
    assert tuple(logits.shape) == (2, 1, model.config.vocab_size)
    assert keys.shape == full_keys.shape and values.shape == full_values.shape
    # Different kernels (one position against twelve), so equal up to float32 rounding, far below a logit margin.
    assert torch.allclose(logits[:, 0], full_logits[:, -1], rtol=1e-4, atol=1e-4)
    assert torch.allclose(keys, full_keys, rtol=1e-4, atol=1e-5) and torch.allclose(values, full_values, rtol=1e-4, atol=1e-5)
    assert torch.equal(keys[:, :, :, :-1], past_keys) and torch.equal(values[:, :, :, :-1], past_values)


def test_decode_rotates_the_new_token_to_its_position(model, ids):
    # The wrapper must place the new token after the past (RoPE at position n, not 0): without the
    # position_ids it computes, the model would treat the new token as the first one.
    with torch.inference_mode():
        _, past_keys, past_values = Prefill(model)(ids[:, :-1])
        _, keys, _ = Decode(model)(ids[:, -1:], past_keys, past_values)
        _, keys_at_zero, _ = Prefill(model)(ids[:, -1:])
    assert not torch.allclose(keys[:, :, :, -1], keys_at_zero[:, :, :, 0], atol=1e-3)
