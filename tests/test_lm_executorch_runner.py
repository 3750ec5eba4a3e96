"""deploykit.lm_executorch: the constant methods ExecuTorch's LLM runner reads, and the runner itself.

Two kinds of program:

* a toy (exported here in seconds) with the runner's interface: ``forward(tokens, cache_position) ->
  logits`` and a cache buffer inside. Its next token is a function of every token in the cache up to
  the last position written, so a wrong position, a lost chunk of a long prompt or a stale cache slot
  changes the tokens. It tests the runner's contract (the metadata it requires, chunked prefill, the
  cache budget) and the helpers' plumbing.
* the course's language model, exported by the helper's own command (``python -m deploykit.lm_executorch``),
  or lecture 14's cached program when it has the metadata: its methods must hold the model's values,
  and the runner's greedy tokens must be the course loop's (``lm_runtimes.ExecuTorchRunner``).

The toy's tokens are ids of plain alphanumeric ASCII vocabulary entries, so every token decodes to
text on its own (the runner hands each token's text to the callback).
"""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from deploykit import lm_executorch as le
from deploykit.language_model import LM_DIR

TOKENIZER = LM_DIR / "tokenizer.json"
CACHE, MAX_PROMPT = 32, 8


def _vocabulary():
    spec = json.loads(TOKENIZER.read_text(encoding="utf-8"))
    size = 1 + max([*spec["model"]["vocab"].values(), *(t["id"] for t in spec.get("added_tokens", []))])
    plain = sorted(i for s, i in spec["model"]["vocab"].items() if s.isascii() and s.isalnum())[:97]
    return size, plain


VOCAB, PLAIN = _vocabulary()


class Toy(torch.nn.Module):
    """next token = PLAIN[(sum of (token + 1) over cache slots 0..last position) mod len(PLAIN)]."""

    def __init__(self):
        super().__init__()
        self.register_buffer("seen", torch.zeros(CACHE))
        self.register_buffer("plain", torch.tensor(PLAIN, dtype=torch.int64))

    def forward(self, tokens, cache_position):
        self.seen.index_copy_(0, cache_position, tokens[0].float())
        visible = (torch.arange(CACHE) <= cache_position[-1]).float()
        total = ((self.seen + 1) * visible).sum().long()
        token = self.plain.index_select(0, torch.remainder(total, self.plain.shape[0]).reshape(1))
        logits = -((torch.arange(VOCAB) - token).float() ** 2)
        return logits.reshape(1, 1, VOCAB).expand(1, tokens.shape[1], VOCAB)


def _reference(prompt_ids, n_new):
    seq, new = list(prompt_ids), []
    for _ in range(n_new):
        new.append(PLAIN[sum(t + 1 for t in seq) % len(PLAIN)])
        seq.append(new[-1])
    return new


