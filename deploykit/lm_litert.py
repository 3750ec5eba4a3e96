"""The course's language model in LiteRT: a greedy loop over a converted model's signature runners.

Lecture 14 shows the conversion itself: ``litert_torch.signature(...).signature(...).convert()`` over
the prefill and decode wrappers of ``litert_torch.generative.export_hf.core`` (or, where TensorFlow is
installed, ``export_hf.export`` on the local Hugging Face folder): a ``.tflite`` with ``prefill_<N>``
and ``decode`` signatures, cached by ``deploykit.lm_runtimes.build_once``. This module keeps the loop
that is not the lesson:

* :class:`SignatureLM`: the generation loop LiteRT-LM runs, written against ``ai_edge_litert``'s
  signature runners. The graphs have **static shapes**: the cache is a fixed-size buffer
  (``kv_cache_k_<layer>``, ``kv_cache_v_<layer>``) that each call returns updated at the positions
  it is given (``input_pos``); a float ``mask`` (0 = may attend, -inf = may not) hides the cache
  slots that are still empty. The prefill signature takes exactly ``N`` tokens (a shorter prompt is
  padded; the padding's cache slots are masked, then overwritten by decode) and returns no logits,
  so the prompt's last token goes through ``decode``, as LiteRT-LM does.
* :func:`litert_lm_benchmark`: LiteRT-LM's **own** benchmark of a ``.litertlm`` (``litert_lm.Benchmark``,
  the C++ engine timing its own prefill and decode), the figures to quote for LiteRT-LM, rather than
  :class:`SignatureLM`'s Python loop over the same graphs;
* :func:`convert_model`, :func:`quantize_model`, :func:`bundle_litertlm`: the conversion lecture 14
  prints and runs as a command, in a process of its own (the converter's memory is returned to the
  system when it ends, and the notebook's kernel never imports ``litert_torch``)::

      python -m deploykit.lm_litert OUT_FOLDER [--prefill 32] [--cache 256]        # float32
      python -m deploykit.lm_litert OUT_FOLDER --int8-from FLOAT32_FOLDER/model.tflite
"""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._cli import positive_tokens
from ._quiet import converter_output_silenced

_PREFILL = re.compile(r"prefill_(\d+)")


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


__all__ = ["LiteRTLMBenchmark", "SignatureLM", "bundle_litertlm", "convert_model", "litert_lm_benchmark",
           "quantize_model"]


@dataclass(frozen=True)
class LiteRTLMBenchmark:
    """LiteRT-LM's benchmark figures (``litert_lm.BenchmarkInfo``), as the engine reports them.

    ``init_s``: creating the engine and the session (loading the ``.litertlm``, the tokenizer, the XNNPACK
    graphs); ``ttft_s``: time to first token as the engine computes it, the prefill turn's duration plus
    one mean decode step (``BenchmarkInfo::GetTimeToFirstToken``, ``runtime/engine/io_types.cc``);
    ``prefill_tokens_per_s`` / ``decode_tokens_per_s``: the rates of the prefill and decode turns. With
    ``repeats > 1`` each figure is the median over the runs (a fresh engine each), ``runs`` holds them all.
    """

    threads: int
    init_s: float
    ttft_s: float
    prefill_tokens: int
    prefill_tokens_per_s: float
    decode_tokens: int
    decode_tokens_per_s: float
    runs: tuple = ()

    @property
    def decode_ms_per_token(self) -> float:
        return 1e3 / self.decode_tokens_per_s if self.decode_tokens_per_s > 0 else float("inf")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} expected a positive int, got {value!r}")
    return int(value)


