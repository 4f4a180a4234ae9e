"""channel-prune: exact, verified, lowerable on every reference model and on random graphs; budgets met."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hwopt
from hwopt import models
from hwopt.channels import channel_groups
from hwopt.passes.channel_prune import ChannelPrune, eligible_groups, graph_macs, kept_levels, unit_importance
from hwopt.testing import assert_close_outputs, fingerprint

SMALL_IMAGENET = (1, 3, 64, 64)


@functools.lru_cache(maxsize=None)
def _lifted(name: str):
    torch.manual_seed(0)
    model = models.get(name).eval()
    shape = models.MODELS[name][1]
    if shape[1:] == (3, 224, 224):
        shape = SMALL_IMAGENET
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    return hwopt.lift(model, x), x


def _run(p: ChannelPrune, g, ctx=None):
    return p.run(g, ctx or hwopt.PassContext())


def _check_lowerable(g, x, classes):
    y = hwopt.lower(g)(x)
    assert y.shape == (x.shape[0], classes) and torch.isfinite(y).all()


def _zero_dead(g: hwopt.Graph, ratio: float, seed: int = 0):
    """A copy of g where, in each eligible group, round(ratio * size) random units have every producer
    row and consumer column zeroed (so they are dead and have zero importance); and the chosen units."""
    rng = np.random.default_rng(seed)
    groups = channel_groups(g)
    chosen = {}
    z = g.copy()
    for gr in eligible_groups(g):
        k = min(round(ratio * gr.size), gr.size - 1)
        if k == 0 or not gr.consumers:
            continue
        units = np.sort(rng.choice(gr.size, k, replace=False))
        chosen[gr.id] = units
        for p in gr.producers:
            n = z[p]
            if n.op not in ("conv2d", "linear"):
                continue
            rows = torch.as_tensor(gr.members[p][units].ravel())
            n = n.copy()
            w = n.params["weight"].clone()
            w[rows] = 0
            n.params = {**n.params, "weight": w}
            z.replace(n)
        for c in gr.consumers:
            src = z[c].inputs[0]
            if src not in gr.members:
                continue
            cols = torch.as_tensor(gr.members[src][units].ravel())
            n = z[c].copy()
            w = n.params["weight"].clone()
            w[:, cols] = 0
            n.params = {**n.params, "weight": w}
            z.replace(n)
    return z.verify(), chosen, groups


def _classes(g):
    return g.output.spec.shape[1] if False else g[g.output.inputs[0]].spec.shape[1]


# ---------------------------------------------------------------------------------------------------
# every reference model


@pytest.mark.parametrize("name", list(models.MODELS))
def test_every_model_prunes_verified_lowerable_and_untouched(name):
    g, x = _lifted(name)
    before = fingerprint(g)
    classes = _classes(g)
    base = graph_macs(g)
    for p in (ChannelPrune(ratio=0.5, round_to=4), ChannelPrune(ratio=0.3, global_ranking=True, criterion="l2"),
              ChannelPrune(criterion="bn", macs_fraction=0.6)):
        out = _run(p, g)
        out.verify()
        _check_lowerable(out, x, classes)
        assert graph_macs(out) <= base
        if p.macs_fraction is not None:
            assert graph_macs(out) <= 0.6 * base
    assert fingerprint(g) == before


@pytest.mark.parametrize("name", list(models.MODELS))
def test_removing_zeroed_channels_is_exact(name):
    g, x = _lifted(name)
    z, chosen, _ = _zero_dead(g, 0.4)
    if not chosen:
        pytest.skip("no prunable group with consumers")
    out = _run(ChannelPrune(ratio=0.4, round_to=1, criterion="l1"), z)
    # the pass found exactly the dead units (zero importance) ...
    assert graph_macs(out) < graph_macs(z)
    # ... and removing them does not change the function
    assert_close_outputs(z, out, x, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------
# random graphs


def _strategies():
    return pytest.importorskip("hwopt.testing.strategies")


@settings(max_examples=25)
@given(data=st.data())
def test_random_graphs_dead_channels_exact(data):
    S = _strategies()
    module, x = data.draw(S.modules())
    g = hwopt.lift(module, x)
    before = fingerprint(g)
    ratio = data.draw(st.sampled_from([0.25, 0.5]))
    z, chosen, _ = _zero_dead(g, ratio, seed=data.draw(st.integers(0, 1000)))
    out = _run(ChannelPrune(ratio=ratio, round_to=1), z)
    out.verify()
    assert_close_outputs(z, out, x, atol=1e-5, rtol=1e-5)
    assert fingerprint(g) == before


@settings(max_examples=25)
@given(data=st.data())
def test_random_graphs_any_option_mix_verified_and_lowerable(data):
    S = _strategies()
    module, x = data.draw(S.modules())
    g = hwopt.lift(module, x)
    before = fingerprint(g)
    crit = data.draw(st.sampled_from(["l1", "l2", "bn"]))
    round_to = data.draw(st.sampled_from([1, 2, 4]))
    if data.draw(st.booleans()):
        p = ChannelPrune(criterion=crit, ratio=data.draw(st.sampled_from([0.2, 0.5, 0.9])), round_to=round_to,
                         global_ranking=data.draw(st.booleans()))
    else:
        p = ChannelPrune(criterion=crit, macs_fraction=data.draw(st.sampled_from([0.3, 0.6, 0.9])), round_to=round_to)
    try:
        out = _run(p, g)
    except hwopt.BudgetError as e:
        assert e.closest and p.macs_fraction is not None
        return
    out.verify()
    y = hwopt.lower(out)(x)
    assert y.shape == module(x).shape and torch.isfinite(y).all()
    if p.macs_fraction is not None:
        assert graph_macs(out) <= p.macs_fraction * graph_macs(g)
    assert fingerprint(g) == before


# ---------------------------------------------------------------------------------------------------
# budgets, rounding, protect


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "mnasnet_a1"])
@pytest.mark.parametrize("frac", [0.5, 0.25])
def test_mac_budget_met(name, frac):
    g, x = _lifted(name)
    out = _run(ChannelPrune(macs_fraction=frac, round_to=8), g)
    assert graph_macs(out) <= frac * graph_macs(g)
    assert graph_macs(out) >= 0.8 * frac * graph_macs(g)  # and not wildly overshot
    absolute = int(frac * graph_macs(g))
    assert graph_macs(_run(ChannelPrune(macs=float(absolute)), g)) <= absolute


def test_infeasible_budget_says_closest():
    g, _ = _lifted("mobilenet_v2")
    with pytest.raises(hwopt.BudgetError, match="closest reachable") as e:
        _run(ChannelPrune(macs_fraction=0.001), g)
    assert e.value.closest["macs"] > 0.001 * graph_macs(g)


def _target():
    T = pytest.importorskip("hwopt.targets")
    try:
        return T.load_target("host")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no host target yet: {e}")


def test_latency_budget_met():
    t = _target()
    g, x = _lifted("mobilenet_v2")
    lat = t.cost(g).latency_ms
    ctx = hwopt.PassContext(target=t)
    out = ChannelPrune(latency_ms=0.6 * lat, round_to="target").run(g, ctx)
    assert t.cost(out).latency_ms <= 0.6 * lat
    for gr in eligible_groups(out):
        for p in gr.producers:
            n = out[p]
            width = n.spec.channels
            assert width % t.channel_multiple == 0 or width == g[p].spec.channels
    with pytest.raises(hwopt.BudgetError, match="closest"):
        ChannelPrune(latency_ms=1e-6).run(g, ctx)
    with pytest.raises(hwopt.PassError, match="latency_ms"):
        ChannelPrune(latency_ms=1.0).run(g, hwopt.PassContext())


@pytest.mark.parametrize("multiple", [8, 16])
def test_round_to_gives_multiples_never_wider(multiple):
    g, x = _lifted("resnet18")
    out = _run(ChannelPrune(ratio=0.45, round_to=multiple), g)
    for n in out.nodes.values():
        if n.op == "conv2d":
            w, w0 = n.attrs["out_channels"], g[n.name].attrs["out_channels"]
            assert w <= w0
            assert w == w0 or w % multiple == 0


def test_kept_levels():
    assert kept_levels(10, 1) == list(range(10, 0, -1))
    assert kept_levels(24, 8) == [24, 16, 8]
    assert kept_levels(20, 8) == [20, 16, 8]
    assert kept_levels(6, 8) == [6]
    assert kept_levels(32, 8, unit_channels=4) == list(range(32, 0, -2))  # units of 4 channels: 2 units = 8


def test_never_removes_a_whole_group():
    g, x = _lifted("mnist_cnn")
    out = _run(ChannelPrune(ratio=0.99, round_to=1), g)
    for gr in channel_groups(out):
        assert gr.size >= 1
    _check_lowerable(out, x, 10)


def test_protect_keeps_group():
    g, x = _lifted("resnet18")
    out = _run(ChannelPrune(ratio=0.5, protect=("stem.0.0", "layer4")), g)
    assert out["stem.0.0"].attrs["out_channels"] == g["stem.0.0"].attrs["out_channels"]
    assert out["layer4.0.conv1.0"].attrs["out_channels"] == g["layer4.0.conv1.0"].attrs["out_channels"]
    assert out["layer1.0.conv1.0"].attrs["out_channels"] < g["layer1.0.conv1.0"].attrs["out_channels"]
    with pytest.raises(hwopt.PassError, match="protect"):
        _run(ChannelPrune(ratio=0.5, protect=("no.such.node",)), g)


def test_importance_sees_both_sides():
    g, _ = _lifted("mnist_cnn")
    groups = channel_groups(g)
    imp = unit_importance(g, "l1", groups=groups)
    gr = next(gr for gr in eligible_groups(g) if gr.consumers)
    z, chosen, _ = _zero_dead(g, 0.25)
    imp_z = unit_importance(z, "l1")
    assert np.all(imp_z[gr.id][chosen[gr.id]] == 0) and np.all(imp[gr.id] > 0)


# ---------------------------------------------------------------------------------------------------
# options as text, bad options, context requirements


def test_text_round_trip():
    for text in ["channel-prune{ratio=0.5}",
                 "channel-prune{criterion=l2,ratio=0.4,global_ranking=true,round_to=8,protect=[stem.0.0,fc]}",
                 "channel-prune{criterion=bn,macs_fraction=0.5,round_to=target,steps=3,finetune_epochs=0.5}",
                 "channel-prune{criterion=taylor,latency_ms=2.5}",
                 "canonicalize,channel-prune{macs=150000000.0,round_to=16}"]:
        pm = hwopt.PassManager.parse(text)
        assert str(pm) == text
        assert hwopt.PassManager.parse(str(pm)) == pm


@pytest.mark.parametrize("text,option", [
    ("channel-prune{criterion=l3,ratio=0.5}", "criterion"),
    ("channel-prune{ratio=1.5}", "ratio"),
    ("channel-prune{ratio=-0.1}", "ratio"),
    ("channel-prune", "ratio"),
    ("channel-prune{ratio=0.5,macs_fraction=0.5}", "ratio"),
    ("channel-prune{macs=0.5}", "macs_fraction=0.5"),
    ("channel-prune{macs=0}", "macs"),
    ("channel-prune{latency_ms=-1}", "latency_ms"),
    ("channel-prune{ratio=0.5,round_to=0}", "round_to"),
    ("channel-prune{ratio=0.5,round_to=simd}", "round_to"),
    ("channel-prune{ratio=0.5,steps=0}", "steps"),
    ("channel-prune{ratio=0.5,finetune_epochs=-1}", "finetune_epochs"),
    ("channel-prune{ratio=0.5,global_ranking=maybe}", "global_ranking"),
    ("channel-prune{ratio=0.5,bogus=1}", "bogus"),
])
def test_bad_options_name_the_option(text, option):
    with pytest.raises(hwopt.PassError, match=option):
        hwopt.PassManager.parse(text)


def test_context_requirements():
    g, _ = _lifted("mnist_cnn")
    with pytest.raises(hwopt.PassError, match="round_to"):
        ChannelPrune(ratio=0.5, round_to="target").run(g, hwopt.PassContext())
    with pytest.raises(hwopt.PassError, match="finetune_epochs"):
        ChannelPrune(ratio=0.5, finetune_epochs=1.0).run(g, hwopt.PassContext())
    with pytest.raises(hwopt.PassError, match="ctx.data"):
        ChannelPrune(ratio=0.5, criterion="taylor").run(g, hwopt.PassContext())


def test_taylor_uses_ctx_data_and_zero_saliency_for_dead_units():
    g, x = _lifted("mnist_cnn")
    z, chosen, _ = _zero_dead(g, 0.25)
    gen = torch.Generator().manual_seed(0)
    ctx = hwopt.PassContext()
    ctx.data = [(torch.randn(8, 1, 28, 28, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(3)]
    out = ChannelPrune(ratio=0.25, round_to=1, criterion="taylor").run(z, ctx)
    assert_close_outputs(z, out, x)


def test_steps_and_finetune_call_train_and_keep_trained_weights():
    g, x = _lifted("mnist_cnn")
    calls = []

    def train(module, *, epochs=1.0, penalty=None):
        calls.append(epochs)
        with torch.no_grad():
            for m in module.modules():
                if isinstance(m, torch.nn.Linear):
                    m.bias.add_(1.0)

    ctx = hwopt.PassContext(train=train)
    out = ChannelPrune(ratio=0.5, steps=3, finetune_epochs=0.25).run(g, ctx)
    assert calls == [0.25, 0.25, 0.25]
    lin = next(n for n in out.nodes.values() if n.op == "linear")
    assert torch.allclose(lin.params["bias"], g[lin.name].params["bias"] + 3.0)
    one_shot = _run(ChannelPrune(ratio=0.5), g)
    assert graph_macs(out) == pytest.approx(graph_macs(one_shot), rel=0.05)


def test_ratio_zero_and_met_budget_return_input():
    g, _ = _lifted("mnist_cnn")
    assert _run(ChannelPrune(ratio=0.0), g) is g
    assert _run(ChannelPrune(macs_fraction=1.0), g) is g


def test_pass_manager_runs_it():
    g, x = _lifted("mobilenet_v2")
    pm = hwopt.PassManager.parse("channel-prune{ratio=0.5,round_to=8}")
    out = pm.run(g, hwopt.PassContext())
    _check_lowerable(out, x, 1000)


def test_channel_sensitivity(tmp_path):
    from hwopt.passes.channel_prune import channel_sensitivity
    g, x = _lifted("mnist_cnn")
    y = hwopt.lower(g)(x).argmax(1)
    res = channel_sensitivity(g, lambda m: float((m(x).argmax(1) == y).float().mean()), (0.5,),
                              plot=str(tmp_path / "s.png"))
    assert res
    assert (tmp_path / "s.png").exists()


@pytest.mark.slow
def test_mnist_half_macs_short_finetune_loses_at_most_one_point():
    """Short version of bench/mnist_channel_prune.py (full run: 50k x 2 epochs, 0.5-epoch fine-tune).

    ~1 min on 2 loaded cores, hence slow. With 6k examples / 0.5-epoch fine-tune the drop was 2.7 pt
    (the baseline is undertrained there); 12k x 2 epochs + 1-epoch fine-tune lost 0.55 pt."""
    pytest.importorskip("mnist")
    from hwopt import data
    tr = data.mnist_trainer(12000, "val", 2000, lr=0.01)
    torch.manual_seed(0)
    model = models.lenet5()
    tr.train(model, epochs=2)
    acc0 = tr.evaluate(model)
    g = hwopt.lift(model, tr.x_train[:1])
    ctx = hwopt.PassContext(train=tr.train, evaluate=tr.evaluate)
    out = ChannelPrune(criterion="l1", macs_fraction=0.5, finetune_epochs=1.0).run(g, ctx)
    assert graph_macs(out) <= 0.5 * graph_macs(g)
    acc = tr.evaluate(hwopt.lower(out))
    assert acc0 > 0.9 and acc >= acc0 - 0.01, (acc0, acc)
