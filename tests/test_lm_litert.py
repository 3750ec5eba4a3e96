"""deploykit.lm_litert: the greedy loop over prefill/decode signature runners.

The loop is tested on a toy model converted here with litert_torch (seconds, no TensorFlow needed)
that has export_hf's interface (``prefill_<N>`` and ``decode`` signatures; ``tokens``, ``input_pos``,
``mask``, ``kv_cache_*`` in, the updated caches and, for decode, ``logits`` out). Its next token is
(sum of the visible cached tokens + number of visible slots) mod V, so a wrong position, mask or
cache hand-over changes the tokens.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

from deploykit import lm_litert
from deploykit.litert import digits_tflite, load_interpreter
from deploykit.lm_litert import SignatureLM

V, CACHE, PREFILL = 17, 16, 4


class ToyStep(torch.nn.Module):
    def __init__(self, logits: bool):
        super().__init__()
        self.logits = logits

    def forward(self, tokens, input_pos, mask, kv_cache_k_0, kv_cache_v_0):
        keys = kv_cache_k_0.index_copy(2, input_pos, tokens.float().reshape(1, 1, -1, 1))
        out = {"kv_cache_k_0": keys, "kv_cache_v_0": kv_cache_v_0 + 0.0}
        if self.logits:
            visible = torch.exp(mask[0, 0, -1])  # 1 where the mask is 0, 0 where it is -inf
            total = (visible * (keys[0, 0, :, 0] + 1)).sum()
            out["logits"] = (-(torch.arange(V, dtype=torch.float32) - torch.remainder(total, V)) ** 2).reshape(1, 1, V)
        return out


def _sample(n):
    return dict(tokens=torch.zeros(1, n, dtype=torch.int32), input_pos=torch.arange(n, dtype=torch.int32),
                mask=torch.zeros(1, 1, n, CACHE), kv_cache_k_0=torch.zeros(1, 1, CACHE, 1),
                kv_cache_v_0=torch.zeros(1, 1, 1, CACHE))


def _reference(prompt, n_new):
    seq, new = list(prompt), []
    for _ in range(n_new):
        new.append((sum(seq) + len(seq)) % V)
        seq.append(new[-1])
    return new


@pytest.fixture(scope="module")
def toy_path(tmp_path_factory):
    import litert_torch

    path = tmp_path_factory.mktemp("lm_litert") / "toy_lm.tflite"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        (litert_torch.signature(f"prefill_{PREFILL}", ToyStep(False).eval(), sample_kwargs=_sample(PREFILL))
         .signature("decode", ToyStep(True).eval(), sample_kwargs=_sample(1))
         .convert().export(str(path)))
    return path


@pytest.fixture
def toy(toy_path):
    return SignatureLM(load_interpreter(toy_path, num_threads=1))


def test_reads_lengths_from_the_signatures(toy):
    assert (toy.prefill_length, toy.cache_length, toy.vocab_size) == (PREFILL, CACHE, V)
    assert toy.prefill_name == f"prefill_{PREFILL}"


@pytest.mark.parametrize("prompt", [[3, 5, 7], [2], [1, 2, 3, 4, 5], np.array([[9, 0, 4]]), torch.tensor([[6, 6]])])
def test_greedy_tokens_follow_positions_masks_and_cache(toy, prompt):
    flat = np.asarray(prompt).reshape(-1).tolist()
    assert toy.generate(prompt, 8) == _reference(flat, 8)
    assert toy.position == len(flat) + 7  # the last token is returned, not fed


def test_generate_stops_after_eos(toy):
    full = _reference([3, 5, 7], 8)
    assert toy.generate([3, 5, 7], 8, eos_token_id=full[2]) == full[:3]


def test_start_resets_the_cache(toy):
    first = toy.generate([1, 2], 5)
    toy.generate([7, 7, 7, 7], 6)
    assert toy.generate([1, 2], 5) == first


def test_step_at_a_fixed_position_repeats_the_same_slot(toy):
    toy.start([3, 5, 7])
    a = toy.step(4, position=3)
    b = toy.step(4, position=3)
    assert toy.position == 3 and np.array_equal(a, b) and int(np.argmax(a)) == _reference([3, 5, 7, 4], 1)[0]


def test_refuses_prompts_longer_than_prefill_plus_one(toy):
    with pytest.raises(ValueError, match="at most 4"):
        toy.start(list(range(PREFILL + 2)))


def test_refuses_running_past_the_cache(toy):
    with pytest.raises(ValueError, match="cache holds 16 positions"):
        toy.generate([1, 2, 3], CACHE)


@pytest.mark.parametrize("prompt", [[], [1.5, 2.0], [V], [-1]])
def test_refuses_bad_prompts(toy, prompt):
    with pytest.raises(ValueError):
        toy.start(prompt)


@pytest.mark.parametrize("n", [0, -1, 2.0, True])
def test_refuses_bad_max_new_tokens(toy, n):
    with pytest.raises(ValueError, match="max_new_tokens"):
        toy.generate([1], n)


def test_refuses_a_token_outside_the_vocabulary(toy):
    toy.start([1])
    with pytest.raises(ValueError, match=r"\[0, 17\)"):
        toy.step(V)


def test_refuses_a_model_without_prefill_and_decode():
    with pytest.raises(ValueError, match="'prefill_<N>' and 'decode'"):
        SignatureLM(load_interpreter(digits_tflite(), num_threads=1))
    with pytest.raises(TypeError, match="LiteRT Interpreter"):
        SignatureLM("model.tflite")