def _benchmark_once(litert_lm, path: Path, prompt_tokens: int, decode_tokens: int, threads: int,
                    max_num_tokens: int | None) -> LiteRTLMBenchmark:
    from ._quiet import native_stderr_captured

    benchmark = litert_lm.Benchmark(str(path), backend=litert_lm.Backend.CPU(thread_count=threads),
                                    prefill_tokens=prompt_tokens, decode_tokens=decode_tokens,
                                    max_num_tokens=max_num_tokens, cache_dir=":nocache")
    with native_stderr_captured() as log:
        try:
            info, failure = benchmark.run(), None
        except RuntimeError as error:
            info, failure = None, error
    if failure is not None:
        last = [line for line in log.text.splitlines() if line.strip()][-1:]
        raise RuntimeError(f"LiteRT-LM's benchmark failed on {path.name}: {failure}"
                           + (f"; its log ends: {last[0]}" if last else "")) from failure
    # The engine does not raise when the cache is too small: it prefills nothing, or stops decoding early.
    if info.last_prefill_token_count != prompt_tokens or info.last_decode_token_count != decode_tokens:
        raise ValueError(f"LiteRT-LM prefilled {info.last_prefill_token_count} of {prompt_tokens} tokens and "
                         f"decoded {info.last_decode_token_count} of {decode_tokens}: the prompt and the decoded "
                         f"tokens must fit the KV cache ({max_num_tokens or 'the bundle'}'s max_num_tokens)")
    return LiteRTLMBenchmark(threads, float(info.init_time_in_second), float(info.time_to_first_token_in_second),
                             int(info.last_prefill_token_count), float(info.last_prefill_tokens_per_second),
                             int(info.last_decode_token_count), float(info.last_decode_tokens_per_second))


def litert_lm_benchmark(litertlm_path, prompt_tokens: int = 32, decode_tokens: int = 32, threads: int = 1, *,
                        repeats: int = 1, max_num_tokens: int | None = None) -> LiteRTLMBenchmark:
    """LiteRT-LM's own benchmark of a ``.litertlm`` bundle on the CPU: ``litert_lm.Benchmark(...).run()``.

    The engine runs in benchmark mode (``litert_lm_engine_settings_enable_benchmark``): it prefills a
    prompt of ``prompt_tokens`` tokens (it makes them up; the benchmark's text is not used), then decodes
    exactly ``decode_tokens`` tokens, timing both in C++. A prompt longer than the model's prefill
    signature is prefilled in chunks by the engine (``GetOptimizedPrefillWorkGroups``). ``threads``: the
    CPU backend's ``thread_count``. ``repeats``: runs, each with a fresh engine; the figures are their
    medians. ``max_num_tokens``: the KV cache positions (default: the bundle's ``LlmMetadata``); the prompt
    plus the decoded tokens must fit (checked after the run too: the engine itself does not raise). No
    compiled-weights cache file is written next to the model (``cache_dir=":nocache"``). The engine's log
    lines are kept off the console; a failure raises with the last one.
    """
    path = Path(litertlm_path)
    if path.suffix != ".litertlm" or not path.is_file():
        raise FileNotFoundError(f"expected a LiteRT-LM bundle (.litertlm file, see bundle_litertlm), "
                                f"got {litertlm_path!s}" + ("" if path.is_file() else " (no such file)"))
    prompt_tokens = _positive_int("prompt_tokens", prompt_tokens)
    decode_tokens = _positive_int("decode_tokens", decode_tokens)
    threads, repeats = _positive_int("threads", threads), _positive_int("repeats", repeats)
    if max_num_tokens is not None:
        max_num_tokens = _positive_int("max_num_tokens", max_num_tokens)
        if prompt_tokens + decode_tokens > max_num_tokens:
            raise ValueError(f"prompt_tokens + decode_tokens ({prompt_tokens} + {decode_tokens}) exceed "
                             f"max_num_tokens ({max_num_tokens}): the KV cache cannot hold them")
    import litert_lm

    runs = tuple(_benchmark_once(litert_lm, path, prompt_tokens, decode_tokens, threads, max_num_tokens)
                 for _ in range(repeats))
    med = {name: float(np.median([getattr(r, name) for r in runs]))
           for name in ("init_s", "ttft_s", "prefill_tokens_per_s", "decode_tokens_per_s")}
    return LiteRTLMBenchmark(threads, med["init_s"], med["ttft_s"], prompt_tokens, med["prefill_tokens_per_s"],
                             decode_tokens, med["decode_tokens_per_s"], runs)


