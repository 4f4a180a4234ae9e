"""The op table's channel rules (hwopt.ir.OPS): how each op couples channels, and how it is resized.

A coupling rule `couple(c, node)` states which channels of the node's inputs and output are the same
channel, through the coupler `c` of hwopt.channels: `c.same(x, y)` ties channel i of x to channel i of y,
`c.tie(x, xi, y, yi)` ties chosen channels, `c.pin(*names)` makes those tensors' channels unprunable, and
`c.g` is the graph. A removal rule `resize(m, n, keep_in, keep_out, removed_in, graph)` writes into `m`
(a copy of node `n`) the attributes and parameters `n` has once the channels outside `keep_in` (its
input 0's) and `keep_out` (its output's) are gone; None means unchanged. An op without a rule of its own
gets the defaults: channel i ↔ channel i when `channel_preserving`, and no resize. A growth rule (at the
end) inserts channels, the inverse of removal.
Imports nothing of hwopt but its errors and tensors, so hwopt.ir can reference these rules.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .errors import IRError
from .tensors import selected

Shape = tuple[int, ...]


# ---------------------------------------------------------------------------------------------------
# Where the channel axis goes through a reshape (shared by the IR's axis rule and the coupling rule)


def split_dims(in_shape: Shape, out_shape: Shape, axis: int) -> tuple[int, int, int] | None:
    """When a reshape splits the channel dim into several output dims (qkv features -> [3, heads, head_dim],
    features -> [heads, head_dim]): (first, last + 1, chosen) output dims it became, where `chosen`, the
    channel axis of the output, is the second-to-last non-singleton one (the heads) -- a unit is then one
    head with every feature it owns in the input. None for any other reshape."""
    before = math.prod(in_shape[1:axis])
    acc, k = 1, 1
    while k < len(out_shape) and acc < before:
        acc *= out_shape[k]
        k += 1
    if acc != before:
        return None
    first, prod = k, 1
    while k < len(out_shape) and prod < in_shape[axis]:
        prod *= out_shape[k]
        k += 1
    real = [j for j in range(first, k) if out_shape[j] > 1]
    if prod != in_shape[axis] or len(real) < 2:
        return None
    return first, k, real[-2]


def reshape_axis(in_shape: Shape, out_shape: Shape, axis: int) -> tuple[int, str]:
    """(output axis, how): "same" when the channel dim survives a reshape whole, "block" when it is merged
    with the dims after it (each channel owns a contiguous block, as in flatten), "split" when it is split
    into several dims (see split_dims: the axis goes to the heads), "lost" otherwise."""
    before = math.prod(in_shape[1:axis])  # the batch dim maps to itself (and may be 1)
    acc = 1
    for k, size in enumerate(out_shape[1:], start=1):
        if acc == before:
            if size == in_shape[axis]:
                return k, "same"
            split = split_dims(in_shape, out_shape, axis) if size < in_shape[axis] else None
            if split is not None:
                return split[2], "split"
            merged = in_shape[axis]
            for j in range(axis + 1, len(in_shape)):
                merged *= in_shape[j]
                if merged >= size:
                    break
            if merged == size and size != in_shape[axis]:
                return k, "block"
            break
        acc *= size
        if acc > before:
            break
    return min(axis, len(out_shape) - 1), "lost"


# ---------------------------------------------------------------------------------------------------
# Coupling rules


def says(summary: str):
    """Marks a coupling rule with its one-line summary, for the generated op list (docs/ops.md)."""
    def mark(rule):
        rule.summary = summary
        return rule
    return mark


def _rank(g, name: str) -> int:
    return len(g[name].spec.shape)


@says('channel i ↔ channel i')
def same(c, n) -> None:
    """Output channel i is input channel i (activations, norms per channel, pooling, views)."""
    c.same(n.inputs[0], n.name)


@says('pins')
def pin_all(c, n) -> None:
    """Every channel of the output and the inputs is pinned (graph inputs/outputs, per-sample kernels)."""
    c.pin(n.name, *n.inputs)


@says('pinned')
def pin_output(c, n) -> None:
    c.pin(n.name)


@says('tied by the op reading it')
def untied(c, n) -> None:
    """Nothing of its own: a constant's channels are tied by the op reading it (a layer scale ties them to
    the scaled tensor)."""


def nchw(rule):
    """An NCHW kernel: `rule` when its input's channels are dim 1, else it pins (its channels sit elsewhere)."""
    def couple(c, n) -> None:
        if c.g[n.inputs[0]].spec.axis != 1:
            c.pin(n.name, *n.inputs)
        else:
            rule(c, n)
    couple.__doc__ = rule.__doc__
    couple.summary = getattr(rule, "summary", "") + " (NCHW: pins channels-last input)"
    return couple


