"""NAS-Bench-201 networks (Dong & Yang, ICLR 2020), CIFAR-10 skeleton, written from the paper's description.

    >>> net = nasbench201("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|")
    >>> net(torch.randn(1, 3, 32, 32)).shape
    torch.Size([1, 10])

A cell is a DAG on nodes 0..3; node j sums op(node i) over its edges i -> j; the string lists, per
node j = 1, 2, 3, the op on each edge `op~i`. Ops: `none` (no edge), `skip_connect` (identity),
`nor_conv_1x1` / `nor_conv_3x3` (ReLU -> Conv, no bias -> BN), `avg_pool_3x3` (stride 1, pad 1,
count_include_pad=False).

Which ops the runtime executes is not what the cell string says, and was read off the measurements
(HW-NAS-Bench's TFLite models of the Pi 4 and Pixel 3 columns agree cell for cell; bench/device_fidelity.py).
NAS-Bench-201's `none` is `x * 0` and a node sums its inputs; the converter's rewrites explain the
timings (`program`):
- `x * 0` becomes a constant zero tensor, and adding a zero tensor is dropped: an edge whose result
  only reaches node 3 through `none` edges is dead code (~0 ms, against ~16 ms for a live 3x3 conv on
  the Pi 4), except
- `conv(x) * 0` where that conv's output has no other use: the multiply folds into the conv (its
  weights times 0), and the conv keeps running, computing zeros. A dead conv that is the only term of
  its node therefore still costs its full time (cells `|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|
  none~1|none~2|`: 20 ms, against 2.8 ms for the same cell with `skip_connect~0` into node 1).
- an op reading a node whose terms are all zero reads a constant zero tensor and still runs (a 3x3
  conv on it costs the same ~16 ms as on real data); here that tensor is built as `x * 0`.
With these rules a count of the executed ops ranks the Pi 4 rows 0.98 (validation rows, never the
bench's test rows) where "live edges only" gave 0.968. A cell with no path of non-`none` edges from
node 0 to node 3 makes the network's output a constant (measured 0.01..22 ms): `nasbench201` refuses
it. `canonical(arch)` is the executed program: cells with the same one run the same network
(`bench/device_fidelity.py` groups them for the measurement-noise ceiling).

The skeleton: stem Conv3x3(3 -> 16) + BN; three stages of 5 cells at 16, 32, 64 channels (32x32,
16x16, 8x8 maps); between stages a residual reduction block (ReLU-Conv3x3 stride 2-BN ->
ReLU-Conv3x3-BN; shortcut AvgPool 2x2 -> Conv1x1); then BN, ReLU, global average pool, linear.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from hwopt.ir import Graph, TensorSpec
from hwopt.tensors import remember_finite

__all__ = ["nasbench201", "nasbench201_graph", "parse", "program", "live_edges", "canonical", "computes_constant", "OPS", "NasBench201Error"]

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
    """The edges that are not `none` and whose target reaches node 3 through non-`none` edges ([] when
    the cell computes a constant): what the cell computes. What the runtime executes is `program`."""
    if computes_constant(arch):
        return []
    return _prune([e for e in parse(arch) if e[0] != "none"], forward=False)


Step = tuple[str, str, tuple[str, ...]]  # (name, op, inputs): op a NAS-Bench-201 op, "zero", "mul0" or "add"
_CONVS = ("nor_conv_1x1", "nor_conv_3x3")


def program(arch: str) -> tuple[list[Step], str]:
    """(steps, output): the ops one cell executes as deployed (see the module docstring), in evaluation
    order, and the name of the value the cell returns. Inputs name earlier steps or "x" (the cell's
    input). Ops: the NAS-Bench-201 ops (conv / pool edges; skips are not steps, they pass their
    input's value on), "zero" (a zero tensor of x's shape), "mul0" (a conv's output times 0: the conv
    keeps running), "add" (a node's sum of its non-zero terms). Step names are edge positions, so two
    cells with the same steps run the same network. ([], "") for a cell that computes a constant."""
    edges = parse(arch)
    if computes_constant(arch):
        return [], ""
    users = {i: sum(1 for op, a, _ in edges if a == i and op != "none") for i in range(4)}
    val: dict[int, tuple[str, str]] = {0: ("other", "x")}  # node -> (zero | conv | other, value name)
    steps: list[Step] = []
    for j in (1, 2, 3):
        terms = []
        for op, i, jj in edges:
            if jj != j:
                continue
            kind, ref = val[i]
            if op == "none":
                if kind == "conv" and users[i] == 0:  # the multiply by 0 folds into the conv, which runs
                    steps.append((f"mul0~{i}>{j}", "mul0", (ref,)))
                    terms.append(("conv", steps[-1][0]))
                continue
            if op == "skip_connect":
                terms.append((kind, ref))
                continue
            if kind == "zero" and not any(name == "zero" for name, _, _ in steps):
                steps.append(("zero", "zero", ("x",)))
            steps.append((f"{op}~{i}>{j}", op, (ref,)))
            terms.append(("conv" if op in _CONVS else "other", steps[-1][0]))
        terms = [t for t in terms if t[0] != "zero"]
        if not terms:
            val[j] = ("zero", "zero")
        elif len(terms) == 1:
            val[j] = terms[0]
        else:
            steps.append((f"add>{j}", "add", tuple(ref for _, ref in terms)))
            val[j] = ("other", steps[-1][0])
    out = val[3][1]
    needed, stack = set(), [out]
    by_name = {name: ins for name, _, ins in steps}
    while stack:  # dead-code elimination: keep what the output reads
        n = stack.pop()
        if n not in needed and n in by_name:
            needed.add(n)
            stack += list(by_name[n])
    return [st for st in steps if st[0] in needed], out


def canonical(arch: str) -> str:
    """A key equal for cells that run the same network ('' when the cell computes a constant)."""
    steps, out = program(arch)
    if not out:
        return ""
    return ";".join(f"{name}({','.join(ins)})" for name, _, ins in steps) + f"->{out}"


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
    """One cell as deployed: runs `program(arch)`."""

    def __init__(self, arch: str, c: int):
        super().__init__()
        self.steps, self.out = program(arch)
        self.ops = nn.ModuleList(_op(op, c) for _, op, _ in self.steps if op in OPS)

    def forward(self, x):
        vals = {"x": x}
        mods = iter(self.ops)
        for name, op, ins in self.steps:
            if op == "zero":
                vals[name] = x * 0.0  # a node whose every term is zero: the ops reading it still run
            elif op == "mul0":
                vals[name] = vals[ins[0]] * 0.0
            elif op == "add":
                s = vals[ins[0]]
                for t in ins[1:]:
                    s = s + vals[t]
                vals[name] = s
            else:
                vals[name] = next(mods)(vals[ins[0]])
        return vals[self.out]


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
        if computes_constant(arch):
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
            layers += [Cell(arch, c) for _ in range(cells_per_stage)]
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
            remember_finite(t)  # made here from zeros / ones: verify() need not scan them
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

    def cell(self, name: str, steps: list[Step], out: str, x: str, c: int) -> str:
        vals, k = {"x": x}, 0
        for step, op, ins in steps:
            if op in ("zero", "mul0"):
                vals[step] = self.functional("mul", [x if op == "zero" else vals[ins[0]]], {"scalar": 0.0, "reverse": False}, name)
            elif op == "add":
                s = vals[ins[0]]
                for t in ins[1:]:
                    s = self.functional("add", [s, vals[t]], {}, name)
                vals[step] = s
            else:
                where, k = f"{name}.ops.{k}", k + 1
                if op in _CONVS:
                    vals[step] = self.relu_conv_bn(where, vals[ins[0]], c, c, 1 if op == "nor_conv_1x1" else 3)
                else:  # avg_pool_3x3 (skips are not steps)
                    vals[step] = self.avg_pool(where, vals[ins[0]], 3, 1, 1, False)
        return vals[out]

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
    `hwopt.lift(nasbench201(arch), torch.randn(input_shape))`, ~8x faster (45 ms against 350 ms here:
    no module to construct, no forward to trace). Parameters are zeros (batch norms: identity statistics): the graph is for
    costing (`target.cost`, calibration features); lift the module for its initialized weights."""
    steps, out = program(arch)
    if not out:
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
            x = b.cell(f"cells.{layer}", steps, out, x, c)
            layer += 1
        cprev = c
    x = b.module("head.1", "relu", [b.bn("head.0", x, cprev)])
    x = b.module("head.2", "adaptive_avg_pool2d", [x], {"output_size": (1, 1)})
    x = b.module("head.3", "flatten", [x], {"start_dim": 1, "end_dim": -1})
    x = b.module("head.4", "linear", [x], {"in_features": cprev, "out_features": num_classes},
                 {"weight": torch.zeros(num_classes, cprev), "bias": torch.zeros(num_classes)})
    b.g.add("output", "output", [x])
    return b.g.verify()
