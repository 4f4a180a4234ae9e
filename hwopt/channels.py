"""Channel coupling: which channels of which tensors must be removed together, and their removal.

Every channel (dim 1) of every node's output is an element. Each op states, as data, which elements of
its inputs and output are the same channel (a residual add ties channel i of both operands to channel i
of the sum; concat ties input k's channel i to output channel offset_k + i; a grouped conv ties a whole
group of input and output channels; flatten gives channel c the H·W features it owns). Connected
components of that relation are *units*: the smallest sets removable while the graph stays valid.
Units that touch the same tensors form a `ChannelGroup` (e.g. all 64 output channels of a conv and its
BN). Ops whose channel mapping cannot survive removal (graph inputs and outputs, reshape, shuffle,
softmax or mean over channels, broadcast singleton channels) pin their elements: such units are not
prunable. `remove_channels` deletes chosen units and slices every parameter exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .errors import IRError
from .gcpause import pauses_collector
from .ir import OPS, Graph, Node, shared_nodes
from .op_channels import Growth

@dataclass
class ChannelGroup:
    id: int
    members: dict[str, np.ndarray]  # node name -> (units, k) channel indices into that node's output
    prunable: bool
    producers: list[str] = field(default_factory=list)  # nodes whose output channels (param rows) are these units
    consumers: list[str] = field(default_factory=list)  # conv/linear nodes that contract over these channels

    @property
    def size(self) -> int:
        return next(iter(self.members.values())).shape[0]

    def __repr__(self) -> str:
        kind = "prunable" if self.prunable else "pinned"
        return (f"<ChannelGroup {self.id} {kind}: {self.size} units over {len(self.members)} tensors; "
                f"producers={self.producers} consumers={self.consumers}>")


class _Coupler:
    """What a coupling rule writes into. `same(x, y)` (channel i of x is channel i of y: most ops) merges the
    two tensors into one *class* (union-find), so a conv, its BN and its activation share one set of
    channel elements instead of three sets tied element by element: the element graph `_analyse`
    solves shrinks ~4x. `tie` records element-level ties and `pin` pinned tensors, both resolved to
    classes once every rule has run."""

    def __init__(self, graph: Graph):
        self.g = graph
        self.parent: dict[str, str] = {}  # union-find over tensors; a root has no entry
        self.ties: list[tuple[str, np.ndarray, str, np.ndarray]] = []
        self.pinned: list[str] = []

    def find(self, x: str) -> str:
        parent = self.parent
        root = x
        while root in parent:
            root = parent[root]
        while x != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def tie(self, x: str, xi, y: str, yi) -> None:
        self.ties.append((x, np.asarray(xi, dtype=np.int64), y, np.asarray(yi, dtype=np.int64)))

    def same(self, x: str, y: str) -> None:
        c = self.g[x].spec.channels
        if c != self.g[y].spec.channels:
            self.tie(x, np.arange(c), y, np.arange(c))
            return
        rx, ry = self.find(x), self.find(y)
        if rx != ry:
            self.parent[ry] = rx

    def pin(self, *names: str) -> None:
        self.pinned.extend(names)


def _couple_node(c: _Coupler, n: Node) -> None:
    """The op table's coupling rule (hwopt.ir.OPS[op].couple; hwopt.op_channels), or channel i ↔ channel i
    for a channel-preserving op without one."""
    d = OPS.get(n.op)
    if d is not None and d.couple is not None:
        d.couple(c, n)
    elif d is not None and d.channel_preserving:
        c.same(n.inputs[0], n.name)
    else:
        raise IRError(f"no channel-coupling rule for op {n.op!r}", n.name)


# Convolutions besides conv2d: weights [out, in/groups, k] (conv1d) and [in, out/groups, kh, kw] (transposed).
CONV_LIKE = ("conv1d", "conv_transpose2d")


def channel_groups(graph: Graph) -> list[ChannelGroup]:
    """The coupled channel groups of `graph` (cached per graph state). Prunable groups first."""
    return graph.cached("channel_groups", lambda: _analyse(graph))


@pauses_collector
def _analyse(graph: Graph) -> list[ChannelGroup]:
    c = _Coupler(graph)
    for n in graph:
        _couple_node(c, n)
    for names in shared_nodes(graph):  # one module called several times: its calls lose the same channels
        for other in names[1:]:
            c.same(names[0], other)
            if graph[names[0]].inputs and graph[graph[names[0]].inputs[0]].spec.channels == graph[graph[other].inputs[0]].spec.channels:
                c.same(graph[names[0]].inputs[0], graph[other].inputs[0])

    # Classes (tensors merged by `same`) numbered by their first tensor in graph order; a class's channel
    # elements are numbered consecutively, so element ids run by (class, channel).
    names = graph.order()
    position = {n: i for i, n in enumerate(names)}
    class_index: dict[str, int] = {}
    tensors_of: list[list[str]] = []
    sizes: list[int] = []
    cls_of: dict[str, int] = {}
    for name in names:
        root = c.find(name)
        k = class_index.get(root)
        if k is None:
            k = class_index[root] = len(tensors_of)
            tensors_of.append([])
            sizes.append(graph[name].spec.channels)
        tensors_of[k].append(name)
        cls_of[name] = k
    sizes_a = np.array(sizes, dtype=np.int64)
    offset = np.zeros(len(sizes), np.int64)
    np.cumsum(sizes_a[:-1], out=offset[1:])
    total = int(sizes_a.sum())
    if c.ties:
        a = np.concatenate([offset[cls_of[x]] + xi for x, xi, _, _ in c.ties])
        b = np.concatenate([offset[cls_of[y]] + yi for _, _, y, yi in c.ties])
    else:
        a = b = np.zeros(0, np.int64)
    adj = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(total, total))
    _, label = connected_components(adj, directed=False)
    n_comp = int(label.max()) + 1 if len(label) else 0
    pinned = np.zeros(n_comp, bool)  # per component
    pinned_classes = sorted({cls_of[n] for n in c.pinned})
    if pinned_classes:
        pinned[label[np.concatenate([np.arange(offset[k], offset[k] + sizes[k]) for k in pinned_classes])]] = True

    n_classes = len(sizes)
    class_of = np.repeat(np.arange(n_classes), sizes_a)
    channel_of = np.arange(total) - np.repeat(offset, sizes_a)
    # Units touching the same tensors (the same count in each) form one group; tensors of one class come
    # together, so the same classes. A component's multiset of tensors is hashed with random 64-bit weights
    # (wrapping adds; a class weighs the sum of its tensors', so the keys, and the order of groups that
    # start at the same tensor, do not depend on how tensors were merged); `_group_rows` checks the
    # result exactly.
    weights = np.zeros(n_classes, np.int64)
    np.add.at(weights, np.array([cls_of[n] for n in names], dtype=np.int64),
              np.random.default_rng(0).integers(1, 2**62, size=len(names), dtype=np.int64))
    key = np.zeros(n_comp, np.int64)
    np.add.at(key, label, weights[class_of])
    group_of_comp = _rank_of_values(key)
    rows_by_group = _group_rows(label, class_of, channel_of, group_of_comp)
    if rows_by_group is None:  # a hash collision: fall back to exact (slower) row comparison
        counts = np.bincount(label * n_classes + class_of, minlength=n_comp * n_classes).reshape(n_comp, n_classes)
        rows_by_group = _group_rows(label, class_of, channel_of, np.unique(counts, axis=0, return_inverse=True)[1].ravel())

    groups = []
    for rows in rows_by_group:
        classes = class_of[rows[0]]
        chans = channel_of[rows]
        chans = chans[np.argsort(chans[:, 0], kind="stable")]
        found = []  # (position, name, channel indices): a class's tensors share one read-only array
        for k in dict.fromkeys(classes.tolist()):
            idx = chans[:, classes == k]
            idx.flags.writeable = False
            found.extend((position[name], name, idx) for name in tensors_of[k])
        found.sort(key=lambda t: t[0])
        members = {name: idx for _, name, idx in found}
        prunable = not pinned[label[rows[0, 0]]]
        groups.append(_with_roles(graph, ChannelGroup(0, members, prunable)))
    groups.sort(key=lambda gr: (not gr.prunable, position[next(iter(gr.members))]))
    for i, gr in enumerate(groups):
        gr.id = i
    return groups


def _rank_of_values(values: np.ndarray) -> np.ndarray:
    """For each entry, the rank of its value among the distinct values (np.unique's return_inverse; numpy
    2's hashing np.unique is ~10x slower than this sort on thousands of int64 keys)."""
    order = np.argsort(values, kind="stable")
    srt = values[order]
    new = np.empty(len(values), bool)
    new[:1] = True
    np.not_equal(srt[1:], srt[:-1], out=new[1:])
    rank = np.empty(len(values), np.int64)
    rank[order] = np.cumsum(new) - 1
    return rank


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """np.unique(a) for int64 `a` by sorting (see _rank_of_values)."""
    a = np.sort(a)
    if len(a) < 2:
        return a
    step = a[1:] != a[:-1]
    return a if step.all() else a[np.concatenate(([True], step))]


def _group_rows(label, tensor_of, channel_of, group_of_comp) -> list[np.ndarray] | None:
    """Per group, its elements as rows (units) x columns (the same tensors in the same order), or None
    when two components in one group do not touch the same tensors (a hash collision)."""
    # elements by group, then unit (component), then tensor, then channel: element ids already run by
    # (tensor, channel), so a stable sort on the components ranked by group is enough (4x a lexsort)
    rank = np.empty(len(group_of_comp), np.int64)
    rank[np.argsort(group_of_comp, kind="stable")] = np.arange(len(group_of_comp))
    order = np.argsort(rank[label], kind="stable")
    gsorted = group_of_comp[label][order]
    units_per_group = np.bincount(group_of_comp)
    out = []
    for elems in np.split(order, np.flatnonzero(np.diff(gsorted)) + 1):
        n_units = int(units_per_group[group_of_comp[label[elems[0]]]])
        if len(elems) % n_units:
            return None
        rows = elems.reshape(n_units, -1)
        t = tensor_of[rows]
        if not (t == t[0]).all() or not (label[rows] == label[rows][:, :1]).all():
            return None
        out.append(rows)
    return out


def _with_roles(graph: Graph, group: ChannelGroup) -> ChannelGroup:
    for name in group.members:
        n = graph[name]
        if n.op in ("conv2d", "linear", "batch_norm"):
            group.producers.append(name)
        if n.op in CONV_LIKE:
            group.producers.append(name)
        for user in graph.users(name):
            u = graph[user]
            if (u.op == "conv2d" and u.attrs["groups"] == 1) or u.op == "linear":
                if user not in group.consumers:
                    group.consumers.append(user)
            if u.op in CONV_LIKE and u.attrs["groups"] == 1 and user not in group.consumers:
                group.consumers.append(user)
    return group


# ---------------------------------------------------------------------------------------------------
# Removal


def _keep(n: int, removed: np.ndarray | None) -> torch.Tensor | None:
    if removed is None or len(removed) == 0:
        return None
    mask = np.ones(n, bool)
    mask[removed] = False
    return torch.from_numpy(np.flatnonzero(mask))


@pauses_collector
def remove_channels(graph: Graph, removal: dict[int, np.ndarray | list[int]], groups: list[ChannelGroup] | None = None) -> Graph:
    """A new graph without the given units: `removal` maps group id -> unit indices to delete.

    Every parameter of the kept channels is carried over exactly. Raises IRError for a pinned group,
    a unit out of range, or a removal that would leave a tensor with no channel.
    """
    groups = groups if groups is not None else channel_groups(graph)
    removed: dict[str, list[np.ndarray]] = {}
    for gid, units in removal.items():
        units = _sorted_unique(np.asarray(units, dtype=np.int64))
        if len(units) == 0:
            continue
        if not 0 <= gid < len(groups):
            raise IRError(f"no channel group {gid} (graph has {len(groups)})")
        gr = groups[gid]
        if not gr.prunable:
            raise IRError(f"channel group {gid} is pinned (it reaches a graph input/output or a reshape)", next(iter(gr.members)))
        if units[0] < 0 or units[-1] >= gr.size:
            raise IRError(f"units {units.tolist()} out of range for group {gid} of size {gr.size}")
        chosen: dict[int, np.ndarray] = {}  # the tensors of one class share their index array: select once
        for name, idx in gr.members.items():
            r = chosen.get(id(idx))
            if r is None:
                r = chosen[id(idx)] = idx[units].ravel()
            removed.setdefault(name, []).append(r)
    rem: dict[str, np.ndarray] = {}
    increasing: dict[int, bool] = {}
    for k, v in removed.items():  # one increasing index list per tensor is the common case
        if len(v) == 1:
            ok = increasing.get(id(v[0]))
            if ok is None:
                ok = increasing[id(v[0])] = bool((v[0][1:] > v[0][:-1]).all())
            if ok:
                rem[k] = v[0]
                continue
        rem[k] = _sorted_unique(np.concatenate(v))
    for name, r in rem.items():
        if len(r) >= graph[name].spec.channels:
            raise IRError("removal would leave this tensor with no channel", name)

    new = graph.copy()
    keeps: dict[str, torch.Tensor | None] = {}
    made: dict[tuple[int, int], torch.Tensor | None] = {}  # tensors sharing a removal share its kept index
    for name, r in rem.items():
        key = (id(r), graph[name].spec.channels)
        if key not in made:
            made[key] = _keep(key[1], r)
        keeps[name] = made[key]
    for name in graph.order():
        n = graph[name]
        keep_out = keeps.get(name)
        keep_in = keeps.get(n.inputs[0]) if n.inputs else None
        if keep_out is None and keep_in is None:
            continue
        m = new[name]
        resize = OPS[n.op].resize
        if resize is not None:
            resize(m, n, keep_in, keep_out, rem.get(n.inputs[0]) if n.inputs else None, graph)
        new.replace(m)
    _reshare(graph, new)
    return new.verify(infer_shapes=True)


def _reshare(old: Graph, new: Graph) -> None:
    """Nodes that shared one module's tensors in `old` share the first one's (resized) tensors in `new`:
    the coupling removed or added the same channels in each, so one module still serves all its calls."""
    for names in shared_nodes(old):
        first = new[names[0]]
        for other in names[1:]:
            m = new[other]
            if m.attrs != first.attrs or any(tuple(m.params[k].shape) != tuple(t.shape) for k, t in first.params.items()):
                raise IRError(f"shared module called as {names} was resized differently at {other!r}", other)
            m = m.copy()
            m.params = dict(first.params)
            new.replace(m)


# ---------------------------------------------------------------------------------------------------
# Growth: the inverse of removal, for width multipliers (MorphNet's expand step) and widening.


def _insertion_plan(graph: Graph, grow: dict[int, int], groups: list[ChannelGroup]) -> dict[str, np.ndarray]:
    """For each tensor, `src`: new position -> old channel index, or -(1 + anchor) for a new channel
    inserted after old index `anchor` (-1 anchor: at the front)."""
    inserts: dict[str, list[tuple[int, int]]] = {}  # tensor -> (anchor, count) in unit-major order
    for gid, n_new in grow.items():
        if n_new <= 0:
            continue
        gr = groups[gid]
        if not gr.prunable:
            raise IRError(f"channel group {gid} is pinned (it reaches a graph input/output or a reshape)", next(iter(gr.members)))
        for name, idx in gr.members.items():
            last = idx[-1]
            # consecutive runs of the last unit's elements stay contiguous (a flattened channel's H·W block)
            cuts = np.flatnonzero(np.diff(last) != 1) + 1
            for run in np.split(last, cuts):
                inserts.setdefault(name, []).append((int(run[-1]), n_new * len(run)))
    plan = {}
    for name, ins in inserts.items():
        size = graph[name].spec.channels
        after: dict[int, int] = {}
        for anchor, count in ins:
            after[anchor] = after.get(anchor, 0) + count
        src = []
        for j in range(size):
            src.append(j)
            src.extend([-(1 + j)] * after.get(j, 0))
        plan[name] = np.asarray(src, dtype=np.int64)
    return plan


def _signature(group: ChannelGroup) -> tuple:
    return tuple(sorted((name, idx.shape[1]) for name, idx in group.members.items()))


def resize_groups(graph: Graph, sizes: dict[int, int], *, generator: torch.Generator | None = None,
                  groups: list[ChannelGroup] | None = None) -> Graph:
    """A new graph where group `gid` has `sizes[gid]` units: fewer removes the last units, more inserts fresh
    ones (weights drawn like a fresh layer's: N(0, 2/fan_in); new BN channels start at γ=1, β=0, mean 0,
    var 1; new biases 0; new mask entries 1). Kept channels keep their weights exactly.
    """
    groups = groups if groups is not None else channel_groups(graph)
    shrink = {gid: np.arange(n, groups[gid].size) for gid, n in sizes.items() if n < groups[gid].size}
    for gid, n in sizes.items():
        if n < 1:
            raise IRError(f"channel group {gid} cannot shrink to {n} units")
    grow_by_sig = {_signature(groups[gid]): n for gid, n in sizes.items() if n > groups[gid].size}
    if shrink:
        graph = remove_channels(graph, shrink, groups)
        groups = channel_groups(graph)
    # group ids can shift when a graph changes: find the groups to grow again by what they couple
    by_sig = {_signature(g): g.id for g in groups}
    missing = [s for s in grow_by_sig if s not in by_sig]
    if missing:
        raise IRError(f"shrinking changed how channels are coupled (e.g. a depthwise conv left with one channel "
                      f"is a plain conv); grow and shrink in separate calls. Lost group over {missing[0]}")
    grow = {by_sig[sig]: n - groups[by_sig[sig]].size for sig, n in grow_by_sig.items()}
    if not grow:
        return graph
    ctx = Growth(generator if generator is not None else torch.Generator().manual_seed(0), sorted(grow))
    plan = _insertion_plan(graph, grow, groups)
    new = graph.copy()
    for name in graph.order():
        n = graph[name]
        src_out = plan.get(name)
        src_in = plan.get(n.inputs[0]) if n.inputs else None
        if src_out is None and src_in is None:
            continue
        rule = OPS[n.op].grow
        if rule is None:
            continue
        m = new[name]
        a, p = dict(n.attrs), dict(n.params)
        rule(n, a, p, src_in, src_out, ctx)
        m.attrs, m.params = a, p
        new.replace(m)
    _reshare(graph, new)
    new.verify(infer_shapes=True)
    expected = sorted(n if gid not in grow else groups[gid].size + grow[gid] for gid, n in
                      ((g.id, g.size) for g in groups if g.prunable))
    got = sorted(g.size for g in channel_groups(new) if g.prunable)
    if got != expected:
        # e.g. a unit spanning two concat inputs and a grouped conv: the new group's channels cannot be
        # adjacent in the concat's output, so the grown graph would couple channels differently
        raise IRError(f"groups {sorted(grow)} cannot grow: new channels would change how channels are coupled "
                      f"(group sizes {got} instead of {expected})")
    return new
