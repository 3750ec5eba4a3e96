"""The course's language model: a small Llama-architecture model shipped inside this package.

``deploykit/assets/pydoc_lm/`` holds a decoder-only model in the Hugging Face ``transformers`` Llama
architecture (4 layers, hidden 256, 4 query heads and 2 key/value heads: grouped-query attention)
with a byte-level BPE vocabulary, trained on Python's own documentation (``pydoc_data.topics`` of
Python 3.11). A few topics are held out, **at the level of the text**: the documentation repeats whole
sections across topics (``compound`` holds the text of ``for``, ``try``, ``class``...), so every
training paragraph that shares a run of :data:`NGRAM_WORDS` words with a held-out topic is dropped
from training (:func:`split_documents`). :func:`held_out_text` is the text perplexity is measured on;
:func:`training_text` is what the model learned from. Both are shipped (``pydoc_data`` differs between
Pythons; a split must not), and like the digits model the weights are shipped rather than trained per
machine (float32 training is not bit-identical across CPUs), every file's SHA-256 checked on load.

Loading never touches a hub: the folder is local and ``HF_HUB_OFFLINE`` is set before
``transformers`` is imported. ``tools/make_language_model.py`` (``make reference-lm``) retrains it.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
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
    "held_out.txt": "4c83e961bcb49e625a21b079bcdd69dc8234a04f9a1577570d21bb4fa8973033",
    "model.safetensors": "674b9bf6017a9d1e47f9e74661d274a5061c4e5a82fbe05a34b2bdc636ed1a70",
    "tokenizer.json": "f0af2e7e359c503143d002625f2798a01b2772bfdf03df002d1973d80cab2b85",
    "tokenizer_config.json": "cb977676eb23e240fde1fda034c9ab08ce817eed3f73aef7954aacd1a54b47b5",
    "training.txt": "f9f190d82bcae6e2fa2c1a7bc51df86df03597fcbe90d122029ad259f7616b2a",
}

#: The ``pydoc_data.topics`` entries held out (every 8th name of Python 3.11's sorted list, from the 4th).
HELD_OUT_TOPICS = ("atom-identifiers", "bltin-code-objects", "class", "del", "for", "import", "numeric-types",
                   "shifting", "try", "unary")
END_OF_TEXT = "<|endoftext|>"
#: A training paragraph sharing a run of this many words (split on white space) with the held-out text
#: is dropped from training: no held-out passage of this length occurs in the training text.
NGRAM_WORDS = 12


def _topics() -> dict[str, str]:
    from pydoc_data import topics

    return dict(sorted(topics.topics.items()))


def held_out_topics() -> list[str]:
    """Names of the ``pydoc_data.topics`` entries whose text is held out."""
    return list(HELD_OUT_TOPICS)


def word_ngrams(text: str, n: int = NGRAM_WORDS) -> set[tuple[str, ...]]:
    """Every run of ``n`` consecutive words of ``text`` (words: split on white space; the end-of-text
    token between documents counts as a space)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of words, got {n!r}")
    words = text.replace(END_OF_TEXT, " ").split()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def shared_ngram_fraction(text: str, other: str, n: int = NGRAM_WORDS) -> float:
    """The fraction of ``text``'s ``n``-word runs that occur verbatim in ``other`` (0.0: none do)."""
    grams = word_ngrams(text, n)
    if not grams:
        raise ValueError(f"the text has fewer than {n} words: nothing to compare")
    return len(grams & word_ngrams(other, n)) / len(grams)


def paragraphs(text: str) -> list[str]:
    """``text`` cut at blank lines (the unit :func:`split_documents` keeps or drops)."""
    return [part for part in re.split(r"\n[ \t]*\n", text) if part.strip()]


