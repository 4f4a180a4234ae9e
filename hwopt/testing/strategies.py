"""Hypothesis strategies that draw valid random CNNs, for property-testing passes (hwopt's and yours).

    from hypothesis import given
    from hwopt.testing.strategies import graphs, modules, torch_settings

    @torch_settings  # no deadline, no "too slow" health check: each example builds a torch model
    @given(modules())
    def test_my_pass_is_exact(module_and_input):
        module, x = module_and_input
        g = hwopt.lift(module, x)
        out = MyPass().run(g, hwopt.PassContext())
        hwopt.testing.assert_close_outputs(g, out, x)

`modules()` draws `(nn.Module in eval mode, example input)`; `graphs()` draws lifted `hwopt.Graph`s;
`net_specs()` draws the plain-data description both are built from (shrinks well, prints readably).
Drawn nets mix plain / strided / grouped / depthwise convs, batch norm with non-trivial statistics,
every activation of the op set, residual adds (identity and projection), concat (branches and
DenseNet-style), channel split + concat, squeeze-excite, pooling, and a head that either pools or
flattens spatial features into a linear layer (so a channel owns H·W features). `modern=True` adds
ConvNeXt-style channels-last blocks, channel shuffles and GroupNorm + layer scale; `attention=True` adds ViT
blocks over the feature map's tokens (class token, positional embedding, multi-head attention written as
SDPA, as matmul + softmax, or as nn.MultiheadAttention), whose heads prune together.
`net_specs(decoder=True)` / `decoder_modules()` add upsampling, ConvTranspose2d and U-Net blocks;
`conv1d_modules()` draws Conv1d nets over [N, C, L] (strategies_conv.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from .strategies_conv import DECODER_KINDS, decoder_block, decoder_out, draw_decoder_block  # noqa: E402

# Building and running a torch model per example is slower than hypothesis' defaults expect.
torch_settings = settings(deadline=None, max_examples=50,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid,
               "sigmoid": nn.Sigmoid, "silu": nn.SiLU, "tanh": nn.Tanh, "none": nn.Identity}


@dataclass(frozen=True)
class NetSpec:
    in_channels: int
    size: int
    batch: int
    blocks: tuple[tuple, ...]  # (kind, *args)
    head: str  # "pool" or "flatten"
    hidden: int  # 0: no hidden linear layer
    classes: int
    seed: int


def _conv_bn_act(cin, cout, k=3, stride=1, groups=1, bn=True, act="relu"):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(ACTIVATIONS[act]())
    return nn.Sequential(*layers)


class Residual(nn.Module):
    def __init__(self, c, cout, act, project):
        super().__init__()
        self.body = nn.Sequential(_conv_bn_act(c, c, act=act), nn.Conv2d(c, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential(nn.Conv2d(c, cout, 1, bias=False), nn.BatchNorm2d(cout)) if project else nn.Identity()
        self.act = ACTIVATIONS[act]()

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


class Branches(nn.Module):
    def __init__(self, c, c1, c2, dense):
        super().__init__()
        self.a, self.b, self.dense = _conv_bn_act(c, c1, k=1), _conv_bn_act(c, c2, k=3), dense

    def forward(self, x):
        return torch.cat([x, self.a(x), self.b(x)] if self.dense else [self.a(x), self.b(x)], dim=1)


class SqueezeExcite(nn.Module):
    def __init__(self, c, r, gate):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, r, 1), nn.Conv2d(r, c, 1)
        self.relu, self.gate = nn.ReLU(), ACTIVATIONS[gate]()

    def forward(self, x):
        return x * self.gate(self.fc2(self.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class SplitMerge(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = _conv_bn_act(c // 2, c // 2, k=3)

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return torch.cat([a, self.conv(b)], dim=1)


class ChannelsLast(nn.Module):
    """A ConvNeXt block: depthwise conv, permute to NHWC, LayerNorm and an MLP of Linear layers on the last
    dim, a channels-last layer scale, permute back, residual add."""

    def __init__(self, c, hidden):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, 1, 1, groups=c)
        self.norm, self.fc1, self.act, self.fc2 = nn.LayerNorm(c), nn.Linear(c, hidden), nn.GELU(), nn.Linear(hidden, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(self.act(self.fc1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class Shuffle(nn.Module):
    """A grouped 1x1 conv, then ShuffleNet's channel shuffle spelled as view / transpose / view."""

    def __init__(self, c, groups):
        super().__init__()
        self.conv, self.groups = nn.Conv2d(c, c, 1, groups=groups), groups

    def forward(self, x):
        x = self.conv(x)
        n, c, h, w = x.shape
        x = x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).contiguous()
        return x.view(n, -1, h, w)


