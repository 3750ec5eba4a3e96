"""The course's language model in LiteRT: a cached export folder and a greedy loop over signature runners.

Lecture 14 shows the conversion itself: ``litert_torch.signature(...).signature(...).convert()`` over
the prefill and decode wrappers of ``litert_torch.generative.export_hf.core`` (or, where TensorFlow is
installed, ``export_hf.export`` on the local Hugging Face folder): a ``.tflite`` with ``prefill_<N>``
and ``decode`` signatures. This module only keeps what is not the lesson:

* :func:`export_once`: run the notebook's export function once into ``artifacts/lm/<name>_<hash>/``
  (a ``.partial`` folder renamed when complete, as lecture 13's ``export_once`` does for ``.onnx``),
  with the export's console output silenced and its wall time kept in ``export.seconds``.
* :class:`SignatureLM`: the generation loop LiteRT-LM runs, written against ``ai_edge_litert``'s
  signature runners. The graphs have **static shapes**: the cache is a fixed-size buffer
  (``kv_cache_k_<layer>``, ``kv_cache_v_<layer>``) that each call returns updated at the positions
  it is given (``input_pos``); a float ``mask`` (0 = may attend, -inf = may not) hides the cache
  slots that are still empty. The prefill signature takes exactly ``N`` tokens (a shorter prompt is
  padded; the padding's cache slots are masked, then overwritten by decode) and returns no logits,
  so the prompt's last token goes through ``decode``, as LiteRT-LM does.
"""
from __future__ import annotations

import contextlib
import io
import re
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from ._quiet import native_stderr_silenced
from .paths import artifact_path

#: The file :func:`export_once` writes the export's wall time into (seconds, text).
SECONDS_FILE = "export.seconds"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_PREFILL = re.compile(r"prefill_(\d+)")


def export_once(export, name: str, tag: str) -> Path:
    """``artifacts/lm/<name>_<tag>/``, made by ``export(folder)`` unless it exists already.

    ``export`` is a function of one argument, the folder to write into (it receives a ``.partial``
    folder that is renamed once ``export`` returns, so an interrupted export is never reused).
    ``tag`` is the weights' hash prefix (``lm.weights_sha256()[:12]``): new weights, new folder.
    The export's prints, progress bars, warnings and native log lines are silenced; its wall time
    is written to ``export.seconds`` inside the folder (read it with :func:`export_seconds`).
    """
    if not callable(export):
        raise TypeError(f"export_once expected a function export(folder), got {type(export).__name__}")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"export_once expected a plain folder name like 'litert_lm_fp32', got {name!r}")
    if not isinstance(tag, str) or not re.fullmatch(r"[0-9a-f]{6,64}", tag):
        raise ValueError(f"export_once expected tag = the weights' hash prefix (hex, e.g. lm.weights_sha256()[:12]), got {tag!r}")
    folder = artifact_path(f"lm/{name}_{tag}")
    if folder.is_dir() and (folder / SECONDS_FILE).is_file():
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    start = time.perf_counter()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()), native_stderr_silenced():
        warnings.simplefilter("ignore")
        export(partial)
    seconds = time.perf_counter() - start
    if not any(partial.iterdir()):
        raise RuntimeError(f"export({partial.name}) returned without writing any file")
    (partial / SECONDS_FILE).write_text(f"{seconds:.2f}")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def export_seconds(folder) -> float:
    """Wall time of the export that made ``folder`` (written by :func:`export_once`)."""
    path = Path(folder) / SECONDS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {SECONDS_FILE} in {Path(folder).name!r}: was it made by export_once?")
    return float(path.read_text())


