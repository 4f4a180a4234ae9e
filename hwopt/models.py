"""hwopt's own reference CNN definitions (written from the papers; no torchvision, no downloads, random
init with calibrated BN stats), used by the tests, the benchmarks and the quick start. Every model must
trace with ``torch.fx.symbolic_trace`` into the lift front end's closed op set: the leaf modules Conv2d,
Linear, BatchNorm, ReLU/ReLU6/Hardswish/Hardsigmoid/Sigmoid/SiLU/Tanh, pools, Flatten, Dropout,
Identity and ChannelShuffle, plus tensor ``+``/``*``, ``torch.cat(dim=1)``, ``torch.flatten(x, 1)`` and
``x.chunk(2, dim=1)``; no data-dependent control flow, no in-place ops, no ``view``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

__all__ = [
    "MODELS", "get", "example_input", "lenet_300_100", "lenet5", "mnist_cnn", "resnet18", "resnet50",
    "resnext50_32x4d", "ds_cnn", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "mnasnet_a1",
    "squeezenet1_1", "densenet_tiny", "efficientnet_b0", "shufflenet_v2_x0_5", "regnetx_200mf",
]


# ----------------------------------------------------------------------------- shared building blocks

def _make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of `divisor` (hardware-friendly), never dropping below 90% of v."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
             act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    """Conv (no bias: BN follows) + BN [+ activation], 'same' padding for odd k."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def _init_weights(model: nn.Module, in_shape: tuple[int, int, int]) -> nn.Module:
    """Init so random-weight models keep activations O(1) in eval(), then calibrate BN.

    Conv weights get fan_in Kaiming (PyTorch's fan_out ignores `groups`, which makes depthwise
    stacks vanish); biases and Linear keep PyTorch defaults (non-zero, so bias handling gets tested).
    BN running stats are then set from one forward pass on a fixed-seed random batch of `in_shape`
    (C, H, W): every BN output is ~N(0, 1) in eval(), so activations neither vanish (SE-gated
    MBConv stacks) nor blow up (deep residual sums), and BN folding sees non-trivial mean/var.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    if bns:
        was_training = model.training
        model.eval()  # only BN collects stats; Dropout etc. stay deterministic
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one pass sets the stats to exactly this batch's
            m.train()
        # batch 2 for a usable variance estimate where late maps are 7x7; own generator so the
        # global RNG stream is consumed by weight init only, as for any torch module.
        x = torch.randn((2,) + tuple(in_shape), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            model(x)
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was_training)
    return model


# ImageNet models calibrate at their real 224x224: at 112 the 4x4 late-stage maps give too few samples
# and SE's global pooling is resolution-dependent, so late activations drifted up to ~40x at 224.
_CAL_HW = 224


class SqueezeExcite(nn.Module):
    """Channel gating: global pool -> 1x1 reduce -> act -> 1x1 expand -> gate -> scale input.

    The activation/gate pair differs per family (ReLU+Hardsigmoid in MobileNetV3, SiLU+Sigmoid in
    EfficientNet, ReLU+Sigmoid in MnasNet), so both are parameters.
    """

    def __init__(self, channels: int, squeeze: int, act: type[nn.Module] = nn.ReLU,
                 gate: type[nn.Module] = nn.Sigmoid):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    """MBConv block shared by MobileNetV2/V3, MnasNet and EfficientNet.

    [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 linear projection, with an identity shortcut when the
    shape is preserved. The expand conv is omitted when expand == in (the t=1 / SepConv blocks).
    """

    def __init__(self, cin: int, expand: int, cout: int, k: int, stride: int,
                 act: type[nn.Module] = nn.ReLU6, se: int = 0,
                 se_act: type[nn.Module] = nn.ReLU, se_gate: type[nn.Module] = nn.Sigmoid):
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != cin:
            layers.append(_conv_bn(cin, expand, 1, act=act))
        layers.append(_conv_bn(expand, expand, k, stride, groups=expand, act=act))
        if se:
            layers.append(SqueezeExcite(expand, se, se_act, se_gate))
        layers.append(_conv_bn(expand, cout, 1, act=None))  # linear bottleneck: no activation
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res else out  # use_res is fixed at build time: trace-safe


# ----------------------------------------------------------------------------- MNIST models

def lenet_300_100(num_classes: int = 10) -> nn.Module:
    """LeNet-300-100 MLP (LeCun et al. 1998; the Han et al. 2015 pruning baseline), 266,610 params."""
    return _init_weights(nn.Sequential(
        nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
        nn.Linear(100, num_classes)), (1, 28, 28))


def lenet5(num_classes: int = 10) -> nn.Module:
    """Caffe's LeNet-5 variant used by Han et al. 2015 (431,080 params).

    Faithful to the Caffe prototxt: the convs have no nonlinearity, only ip1 is followed by ReLU.
    """
    return _init_weights(nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.MaxPool2d(2),          # 28 -> 24 -> 12
        nn.Conv2d(20, 50, 5), nn.MaxPool2d(2),         # 12 -> 8 -> 4
        nn.Flatten(), nn.Linear(50 * 4 * 4, 500), nn.ReLU(), nn.Linear(500, num_classes)), (1, 28, 28))


def mnist_cnn(num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """Small BN CNN for MNIST (hwopt's demo model); `width` scales every conv's channels (min 1).

    Max-pooled, then flattened into the classifier: it reaches ~98 % in one epoch on 2 cores, and its
    flatten→linear coupling (each channel owns 4×4 classifier inputs) is what structured pruning must get right.
    """
    c1, c2, c3 = (max(1, round(c * width)) for c in (16, 32, 64))
    return _init_weights(nn.Sequential(
        _conv_bn(1, c1), nn.MaxPool2d(2), _conv_bn(c1, c2), nn.MaxPool2d(2), _conv_bn(c2, c3, stride=2),
        nn.Flatten(), nn.Linear(c3 * 4 * 4, num_classes)), (1, 28, 28))


def ds_cnn(num_classes: int = 12, width: int = 64, blocks: int = 4) -> nn.Module:
    """DS-CNN keyword spotting net (Zhang et al., "Hello Edge: Keyword Spotting on Microcontrollers", 2017;
    the S size): a 49x10 MFCC map (49 frames x 10 coefficients), a 10x4 stride-2 conv, `blocks` depthwise
    separable blocks (3x3 depthwise + 1x1 pointwise, each with BN + ReLU), global average pool, a linear
    classifier over 12 classes (10 keywords, silence, unknown). ~24 K parameters, ~2.7 M MACs."""
    layers: list[nn.Module] = [nn.Conv2d(1, width, (10, 4), 2, (5, 1), bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    for _ in range(blocks):
        layers += [_conv_bn(width, width, 3, groups=width), _conv_bn(width, width, 1)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)]
    return _init_weights(nn.Sequential(*layers), (1, 49, 10))


# ----------------------------------------------------------------------------- ResNet / ResNeXt

class BasicBlock(nn.Module):
    """Two 3x3 convs + shortcut. groups/base_width only exist so both block types share a signature."""
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64):
        super().__init__()
        self.conv1 = _conv_bn(cin, planes, 3, stride)
        self.conv2 = _conv_bn(planes, planes, 3, act=None)
        self.downsample = _downsample(cin, planes, stride)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        return self.relu(out + self.downsample(x))


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: the stride sits on the 3x3 conv (as in torchvision / MLPerf)."""
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64):
        super().__init__()
        width = int(planes * base_width / 64) * groups  # ResNeXt: C groups of base_width channels
        self.conv1 = _conv_bn(cin, width, 1)
        self.conv2 = _conv_bn(width, width, 3, stride, groups=groups)
        self.conv3 = _conv_bn(width, planes * 4, 1, act=None)
        self.downsample = _downsample(cin, planes * 4, stride)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self.conv2(self.conv1(x)))
        return self.relu(out + self.downsample(x))


