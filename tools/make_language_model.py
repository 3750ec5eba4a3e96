#!/usr/bin/env python
"""Maintainers only: retrain the course's language model shipped in deploykit/assets/pydoc_lm/.

Trains a byte-level BPE tokenizer (``tokenizers``) and a small ``LlamaForCausalLM`` (4 layers,
hidden 256, 4 query heads, 2 key/value heads) on Python 3.11's documentation (``pydoc_data.topics``)
split by ``deploykit.language_model.split_documents`` (held-out topics, and every training paragraph
sharing a 12-word run with them dropped), then writes ``config.json``, ``generation_config.json``,
``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``, ``training.txt`` and
``held_out.txt`` into the package and the new SHA-256 table into ``deploykit/language_model.py``. Lectures 13-14 and
lab 10 deploy these files: after running it, re-execute them and review every changed output.
A few minutes on 2 cores; it loads every core, so wrap it:

    .venv/bin/python tools/quiet_machine.py -- .venv/bin/python tools/make_language_model.py --force
"""
from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploykit import language_model as lm  # noqa: E402  (sets HF_HUB_OFFLINE before transformers)

VOCAB_SIZE = 4096
MODEL_CONFIG = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=512, rope_theta=10000.0,
                    rms_norm_eps=1e-5, tie_word_embeddings=True)
TRAIN_CONFIG = dict(seq_len=256, batch_size=16, steps=600, lr=3e-3, warmup=30, weight_decay=0.1, seed=0)


def train_tokenizer(texts):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=[lm.END_OF_TEXT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="replace the shipped model (a copy is kept in artifacts/)")
    parser.add_argument("--steps", type=int, default=TRAIN_CONFIG["steps"])
    parser.add_argument("--out", type=Path, default=lm.LM_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    target = args.out
    if sys.version_info[:2] != (3, 11):
        print(f"the shipped split is Python 3.11's pydoc_data; this is Python {sys.version.split()[0]}: "
              "run the tool with Python 3.11 (the course's .venv)")
        return 1
    if (target / "model.safetensors").exists() and not args.force:
        print(f"{target.relative_to(ROOT) if target.is_relative_to(ROOT) else target} exists; "
              "pass --force to replace it (a copy is kept in artifacts/)")
        return 1

    import numpy as np
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(TRAIN_CONFIG["seed"])
    torch.set_num_threads(max(1, torch.get_num_threads()))
    topics = lm._topics()
    training, held_docs = lm.split_documents(topics)
    train_docs = list(training.values())
    dropped = sum(len(topics[name]) for name in topics if name not in held_docs) - sum(map(len, train_docs))
    print(f"split: {len(held_docs)} held-out topics ({sum(map(len, held_docs.values()))} characters); "
          f"{len(train_docs)} training topics, {dropped} characters of their paragraphs dropped for sharing "
          f"a {lm.NGRAM_WORDS}-word run with the held-out text", flush=True)
    raw = train_tokenizer(train_docs)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=lm.END_OF_TEXT, eos_token=lm.END_OF_TEXT,
                                        unk_token=None)
    eot = raw.token_to_id(lm.END_OF_TEXT)
    ids = np.concatenate([np.array([eot] + raw.encode(doc).ids, dtype=np.int64) for doc in train_docs])
    held = np.array(tokenizer(lm.join_documents(held_docs), verbose=False)["input_ids"], dtype=np.int64)
    print(f"tokenizer: {raw.get_vocab_size()} tokens; training text {len(ids)} tokens, held out {len(held)} tokens "
          f"({', '.join(lm.held_out_topics())})", flush=True)

    config = LlamaConfig(vocab_size=raw.get_vocab_size(), bos_token_id=eot, eos_token_id=eot, **MODEL_CONFIG)
    model = LlamaForCausalLM(config)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters", flush=True)
    cfg = TRAIN_CONFIG
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimiser = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg["lr"], betas=(0.9, 0.95))
    generator = np.random.default_rng(cfg["seed"])
    data = torch.from_numpy(ids)
    held_t = torch.from_numpy(held)

    def held_out_ppl() -> float:
        model.eval()
        with torch.inference_mode():
            value = lm.perplexity(lambda x: model(torch.from_numpy(x)).logits.numpy(), held_t.numpy(), window=256)
        model.train()
        return value

    model.train()
    start = time.perf_counter()
    for step in range(args.steps):
        lr = cfg["lr"] * min(1.0, (step + 1) / cfg["warmup"]) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in optimiser.param_groups:
            group["lr"] = lr
        offsets = generator.integers(0, len(ids) - cfg["seq_len"] - 1, size=cfg["batch_size"])
        batch = torch.stack([data[o:o + cfg["seq_len"]] for o in offsets])
        loss = model(input_ids=batch, labels=batch).loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        if step % 50 == 0 or step == args.steps - 1:
            extra = f"  held-out perplexity {held_out_ppl():.1f}" if step % 200 == 0 and step else ""
            print(f"step {step:4d}  loss {loss.item():.3f}  lr {lr:.2e}  {time.perf_counter() - start:.0f} s{extra}", flush=True)
    model.eval()
    print(f"held-out perplexity {held_out_ppl():.1f} after {time.perf_counter() - start:.0f} s", flush=True)

    if target.exists() and args.force:
        backup = ROOT / "artifacts" / (target.name + ".bak")  # not inside the package
        shutil.rmtree(backup, ignore_errors=True)
        shutil.copytree(target, backup)
    target.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, do_sample=False)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    (target / "held_out.txt").write_text(lm.join_documents(held_docs), encoding="utf-8")
    (target / "training.txt").write_text(lm.join_documents(training), encoding="utf-8")
    for extra in set(p.name for p in target.iterdir()) - set(lm.LM_SHA256):
        (target / extra).unlink()  # nothing unlisted ships (e.g. special_tokens_map.json)

    prompt = "The for statement"
    enc = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=60, do_sample=False)
    print("sample:", repr(tokenizer.decode(out[0])), flush=True)

    digests = {name: lm.file_sha256(target / name) for name in sorted(lm.LM_SHA256)}
    if target == lm.LM_DIR:
        source = Path(lm.__file__)
        table = "LM_SHA256 = {\n" + "".join(f'    "{n}": "{d}",\n' for n, d in digests.items()) + "}"
        text, count = re.subn(r"LM_SHA256 = \{\n.*?\n\}", lambda _: table, source.read_text(), flags=re.S)
        if count != 1:
            print(f"could not find LM_SHA256 in {source}; set it by hand to {json.dumps(digests, indent=1)}")
            return 1
        source.write_text(text)
    size = sum((target / n).stat().st_size for n in digests) / 1e6
    print(f"wrote {len(digests)} files ({size:.1f} MB): {json.dumps(digests, indent=1)}")
    print("next: update tests/test_language_model.py RELEASED, re-execute lectures 13-14 and lab 10, review outputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
