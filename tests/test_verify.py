"""graph.verify() catches each invariant broken on purpose, naming the node and the invariant."""
import pytest
import torch

import hwopt
from hwopt import models
from hwopt.ir import TensorSpec


@pytest.fixture
def g():
    return hwopt.lift(models.get("mnist_cnn"), torch.randn(1, 1, 28, 28))


def first(g, op):
    return next(n for n in g if n.op == op)


def edit(g, name, **changes):
    n = g[name].copy()
    for k, v in changes.items():
        setattr(n, k, v)
    g.nodes[name] = n  # bypass Graph.replace so the edges are left as they were
    g.changed()
    return n.name


def test_valid_graph_passes(g):
    assert g.verify() is g


def test_cycle(g):
    conv = first(g, "conv2d").name
    last = g.output.inputs[0]
    g.nx.add_edge(last, conv)
    with pytest.raises(hwopt.IRError, match="edges .* disagree|cycle"):
        g.verify()


def test_true_cycle_detected():
    from hwopt.ir import Graph
    g = Graph()
    g.add("x", "input", spec=TensorSpec((1, 2)))
    g.add("a", "relu", ["x"])
    g.add("b", "relu", ["a"])
    g.add("output", "output", ["b"])
    n = g["a"].copy()
    n.inputs = ("b",)
    g.replace(n)
    with pytest.raises(hwopt.IRError, match="cycle"):
        g.verify()


def test_edges_disagree_with_inputs(g):
    conv = first(g, "conv2d").name
    g.nx.add_edge("x", g.output.inputs[0])
    with pytest.raises(hwopt.IRError, match="edges .* disagree with inputs"):
        g.verify()


def test_missing_input(g):
    name = edit(g, first(g, "relu").name, inputs=("nope",))
    with pytest.raises(hwopt.IRError, match=rf"node '{name}': input 'nope' does not exist"):
        g.verify()


def test_wrong_output_spec(g):
    bn = first(g, "batch_norm")
    edit(g, bn.name, spec=TensorSpec((1, 99, 28, 28)))
    with pytest.raises(hwopt.IRError, match=rf"node '{bn.name}': stored output spec \[1, 99, 28, 28\] but op semantics give"):
        g.verify()


def test_param_shape_inconsistent_with_attrs(g):
    conv = first(g, "conv2d")
    edit(g, conv.name, params={**conv.params, "weight": conv.params["weight"][:, :, :2]})
    with pytest.raises(hwopt.IRError, match=rf"node '{conv.name}': parameter 'weight' has shape"):
        g.verify()


def test_unexpected_and_missing_params(g):
    lin = first(g, "linear")
    edit(g, lin.name, params={**lin.params, "gamma": torch.ones(3)})
    with pytest.raises(hwopt.IRError, match="unexpected parameter 'gamma'"):
        g.verify()
    edit(g, lin.name, params={})
    with pytest.raises(hwopt.IRError, match="needs parameter 'weight'"):
        g.verify()


def test_nan_param(g):
    conv = first(g, "conv2d")
    w = conv.params["weight"].clone()
    w[0, 0, 0, 0] = float("nan")
    edit(g, conv.name, params={**conv.params, "weight": w})
    with pytest.raises(hwopt.IRError, match="NaN or inf"):
        g.verify()


def test_mask_not_binary(g):
    conv = first(g, "conv2d")
    edit(g, conv.name, params={**conv.params, "weight_mask": torch.full_like(conv.params["weight"], 0.5)})
    with pytest.raises(hwopt.IRError, match="weight_mask must hold only 0 and 1"):
        g.verify()


def test_unknown_op_missing_attr_and_arity(g):
    relu = first(g, "relu").name
    edit(g, relu, op="frobnicate")
    with pytest.raises(hwopt.IRError, match="op 'frobnicate' is not in the op set"):
        g.verify()
    edit(g, relu, op="concat")
    with pytest.raises(hwopt.IRError, match=r"missing attribute\(s\) \['dim'\]"):
        g.verify()
    edit(g, relu, op="add", attrs={})
    with pytest.raises(hwopt.IRError, match="needs two tensor inputs"):
        g.verify()


def test_no_output_and_no_input():
    from hwopt.ir import Graph
    g = Graph()
    g.add("x", "input", spec=TensorSpec((1, 2)))
    with pytest.raises(hwopt.IRError, match="exactly one output"):
        g.verify()
    with pytest.raises(hwopt.IRError, match="no input"):
        Graph().verify()


def test_grouped_conv_attrs_must_divide(g):
    conv = [n for n in g if n.op == "conv2d"][1]
    edit(g, conv.name, attrs={**conv.attrs, "groups": 3})
    with pytest.raises(hwopt.IRError, match="groups=3 does not divide"):
        g.verify()


def test_graph_add_checks_eagerly():
    from hwopt.ir import Graph
    g = Graph()
    g.add("x", "input", spec=TensorSpec((1, 3, 8, 8)))
    with pytest.raises(hwopt.IRError, match="conv2d expects input \\[N, 4, H, W\\]"):
        g.add("c", "conv2d", ["x"], dict(in_channels=4, out_channels=2, kernel_size=(1, 1), stride=(1, 1),
                                        padding=(0, 0), dilation=(1, 1), groups=1), {"weight": torch.ones(2, 4, 1, 1)})
    with pytest.raises(hwopt.IRError, match="already exists"):
        g.add("x", "input", spec=TensorSpec((1, 3, 8, 8)))
