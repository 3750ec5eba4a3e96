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


def strip_debug_info(path) -> int:
    """Remove what an exporter recorded about *this machine* from a model file, in place.

    * ``.onnx``: every node's ``metadata_props``. ``torch.onnx.export`` writes each node's Python
      stack trace (with absolute file paths), its FX node and class hierarchy there.
    * ``.pt`` TorchScript archives: the ``*.debug_pkl`` source maps (absolute paths of the Python
      sources that were traced).

    Graph and weights are untouched, so outputs are identical; the file gets smaller, no longer
    leaks local paths, and is the same bytes wherever it is exported. Returns the bytes removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"strip_debug_info expected an existing .onnx or TorchScript .pt file, got {str(path)!r}")
    before = path.stat().st_size
    if path.suffix == ".onnx":
        import onnx

        model = onnx.load(str(path))
        graphs = [model.graph]
        while graphs:  # subgraphs of If/Loop nodes too
            graph = graphs.pop()
            for node in graph.node:
                del node.metadata_props[:]
                for attr in node.attribute:
                    graphs.extend([attr.g] if attr.HasField("g") else [])
                    graphs.extend(attr.graphs)
        onnx.save(model, str(path))
    elif path.suffix == ".pt":
        import io
        import zipfile

        with zipfile.ZipFile(path) as archive:
            entries = [(info, archive.read(info.filename)) for info in archive.infolist()]
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            for info, data in entries:
                if not info.filename.endswith(".debug_pkl"):
                    archive.writestr(info, data)
        path.write_bytes(buffer.getvalue())
    else:
        raise ValueError(f"strip_debug_info expected a file ending in .onnx or .pt, got {path.name!r}")
    return before - path.stat().st_size


def export_onnx(model: torch.nn.Module, example: torch.Tensor, name: str, *, dynamic_batch: bool = True,
                overwrite: bool = False, opset: int = 18) -> Path:
    """Export ``model`` with the current (torch.export-based) exporter to ``artifacts/<name>``.

    Weights are stored inside the file (``external_data=False``): one self-contained file to ship,
    with the exporter's per-node debug metadata removed (:func:`strip_debug_info`).
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
    strip_debug_info(path)
    return path


WEIGHTS_KEY = "deploykit.weights_sha256"


def _weights_tag(path: Path) -> str | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((p.value for p in model.metadata_props if p.key == WEIGHTS_KEY), None)


def digits_onnx(overwrite: bool = False) -> Path:
    """The course's reference digits CNN as ONNX (dynamic batch): ``artifacts/digits_cnn.onnx``.

    The file records the SHA-256 of the checkpoint it came from (``metadata_props``), so a cached
    export made from other weights (an older course version) is exported again.
    """
    from .models import REFERENCE_SHA256

    path = artifact_path("digits_cnn.onnx")
    if path.exists() and not overwrite and _weights_tag(path) == REFERENCE_SHA256:
        return path
    path = export_onnx(digits_model(), digits_example_input(2), "digits_cnn.onnx", overwrite=True)
    import onnx

    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = WEIGHTS_KEY, REFERENCE_SHA256
    onnx.save(model, str(path))
    return path


def resnet18_onnx(overwrite: bool = False) -> Path:
    """torchvision's ResNet-18 (random seeded weights) as ONNX (dynamic batch): ``artifacts/resnet18.onnx``."""
    return export_onnx(torchvision_model("resnet18"), torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)),
                       "resnet18.onnx", overwrite=overwrite)
