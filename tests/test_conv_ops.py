"""Conv1d, BatchNorm1d, ConvTranspose2d, interpolate / Upsample and vector norms (GRN): lifted exactly,
channel removal exact on drawn nets, costed on every target, optimizable, compiled by TVM; RNNs refused."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st
from torch import nn

import hwopt
from hwopt import models
from hwopt.targets import available, load_target
from hwopt.testing import assert_close_outputs
from hwopt.testing.strategies import conv1d_modules, decoder_modules, torch_settings


def _ignore_units(graph, group, units):
    """A copy of `graph` in which every layer reading the chosen units of `group` ignores them (their weight
    slices zeroed; a transposed conv stores its input channels as weight rows)."""
    g = graph.copy()
    for name in group.consumers:
        n = g[name].copy()
        idx = torch.from_numpy(group.members[n.inputs[0]][units].ravel())
        w = n.params["weight"].clone()
        w.index_fill_(0 if n.op == "conv_transpose2d" else 1, idx, 0.0)
        n.params["weight"] = w
        g.replace(n)
    return g


def _remove_unread(g, seed, fraction=0.34):
    rng = np.random.default_rng(seed)
    zeroed, removal = g, {}
    for gr in hwopt.channel_groups(g):
        if gr.prunable and gr.size > 1:
            units = np.sort(rng.choice(gr.size, size=max(1, int(fraction * gr.size)), replace=False))
            removal[gr.id] = units
            zeroed = _ignore_units(zeroed, gr, units)
    return zeroed, removal, hwopt.remove_channels(zeroed, removal, groups=hwopt.channel_groups(zeroed))


# ----------------------------------------------------------------------------- drawn nets (Done-when 2)

@torch_settings
@given(st.one_of(conv1d_modules(), decoder_modules(max_blocks=4)), st.integers(0, 2**16))
def test_drawn_conv1d_and_decoder_nets_lift_exactly_and_removing_unread_channels_is_exact(mx, seed):
    m, x = mx
    g = hwopt.lift(m, x)
    assert_close_outputs(g, m, x, atol=1e-5, rtol=1e-5)
    zeroed, removal, pruned = _remove_unread(g, seed)
    assert_close_outputs(zeroed, pruned, x, atol=1e-5, rtol=1e-5)
    if removal:
        assert pruned.stats()["params"] < g.stats()["params"]
        for name in available():  # removing channels never raises the predicted latency
            t = load_target(name)
            assert t.cost(pruned).latency_ms <= t.cost(zeroed).latency_ms * (1 + 1e-9)


@pytest.mark.parametrize("build, shape", [(models.tc_resnet8, models.TC_RESNET_INPUT), (models.unet_small, (1, 3, 32, 32))])
def test_reference_models_lift_exactly_and_prune_exactly(build, shape):
    m, x = build().eval(), torch.randn(shape)
    g = hwopt.lift(m, x)
    assert_close_outputs(g, m, x, atol=1e-5, rtol=1e-5)
    assert all(gr.prunable for gr in hwopt.channel_groups(g) if gr.producers and gr.consumers)
    zeroed, removal, pruned = _remove_unread(g, 0, fraction=0.3)
    assert_close_outputs(zeroed, pruned, x, atol=1e-5, rtol=1e-4)
    assert pruned.stats()["macs"] < 0.8 * g.stats()["macs"]


def test_conv1d_groups_grow_and_shrink_back_exactly_and_transposed_conv_growth_is_refused():
    from hwopt.channels import channel_groups, resize_groups
    m, x = models.tc_resnet8().eval(), torch.randn(models.TC_RESNET_INPUT)
    g = hwopt.lift(m, x)
    groups = channel_groups(g)
    sizes = {gr.id: gr.size + 3 for gr in groups if gr.prunable}
    big = resize_groups(g, sizes)
    assert big.stats()["params"] > g.stats()["params"]
    back = hwopt.remove_channels(big, {gid: np.arange(groups[gid].size, n) for gid, n in sizes.items()},
                                 groups=channel_groups(big))
    assert_close_outputs(back, m, x, atol=1e-5, rtol=1e-5)
    u = hwopt.lift(models.unet_small().eval(), torch.randn(1, 3, 16, 16))
    up2 = next(gr for gr in channel_groups(u) if "up2" in gr.producers)
    with pytest.raises(hwopt.IRError, match="transposed conv"):
        resize_groups(u, {up2.id: up2.size + 2})


# ----------------------------------------------------------------------------- each op, each spelling

class _Apply(nn.Module):
    def __init__(self, f, *modules):
        super().__init__()
        self.f, self.layers = f, nn.ModuleList(modules)

    def forward(self, x):
        return self.f(self, x)


_UP = [
    lambda s, x: F.interpolate(x, scale_factor=2),
    lambda s, x: F.interpolate(x, scale_factor=1.7, mode="nearest"),
    lambda s, x: F.interpolate(x, scale_factor=0.6, mode="nearest-exact"),
    lambda s, x: F.interpolate(x, size=(11, 6), mode="bilinear"),
    lambda s, x: F.interpolate(x, size=9, mode="bilinear", align_corners=True),
    lambda s, x: F.interpolate(x, scale_factor=(1.5, 2.5), mode="bilinear", recompute_scale_factor=True),
    lambda s, x: s.layers[0](x),
    lambda s, x: s.layers[1](x) + s.layers[2](x),
]


@pytest.mark.parametrize("k", range(len(_UP)))
def test_upsampling_in_every_spelling_is_exact(k):
    m = _Apply(_UP[k], nn.Upsample(scale_factor=1.3, mode="bilinear"), nn.UpsamplingNearest2d(size=(10, 12)),
               nn.UpsamplingBilinear2d(size=(10, 12))).eval()
    x = torch.randn(2, 3, 7, 5)
    g = hwopt.lift(m, x)
    assert "interpolate" in g.stats()["ops"]
    assert_close_outputs(g, m, x, atol=1e-6, rtol=1e-6)
    batch4 = torch.randn(4, 3, 7, 5)  # the batch dim stays dynamic in the lowered module
    assert_close_outputs(hwopt.lower(g), m, batch4, atol=1e-6, rtol=1e-6)


def test_unsupported_interpolation_is_named():
    m = _Apply(lambda s, x: F.interpolate(x, scale_factor=2, mode="bicubic")).eval()
    with pytest.raises(hwopt.UnsupportedOpError, match="interpolate.*bicubic"):
        hwopt.lift(m, torch.randn(1, 3, 4, 4))


_CONVT = [
    dict(stride=2, padding=1, output_padding=1),
    dict(stride=(2, 3), padding=(0, 1), groups=2),
    dict(stride=1, dilation=2, padding=2),
    dict(stride=2, groups=4),  # depthwise-style: 4 groups of 1 input channel
]


@pytest.mark.parametrize("kw", _CONVT)
def test_conv_transpose2d_module_and_functional_are_exact_and_prune_exactly(kw):
    t = nn.ConvTranspose2d(4, 8, 3, **kw)
    m = _Apply(lambda s, x: s.layers[2](s.layers[0](s.layers[1](x)) + F.conv_transpose2d(
        s.layers[1](x), t.weight, None, t.stride, t.padding, t.output_padding, t.groups, t.dilation)),
        t, nn.Conv2d(3, 4, 1), nn.Conv2d(8, 5, 1)).eval()
    x = torch.randn(2, 3, 5, 6)
    g = hwopt.lift(m, x)
    assert g.stats()["ops"]["conv_transpose2d"] == 2
    assert_close_outputs(g, m, x, atol=1e-5, rtol=1e-5)
    zeroed, removal, pruned = _remove_unread(g, 1, fraction=0.5)
    assert removal
    assert_close_outputs(zeroed, pruned, x, atol=1e-5, rtol=1e-5)


def test_conv1d_spellings_and_batchnorm1d_are_exact():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.bn = nn.Conv1d(6, 8, 4, padding="same", dilation=2), nn.BatchNorm1d(8)
            self.b = nn.Conv1d(8, 8, 3, stride=2, groups=8, bias=False)
            self.fc, self.bn2 = nn.Linear(8, 5), nn.BatchNorm1d(5)

        def forward(self, x):
            y = self.b(torch.relu(self.bn(self.a(x))))
            y = F.conv1d(y, self.b.weight, None, 1, 1, 1, 8) + torch.conv1d(y, self.b.weight, padding=1, groups=8)
            return self.bn2(self.fc(y.mean(2)))

    m = Net()
    with torch.no_grad():
        for bn in (m.bn, m.bn2):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    m.eval()
    x = torch.randn(3, 6, 17)
    g = hwopt.lift(m, x)
    assert g.stats()["ops"]["conv1d"] == 4 and g.stats()["ops"]["batch_norm"] == 2
    assert_close_outputs(g, m, x, atol=1e-5, rtol=1e-5)


def test_asymmetric_same_padding_is_named():
    with pytest.raises(hwopt.UnsupportedOpError, match="same"):
        hwopt.lift(nn.Sequential(nn.Conv1d(2, 2, 4, padding="same")), torch.randn(1, 2, 9))


@pytest.mark.parametrize("f", [
    lambda s, x: x.norm(p=2, dim=(2, 3), keepdim=True) * x,
    lambda s, x: torch.linalg.vector_norm(x, 1, dim=(3,)),
    lambda s, x: torch.norm(x, dim=2),
    lambda s, x: x.norm(3.0, 2),
])
def test_vector_norms_are_exact(f):
    m = _Apply(f).eval()
    x = torch.randn(2, 4, 5, 6)
    g = hwopt.lift(m, x)
    assert "vector_norm" in g.stats()["ops"]
    assert_close_outputs(g, m, x, atol=1e-5, rtol=1e-5)


class GRN(nn.Module):
    """ConvNeXt-V2's global response norm, channels-last, as timm writes it."""

    def __init__(self, c):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.randn(c) * 0.3), nn.Parameter(torch.randn(c) * 0.3)

    def forward(self, x):
        x_g = x.norm(p=2, dim=(1, 2), keepdim=True)
        x_n = x_g / (x_g.mean(dim=-1, keepdim=True) + 1e-6)
        return x + torch.addcmul(self.bias.view(1, 1, 1, -1), self.weight.view(1, 1, 1, -1), x * x_n, value=0.5)


