"""Lab 01 (inspect a graph): the graphs the lab works on, and the checks of the learner's functions.

* :func:`graph_from_fx` (from :mod:`deploykit.graphs`) turns a ``torch.fx`` graph or a
  ``torch.export`` program into a :class:`deploykit.graphs.Graph`, the same shape
  ``dk.load_graph`` gives for ONNX and LiteRT files.
* :func:`sample_graphs` gives the graphs the checks test on: a chain, a diamond, a residual block
  and the course's digits CNN. A chain alone would not tell "depth" from "number of nodes".
* ``check_count_ops``, ``check_depth``, ``check_layout`` take the learner's function and compare
  it with the reference (``Graph.op_counts``, ``Graph.depth``) on every sample graph, with hints
  for the usual mistakes.
"""
from __future__ import annotations

from collections import Counter

from ..graphs import Graph, Node, graph_from_fx  # noqa: F401  (graph_from_fx: re-exported for the lab)
from . import check, require


def _graph(name: str, spec: list[tuple[str, str, tuple[str, ...]]]) -> Graph:
    nodes = [Node(n, op, ins, (n,)) for n, op, ins in spec]
    return Graph(name, nodes, ["x"], [spec[-1][0]])


def sample_graphs() -> dict[str, Graph]:
    """Graphs to test on: ``chain``, ``diamond``, ``resblock`` (torch.fx) and ``digits`` (torch.fx)."""
    import torch
    from torch import nn

    from ..models import DigitsCNN

    chain = _graph("chain", [("a", "Conv", ("x",)), ("b", "Relu", ("a",)), ("c", "Gemm", ("b",))])
    diamond = _graph("diamond", [
        ("a", "Conv", ("x",)), ("b", "Relu", ("a",)), ("c", "Conv", ("b",)), ("d", "Relu", ("c",)),
        ("e", "Conv", ("a",)), ("f", "Add", ("d", "e")), ("g", "Relu", ("f",)),
    ])

    class ResBlock(nn.Module):
        def __init__(self, channels: int = 8):
            super().__init__()
            self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(channels)
            self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(channels)
            self.shortcut = nn.Conv2d(channels, channels, 1)  # a projection: the skip path has an operator

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return torch.relu(out + self.shortcut(x))

    torch.manual_seed(0)
    resblock = graph_from_fx(torch.fx.symbolic_trace(ResBlock().eval()), "resblock")
    digits = graph_from_fx(torch.fx.symbolic_trace(DigitsCNN().eval()), "digits")
    return {"chain": chain, "diamond": diamond, "resblock": resblock, "digits": digits}


def _call(fn, graph: Graph):
    import copy

    return fn(copy.deepcopy(graph))


@check("count operators by type")
def check_count_ops(count_ops) -> None:
    for name, graph in sample_graphs().items():
        got = _call(count_ops, graph)
        require(isinstance(got, dict), f"count_ops should return a dict (or Counter) of op type -> count, got {type(got).__name__}")
        want = dict(graph.op_counts())
        got = {k: v for k, v in dict(got).items() if v}
        if got == want:
            continue
        names = {n.name for n in graph.nodes}
        require(not set(got) & names or set(got) & set(want),
                f"on the {name!r} graph your keys are node names ({sorted(got)[:3]}...); count node.op instead")
        require(sum(got.values()) == len(graph.nodes),
                f"on the {name!r} graph you counted {sum(got.values())} operators in total, but it has "
                f"{len(graph.nodes)} nodes: count every node once (graph inputs and weights are not nodes)")
        wrong = sorted(op for op in set(got) | set(want) if got.get(op) != want.get(op))
        require(False, f"on the {name!r} graph, {wrong[0]!r} should be {want.get(wrong[0], 0)}, you have {got.get(wrong[0], 0)}")


