"""NAS-Bench-201 networks (Dong & Yang, ICLR 2020), CIFAR-10 skeleton, written from the paper's description.

    >>> net = nasbench201("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|")
    >>> net(torch.randn(1, 3, 32, 32)).shape
    torch.Size([1, 10])

A cell is a DAG on nodes 0..3; node j sums op(node i) over its edges i -> j; the string lists, per
node j = 1, 2, 3, the op on each edge `op~i`. Ops: `none` (no edge), `skip_connect` (identity),
`nor_conv_1x1` / `nor_conv_3x3` (ReLU -> Conv, no bias -> BN), `avg_pool_3x3` (stride 1, pad 1,
count_include_pad=False).

Which edges a runtime executes is read off the measurements (bench/device_fidelity.py): an edge
whose result never reaches node 3 through non-`none` edges is dropped (dead-code elimination: such
an edge costs ~0 ms on a Raspberry Pi 4, against ~16 ms for a live 3x3 conv edge), but an op that
reads a node whose every input is `none` is still executed (NAS-Bench-201's `none` is `x * 0`, which
the converter does not fold: adding a 3x3 conv that reads such a zero node costs the same ~16 ms as
one that reads real data). So `live_edges` drops only dead-end edges; a zero node is built as
`x * 0`. A cell with no path of non-`none` edges from node 0 to node 3 makes the network's output a
constant (measured 0.01..22 ms, unlike any network): `nasbench201` refuses it. `canonical(arch)` is
the set of live edges: cells with the same canonical form run the same network, which
`bench/device_fidelity.py` uses for the measurement noise floor.

The skeleton: stem Conv3x3(3 -> 16) + BN; three stages of 5 cells at 16, 32, 64 channels (32x32,
16x16, 8x8 maps); between stages a residual reduction block (ReLU-Conv3x3 stride 2-BN ->
ReLU-Conv3x3-BN; shortcut AvgPool 2x2 -> Conv1x1); then BN, ReLU, global average pool, linear.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from hwopt.ir import Graph, TensorSpec, _remember_finite

__all__ = ["nasbench201", "nasbench201_graph", "parse", "live_edges", "canonical", "computes_constant", "OPS", "NasBench201Error"]

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
_EDGE = re.compile(r"^([a-z_0-9]+)~(\d+)$")


class NasBench201Error(ValueError):
    """A cell string that is not NAS-Bench-201 notation, or a cell that computes nothing."""


def parse(arch: str) -> list[tuple[str, int, int]]:
    """[(op, from_node, to_node)] for the 6 edges of a cell string; raises NasBench201Error naming the part."""
    if not isinstance(arch, str):
        raise NasBench201Error(f"cell must be a string, got {type(arch).__name__}")
    nodes = arch.strip().strip("|").split("|+|")
    if len(nodes) != 3:
        raise NasBench201Error(f"cell {arch!r}: expected 3 nodes separated by '+', got {len(nodes)}")
    edges = []
    for j, node in enumerate(nodes, start=1):
        parts = node.strip("|").split("|")
        if len(parts) != j:
            raise NasBench201Error(f"cell {arch!r}: node {j} must have {j} inputs, got {len(parts)}")
        for want, e in enumerate(parts):
            m = _EDGE.match(e)
            if not m or m.group(1) not in OPS or int(m.group(2)) != want:
                raise NasBench201Error(f"cell {arch!r}: bad edge {e!r} into node {j} "
                                       f"(expected op~{want}, op one of {', '.join(OPS)})")
            edges.append((m.group(1), want, j))
    return edges


def _prune(edges, forward: bool):
    """Drop, until nothing changes, edges whose target does not reach node 3 (and, with `forward`,
    edges whose source is not reached from node 0)."""
    while True:
        fwd = {0}
        for _, i, j in sorted(edges, key=lambda e: e[2]):
            if i in fwd:
                fwd.add(j)
        bwd = {3}
        for _, i, j in sorted(edges, key=lambda e: -e[2]):
            if j in bwd:
                bwd.add(i)
        kept = [e for e in edges if e[2] in bwd and (not forward or e[1] in fwd)]
        if len(kept) == len(edges):
            return sorted(kept, key=lambda e: (e[2], e[1]))
        edges = kept


def computes_constant(arch: str) -> bool:
    """True when no path of non-`none` edges joins node 0 to node 3: the cell's output is a constant."""
    return not _prune([e for e in parse(arch) if e[0] != "none"], forward=True)


def live_edges(arch: str) -> list[tuple[str, int, int]]:
    """The edges a runtime executes: not `none`, and their target reaches node 3 through non-`none`
    edges ([] when the cell computes a constant)."""
    if computes_constant(arch):
        return []
    return _prune([e for e in parse(arch) if e[0] != "none"], forward=False)


