"""Attention and tokens (issue 15): lifted exactly, heads pruned consistently over q, k, v and the output
projection, costed, compiled, and optimized under a latency budget."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import hwopt
from hwopt.testing import assert_close_outputs
from hwopt.testing.checks import assert_removing_unread_channels_is_exact, zero_readers
from hwopt.testing.strategies import NetSpec, DrawnNet, TokenAttention, modules, torch_settings


def _vit(style: str, cls_token: bool = True, heads: int = 3, head_dim: int = 4, c: int = 12, size: int = 8) -> DrawnNet:
    """conv stem to a (size/2)² map of c channels, two ViT blocks over its tokens, a pooled head."""
    blocks = (("conv", c, 3, 2, "relu", True), ("attention", heads, head_dim, style, cls_token),
              ("attention", heads, head_dim, style, False))
    return DrawnNet(NetSpec(3, size, 1, blocks, "pool", 0, 5, seed=7))


def _head_group(g: hwopt.Graph, producer: str) -> hwopt.ChannelGroup:
    found = [gr for gr in hwopt.channel_groups(g) if producer in gr.producers]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("style", ["sdpa", "matmul", "mha"])
def test_vit_blocks_lift_exactly_and_keep_the_batch_dynamic(style):
    m = _vit(style, heads=2 if style == "mha" else 3, head_dim=6 if style == "mha" else 4).eval()
    g = hwopt.lift(m, torch.randn(1, 3, 8, 8))
    assert "attention" in g.stats()["ops"] or "matmul" in g.stats()["ops"]
    x3 = torch.randn(3, 3, 8, 8)  # the class token is expanded to the batch it meets, not the example's
    assert_close_outputs(g, m, x3, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("style", ["sdpa", "matmul", "mha"])
def test_heads_prune_together_across_q_k_v_and_the_output_projection(style):
    heads = 2 if style == "mha" else 3
    m = _vit(style, heads=heads, head_dim=6 if style == "mha" else 4).eval()
    x = torch.randn(2, 3, 8, 8)
    g = hwopt.lift(m, x)
    qkv = next(n.name for n in g if n.op == "linear" and n.attrs["out_features"] == 3 * 12)  if style != "mha" else \
        next(n.name for n in g if n.name.endswith("q_proj"))
    gr = _head_group(g, qkv)
    assert gr.prunable and gr.size == heads  # one unit per head
    if style == "mha":  # q, k and v projections lose the same head
        assert {n for n in gr.producers} >= {qkv, qkv.replace("q_proj", "k_proj"), qkv.replace("q_proj", "v_proj")}
    zeroed = zero_readers(g, gr, np.array([1]))
    pruned = hwopt.remove_channels(zeroed, {gr.id: [1]}, groups=hwopt.channel_groups(zeroed))
    assert_close_outputs(zeroed, pruned, x, atol=1e-5, rtol=1e-5)
    att = [n for n in pruned if n.op in ("attention", "matmul")][0]
    assert pruned.input_specs(att)[0].shape[1] == heads - 1
    assert pruned.stats()["params"] < g.stats()["params"]


@torch_settings
@given(modules(attention=True, max_blocks=3, sizes=(4, 8)), st.integers(0, 2**16))
def test_drawn_attention_lifts_exactly_and_removing_unread_heads_and_channels_is_exact(mx, seed):
    """Issue 15 Done-when 2 for attention: class token, positional embedding, SDPA / matmul + softmax /
    nn.MultiheadAttention — lifted exactly; removing channels or heads nobody reads is exact. Groups feeding
    a LayerNorm over their channels are left out (removing one changes the others' statistics)."""
    m, x = mx
    g = hwopt.lift(m, x)
    assert_close_outputs(g, m, x, atol=1e-5, rtol=1e-5)
    assert_removing_unread_channels_is_exact(g, x, seed)


def test_attention_macs_are_counted_and_costed():
    m = _vit("sdpa").eval()
    g = hwopt.lift(m, torch.randn(1, 3, 8, 8))
    att = [n for n in g if n.op == "attention"]
    q = g.input_specs(att[0])[0]  # [1, heads, tokens, head_dim]
    tokens = q.shape[2]
    assert hwopt.ir.node_macs(g, att[0]) == 3 * tokens * tokens * (4 + 4)
    t = hwopt.load_target("cortex-a72")
    by_kind = t.cost(g).by_kind
    assert by_kind.get("dense", 0) > 0
    # fewer heads cost less on every target
    gr = _head_group(g, next(n.name for n in g if n.op == "linear" and n.attrs["out_features"] == 36))
    pruned = hwopt.remove_channels(g, {gr.id: [0, 1]})
    for name in ("cortex-a72", "cortex-m7", "host"):
        tgt = hwopt.load_target(name)
        assert tgt.cost(pruned).latency_ms < tgt.cost(g).latency_ms


def test_multihead_attention_weights_are_refused_with_the_module_path():
    class Weights(nn.Module):
        def __init__(self):
            super().__init__()
            self.att = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            out, w = self.att(x, x, x)
            return out.sum(1) + w.sum((1, 2)).unsqueeze(1)

    with pytest.raises(hwopt.UnsupportedOpError, match=r"att.*need_weights=True"):
        hwopt.lift(Weights().eval(), torch.randn(1, 5, 8))


def test_roll_lifts_exactly_and_padded_windows_are_refused_by_module():
    class Shifted(nn.Module):
        def forward(self, x):
            return torch.roll(x, shifts=(1, -2), dims=(2, 3)) * 2

    m, x = Shifted().eval(), torch.randn(2, 4, 6, 6)
    assert_close_outputs(hwopt.lift(m, x), m, x)
    from hwopt.testing import zoo
    if not zoo.available():
        return
    from torchvision.models.swin_transformer import SwinTransformer
    swin = SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[2], num_heads=[2], window_size=[3, 3]).eval()
    with pytest.raises(hwopt.UnsupportedOpError, match=r"features\.1\.0\.attn.*window size \[3, 3\] does not divide"):
        hwopt.lift(swin, torch.randn(1, 3, 32, 32))


