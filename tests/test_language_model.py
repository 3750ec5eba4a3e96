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
    "held_out.txt": "4c83e961bcb49e625a21b079bcdd69dc8234a04f9a1577570d21bb4fa8973033",
    "config.json": "5339e33d352a91614e1a8783a98b2e76b1e76ee8f0d26c8c3f098d4842a9e60f",
    "generation_config.json": "120ef2310cc5df02637c8ddfca9ca2fb7d0a493dd0ae437bb07b773299fd0ca1",
    "model.safetensors": "674b9bf6017a9d1e47f9e74661d274a5061c4e5a82fbe05a34b2bdc636ed1a70",
    "tokenizer.json": "f0af2e7e359c503143d002625f2798a01b2772bfdf03df002d1973d80cab2b85",
    "tokenizer_config.json": "cb977676eb23e240fde1fda034c9ab08ce817eed3f73aef7954aacd1a54b47b5",
    "training.txt": "f9f190d82bcae6e2fa2c1a7bc51df86df03597fcbe90d122029ad259f7616b2a",
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


def test_held_out_text_is_held_out_at_the_level_of_the_text():
    # Not only other topic names: no run of 12 words of the held-out text occurs in the training
    # text (the documentation repeats whole sections: `compound` holds `for`, `try`, `class`...).
    held, train = lm.held_out_text(), lm.training_text()
    assert lm.NGRAM_WORDS == 12
    assert lm.shared_ngram_fraction(held, train) == 0.0
    assert 380_000 < len(train) and 30_000 < len(held) < 120_000
    assert held.count(lm.END_OF_TEXT) == len(lm.held_out_topics())
    assert train.startswith(lm.END_OF_TEXT) and train.count(lm.END_OF_TEXT) > 60  # 69 training topics


def test_split_drops_repeated_passages_and_nothing_else():
    topics = {"a": "one two three four five\n\nsix seven eight", "b": "zero\n\none two three four five\n\nnine ten",
              "held": "one two three four five"}
    training, held = lm.split_documents(topics, held_out=("held",), n=3)
    assert held == {"held": "one two three four five"}
    assert training == {"a": "six seven eight", "b": "zero\n\nnine ten"}  # the shared paragraph is gone
    assert lm.shared_ngram_fraction("x one two three y", "one two three", n=3) == pytest.approx(1 / 3)
    # A held-out paragraph that matches only across a training paragraph boundary goes too.
    training, held = lm.split_documents({"t": "a b c\n\nd e f", "h": "x\n\nc d e\n\ny"}, held_out=("h",), n=3)
    assert training == {"t": "a b c\n\nd e f"} and "c d e" not in held["h"] and lm.word_ngrams(held["h"], 3) == set()
    # A run across two held-out topics cannot be dropped paragraph by paragraph: refused, not looped over.
    with pytest.raises(ValueError, match="across two held-out topics"):
        lm.split_documents({"h1": "one two three", "h2": "four five six", "t": "three four five"},
                           held_out=("h1", "h2"), n=3)
    with pytest.raises(ValueError, match="not among the documents"):
        lm.split_documents(topics, held_out=("missing",))
    with pytest.raises(ValueError, match="fewer than 12 words"):
        lm.shared_ngram_fraction("too short", "anything")


def test_topic_names_alone_would_not_hold_the_text_out():
    # The split the model had before: held-out topics removed by name only. A third or more of the
    # held-out 12-word runs were training text then; the shipped split has none (test above).
    from pydoc_data import topics

    by_name = "".join(text for name, text in topics.topics.items() if name not in lm.HELD_OUT_TOPICS)
    assert lm.shared_ngram_fraction(lm.held_out_text(), by_name) > 0.3


def test_shipped_split_is_this_pythons_split_on_3_11():
    # The shipped texts are Python 3.11's split (the version the model was trained with); other
    # Pythons' pydoc_data differs a little, which is why both sides are shipped, hashed.
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the shipped split is Python 3.11's pydoc_data")
    assert lm.held_out_text(live=True) == lm.held_out_text()
    assert lm.training_text(live=True) == lm.training_text()


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


def test_decode_arithmetic():
    # The formula against the tensors a cache really has: 4 layers, 2 kv heads of 64, float32.
    assert lm.kv_cache_bytes(4, 2, 64, 32, 4) == 2 * 4 * 1 * 2 * 32 * 64 * 4 == 131072
    assert lm.kv_cache_bytes(4, 2, 64, 32, 4, batch=3) == 3 * 131072 and lm.kv_cache_bytes(4, 2, 64, 0, 4) == 0
    one_b = lm.LLAMA_1B_ASSUMED
    assert lm.weight_only_bytes(one_b["params"]) == pytest.approx(1.24e9 * (0.5 + 2 / 32))  # float16 scales
    assert lm.weight_only_bytes(1e6, scale_bytes=4) == pytest.approx(1e6 * (0.5 + 4 / 32))  # float32 scales
    assert lm.weight_only_bytes(1e6, bits=8, block_size=128) == pytest.approx(1e6 * (1 + 2 / 128))
    # 32K tokens of float16 cache outweigh the int4 weights of a 1B model: both belong in the ceiling.
    cache = lm.kv_cache_bytes(one_b["layers"], one_b["kv_heads"], one_b["head_dim"], 32768, 2)
    assert cache > lm.weight_only_bytes(one_b["params"])
    assert lm.decode_ceiling(50, 0.5e9, 0.5e9) == pytest.approx(50.0) == lm.decode_ceiling(50, 1e9) / 1
    assert lm.decode_ceiling(50, 1e9, cache) < lm.decode_ceiling(50, 1e9)
    for bad in (0, -1, 1.5, True, "4"):
        with pytest.raises(ValueError, match="layers expected a positive whole number"):
            lm.kv_cache_bytes(bad, 2, 64, 1, 4)
    with pytest.raises(ValueError, match="tokens expected"):
        lm.kv_cache_bytes(4, 2, 64, -1, 4)
    with pytest.raises(ValueError, match="cache_bytes expected"):
        lm.decode_ceiling(10, 1e6, -5)
    with pytest.raises(ValueError, match="bandwidth_gbs"):
        lm.decode_ceiling(0, 1e6)
