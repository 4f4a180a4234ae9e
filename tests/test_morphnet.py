"""morphnet: expand meets every resource's budget within 2 %; the regulariser's gradient is λ × marginal cost;
shrink never raises cost; unreachable budgets are BudgetErrors; options round-trip; inputs untouched."""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

import hwopt
from hwopt import models
from hwopt.channels import channel_groups, remove_channels, resize_groups
from hwopt.passmanager import PassManager, make_pass, parse_pass
from hwopt.passes.morphnet import (DEFAULT_SHRINK_TO, MorphNet, Regularizer, WidthModel, dead_units, expand,
                                   expand_sizes, floor_units, group_widths, loss_scale, shrink, unit_costs, unit_gammas,
                                   units_to_budget)
from hwopt.passkit import resource_value
from hwopt.targets import load_target
from hwopt.testing import fingerprint

RESOURCES = ("macs", "flash_bytes", "latency_ms", "energy_mj")
TARGETS = ("cortex-a72", "cortex-m7")


@functools.lru_cache(maxsize=None)
def _target(name):
    return load_target(name)


@functools.lru_cache(maxsize=None)
def _lifted(name: str):
    torch.manual_seed(0)
    if name == "mobilenet_v2":
        m, x = models.mobilenet_v2(num_classes=10, width_mult=0.5), torch.randn(1, 3, 32, 32)
    elif name == "resnet18":
        m, x = models.resnet18(num_classes=10), torch.randn(1, 3, 32, 32)
    else:
        m, x = models.mnist_cnn(), torch.randn(1, 1, 28, 28)
    return hwopt.lift(m.eval(), x), x


@functools.lru_cache(maxsize=None)
def _shrunk(name: str):
    """A stand-in for a shrunk network: every prunable group at a random width (seeded)."""
    g, _ = _lifted(name)
    rng = np.random.default_rng(1)
    sizes = {gr.id: int(rng.integers(2, gr.size + 1)) for gr in channel_groups(g) if gr.prunable}
    return resize_groups(g, sizes)


def _randomise_gammas(g: hwopt.Graph, seed: int = 0, low: float = 0.0) -> hwopt.Graph:
    gen = torch.Generator().manual_seed(seed)
    new = g.copy()
    for n in g.nodes.values():
        if n.op == "batch_norm":
            m = new[n.name].copy()
            w = torch.rand(n.params["weight"].shape, generator=gen) * 2 - 1
            m.params = {**n.params, "weight": torch.where(w.abs() < low, torch.sign(w) * low, w)}
            new.replace(m)
    return new


# --------------------------------------------------------------------------- expand (done-when 1)

@pytest.mark.parametrize("net", ["mobilenet_v2", "resnet18"])
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("resource", RESOURCES)
def test_expand_meets_budget_within_2pct(net, target, resource):
    T = _target(target)
    g0, x = _lifted(net)
    shrunk = _shrunk(net)
    budget = resource_value(g0, resource, T)
    assert resource_value(shrunk, resource, T) < budget
    out, info = expand(shrunk, budget, resource, T, round_to=T.channel_multiple)
    cost = resource_value(out, resource, T)
    assert cost <= budget
    assert cost >= 0.98 * budget, (cost / budget, info)
    assert cost == pytest.approx(info["cost"])
    mult = T.channel_multiple
    for gr in channel_groups(out):
        if gr.prunable:
            assert gr.size % mult == 0, (gr, mult)
    assert hwopt.lower(out)(x).shape == (1, 10)


@pytest.mark.parametrize("resource", RESOURCES)
def test_width_model_matches_resize_groups(resource):
    T = _target("cortex-m7")
    g, _ = _lifted("mobilenet_v2")
    wm = WidthModel(g, resource, T)
    rng = np.random.default_rng(3)
    for _ in range(2):
        sizes = {gid: int(rng.integers(2, 2 * wm.base[gid])) for gid in wm.prunable}  # 1: see _min_units
        assert wm.cost(sizes) == pytest.approx(resource_value(resize_groups(g, sizes), resource, T), rel=1e-9)


def test_expand_multiple_round_to_and_flops_without_target():
    g = _shrunk("mobilenet_v2")
    budget = 2.0 * resource_value(g, "macs")
    sizes, info = expand_sizes(g, budget, "macs", None, round_to=8)
    assert all(s % 8 == 0 for s in sizes.values())
    assert 0.98 * budget <= info["cost"] <= budget