class GroupNormScale(nn.Module):
    """conv, GroupNorm, activation, and a residual scaled by a layer-scale vector read in forward."""

    def __init__(self, c, groups, act):
        super().__init__()
        self.conv, self.norm, self.act = nn.Conv2d(c, c, 3, 1, 1), nn.GroupNorm(groups, c), ACTIVATIONS[act]()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, c))

    def forward(self, x):
        return x + self.act(self.norm(self.conv(x))) * self.scale.view(1, -1, 1, 1)


class TokenAttention(nn.Module):
    """A ViT encoder block over a feature map's tokens: flatten + transpose to [N, HW, C], an optional class
    token (a parameter concatenated in front), a positional embedding (a parameter added), LayerNorm,
    multi-head self-attention, residual add; then the class token is dropped and the tokens go back to
    [N, C, H, W]. `style` is how the attention is written: "sdpa" (timm: qkv Linear, reshape to
    [B, N, 3, heads, head_dim], permute(2, 0, 3, 1, 4), unbind, F.scaled_dot_product_attention), "matmul"
    (the same with q @ kᵀ · scale, softmax, @ v spelled out) or "mha" (nn.MultiheadAttention)."""

    def __init__(self, c, tokens, heads, head_dim, style, cls_token):
        super().__init__()
        self.heads, self.head_dim, self.style = heads, head_dim, style
        self.norm = nn.LayerNorm(c)
        if style == "mha":
            self.mha = nn.MultiheadAttention(c, heads, batch_first=True)
        else:
            self.qkv, self.proj = nn.Linear(c, 3 * heads * head_dim), nn.Linear(heads * head_dim, c)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c)) if cls_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + bool(cls_token), c))

    def forward(self, x):
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            t = torch.cat([self.cls_token.expand(b, -1, -1), t], dim=1)
        t = t + self.pos_embed
        y = self.norm(t)
        n = t.shape[1]
        if self.style == "mha":
            y = self.mha(y, y, y, need_weights=False)[0]
        else:
            q, k, v = self.qkv(y).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            if self.style == "sdpa":
                o = F.scaled_dot_product_attention(q, k, v)
            else:
                o = (q @ k.transpose(-2, -1) * self.head_dim ** -0.5).softmax(dim=-1) @ v
            y = self.proj(o.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))
        t = t + y
        if self.cls_token is not None:
            t = t[:, 1:]
        return t.transpose(1, 2).reshape(b, c, h, w)