def _downsample(cin: int, cout: int, stride: int) -> nn.Module:
    # Identity (not None) keeps forward branch-free for symbolic tracing.
    return _conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int],
                 num_classes: int = 1000, in_channels: int = 3, groups: int = 1, base_width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(in_channels, 64, 7, 2), nn.MaxPool2d(3, 2, 1))
        stages, cin = [], 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, 2 if i > 0 and j == 0 else 1, groups, base_width))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        _init_weights(self, (in_channels, _CAL_HW, _CAL_HW))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels)


def resnet50(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels)


def resnext50_32x4d(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels, groups=32, base_width=4)


# ----------------------------------------------------------------------------- MobileNet family

class _MBNet(nn.Module):
    """stem -> MBConv stages -> 1x1 head conv -> pool -> classifier; shared by the mobile nets."""

    def __init__(self, stem: nn.Module, blocks: Sequence[nn.Module], head: nn.Module, classifier: nn.Module,
                 in_channels: int):
        super().__init__()
        self.features = nn.Sequential(stem, *blocks, head)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = classifier
        _init_weights(self, (in_channels, _CAL_HW, _CAL_HW))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def mobilenet_v2(num_classes: int = 1000, width_mult: float = 1.0, in_channels: int = 3) -> nn.Module:
    """MobileNetV2 (Sandler et al. 2018), 3.50M params at width 1.0."""
    # (expansion t, out channels c, repeats n, first stride s) from Table 2 of the paper
    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
           (6, 320, 1, 1)]
    cin = _make_divisible(32 * width_mult)
    last = _make_divisible(1280 * max(1.0, width_mult))  # head is never narrowed below 1280
    stem = _conv_bn(in_channels, cin, 3, 2, act=nn.ReLU6)
    blocks = []
    for t, c, n, s in cfg:
        cout = _make_divisible(c * width_mult)
        for i in range(n):
            blocks.append(InvertedResidual(cin, cin * t, cout, 3, s if i == 0 else 1, nn.ReLU6))
            cin = cout
    return _MBNet(stem, blocks, _conv_bn(cin, last, 1, act=nn.ReLU6),
                  nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes)), in_channels)