def test_grn_is_exact_and_ties_its_channels():
    """GRN divides each channel by the mean over all channels: removing any channel changes every other
    channel's output, so the channels it reads are pinned (not prunable), while the channels around it are."""
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.grn, self.fc2 = nn.Linear(4, 12), GRN(12), nn.Linear(12, 4)
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            y = self.conv(x).permute(0, 2, 3, 1)
            return self.fc2(self.grn(torch.relu(self.fc1(y)))).permute(0, 3, 1, 2)

    m, x = Block().eval(), torch.randn(2, 3, 5, 5)
    g = hwopt.lift(m, x)
    assert_close_outputs(g, m, x, atol=1e-5, rtol=1e-5)
    hidden = [gr for gr in hwopt.channel_groups(g) if "fc1" in gr.members]
    assert hidden and not any(gr.prunable for gr in hidden)
    assert any(gr.prunable for gr in hwopt.channel_groups(g) if "conv" in gr.members)


@pytest.mark.parametrize("rnn", [nn.LSTM, nn.GRU])
def test_recurrent_layers_are_a_clear_error_naming_the_module(rnn):
    class Speech(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.rnn = nn.Conv1d(40, 16, 3), rnn(16, 8, batch_first=True)

        def forward(self, x):
            return self.rnn(self.conv(x).transpose(1, 2))[0]

    with pytest.raises(hwopt.UnsupportedOpError, match=rf"{rnn.__name__} in module 'rnn'.*recurrent") as e:
        hwopt.lift(Speech().eval(), torch.randn(1, 40, 20))
    assert e.value.module_path == "rnn"


# ----------------------------------------------------------------------------- costs, optimize, TVM

def test_costs_cover_the_new_ops_on_every_target():
    m = _Apply(lambda s, x: s.layers[1](F.interpolate(s.layers[0](x), scale_factor=2, mode="bilinear")).norm(dim=(2, 3)),
               nn.ConvTranspose2d(3, 8, 2, stride=2), nn.Conv2d(8, 4, 3)).eval()
    g = hwopt.lift(m, torch.randn(1, 3, 8, 8))
    k = hwopt.lift(models.tc_resnet8().eval(), torch.randn(models.TC_RESNET_INPUT))
    for name in available():
        t = load_target(name)
        for graph in (g, k):
            c = t.cost(graph)
            assert c.latency_ms > 0 and c.flash_bytes >= graph.stats()["params"]  # every weight stored, >= 1 byte each
            assert all(v >= 0 for v in c.per_node.values())
            per = dict(c.per_node)
            convs = [n.name for n in graph if n.op in ("conv1d", "conv_transpose2d", "interpolate", "vector_norm")]
            assert all(per.get(n, 0) > 0 for n in convs), (name, {n: per.get(n) for n in convs})


@pytest.mark.parametrize("build, shape", [(models.tc_resnet8, models.TC_RESNET_INPUT), (models.unet_small, (1, 3, 32, 32))])
def test_optimize_meets_half_latency_on_cortex_a72(build, shape):
    """Issue 15 Done-when 3: the Conv1d keyword spotter and the small U-Net."""
    m, x = build().eval(), torch.randn(shape)
    target = load_target("cortex-a72")
    half = target.cost(hwopt.lift(m, x)).latency_ms / 2
    r = hwopt.optimize(m, "cortex-a72", x, budget={"latency_ms": half})
    assert r.after["latency_ms"] <= half * (1 + 1e-9)
    assert r.model(x).shape == m(x).shape and torch.isfinite(r.model(x)).all()


def test_tvm_compiles_the_new_ops():
    tb = pytest.importorskip("hwopt.tvm")
    m = _Apply(lambda s, x: s.layers[2](torch.cat([s.layers[1](s.layers[0](x)), F.interpolate(s.layers[0](x), size=(12, 12))], 1)),
               nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1, groups=1),
               nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), nn.Conv2d(8, 2, 1)).eval()
    x = torch.randn(1, 3, 3, 3)
    g = hwopt.lift(m, x)
    cm = tb.compile_module(hwopt.lower(g, bake_masks=True), (x,), "host")
    np.testing.assert_allclose(cm.run(x), m(x).detach().numpy(), atol=1e-4, rtol=1e-4)
    k = nn.Sequential(nn.Conv1d(4, 6, 5, padding=2), nn.BatchNorm1d(6), nn.ReLU(), nn.Conv1d(6, 6, 3, groups=6)).eval()
    xk = torch.randn(1, 4, 16)
    ck = tb.compile_module(hwopt.lower(hwopt.lift(k, xk), bake_masks=True), (xk,), "host")
    np.testing.assert_allclose(ck.run(xk), k(xk).detach().numpy(), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- the zoo models they unblock

@pytest.mark.parametrize("name", ["timm/ghostnetv2_100", "timm/convnextv2_atto"])
def test_zoo_models_using_them_lift_exactly_and_prune(name):
    from hwopt.testing import zoo
    if not zoo.available():
        pytest.skip("timm / torchvision not installed (pip install -e '.[zoo]')")
    out = zoo.check(name, ratio=0.3, target=None, size=64)
    assert out.exact, out.error
    assert out.pruned and out.params[1] < out.params[0], out
