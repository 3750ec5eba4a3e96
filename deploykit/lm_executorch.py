"""The course's language model as an ExecuTorch program (``.pte``), exported in a process of its own.

Lecture 14 prints :func:`export_program` (the lesson: a static-cache wrapper, ``torch.export``,
``to_edge_transform_and_lower`` to XNNPACK) and runs this module as a command, the way it runs
ONNX Runtime GenAI's model builder::

    python -m deploykit.lm_executorch OUT.pte [--quantize 8da4w] [--max-cache 128] [--max-prompt 64]

Why a command: lowering a program takes about a gigabyte and tens of seconds of ``torch.export``
machinery that a notebook kernel would keep (freed Python memory is rarely handed back). In a child
process it is returned to the system when the export ends, and the notebook's kernel never imports
``executorch.exir`` or ``torchao``.

ExecuTorch's own LLM runner (C++ ``TextLLMRunner``: ``llama_main``, Android's ``LlmModule``, and the
Python binding ``executorch.extension.llm.runner.TextLLMRunner``) reads the model's limits from
**constant methods** of the program, methods that take nothing and return one value: it refuses a
``.pte`` without ``get_max_seq_len`` ("Required metadata method get_max_seq_len not found in model",
``extension/llm/runner/llm_runner_helper.cpp``, ``get_llm_metadata``). ``transformers``'
``TorchExportableModuleForDecoderOnlyLM`` gives the ``forward`` that runner calls (``(tokens,
cache_position) -> logits``) but no such methods; ExecuTorch's own ``export_llama`` and
optimum-executorch add them. :func:`runner_metadata` is that set for this model, and
:func:`export_program` writes it with ``to_edge_transform_and_lower(..., constant_methods=...)``.
:func:`read_metadata` reads it back; :func:`run_with_llm_runner` runs a ``.pte`` through the runner.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ._cli import positive_tokens

#: The quantisations :func:`export_program` knows: None (float32) or torchao's ``8da4w``.
QUANTIZATIONS = (None, "8da4w")

#: The constant methods ExecuTorch's LLM runner reads (``extension/llm/runner/constants.h``): only
#: ``get_max_seq_len`` is required; the others have defaults there (max_seq_len 128, max_context_len
#: 128 or max_seq_len, use_kv_cache true, enable_dynamic_shape false, the tokenizer's EOS), which are
#: wrong for this program, so all are written. ``get_n_layers`` is informational (export_llama writes it).
RUNNER_METHODS = ("get_max_seq_len", "get_max_context_len", "get_vocab_size", "get_bos_id", "get_eos_ids",
                  "get_n_layers", "use_kv_cache", "use_sdpa_with_kv_cache", "enable_dynamic_shape")


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} expected a positive int, got {value!r}")
    return value


def runner_metadata(config, *, max_cache: int = 128, max_prompt: int = 64) -> dict:
    """The constant methods for ExecuTorch's LLM runner, for a program exported by :func:`export_program`.

    ``config``: the model's ``transformers`` config (``vocab_size``, ``bos_token_id``, ``eos_token_id``,
    ``num_hidden_layers``). What the runner does with each (its C++ source, executorch 1.5):

    * ``get_max_seq_len`` = ``max_prompt``: the most tokens one ``forward`` call takes; ``TextPrefiller``
      cuts a longer prompt into chunks of this many tokens;
    * ``get_max_context_len`` = ``max_cache``: the static KV cache's positions; the runner refuses a
      prompt of that many tokens. When ``get_max_seq_len`` is smaller it takes the cache for a
      sliding-window ring buffer and lets prompt + new tokens run past it (``text_llm_runner.cpp``,
      ``effective_pos``), which this static cache cannot do: an app caps ``max_new_tokens`` itself
      (:func:`run_with_llm_runner` does), or exports with ``max_prompt == max_cache``;
    * ``enable_dynamic_shape`` = True: the prompt goes through ``forward`` in one call (the export's
      prompt length is dynamic); False would make the runner prefill one token per call;
    * ``use_kv_cache`` = True: ``forward`` takes ``(tokens, cache_position)``, the cache is inside;
    * ``use_sdpa_with_kv_cache`` = False: the attention is ``transformers``' own, not ExecuTorch's custom op;
    * ``get_eos_ids``: the tokens that end generation; ``get_bos_id``, ``get_vocab_size``: the model's.
    """
    max_cache, max_prompt = _positive("max_cache", max_cache), _positive("max_prompt", max_prompt)
    if max_prompt > max_cache:
        raise ValueError(f"max_prompt ({max_prompt}) cannot exceed max_cache ({max_cache})")
    needed = ("vocab_size", "eos_token_id", "num_hidden_layers")
    missing = [name for name in needed if getattr(config, name, None) is None]
    if missing:
        raise ValueError(f"runner_metadata expected a transformers config with {', '.join(missing)}, "
                         f"got {type(config).__name__}")
    eos = config.eos_token_id if isinstance(config.eos_token_id, (list, tuple)) else [config.eos_token_id]
    bos = config.bos_token_id if getattr(config, "bos_token_id", None) is not None else eos[0]
    return {"get_max_seq_len": max_prompt, "get_max_context_len": max_cache, "get_vocab_size": int(config.vocab_size),
            "get_bos_id": int(bos), "get_eos_ids": [int(e) for e in eos], "get_n_layers": int(config.num_hidden_layers),
            "use_kv_cache": True, "use_sdpa_with_kv_cache": False, "enable_dynamic_shape": True}


def export_program(out, *, quantize: str | None = None, max_cache: int = 128, max_prompt: int = 64) -> Path:
    """Export lecture 13's model to ``out`` (a ``.pte``): a static KV cache of ``max_cache`` positions
    inside the program, a prompt of 1 to ``max_prompt`` tokens per call, lowered to XNNPACK, with the
    constant methods ExecuTorch's LLM runner reads (:func:`runner_metadata`)."""
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize expected one of {QUANTIZATIONS}, got {quantize!r}")
    if _positive("max_prompt", max_prompt) > _positive("max_cache", max_cache):
        raise ValueError(f"max_prompt ({max_prompt}) cannot exceed max_cache ({max_cache})")
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

    from .language_model import load_language_model

    model, _ = load_language_model()
    metadata = runner_metadata(model.config, max_cache=max_cache, max_prompt=max_prompt)
    model.generation_config.cache_implementation = "static"  # the cache is a buffer of max_cache positions
    model.generation_config.use_cache = True
    if quantize == "8da4w":  # before export, in PyTorch: int4 weights in groups of 32, int8 activations on the fly
        from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
        from torchao.quantization.granularity import PerGroup

        quantize_(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(32)))
    exportable = TorchExportableModuleForDecoderOnlyLM(model, batch_size=1, max_cache_len=max_cache)
    ids = torch.arange(4).unsqueeze(0)  # an example prompt; its length is dynamic below
    length = torch.export.Dim("length", min=1, max=max_prompt)
    program = exportable.export(input_ids=ids, cache_position=torch.arange(ids.shape[1]),
                                dynamic_shapes={"input_ids": {1: length}, "cache_position": {0: length}})
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                          constant_methods=metadata).to_executorch()
    Path(out).write_bytes(lowered.buffer)
    return Path(out)


