"""The course's language model: a small Llama-architecture model shipped inside this package.

``deploykit/assets/pydoc_lm/`` holds a decoder-only model in the Hugging Face ``transformers`` Llama
architecture (4 layers, hidden 256, 4 query heads and 2 key/value heads: grouped-query attention)
with a byte-level BPE vocabulary, trained on Python's own documentation (``pydoc_data.topics``,
which ships with every Python). A few topics are held out of training: :func:`held_out_text` is
the text perplexity is measured on. Like the digits model, the files are shipped rather than trained
per machine (float32 training is not bit-identical across CPUs), their SHA-256 checked on load.

Loading never touches a hub: the folder is local and ``HF_HUB_OFFLINE`` is set before
``transformers`` is imported. ``tools/make_language_model.py`` (``make reference-lm``) retrains it.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np

# Before transformers is imported anywhere: a local folder must never become a hub lookup.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

#: The shipped model folder (``from_pretrained(LM_DIR)``).
LM_DIR = Path(__file__).resolve().parent / "assets" / "pydoc_lm"

#: SHA-256 of every shipped file (``make reference-lm`` rewrites the files and this table together).
LM_SHA256 = {
    "config.json": "5339e33d352a91614e1a8783a98b2e76b1e76ee8f0d26c8c3f098d4842a9e60f",
    "generation_config.json": "120ef2310cc5df02637c8ddfca9ca2fb7d0a493dd0ae437bb07b773299fd0ca1",
    "held_out.txt": "c9a594d39652ff2f377035405905c79a71bba2b197cc7cbc83b40846ba6da441",
    "model.safetensors": "0e60855c6299132b15872be4870c00498ebd8654868f68b65bedc5e864c62c4f",
    "tokenizer.json": "2b5912d9ab1c417b18d393c15fdc982f7c22c45825da1a20d2cae7ee3487ef2a",
    "tokenizer_config.json": "cb977676eb23e240fde1fda034c9ab08ce817eed3f73aef7954aacd1a54b47b5",
}

#: The ``pydoc_data.topics`` entries kept out of training (every 8th name of Python 3.11's sorted list,
#: from the 4th). Their text as the model was trained is shipped in ``held_out.txt``: ``pydoc_data``
#: changes between Python versions, perplexity must not.
HELD_OUT_TOPICS = ("atom-identifiers", "bltin-code-objects", "class", "del", "for", "import", "numeric-types",
                   "shifting", "try", "unary")
END_OF_TEXT = "<|endoftext|>"


def _topics() -> dict[str, str]:
    from pydoc_data import topics

    return dict(sorted(topics.topics.items()))


def held_out_topics() -> list[str]:
    """Names of the ``pydoc_data.topics`` entries the model never saw in training."""
    return list(HELD_OUT_TOPICS)


def training_topics() -> list[str]:
    held = set(held_out_topics())
    return [name for name in _topics() if name not in held]


def training_text() -> str:
    """The training documents joined by the end-of-text token (what the model learned from)."""
    texts = _topics()
    return "".join(END_OF_TEXT + texts[name] for name in training_topics())


def held_out_text(live: bool = False) -> str:
    """The held-out documents joined the same way: measure perplexity on this, never on training text.

    Read from the shipped ``held_out.txt`` (the same text on every Python); ``live=True`` rebuilds it
    from this Python's ``pydoc_data`` (what ``tools/make_language_model.py`` writes).
    """
    if not live:
        return _released_file("held_out.txt").read_text(encoding="utf-8")
    texts = _topics()
    return "".join(END_OF_TEXT + texts.get(name, "") for name in held_out_topics())


def held_out_ids(tokenizer, max_tokens: int | None = None) -> list[int]:
    """Token ids of :func:`held_out_text` (the first ``max_tokens``), without the tokenizer's
    warning that the text is longer than the model's context (perplexity cuts it into windows)."""
    ids = tokenizer(held_out_text(), verbose=False)["input_ids"]
    return ids if max_tokens is None else ids[:max_tokens]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _restore_hint() -> str:
    return f"`git checkout -- deploykit/assets/{LM_DIR.name}` restores it"


def _released_file(name: str) -> Path:
    """``LM_DIR / name`` after checking its released hash (only that file is read)."""
    path = LM_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"the course's language model is missing {name} in deploykit/assets/{LM_DIR.name}/: "
                                f"{_restore_hint()} (maintainers: `make reference-lm`)")
    if file_sha256(path) != LM_SHA256[name]:
        raise ValueError(f"deploykit/assets/{LM_DIR.name}/{name} is not the released file (SHA-256 differs): "
                         f"{_restore_hint()}")
    return path


def lm_path(check: bool = True) -> Path:
    """The model folder, after checking that every shipped file is there with its released hash."""
    if check:
        missing = [name for name in LM_SHA256 if not (LM_DIR / name).exists()]
        if missing:
            raise FileNotFoundError(f"the course's language model is missing {', '.join(missing)} in "
                                    f"deploykit/assets/{LM_DIR.name}/: {_restore_hint()} (maintainers: `make reference-lm`)")
        for name in LM_SHA256:
            _released_file(name)
    return LM_DIR


def weights_sha256() -> str:
    """SHA-256 of the shipped weights: the key of every cached export of this model."""
    return LM_SHA256["model.safetensors"]


def load_tokenizer(path: Path | None = None):
    """The model's tokenizer (``transformers.AutoTokenizer.from_pretrained`` on the local folder;
    ``path``: a folder :func:`lm_path` already checked)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path or lm_path(), local_files_only=True)


def load_language_model():
    """``(model, tokenizer)``: ``LlamaForCausalLM`` in float32 and eval mode, and its tokenizer."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar in the notebooks' outputs
    path = lm_path()
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype="float32")
    model.eval()
    return model, load_tokenizer(path)


def perplexity(logits_fn, token_ids, window: int = 128) -> float:
    """Perplexity of ``token_ids`` under ``logits_fn`` (ids of shape (1, T) -> logits (1, T, vocab)).

    The ids are cut into non-overlapping windows of ``window`` tokens; each window predicts its own
    tokens 2..T from the ones before (the first token of a window is not predicted). ``logits_fn``
    can wrap PyTorch, an ONNX Runtime session or anything else returning NumPy-convertible logits,
    so every runtime is measured on the same windows.
    """
    ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
    if ids.size < 2:
        raise ValueError("perplexity needs at least 2 tokens")
    total, count = 0.0, 0
    for start in range(0, ids.size - 1, window):
        chunk = ids[start:start + window]
        if chunk.size < 2:
            break
        logits = np.asarray(logits_fn(chunk[None, :]), dtype=np.float64)[0, :-1]
        logits = logits - logits.max(axis=-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        total -= log_probs[np.arange(chunk.size - 1), chunk[1:]].sum()
        count += chunk.size - 1
    return math.exp(total / count)
