"""Cached exports, so a notebook can use a model that an earlier notebook teaches how to make.

Lecture 04 shows ``torch.onnx.export`` itself; later notebooks call :func:`digits_onnx` or
:func:`resnet18_onnx`, which run the same export once and reuse the file from ``artifacts/``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .models import digits_example_input, digits_model, torchvision_model
from .paths import artifact_path

INPUT_NAME, OUTPUT_NAME = "input", "logits"


def export_onnx(model: torch.nn.Module, example: torch.Tensor, name: str, *, dynamic_batch: bool = True,
                overwrite: bool = False, opset: int = 18) -> Path:
    """Export ``model`` with the current (torch.export-based) exporter to ``artifacts/<name>``.

    Weights are stored inside the file (``external_data=False``): one self-contained file to ship.
    One input called ``"input"``, one output called ``"logits"``; with ``dynamic_batch`` the first
    dimension is symbolic. Reuses an existing file unless ``overwrite``.
    """
    if not str(name).endswith(".onnx"):
        raise ValueError(f"export_onnx expected a file name ending in .onnx, got {name!r}")
    if not isinstance(example, torch.Tensor) or example.dim() < 2:
        raise ValueError(f"export_onnx expected an example batch tensor (N, ...), got {getattr(example, 'shape', type(example).__name__)}")
    path = artifact_path(name)
    if path.exists() and not overwrite:
        return path
    # A tuple, one entry per positional input, so it works whatever forward() names its argument.
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None
    model.eval()
    torch.onnx.export(
        model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_shapes=dynamic_shapes, opset_version=opset, dynamo=True, external_data=False, verbose=False,
    )
    return path


def digits_onnx(overwrite: bool = False) -> Path:
    """The course's digits CNN as ONNX (dynamic batch): ``artifacts/digits_cnn.onnx``."""
    return export_onnx(digits_model(), digits_example_input(2), "digits_cnn.onnx", overwrite=overwrite)


def resnet18_onnx(overwrite: bool = False) -> Path:
    """torchvision's ResNet-18 (random seeded weights) as ONNX (dynamic batch): ``artifacts/resnet18.onnx``."""
    return export_onnx(torchvision_model("resnet18"), torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)),
                       "resnet18.onnx", overwrite=overwrite)