@says('groups tie their in/out channels')
def conv_groups(c, n) -> None:
    """A convolution: input channels are contracted away, output channels are fresh; with groups > 1 a
    group's inputs and outputs live and die together."""
    a, x, out = n.attrs, n.inputs[0], n.name
    groups = a["groups"]
    if groups > 1:
        ig, og = a["in_channels"] // groups, a["out_channels"] // groups
        cin, cout = np.arange(a["in_channels"]), np.arange(a["out_channels"])
        c.tie(x, cin, x, (cin // ig) * ig)
        c.tie(x, (cout // og) * ig, out, cout)


@says("contracts its input's channels; fresh outputs")
def linear(c, n) -> None:
    """Fresh output features; input features are contracted away (pinned if they are not the channel axis)."""
    x = c.g[n.inputs[0]].spec
    if x.axis != len(x.shape) - 1:
        c.pin(n.inputs[0])


@says('operands tied channel by channel')
def elementwise(c, n) -> None:
    """Binary ops: operands tied channel by channel; a broadcast singleton channel or misaligned axes pin."""
    g, out, ins = c.g, n.name, n.inputs
    co, axis = n.spec.channels, n.spec.axis
    for i in ins:
        x = g[i].spec
        if len(x.shape) != _rank(g, out):
            c.pin(out, *ins)  # broadcasting across ranks misaligns the channel axis
        elif x.shape[axis] == co and (x.axis == axis or g[i].op == "const"):
            c.same(i, out)
        elif x.shape[axis] == 1 and x.axis == axis:
            c.pin(i)  # a broadcast singleton channel cannot be removed
        else:
            c.pin(out, *ins)  # operands whose channel axes differ


@says('offsets along the concat dim')
def concat(c, n) -> None:
    """Along the channel axis: input k's channel i is output channel offset_k + i; else channel by channel."""
    g, out = c.g, n.name
    if n.attrs["dim"] == n.spec.axis:
        off = 0
        for i in n.inputs:
            ci = g[i].spec.channels
            c.tie(i, np.arange(ci), out, off + np.arange(ci))
            off += ci
    else:
        for i in n.inputs:
            c.same(i, out)


@says("a window of its input's channels")
def slice_(c, n) -> None:
    """A window of its input's channels (a strided one along the channel axis pins)."""
    a, x, out = n.attrs, n.inputs[0], n.name
    if a["dim"] != n.spec.axis:
        c.same(x, out)
    elif a.get("step", 1) != 1:
        c.pin(out, x)
    else:
        c.tie(x, a["start"] + np.arange(n.spec.channels), out, np.arange(n.spec.channels))


@says('tracked if the channel dim survives (whole, as blocks, or split into heads)')
def reshape(c, n) -> None:
    """Tracked when the channel dim survives whole, as blocks (flatten), or split into heads; else pins."""
    x, out = c.g[n.inputs[0]].spec, n.name
    how = reshape_axis(x.shape, n.spec.shape, x.axis)[1]
    if how == "block":  # channel c owns a contiguous block of the merged dim
        block = n.spec.channels // x.channels
        c.tie(n.inputs[0], np.repeat(np.arange(x.channels), block), out, np.arange(n.spec.channels))
    elif how == "split":  # features -> [.., heads, head_dim]: a head owns every feature whose index has it
        first, end, chosen = split_dims(x.shape, n.spec.shape, x.axis)
        digit = np.unravel_index(np.arange(x.channels), n.spec.shape[first:end])[chosen - first]
        c.tie(n.inputs[0], np.arange(x.channels), out, digit)
    elif how == "same":
        c.same(n.inputs[0], out)
    else:
        c.pin(out, *n.inputs)


@says('per channel (channels-last); else pins')
def last_dim_norm(c, n) -> None:
    """Layer norm over the last dim: per channel when that is the channel axis, else it mixes them (pins)."""
    x = c.g[n.inputs[0]].spec
    (c.same(n.inputs[0], n.name) if x.axis == len(x.shape) - 1 else c.pin(n.name, *n.inputs))


@says('pins the channels it normalizes over')
def along_dim(c, n) -> None:
    """softmax / normalize along `dim`: pins the channels it normalizes over, else channel by channel."""
    dim_is_axis = n.attrs["dim"] % _rank(c.g, n.name) == c.g[n.inputs[0]].spec.axis
    (c.pin(n.name, *n.inputs) if dim_is_axis else c.same(n.inputs[0], n.name))


@says('pins the channels it reduces over')
def over_dims(c, n) -> None:
    """mean / sum / vector norm over `dims`: pins the channels it reduces over, else channel by channel."""
    x = c.g[n.inputs[0]].spec
    (c.pin(n.name, *n.inputs) if x.axis in {d % len(x.shape) for d in n.attrs["dims"]} else c.same(n.inputs[0], n.name))


@says('channels move with their axis (pins if folded)')
def fold_batch(c, n) -> None:
    """Channels folded into the batch dim pin; otherwise they move with their axis."""
    (c.pin(n.name, *n.inputs) if c.g[n.inputs[0]].spec.axis == 1 else c.same(n.inputs[0], n.name))


@says('tracked unless the channel axis grows')
def expand(c, n) -> None:
    """Tracked unless the channel axis itself grows."""
    x = c.g[n.inputs[0]].spec
    (c.pin(n.name, *n.inputs) if x.channels != n.spec.channels else c.same(n.inputs[0], n.name))


@says('unit = one norm group')
def group_norm(c, n) -> None:
    """A group's statistics mix its channels: whole groups go together."""
    a = n.attrs
    cpg = a["num_channels"] // a["num_groups"]
    ch = np.arange(a["num_channels"])
    c.tie(n.inputs[0], ch, n.inputs[0], (ch // cpg) * cpg)
    c.same(n.inputs[0], n.name)


@says('unit = one offset of every shuffle group')
def channel_shuffle(c, n) -> None:
    """out[j] = in[(j % g) * cpg + j // g]; removing the same offset r from every group keeps a valid
    shuffle of g groups, so a unit is offset r of all g groups (ties them, like a grouped conv)."""
    groups, ch = n.attrs["groups"], np.arange(n.spec.channels)
    cpg = n.spec.channels // groups
    c.tie(n.inputs[0], (ch % groups) * cpg + ch // groups, n.name, ch)
    c.tie(n.inputs[0], ch, n.inputs[0], ch % cpg)


@says('heads (a shared leading channel axis) tied across operands; else pins')
def heads(c, n) -> None:
    """matmul / attention: operands whose channel axis is the same leading (batch-like) dim -- the heads of
    q, k, v and of the scores -- keep head h in every operand and the output together: removing a head
    removes it everywhere, exactly. Any other layout (a contracted or row/column channel axis, a broadcast
    head dim, a mask) pins all operands: exactness first."""
    g, out = c.g, n.name
    ins = list(n.inputs)
    r = len(n.spec.shape)
    lead = n.spec.axis
    ok = lead < r - 2 and len(ins) <= (3 if n.op == "attention" else 2) and all(
        s.axis + r - len(s.shape) == lead and s.shape[s.axis] == n.spec.shape[lead] for s in (g[i].spec for i in ins))
    if ok:
        for i in ins:
            c.same(i, out)
    else:
        c.pin(out, *ins)


# ---------------------------------------------------------------------------------------------------
# Removal rules


def _rows(t: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    return t if keep is None else selected(t, 0, keep)


def _cols(t: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    return t if keep is None else selected(t, 1, keep)


def resize_conv(m, n, keep_in, keep_out, removed_in, graph) -> None:
    a = dict(n.attrs)
    groups = a["groups"]
    p = dict(n.params)
    if groups == 1:
        for k in ("weight", "weight_mask"):
            if k in p:
                p[k] = _cols(_rows(p[k], keep_out), keep_in)
    else:
        og = a["out_channels"] // groups
        kept_groups = len(keep_out) // og if keep_out is not None else groups
        if keep_out is not None and len(keep_out) % og:
            raise IRError("grouped conv lost part of a group", n.name)
        a["groups"] = kept_groups
        for k in ("weight", "weight_mask"):
            if k in p:
                p[k] = _rows(p[k], keep_out)
    if "bias" in p:
        p["bias"] = _rows(p["bias"], keep_out)
    if keep_out is not None:
        a["out_channels"] = len(keep_out)
    if keep_in is not None:
        a["in_channels"] = len(keep_in)
    m.attrs, m.params = a, p


def resize_linear(m, n, keep_in, keep_out, removed_in, graph) -> None:
    p = {k: _cols(_rows(v, keep_out), keep_in) if k != "bias" else _rows(v, keep_out) for k, v in n.params.items()}
    m.params = p
    m.attrs = {**n.attrs, "in_features": p["weight"].shape[1], "out_features": p["weight"].shape[0]}


def resize_batch_norm(m, n, keep_in, keep_out, removed_in, graph) -> None:
    m.params = {k: _rows(v, keep_out) for k, v in n.params.items()}
    m.attrs = {**n.attrs, "num_features": len(keep_out) if keep_out is not None else n.attrs["num_features"]}


def resize_group_norm(m, n, keep_in, keep_out, removed_in, graph) -> None:
    cpg = n.attrs["num_channels"] // n.attrs["num_groups"]
    m.params = {k: _rows(v, keep_out) for k, v in n.params.items()}
    c = len(keep_out) if keep_out is not None else n.attrs["num_channels"]
    m.attrs = {**n.attrs, "num_channels": c, "num_groups": c // cpg}


def resize_const(m, n, keep_in, keep_out, removed_in, graph) -> None:
    if keep_out is not None:
        m.params = {"value": selected(n.params["value"], n.spec.axis, keep_out)}
        m.attrs = {**n.attrs, "shape": tuple(m.params["value"].shape)}


def resize_layer_norm(m, n, keep_in, keep_out, removed_in, graph) -> None:
    m.params = {k: _rows(v, keep_out) for k, v in n.params.items()}
    m.attrs = {**n.attrs, "normalized_size": len(keep_out) if keep_out is not None else n.attrs["normalized_size"]}


def resize_shape_attr(m, n, keep_in, keep_out, removed_in, graph) -> None:
    """reshape / expand: the target shape's channel dim (or the block it was merged into) shrinks."""
    if keep_out is not None:  # the channel dim (or the block it was merged into) shrank
        shape = list(n.spec.shape)
        shape[n.spec.axis] = len(keep_out)
        m.attrs = {**n.attrs, "shape": tuple(shape[1:])}


def resize_slice(m, n, keep_in, keep_out, removed_in, graph) -> None:
    if n.attrs["dim"] != n.spec.axis or removed_in is None:
        return
    before = lambda pos: pos - int(np.searchsorted(removed_in, pos))  # kept channels in [0, pos)
    m.attrs = {**n.attrs, "start": before(n.attrs["start"]), "end": before(n.attrs["end"])}


def resize_conv_transpose(m, n, keep_in, keep_out, removed_in, graph) -> None:
    # weight [in, out / groups, kh, kw]: input channels are rows; a group's columns are its output channels
    a, p = dict(n.attrs), dict(n.params)
    groups = a["groups"]
    if groups == 1:
        p["weight"] = _cols(_rows(p["weight"], keep_in), keep_out)
    else:
        ig = a["in_channels"] // groups
        if keep_in is not None and len(keep_in) % ig:
            raise IRError("grouped transposed conv lost part of a group", n.name)
        a["groups"] = len(keep_in) // ig if keep_in is not None else groups
        p["weight"] = _rows(p["weight"], keep_in)
    if "bias" in p:
        p["bias"] = _rows(p["bias"], keep_out)
    a["in_channels"] = p["weight"].shape[0]
    a["out_channels"] = p["weight"].shape[1] * a["groups"]
    m.attrs, m.params = a, p




# ---------------------------------------------------------------------------------------------------
# Growth rules (resize_groups: width multipliers, MorphNet's expand step): `grow(n, a, p, src_in, src_out,
# ctx)` writes into `a` and `p` (copies of the node's attributes and parameters) the node with new channels
# inserted where `src_in` / `src_out` (new position -> old index, negative for a new channel; None:
# unchanged) say. New weights are drawn like a fresh layer's from ctx.generator.


class Growth:
    """What a growth rule needs besides the node: the generator for fresh weights, and the groups being
    grown (for messages)."""

    def __init__(self, generator: torch.Generator, groups: list[int]):
        self.generator, self.groups = generator, groups


def _grow_dim(t: torch.Tensor, src: np.ndarray | None, dim: int, fill: torch.Tensor) -> torch.Tensor:
    """`t` with new slices along `dim` at the positions `src` marks new, taken from `fill`."""
    if src is None:
        return t
    old = torch.from_numpy(np.flatnonzero(src >= 0))
    new = torch.from_numpy(np.flatnonzero(src < 0))
    shape = list(t.shape)
    shape[dim] = len(src)
    out = torch.empty(shape, dtype=t.dtype)
    out.index_copy_(dim, old, t.index_select(dim, torch.from_numpy(src[src >= 0])))
    fshape = list(shape)
    fshape[dim] = len(new)
    out.index_copy_(dim, new, fill.reshape(fshape) if fill.numel() == int(np.prod(fshape)) else fill.expand(fshape).clone())
    return out


def grow_weighted(n, a, p, src_in, src_out, ctx) -> None:
    """conv2d / conv1d / linear: fresh rows and columns N(0, 2/fan_in); mask entries 1, biases 0."""
    w = p["weight"]
    grouped = n.op in ("conv2d", "conv1d") and a["groups"] > 1
    if grouped and src_out is not None:
        og = a["out_channels"] // a["groups"]
        a["groups"] = len(src_out) // og
    fan_in = w[0].numel() if grouped else (len(src_in) if src_in is not None else w.shape[1]) * w[0, 0].numel()
    std = (2.0 / fan_in) ** 0.5
    fresh = lambda *shape: torch.randn(shape, generator=ctx.generator, dtype=w.dtype) * std  # noqa: E731
    grown = w
    if not grouped and src_in is not None:
        grown = _grow_dim(grown, src_in, 1, fresh(grown.shape[0], int((src_in < 0).sum()), *w.shape[2:]))
    if src_out is not None:
        grown = _grow_dim(grown, src_out, 0, fresh(int((src_out < 0).sum()), *grown.shape[1:]))
    p["weight"] = grown
    if "weight_mask" in p:
        mask = _grow_dim(p["weight_mask"], src_out, 0, torch.ones(1))
        p["weight_mask"] = mask if grouped or src_in is None else _grow_dim(mask, src_in, 1, torch.ones(1))
    if "bias" in p:
        p["bias"] = _grow_dim(p["bias"], src_out, 0, torch.zeros(1))
    key_out, key_in = ("out_channels", "in_channels") if n.op != "linear" else ("out_features", "in_features")
    a[key_out] = grown.shape[0]
    a[key_in] = grown.shape[1] * (a["groups"] if n.op != "linear" else 1)


def grow_refused(n, a, p, src_in, src_out, ctx) -> None:
    """conv_transpose2d: its grouped [in, out / groups] weight layout has no growth rule yet."""
    raise IRError("growing the channels of a transposed conv is not supported (removing them is)", n.name)


def grow_batch_norm(n, a, p, src_in, src_out, ctx) -> None:
    """New channels start at γ=1, β=0, mean 0, var 1."""
    init = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}
    p.update({k: _grow_dim(v, src_out, 0, torch.full((1,), init[k])) for k, v in p.items()})
    a["num_features"] = len(src_out)


def grow_layer_norm(n, a, p, src_in, src_out, ctx) -> None:
    if src_out is not None:
        p.update({k: _grow_dim(v, src_out, 0, torch.full((1,), 1.0 if k == "weight" else 0.0)) for k, v in p.items()})
        a["normalized_size"] = len(src_out)


def grow_group_norm(n, a, p, src_in, src_out, ctx) -> None:
    p.update({k: _grow_dim(v, src_out, 0, torch.full((1,), 1.0 if k == "weight" else 0.0)) for k, v in p.items()})
    cpg = a["num_channels"] // a["num_groups"]
    a["num_channels"], a["num_groups"] = len(src_out), len(src_out) // cpg


def grow_shape_attr(n, a, p, src_in, src_out, ctx) -> None:
    if src_out is not None:
        shape = list(n.spec.shape)
        shape[n.spec.axis] = len(src_out)
        a["shape"] = tuple(shape[1:])


def grow_const(n, a, p, src_in, src_out, ctx) -> None:
    """New channels of a layer scale start at its mean."""
    if src_out is not None:
        v = p["value"]
        p["value"] = _grow_dim(v, src_out, n.spec.axis, v.mean(dim=n.spec.axis, keepdim=True))
        a["shape"] = tuple(p["value"].shape)


def grow_slice(n, a, p, src_in, src_out, ctx) -> None:
    if a["dim"] != n.spec.axis or src_in is None:
        return
    key = np.where(src_in >= 0, src_in, -(src_in + 1))  # a new channel sits where its anchor is
    inside = (key >= a["start"]) & (key < a["end"])
    positions = np.flatnonzero(inside)
    wanted = len(src_out) if src_out is not None else a["end"] - a["start"]
    if len(positions) != wanted or positions[-1] - positions[0] + 1 != wanted:
        # e.g. a depthwise conv with channel multiplier 2 whose output a chunk cuts inside one unit: the
        # unit's new channels sit together beside its last channel, on one side of the cut only
        raise IRError(f"groups {ctx.groups} cannot grow: node '{n.name}' slices channels "
                      f"{a['start']}:{a['end']} of its input and should take {wanted} channels once grown, but "
                      f"{len(positions)} of the grown input's channels fall in its range (a unit is cut by the "
                      f"slice)")
    a["start"], a["end"] = int(positions[0]), int(positions[-1]) + 1