# --------------------------------------------------------------------------- budget below the minimum

@pytest.mark.parametrize("resource", ["macs", "latency_ms"])
def test_budget_below_reachable_minimum_is_budget_error(resource):
    T = _target("cortex-a72")
    g, _ = _lifted("mnist_cnn")
    wm = WidthModel(g, resource, T)
    minimum = wm.cost({gid: T.channel_multiple for gid in wm.prunable})
    with pytest.raises(hwopt.BudgetError) as e:
        expand(g, 0.5 * minimum, resource, T, round_to=T.channel_multiple)
    assert e.value.closest["minimum"] == pytest.approx(minimum)
    assert f"{minimum:.6g}" in str(e.value)
    # the minimum itself is reachable
    out, _ = expand(g, minimum, resource, T, round_to=T.channel_multiple)
    assert resource_value(out, resource, T) <= minimum
    # and through the pass
    with pytest.raises(hwopt.BudgetError, match="reachable minimum"):
        MorphNet(resource=resource, budget=0.5 * minimum, epochs=0, retrain_epochs=0).run(g, hwopt.PassContext(target=T))


# --------------------------------------------------------------------------- the regulariser (done-when 2)

@pytest.mark.parametrize("net,resource,target", [("mnist_cnn", "macs", None), ("mnist_cnn", "latency_ms", "cortex-a72"),
                                                 ("mnist_cnn", "params", None), ("resnet18", "energy_mj", "cortex-m7"),
                                                 ("resnet18", "macs", None)])
def test_regulariser_gradient_is_lambda_times_marginal_cost(net, resource, target):
    T = _target(target) if target else None
    g = _randomise_gammas(_lifted(net)[0], low=0.05)
    lam = 0.37 / resource_value(g, resource, T)
    reg = Regularizer(g, resource, T, strength=lam)
    module = hwopt.lower(g)
    pen = reg(module)
    pen.backward()
    groups = channel_groups(g)
    cost = resource_value(g, resource, T)
    checked = 0
    for gr in reg.groups:
        # the coefficient is the marginal cost of one unit: what removing one unit saves (real graph)
        c = cost - resource_value(remove_channels(g, {gr.id: [0]}), resource, T)
        assert reg.coeffs[gr.id] == pytest.approx(c, rel=1e-9, abs=1e-12)
        bns = [(name, idx) for name, idx in gr.members.items() if g[name].op == "batch_norm"]
        grads = {name: module.get_submodule(name).weight.grad for name, _ in bns}
        gammas = {name: g[name].params["weight"] for name, _ in bns}
        for u in range(gr.size):
            # the unit's |γ| is the max over its BNs: the gradient goes to the argmax only
            cands = [(float(gammas[name][idx[u]].abs().max()), name, int(idx[u][int(gammas[name][idx[u]].abs().argmax())]))
                     for name, idx in bns]
            _, top, ch = max(cands)
            for name, idx in bns:
                for c_i in idx[u]:
                    want = lam * c * float(torch.sign(gammas[name][c_i])) if (name, c_i) == (top, ch) else 0.0
                    assert float(grads[name][c_i]) == pytest.approx(want, rel=1e-5, abs=1e-9 * abs(lam * c) + 1e-30)
                    checked += 1
    assert checked > 0
    # total value: λ Σ_g c_g Σ_u max|γ|
    assert float(pen.detach()) == pytest.approx(sum(reg.coeffs[gr.id] * float(t.detach().sum()) for gr, t in
                                           zip(reg.groups, reg.unit_terms(module).values())) * lam, rel=1e-5)


def test_flops_coefficient_is_the_papers_formula():
    """mnist_cnn: conv(1→16) 28², conv(16→32) 14², conv(32→64, stride 2) 7→4, flatten → linear(64·16 → 10).
    An output channel of conv2 costs 16·9·14² (its own MACs) + 64·9·4² (its share of conv3)."""
    g, _ = _lifted("mnist_cnn")
    c = unit_costs(g, "macs")
    widths = list(group_widths(g).items())
    by_label = {lab: c[gid] for (lab, _), gid in zip(widths, sorted(c))}
    assert list(by_label.values()) == [1 * 9 * 28 * 28 + 32 * 9 * 14 * 14, 16 * 9 * 14 * 14 + 64 * 9 * 4 * 4,
                                       32 * 9 * 4 * 4 + 16 * 10]