def test_optimize_a_small_vit_to_half_its_latency():
    """Issue 15 Done-when 3: a small ViT (conv patch stem, class token, positional embedding, ViT blocks)."""
    m = _vit("sdpa", heads=4, head_dim=16, c=64, size=16).eval()
    x = torch.randn(1, 3, 16, 16)
    target = hwopt.load_target("cortex-a72")
    half = target.cost(hwopt.lift(m, x)).latency_ms / 2
    r = hwopt.optimize(m, "cortex-a72", x, budget={"latency_ms": half})
    assert r.after["latency_ms"] <= half * (1 + 1e-9)
    assert r.model(x).shape == m(x).shape


@pytest.mark.slow
def test_optimize_timm_vit_to_half_its_latency():
    from hwopt.testing import zoo
    if not zoo.available():
        pytest.skip("timm is not installed (the zoo extra)")
    timm, _ = zoo.load()
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=64, depth=4).eval()
    x = torch.randn(1, 3, 64, 64)
    half = hwopt.load_target("cortex-a72").cost(hwopt.lift(m, x)).latency_ms / 2
    r = hwopt.optimize(m, "cortex-a72", x, budget={"latency_ms": half})
    assert r.after["latency_ms"] <= half * (1 + 1e-9)
    assert r.after["params"] < r.before["params"]


@pytest.mark.slow
def test_attention_graph_compiles_with_tvm():
    pytest.importorskip("tvm")
    from hwopt import tvm as tb
    m = _vit("matmul").eval()
    x = torch.randn(1, 3, 8, 8)
    lowered = hwopt.lower(hwopt.lift(m, x))
    built = tb.compile_module(lowered, (x,), "host")
    np.testing.assert_allclose(built.run(x), m(x).detach().numpy(), atol=1e-4, rtol=1e-4)


def test_token_attention_block_is_reusable():
    block = TokenAttention(8, 4, 2, 4, "sdpa", True).eval()
    x = torch.randn(2, 8, 2, 2)
    assert_close_outputs(hwopt.lift(block, x), block, x)