def canonical(arch: str) -> str:
    """A key equal for cells that compute the same network ('' when the cell computes nothing)."""
    return "|".join(f"{op}~{i}>{j}" for op, i, j in live_edges(arch))


class _ReLUConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1):
        super().__init__(nn.ReLU(), nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


def _op(name: str, c: int) -> nn.Module:
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return _ReLUConvBN(c, c, 1)
    if name == "nor_conv_3x3":
        return _ReLUConvBN(c, c, 3)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, 1, 1, count_include_pad=False)
    raise AssertionError(name)


class Cell(nn.Module):
    def __init__(self, edges: list[tuple[str, int, int]], c: int):
        super().__init__()
        self.edges = [(i, j) for _, i, j in edges]
        self.ops = nn.ModuleList(_op(op, c) for op, _, _ in edges)

    def forward(self, x):
        nodes = {0: x}
        for j in (1, 2, 3):
            ins = [op(nodes[i]) for op, (i, jj) in zip(self.ops, self.edges) if jj == j]
            if ins:
                s = ins[0]
                for t in ins[1:]:
                    s = s + t
                nodes[j] = s
            elif any(i == j for i, _ in self.edges):
                nodes[j] = x * 0.0  # every input is `none`: NAS-Bench-201's Zero op, executed
        return nodes[3]