def test_refresh_uses_alive_widths():
    g = _randomise_gammas(_lifted("mnist_cnn")[0], low=0.05)
    # kill half of the last conv's BN channels: the first conv's... coefficients of its neighbours drop
    reg = Regularizer(g, "macs", None, strength=1.0, threshold=1e-2, refresh_steps=1)
    module = hwopt.lower(g)
    bn = [n for n in g if n.op == "batch_norm"][-1].name
    with torch.no_grad():
        module.get_submodule(bn).weight[: g[bn].spec.channels // 2] = 0.0
    before = dict(reg.coeffs)
    reg(module)
    reg(module)  # second call refreshes
    assert len(reg.history) == 2
    mid = sorted(reg.coeffs)[1]
    assert reg.coeffs[mid] < before[mid]  # its consumer conv lost half of its outputs


# --------------------------------------------------------------------------- shrink

def _fake_train(steps=5, lr=5.0):
    """A train callback that only follows the penalty's gradient on the BN scales (no data)."""
    calls = []

    def train(module, *, epochs=1.0, penalty=None):
        calls.append(epochs)
        params = [m.weight for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        opt = torch.optim.SGD(params, lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            loss = penalty(module) if penalty is not None else sum(p.sum() * 0 for p in params)
            loss.backward()
            opt.step()
        module.eval()
    train.calls = calls
    return train


@pytest.mark.parametrize("resource", RESOURCES)
@pytest.mark.parametrize("net", ["mnist_cnn", "resnet18"])
def test_shrink_never_raises_cost(net, resource):
    T = _target("cortex-a72")
    g = _randomise_gammas(_lifted(net)[0], low=0.0, seed=7)
    before = fingerprint(g)
    out, info = shrink(g, resource=resource, target=T, train=_fake_train(), epochs=1.0, strength=None, threshold=0.05)
    assert fingerprint(g) == before
    assert sum(info["removed_units"].values()) > 0
    for r in RESOURCES:
        assert resource_value(out, r, T) <= resource_value(g, r, T)
    for gr in channel_groups(out):
        assert gr.size >= 1


def test_dead_units_never_empty_a_group():
    g = _lifted("mnist_cnn")[0]
    z = g.copy()
    for n in g.nodes.values():
        if n.op == "batch_norm":
            m = z[n.name].copy()
            m.params = {**n.params, "weight": torch.zeros_like(n.params["weight"])}
            z.replace(m)
    rem = dead_units(z, 1e-2)
    out = remove_channels(z, rem)
    assert all(v == 1 for v in group_widths(out).values())


def test_shrink_stops_at_the_goal_in_gamma_order():
    T = _target("cortex-a72")
    g = _randomise_gammas(_lifted("mnist_cnn")[0], seed=3, low=0.2)  # no |γ| near any threshold
    cost = resource_value(g, "latency_ms", T)
    for frac in (0.8, 0.5, 0.3):
        removal = units_to_budget(g, frac * cost, "latency_ms", T)
        out = remove_channels(g, removal)
        assert resource_value(out, "latency_ms", T) <= frac * cost
        assert all(w >= 1 for w in group_widths(out).values())
        # one global |γ| order: every removed unit has a smaller |γ| than every kept one (largest per group kept)
        groups = {gr.id: gr for gr in channel_groups(g)}
        gone, kept = [], []
        for gid, gr in groups.items():
            if not gr.prunable:
                continue
            gam = unit_gammas(g, gr)
            idx = set(removal.get(gid, []))
            gone += [float(gam[u]) for u in idx]
            kept += [float(gam[u]) for u in range(gr.size) if u not in idx and float(gam[u]) < float(gam.max())]
        assert gone and max(gone) <= min(kept, default=float("inf"))
        # the fewest removals: putting back the last one breaks the goal
        last = max(((float(unit_gammas(g, groups[k])[u]), k, u) for k, us in removal.items() for u in us))
        fewer = {k: [u for u in us if (k, u) != last[1:]] for k, us in removal.items()}
        assert resource_value(remove_channels(g, {k: np.array(v) for k, v in fewer.items() if len(v)}),
                              "latency_ms", T) > frac * cost


def test_default_lambda_sets_the_penalty_level_with_the_loss():
    T = _target("cortex-a72")
    g, x = _lifted("mnist_cnn")
    assert loss_scale(g) == (pytest.approx(math.log(10)), loss_scale(g)[1])
    torch.manual_seed(0)
    batches = [(torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))) for _ in range(2)]
    ce, how = loss_scale(g, batches)
    with torch.no_grad():
        want = float(torch.nn.functional.cross_entropy(hwopt.lower(g).eval()(torch.cat([b[0] for b in batches])),
                                                       torch.cat([b[1] for b in batches])))
    assert ce == pytest.approx(want, rel=1e-5) and "ctx.data" in how
    for resource, scale in (("latency_ms", 1.0), ("macs", 1.0), ("latency_ms", 2.0)):
        _, info = shrink(g, resource=resource, target=T, train=_fake_train(steps=0), epochs=1.0,
                         data=batches if scale == 2.0 else None)
        reg = Regularizer(g, resource, T, strength=info["strength"])
        assert float(reg(hwopt.lower(g)).detach()) == pytest.approx(info["loss_scale"], rel=1e-5)  # whatever the unit
    assert info["loss_scale"] == pytest.approx(ce)


def test_default_pass_shrinks_without_any_gamma_reaching_a_threshold():
    """The training a user gives (here a few penalty steps, far too short to zero a γ) still shrinks: the
    stop is the budget, and the report says which λ it used."""
    T = _target("cortex-a72")
    g, x = _lifted("mnist_cnn")
    budget = 0.7 * resource_value(g, "latency_ms", T)
    ctx = hwopt.PassContext(target=T, train=_fake_train(steps=2, lr=1e-3), example_inputs=x)
    out = PassManager([MorphNet(resource="latency_ms", budget=budget, retrain_epochs=0)]).run(g, ctx)
    rep = ctx.records[-1]["info"]
    it = rep["iterations"][0]
    assert sum(it["shrink"]["removed_units"].values()) > 0
    # the floor: every group at the narrowest width expand can end at (one step of the target's multiple)
    floor = WidthModel(g, "latency_ms", T).cost({gr.id: floor_units(g, gr, T.channel_multiple)
                                                 for gr in channel_groups(g) if gr.prunable})
    assert it["shrunk_cost"] <= floor + DEFAULT_SHRINK_TO * (budget - floor)
    assert it["shrunk_cost"] > floor  # never cut to the floor: the |γ| order still says something
    assert 0.98 * budget <= resource_value(out, "latency_ms", T) <= budget
    assert rep["strength"][0] == it["shrink"]["strength"] > 0
    with pytest.raises(hwopt.PassError, match="'shrink_to'"):
        parse_pass("morphnet{shrink_to=none}")


# --------------------------------------------------------------------------- the pass

def test_pass_end_to_end_records_report_and_plot(tmp_path):
    T = _target("cortex-a72")
    g, x = _lifted("mnist_cnn")
    before = fingerprint(g)
    train = _fake_train()
    ctx = hwopt.PassContext(target=T, train=train, example_inputs=x, checkpoint_dir=str(tmp_path))
    p = MorphNet(resource="latency_ms", epochs=1.0, retrain_epochs=0.5, iterations=2, threshold=0.05)
    out = PassManager([p]).run(g, ctx)
    assert fingerprint(g) == before
    out.verify()
    budget = resource_value(g, "latency_ms", T)
    assert 0.98 * budget <= resource_value(out, "latency_ms", T) <= budget
    assert train.calls == [1.0, 0.5, 1.0, 0.5]
    rep = next(r["info"] for r in ctx.records if r["pass"].startswith("morphnet"))
    assert set(rep["before"]) == set(rep["after_shrink"]) == set(rep["after_expand"])
    assert len(rep["iterations"]) == 2
    assert rep["after_expand"] == group_widths(out)
    png = tmp_path / "morphnet_widths.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert hwopt.lower(out)(x).shape == (1, 10)


def test_pass_expand_only_without_training_keeps_weights():
    g, x = _lifted("mnist_cnn")
    out = MorphNet(resource="macs", budget=2 * resource_value(g, "macs"), epochs=0, retrain_epochs=0,
                   round_to=1).run(g, hwopt.PassContext())
    assert resource_value(out, "macs") <= 2 * resource_value(g, "macs")
    # kept channels kept their weights (expand inserts after the old units)
    w0, w1 = g["0.0"].params["weight"], out["0.0"].params["weight"]
    assert torch.equal(w1[: w0.shape[0]], w0)


@pytest.mark.parametrize("text", [
    "morphnet",
    "morphnet{resource=latency_ms,budget=0.25,strength=1e-06,threshold=0.02,epochs=2.0,retrain_epochs=3.0,iterations=2,round_to=8}",
    "morphnet{resource=energy_mj,round_to=target,refresh_steps=0,plot=/tmp/widths.png}",
    "morphnet{resource=params,budget=none,strength=none}",
    "morphnet{shrink_to=none,threshold=0.01}", "morphnet{shrink_to=0.3}",
])
def test_options_round_trip_through_text(text):
    p = parse_pass(text)
    assert parse_pass(str(p)) == p
    assert str(parse_pass(str(p))) == str(p)
    assert PassManager.parse(f"fold-bn,{p}").passes[1] == p


@pytest.mark.parametrize("option,value", [
    ("resource", "watts"), ("budget", "-1"), ("budget", "0"), ("strength", "-0.5"), ("threshold", "-1"),
    ("epochs", "-1"), ("retrain_epochs", "-2"), ("iterations", "0"), ("round_to", "0"), ("round_to", "auto"),
    ("refresh_steps", "-3"),
])
def test_bad_options_are_pass_errors_naming_the_option(option, value):
    with pytest.raises(hwopt.PassError, match=repr(option)):
        parse_pass(f"morphnet{{{option}={value}}}")
    with pytest.raises(hwopt.PassError, match="'nope'"):
        make_pass("morphnet", nope=1)


def test_latency_without_target_and_training_without_callback_are_pass_errors():
    g, _ = _lifted("mnist_cnn")
    with pytest.raises(hwopt.PassError, match="'resource'"):
        MorphNet(resource="latency_ms", epochs=0).run(g, hwopt.PassContext())
    with pytest.raises(hwopt.PassError, match="'epochs'"):
        MorphNet(resource="macs", epochs=1.0).run(g, hwopt.PassContext())


# --------------------------------------------------------------------------- real training (slow)

@pytest.mark.slow
def test_shrink_on_mnist_removes_channels_and_keeps_accuracy():
    from hwopt import data
    T = _target("cortex-a72")
    tr = data.mnist_trainer(3000, eval_limit=1000, lr=0.05)
    g, x = _lifted("mnist_cnn")
    lam = 10.0 / resource_value(g, "latency_ms", T)  # the bench's setting for short runs (DEFAULT_STRENGTH is too weak here)
    out, info = shrink(g, resource="latency_ms", target=T, train=tr.train, epochs=2.0, strength=lam, threshold=0.05,
                       refresh_steps=20)
    assert resource_value(out, "latency_ms", T) < resource_value(g, "latency_ms", T)
    assert tr.evaluate(hwopt.lower(out)) > 0.8


def test_shrink_never_cuts_a_group_below_the_width_expand_can_end_at():
    # cortex-a72 rounds to 4 channels: units removed under 4 would come back in expand, so they are not
    # removed (the shrink then reaches its goal on the groups that can trade width)
    T = _target("cortex-a72")
    g = _randomise_gammas(_lifted("mnist_cnn")[0], seed=3, low=0.2)
    cost = resource_value(g, "latency_ms", T)
    for frac in (0.8, 0.5, 0.3, 0.1):
        free = remove_channels(g, units_to_budget(g, frac * cost, "latency_ms", T))
        stepped = remove_channels(g, units_to_budget(g, frac * cost, "latency_ms", T, round_to=4))
        widths = group_widths(stepped).values()
        assert min(widths) >= 4
        assert resource_value(stepped, "latency_ms", T) <= frac * cost or all(w == 4 for w in widths)
    assert min(group_widths(free).values()) < 4  # at 0.1 the unstepped order cuts some group under 4
