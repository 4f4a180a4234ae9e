"""MnasNet's factorized hierarchical search space (Tan et al. 2019, sec. 4.1 and Fig. 4).

The network is MnasNet-A1's skeleton: a 3x3 stem conv (32 channels), B blocks with fixed stride, base
filter count and base layer count, then a 1x1 head conv, global average pool and a linear classifier.
Each block makes six decisions, shared by all of its layers:

    op       regular conv | depthwise-separable conv | MBConv expansion 3 | MBConv expansion 6
    kernel   3 | 5
    se       0 | 0.25          (squeeze-and-excitation ratio, of the layer's input channels)
    skip     none | identity   (only where stride 1 and in == out channels; ignored elsewhere)
    filters  x0.75 | x1.0 | x1.25 of the block's base filters
    layers   base-1 | base | base+1 (at least 1)

An architecture is a flat tuple of ints, six per block (`DECISIONS` order). `SearchSpace.build(tokens)`
returns a torch module made only of fx-traceable parts (Conv2d, BatchNorm2d, ReLU, Sigmoid, adaptive
average pooling, Linear, tensor `+` and `*`, no in-place ops), so `hwopt.lift` gives a verified Graph
whose target cost is known before any training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

# (name, choices) per decision, in token order within a block.
DECISIONS: tuple[tuple[str, tuple], ...] = (
    ("op", ("conv", "sepconv", "mbconv3", "mbconv6")),
    ("kernel", (3, 5)),
    ("se", (0.0, 0.25)),
    ("skip", ("none", "identity")),
    ("filters", (0.75, 1.0, 1.25)),
    ("layers", (-1, 0, 1)),
)
DECISION_NAMES = tuple(n for n, _ in DECISIONS)
CHOICES = tuple(len(c) for _, c in DECISIONS)
PER_BLOCK = len(DECISIONS)

# MnasNet-A1 (Fig. 7): per block (stride, base filters, base layers). The stem is conv 3x3 s2 -> 32.
MNASNET_A1_BLOCKS = ((1, 16, 1), (2, 24, 2), (2, 40, 3), (2, 80, 4), (1, 112, 2), (2, 160, 3), (1, 320, 1))
# Block strides for small inputs (e.g. MNIST 28x28): with the stride-2 stem the total stride is 8 instead
# of 32, so a 28x28 input ends in 4x4 maps rather than being reduced to nothing.
SMALL_STRIDES = (1, 1, 2, 1, 1, 2, 1)


def _divisible(v: float, divisor: int) -> int:
    """Round to a multiple of `divisor` (hardware-friendly widths), never below 90 % of v."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


@dataclass(frozen=True)
class BlockChoice:
    op: str
    kernel: int
    se: float
    skip: str
    filters: float
    layers: int  # offset from the base layer count

    def short(self) -> str:
        return f"{self.op}k{self.kernel}{'se' if self.se else ''}{'+id' if self.skip == 'identity' else ''}" \
               f"x{self.filters:g}L{self.layers:+d}"


