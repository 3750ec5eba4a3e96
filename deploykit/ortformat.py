"""Read what is inside an ONNX Runtime ``.ort`` file (a flatbuffer) next to its ``.onnx`` source.

Lecture 07 and the labs use this to explain the ``.ort`` file's size with one measured story: the
weights are the same bytes in both formats; the rest is the graph's records (every node, every
tensor with its name, type and shape) and, in ``.ort``, the kernel type information a minimal
build needs to pick kernels without ONNX's operator schemas.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FileSummary:
    """Sizes and counts of one model file."""

    name: str
    file_bytes: int
    weight_bytes: int      # raw bytes of every initializer (the weights, scales, zero points)
    nodes: int
    tensors: int           # named values in the graph (.ort: node args; .onnx: value names)

    @property
    def other_bytes(self) -> int:
        """Everything that is not weights: graph records, names, types, shapes, format overhead."""
        return self.file_bytes - self.weight_bytes


def _check(path, suffix: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected an existing {suffix} file, got {str(path)!r}")
    if path.suffix != suffix:
        raise ValueError(f"expected a file ending in {suffix}, got {path.name!r}")
    return path


def ort_file_summary(path) -> FileSummary:
    """Summarise an ``.ort`` file: its weight bytes, nodes and tensors (node args)."""
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py import fbs

    path = _check(path, ".ort")
    buffer = path.read_bytes()
    if buffer[4:8] != b"ORTM":
        raise ValueError(f"{path.name} is not an ORT-format file (its flatbuffer identifier is {buffer[4:8]!r}, expected b'ORTM')")
    graph = fbs.InferenceSession.InferenceSession.GetRootAsInferenceSession(buffer, 0).Model().Graph()
    weight_bytes = sum(graph.Initializers(i).RawDataLength() for i in range(graph.InitializersLength()))
    return FileSummary(path.name, len(buffer), weight_bytes, graph.NodesLength(), graph.NodeArgsLength())


def ort_node_types(path) -> set[tuple[str, str]]:
    """The ``(domain, op_type)`` of every node in an ``.ort`` file ("" is the ONNX domain).

    Shows what the optimiser wrote: e.g. ``("com.microsoft.nchwc", "Conv")`` nodes come from the
    x86-only ``NchwcTransformer`` (blocked layouts for AVX2/AVX-512), which an ARM phone cannot run.
    """
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py import fbs

    path = _check(path, ".ort")
    buffer = path.read_bytes()
    if buffer[4:8] != b"ORTM":
        raise ValueError(f"{path.name} is not an ORT-format file (its flatbuffer identifier is {buffer[4:8]!r}, expected b'ORTM')")
    graph = fbs.InferenceSession.InferenceSession.GetRootAsInferenceSession(buffer, 0).Model().Graph()
    nodes = (graph.Nodes(i) for i in range(graph.NodesLength()))
    return {((node.Domain() or b"").decode(), node.OpType().decode()) for node in nodes}


def onnx_file_summary(path) -> FileSummary:
    """Summarise an ``.onnx`` file the same way (weights stored inside the file)."""
    import onnx
    from onnx import numpy_helper

    path = _check(path, ".onnx")
    model = onnx.load(str(path))
    graph = model.graph
    weight_bytes = sum(numpy_helper.to_array(init).nbytes for init in graph.initializer)
    names = {value for node in graph.node for value in (*node.input, *node.output) if value}
    names |= {value.name for value in (*graph.input, *graph.output)}
    return FileSummary(path.name, path.stat().st_size, weight_bytes, len(graph.node), len(names))


__all__ = ["FileSummary", "onnx_file_summary", "ort_file_summary", "ort_node_types"]
