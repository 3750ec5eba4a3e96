"""Lab 01 checks: the reference passes, and the typical mistakes get the matching [HINT]."""
from collections import Counter

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from deploykit.checks import lab01  # noqa: E402


def test_sample_graphs_separate_depth_from_node_count():
    graphs = lab01.sample_graphs()
    assert set(graphs) == {"chain", "diamond", "resblock", "digits"}
    assert graphs["diamond"].depth() < len(graphs["diamond"].nodes)
    assert graphs["resblock"].depth() < len(graphs["resblock"].nodes)
    assert graphs["chain"].depth() == len(graphs["chain"].nodes)


def test_graph_from_fx_and_export_agree_on_structure():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).eval()
    fx = lab01.graph_from_fx(torch.fx.symbolic_trace(model))
    exported = lab01.graph_from_fx(torch.export.export(model, (torch.zeros(1, 3),)))
    assert fx.op_counts() == Counter({"Linear": 2, "ReLU": 1})
    assert exported.op_counts() == Counter({"linear": 2, "relu": 1})
    assert len(exported.inputs) == 1
    assert len(exported.constants) == 4  # two weights, two biases
    assert fx.depth() == exported.depth() == 3


def test_graph_from_fx_rejects_other_objects():
    try:
        lab01.graph_from_fx(torch.nn.ReLU())
    except TypeError as error:
        assert "GraphModule" in str(error)
    else:
        raise AssertionError("expected a TypeError")


def test_count_ops(capsys):
    assert lab01.check_count_ops(lambda g: Counter(n.op for n in g.nodes))
    assert not lab01.check_count_ops(lambda g: Counter(n.name for n in g.nodes))
    assert "node names" in capsys.readouterr().out
    assert not lab01.check_count_ops(lambda g: [n.op for n in g.nodes])
    assert "should return a dict" in capsys.readouterr().out
    assert not lab01.check_count_ops(lambda g: Counter(n.op for n in g.nodes[1:]))
    assert "in total" in capsys.readouterr().out


def _longest(g):
    return g.depth()


def _shortest(g):  # breadth-first: length of the shortest input-to-output path
    preds = {}
    for a, b in g.edges():
        preds.setdefault(b, []).append(a)
    level = []
    for i in range(len(g.nodes)):
        level.append(1 + min((level[p] for p in preds.get(i, [])), default=0))
    return level[-1]


def test_depth(capsys):
    assert lab01.check_depth(_longest)
    assert not lab01.check_depth(lambda g: len(g.nodes))
    assert "number of nodes" in capsys.readouterr().out
    assert not lab01.check_depth(lambda g: g.depth() - 1)
    assert "one short" in capsys.readouterr().out
    assert not lab01.check_depth(_shortest)
    assert "SHORTEST" in capsys.readouterr().out
    assert not lab01.check_depth(lambda g: float(g.depth()))
    assert "int" in capsys.readouterr().out


def _layout(g):
    rows = {}
    pos = []
    for layer in g.layers():
        k = rows.get(layer, 0)
        rows[layer] = k + 1
        pos.append((k, -layer))
    return pos


def test_layout(capsys):
    assert lab01.check_layout(_layout)
    assert not lab01.check_layout(lambda g: [(0, -i) for i in range(len(g.nodes) - 1)])
    assert "one position per node" in capsys.readouterr().out
    assert not lab01.check_layout(lambda g: [(0, -layer) for layer in g.layers()])
    assert "share a position" in capsys.readouterr().out
    assert not lab01.check_layout(lambda g: [(x, -y) for x, y in _layout(g)])
    assert "not above" in capsys.readouterr().out


def _draw(g, positions):
    fig, ax = plt.subplots()
    for a, b in g.edges():
        ax.annotate("", xy=positions[b], xytext=positions[a], arrowprops=dict(arrowstyle="->"))
    for node, (x, y) in zip(g.nodes, positions):
        ax.text(x, y, node.op)
    return fig


def test_draw(capsys):
    assert lab01.check_draw(_draw, _layout)

    def no_arrows(g, positions):
        fig, ax = plt.subplots()
        for node, (x, y) in zip(g.nodes, positions):
            ax.text(x, y, node.op)
        return fig

    assert not lab01.check_draw(no_arrows, _layout)
    assert "arrow" in capsys.readouterr().out

    def names_not_ops(g, positions):
        fig, ax = plt.subplots()
        for node, (x, y) in zip(g.nodes, positions):
            ax.text(x, y, node.name)
        return fig

    assert not lab01.check_draw(names_not_ops, _layout)
    assert "missing labels" in capsys.readouterr().out
    assert not lab01.check_draw(lambda g, p: None, _layout)
    assert "Figure" in capsys.readouterr().out
    plt.close("all")


def test_check_on_resnet(capsys):
    import deploykit as dk

    graph = lab01.graph_from_fx(torch.fx.symbolic_trace(dk.torchvision_model("resnet18")), "resnet18")
    assert lab01.check_on_resnet(lambda g: g.op_counts(), lambda g: g.depth(), graph)
    assert capsys.readouterr().out.startswith("[PASS]")
    assert not lab01.check_on_resnet(lambda g: {op: 1 for op in g.op_counts()}, lambda g: g.depth(), graph)
    assert "miscounts ResNet-18" in capsys.readouterr().out
    assert not lab01.check_on_resnet(lambda g: g.op_counts(), lambda g: len(g.nodes), graph)
    assert "longest path" in capsys.readouterr().out
    assert not lab01.check_on_resnet(lambda g: g.op_counts(), lambda g: g.depth(), "resnet")
    assert "graph_from_fx" in capsys.readouterr().out