@dataclass(frozen=True)
class SearchSpace:
    """The space and the network skeleton its tokens decode into.

    blocks: number of searched blocks B (<= 7 follows MnasNet-A1's first B blocks; more repeat the last).
    skeleton: "mnasnet" (block strides of MnasNet-A1, total stride 32), "small" (SMALL_STRIDES, total 8)
        or "auto" ("small" when the input is under 64 pixels). The stem has stride 2 in both.
    width: multiplies every base filter count (stem, blocks) before the per-block multiplier.
    head: channels of the 1x1 head conv (1280 in MnasNet-A1).
    divisor: channel counts are rounded to multiples of this.
    """
    blocks: int = 7
    in_channels: int = 3
    num_classes: int = 1000
    resolution: int = 224
    skeleton: str = "auto"
    width: float = 1.0
    head: int = 1280
    divisor: int = 8

    def __post_init__(self):
        if self.blocks < 1:
            raise ValueError(f"blocks must be >= 1, got {self.blocks}")
        if self.skeleton not in ("auto", "mnasnet", "small"):
            raise ValueError(f"skeleton must be auto, mnasnet or small, got {self.skeleton!r}")
        if self.width <= 0 or self.head < 1 or self.divisor < 1 or self.resolution < 1:
            raise ValueError("width, head, divisor and resolution must be positive")

    # -- skeleton ---------------------------------------------------------------------------------
    @property
    def small(self) -> bool:
        return self.skeleton == "small" or (self.skeleton == "auto" and self.resolution < 64)

    stem_stride = 2

    def skeleton_blocks(self) -> list[tuple[int, int, int]]:
        """(stride, base filters, base layers) for each of the B blocks."""
        out = []
        for b in range(self.blocks):
            s, f, n = MNASNET_A1_BLOCKS[min(b, len(MNASNET_A1_BLOCKS) - 1)]
            if b >= len(MNASNET_A1_BLOCKS):
                s = 1
            elif self.small:
                s = SMALL_STRIDES[b]
            out.append((s, f, n))
        return out

    @property
    def length(self) -> int:
        return PER_BLOCK * self.blocks

    @property
    def vocab(self) -> tuple[int, ...]:
        """Number of choices at each token position."""
        return CHOICES * self.blocks

    @property
    def size(self) -> int:
        n = 1
        for c in self.vocab:
            n *= c
        return n

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        return (batch, self.in_channels, self.resolution, self.resolution)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(self.input_shape(batch))

    # -- tokens -----------------------------------------------------------------------------------
    def check(self, tokens: Sequence[int]) -> tuple[int, ...]:
        t = tuple(int(x) for x in tokens)
        if len(t) != self.length:
            raise ValueError(f"expected {self.length} tokens ({self.blocks} blocks x {PER_BLOCK}), got {len(t)}")
        for i, (x, n) in enumerate(zip(t, self.vocab)):
            if not 0 <= x < n:
                raise ValueError(f"token {i} (block {i // PER_BLOCK}, {DECISION_NAMES[i % PER_BLOCK]}) = {x} "
                                 f"is outside 0..{n - 1}")
        return t

    def decode(self, tokens: Sequence[int]) -> list[BlockChoice]:
        t = self.check(tokens)
        return [BlockChoice(*(DECISIONS[j][1][t[b * PER_BLOCK + j]] for j in range(PER_BLOCK)))
                for b in range(self.blocks)]

    def encode(self, choices: Sequence[BlockChoice]) -> tuple[int, ...]:
        out = []
        for c in choices:
            for name, opts in DECISIONS:
                out.append(opts.index(getattr(c, name)))
        return self.check(out)

    def plan(self, tokens: Sequence[int]) -> list[dict]:
        """Every layer of the decoded network: cin, cout, stride, op, kernel, se, skip (as applied)."""
        layers, cin = [], _divisible(32 * self.width, self.divisor)
        for (stride, base_f, base_n), c in zip(self.skeleton_blocks(), self.decode(tokens)):
            cout = _divisible(base_f * self.width * c.filters, self.divisor)
            for i in range(max(1, base_n + c.layers)):
                s = stride if i == 0 else 1
                skip = c.skip == "identity" and s == 1 and cin == cout
                layers.append(dict(cin=cin, cout=cout, stride=s, op=c.op, kernel=c.kernel, se=c.se, skip=skip))
                cin = cout
        return layers

    def canonical(self, tokens: Sequence[int]) -> tuple[int, ...]:
        """Tokens with ineffective decisions normalised: architectures that build the same network
        (a skip no layer of the block can use) map to the same key, so the cache trains them once."""
        t = list(self.check(tokens))
        plan, pos = self.plan(t), 0
        for b, ((_, _, base_n), c) in enumerate(zip(self.skeleton_blocks(), self.decode(t))):
            n = max(1, base_n + c.layers)
            if not any(layer["skip"] for layer in plan[pos:pos + n]):
                t[b * PER_BLOCK + DECISION_NAMES.index("skip")] = 0
            pos += n
        return tuple(t)

    def describe(self, tokens: Sequence[int]) -> str:
        return " ".join(c.short() for c in self.decode(tokens))

    def baseline(self) -> tuple[int, ...]:
        """MobileNetV2-style member of the space: every block MBConv6 k3, no SE, x1.0, base layers,
        identity skips where they apply."""
        return self.encode([BlockChoice("mbconv6", 3, 0.0, "identity", 1.0, 0)] * self.blocks)

    def mnasnet_a1(self) -> tuple[int, ...]:
        """MnasNet-A1's own choices (Fig. 7), for B = 7."""
        if self.blocks != 7:
            raise ValueError("MnasNet-A1 has 7 blocks")
        spec = [("sepconv", 3, 0.0), ("mbconv6", 3, 0.0), ("mbconv3", 5, 0.25), ("mbconv6", 3, 0.0),
                ("mbconv6", 3, 0.25), ("mbconv6", 5, 0.25), ("mbconv6", 3, 0.0)]
        return self.encode([BlockChoice(op, k, se, "identity", 1.0, 0) for op, k, se in spec])

    # -- modules ----------------------------------------------------------------------------------
    def build(self, tokens: Sequence[int], seed: int | None = 0) -> "NASNet":
        """The torch module of an architecture. With a seed its initial weights are reproducible
        (and the global torch RNG is left untouched)."""
        plan = self.plan(tokens)
        if seed is None:
            return NASNet(self, plan)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return NASNet(self, plan)

    def graph(self, tokens: Sequence[int], seed: int | None = 0):
        """The verified hwopt Graph of an architecture (its target cost needs no training)."""
        import hwopt
        model = self.build(tokens, seed).eval()
        return hwopt.lift(model, self.example_input())


