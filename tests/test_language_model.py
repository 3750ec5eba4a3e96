"""The course's language model, shipped in deploykit/assets/pydoc_lm: its bytes, its loading, its text."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch

import deploykit as dk
from deploykit import language_model as lm

# The released files. `make reference-lm` rewrites them and lm.LM_SHA256; whoever does that must
# update these lines too, knowingly.
RELEASED = {
    "held_out.txt": "c9a594d39652ff2f377035405905c79a71bba2b197cc7cbc83b40846ba6da441",
    "config.json": "5339e33d352a91614e1a8783a98b2e76b1e76ee8f0d26c8c3f098d4842a9e60f",
    "generation_config.json": "120ef2310cc5df02637c8ddfca9ca2fb7d0a493dd0ae437bb07b773299fd0ca1",
    "model.safetensors": "0e60855c6299132b15872be4870c00498ebd8654868f68b65bedc5e864c62c4f",
    "tokenizer.json": "2b5912d9ab1c417b18d393c15fdc982f7c22c45825da1a20d2cae7ee3487ef2a",
    "tokenizer_config.json": "cb977676eb23e240fde1fda034c9ab08ce817eed3f73aef7954aacd1a54b47b5",
}


def test_shipped_files_are_the_released_ones():
    assert sorted(p.name for p in lm.LM_DIR.iterdir()) == sorted(RELEASED)
    for name, digest in RELEASED.items():
        data = (lm.LM_DIR / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest == lm.LM_SHA256[name], name
    size = (lm.LM_DIR / "model.safetensors").stat().st_size
    assert 5_000_000 < size < 30_000_000  # a few million float32 weights, not an LFS pointer


def test_config_is_the_small_llama_the_lectures_describe():
    config = json.loads((lm.LM_DIR / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert (config["num_hidden_layers"], config["hidden_size"]) == (4, 256)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)  # grouped-query attention
    assert 2048 <= config["vocab_size"] <= 8192


def test_loading_is_offline_and_from_the_local_folder():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    model, tokenizer = lm.load_language_model()
    assert not model.training and next(model.parameters()).dtype == torch.float32
    assert type(model).__name__ == "LlamaForCausalLM"
    ids = tokenizer("def f(x):\n    return x")["input_ids"]
    assert tokenizer.decode(ids) == "def f(x):\n    return x"  # byte-level BPE round-trips any text
    assert tokenizer.eos_token == lm.END_OF_TEXT and model.config.eos_token_id == tokenizer.eos_token_id


def test_held_out_topics_are_not_in_the_training_text():
    held, train = lm.held_out_topics(), lm.training_topics()
    assert len(held) >= 8 and not set(held) & set(train)
    assert 380_000 < len(lm.training_text()) and 30_000 < len(lm.held_out_text()) < 120_000
    from pydoc_data import topics

    for name in held:
        assert topics.topics[name] not in lm.training_text()
    # The shipped held-out text is Python 3.11's (the version the model was trained with); other
    # Pythons' pydoc_data differs a little, which is why it is shipped rather than rebuilt.
    if sys.version_info[:2] == (3, 11):
        assert lm.held_out_text(live=True) == lm.held_out_text()
    assert lm.held_out_text().count(lm.END_OF_TEXT) == len(held)


def test_model_learned_python_documentation():
    model, tokenizer = lm.load_language_model()
    ids = tokenizer(lm.held_out_text()[:6000])["input_ids"]
    with torch.inference_mode():
        ppl = lm.perplexity(lambda x: model(torch.from_numpy(x)).logits.numpy(), ids, window=128)
    assert ppl < 200  # a random model of this vocabulary scores about the vocabulary size (4096)
    prompt = tokenizer("The for statement", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**prompt, max_new_tokens=30, do_sample=False)
    text = tokenizer.decode(out[0][prompt["input_ids"].shape[1]:])
    words = {"the", "is", "a", "of", "to"}
    assert len(words & set(text.lower().split())) >= 2, text  # English prose, not noise


def test_perplexity_helper_is_exp_of_mean_cross_entropy():
    rng = np.random.default_rng(0)
    vocab, ids = 11, rng.integers(0, 11, size=50)
    logits = rng.normal(size=(1, 50, vocab))
    expected = torch.nn.functional.cross_entropy(torch.tensor(logits[0, :-1]), torch.tensor(ids[1:])).exp().item()
    assert lm.perplexity(lambda x: logits[:, :x.shape[1]], ids, window=50) == pytest.approx(expected, rel=1e-9)
    uniform = lm.perplexity(lambda x: np.zeros((1, x.shape[1], vocab)), ids, window=7)
    assert uniform == pytest.approx(vocab)  # a model that knows nothing scores the vocabulary size
    with pytest.raises(ValueError):
        lm.perplexity(lambda x: logits, ids[:1])


def test_a_changed_file_is_refused_with_the_fix(tmp_path, monkeypatch):
    copy = tmp_path / "pydoc_lm"
    shutil.copytree(lm.LM_DIR, copy)
    with (copy / "config.json").open("a") as handle:
        handle.write(" ")
    monkeypatch.setattr(lm, "LM_DIR", copy)
    with pytest.raises(ValueError, match="git checkout -- deploykit/assets/pydoc_lm"):
        lm.load_language_model()
    (copy / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        lm.lm_path()


def test_language_model_tool_refuses_without_force(capsys):
    spec = importlib.util.spec_from_file_location("make_language_model", dk.repo_root() / "tools" / "make_language_model.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([]) == 1
    assert "pass --force" in capsys.readouterr().out
