"""The firmware's schedule and memory plan: which graph nodes each kernel computes, which buffers it
reads and writes, how long each buffer lives, and where it sits in the one activation arena.

Kernels follow the cost model's fusion rule (hwopt.targets.cost): an elementwise node (batch norm,
activation, residual add ...) that reads a conv/linear (or an already fused node) with no other reader
is computed inside that layer's kernel, so its output shares the layer's buffer. View ops (reshape,
flatten, identity, dropout) alias their input's buffer. Every other node is a kernel of its own.

The arena is laid out greedily by size (largest buffer first, lowest offset that overlaps no buffer
alive at the same time), as TFLite Micro's GreedyMemoryPlanner does; its lower bound is the peak of live
bytes, the cost model's peak SRAM.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import Graph, OpsWhere

ARENA_ALIGN = 16
# what the firmware does with each op: the op table's `firmware` flag (hwopt.ir.OPS), read live
VIEW_OPS = OpsWhere(lambda d: d.firmware == "view")
FUSABLE_PRODUCERS = OpsWhere(lambda d: d.firmware == "anchor")
FUSABLE = OpsWhere(lambda d: d.firmware == "fused")


@dataclass
class Kernel:
    """One kernel of the firmware: `nodes[0]` is its anchor, the rest are fused into it."""
    name: str
    nodes: list[str]
    inputs: list[str] = field(default_factory=list)  # activation buffers read (buffer names)

    @property
    def output(self) -> str:
        return self.nodes[-1]


@dataclass
class Buffer:
    name: str
    nbytes: int
    first: int  # index of the kernel that writes it (-1: the graph input, written before the first kernel)
    last: int   # index of the last kernel that reads it (len(kernels): the graph output, read after the end)
    offset: int = -1


@dataclass
class Plan:
    kernels: list[Kernel]
    root: dict[str, str]        # node name -> the buffer holding its value (views and fused nodes alias)
    buffers: dict[str, Buffer]
    inputs: list[str]           # graph input buffers
    outputs: list[str]          # graph output buffers, in output order
    arena_bytes: int = 0

    @property
    def peak_live_bytes(self) -> int:
        """The most bytes alive at once: the lower bound of any arena layout."""
        steps = range(-1, len(self.kernels) + 1)
        return max((sum(b.nbytes for b in self.buffers.values() if b.first <= s <= b.last) for s in steps), default=0)


def _align(n: int, a: int = ARENA_ALIGN) -> int:
    return -(-n // a) * a


def fusion_groups(g: Graph) -> tuple[list[list[str]], dict[str, str]]:
    """Kernel node groups in execution order, and the buffer root of every node."""
    order = g.order()
    pos = {n: i for i, n in enumerate(order)}
    root: dict[str, str] = {}
    group_of: dict[str, int] = {}
    groups: list[list[str]] = []
    for name in order:
        n = g[name]
        if n.op == "input":
            root[name] = name
            continue
        if n.op == "output":
            continue
        if n.op in VIEW_OPS:
            root[name] = root[n.inputs[0]]
            continue
        host = None
        if n.op in FUSABLE:
            for i in n.inputs:
                src = g[i]
                fusable = src.op in FUSABLE_PRODUCERS or (i in group_of and src.op in FUSABLE)
                if fusable and i in group_of and len(g.users(i)) == 1 and groups[group_of[i]][-1] == i:
                    host = group_of[i]
                    break
        if host is None:
            group_of[name] = len(groups)
            groups.append([name])
        else:
            group_of[name] = host
            groups[host].append(name)
        root[name] = name
    # A group runs when its last node can: after every input of every member is computed.
    groups.sort(key=lambda grp: pos[grp[-1]])
    for grp in groups:
        for member in grp[:-1]:
            root[member] = grp[-1]
    return groups, root


def plan(g: Graph, dtype_bytes: dict[str, int] | None = None) -> Plan:
    """Kernels, buffer lifetimes and arena offsets for graph `g` (one sample: the graph's own batch).

    `dtype_bytes` maps a node name to bytes per element of its output (default: from the node's spec)."""
    groups, root = fusion_groups(g)
    kernels: list[Kernel] = []
    sizes: dict[str, int] = {}

    def nbytes(name: str) -> int:
        n = g[name]
        per = (dtype_bytes or {}).get(name) or _DTYPE_BYTES[n.spec.dtype]
        return n.spec.numel * per

    for i, grp in enumerate(groups):
        members = set(grp)
        ins: list[str] = []
        for m in grp:
            for src in g[m].inputs:
                if src in members:
                    continue
                r = root[src]
                if r not in ins:
                    ins.append(r)
        kernels.append(Kernel(f"hwopt_k{i}_{g[grp[0]].op}", list(grp), ins))
        sizes[grp[-1]] = nbytes(grp[-1])
    inputs = [n.name for n in g.inputs]
    for name in inputs:
        sizes[name] = nbytes(name)
    outputs = [root[i] for i in g.output.inputs]
    buffers: dict[str, Buffer] = {}
    for name in inputs:
        buffers[name] = Buffer(name, sizes[name], -1, -1)
    for k, kern in enumerate(kernels):
        buffers[kern.output] = Buffer(kern.output, sizes[kern.output], k, k)
        for r in kern.inputs:
            buffers[r].last = max(buffers[r].last, k)
    for r in outputs:
        buffers[r].last = len(kernels)
    p = Plan(kernels, root, buffers, inputs, outputs)
    p.arena_bytes = layout(list(buffers.values()))
    return p


def layout(buffers: list[Buffer]) -> int:
    """Assign `offset` to each buffer: largest first, at the lowest aligned offset that overlaps no placed
    buffer whose lifetime intersects its own. Returns the arena size."""
    placed: list[Buffer] = []
    for b in sorted(buffers, key=lambda b: (-b.nbytes, b.first, b.name)):
        busy = sorted((o.offset, o.offset + _align(o.nbytes)) for o in placed if o.first <= b.last and b.first <= o.last)
        at = 0
        for start, end in busy:
            if at + _align(b.nbytes) <= start:
                break
            at = max(at, end)
        b.offset = at
        placed.append(b)
    return max((b.offset + _align(b.nbytes) for b in buffers), default=0)


_DTYPE_BYTES = {"float32": 4, "int8": 1, "int32": 4, "int64": 8, "float16": 2, "uint8": 1}
