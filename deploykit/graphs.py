"""Read a model file's graph (ONNX or LiteRT ``.tflite``) and draw it without a browser.

:class:`Graph` is the common shape: operator nodes, and the tensors that connect them. The
drawing is the static fallback of :func:`deploykit.netron.show_netron`: a saved notebook keeps it
as a picture. Lab 01 asks you to compute these things yourself; here they serve the other notebooks.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

SUPPORTED_SUFFIXES = (".onnx", ".tflite")


@dataclass(frozen=True)
class Node:
    name: str
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass
class Graph:
    """Operators (nodes) + tensors (edges) + topology (which output feeds which input)."""

    name: str
    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]
    constants: set[str] = field(default_factory=set)  # weights: initializers / constant buffers

    def op_counts(self) -> Counter:
        return Counter(node.op for node in self.nodes)

    def edges(self) -> list[tuple[int, int]]:
        """(producer index, consumer index) for every tensor passed between two nodes."""
        producer = {t: i for i, node in enumerate(self.nodes) for t in node.outputs}
        return [
            (producer[t], j)
            for j, node in enumerate(self.nodes)
            for t in node.inputs
            if t in producer
        ]

    def layers(self) -> list[int]:
        """Longest-path layer of each node (0 for nodes fed only by graph inputs/constants)."""
        layer = [0] * len(self.nodes)
        preds: dict[int, list[int]] = {}
        for src, dst in self.edges():
            preds.setdefault(dst, []).append(src)
        for j in _topological_order(len(self.nodes), self.edges()):
            layer[j] = max((layer[i] + 1 for i in preds.get(j, [])), default=0)
        return layer

    def depth(self) -> int:
        """Number of operators on the longest input-to-output path."""
        return max(self.layers(), default=-1) + 1

    def __repr__(self) -> str:
        return f"Graph({self.name!r}: {len(self.nodes)} nodes, depth {self.depth()}, inputs {self.inputs}, outputs {self.outputs})"


def _topological_order(count: int, edges: list[tuple[int, int]]) -> list[int]:
    indegree = [0] * count
    succ: dict[int, list[int]] = {}
    for src, dst in edges:
        indegree[dst] += 1
        succ.setdefault(src, []).append(dst)
    ready = [i for i in range(count) if indegree[i] == 0]
    order = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for j in succ.get(i, []):
            indegree[j] -= 1
            if indegree[j] == 0:
                ready.append(j)
    if len(order) != count:
        raise ValueError("graph has a cycle; expected a directed acyclic graph")
    return order


def _check_model_file(path) -> Path:
    path = Path(path)
    if path.suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(f"expected a model file ending in {' or '.join(SUPPORTED_SUFFIXES)}, got {str(path)!r}")
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {str(path)!r} (expected an exported {path.suffix} file; run the export cell first)")
    return path


def onnx_graph(source) -> Graph:
    """The main graph of an ONNX model (a path or an ``onnx.ModelProto``)."""
    import onnx

    model = source if isinstance(source, onnx.ModelProto) else onnx.load(str(_check_model_file(source)))
    g = model.graph
    constants = {init.name for init in g.initializer}
    nodes = [
        Node(n.name or f"{n.op_type}_{i}", n.op_type, tuple(x for x in n.input if x), tuple(n.output))
        for i, n in enumerate(g.node)
    ]
    inputs = [i.name for i in g.input if i.name not in constants]
    return Graph(g.name or "onnx", nodes, inputs, [o.name for o in g.output], constants)


def tflite_graph(path) -> Graph:
    """The first subgraph of a LiteRT ``.tflite`` flatbuffer."""
    from ai_edge_litert import schema_py_generated as schema

    data = _check_model_file(path).read_bytes()
    model = schema.Model.GetRootAs(data, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    sub = model.Subgraphs(0)
    tensor = lambda i: sub.Tensors(int(i)).Name().decode()  # noqa: E731
    nodes = []
    for i in range(sub.OperatorsLength()):
        op = sub.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        op_name = names.get(builtin, str(builtin))
        if op_name == "CUSTOM" and code.CustomCode():
            op_name = code.CustomCode().decode()
        ins = tuple(tensor(t) for t in op.InputsAsNumpy() if t >= 0) if op.InputsLength() else ()
        outs = tuple(tensor(t) for t in op.OutputsAsNumpy()) if op.OutputsLength() else ()
        nodes.append(Node(f"{op_name}_{i}", op_name, ins, outs))
    produced = {t for n in nodes for t in n.outputs}
    inputs = [tensor(t) for t in sub.InputsAsNumpy()]
    constants = {t for n in nodes for t in n.inputs if t not in produced and t not in inputs}
    return Graph("tflite", nodes, inputs, [tensor(t) for t in sub.OutputsAsNumpy()], constants)


def load_graph(path) -> Graph:
    """:func:`onnx_graph` or :func:`tflite_graph`, by file suffix."""
    path = _check_model_file(path)
    return onnx_graph(path) if path.suffix == ".onnx" else tflite_graph(path)


def _op_name(node, modules: dict) -> str:
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    target = node.target
    if node.op == "call_method":
        return str(target)
    packet = getattr(target, "overloadpacket", None)  # torch.export: aten OpOverload
    if packet is not None:
        return packet.__name__
    return getattr(target, "__name__", str(target))


def graph_from_fx(source, name: str | None = None) -> Graph:
    """A :class:`Graph` from a ``torch.fx.GraphModule`` or a ``torch.export.ExportedProgram``.

    Each ``call_module`` / ``call_function`` / ``call_method`` node becomes an operator named by
    its module class (``Conv2d``), function (``add``) or aten op (``conv2d``). Placeholders are the
    graph inputs, except the parameters and buffers of an exported program, which (like
    ``get_attr`` nodes) count as constants (weights).
    """
    import torch

    constants: set[str] = set()
    if isinstance(source, torch.export.ExportedProgram):
        signature = source.graph_signature
        user_inputs = set(signature.user_inputs)
        module = source.graph_module
        title = name or "exported"
    elif isinstance(source, torch.fx.GraphModule):
        user_inputs = None
        module = source
        title = name or type(source).__name__
    else:
        raise TypeError(
            f"graph_from_fx expected a torch.fx.GraphModule (torch.fx.symbolic_trace) or a torch.export "
            f"ExportedProgram, got {type(source).__name__}"
        )
    modules = dict(module.named_modules())
    nodes, inputs, outputs = [], [], []
    for node in module.graph.nodes:
        if node.op == "placeholder":
            if user_inputs is None or node.name in user_inputs:
                inputs.append(node.name)
            else:
                constants.add(node.name)
        elif node.op == "get_attr":
            constants.add(node.name)
        elif node.op == "output":
            outputs = [n.name for n in node.all_input_nodes]
        else:
            args = tuple(n.name for n in node.all_input_nodes)
            nodes.append(Node(node.name, _op_name(node, modules), args, (node.name,)))
    return Graph(title, nodes, inputs, outputs, constants)


_PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]


def draw_graph(graph: Graph, title: str | None = None, max_nodes: int = 120, ax=None):
    """Draw ``graph`` top to bottom, one row per longest-path layer, coloured by operator type.

    Returns the matplotlib figure. Graphs larger than ``max_nodes`` are cut after that many
    nodes (in file order), and the title says so.
    """
    import matplotlib.pyplot as plt

    if not isinstance(graph, Graph):
        raise TypeError(f"draw_graph expected a deploykit Graph (see load_graph), got {type(graph).__name__}")
    shown = Graph(graph.name, graph.nodes[:max_nodes], graph.inputs, graph.outputs, graph.constants)
    layers = shown.layers()
    rows: dict[int, list[int]] = {}
    for i, layer in enumerate(layers):
        rows.setdefault(layer, []).append(i)
    width = max((len(r) for r in rows.values()), default=1)
    pos = {}
    for layer, members in rows.items():
        for k, i in enumerate(members):
            pos[i] = (k - (len(members) - 1) / 2, -layer)
    ops = sorted({n.op for n in shown.nodes})
    colour = {op: _PALETTE[k % len(_PALETTE)] for k, op in enumerate(ops)}
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(4.0, 1.9 * width), max(2.0, 0.55 * len(rows) + 0.8)))
    else:
        fig = ax.figure
    for src, dst in shown.edges():
        (x0, y0), (x1, y1) = pos[src], pos[dst]
        ax.annotate("", xy=(x1, y1 + 0.18), xytext=(x0, y0 - 0.18),
                    arrowprops=dict(arrowstyle="->", color="#666666", lw=0.8))
    for i, node in enumerate(shown.nodes):
        x, y = pos[i]
        ax.text(x, y, node.op, ha="center", va="center", fontsize=7, color="white",
                bbox=dict(boxstyle="round,pad=0.3", fc=colour[node.op], ec="none"))
    cut = f" (first {max_nodes} of {len(graph.nodes)} nodes)" if len(graph.nodes) > max_nodes else ""
    ax.set_title((title or f"{graph.name}: {len(graph.nodes)} operators, depth {graph.depth()}") + cut, fontsize=9)
    ax.set_xlim(-width / 2 - 0.3, width / 2 + 0.3)
    ax.set_ylim(-max(rows, default=0) - 0.6, 0.6)
    ax.axis("off")
    fig.tight_layout()
    return fig