def _require_pte(pte_path) -> Path:
    path = Path(pte_path)
    if path.suffix != ".pte" or not path.is_file():
        raise FileNotFoundError(f"expected an ExecuTorch program (.pte file), got {pte_path!s}"
                                + ("" if path.is_file() else " (no such file)"))
    return path


def read_metadata(pte_path) -> dict:
    """The :data:`RUNNER_METHODS` a ``.pte`` has, each run as ExecuTorch's runner runs it (no inputs):
    ``{name: value}`` (bool, int, or a list of ints for ``get_eos_ids``). A method it lacks is absent."""
    import contextlib
    import io

    from executorch.runtime import Runtime

    with contextlib.redirect_stderr(io.StringIO()):  # the runtime logs its CPU probe through sys.stderr
        program = Runtime.get().load_program(str(_require_pte(pte_path)))
    values = {}
    for name in RUNNER_METHODS:
        if name in program.method_names:
            out = [v.item() if hasattr(v, "item") else v for v in program.load_method(name).execute([])]
            values[name] = out if name == "get_eos_ids" else out[0]
    return values


@dataclass
class RunnerResult:
    """What :func:`run_with_llm_runner` returns: the generated ``text``, one ``pieces`` entry per token
    (the runner's token callback), their ``tokens`` ids, and the runner's own ``stats``
    (``executorch.extension.llm.runner.Stats.to_json_string()`` as a dict: millisecond timestamps,
    token counts and the two rates its ``print_report`` logs)."""

    text: str
    pieces: list
    tokens: list
    stats: dict
    #: The whole load, ms: the constructor (the program, its metadata methods and the tokenizer, timed here) plus
    #: ``load()`` of the ``forward`` method and XNNPACK's set-up, as the first ``generate`` reported it (``model_load_*``).
    load_ms: float
    #: The prompt's ids by the runner's own C++ tokenizer (``pytorch_tokenizers``' ``HFTokenizer``).
    prompt_tokens: list

    def _ms(self, end: str, start: str) -> float:
        return float(self.stats[end] - self.stats[start])

    @property
    def ttft_ms(self) -> float:
        """Time to first token as the runner reports it: prompt encoding, prefill, first sample."""
        return self._ms("first_token_ms", "inference_start_ms")

    @property
    def prefill_tokens_per_s(self) -> float:
        """Prompt tokens / prompt evaluation time (``prefill_token_per_sec`` of the runner's stats)."""
        if "prefill_token_per_sec" in self.stats:
            return float(self.stats["prefill_token_per_sec"])
        ms = self._ms("prompt_eval_end_ms", "inference_start_ms")
        return self.stats["prompt_tokens"] * 1e3 / ms if ms > 0 else float("inf")

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens generated after the first / their time (``decode_token_per_sec`` of the runner's stats;
        the runner counts the first token, sampled from the prefill's logits, as the prompt's)."""
        if "decode_token_per_sec" in self.stats:
            return float(self.stats["decode_token_per_sec"])
        ms = self._ms("inference_end_ms", "prompt_eval_end_ms")
        return self.stats["generated_tokens"] * 1e3 / ms if ms > 0 else float("inf")


def _byte_level_ids(tokenizer_path: Path, pieces) -> list:
    """The id of each piece of text in a byte-level BPE ``tokenizer.json`` (GPT-2's byte-to-character
    table), or None for a piece that is not one vocabulary entry. The runner's token callback gives one
    piece per token, the token decoded to text, so this recovers the ids it chose."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]  # bytes that stand for themselves
    extra = iter(range(256, 512))
    byte_char = {b: chr(b) if b in keep else chr(next(extra)) for b in range(256)}
    spec = json.loads(tokenizer_path.read_text(encoding="utf-8"))
    special = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    vocab = spec["model"]["vocab"]
    return [special[p] if p in special else vocab.get("".join(byte_char[b] for b in p.encode("utf-8"))) for p in pieces]


