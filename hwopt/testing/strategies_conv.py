"""Hypothesis strategies for Conv1d nets and upsampling / decoder blocks (re-exported by strategies.py).

`conv1d_modules()` draws `(nn.Module in eval mode, [N, C, L] input)`: Conv1d chains (plain, strided,
dilated, grouped, depthwise), BatchNorm1d, TC-ResNet-style residual blocks, and a head that averages over
time or flattens (so a channel owns its L features). `net_specs(decoder=True)` adds 2-D decoder blocks:
nn.Upsample (nearest / bilinear, align_corners, integer and fractional scales, or a target size),
ConvTranspose2d (strided, grouped, output_padding) and a U-Net step (pool, conv, upsample, concat skip).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st
from torch import nn

DECODER_KINDS = ("upsample", "deconv", "unet")


# ----------------------------------------------------------------------------- 2-D decoder blocks

class UNetStep(nn.Module):
    """One U-Net level: pool, conv, upsample back (learned 2x2 ConvTranspose2d or nearest x2), concat skip."""

    def __init__(self, c: int, mid: int, learned: bool):
        super().__init__()
        self.pool, self.conv = nn.MaxPool2d(2), nn.Sequential(nn.Conv2d(c, mid, 3, 1, 1), nn.BatchNorm2d(mid), nn.ReLU())
        self.up = nn.ConvTranspose2d(mid, mid, 2, stride=2) if learned else nn.Upsample(scale_factor=2)

    def forward(self, x):
        return torch.cat([self.up(self.conv(self.pool(x))), x], dim=1)


def draw_decoder_block(draw, c: int, size: int, max_channels: int) -> tuple | None:
    """One decoder block spec for a c-channel size x size map, or None if none fits."""
    kinds = ["deconv"]
    if size <= 10:
        kinds.append("upsample")
    if size % 2 == 0 and size >= 2:
        kinds.append("unet")
    kind = draw(st.sampled_from(kinds))
    if kind == "upsample":
        mode = draw(st.sampled_from(["nearest", "bilinear", "bilinear-corners"]))
        how = draw(st.sampled_from([2, 1.5, "size"]))
        return ("upsample", mode, how, draw(st.integers(size + 1, 2 * size)) if how == "size" else 0)
    if kind == "deconv":
        groups = draw(st.sampled_from([g for g in (1, 2, 3) if c % g == 0]))
        cout = groups * draw(st.integers(1, max(1, max_channels // groups)))
        k, stride = draw(st.sampled_from([2, 3])), draw(st.sampled_from([1, 2] if size <= 8 else [1]))
        return ("deconv", cout, k, stride, groups, draw(st.integers(0, stride - 1)))
    return ("unet", draw(st.integers(1, max_channels // 2 or 1)), draw(st.booleans()))


def decoder_out(kind: str, c: int, size: int, a: tuple) -> tuple[int, int]:
    """(output channels, output size) of a drawn decoder block."""
    if kind == "upsample":
        return c, a[2] if a[1] == "size" else int(size * a[1])
    if kind == "deconv":
        cout, k, stride, _, out_pad = a
        return cout, (size - 1) * stride - 2 * (0 if k == 2 else 1) + k + out_pad
    return c + a[0], size


def decoder_block(kind: str, c: int, size: int, a: tuple) -> tuple[nn.Module, int, int]:
    """(module, output channels, output size) of a drawn decoder block."""
    if kind == "upsample":
        mode, how, target = a
        align = True if mode == "bilinear-corners" else None
        mode = "bilinear" if mode.startswith("bilinear") else mode
        if how == "size":
            return nn.Upsample(size=(target, target), mode=mode, align_corners=align), c, target
        return nn.Upsample(scale_factor=how, mode=mode, align_corners=align), c, int(size * how)
    if kind == "deconv":
        cout, k, stride, groups, out_pad = a
        pad = 0 if k == 2 else 1
        m = nn.ConvTranspose2d(c, cout, k, stride, pad, out_pad, groups=groups)
        return nn.Sequential(m, nn.BatchNorm2d(cout), nn.ReLU()), cout, (size - 1) * stride - 2 * pad + k + out_pad
    if kind == "unet":
        mid, learned = a
        return UNetStep(c, mid, learned), c + mid, size
    raise ValueError(kind)


# ----------------------------------------------------------------------------- Conv1d nets

@dataclass(frozen=True)
class Conv1dSpec:
    in_channels: int
    length: int
    batch: int
    blocks: tuple[tuple, ...]  # (kind, *args)
    head: str  # "mean" or "flatten"
    classes: int
    seed: int


class TemporalResidual(nn.Module):
    def __init__(self, c: int, k: int, act: str):
        from .strategies import ACTIVATIONS
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(c, c, k, 1, k // 2, bias=False), nn.BatchNorm1d(c), ACTIVATIONS[act](),
                                  nn.Conv1d(c, c, k, 1, k // 2, bias=False), nn.BatchNorm1d(c))
        self.act = ACTIVATIONS[act]()

    def forward(self, x):
        return self.act(self.body(x) + x)


class Head1d(nn.Module):
    def __init__(self, feats: int, classes: int, mean: bool):
        super().__init__()
        self.mean, self.fc = mean, nn.Linear(feats, classes)

    def forward(self, x):
        return self.fc(x.mean(2) if self.mean else torch.flatten(x, 1))


class DrawnNet1d(nn.Module):
    def __init__(self, spec: Conv1dSpec):
        from .strategies import ACTIVATIONS
        super().__init__()
        self.spec = spec
        c, length, blocks = spec.in_channels, spec.length, []
        for kind, *a in spec.blocks:
            if kind == "conv1d":
                cout, k, stride, dilation, groups, act, bn = a
                pad = dilation * (k - 1) // 2
                blocks.append(nn.Sequential(nn.Conv1d(c, cout, k, stride, pad, dilation, groups, bias=not bn),
                                            nn.BatchNorm1d(cout) if bn else nn.Identity(), ACTIVATIONS[act]()))
                length = (length + 2 * pad - dilation * (k - 1) - 1) // stride + 1
                c = cout
            elif kind == "residual1d":
                blocks.append(TemporalResidual(c, a[0], a[1]))
            else:
                raise ValueError(kind)
        self.features = nn.Sequential(*blocks)
        self.head = Head1d(c if spec.head == "mean" else c * length, spec.classes, spec.head == "mean")
        _randomize(self, spec.seed)

    def forward(self, x):
        return self.head(self.features(x))

    def example_input(self) -> torch.Tensor:
        s = self.spec
        return torch.randn(s.batch, s.in_channels, s.length, generator=torch.Generator().manual_seed(s.seed + 1))


@torch.no_grad()
def _randomize(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Linear)):
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / m.weight[0].numel() ** 0.5)
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        elif isinstance(m, nn.BatchNorm1d):
            n = m.num_features
            m.weight.copy_(1 + 0.2 * torch.randn(n, generator=gen))
            m.bias.copy_(0.1 * torch.randn(n, generator=gen))
            m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    model.eval()


@st.composite
def conv1d_specs(draw, max_blocks: int = 4, max_channels: int = 12, lengths=(8, 40), max_batch: int = 3) -> Conv1dSpec:
    """Plain-data descriptions of random Conv1d nets over [N, C, L]; valid by construction."""
    from .strategies import ACTIVATIONS
    act = st.sampled_from(sorted(ACTIVATIONS))
    c = in_channels = draw(st.integers(1, 6))
    length = initial = draw(st.integers(*lengths))
    blocks = []
    for _ in range(draw(st.integers(1, max_blocks))):
        kind = draw(st.sampled_from(["conv1d", "conv1d", "residual1d"]))
        if kind == "residual1d":
            blocks.append(("residual1d", draw(st.sampled_from([1, 3, 5])), draw(act)))
            continue
        k = draw(st.sampled_from([1, 3, 5, 9]))
        dilation = draw(st.sampled_from([1, 2])) if k > 1 and length > 2 * (k - 1) + 1 else 1
        stride = draw(st.sampled_from([1, 2])) if length >= 8 else 1
        style = draw(st.sampled_from(["plain", "grouped", "depthwise"]))
        if style == "depthwise":
            groups, cout = c, c * draw(st.sampled_from([1, 1, 2]))
        elif style == "grouped" and c > 1:
            groups = draw(st.sampled_from([g for g in (2, 3, 4) if c % g == 0] or [1]))
            cout = groups * draw(st.integers(1, max(1, max_channels // groups)))
        else:
            groups, cout = 1, draw(st.integers(1, max_channels))
        blocks.append(("conv1d", cout, k, stride, dilation, groups, draw(act), draw(st.booleans())))
        pad = dilation * (k - 1) // 2
        length = (length + 2 * pad - dilation * (k - 1) - 1) // stride + 1
        c = cout
    head = draw(st.sampled_from(["mean", "flatten"])) if c * length <= 256 else "mean"
    return Conv1dSpec(in_channels, initial, draw(st.integers(1, max_batch)), tuple(blocks), head,
                      draw(st.integers(2, 6)), draw(st.integers(0, 2**31 - 1)))


def conv1d_modules(**kwargs) -> st.SearchStrategy[tuple[nn.Module, torch.Tensor]]:
    """Draws `(module, example_input)`: a random Conv1d net in eval mode and an [N, C, L] input."""
    def build(spec: Conv1dSpec):
        m = DrawnNet1d(spec)
        return m, m.example_input()
    return conv1d_specs(**kwargs).map(build)


def decoder_modules(**kwargs) -> st.SearchStrategy[tuple[nn.Module, torch.Tensor]]:
    """Draws 2-D CNNs that always hold upsampling / transposed-conv / U-Net blocks (`net_specs(decoder=True)`)."""
    from .strategies import DrawnNet, net_specs

    def build(spec):
        m = DrawnNet(spec)
        return m, m.example_input()
    return net_specs(decoder=True, **kwargs).filter(lambda s: any(b[0] in DECODER_KINDS for b in s.blocks)).map(build)
