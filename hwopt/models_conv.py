"""Conv1d and encoder-decoder reference models: a TC-ResNet keyword spotter and a small U-Net.

Exposed through hwopt.models (`models.tc_resnet8()`, `models.unet_small()`, their `*_INPUT` shapes).
Random weights, initialised as the other reference models (fan-in Kaiming, BN calibrated on one batch).
"""
from __future__ import annotations

import torch
from torch import nn

TC_RESNET_INPUT = (1, 40, 101)  # 40 MFCC coefficients as channels x 101 frames (1 s at a 10 ms hop)
UNET_INPUT = (1, 3, 64, 64)


def _init(model: nn.Module, in_shape: tuple[int, ...]) -> nn.Module:
    from .models import _init_weights  # one initialisation for every reference model
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in" if isinstance(m, nn.Conv1d) else "fan_out",
                                    nonlinearity="relu")
    return _init_weights(model, in_shape)


class TCBlock(nn.Module):
    """TC-ResNet's residual block: two k=9 temporal convs (the first strided), a 1x1 strided shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 2, k: int = 9):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv1d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm1d(cout)
        self.conv2, self.bn2 = nn.Conv1d(cout, cout, k, 1, k // 2, bias=False), nn.BatchNorm1d(cout)
        self.shortcut = nn.Sequential(nn.Conv1d(cin, cout, 1, stride, bias=False), nn.BatchNorm1d(cout), nn.ReLU())
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(y + self.shortcut(x))


class TCResNet(nn.Module):
    def __init__(self, num_classes: int, channels: tuple[int, ...], n_mfcc: int):
        super().__init__()
        self.stem = nn.Conv1d(n_mfcc, channels[0], 3, 1, 1, bias=False)
        self.blocks = nn.Sequential(*(TCBlock(a, b) for a, b in zip(channels[:-1], channels[1:])))
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x):
        y = self.blocks(self.stem(x))
        return self.fc(self.dropout(y.mean(2)))


def tc_resnet8(num_classes: int = 12, width_mult: float = 1.0, n_mfcc: int = 40) -> nn.Module:
    """TC-ResNet8 (Choi et al., "Temporal Convolution for Real-time Keyword Spotting on Mobile Devices",
    2019): MFCCs [N, 40, T] with the coefficients as channels, a k=3 Conv1d stem (16 channels), three
    residual blocks of k=9 temporal convs with stride 2 (24, 32, 48 channels), average over time, a
    linear classifier over 12 classes (10 keywords, silence, unknown). ~66 K parameters at width 1."""
    channels = tuple(max(1, round(c * width_mult)) for c in (16, 24, 32, 48))
    return _init(TCResNet(num_classes, channels, n_mfcc), (n_mfcc, TC_RESNET_INPUT[2]))


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class UNet(nn.Module):
    """Encoder (two 2x2 max-pools), bottleneck, and a decoder whose first step is a learned 2x2 stride-2
    ConvTranspose2d and whose second is a bilinear nn.Upsample + 1x1 conv; each concatenates the encoder's
    skip tensor (channels then come from two producers, which the channel coupling keeps apart)."""

    def __init__(self, in_channels: int, num_classes: int, width: int):
        super().__init__()
        w1, w2, w3 = width, 2 * width, 4 * width
        self.enc1, self.enc2 = _double_conv(in_channels, w1), _double_conv(w1, w2)
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _double_conv(w2, w3)
        self.up2 = nn.ConvTranspose2d(w3, w2, 2, stride=2)
        self.dec2 = _double_conv(2 * w2, w2)
        self.up1 = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                 nn.Conv2d(w2, w1, 1))
        self.dec1 = _double_conv(2 * w1, w1)
        self.head = nn.Conv2d(w1, num_classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        b = self.bottleneck(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(d1)


def unet_small(num_classes: int = 2, width: int = 16, in_channels: int = 3) -> nn.Module:
    """A small U-Net (Ronneberger et al. 2015, two levels instead of four) for segmentation: input
    [N, 3, H, W] with H, W divisible by 4, output [N, num_classes, H, W] logits. ~0.12 M parameters at
    width 16."""
    return _init(UNet(in_channels, num_classes, width), UNET_INPUT[1:])