def test_condconv_lifts_exactly_for_any_batch():
    from hwopt.testing import zoo
    if not zoo.available():
        pytest.skip("timm is not installed (the zoo extra)")
    from timm.layers import CondConv2d

    class Routed(nn.Module):
        def __init__(self):
            super().__init__()
            self.route = nn.Linear(6, 3)
            self.pw, self.dw = CondConv2d(6, 8, 1, num_experts=3), CondConv2d(8, 8, 3, padding=1, groups=8, num_experts=3,
                                                                                bias=True)

        def forward(self, x):
            r = torch.sigmoid(self.route(x.mean((2, 3))))
            return self.dw(self.pw(x, r), r)

    m = Routed().eval()
    g = hwopt.lift(m, torch.randn(1, 6, 5, 5))
    assert g.stats()["ops"]["cond_conv2d"] == 2
    assert_close_outputs(g, m, torch.randn(3, 6, 5, 5))
    assert not any(gr.prunable and any(g[k].op == "cond_conv2d" for k in gr.members) for gr in hwopt.channel_groups(g))


def test_swin_window_attention_lifts_exactly_and_prunes_heads():
    """torchvision's Swin: shifted-window attention (cyclic shift, windows, relative position bias, shift
    mask) and patch merging, lifted op by op; heads of each block prune, exactly when unread."""
    from hwopt.testing import zoo
    if not zoo.available():
        pytest.skip("torchvision is not installed (the zoo extra)")
    from torchvision.models.swin_transformer import SwinTransformer
    torch.manual_seed(0)
    m = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
                        num_classes=5).eval()
    with torch.no_grad():
        for p in m.parameters():  # non-trivial biases and position tables
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(1, 3, 32, 32)
    g = hwopt.lift(m, x)
    assert_close_outputs(g, m, torch.randn(2, 3, 32, 32))
    heads = [gr for gr in hwopt.channel_groups(g) if gr.prunable and any(p.endswith("attn.qkv") for p in gr.producers)]
    assert sorted(gr.size for gr in heads) == [2, 2, 4, 4]
    assert_removing_unread_channels_is_exact(g, x)


def test_lifting_leaves_a_models_caches_alone():
    """LeViT caches its attention biases in a dict while running forward; tracing must not leave an fx proxy
    (or anything else) behind in the user's model."""
    class Cached(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.randn(2, 5))
            self.register_buffer("idx", torch.tensor([[0, 1, 2, 3], [4, 3, 2, 1], [0, 0, 1, 1], [2, 2, 3, 3]]))
            self.cache: dict[str, torch.Tensor] = {}

        def forward(self, x):  # x [B, 2, 4, 4]
            key = str(x.device)
            if key not in self.cache:
                self.cache[key] = self.bias[:, self.idx]
            return (x @ x.transpose(-2, -1) + self.cache[key]).softmax(dim=-1)

    m, x = Cached().eval(), torch.randn(1, 2, 4, 4)
    g = hwopt.lift(m, x)
    assert m.cache == {} and not any(k.startswith("_tensor_constant") for k in vars(m))
    x3 = torch.randn(3, 2, 4, 4)
    assert_close_outputs(g, m, x3)  # the model still runs (and fills its cache with a real tensor)
    assert isinstance(m.cache["cpu"], torch.Tensor) and not isinstance(m.cache["cpu"], torch.fx.Proxy)


def test_mobilevit_style_batch_folding_lifts_exactly_for_any_batch():
    """MobileViT runs its transformer on [B * patch_area, patches, C]: dims folded into the batch and back."""
    class Folded(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 6)

        def forward(self, x):  # [B, 6, 4, 4], 2x2 patches
            b, c, h, w = x.shape
            t = x.reshape(b * c * 2, 2, 2, 2).transpose(1, 2).reshape(b, c, 4, 4).transpose(1, 3).reshape(b * 4, 4, c)
            t = self.fc(t).softmax(dim=1)
            t = t.contiguous().view(b, 4, 4, -1).transpose(1, 3).reshape(b * c * 2, 2, 2, 2)
            return t.transpose(1, 2).reshape(b, c, h, w)

    m = Folded().eval()
    g = hwopt.lift(m, torch.randn(1, 6, 4, 4))
    assert {"fold_batch", "unfold_batch"} <= set(g.stats()["ops"])
    assert_close_outputs(g, m, torch.randn(3, 6, 4, 4))


def test_cost_reports_attention_macs():
    m = _vit("sdpa").eval()
    g = hwopt.lift(m, torch.randn(1, 3, 8, 8))
    assert hwopt.load_target("cortex-a72").cost(g).macs == g.stats()["macs"]