TOY_CONFIG = SimpleNamespace(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, num_hidden_layers=1)


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    """``{"runner": path, "bare": path}``: the toy with runner_metadata's methods, and without any."""
    from executorch.exir import to_edge_transform_and_lower

    folder = tmp_path_factory.mktemp("lm_executorch_toy")
    length = torch.export.Dim("length", min=1, max=MAX_PROMPT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Mutation on a buffer ... meaningless initial state": the toy masks it
        program = torch.export.export(Toy(), (torch.zeros(1, 2, dtype=torch.long), torch.arange(2)),
                                      dynamic_shapes=({1: length}, {0: length}))
        paths = {}
        for name, methods in [("runner", le.runner_metadata(TOY_CONFIG, max_cache=CACHE, max_prompt=MAX_PROMPT)),
                              ("bare", None)]:
            paths[name] = folder / f"toy_{name}.pte"
            lowered = to_edge_transform_and_lower(program, constant_methods=methods).to_executorch()
            paths[name].write_bytes(lowered.buffer)
    return paths


@pytest.fixture(scope="module")
def hf_tokenizer():
    import tokenizers

    return tokenizers.Tokenizer.from_file(str(TOKENIZER))


# ----------------------------------------------------------------------------------------------
# runner_metadata: pure


def test_runner_metadata_writes_every_method_the_runner_reads():
    config = SimpleNamespace(vocab_size=4096, bos_token_id=1, eos_token_id=2, num_hidden_layers=4)
    assert le.runner_metadata(config, max_cache=128, max_prompt=64) == {
        "get_max_seq_len": 64, "get_max_context_len": 128, "get_vocab_size": 4096, "get_bos_id": 1,
        "get_eos_ids": [2], "get_n_layers": 4, "use_kv_cache": True, "use_sdpa_with_kv_cache": False,
        "enable_dynamic_shape": True}
    assert set(le.runner_metadata(config)) == set(le.RUNNER_METHODS)


def test_runner_metadata_keeps_several_eos_ids_and_falls_back_to_eos_for_bos():
    config = SimpleNamespace(vocab_size=10, bos_token_id=None, eos_token_id=[3, 7], num_hidden_layers=1)
    values = le.runner_metadata(config, max_cache=8, max_prompt=8)
    assert values["get_eos_ids"] == [3, 7] and values["get_bos_id"] == 3


@pytest.mark.parametrize("kwargs, message", [({"max_cache": 0}, "max_cache"), ({"max_prompt": 1.5}, "max_prompt"),
                                             ({"max_cache": True}, "max_cache"),
                                             ({"max_cache": 16, "max_prompt": 32}, "cannot exceed")])
def test_runner_metadata_refuses_bad_lengths(kwargs, message):
    with pytest.raises(ValueError, match=message):
        le.runner_metadata(TOY_CONFIG, **kwargs)


def test_runner_metadata_names_what_a_config_lacks():
    with pytest.raises(ValueError, match="eos_token_id, num_hidden_layers"):
        le.runner_metadata(SimpleNamespace(vocab_size=10))


def test_export_program_refuses_an_unknown_quantization_before_loading_anything(tmp_path):
    with pytest.raises(ValueError, match="quantize expected one of"):
        le.export_program(tmp_path / "x.pte", quantize="int3")
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------
# The toy: the runner's contract


def test_read_metadata_returns_the_methods_written_and_nothing_for_a_bare_program(toys):
    assert le.read_metadata(toys["runner"]) == le.runner_metadata(TOY_CONFIG, max_cache=CACHE, max_prompt=MAX_PROMPT)
    assert le.read_metadata(toys["bare"]) == {}


def test_the_runner_itself_refuses_a_program_without_get_max_seq_len(toys):
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    from deploykit._quiet import native_stderr_captured, native_stdout_silenced

    with native_stdout_silenced(), native_stderr_captured() as log:
        with pytest.raises(RuntimeError):
            runner = TextLLMRunner(str(toys["bare"]), str(TOKENIZER))
            runner.generate("The for", GenerationConfig(echo=False, max_new_tokens=2, temperature=0.0))
    assert "Required metadata method get_max_seq_len not found" in log.text
    with pytest.raises(ValueError, match="no get_max_seq_len method"):
        le.run_with_llm_runner(toys["bare"], TOKENIZER, "The for", 2)


@pytest.mark.parametrize("prompt, chunked", [("The for statement", False),
                                             ("x = 1 if the loop is executed and the else clause runs", True)])
def test_runner_tokens_follow_the_cache_also_over_chunked_prompts(toys, hf_tokenizer, prompt, chunked):
    ids = hf_tokenizer.encode(prompt).ids
    assert (len(ids) > MAX_PROMPT) == chunked  # a longer prompt goes through forward in get_max_seq_len chunks
    result = le.run_with_llm_runner(toys["runner"], TOKENIZER, prompt, 5)
    assert result.prompt_tokens == ids  # the runner's C++ tokenizer gives Hugging Face's ids
    assert result.tokens == _reference(ids, 5)
    assert result.text == "".join(result.pieces) == hf_tokenizer.decode(result.tokens)
    assert result.stats["prompt_tokens"] == len(ids)
    assert result.stats["generated_tokens"] == 4  # the runner counts the first token as the prefill's


def test_runner_budget_is_capped_to_the_cache(toys, hf_tokenizer):
    prompt = "x = 1 if the loop is executed and the else clause is run " * 2
    ids = hf_tokenizer.encode(prompt).ids
    assert MAX_PROMPT < len(ids) < CACHE - 2
    # the runner alone would let prompt + new tokens run past the static cache (its ring-buffer assumption)
    result = le.run_with_llm_runner(toys["runner"], TOKENIZER, prompt, 40)
    assert result.tokens == _reference(ids, CACHE - len(ids))
    with pytest.raises(ValueError, match="leaves no room"):
        le.run_with_llm_runner(toys["runner"], TOKENIZER, "word " * CACHE, 3)


def test_warmup_runs_reset_the_runner_and_give_the_same_tokens(toys):
    cold = le.run_with_llm_runner(toys["runner"], TOKENIZER, "The for statement", 6)
    warm = le.run_with_llm_runner(toys["runner"], TOKENIZER, "The for statement", 6, warmup=2, threads=2)
    assert warm.tokens == cold.tokens
    for result in (cold, warm):
        assert result.ttft_ms >= 0 and result.load_ms >= 0
        assert result.prefill_tokens_per_s >= 0 and result.decode_tokens_per_s >= 0


def test_run_with_llm_runner_validates_its_inputs(toys, tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        le.run_with_llm_runner(toys["runner"], tmp_path / "tokenizer.json", "The", 2)
    with pytest.raises(FileNotFoundError, match=r"\.pte"):
        le.run_with_llm_runner(tmp_path / "missing.pte", TOKENIZER, "The", 2)
    with pytest.raises(FileNotFoundError, match=r"\.pte"):
        le.read_metadata(TOKENIZER)
    for bad in (dict(prompt=""), dict(n_new=0), dict(n_new=2.0), dict(threads=0), dict(warmup=-1), dict(warmup=True)):
        args = {"prompt": "The", "n_new": 2, **bad}
        with pytest.raises(ValueError):
            le.run_with_llm_runner(toys["runner"], TOKENIZER, args.pop("prompt"), args.pop("n_new"), **args)


def test_a_runner_failure_carries_the_runners_last_log_line(toys, monkeypatch):
    # a context the program does not have: the runner refuses a prompt as long as its cache
    monkeypatch.setattr(le, "read_metadata", lambda path: {"get_max_seq_len": MAX_PROMPT, "get_max_context_len": 4096})
    with pytest.raises(RuntimeError, match="its log ends"):
        le.run_with_llm_runner(toys["runner"], TOKENIZER, "word " * (CACHE + 4), 3)


# ----------------------------------------------------------------------------------------------
# The course's model, exported by the helper's command


@pytest.fixture(scope="module")
def course_pte(tmp_path_factory):
    """Lecture 14's cached program if it has the runner's methods, else one exported now (a minute or two)."""
    from deploykit.lm_runtimes import lm_artifact

    cached = lm_artifact("executorch_fp32", ".pte")
    if cached.exists() and "get_max_seq_len" in le.read_metadata(cached):
        return cached
    out = tmp_path_factory.mktemp("lm_executorch_course") / "course.pte"
    done = subprocess.run([sys.executable, "-m", "deploykit.lm_executorch", str(out), "--max-cache", "64",
                           "--max-prompt", "16"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def course_model():
    from deploykit.language_model import load_language_model

    return load_language_model()


def test_the_exported_program_has_the_runners_methods_with_the_models_values(course_pte, course_model):
    from executorch.runtime import Runtime

    model, _ = course_model
    values = le.read_metadata(course_pte)
    assert values == le.runner_metadata(model.config, max_cache=values["get_max_context_len"],
                                        max_prompt=values["get_max_seq_len"])
    with contextlib.redirect_stderr(io.StringIO()):
        meta = Runtime.get().load_program(str(course_pte)).metadata("forward")
    # get_max_seq_len is the longest prompt forward takes (the upper bound of its dynamic length)
    assert list(meta.input_tensor_meta(0).sizes()) == [1, values["get_max_seq_len"]]
    assert list(meta.output_tensor_meta(0).sizes()) == [1, values["get_max_seq_len"], model.config.vocab_size]


def _course_loop(pte, prompt_ids, n_new, chunk):
    """lm_runtimes.ExecuTorchRunner's calls, with the prompt fed in chunks of at most ``chunk`` tokens."""
    from deploykit import lm_runtimes as lr

    with contextlib.redirect_stderr(io.StringIO()):
        runner = lr.ExecuTorchRunner(pte)
    for start in range(0, len(prompt_ids), chunk):
        part = prompt_ids[start:start + chunk]
        logits = runner.method.execute([torch.tensor([part]), torch.arange(start, start + len(part))])[0]
    runner.position, runner.last = len(prompt_ids), int(logits[0, -1].argmax())
    tokens = [runner.last]
    while len(tokens) < n_new and tokens[-1] != 0:
        tokens.append(runner.step())
    return tokens


def test_the_runner_gives_the_course_loops_greedy_tokens(course_pte, course_model):
    from deploykit import lm_runtimes as lr

    _, tokenizer = course_model
    prompt = "The for statement"
    ids = tokenizer(prompt)["input_ids"]
    with contextlib.redirect_stderr(io.StringIO()):
        course = lr.greedy(lr.ExecuTorchRunner(course_pte), ids, 12)
    result = le.run_with_llm_runner(course_pte, TOKENIZER, prompt, 12)
    assert result.prompt_tokens == ids
    assert result.tokens == course
    assert result.text == tokenizer.decode(course)


def test_the_runner_chunks_a_prompt_longer_than_get_max_seq_len_like_the_course_loop(course_pte, course_model):
    from deploykit.language_model import held_out_text

    _, tokenizer = course_model
    values = le.read_metadata(course_pte)
    chunk = values["get_max_seq_len"]
    ids = tokenizer(held_out_text())["input_ids"][:chunk + chunk // 2 + 1]  # a full chunk and a part of one
    assert chunk < len(ids) <= values["get_max_context_len"] - 6
    prompt = tokenizer.decode(ids)
    assert tokenizer(prompt)["input_ids"] == ids
    result = le.run_with_llm_runner(course_pte, TOKENIZER, prompt, 6)
    assert result.prompt_tokens == ids
    assert result.tokens == _course_loop(course_pte, ids, 6, chunk)
