"""Pass manager: text pipelines round-trip, errors name the bad pass/option, passes never mutate input."""
import dataclasses
from typing import Literal

import pytest
import torch
from hypothesis import given, settings

import hwopt
from hwopt import models
from hwopt.passmanager import PASSES, Pass, register_pass
from hwopt.testing import assert_close_outputs, fingerprint
from hwopt.testing.strategies import graphs_with_input, passes, pipelines


@register_pass("test-scale-first-conv")
@dataclasses.dataclass(frozen=True)
class _ScaleFirstConv(Pass):
    """A user-defined pass, registered with the decorator."""
    factor: float = 1.0
    mode: Literal["a", "b"] = "a"
    names: tuple[str, ...] = ()
    enabled: bool = True

    def run(self, graph, ctx):
        conv = next((n for n in graph if n.op == "conv2d"), None)
        if conv is None or self.factor == 1.0:
            return graph
        g = graph.copy()
        n = g[conv.name].copy()
        n.params["weight"] = n.params["weight"] * self.factor
        g.replace(n)
        return g


@settings(max_examples=150)
@given(pipelines())
def test_pipelines_round_trip_through_text(pm):
    assert hwopt.PassManager.parse(str(pm)) == pm
    assert str(hwopt.PassManager.parse(str(pm))) == str(pm)


def test_parse_options_and_print_back():
    pm = hwopt.PassManager.parse("fold-bn, test-scale-first-conv{factor=2.5,mode=b,names=[x,conv1.weight]} ,dce")
    p = pm.passes[1]
    assert (p.factor, p.mode, p.names) == (2.5, "b", ("x", "conv1.weight"))
    assert str(pm) == "fold-bn,test-scale-first-conv{factor=2.5,mode=b,names=[x,conv1.weight]},dce"


@pytest.mark.parametrize("text, match", [
    ("fold-bn,frobnicate", r"unknown pass 'frobnicate'; known passes: .*canonicalize.*dce.*fold-bn"),
    ("test-scale-first-conv{speed=3}", r"has no option 'speed'; its options: factor, mode, names, enabled"),
    ("test-scale-first-conv{factor=fast}", r"option 'factor' of pass 'test-scale-first-conv': expected float, got 'fast'"),
    ("test-scale-first-conv{mode=c}", r"option 'mode' .*'c' is not one of \['a', 'b'\]"),
    ("test-scale-first-conv{enabled=maybe}", r"option 'enabled' .*expected true or false"),
    ("test-scale-first-conv{names=x}", r"option 'names' .*expected a list"),
    ("test-scale-first-conv{factor}", r"must be key=value"),
    ("fold-bn{", r"unbalanced|expected"),
])
def test_bad_pipelines_are_specific_errors(text, match):
    with pytest.raises(hwopt.PassError, match=match):
        hwopt.PassManager.parse(text)


def test_duplicate_registration_is_refused():
    with pytest.raises(hwopt.PassError, match="already registered"):
        register_pass("fold-bn")(type("Other", (Pass,), {"run": lambda self, g, c: g}))


@settings(max_examples=60)
@given(graphs_with_input(), passes(names=["fold-bn", "dce", "canonicalize", "test-scale-first-conv"]))
def test_passes_never_mutate_their_input_and_leave_verified_graphs(gx, p):
    g, x = gx
    fp = fingerprint(g)
    out = hwopt.PassManager([p]).run(g)
    assert fingerprint(g) == fp
    out.verify()


@settings(max_examples=100)
@given(graphs_with_input())
def test_fold_bn_and_canonicalize_are_exact(gx):
    g, x = gx
    folded = hwopt.PassManager.parse("fold-bn").run(g)
    assert_close_outputs(g, folded, x, atol=1e-5, rtol=1e-4)
    canon = hwopt.PassManager.parse("canonicalize").run(g)
    assert_close_outputs(g, canon, x, atol=1e-5, rtol=1e-4)
    assert not any(n.op == "identity" for n in canon)


def test_fold_bn_removes_every_foldable_bn_of_resnet18():
    x = torch.randn(1, 3, 64, 64)
    g = hwopt.lift(models.get("resnet18"), x)
    folded = hwopt.PassManager.parse("fold-bn").run(g)
    assert sum(n.op == "batch_norm" for n in g) == 20 and sum(n.op == "batch_norm" for n in folded) == 0
    assert_close_outputs(g, folded, x, atol=1e-4, rtol=1e-4)


def test_dce_removes_dead_nodes():
    g = hwopt.lift(models.get("lenet5"), torch.randn(1, 1, 28, 28))
    g2 = g.copy()
    g2.add("dead_relu", "relu", [next(n.name for n in g if n.op == "conv2d")])
    g2.add("dead_relu2", "relu", ["dead_relu"])
    out = hwopt.PassManager.parse("dce").run(g2)
    assert "dead_relu" not in out and "dead_relu2" not in out and "dead_relu" in g2
    assert hwopt.PassManager.parse("dce").run(g) is g  # nothing to do: unchanged, same object


def test_instruments_record_timing_and_figures(tmp_path):
    g = hwopt.lift(models.get("mnist_cnn"), torch.randn(1, 1, 28, 28))
    ctx = hwopt.PassContext(instruments=[hwopt.StatsInstrument(), hwopt.passmanager.DumpIR(tmp_path)])
    pm = hwopt.PassManager.parse("fold-bn,dce")
    pm.run(g, ctx)
    assert [r["pass"] for r in ctx.records] == ["fold-bn", "dce"]
    assert ctx.records[0]["changed"] and not ctx.records[1]["changed"]
    assert ctx.records[0]["after"]["params"] < ctx.records[0]["before"]["params"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00-fold-bn.txt", "01-dce.txt"]
    assert '"pipeline": "fold-bn,dce"' in pm.report(ctx)


def test_missing_context_is_reported_before_running():
    @register_pass("test-needs-train")
    @dataclasses.dataclass(frozen=True)
    class NeedsTrain(Pass):
        needs = ("train",)

        def run(self, graph, ctx):
            return graph
    g = hwopt.lift(models.get("mnist_cnn"), torch.randn(1, 1, 28, 28))
    with pytest.raises(hwopt.PassError, match="'test-needs-train' needs train"):
        hwopt.PassManager.parse("fold-bn,test-needs-train").run(g)


def test_invalid_result_is_caught_by_verification():
    @register_pass("test-breaks-graph")
    @dataclasses.dataclass(frozen=True)
    class Breaks(Pass):
        def run(self, graph, ctx):
            g = graph.copy()
            n = next(n for n in g if n.op == "conv2d").copy()
            n.params["weight"] = n.params["weight"][:1]
            g.replace(n)
            return g
    g = hwopt.lift(models.get("mnist_cnn"), torch.randn(1, 1, 28, 28))
    with pytest.raises(hwopt.PassError, match="'test-breaks-graph' produced an invalid graph.*weight"):
        hwopt.PassManager.parse("test-breaks-graph").run(g)