def convert_model(folder, *, prefill: int = 32, cache: int = 256) -> Path:
    """Lecture 13's model to ``folder/model.tflite``: a ``prefill_<prefill>`` and a ``decode`` signature,
    the KV cache a buffer of ``cache`` positions that every call takes and returns."""
    import litert_torch

    from .language_model import load_language_model, lm_path

    with contextlib.redirect_stdout(io.StringIO()):  # transformers prints docstring-lint lines as model files load
        from litert_torch.generative.export_hf.core import exportable_module, exportable_module_config
    model, _ = load_language_model()
    model.set_attn_implementation("lrt_transposed_attention")  # registered by export_hf.core: writes the cache in place
    config = exportable_module_config.ExportableModuleConfig(
        model=str(lm_path()), prefill_lengths=[prefill], cache_length=cache, k_ts_idx=2, v_ts_idx=3)
    prefill_module = exportable_module.LiteRTExportableModuleForDecoderOnlyLMPrefill(model, config)
    decode_module = exportable_module.LiteRTExportableModuleForDecoderOnlyLMGenerate(model, config)
    (prefill_name, (prefill_inputs, _)), = prefill_module.get_sample_inputs(model.config).items()
    (decode_name, (decode_inputs, _)), = decode_module.get_sample_inputs(model.config).items()
    (litert_torch.signature(prefill_name, prefill_module.eval(), sample_kwargs=prefill_inputs)
     .signature(decode_name, decode_module.eval(), sample_kwargs=decode_inputs)
     .convert(strict_export=False)
     .export(str(Path(folder) / "model.tflite")))
    return Path(folder) / "model.tflite"


def quantize_model(source, folder) -> Path:
    """Dynamic-range int8 (lecture 08's ``dynamic_wi8_afp32``, ``export_hf``'s default) of a float
    ``.tflite`` into ``folder/model.tflite``."""
    from ai_edge_quantizer import quantizer, recipe

    qt = quantizer.Quantizer(str(source))
    qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    qt.quantize(enable_progress_report=False).export_model(str(Path(folder) / "model.tflite"))
    return Path(folder) / "model.tflite"


def bundle_litertlm(folder, *, cache: int = 256) -> Path:
    """``folder/model.litertlm``: the ``.tflite``, the Hugging Face tokenizer and ``LlmMetadata`` (the stop
    token, the maximum number of tokens) in the one file LiteRT-LM's ``Engine`` loads."""
    from litert_lm_builder import litertlm_builder
    from litert_lm_builder.runtime.proto import llm_metadata_pb2

    from .language_model import lm_path, load_tokenizer

    folder = Path(folder)
    metadata = llm_metadata_pb2.LlmMetadata(max_num_tokens=cache)
    metadata.stop_tokens.add().token_ids.ids.append(load_tokenizer().eos_token_id)
    metadata.llm_model_type.generic_model.SetInParent()
    (folder / "llm_metadata.pb").write_bytes(metadata.SerializeToString())
    builder = litertlm_builder.LitertLmFileBuilder()
    builder.add_system_metadata(litertlm_builder.Metadata(key="Authors", value="model-deployment-course",
                                                          dtype=litertlm_builder.DType.STRING))
    builder.add_llm_metadata(str(folder / "llm_metadata.pb"))
    builder.add_hf_tokenizer(str(lm_path() / "tokenizer.json"))
    builder.add_tflite_model(str(folder / "model.tflite"), litertlm_builder.TfLiteModelType.PREFILL_DECODE)
    with open(folder / "model.litertlm", "wb") as file:
        builder.build(file)
    return folder / "model.litertlm"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deploykit.lm_litert",
                                     description="Convert the course's language model to LiteRT (.tflite + .litertlm).")
    parser.add_argument("out", type=Path, help="the folder to create (it must not exist)")
    parser.add_argument("--int8-from", type=Path, metavar="TFLITE",
                        help="quantise this float32 model.tflite (dynamic-range int8) instead of converting")
    parser.add_argument("--prefill", type=positive_tokens, default=32, help="tokens of the prefill signature")
    parser.add_argument("--cache", type=positive_tokens, default=256, help="KV cache positions")
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} exists already: give a new folder")
    if not args.out.parent.is_dir():
        parser.error(f"the folder {args.out.parent} does not exist")
    if args.int8_from is not None and not args.int8_from.is_file():
        parser.error(f"--int8-from: no file {args.int8_from} (convert the float32 model first)")
    if args.prefill > args.cache:
        parser.error(f"--prefill ({args.prefill}) cannot exceed --cache ({args.cache})")
    args.out.mkdir()
    # The converter's progress bars, warnings and native log lines are not the lesson; its errors still reach stderr.
    with converter_output_silenced():
        if args.int8_from is None:
            convert_model(args.out, prefill=args.prefill, cache=args.cache)
        else:
            quantize_model(args.int8_from, args.out)
        bundle_litertlm(args.out, cache=args.cache)


if __name__ == "__main__":
    main(sys.argv[1:])