# ------------------------------------------------------------------------------------------------
# modules (fx-traceable: fixed structure, no data-dependent control flow, no in-place ops)


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU())
    return layers


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.act = nn.ReLU()
        self.expand = nn.Conv2d(squeeze, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class Layer(nn.Module):
    """One layer of a block: its op, optional SE, optional identity skip (decided at build time)."""

    def __init__(self, cin: int, cout: int, stride: int, op: str, kernel: int, se: float, skip: bool):
        super().__init__()
        squeeze = max(1, int(cin * se)) if se else 0
        body: list[nn.Module] = []
        if op == "conv":
            body += _conv_bn(cin, cout, kernel, stride)
            if se:
                body.append(SqueezeExcite(cout, squeeze))
        elif op == "sepconv":
            body += _conv_bn(cin, cin, kernel, stride, groups=cin)
            if se:
                body.append(SqueezeExcite(cin, squeeze))
            body += _conv_bn(cin, cout, 1, act=False)
        elif op in ("mbconv3", "mbconv6"):
            mid = cin * (3 if op == "mbconv3" else 6)
            body += _conv_bn(cin, mid, 1)
            body += _conv_bn(mid, mid, kernel, stride, groups=mid)
            if se:
                body.append(SqueezeExcite(mid, squeeze))
            body += _conv_bn(mid, cout, 1, act=False)
        else:
            raise ValueError(f"unknown op {op!r}")
        self.body = nn.Sequential(*body)
        self.skip = bool(skip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out + x if self.skip else out


class NASNet(nn.Module):
    def __init__(self, space: SearchSpace, plan: list[dict]):
        super().__init__()
        stem_c = plan[0]["cin"]
        self.stem = nn.Sequential(*_conv_bn(space.in_channels, stem_c, 3, space.stem_stride))
        self.blocks = nn.Sequential(*(Layer(**p) for p in plan))
        self.head = nn.Sequential(*_conv_bn(plan[-1]["cout"], space.head, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(space.head, space.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # fan_in: PyTorch's fan_out ignores groups (vanishing depthwise stacks)
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))
