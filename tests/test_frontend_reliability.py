"""Issue 19 items 1, 2 and 12: aliased in-place ops, a module called twice, wrong input dtypes; and the
front end's concrete-shape tracing (x.ndim, shape-driven control flow, functional layers, all errors)."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

import hwopt
from hwopt.passes.channel_prune import ChannelPrune
from hwopt.testing import assert_close_outputs
from hwopt.testing.strategies import modules, torch_settings


class AliasedAdd(nn.Module):  # issue 19 item 1, verbatim: z = x; z += y; ... x * 2
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, inp):
        x, y = self.a(inp), self.b(inp)
        z = x
        z += y
        return x * 2


def test_aliased_inplace_add_is_refused_not_lifted_out_of_place():
    with pytest.raises(hwopt.UnsupportedOpError, match="in-place"):
        hwopt.lift(AliasedAdd().eval(), torch.randn(1, 3, 8, 8))


def test_inplace_add_as_sole_reader_lifts_exactly():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, inp):
            x = self.a(inp)
            out = self.b(x)
            out += x  # torchvision's ResNet pattern: out is read by nothing else
            return out
    m, x = Residual().eval(), torch.randn(1, 3, 8, 8)
    assert_close_outputs(hwopt.lift(m, x), m, x)


def test_inplace_write_through_a_view_is_refused():
    class ViewWrite(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)

        def forward(self, inp):
            x = self.a(inp)
            v = x.flatten(1)
            v.mul_(2)  # writes x too
            return x
    with pytest.raises(hwopt.UnsupportedOpError, match="in-place"):
        hwopt.lift(ViewWrite().eval(), torch.randn(1, 3, 4, 4))


class Reused(nn.Module):  # issue 19 item 2: one Conv2d called twice
    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.conv(x))
        x = torch.relu(self.conv(x))
        return self.head(x.mean((2, 3)))


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_module_called_twice_counts_once_and_lowers_to_one_module():
    m, x = Reused().eval(), torch.randn(1, 3, 8, 8)
    g = hwopt.lift(m, x)
    lowered = hwopt.lower(g)
    assert g.stats()["params"] == _params(m) == _params(lowered)
    assert_close_outputs(lowered, m, x)


def test_pruning_a_reused_module_keeps_it_shared_and_smaller():
    m, x = Reused(16).eval(), torch.randn(1, 3, 8, 8)
    g = hwopt.lift(m, x)
    pruned = ChannelPrune(criterion="l1", ratio=0.5, round_to=1).run(g, hwopt.PassContext())
    small = hwopt.lower(pruned)
    assert pruned.stats()["params"] == _params(small) < _params(m)
    with torch.no_grad():
        assert small(x).shape == m(x).shape


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.int64])
def test_wrong_input_dtype_is_a_clear_error_at_lift(dtype):
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    x = torch.ones(1, 3, 8, 8).to(dtype)
    with pytest.raises(hwopt.ShapeError, match=rf"example input 0 is {dtype}.*torch.float32"):
        hwopt.lift(m, x)


@torch_settings
@given(st.data())
def test_inplace_and_reuse_patterns_lift_exactly_or_are_refused(data):
    """Issue 19 Done-when 2: drawn in-place / aliasing / module-reuse forwards either lift exactly
    (and report the lowered module's parameter count) or are refused with UnsupportedOpError."""
    steps = data.draw(st.lists(st.sampled_from(["conv", "reuse", "iadd_alias", "iadd_sole", "relu_", "view_mul_",
                                                 "relu_inplace_shared", "add"]), min_size=1, max_size=5))

    class Drawn(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=1) for _ in steps)
            self.shared = nn.Conv2d(4, 4, 1)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            x = self.shared(x)
            for conv, step in zip(self.convs, steps):
                y = conv(x)
                if step == "conv":
                    x = y
                elif step == "reuse":
                    x = self.shared(y)
                elif step == "iadd_alias":
                    z = x
                    z += y
                    x = x * 2 + z
                elif step == "iadd_sole":
                    y += 1.0
                    x = y
                elif step == "relu_":
                    x = y.relu_() + x
                elif step == "view_mul_":
                    y.flatten(1).mul_(0.5)
                    x = y
                elif step == "relu_inplace_shared":
                    x = self.relu(y) + y
                else:
                    x = x + y
            return x

    m, x = Drawn().eval(), torch.randn(1, 4, 6, 6)
    try:
        g = hwopt.lift(m, x)
    except hwopt.UnsupportedOpError:
        return
    lowered = hwopt.lower(g)
    assert_close_outputs(lowered, m, x)
    assert g.stats()["params"] == _params(lowered) <= _params(m)