def run_with_llm_runner(pte_path, tokenizer_path, prompt: str, n_new: int, *, threads: int = 1,
                        warmup: int = 0) -> RunnerResult:
    """Greedy generation by ExecuTorch's own LLM runner, the C++ ``TextLLMRunner`` that Android's
    ``LlmModule`` and ``llama_main`` use, through its Python binding (``executorch.extension.llm.runner``).

    The runner reads the program's constant methods (:func:`read_metadata`), tokenises ``prompt`` with
    its own C++ tokenizer (a Hugging Face ``tokenizer.json`` loads as ``HFTokenizer``), prefills (in
    chunks of ``get_max_seq_len`` tokens if the prompt is longer), and samples up to ``n_new`` tokens at
    temperature 0 (argmax), stopping after an EOS id. ``n_new`` is capped so that the prompt and the new
    tokens fit the cache (``get_max_context_len``), which the runner does not do itself for a program
    whose ``get_max_seq_len`` is smaller (see :func:`runner_metadata`). ``warmup`` untimed runs
    of the same prompt come first (``reset()`` between runs empties the runner's position). Its console
    output (the text echoed to stdout, its report on stderr) is silenced; the text comes from its token
    callback, the figures from its stats callback.
    """
    tokenizer_path = Path(tokenizer_path)
    if not tokenizer_path.is_file():
        raise FileNotFoundError(f"expected a tokenizer file (a Hugging Face tokenizer.json), got {tokenizer_path!s}")
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"prompt expected a non-empty str, got {prompt!r}")
    n_new, threads = _positive("n_new", n_new), _positive("threads", threads)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup expected an int >= 0, got {warmup!r}")
    pte_path = _require_pte(pte_path)
    import contextlib
    import io

    from ._quiet import native_stderr_captured, native_stdout_silenced

    metadata = read_metadata(pte_path)
    if "get_max_seq_len" not in metadata:
        raise ValueError(f"{pte_path.name} has no get_max_seq_len method: ExecuTorch's LLM runner refuses it; "
                         f"export it again with deploykit.lm_executorch (it writes runner_metadata)")
    context = metadata.get("get_max_context_len", metadata["get_max_seq_len"])
    runs = []  # (pieces, stats) of every run
    # The runner echoes the text to C stdout and logs its report to stderr; the tokenizer library logs a
    # line when it loads, the thread pool one when it is resized. stderr is kept to explain a failure.
    with native_stdout_silenced(), native_stderr_captured() as log:
        from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner
        from executorch.extension.pybindings import portable_lib
        from pytorch_tokenizers.pytorch_tokenizers_cpp import HFTokenizer

        tokenizer = HFTokenizer()  # the runner's own C++ tokenizer, to count the prompt as it will
        tokenizer.load(str(tokenizer_path))
        prompt_ids = list(tokenizer.encode(prompt, 0, 0))
    # With get_max_seq_len < get_max_context_len the runner takes the cache for a sliding-window ring
    # buffer and does not subtract the prompt from the tokens it may generate (text_llm_runner.cpp,
    # "effective_pos"): past the end of this static cache the program fails. So the budget is capped here.
    budget = min(n_new, context - len(prompt_ids))
    if budget < 1:
        raise ValueError(f"a prompt of {len(prompt_ids)} tokens leaves no room in {pte_path.name}'s cache of "
                         f"{context} positions (get_max_context_len)")
    python_log = io.StringIO()  # the thread pool's notices go through Python's sys.stderr, not the C one
    with native_stdout_silenced(), native_stderr_captured() as log, contextlib.redirect_stderr(python_log):
        try:
            portable_lib._unsafe_reset_threadpool(threads)  # XNNPACK's threads: the runner shares this pool
            config = GenerationConfig(echo=False, max_new_tokens=budget, temperature=0.0)
            constructing = time.perf_counter()
            runner = TextLLMRunner(str(pte_path), str(tokenizer_path))  # loads the program, its metadata, the tokenizer
            constructor_ms = (time.perf_counter() - constructing) * 1e3
            for _ in range(warmup + 1):
                pieces, stats = [], []
                runner.reset()  # position 0: the static cache's old entries are masked by cache_position
                runner.generate(prompt, config, token_callback=pieces.append,
                                stats_callback=lambda s: stats.append(json.loads(s.to_json_string())))
                runs.append((pieces, stats[-1]))
            failure = None
        except RuntimeError as error:
            failure = error
    if failure is not None:
        last = [line for line in (python_log.getvalue() + log.text).splitlines() if line.strip()][-1:]  # its reason last
        raise RuntimeError(f"ExecuTorch's LLM runner failed on {pte_path.name}: {failure}"
                           + (f"; its log ends: {last[0]}" if last else "")) from failure
    pieces, stats = runs[-1]
    first = runs[0][1]
    return RunnerResult("".join(pieces), pieces, _byte_level_ids(tokenizer_path, pieces), stats,
                        constructor_ms + float(first["model_load_end_ms"] - first["model_load_start_ms"]), prompt_ids)

def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deploykit.lm_executorch",
                                     description="Export the course's language model to an ExecuTorch .pte (XNNPACK).")
    parser.add_argument("out", type=Path, help="the .pte file to write (its folder must exist)")
    parser.add_argument("--quantize", choices=[q for q in QUANTIZATIONS if q], default=None,
                        help="torchao 8da4w (int4 weights, int8 activations); default float32")
    parser.add_argument("--max-cache", type=positive_tokens, default=128, help="KV cache positions in the program")
    parser.add_argument("--max-prompt", type=positive_tokens, default=64, help="longest prompt one call takes")
    args = parser.parse_args(argv)
    if not args.out.parent.is_dir():
        parser.error(f"the folder {args.out.parent} does not exist")
    if args.max_prompt > args.max_cache:
        parser.error(f"--max-prompt ({args.max_prompt}) cannot exceed --max-cache ({args.max_cache})")
    import logging

    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torchao's import-time notices
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's and transformers' deprecation notices
        export_program(args.out, quantize=args.quantize, max_cache=args.max_cache, max_prompt=args.max_prompt)


if __name__ == "__main__":
    main(sys.argv[1:])