# (in, kernel, expanded, out, use_se, activation, stride) per Tables 1/2 of Howard et al. 2019
_V3_LARGE = [(16, 3, 16, 16, 0, "RE", 1), (16, 3, 64, 24, 0, "RE", 2), (24, 3, 72, 24, 0, "RE", 1),
             (24, 5, 72, 40, 1, "RE", 2), (40, 5, 120, 40, 1, "RE", 1), (40, 5, 120, 40, 1, "RE", 1),
             (40, 3, 240, 80, 0, "HS", 2), (80, 3, 200, 80, 0, "HS", 1), (80, 3, 184, 80, 0, "HS", 1),
             (80, 3, 184, 80, 0, "HS", 1), (80, 3, 480, 112, 1, "HS", 1), (112, 3, 672, 112, 1, "HS", 1),
             (112, 5, 672, 160, 1, "HS", 2), (160, 5, 960, 160, 1, "HS", 1), (160, 5, 960, 160, 1, "HS", 1)]
_V3_SMALL = [(16, 3, 16, 16, 1, "RE", 2), (16, 3, 72, 24, 0, "RE", 2), (24, 3, 88, 24, 0, "RE", 1),
             (24, 5, 96, 40, 1, "HS", 2), (40, 5, 240, 40, 1, "HS", 1), (40, 5, 240, 40, 1, "HS", 1),
             (40, 5, 120, 48, 1, "HS", 1), (48, 5, 144, 48, 1, "HS", 1), (48, 5, 288, 96, 1, "HS", 2),
             (96, 5, 576, 96, 1, "HS", 1), (96, 5, 576, 96, 1, "HS", 1)]


