"""Count the floating-point operations of an ONNX graph, from the graph itself.

Lecture 06 divides a model's FLOPs by its measured latency to see how close a runtime gets to the
machine's limit. The count comes from the graph, not from a paper: ONNX shape inference gives every
tensor's shape, and each operator's cost follows from its shapes.

Convention: one multiply-add is **2 FLOPs** (the convention of ``torch.utils.flop_counter`` and of
matmul throughput figures). Counted exactly: ``Conv``, ``ConvTranspose``, ``Gemm``, ``MatMul``
(the multiply-adds, which are nearly all of a CNN's work), plus their bias additions. Counted as
one FLOP per output element when ``include_elementwise=True``: element-wise arithmetic and
activations (``Add``, ``Mul``, ``Relu`` ...), ``BatchNormalization`` (2 per element), pooling and
reductions (one per input element). Everything else (``Reshape``, ``Concat`` ...) moves data and
costs 0 FLOPs; such operators are listed in :attr:`FlopReport.uncounted`.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from math import prod
from pathlib import Path

import onnx
from onnx import numpy_helper, shape_inference

MATMUL_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
ELEMENTWISE_OPS = (
    "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Clip", "HardSigmoid",
    "HardSwish", "Gelu", "Erf", "Sqrt", "Pow", "Exp", "Neg", "Max", "Min", "Softmax",
)
POOL_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax")


@dataclass
class NodeFlops:
    name: str
    op: str
    flops: int
    macs: int = 0


@dataclass
class FlopReport:
    """FLOPs of one graph at one input shape."""

    total: int
    by_op: dict[str, int]
    nodes: list[NodeFlops] = field(default_factory=list)
    uncounted: Counter = field(default_factory=Counter)
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def gflops(self) -> float:
        return self.total / 1e9

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the Conv/Gemm/MatMul nodes (half their FLOPs, bias excluded)."""
        return sum(n.macs for n in self.nodes)

    def __str__(self) -> str:
        shapes = ", ".join(f"{k}{list(v)}" for k, v in self.input_shapes.items())
        parts = ", ".join(f"{op} {f / 1e6:.2f} M" for op, f in sorted(self.by_op.items(), key=lambda kv: -kv[1]))
        return f"{self.total / 1e9:.3f} GFLOPs for {shapes} ({parts})"


_KEEP_VALUES_UP_TO = 1024  # initializers this small keep their values (shape tensors for Reshape ...)


def _drop_weight_values(model: onnx.ModelProto) -> None:
    """Keep every initializer's name, type and shape but drop the values of large ones (the
    weights): shape inference needs only their shapes, and a 50 MB model then costs kilobytes."""
    for init in model.graph.initializer:
        if prod(init.dims) > _KEEP_VALUES_UP_TO:
            for name in ("raw_data", "float_data", "double_data", "int32_data", "int64_data", "uint64_data"):
                init.ClearField(name)