class ReductionBlock(nn.Module):
    """ResNet basic block with stride 2 between stages (NAS-Bench-201's ResNetBasicblock)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv_a = _ReLUConvBN(cin, cout, 3, 2)
        self.conv_b = _ReLUConvBN(cout, cout, 3, 1)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(cin, cout, 1, bias=False))

    def forward(self, x):
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


class NasBench201(nn.Module):
    def __init__(self, arch: str, num_classes: int = 10, channels: tuple[int, int, int] = (16, 32, 64),
                 cells_per_stage: int = 5):
        super().__init__()
        edges = live_edges(arch)
        if not edges:
            raise NasBench201Error(f"cell {arch!r} has no path from its input to its output: the network "
                                   "computes a constant (no latency to model)")
        self.arch = arch
        c0 = channels[0]
        self.stem = nn.Sequential(nn.Conv2d(3, c0, 3, 1, 1, bias=False), nn.BatchNorm2d(c0))
        layers: list[nn.Module] = []
        cprev = c0
        for s, c in enumerate(channels):
            if s:
                layers.append(ReductionBlock(cprev, c))
            layers += [Cell(edges, c) for _ in range(cells_per_stage)]
            cprev = c
        self.cells = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.BatchNorm2d(cprev), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(cprev, num_classes))

    def forward(self, x):
        return self.head(self.cells(self.stem(x)))


def nasbench201(arch: str, num_classes: int = 10) -> nn.Module:
    """The NAS-Bench-201 CIFAR network of cell `arch` (eval mode; input 1x3x32x32)."""
    torch.manual_seed(0)
    return NasBench201(arch, num_classes).eval()


# --------------------------------------------------------------------------------------------------
# The IR of a network built straight from the cell description (no torch module, no tracing)


class _GraphBuilder:
    """Adds nodes to an IR Graph in the order, with the names, attributes, shapes and parameter shapes
    that `hwopt.lift(nasbench201(arch), 1x3x32x32)` produces (tests/test_nasbench201.py checks it node
    by node): lifting traces the module's forward, so this replays that forward's execution order."""

    def __init__(self, input_shape: tuple[int, ...]):
        self.g = Graph()
        self.g.add("x", "input", spec=TensorSpec(tuple(input_shape), "float32"))
        self.counts: dict[str, int] = {}

    def functional(self, op: str, inputs, attrs: dict, source: str) -> str:
        k = self.counts.get(op, 0)
        self.counts[op] = k + 1
        return self.g.add(f"{op}_{k}" if k else op, op, inputs, attrs, source=source).name

    def module(self, name: str, op: str, inputs, attrs: dict | None = None, params: dict | None = None) -> str:
        for t in (params or {}).values():
            _remember_finite(t)  # made here from zeros / ones: verify() need not scan them
        return self.g.add(name, op, inputs, attrs or {}, params or {}, source=name).name

    def conv(self, name: str, x: str, cin: int, cout: int, k: int, stride: int = 1) -> str:
        attrs = {"in_channels": cin, "out_channels": cout, "kernel_size": (k, k), "stride": (stride, stride),
                 "padding": (k // 2, k // 2), "dilation": (1, 1), "groups": 1}
        return self.module(name, "conv2d", [x], attrs, {"weight": torch.zeros(cout, cin, k, k)})

    def bn(self, name: str, x: str, c: int) -> str:
        params = {"weight": torch.ones(c), "bias": torch.zeros(c), "running_mean": torch.zeros(c),
                  "running_var": torch.ones(c)}
        return self.module(name, "batch_norm", [x], {"num_features": c, "eps": 1e-05, "momentum": 0.1}, params)

    def relu_conv_bn(self, name: str, x: str, cin: int, cout: int, k: int, stride: int = 1) -> str:
        r = self.module(f"{name}.0", "relu", [x])
        return self.bn(f"{name}.2", self.conv(f"{name}.1", r, cin, cout, k, stride), cout)

    def avg_pool(self, name: str, x: str, k: int, stride: int, pad: int, include_pad: bool) -> str:
        return self.module(name, "avg_pool2d", [x], {"kernel_size": (k, k), "stride": (stride, stride),
                                                     "padding": (pad, pad), "ceil_mode": False,
                                                     "count_include_pad": include_pad})

    def cell(self, name: str, edges: list[tuple[str, int, int]], x: str, c: int) -> str:
        nodes = {0: x}
        for j in (1, 2, 3):
            ins = []
            for k, (op, i, jj) in enumerate(edges):
                if jj != j:
                    continue
                where = f"{name}.ops.{k}"
                if op == "skip_connect":
                    ins.append(self.module(where, "identity", [nodes[i]]))
                elif op in ("nor_conv_1x1", "nor_conv_3x3"):
                    ins.append(self.relu_conv_bn(where, nodes[i], c, c, 1 if op == "nor_conv_1x1" else 3))
                else:  # avg_pool_3x3
                    ins.append(self.avg_pool(where, nodes[i], 3, 1, 1, False))
            if ins:
                s = ins[0]
                for t in ins[1:]:
                    s = self.functional("add", [s, t], {}, name)
                nodes[j] = s
            elif any(i == j for _, i, _ in edges):
                nodes[j] = self.functional("mul", [x], {"scalar": 0.0, "reverse": False}, name)
        return nodes[3]

    def reduction(self, name: str, x: str, cin: int, cout: int) -> str:
        s = self.avg_pool(f"{name}.shortcut.0", x, 2, 2, 0, True)
        s = self.conv(f"{name}.shortcut.1", s, cin, cout, 1)
        b = self.relu_conv_bn(f"{name}.conv_a", x, cin, cout, 3, 2)
        b = self.relu_conv_bn(f"{name}.conv_b", b, cout, cout, 3)
        return self.functional("add", [s, b], {}, name)


def nasbench201_graph(arch: str, num_classes: int = 10, channels: tuple[int, int, int] = (16, 32, 64),
                      cells_per_stage: int = 5, input_shape: tuple[int, ...] = (1, 3, 32, 32)):
    """The verified IR Graph of `nasbench201(arch)` lifted at `input_shape`, built from the cell
    description directly: the same nodes (names, ops, attributes, inputs, shapes, parameter shapes) as
    `hwopt.lift(nasbench201(arch), torch.randn(input_shape))`, ~20x faster (no module to construct,
    no forward to trace). Parameters are zeros (batch norms: identity statistics): the graph is for
    costing (`target.cost`, calibration features); lift the module for its initialized weights."""
    edges = live_edges(arch)
    if not edges:
        raise NasBench201Error(f"cell {arch!r} has no path from its input to its output: the network "
                               "computes a constant (no latency to model)")
    b = _GraphBuilder(input_shape)
    c0 = channels[0]
    x = b.bn("stem.1", b.conv("stem.0", "x", input_shape[1], c0, 3), c0)
    cprev, layer = c0, 0
    for s, c in enumerate(channels):
        if s:
            x = b.reduction(f"cells.{layer}", x, cprev, c)
            layer += 1
        for _ in range(cells_per_stage):
            x = b.cell(f"cells.{layer}", edges, x, c)
            layer += 1
        cprev = c
    x = b.module("head.1", "relu", [b.bn("head.0", x, cprev)])
    x = b.module("head.2", "adaptive_avg_pool2d", [x], {"output_size": (1, 1)})
    x = b.module("head.3", "flatten", [x], {"start_dim": 1, "end_dim": -1})
    x = b.module("head.4", "linear", [x], {"in_features": cprev, "out_features": num_classes},
                 {"weight": torch.zeros(num_classes, cprev), "bias": torch.zeros(num_classes)})
    b.g.add("output", "output", [x])
    return b.g.verify()