class DrawnNet(nn.Module):
    def __init__(self, spec: NetSpec):
        super().__init__()
        self.spec = spec
        c, size = spec.in_channels, spec.size
        blocks = []
        for kind, *a in spec.blocks:
            if kind == "conv":
                cout, k, stride, act, bn = a
                blocks.append(_conv_bn_act(c, cout, k, stride, 1, bn, act))
            elif kind == "grouped":
                cout, groups, act = a
                blocks.append(_conv_bn_act(c, cout, 3, 1, groups, True, act))
            elif kind == "depthwise":
                mult, stride, act = a
                cout = c * mult
                blocks.append(_conv_bn_act(c, cout, 3, stride, c, True, act))
            elif kind == "residual":
                cout, act, project = a
                blocks.append(Residual(c, cout, act, project))
            elif kind == "branches":
                c1, c2, dense = a
                blocks.append(Branches(c, c1, c2, dense))
                cout = c1 + c2 + (c if dense else 0)
            elif kind == "se":
                r, gate = a
                blocks.append(SqueezeExcite(c, r, gate))
                cout = c
            elif kind == "split":
                blocks.append(SplitMerge(c))
                cout = c
            elif kind == "pool":
                (maxpool,) = a
                blocks.append(nn.MaxPool2d(2) if maxpool else nn.AvgPool2d(2))
                cout = c
            elif kind == "channels_last":
                blocks.append(ChannelsLast(c, a[0]))
                cout = c
            elif kind == "shuffle":
                blocks.append(Shuffle(c, a[0]))
                cout = c
            elif kind == "group_norm":
                blocks.append(GroupNormScale(c, a[0], a[1]))
                cout = c
            elif kind in DECODER_KINDS:
                block, cout, size = decoder_block(kind, c, size, tuple(a))
                blocks.append(block)
            elif kind == "attention":
                blocks.append(TokenAttention(c, size * size, *a))
                cout = c
            else:
                raise ValueError(kind)
            if kind in ("conv", "depthwise"):
                stride = a[2] if kind == "conv" else a[1]
                size = (size + 2 * (k // 2 if kind == "conv" else 1) - (k if kind == "conv" else 3)) // stride + 1
            elif kind == "pool":
                size //= 2
            c = cout
        self.features = nn.Sequential(*blocks)
        head = [nn.AdaptiveAvgPool2d(1), nn.Flatten()] if spec.head == "pool" else [nn.Flatten()]
        feats = c if spec.head == "pool" else c * size * size
        if spec.hidden:
            head += [nn.Linear(feats, spec.hidden), nn.BatchNorm1d(spec.hidden), nn.ReLU()]
            feats = spec.hidden
        head.append(nn.Linear(feats, spec.classes))
        self.head = nn.Sequential(*head)
        self._randomize(spec.seed)

    @torch.no_grad()
    def _randomize(self, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        for m in self.modules():
            if isinstance(m, TokenAttention):
                for p in (m.cls_token, m.pos_embed):
                    if p is not None:
                        p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            if isinstance(m, nn.MultiheadAttention):
                m.in_proj_weight.copy_(torch.randn(m.in_proj_weight.shape, generator=gen) / m.embed_dim ** 0.5)
                m.in_proj_bias.copy_(0.1 * torch.randn(m.in_proj_bias.shape, generator=gen))
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / fan_in ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(1 + 0.2 * torch.randn(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
        self.eval()

    def forward(self, x):
        return self.head(self.features(x))

    def example_input(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.spec.seed + 1)
        s = self.spec
        return torch.randn(s.batch, s.in_channels, s.size, s.size, generator=gen)


@st.composite
def net_specs(draw, max_blocks: int = 5, max_channels: int = 12, sizes=(6, 12), max_batch: int = 3,
              modern: bool = False, decoder: bool = False, attention: bool = False) -> NetSpec:
    """Plain-data descriptions of random CNNs; each is valid by construction. `modern=True` also draws
    ConvNeXt-style channels-last blocks, view/transpose/view channel shuffles and GroupNorm + layer scale;
    `decoder=True` upsampling, ConvTranspose2d and U-Net blocks (strategies_conv); `attention=True` ViT
    blocks over the feature map's tokens (`TokenAttention`: class token, positional embedding, multi-head
    attention as SDPA, as matmul + softmax, or nn.MultiheadAttention)."""
    c = draw(st.integers(1, 4))
    in_channels = c
    size = initial_size = draw(st.integers(*sizes))
    act = st.sampled_from(sorted(ACTIVATIONS))
    blocks = []
    for _ in range(draw(st.integers(1, max_blocks))):
        kinds = ["conv", "residual", "branches", "se", "depthwise"]
        if c % 2 == 0 and c >= 2:
            kinds.append("split")
        if c >= 2 and any(c % g == 0 for g in (2, 3, 4)):
            kinds.append("grouped")
        if size >= 4:
            kinds.append("pool")
        if modern:
            kinds.append("channels_last")
            if c >= 2 and any(c % g == 0 for g in (2, 3, 4)):
                kinds += ["shuffle", "group_norm"]
        if decoder:
            kinds += ["decoder", "decoder"]
        if attention and size * size <= 64:
            kinds += ["attention"] * 3
        kind = draw(st.sampled_from(kinds))
        if kind == "decoder":
            block = draw_decoder_block(draw, c, size, max_channels)
            c, size = decoder_out(block[0], c, size, block[1:])
            blocks.append(block)
        elif kind == "conv":
            cout = draw(st.integers(1, max_channels))
            k = draw(st.sampled_from([1, 3]))
            stride = draw(st.sampled_from([1, 2])) if size >= 4 else 1
            blocks.append(("conv", cout, k, stride, draw(act), draw(st.booleans())))
            size = (size + 2 * (k // 2) - k) // stride + 1
            c = cout
        elif kind == "grouped":
            g = draw(st.sampled_from([g for g in (2, 3, 4) if c % g == 0]))
            cout = g * draw(st.integers(1, max(1, max_channels // g)))
            blocks.append(("grouped", cout, g, draw(act)))
            c = cout
        elif kind == "depthwise":
            mult = draw(st.sampled_from([1, 1, 2]))
            stride = draw(st.sampled_from([1, 2])) if size >= 4 else 1
            blocks.append(("depthwise", mult, stride, draw(act)))
            size = (size + 2 - 3) // stride + 1
            c *= mult
        elif kind == "residual":
            project = draw(st.booleans())
            cout = draw(st.integers(1, max_channels)) if project else c
            blocks.append(("residual", cout, draw(act), project))
            c = cout
        elif kind == "branches":
            dense = draw(st.booleans())
            c1, c2 = draw(st.integers(1, max_channels // 2)), draw(st.integers(1, max_channels // 2))
            blocks.append(("branches", c1, c2, dense))
            c = c1 + c2 + (c if dense else 0)
        elif kind == "se":
            blocks.append(("se", draw(st.integers(1, max(1, c // 2))), draw(st.sampled_from(["sigmoid", "hardsigmoid"]))))
        elif kind == "split":
            blocks.append(("split",))
        elif kind == "pool":
            blocks.append(("pool", draw(st.booleans())))
            size //= 2
        elif kind == "channels_last":
            blocks.append(("channels_last", draw(st.integers(1, 2 * max_channels))))
        elif kind == "attention":
            style = draw(st.sampled_from(["sdpa", "matmul", "mha"]))
            if style == "mha":
                heads = draw(st.sampled_from([h for h in (1, 2, 3, 4) if c % h == 0]))
                head_dim = c // heads
            else:
                heads, head_dim = draw(st.integers(1, 4)), draw(st.integers(1, 4))
            blocks.append(("attention", heads, head_dim, style, draw(st.booleans())))
        elif kind in ("shuffle", "group_norm"):
            g = draw(st.sampled_from([g for g in (2, 3, 4) if c % g == 0]))
            blocks.append((kind, g) if kind == "shuffle" else (kind, g, draw(act)))
    head = draw(st.sampled_from(["pool", "flatten"])) if c * size * size <= 512 else "pool"
    return NetSpec(in_channels, initial_size, draw(st.integers(1, max_batch)), tuple(blocks), head,
                   draw(st.sampled_from([0, 0, 8])), draw(st.integers(2, 6)), draw(st.integers(0, 2**31 - 1)))


def modules(**kwargs) -> st.SearchStrategy[tuple[nn.Module, torch.Tensor]]:
    """Draws `(module, example_input)`: a random CNN in eval mode and an input it accepts."""
    def build(spec: NetSpec):
        m = DrawnNet(spec)
        return m, m.example_input()
    return net_specs(**kwargs).map(build)


def graphs(**kwargs):
    """Draws lifted, verified `hwopt.Graph`s of random CNNs (see `modules()` for what they contain)."""
    from ..frontend import lift
    return modules(**kwargs).map(lambda mx: lift(*mx))


def graphs_with_input(**kwargs):
    """Draws `(graph, example_input)` pairs."""
    from ..frontend import lift
    return modules(**kwargs).map(lambda mx: (lift(*mx), mx[1]))


def _values_for(hint):
    import types
    import typing
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*[st.none() if a is type(None) else _values_for(a) for a in args])
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin in (tuple, list):
        names = st.lists(st.from_regex(r"[a-z][a-z0-9_.]{0,8}", fullmatch=True), max_size=3)
        return names.map(tuple if origin is tuple else list)
    if hint is bool:
        return st.booleans()
    if hint is int:
        return st.integers(0, 64)
    if hint is float:
        return st.floats(0.0, 1.0, allow_nan=False).map(lambda f: round(f, 4))
    if hint is str:
        return st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
    return st.nothing()


@st.composite
def passes(draw, names: list[str] | None = None):
    """Draws an instance of a registered pass with options drawn from their declared types."""
    import dataclasses
    import typing

    from ..errors import PassError
    from ..passmanager import known_passes, make_pass, pass_class
    name = draw(st.sampled_from(sorted(names or known_passes())))
    cls = pass_class(name)
    hints = typing.get_type_hints(cls)
    options = {f.name: draw(_values_for(hints[f.name])) for f in dataclasses.fields(cls) if draw(st.booleans())}
    try:
        return make_pass(name, **options)
    except PassError:  # option combinations a pass's validate() rejects
        from hypothesis import assume
        assume(False)


def pipelines(max_passes: int = 4, names: list[str] | None = None):
    """Draws a PassManager of registered passes (for text round-trip tests)."""
    from ..passmanager import PassManager
    return st.lists(passes(names), max_size=max_passes).map(PassManager)


from .strategies_conv import conv1d_modules, conv1d_specs, decoder_modules  # noqa: E402,F401
