"""Guard for `hwopt.frontend_trace.ConcreteTracer`, which builds torch.fx graphs through fx's private API
(`Graph._graph_namespace`, `Graph._insert`, `Graph._find_nodes_lookup_table`, `Graph._target_to_str`,
`fx._symbolic_trace._autowrap_check` ...) to trace ~2x faster than the stock `fx.Tracer`.

A torch upgrade that changes that API may not raise: it could leave a graph whose linked list, name table
or node index disagree, or record other ops than fx would. So each model here is traced twice, by the fast
tracer and by fx's stock `Tracer` with the same leaf modules, and the two graphs must record the same ops
on the same arguments (up to the differences the fast tracer makes on purpose, normalised below), and the
fast tracer's graph must pass fx's own consistency checks.
"""
from __future__ import annotations

import operator

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

from hwopt import models
from hwopt.frontend_trace import TRANSPARENT, Const, ConcreteTracer
from hwopt.testing import zoo

# The fast tracer records `z += y` as the in-place operator (fx's proxies have none, so stock fx records `+`).
_INPLACE = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul}


def _stock_leaf(m: nn.Module) -> bool:
    return False  # ConcreteTracer falls back to fx's own rule (torch.nn modules stay calls)


def _fast_graph(model: nn.Module, x: torch.Tensor) -> fx.Graph:
    return ConcreteTracer((x,), leaf=_stock_leaf).trace(model)


def _signature(graph: fx.Graph, root: nn.Module) -> list[tuple]:
    """The graph's ops in order, each as (op, target, args, kwargs) with node arguments replaced by the
    index of the op that made them. Normalised: an fx `get_attr` of a tensor and the fast tracer's `Const`
    are both ("const", shape); a call of a module the fast tracer traces through (`TRANSPARENT`, returning
    its input) stands for its input; in-place operators are their out-of-place twins."""
    index: dict[fx.Node, object] = {}
    ops: list[tuple] = []

    def norm(a):
        if isinstance(a, fx.Node):
            return index[a]
        if isinstance(a, Const):
            return ("const", tuple(a.t.shape))
        if isinstance(a, (list, tuple)):
            return tuple(norm(x) for x in a)
        if isinstance(a, dict):
            return tuple(sorted((k, norm(v)) for k, v in a.items()))
        return a

    for node in graph.nodes:
        if node.op == "placeholder":
            index[node] = ("input", node.target)
        elif node.op == "get_attr":
            value = root
            for part in node.target.split("."):
                value = getattr(value, part)
            index[node] = ("const", tuple(value.shape))
        elif node.op == "call_module" and type(root.get_submodule(node.target)) in TRANSPARENT:
            index[node] = norm(node.args[0])
        else:
            target = _INPLACE.get(node.target, node.target)
            index[node] = ("op", len(ops))
            ops.append((node.op, target, norm(node.args), norm(node.kwargs)))
    return ops


def _assert_consistent(graph: fx.Graph) -> None:
    """What the private-API construction must keep true: fx's lint (links, order, names), the node count,
    the op/target index, and the name table (a name asked for again is made unique)."""
    graph.lint()
    nodes = list(graph.nodes)
    assert len(graph.nodes) == len(nodes)
    for op in ("placeholder", "call_module", "call_method", "output"):
        assert graph.find_nodes(op=op) == [n for n in nodes if n.op == op], op
    for target in {n.target for n in nodes if n.op == "call_function"}:  # fx indexes functions by target
        assert graph.find_nodes(op="call_function", target=target) == [
            n for n in nodes if n.op == "call_function" and n.target == target], target
    names = [n.name for n in nodes]
    assert len(set(names)) == len(names)
    taken = next(n for n in nodes if n.op == "call_module")
    fresh = graph.create_node("call_function", torch.relu, (taken,), name=taken.name)
    assert fresh.name != taken.name and fresh.name not in names
    graph.erase_node(fresh)
    graph.lint()


MODELS = {
    "lenet5": (lambda: models.lenet5(), (1, 1, 28, 28)),
    "mnist_cnn": (lambda: models.mnist_cnn(width=0.5), (1, 1, 28, 28)),
    "resnet18": (lambda: models.resnet18(num_classes=10), (1, 3, 64, 64)),
    "mobilenet_v2": (lambda: models.mobilenet_v2(num_classes=10, width_mult=0.5), (1, 3, 64, 64)),
    "mobilenet_v3_small": (lambda: models.mobilenet_v3_small(num_classes=10), (1, 3, 64, 64)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fast_tracer_records_what_stock_fx_records(name):
    make, shape = MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(shape)
    fast = _fast_graph(model, x)
    _assert_consistent(fast)
    stock = fx.Tracer().trace(model)
    assert _signature(fast, model) == _signature(stock, model)


ZOO = ("torchvision/resnet18", "torchvision/mobilenet_v2", "torchvision/mnasnet0_5")


@pytest.mark.skipif(not zoo.available(), reason="timm and torchvision are not installed (the zoo extra)")
@pytest.mark.parametrize("name", ZOO)
def test_fast_tracer_matches_stock_fx_on_public_models(name):
    model, x = zoo.build(name, size=64)
    fast = _fast_graph(model, x)
    _assert_consistent(fast)
    assert _signature(fast, model) == _signature(fx.Tracer().trace(model), model)


def test_the_comparison_sees_a_different_op():
    """The signature is not blind: a model whose forward differs by one op compares unequal."""
    class A(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return torch.relu(self.conv(x))

    class B(A):
        def forward(self, x):
            return torch.sigmoid(self.conv(x))

    x = torch.randn(1, 1, 8, 8)
    a, b = A().eval(), B().eval()
    assert _signature(_fast_graph(a, x), a) == _signature(fx.Tracer().trace(a), a)
    assert _signature(_fast_graph(a, x), a) != _signature(fx.Tracer().trace(b), b)