@check("graph depth (longest path)")
def check_depth(depth) -> None:
    for name, graph in sample_graphs().items():
        got = _call(depth, graph)
        require(isinstance(got, int) and not isinstance(got, bool), f"depth should return an int, got {type(got).__name__}")
        want = graph.depth()
        if got == want:
            continue
        require(got != len(graph.nodes),
                f"on the {name!r} graph you returned the number of nodes ({got}); that equals the depth only for a "
                f"chain. The depth is the number of operators on the LONGEST input-to-output path")
        require(got != want - 1,
                f"on the {name!r} graph you are one short ({got} instead of {want}): count operators on the path, "
                f"not the edges between them")
        require(got > want,
                f"on the {name!r} graph you returned {got}, less than the depth {want}: a breadth-first search gives "
                f"the SHORTEST path; take the maximum over all paths (a node's layer = 1 + max of its producers' layers)")
        require(False, f"on the {name!r} graph you returned {got}, more than the depth {want}: did you count a node "
                       f"twice when it has two inputs (e.g. Add)?")


@check("layout for drawing")
def check_layout(layout) -> None:
    for name, graph in sample_graphs().items():
        got = _call(layout, graph)
        require(isinstance(got, (list, dict)),
                f"layout should return a list (or dict by node index) of (x, y) positions, got {type(got).__name__}")
        positions = got if isinstance(got, dict) else dict(enumerate(got))
        require(set(positions) == set(range(len(graph.nodes))),
                f"on the {name!r} graph give one position per node (indices 0..{len(graph.nodes) - 1}), got {len(positions)}")
        points = [tuple(float(v) for v in positions[i]) for i in range(len(graph.nodes))]
        require(len(set(points)) == len(points), f"on the {name!r} graph two nodes share a position; spread each row out along x")
        for src, dst in graph.edges():
            require(points[src][1] > points[dst][1],
                    f"on the {name!r} graph, {graph.nodes[src].op} (node {src}) feeds {graph.nodes[dst].op} (node {dst}) "
                    f"but is not above it: put each node one row below the lowest of its producers (y = -layer)")


@check("draw the graph")
def check_draw(draw, layout) -> None:
    """``draw(graph, positions)`` returns a matplotlib Figure with one label per operator and an
    arrow (or line) per edge; ``positions`` come from the learner's ``layout``."""
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    from matplotlib.text import Annotation

    graph = sample_graphs()["diamond"]
    figure = draw(graph, layout(graph))
    try:
        require(isinstance(figure, Figure), f"draw should return the matplotlib Figure, got {type(figure).__name__}")
        texts = [t for ax in figure.axes for t in ax.texts]
        labels = Counter(t.get_text() for t in texts if t.get_text())
        missing = graph.op_counts() - labels
        require(not missing, f"label each node with its operator type (ax.text); missing labels {dict(missing)}")
        arrows = sum(1 for t in texts if isinstance(t, Annotation) and t.arrow_patch is not None)
        arrows += sum(len(ax.patches) + len(ax.lines) for ax in figure.axes)
        require(arrows >= len(graph.edges()),
                f"draw one arrow or line per edge: the diamond graph has {len(graph.edges())} edges, you drew {arrows}")
    finally:
        plt.close(figure) if isinstance(figure, Figure) else None


@check("your functions on ResNet-18's graph")
def check_on_resnet(count_ops, depth, graph: Graph) -> None:
    """``count_ops`` and ``depth`` give the graph's own answers on a large real graph (ResNet-18)."""
    require(isinstance(graph, Graph), f"expected the Graph from lab01.graph_from_fx(...), got {type(graph).__name__}")
    counts = _call(count_ops, graph)
    require(dict(counts) == dict(graph.op_counts()), "count_ops passed the small graphs but miscounts ResNet-18: "
            f"it has {sum(graph.op_counts().values())} operators, you counted {sum(dict(counts).values())}; is every "
            "node of a repeated operator type counted?")
    got = _call(depth, graph)
    require(got == graph.depth(), f"depth gives {got} on ResNet-18, the longest path has {graph.depth()} operators: "
            "residual connections make two paths into each add; the longest one counts")


def reference_count_ops(graph: Graph) -> Counter:
    return graph.op_counts()


def reference_depth(graph: Graph) -> int:
    return graph.depth()


__all__ = ["check_count_ops", "check_depth", "check_draw", "check_layout", "check_on_resnet", "graph_from_fx", "sample_graphs"]