def _mobilenet_v3(cfg, last: int, num_classes: int, in_channels: int) -> nn.Module:
    stem = _conv_bn(in_channels, 16, 3, 2, act=nn.Hardswish)
    blocks = [InvertedResidual(cin, exp, cout, k, s, nn.ReLU if a == "RE" else nn.Hardswish,
                               se=_make_divisible(exp // 4) if se else 0, se_act=nn.ReLU, se_gate=nn.Hardsigmoid)
              for cin, k, exp, cout, se, a, s in cfg]
    cout = cfg[-1][3]
    return _MBNet(stem, blocks, _conv_bn(cout, 6 * cout, 1, act=nn.Hardswish),
                  nn.Sequential(nn.Linear(6 * cout, last), nn.Hardswish(), nn.Dropout(0.2),
                                nn.Linear(last, num_classes)), in_channels)


def mobilenet_v3_small(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """MobileNetV3-Small (Howard et al. 2019), 2.54M params."""
    return _mobilenet_v3(_V3_SMALL, 1024, num_classes, in_channels)


def mobilenet_v3_large(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """MobileNetV3-Large (Howard et al. 2019), 5.48M params."""
    return _mobilenet_v3(_V3_LARGE, 1280, num_classes, in_channels)


def mnasnet_a1(num_classes: int = 1000, depth_multiplier: float = 1.0, in_channels: int = 3) -> nn.Module:
    """MnasNet-A1 (Tan et al. 2019, Fig. 7): 3.89M params, matching the paper's 3.9M.

    SE (ratio 0.25 of the block's *input* channels, ReLU + sigmoid, as in the reference TF code)
    sits in the 40-, 112- and 160-channel stages. depth_multiplier scales every channel count
    except the fixed 1280-wide head, rounding to multiples of 8.
    """
    # (expansion, kernel, first stride, repeats, out channels, SE)
    cfg = [(6, 3, 2, 2, 24, False), (3, 5, 2, 3, 40, True), (6, 3, 2, 4, 80, False),
           (6, 3, 1, 2, 112, True), (6, 5, 2, 3, 160, True), (6, 3, 1, 1, 320, False)]
    d = lambda c: _make_divisible(c * depth_multiplier)  # noqa: E731
    stem = _conv_bn(in_channels, d(32), 3, 2)
    blocks = [InvertedResidual(d(32), d(32), d(16), 3, 1, nn.ReLU)]  # SepConv: dw 3x3 + linear 1x1
    cin = d(16)
    for e, k, s, n, c, se in cfg:
        for i in range(n):
            blocks.append(InvertedResidual(cin, cin * e, d(c), k, s if i == 0 else 1, nn.ReLU,
                                           se=max(1, int(cin * 0.25)) if se else 0))
            cin = d(c)
    return _MBNet(stem, blocks, _conv_bn(cin, 1280, 1),
                  nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes)), in_channels)


def efficientnet_b0(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """EfficientNet-B0 (Tan & Le 2019), 5.29M params; SE squeezes to 1/4 of the block *input*."""
    # (expansion, kernel, first stride, repeats, out channels) from Table 1 of the paper
    cfg = [(1, 3, 1, 1, 16), (6, 3, 2, 2, 24), (6, 5, 2, 2, 40), (6, 3, 2, 3, 80), (6, 5, 1, 3, 112),
           (6, 5, 2, 4, 192), (6, 3, 1, 1, 320)]
    stem, blocks, cin = _conv_bn(in_channels, 32, 3, 2, act=nn.SiLU), [], 32
    for e, k, s, n, c in cfg:
        for i in range(n):
            blocks.append(InvertedResidual(cin, cin * e, c, k, s if i == 0 else 1, nn.SiLU,
                                           se=max(1, cin // 4), se_act=nn.SiLU, se_gate=nn.Sigmoid))
            cin = c
    # Stochastic depth is a training-only regularizer; it is an identity at inference, so omitted.
    return _MBNet(stem, blocks, _conv_bn(cin, 1280, 1, act=nn.SiLU),
                  nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes)), in_channels)


# ----------------------------------------------------------------------------- SqueezeNet

class Fire(nn.Module):
    """1x1 squeeze, then parallel 1x1 and 3x3 expands concatenated on channels."""

    def __init__(self, cin: int, squeeze: int, e1: int, e3: int):
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU())
        self.expand1x1 = nn.Sequential(nn.Conv2d(squeeze, e1, 1), nn.ReLU())
        self.expand3x3 = nn.Sequential(nn.Conv2d(squeeze, e3, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(x)
        return torch.cat([self.expand1x1(x), self.expand3x3(x)], dim=1)


def squeezenet1_1(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """SqueezeNet 1.1 (1.24M params).

    The reference uses ceil_mode max pools; at 224x224 every pool window tiles exactly
    (111->55->27->13), so floor mode gives identical shapes and keeps the pool op plain.
    """
    model = nn.Sequential(
        nn.Conv2d(in_channels, 64, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        Fire(64, 16, 64, 64), Fire(128, 16, 64, 64), nn.MaxPool2d(3, 2),
        Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), nn.MaxPool2d(3, 2),
        Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256), Fire(512, 64, 256, 256),
        # conv classifier: the network has no Linear layer at all
        nn.Dropout(0.5), nn.Conv2d(512, num_classes, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return _init_weights(model, (in_channels, _CAL_HW, _CAL_HW))


# ----------------------------------------------------------------------------- DenseNet

class DenseLayer(nn.Module):
    """DenseNet-BC layer: BN-ReLU-1x1 (4k) -> BN-ReLU-3x3 (k), output = cat(input, new k features)."""

    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth), nn.ReLU(), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


def densenet_tiny(num_classes: int = 10, growth_rate: int = 12, block_layers: Sequence[int] = (4, 4, 4),
                  in_channels: int = 3) -> nn.Module:
    """Small CIFAR-style DenseNet-BC (compression 0.5) for 32x32 inputs."""
    c = 2 * growth_rate
    layers: list[nn.Module] = [nn.Conv2d(in_channels, c, 3, padding=1, bias=False)]
    for i, n in enumerate(block_layers):
        for _ in range(n):
            layers.append(DenseLayer(c, growth_rate))
            c += growth_rate
        if i < len(block_layers) - 1:  # transition: halve channels and resolution
            layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2)]
            c //= 2
    layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return _init_weights(nn.Sequential(*layers), (in_channels, 32, 32))


# ----------------------------------------------------------------------------- ShuffleNetV2

class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit. Stride 1: split channels, transform one half. Stride 2: both branches see
    the whole input (halving resolution, doubling channels). Then shuffle so halves mix next unit."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride  # build-time constant, so the branch below is trace-safe
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(_conv_bn(cin, cin, 3, stride, groups=cin, act=None),
                                         _conv_bn(cin, half, 1))
        b2_in = cin if stride > 1 else half
        self.branch2 = nn.Sequential(_conv_bn(b2_in, half, 1), _conv_bn(half, half, 3, stride, groups=half, act=None),
                                     _conv_bn(half, half, 1))
        self.shuffle = nn.ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat([x1, self.branch2(x2)], dim=1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], dim=1)
        return self.shuffle(out)


def shufflenet_v2_x0_5(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """ShuffleNetV2 0.5x (Ma et al. 2018), 1.37M params."""
    stage_out, repeats = (48, 96, 192), (4, 8, 4)
    layers: list[nn.Module] = [_conv_bn(in_channels, 24, 3, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 24
    for cout, n in zip(stage_out, repeats):
        layers += [ShuffleUnit(cin if i == 0 else cout, cout, 2 if i == 0 else 1) for i in range(n)]
        cin = cout
    layers += [_conv_bn(cin, 1024, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1024, num_classes)]
    return _init_weights(nn.Sequential(*layers), (in_channels, _CAL_HW, _CAL_HW))


# ----------------------------------------------------------------------------- RegNet

class XBlock(nn.Module):
    """RegNetX block: ResNeXt bottleneck with bottleneck ratio 1 and fixed group width."""

    def __init__(self, cin: int, cout: int, stride: int, group_width: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, 1), _conv_bn(cout, cout, 3, stride, groups=cout // group_width),
                                  _conv_bn(cout, cout, 1, act=None))
        self.proj = _conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.proj(x))


def regnetx_200mf(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """RegNetX-200MF (Radosavovic et al. 2020), 2.68M params.

    Widths/depths are what the paper's quantized linear rule gives for d=13, w0=24, wa=36.44,
    wm=2.49, group width 8 (precomputed rather than re-derived at build time).
    """
    widths, depths, gw = (24, 56, 152, 368), (1, 1, 4, 7), 8
    layers: list[nn.Module] = [_conv_bn(in_channels, 32, 3, 2)]
    cin = 32
    for w, d in zip(widths, depths):
        for i in range(d):
            layers.append(XBlock(cin, w, 2 if i == 0 else 1, gw))
            cin = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return _init_weights(nn.Sequential(*layers), (in_channels, _CAL_HW, _CAL_HW))


# ----------------------------------------------------------------------------- registry

_MNIST, _CIFAR, _IMAGENET = (1, 1, 28, 28), (1, 3, 32, 32), (1, 3, 224, 224)

MODELS: dict[str, tuple[Callable[..., nn.Module], tuple[int, ...]]] = {
    "lenet_300_100": (lenet_300_100, _MNIST),
    "lenet5": (lenet5, _MNIST),
    "mnist_cnn": (mnist_cnn, _MNIST),
    "ds_cnn": (ds_cnn, (1, 1, 49, 10)),
    "densenet_tiny": (densenet_tiny, _CIFAR),
    "resnet18": (resnet18, _IMAGENET),
    "resnet50": (resnet50, _IMAGENET),
    "resnext50_32x4d": (resnext50_32x4d, _IMAGENET),
    "mobilenet_v2": (mobilenet_v2, _IMAGENET),
    "mobilenet_v3_small": (mobilenet_v3_small, _IMAGENET),
    "mobilenet_v3_large": (mobilenet_v3_large, _IMAGENET),
    "mnasnet_a1": (mnasnet_a1, _IMAGENET),
    "squeezenet1_1": (squeezenet1_1, _IMAGENET),
    "efficientnet_b0": (efficientnet_b0, _IMAGENET),
    "shufflenet_v2_x0_5": (shufflenet_v2_x0_5, _IMAGENET),
    "regnetx_200mf": (regnetx_200mf, _IMAGENET),
}


def _entry(name: str) -> tuple[Callable[..., nn.Module], tuple[int, ...]]:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}") from None


def get(name: str, **kwargs) -> nn.Module:
    """Build model `name` with factory kwargs (e.g. num_classes=10)."""
    return _entry(name)[0](**kwargs)


def example_input(name: str, batch: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random N(0,1) input of the model's default shape with batch size `batch`."""
    shape = (batch,) + _entry(name)[1][1:]
    return torch.randn(shape, generator=generator)


# ----------------------------------------------------------------------------- Conv1d / encoder-decoder
# (hwopt/models_conv.py; not in MODELS: their inputs are [N, 40, T] MFCCs and their outputs maps, not logits)
from .models_conv import TC_RESNET_INPUT, UNET_INPUT, tc_resnet8, unet_small  # noqa: E402,F401
