"""The course's language model as an ExecuTorch program (``.pte``), exported in a process of its own.

Lecture 14 prints :func:`export_program` (the lesson: a static-cache wrapper, ``torch.export``,
``to_edge_transform_and_lower`` to XNNPACK) and runs this module as a command, the way it runs
ONNX Runtime GenAI's model builder::

    python -m deploykit.lm_executorch OUT.pte [--quantize 8da4w] [--max-cache 128] [--max-prompt 64]

Why a command: lowering a program takes about a gigabyte and tens of seconds of ``torch.export``
machinery that a notebook kernel would keep (freed Python memory is rarely handed back). In a child
process it is returned to the system when the export ends, and the notebook's kernel never imports
``executorch.exir`` or ``torchao``.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from ._cli import positive_tokens

#: The quantisations :func:`export_program` knows: None (float32) or torchao's ``8da4w``.
QUANTIZATIONS = (None, "8da4w")


def export_program(out, *, quantize: str | None = None, max_cache: int = 128, max_prompt: int = 64) -> Path:
    """Export lecture 13's model to ``out`` (a ``.pte``): a static KV cache of ``max_cache`` positions
    inside the program, a prompt of 1 to ``max_prompt`` tokens per call, lowered to XNNPACK."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

    from .language_model import load_language_model

    model, _ = load_language_model()
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
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    Path(out).write_bytes(lowered.buffer)
    return Path(out)


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
