"""Pass manager: text pipelines round-trip, errors name the bad pass/option, passes never mutate input."""
import dataclasses
from typing import Literal

import pytest
import torch
from hypothesis import given, settings
from torch import nn

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


def test_fold_bn_folds_a_bn_that_another_bn_reads():
    """RepGhost's pattern: conv -> bn1 -> {conv2, bn2}. bn1 folds into the conv; bn2, which read bn1, then
    reads the conv, which has two readers, so bn2 stays (it used to raise a KeyError for bn1's old name)."""
    class RepGhost(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn1 = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
            self.cheap, self.bn2 = nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.bn1(self.conv(x))
            return self.cheap(y) + self.bn2(y)
    torch.manual_seed(0)
    m = RepGhost().eval()
    with torch.no_grad():
        for bn in (m.bn1, m.bn2):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 8, 8)
    g = hwopt.lift(m, x)
    folded = hwopt.PassManager.parse("fold-bn").run(g)
    assert [n.name for n in folded if n.op == "batch_norm"] == ["bn2"] and folded["bn2"].inputs == ("conv",)
    assert_close_outputs(g, folded, x, atol=1e-5, rtol=1e-4)


def test_drop_identity_bypasses_arithmetic_identities():
    """x + 0 (timm's MobileOne adds a Python 0 for an absent branch), x · 1, x / 1 are bypassed; 0 - x,
    1 / x and x + 1 are not."""
    class Arith(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            y = self.c(x)
            a = ((y + 0) * 1) / 1 - 0
            return a, 0 - y, 1 / (torch.sigmoid(y) + 1)
    m = Arith().eval()
    x = torch.randn(2, 1, 6, 6)
    g = hwopt.lift(m, x)
    out = hwopt.PassManager.parse("drop-identity").run(g)
    assert sorted(n.op for n in out if n.op not in ("input", "output", "conv2d")) == ["add", "div", "sigmoid", "sub"]
    assert out.output.inputs[0] == "c"
    assert_close_outputs(g, out, x, atol=0, rtol=0)


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


# --- the pass layer: pipelines nest, lazy registry, instruments, declared option constraints -------

def test_canonicalize_is_a_pipeline_and_pipelines_nest():
    from hwopt.passes.canonicalize import Canonicalize
    canon = hwopt.PassManager.parse("canonicalize").passes[0]
    assert isinstance(canon, hwopt.PassManager) and isinstance(canon, Canonicalize)
    assert [p.name for p in canon.passes] == ["drop-identity", "fold-bn", "dce"] and str(canon) == "canonicalize"
    g = hwopt.lift(models.get("mnist_cnn"), torch.randn(1, 1, 28, 28))
    ctx = hwopt.PassContext(instruments=[hwopt.StatsInstrument()])
    outer = hwopt.PassManager([hwopt.PassManager.parse("canonicalize"), hwopt.make_pass("dce")])
    out = outer.run(g, ctx)
    assert [r["pass"] for r in ctx.records] == ["drop-identity", "fold-bn", "dce", "dce"]
    assert ctx.records[1]["after"]["params"] < ctx.records[1]["before"]["params"]  # verified and instrumented inside
    assert sum(n.op == "batch_norm" for n in out) == 0


def test_instruments_enter_exit_once_and_should_run_skips():
    events = []

    class Log(hwopt.Instrument):
        def enter(self, ctx):
            events.append("enter")

        def exit(self, ctx):
            events.append("exit")

        def before(self, p, graph, ctx):
            events.append(p.name)

    g = hwopt.lift(models.get("mnist_cnn"), torch.randn(1, 1, 28, 28))
    ctx = hwopt.PassContext(instruments=[Log(), hwopt.passmanager.SkipPasses("fold-bn")])
    out = hwopt.PassManager.parse("canonicalize,dce").run(g, ctx)
    assert events == ["enter", "canonicalize", "drop-identity", "dce", "dce", "exit"]
    assert {"pass": "fold-bn", "skipped": True} in ctx.records
    assert sum(n.op == "batch_norm" for n in out) == sum(n.op == "batch_norm" for n in g)


def test_registry_loads_only_the_passes_a_pipeline_names():
    import subprocess
    import sys
    code = ("import sys, hwopt; hwopt.PassManager.parse('fold-bn,dce'); "
            "print(sorted(m for m in sys.modules if m.startswith('hwopt.passes.')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['hwopt.passes.dce', 'hwopt.passes.fold_bn']"
    from hwopt.passmanager import known_passes
    assert {"channel-prune", "obd", "morphnet", "magnitude-prune", "nas", "canonicalize"} <= set(known_passes())


def test_option_constraints_are_declared_and_checked_once_with_the_pass_name():
    from hwopt.passmanager import option

    calls = []

    @register_pass("test-constrained")
    class Constrained(Pass):
        rate: float = option(0.5, gt=0.0, le=1.0)
        mode: str = option("a", choices=("a", "b"))
        epochs: float = option(0.0, ge=0.0)

        def validate(self):
            calls.append(1)

        def requirements(self):
            return ("train",) if self.epochs > 0 else ()

        def run(self, graph, ctx):
            return graph

    for text, match in [("test-constrained{rate=0}", r"option 'rate' of pass 'test-constrained': must be > 0.0, got 0.0"),
                        ("test-constrained{rate=2}", r"must be <= 1.0"),
                        ("test-constrained{mode=c}", r"option 'mode' of pass 'test-constrained': 'c' is not one of")]:
        with pytest.raises(hwopt.PassError, match=match):
            hwopt.PassManager.parse(text)
    with pytest.raises(hwopt.PassError, match="option 'rate' .*expected float, got 'x'"):
        Constrained(rate="x")
    calls.clear()
    hwopt.PassManager.parse("test-constrained{rate=0.25}")
    assert calls == [1]  # validated once
    g = hwopt.lift(models.get("mnist_cnn"), torch.randn(1, 1, 28, 28))
    hwopt.PassManager.parse("test-constrained").run(g)  # needs nothing without epochs
    with pytest.raises(hwopt.PassError, match="'test-constrained' needs train"):
        hwopt.PassManager.parse("test-constrained{epochs=1.0}").run(g)


def test_every_bundled_pass_is_in_the_registry_under_its_module():
    import re
    from pathlib import Path

    from hwopt.passmanager import BUILTIN_PASSES, pass_class
    root = Path(hwopt.passmanager.__file__).resolve().parents[1] / "passes"
    found = {}
    for f in root.rglob("*.py"):
        mod = "hwopt.passes." + ".".join(f.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        for name in re.findall(r'(?:register_pass|pipeline)\("([a-z0-9-]+)"', f.read_text()):
            found[name] = mod
    assert found == BUILTIN_PASSES
    assert all(pass_class(n).name == n for n in BUILTIN_PASSES)