def test_timm_style_forward_with_ndim_assert_functional_bn_and_same_padding_lifts():
    class NormAct(nn.BatchNorm2d):
        def forward(self, x):
            assert x.ndim == 4, "expected 4-D"
            x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.1, self.eps)
            return F.silu(x)

    class SameConv(nn.Conv2d):
        def forward(self, x):
            ih, iw = x.size()[-2:]
            pad_h = max((-(-ih // self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - ih, 0)
            pad_w = max((-(-iw // self.stride[1]) - 1) * self.stride[1] + self.kernel_size[1] - iw, 0)
            if pad_h > 0 or pad_w > 0:
                x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
            return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    m = nn.Sequential(SameConv(3, 8, 3, stride=2), NormAct(8), SameConv(8, 8, 3, groups=8), NormAct(8), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        for bn in (m[1], m[3]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    x = torch.randn(1, 3, 15, 15)
    g = hwopt.lift(m, x)
    assert_close_outputs(g, m, x)
    pruned = ChannelPrune(criterion="l1", ratio=0.5, round_to=1).run(g, hwopt.PassContext())
    assert pruned.stats()["params"] < g.stats()["params"]


def test_every_unsupported_op_is_reported():
    class TwoBad(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            x = torch.sort(self.a(x), dim=1).values
            x = self.b(x)
            return torch.cumsum(x, dim=1)
    with pytest.raises(hwopt.UnsupportedOpError) as e:
        hwopt.lift(TwoBad().eval(), torch.randn(1, 3, 4, 4))
    assert "sort" in str(e.value) and "cumsum" in str(e.value) and len(e.value.found) == 2


@torch_settings
@given(modules(modern=True, max_blocks=4), st.integers(0, 2**16))
def test_modern_blocks_lift_exactly_and_removing_unread_channels_is_exact(mx, seed):
    """Issue 15 Done-when 2: channels-last blocks, shuffles, GroupNorm and layer scale — lifted exactly, and
    removing channels nobody reads is exact. Groups that feed a LayerNorm over their channels are left
    out: removing a channel changes the statistics the other channels are normalized with."""
    from hwopt.testing.checks import assert_removing_unread_channels_is_exact
    m, x = mx
    g = hwopt.lift(m, x)
    assert_close_outputs(g, m, x, atol=1e-5, rtol=1e-5)
    pruned, removal = assert_removing_unread_channels_is_exact(g, x, seed)
    if removal:
        assert pruned.stats()["params"] < g.stats()["params"]


def test_optimize_keeps_a_reused_conv_shared_through_bn_folding():
    """issue 19 item 2 through optimize(): a conv called twice, once before a batch norm. Folding the BN
    into that call would un-share the conv and the "optimized" model would be larger than the user's."""
    import hwopt

    class Reuse(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.c = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
            self.bn, self.fc = torch.nn.BatchNorm2d(8), torch.nn.Linear(8, 10)

        def forward(self, x):
            x = torch.relu(self.c(self.stem(x)))
            return self.fc(torch.relu(self.bn(self.c(x))).mean((2, 3)))

    model = Reuse().eval()
    real = sum(p.numel() for p in model.parameters())
    result = hwopt.optimize(model, "cortex-a72", torch.randn(1, 3, 16, 16))
    lowered = sum(p.numel() for p in result.model.parameters())
    assert result.before["params"] == real
    assert result.after["params"] == lowered <= real


def test_flash_stores_a_reused_conv_once():
    """issue 19 item 2: the cost model's flash counts a module called twice once, like params."""
    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return self.c(torch.relu(self.c(x)))

    target = hwopt.load_target("cortex-a72")
    once = target.cost(hwopt.lift(torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1)).eval(), torch.randn(1, 4, 8, 8)))
    twice = target.cost(hwopt.lift(Twice().eval(), torch.randn(1, 4, 8, 8)))
    assert twice.flash_bytes == once.flash_bytes