class SignatureLM:
    """Greedy generation over a LiteRT model's ``prefill_<N>`` and ``decode`` signature runners.

    ``interpreter``: an ``ai_edge_litert`` ``Interpreter`` (``deploykit.litert.load_interpreter``).
    After construction: ``prefill_length`` (N), ``cache_length`` and ``vocab_size``.
    """

    def __init__(self, interpreter):
        if not hasattr(interpreter, "get_signature_list"):
            raise TypeError(f"SignatureLM expected a LiteRT Interpreter (see deploykit.litert.load_interpreter), "
                            f"got {type(interpreter).__name__}")
        signatures = interpreter.get_signature_list()
        prefills = sorted(name for name in signatures if _PREFILL.fullmatch(name))
        if "decode" not in signatures or not prefills:
            raise ValueError(f"expected a model with 'prefill_<N>' and 'decode' signatures (as export_hf writes), "
                             f"got {sorted(signatures)}")
        self.prefill_name = prefills[-1]
        self._prefill = interpreter.get_signature_runner(self.prefill_name)
        self._decode = interpreter.get_signature_runner("decode")
        inputs = self._decode.get_input_details()
        needed = {"tokens", "input_pos", "mask"}
        if not needed <= set(inputs) or not any(n.startswith("kv_cache_") for n in inputs):
            raise ValueError(f"decode signature expected inputs tokens, input_pos, mask and kv_cache_*, got {sorted(inputs)}")
        self.prefill_length = int(self._prefill.get_input_details()["tokens"]["shape"][-1])
        self.cache_length = int(inputs["mask"]["shape"][-1])
        self.vocab_size = int(self._decode.get_output_details()["logits"]["shape"][-1])
        self._cache_names = sorted(n for n in inputs if n.startswith("kv_cache_"))
        self._empty = {n: np.zeros(inputs[n]["shape"], inputs[n]["dtype"]) for n in self._cache_names}
        self.cache = dict(self._empty)
        self.position = 0

    def _mask(self, positions: np.ndarray) -> np.ndarray:
        # row i may attend to cache slots 0..positions[i]: causal, and blind to slots not written yet
        allowed = np.arange(self.cache_length)[None, :] <= positions[:, None]
        return np.where(allowed, 0.0, -np.inf).astype(np.float32)[None, None]

    def _check_token(self, token) -> int:
        if isinstance(token, (bool, np.bool_)) or not isinstance(token, (int, np.integer)) \
                or not 0 <= token < self.vocab_size:
            raise ValueError(f"expected a token id in [0, {self.vocab_size}), got {token!r}")
        return int(token)

    def start(self, prompt_ids) -> np.ndarray:
        """Empty the cache, prefill the prompt, return the logits (vocab_size,) of the next token."""
        ids = np.asarray(prompt_ids).reshape(-1) if not hasattr(prompt_ids, "numpy") else prompt_ids.numpy().reshape(-1)
        if ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"expected a non-empty sequence of token ids (ints), got {ids.dtype} of size {ids.size}")
        if ids.size > self.prefill_length + 1:
            raise ValueError(f"prompt of {ids.size} tokens does not fit: this model's prefill signature takes at most "
                             f"{self.prefill_length} (+1 through decode); export with longer prefill_lengths")
        for token in ids:
            self._check_token(token)
        self.cache, self.position = dict(self._empty), 0
        head = ids[:-1]
        if head.size:
            n = self.prefill_length
            tokens = np.zeros((1, n), np.int32)
            tokens[0, :head.size] = head
            positions = np.arange(n, dtype=np.int32)
            out = self._prefill(tokens=tokens, input_pos=positions, mask=self._mask(positions), **self.cache)
            self.cache = {name: out[name] for name in self._cache_names}
            self.position = head.size
        return self.step(int(ids[-1]))

    def step(self, token: int, position: int | None = None) -> np.ndarray:
        """Feed one token at ``position`` (default: the next free slot), return the next token's logits.

        Passing ``position`` explicitly re-runs the same slot (a benchmark repeats one step this way).
        """
        token = self._check_token(token)
        at = self.position if position is None else position
        if not isinstance(at, (int, np.integer)) or not 0 <= at < self.cache_length:
            raise ValueError(f"the cache holds {self.cache_length} positions; position {at!r} does not fit "
                             f"(export with a longer cache_length)")
        positions = np.array([at], np.int32)
        out = self._decode(tokens=np.array([[token]], np.int32), input_pos=positions, mask=self._mask(positions),
                           **self.cache)
        self.cache = {name: out[name] for name in self._cache_names}
        if position is None:
            self.position += 1
        return out["logits"].reshape(-1)

    def generate(self, prompt_ids, max_new_tokens: int, eos_token_id: int | None = None) -> list[int]:
        """Greedy: up to ``max_new_tokens`` token ids after the prompt (stops after ``eos_token_id``)."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens expected a positive int, got {max_new_tokens!r}")
        logits = self.start(prompt_ids)
        tokens: list[int] = []
        while True:
            tokens.append(int(np.argmax(logits)))
            if tokens[-1] == eos_token_id or len(tokens) == max_new_tokens:
                return tokens
            logits = self.step(tokens[-1])


__all__ = ["SECONDS_FILE", "SignatureLM", "export_once", "export_seconds"]