def _load(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    elif isinstance(model, (str, Path)):
        path = Path(model)
        if not path.exists():
            raise FileNotFoundError(f"count_flops expected an existing .onnx file, got {str(model)!r}")
        proto = onnx.load(str(path), load_external_data=False)
    else:
        raise TypeError(f"count_flops expected an onnx.ModelProto or a path to a .onnx file, got {type(model).__name__}")
    _drop_weight_values(proto)
    return proto


def _fix_input_shapes(model: onnx.ModelProto, batch: int, input_shapes: dict | None) -> dict[str, tuple[int, ...]]:
    """Give every graph input a concrete shape: ``input_shapes[name]`` if given, else symbolic dims -> ``batch``."""
    initializers = {t.name for t in model.graph.initializer}
    fixed: dict[str, tuple[int, ...]] = {}
    input_shapes = dict(input_shapes or {})
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if value.name in input_shapes:
            shape = tuple(int(d) for d in input_shapes.pop(value.name))
            if len(shape) != len(dims):
                raise ValueError(f"input {value.name!r} has rank {len(dims)}, but input_shapes gives {list(shape)}")
        else:
            shape = tuple(d.dim_value if d.HasField("dim_value") else batch for d in dims)
        for dim, size in zip(dims, shape):
            dim.Clear()
            dim.dim_value = size
        fixed[value.name] = shape
    if input_shapes:
        raise ValueError(f"input_shapes names unknown input(s) {sorted(input_shapes)}; the graph inputs are {sorted(fixed)}")
    return fixed


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    shapes: dict[str, tuple[int, ...]] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor_type = value.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        dims = tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = tuple(numpy_helper.to_array(attr.t).shape)
    return shapes


def _attr(node: onnx.NodeProto, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _need(shapes: dict, name: str, node: onnx.NodeProto) -> tuple[int, ...]:
    if name not in shapes:
        raise ValueError(
            f"count_flops could not infer the shape of {name!r} (input of {node.op_type} node {node.name!r}); "
            "give concrete input shapes with input_shapes={'input': (1, 3, 224, 224)}"
        )
    return shapes[name]


def node_cost(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]],
              include_elementwise: bool = True) -> tuple[int, int] | None:
    """(FLOPs, multiply-accumulates) of one node given tensor shapes; ``None`` if not counted."""
    op = node.op_type
    has_bias = len(node.input) > 2 and node.input[2] != ""
    if op == "Conv":
        out = _need(shapes, node.output[0], node)
        weight = _need(shapes, node.input[1], node)  # (C_out, C_in / groups, k...)
        macs = prod(out) * prod(weight[1:])
        return 2 * macs + (prod(out) if has_bias else 0), macs
    if op == "ConvTranspose":
        x = _need(shapes, node.input[0], node)
        weight = _need(shapes, node.input[1], node)  # (C_in, C_out / groups, k...)
        out = _need(shapes, node.output[0], node)
        macs = prod(x) * prod(weight[1:])
        return 2 * macs + (prod(out) if has_bias else 0), macs
    if op == "Gemm":
        a = _need(shapes, node.input[0], node)
        b = _need(shapes, node.input[1], node)
        m = a[1] if _attr(node, "transA", 0) else a[0]
        k = a[0] if _attr(node, "transA", 0) else a[1]
        n = b[0] if _attr(node, "transB", 0) else b[1]
        return 2 * m * n * k + (m * n if has_bias else 0), m * n * k
    if op == "MatMul":
        a = _need(shapes, node.input[0], node)
        _need(shapes, node.input[1], node)
        out = _need(shapes, node.output[0], node)
        macs = prod(out) * a[-1]
        return 2 * macs, macs
    if not include_elementwise:
        return None
    if op in ELEMENTWISE_OPS:
        return prod(_need(shapes, node.output[0], node)), 0
    if op == "BatchNormalization":
        return 2 * prod(_need(shapes, node.output[0], node)), 0
    if op in ("MaxPool", "AveragePool"):
        return prod(_need(shapes, node.output[0], node)) * prod(_attr(node, "kernel_shape", [1])), 0
    if op in POOL_OPS:
        return prod(_need(shapes, node.input[0], node)), 0
    return None


def node_flops(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]], include_elementwise: bool = True) -> int | None:
    """FLOPs of one node given tensor shapes; ``None`` for operators this module does not count."""
    cost = node_cost(node, shapes, include_elementwise)
    return None if cost is None else cost[0]


def count_flops(model, *, batch: int = 1, input_shapes: dict | None = None,
                include_elementwise: bool = False) -> FlopReport:
    """FLOPs of one inference of ``model`` (an ``.onnx`` path or a ``ModelProto``).

    Symbolic input dimensions (a dynamic batch) become ``batch``; or give every input's shape with
    ``input_shapes={"input": (8, 3, 224, 224)}``. By default only Conv/ConvTranspose/Gemm/MatMul
    (with their bias) are counted, the work a runtime's fast kernels do; ``include_elementwise``
    adds activations, normalisation and pooling (a few percent for a CNN).
    """
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"count_flops expected batch to be a positive int, got {batch!r}")
    proto = _load(model)
    fixed = _fix_input_shapes(proto, batch, input_shapes)
    shapes = _shapes(proto)
    by_op: Counter = Counter()
    nodes: list[NodeFlops] = []
    uncounted: Counter = Counter()
    for node in proto.graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise ValueError(
                f"count_flops counts standard ONNX operators; node {node.name!r} is {node.domain}:{node.op_type} "
                "(an ONNX Runtime-optimised graph?). Count the original model instead."
            )
        cost = node_cost(node, shapes, include_elementwise)
        if cost is None:
            uncounted[node.op_type] += 1
            continue
        flops, macs = cost
        by_op[node.op_type] += flops
        nodes.append(NodeFlops(node.name, node.op_type, flops, macs))
    return FlopReport(sum(by_op.values()), dict(by_op), nodes, uncounted, fixed)


__all__ = ["FlopReport", "NodeFlops", "count_flops", "node_cost", "node_flops"]