def split_documents(topics: dict[str, str], held_out: tuple[str, ...] | list[str] = HELD_OUT_TOPICS,
                    n: int = NGRAM_WORDS) -> tuple[dict[str, str], dict[str, str]]:
    """``(training, held_out)`` documents by topic name, held out at the level of the text.

    First, a paragraph of any other topic that shares a run of ``n`` words with the held-out topics is
    dropped (the documentation repeats sections: ``compound`` contains ``for``), and so is a topic left
    empty: what remains is the training text. Then a held-out paragraph that still shares a run with the
    joined training text (a run across two paragraphs, each clean on its own) is dropped from the
    held-out side, until none does.
    """
    missing = [name for name in held_out if name not in topics]
    if missing:
        raise ValueError(f"held-out topics not among the documents: {', '.join(missing)}")
    held = {name: topics[name] for name in held_out}
    held_grams = set().union(*(word_ngrams(text, n) for text in held.values()))
    training = {}
    for name, text in topics.items():
        if name in held:
            continue
        kept = [part for part in paragraphs(text) if not word_ngrams(part, n) & held_grams]
        if kept:
            training[name] = "\n\n".join(kept)
    training_grams = word_ngrams(join_documents(training), n)
    while word_ngrams(join_documents(held), n) & training_grams:
        before = dict(held)
        for name, text in held.items():
            parts = paragraphs(text)
            joined = [" ".join(parts[max(0, i - 1):i + 2]) for i in range(len(parts))]  # with its neighbours
            kept = [part for part, around in zip(parts, joined)
                    if not (word_ngrams(part, n) & training_grams) and not (word_ngrams(around, n) & training_grams)]
            held[name] = "\n\n".join(kept)
        if held == before:  # what still matches runs across two held-out topics: no paragraph to drop
            raise ValueError(f"a run of {n} words across two held-out topics occurs in the training text: "
                             "hold out other topics, or a different n")
    return training, held


def join_documents(documents: dict[str, str]) -> str:
    """Documents joined the way the model saw them: each one after an end-of-text token."""
    return "".join(END_OF_TEXT + text for text in documents.values())


def training_text(live: bool = False) -> str:
    """What the model learned from: the training documents after :func:`split_documents`.

    Read from the shipped ``training.txt`` (the same text on every Python); ``live=True`` rebuilds it
    from this Python's ``pydoc_data`` (what ``tools/make_language_model.py`` writes).
    """
    if not live:
        return _released_file("training.txt").read_text(encoding="utf-8")
    return join_documents(split_documents(_topics())[0])


def held_out_text(live: bool = False) -> str:
    """The held-out documents joined the same way: measure perplexity on this, never on training text.

    Read from the shipped ``held_out.txt``; ``live=True`` rebuilds it from this Python's ``pydoc_data``.
    """
    if not live:
        return _released_file("held_out.txt").read_text(encoding="utf-8")
    return join_documents(split_documents(_topics())[1])


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


# --- What a decode step reads (lectures 13 and 14, lab 10) -------------------------------------------

#: An assumed 1-billion-parameter model for what phones run: Llama 3.2 1B's published configuration
#: (parameters, layers, key/value heads, head size). Not measured here; lectures 13 and 14 say so.
LLAMA_1B_ASSUMED = {"params": 1.24e9, "layers": 16, "kv_heads": 8, "head_dim": 64}


def _positive(name: str, value, integer: bool = True):
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        raise ValueError(f"{name} expected a positive {'whole ' if integer else ''}number, got {value!r}")
    return value


def kv_cache_bytes(layers: int, kv_heads: int, head_dim: int, tokens: int, bytes_per_value: int,
                   batch: int = 1) -> int:
    """Bytes of the key/value cache after ``tokens`` tokens: 2 (keys and values) x layers x key/value
    heads x head size x bytes per value, per token and sequence. A decode step reads all of it."""
    for name, value in dict(layers=layers, kv_heads=kv_heads, head_dim=head_dim, bytes_per_value=bytes_per_value,
                            batch=batch).items():
        _positive(name, value)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"tokens expected a whole number >= 0, got {tokens!r}")
    return 2 * layers * kv_heads * head_dim * bytes_per_value * tokens * batch


def weight_only_bytes(params: float, bits: int = 4, block_size: int = 32, scale_bytes: int = 2) -> float:
    """Bytes of ``params`` weights stored as ``bits``-bit integers with one ``scale_bytes`` scale per block
    of ``block_size`` (symmetric: no zero points). ``scale_bytes``: 2 for a float16 model's scales (what
    phones run), 4 where the model is float32 (``MatMulNBits`` keeps its scales in the model's type)."""
    _positive("params", params, integer=False)
    _positive("bits", bits), _positive("block_size", block_size), _positive("scale_bytes", scale_bytes)
    return params * (bits / 8 + scale_bytes / block_size)


def decode_ceiling(bandwidth_gbs: float, weight_bytes: float, cache_bytes: float = 0) -> float:
    """Tokens/s a decode step cannot beat when every byte it reads comes from memory: bandwidth / (the
    weights it reads + the key/value cache it reads at this context length)."""
    _positive("bandwidth_gbs", bandwidth_gbs, integer=False), _positive("weight_bytes", weight_bytes, integer=False)
    if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, (int, float)) or cache_bytes < 0:
        raise ValueError(f"cache_bytes expected a number >= 0, got {cache_bytes!r}")
    return bandwidth_gbs * 1e9 / (weight_bytes + cache_bytes)
