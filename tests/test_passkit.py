"""hwopt.passkit: training a graph, figures in the shared vocabulary, channel multiples and group units."""
import pytest
import torch

import hwopt
from hwopt import models
from hwopt.figures import RESOURCES, check_budget, graph_figures, resource_value
from hwopt.passkit import (channel_multiple, kept_levels, min_units, node_costs, owns_its_layers, train_graph,
                           unit_channels, unit_step)
from hwopt.passes.channel_prune import ChannelPrune
from hwopt.targets import load_target

M7 = load_target("cortex-m7")


def _graph(name="mnist_cnn", shape=(1, 1, 28, 28)):
    torch.manual_seed(0)
    return hwopt.lift(models.get(name).eval(), torch.randn(shape))


def test_train_graph_moves_weights_keeps_structure_and_input():
    g = _graph()
    calls = []

    def train(module, *, epochs, penalty=None):
        calls.append((epochs, penalty))
        with torch.no_grad():
            for p in module.parameters():
                p.add_(1.0)

    ctx = hwopt.PassContext(train=train)
    assert train_graph(g, ctx, 0) is g and not calls
    out = train_graph(g, ctx, 0.5)
    assert calls == [(0.5, None)]
    conv = next(n.name for n in g if n.op == "conv2d")
    assert torch.allclose(out[conv].params["weight"], g[conv].params["weight"] + 1.0)
    assert out.order() == g.order()
    with pytest.raises(hwopt.PassError, match="pass 'x' needs train"):
        train_graph(g, hwopt.PassContext(), 1.0, who="x")


def test_figures_one_vocabulary_and_node_costs_add_up():
    g = _graph()
    figs = graph_figures(g, M7)
    assert set(RESOURCES) <= set(figs)
    assert figs["params"] == sum(p.numel() for p in models.get("mnist_cnn").parameters())
    for r in ("latency_ms", "macs", "params"):
        assert resource_value(g, r, M7) == pytest.approx(figs[r])
    assert sum(node_costs(g, "latency_ms", M7).values()) == pytest.approx(figs["latency_ms"])
    assert sum(node_costs(g, "macs").values()) == figs["macs"]
    assert sum(node_costs(g, "params").values()) == figs["params"]
    live = node_costs(g, "peak_sram_bytes", M7)
    assert 0 < sum(live.values()) <= sum(n.spec.numel for n in g)
    with pytest.raises(hwopt.PassError, match="needs a target"):
        resource_value(g, "latency_ms")
    with pytest.raises(hwopt.BudgetError, match="unknown budget resource 'flops'"):
        check_budget({"flops": 1e6})


def test_channel_widths():
    assert unit_step(8, 1) == 8 and unit_step(8, 4) == 2 and unit_step(1, 3) == 1
    assert kept_levels(24, 8) == [24, 16, 8]
    assert kept_levels(64, 4, min_keep=16) == list(range(64, 15, -4))
    assert kept_levels(6, 8) == [6]
    ctx = hwopt.PassContext(target=M7)
    assert channel_multiple("target", ctx) == M7.channel_multiple == channel_multiple(None, ctx)
    assert channel_multiple(None, hwopt.PassContext()) == 1 and channel_multiple(16, ctx) == 16
    with pytest.raises(hwopt.PassError, match="round_to=target needs ctx.target"):
        channel_multiple("target", hwopt.PassContext(), "p")
    g = _graph("mobilenet_v2", (1, 3, 32, 32))
    groups = [gr for gr in hwopt.channel_groups(g) if gr.prunable]
    depthwise_fed = [gr for gr in groups if any(g[u].op == "conv2d" and g[u].attrs["groups"] > 1
                                                for m in gr.members for u in g.users(m))]
    assert depthwise_fed and all(min_units(g, gr) == 2 for gr in depthwise_fed)
    assert all(min_units(g, gr, 16) == -(-16 // unit_channels(gr)) for gr in groups)
    assert all(owns_its_layers(g, gr) for gr in groups)


def test_shuffle_orbits_share_their_layers_minimum_and_step_by_one_unit():
    """A ShuffleNet stage's chunk / concat / shuffle chain splits each conv's output over several orbit
    groups: none owns its layers, so each keeps its share of the minimum width, not all of it."""
    g = _graph("shufflenet_v2_x0_5", (1, 3, 64, 64))
    orbits = [gr for gr in hwopt.channel_groups(g) if gr.prunable and not owns_its_layers(g, gr)]
    assert len(orbits) >= 6 and any(gr.size < 4 for gr in orbits)
    for gr in orbits:
        share = max(-(-4 * gr.size // g[n].spec.channels) for n in gr.members)
        assert share <= min_units(g, gr, 4) <= max(2, share)  # 2: a depthwise conv reads the stage output
    dense = _graph("densenet_tiny", (1, 3, 32, 32))  # a BN after a concat reads several groups: still owners
    assert all(owns_its_layers(dense, gr) for gr in hwopt.channel_groups(dense) if gr.prunable)
    small = next(gr for gr in orbits if gr.size < 4)
    assert ChannelPrune(ratio=0.5)._levels(g, small, 4)[-1] < small.size  # pruned, where it used to be left whole
