"""deploykit.lm_litert.litert_lm_benchmark: LiteRT-LM's own benchmark of a ``.litertlm`` bundle.

The plumbing is tested on a toy bundle built here in seconds: a ``.tflite`` with export_hf's interface
(``prefill_8`` and ``decode`` signatures; ``tokens``, ``input_pos``, ``mask``, ``kv_cache_*`` in, the
caches and, for decode, ``logits`` out), bundled with the course's tokenizer by the same
``litert_lm_builder`` calls as ``bundle_litertlm``. Its logits pick plain ASCII tokens, never the stop
token, so LiteRT-LM decodes exactly the tokens it is asked for.

The course's own bundle (lecture 14's cached one, or one converted here with a prefill signature of 8
tokens) checks what the lecture says about LiteRT-LM: a prompt several times longer than the prefill
signature is prefilled in chunks by the engine and still gives PyTorch's greedy text.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from deploykit.language_model import LM_DIR
from deploykit.lm_litert import LiteRTLMBenchmark, litert_lm_benchmark

TOKENIZER = LM_DIR / "tokenizer.json"
CACHE, PREFILL = 64, 8
MARGIN = 0.01  # logits; far above float32 rounding differences between runtimes


def _vocabulary():
    spec = json.loads(TOKENIZER.read_text(encoding="utf-8"))
    size = 1 + max([*spec["model"]["vocab"].values(), *(t["id"] for t in spec.get("added_tokens", []))])
    plain = sorted(i for s, i in spec["model"]["vocab"].items() if s.isascii() and s.isalnum())[:97]
    return size, plain


VOCAB, PLAIN = _vocabulary()


class ToyStep(torch.nn.Module):
    def __init__(self, logits: bool):
        super().__init__()
        self.logits = logits
        self.register_buffer("plain", torch.tensor(PLAIN, dtype=torch.float32))

    def forward(self, tokens, input_pos, mask, kv_cache_k_0, kv_cache_v_0):
        keys = kv_cache_k_0.index_copy(2, input_pos, tokens.float().reshape(1, 1, -1, 1))
        out = {"kv_cache_k_0": keys, "kv_cache_v_0": kv_cache_v_0 + 0.0}
        if self.logits:
            total = (torch.exp(mask[0, 0, -1]) * (keys[0, 0, :, 0] + 1)).sum()
            pick = torch.exp(-50 * (torch.arange(len(PLAIN)) - torch.remainder(total, len(PLAIN))) ** 2)
            token = (pick * self.plain).sum()  # one of PLAIN: never the stop token
            out["logits"] = (-(torch.arange(VOCAB, dtype=torch.float32) - token) ** 2).reshape(1, 1, VOCAB)
        return out


def _sample(n):
    return dict(tokens=torch.zeros(1, n, dtype=torch.int32), input_pos=torch.arange(n, dtype=torch.int32),
                mask=torch.zeros(1, 1, n, CACHE), kv_cache_k_0=torch.zeros(1, 1, CACHE, 1),
                kv_cache_v_0=torch.zeros(1, 1, 1, CACHE))


@pytest.fixture(scope="module")
def toy_bundle(tmp_path_factory):
    import litert_torch

    from deploykit._quiet import converter_output_silenced
    from deploykit.lm_litert import bundle_litertlm

    folder = tmp_path_factory.mktemp("litert_lm_toy")
    with converter_output_silenced():
        (litert_torch.signature(f"prefill_{PREFILL}", ToyStep(False).eval(), sample_kwargs=_sample(PREFILL))
         .signature("decode", ToyStep(True).eval(), sample_kwargs=_sample(1))
         .convert().export(str(folder / "model.tflite")))
    return bundle_litertlm(folder, cache=CACHE)  # the course's bundle: stop token <|endoftext|> (id 0), its tokenizer


def test_reports_the_engines_figures_for_the_tokens_asked(toy_bundle):
    result = litert_lm_benchmark(toy_bundle, prompt_tokens=PREFILL, decode_tokens=8, threads=1)
    assert isinstance(result, LiteRTLMBenchmark)
    assert (result.threads, result.prefill_tokens, result.decode_tokens) == (1, PREFILL, 8)
    assert result.init_s > 0 and result.ttft_s > 0
    assert result.prefill_tokens_per_s > 0 and result.decode_tokens_per_s > 0
    assert result.decode_ms_per_token == pytest.approx(1e3 / result.decode_tokens_per_s)
    assert len(result.runs) == 1 and result.runs[0].decode_tokens_per_s == result.decode_tokens_per_s


def test_a_prompt_longer_than_the_prefill_signature_is_prefilled_in_chunks(toy_bundle):
    result = litert_lm_benchmark(toy_bundle, prompt_tokens=3 * PREFILL + 5, decode_tokens=4, threads=2)
    assert (result.prefill_tokens, result.decode_tokens, result.threads) == (3 * PREFILL + 5, 4, 2)


def test_repeats_give_medians_over_fresh_engines(toy_bundle):
    result = litert_lm_benchmark(toy_bundle, prompt_tokens=4, decode_tokens=4, repeats=3)
    assert len(result.runs) == 3
    rates = sorted(r.decode_tokens_per_s for r in result.runs)
    assert result.decode_tokens_per_s == rates[1]


@pytest.mark.parametrize("prompt_tokens, decode_tokens", [(CACHE + 8, 4), (8, CACHE)])
def test_tokens_the_cache_cannot_hold_raise_instead_of_reporting_zeros(toy_bundle, prompt_tokens, decode_tokens):
    # the engine itself reports 0 prefilled tokens, or stops decoding when the cache is full, without an error
    with pytest.raises(ValueError, match="must fit"):
        litert_lm_benchmark(toy_bundle, prompt_tokens=prompt_tokens, decode_tokens=decode_tokens)


def test_validates_before_starting_an_engine(toy_bundle, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        litert_lm_benchmark(tmp_path / "model.litertlm")
    with pytest.raises(FileNotFoundError, match=r"\.litertlm"):
        litert_lm_benchmark(TOKENIZER)
    for bad in (dict(prompt_tokens=0), dict(decode_tokens=-1), dict(threads=1.5), dict(threads=True),
                dict(repeats=0), dict(max_num_tokens=0)):
        with pytest.raises(ValueError):
            litert_lm_benchmark(toy_bundle, **bad)
    with pytest.raises(ValueError, match="exceed max_num_tokens"):
        litert_lm_benchmark(toy_bundle, prompt_tokens=32, decode_tokens=32, max_num_tokens=40)


# ----------------------------------------------------------------------------------------------
# The course's bundle


@pytest.fixture(scope="module")
def course_bundle(tmp_path_factory):
    """Lecture 14's cached float32 bundle, else one converted now by the helper's command (about a minute)."""
    from deploykit.lm_runtimes import lm_artifact

    cached = lm_artifact("litert_lm_fp32") / "model.litertlm"
    if cached.is_file():
        return cached
    out = tmp_path_factory.mktemp("litert_lm_course") / "fp32"
    done = subprocess.run([sys.executable, "-m", "deploykit.lm_litert", str(out), "--prefill", str(PREFILL),
                           "--cache", "128"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return out / "model.litertlm"


def _prefill_length(bundle):
    from deploykit.litert import load_interpreter
    from deploykit.lm_litert import SignatureLM

    return SignatureLM(load_interpreter(bundle.with_name("model.tflite"), num_threads=1)).prefill_length


def test_litert_lm_runs_prompts_several_prefill_signatures_long_with_pytorchs_tokens(course_bundle):
    import litert_lm

    from deploykit.language_model import held_out_text, load_language_model

    model, tokenizer = load_language_model()
    prefill = _prefill_length(course_bundle)
    ids = tokenizer(held_out_text())["input_ids"][:3 * prefill + 5]
    prompt = tokenizer.decode(ids)
    assert tokenizer(prompt)["input_ids"] == ids
    # PyTorch's greedy tokens, compared while their top-2 margin is clear (lecture 14's rule)
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=8, do_sample=False, output_scores=True, return_dict_in_generate=True)
    reference = out.sequences[0, len(ids):].tolist()
    top2 = torch.stack(out.scores)[:, 0].topk(2).values
    unclear = ((top2[:, 0] - top2[:, 1]) < MARGIN).nonzero()
    decided = int(unclear[0]) if len(unclear) else len(reference)
    litert_lm.set_min_log_severity(litert_lm.LogSeverity.ERROR)
    engine = litert_lm.Engine(str(course_bundle), backend=litert_lm.Backend.CPU(thread_count=1), cache_dir=":nocache",
                              enable_benchmark=True)
    session = engine.create_session(apply_prompt_template=False, sampler_config=litert_lm.SamplerConfig(top_k=1),
                                    max_output_tokens=8)
    try:
        session.run_prefill([prompt])
        text = session.run_decode().texts[0]
        info = session.get_benchmark_info()
    finally:
        session.close()
        engine.close()
    assert info.last_prefill_token_count == len(ids)  # the whole prompt, through a signature of `prefill` tokens
    assert text.startswith(tokenizer.decode(reference[:decided]))
    if decided == len(reference):
        assert text == tokenizer.decode(reference)


def test_the_course_bundles_benchmark_reports_its_figures(course_bundle):
    result = litert_lm_benchmark(course_bundle, prompt_tokens=2 * _prefill_length(course_bundle), decode_tokens=16)
    assert result.prefill_tokens == 2 * _prefill_length(course_bundle) and result.decode_tokens == 16
    assert 0 < result.ttft_s < 10 and result.decode_tokens_per_s > 1
