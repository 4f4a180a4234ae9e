"""hwopt's graph IR: a DAG of named nodes over a closed op set.

A `Node` holds its op, attributes, parameters (torch tensors) and the spec of its output. The ordered
inputs of each node are the truth; a networkx DiGraph mirrors them so graph algorithms (topological
order, reachability, dominators) come from networkx. The op set is data: `OPS` maps each op to its
`OpDef`: arity, attribute names, parameter, shape, axis and MAC rules, its channel-coupling and removal
rules (hwopt.op_channels), its torch lowering (hwopt.op_lowering), its cost kind and what each feature
(int8, firmware, dead-unit folding) can do with it. Tensors held by a graph are never
modified in place: passes copy the graph (`Graph.copy()` is shallow in tensors) and replace tensors.
This module imports nothing else of hwopt but its errors and the rule modules the table references
(hwopt.op_channels, hwopt.op_lowering, hwopt.tensors), which import nothing else of hwopt but hwopt.nn.
"""
from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import networkx as nx
import torch
import torch.nn.functional as F
from torch import nn

from . import op_channels as channel
from . import op_lowering as lowering
from .errors import IRError
from .op_channels import reshape_axis, split_dims  # noqa: F401 - re-exported (hwopt.ir.reshape_axis)
from .tensors import finite, selected, snapshot  # noqa: F401 - re-exported (hwopt.ir.snapshot, .selected)

Shape = tuple[int, ...]


@dataclass(frozen=True)
class TensorSpec:
    shape: Shape
    dtype: str = "float32"
    axis: int = 1  # the channel axis: 1 for NCHW and [N, features]; tracked through permutes and reshapes

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def channels(self) -> int:
        """Size of the channel axis, the dimension hwopt prunes along (1 for rank < 2)."""
        return self.shape[self.axis] if len(self.shape) > 1 else 1


@dataclass
class Node:
    name: str
    op: str
    inputs: tuple[str, ...] = ()
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    spec: TensorSpec | None = None
    source: str = ""  # module path in the user's model this node came from, for messages

    def copy(self) -> "Node":
        return Node(self.name, self.op, tuple(self.inputs), dict(self.attrs), dict(self.params), self.spec, self.source)

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.spec.shape)) if self.spec else "?"
        return f"{self.name} = {self.op}({', '.join(self.inputs)}) {self.attrs or ''} -> {shape}"


# ---------------------------------------------------------------------------------------------------
# The op set, as data.


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))


def _window_out(size: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= size + p:  # torch: the last window must start inside the input or left padding
        out -= 1
    return out


def _spatial(node: Node, x: TensorSpec, dilation=True, ceil=False) -> Shape:
    if len(x.shape) != 4:
        raise IRError(f"{node.op} needs a 4-D NCHW input, got shape {x.shape}", node.name)
    a = node.attrs
    k, s, p = _pair(a["kernel_size"]), _pair(a["stride"]), _pair(a["padding"])
    d = _pair(a.get("dilation", 1)) if dilation else (1, 1)
    hw = tuple(_window_out(x.shape[2 + i], k[i], s[i], p[i], d[i], ceil) for i in range(2))
    if min(hw) < 1:
        raise IRError(f"{node.op} with kernel {k}, stride {s}, padding {p} leaves no output for input {x.shape}", node.name)
    return hw


def _conv_shape(node: Node, x: TensorSpec) -> Shape:
    a = node.attrs
    if len(x.shape) != 4 or x.shape[1] != a["in_channels"]:
        raise IRError(f"conv2d expects input [N, {a['in_channels']}, H, W], got {list(x.shape)}", node.name)
    return (x.shape[0], a["out_channels"], *_spatial(node, x))


def _linear_shape(node: Node, x: TensorSpec) -> Shape:
    if len(x.shape) < 2 or x.shape[-1] != node.attrs["in_features"]:
        lead = "N, " if len(x.shape) <= 2 else "N, ..., "
        raise IRError(f"linear expects input [{lead}{node.attrs['in_features']}], got {list(x.shape)}", node.name)
    return (*x.shape[:-1], node.attrs["out_features"])


def _bn_shape(node: Node, x: TensorSpec) -> Shape:
    if len(x.shape) not in (2, 3, 4) or x.shape[1] != node.attrs["num_features"]:
        raise IRError(f"batch_norm over {node.attrs['num_features']} features got input {list(x.shape)}", node.name)
    return x.shape


def _broadcast(node: Node, *xs: TensorSpec) -> Shape:
    # numpy's rule in plain Python (torch.broadcast_shapes costs ~1.5 ms a call in its checks)
    rank = max(len(x.shape) for x in xs)
    out = [1] * rank
    for x in xs:
        for i, s in enumerate(x.shape, rank - len(x.shape)):
            if s != out[i] and s != 1:
                if out[i] != 1:
                    raise IRError(f"{node.op} operands {[list(x.shape) for x in xs]} do not broadcast", node.name)
                out[i] = s
    return tuple(out)


def _concat_shape(node: Node, *xs: TensorSpec) -> Shape:
    # a batch dim of 1 broadcasts (a class token: a parameter concatenated to every sample's tokens)
    d = node.attrs["dim"]
    first = (max(x.shape[0] for x in xs), *xs[0].shape[1:])
    for x in xs:
        if (len(x.shape) != len(first) or x.shape[0] not in (1, first[0])
                or any(a != b for i, (a, b) in enumerate(zip(x.shape, first)) if i not in (0, d))):
            raise IRError(f"concat along dim {d} of mismatched shapes {[list(x.shape) for x in xs]}", node.name)
    return tuple(sum(x.shape[d] for x in xs) if i == d else s for i, s in enumerate(first))


def _slice_shape(node: Node, x: TensorSpec) -> Shape:
    d, start, end = node.attrs["dim"], node.attrs["start"], node.attrs["end"]
    step = node.attrs.get("step", 1)
    if not (0 < d < len(x.shape)) or not (0 <= start < end <= x.shape[d]) or step < 1:
        raise IRError(f"slice [{start}:{end}:{step}] along dim {d} out of range for input {list(x.shape)}", node.name)
    return tuple(len(range(start, end, step)) if i == d else s for i, s in enumerate(x.shape))


def _shuffle_shape(node: Node, x: TensorSpec) -> Shape:
    if len(x.shape) != 4 or x.shape[1] % node.attrs["groups"]:
        raise IRError(f"channel_shuffle with {node.attrs['groups']} groups needs channels divisible by it, got {list(x.shape)}", node.name)
    return x.shape


def _adaptive_shape(node: Node, x: TensorSpec) -> Shape:
    if len(x.shape) != 4:
        raise IRError(f"{node.op} needs a 4-D input, got {list(x.shape)}", node.name)
    return (x.shape[0], x.shape[1], *_pair(node.attrs["output_size"]))


def _flatten_shape(node: Node, x: TensorSpec) -> Shape:
    s, e = node.attrs["start_dim"], node.attrs["end_dim"] % len(x.shape)
    if not (1 <= s <= e):
        raise IRError(f"flatten dims {s}..{node.attrs['end_dim']} invalid for input {list(x.shape)} (the batch dim is kept)", node.name)
    return (*x.shape[:s], math.prod(x.shape[s:e + 1]), *x.shape[e + 1:])


def _reshape_shape(node: Node, x: TensorSpec) -> Shape:
    target = tuple(node.attrs["shape"])
    if math.prod(target) != math.prod(x.shape[1:]):
        raise IRError(f"reshape of {list(x.shape)} to [N, {', '.join(map(str, target))}] changes the element count", node.name)
    return (x.shape[0], *target)


def _mean_shape(node: Node, x: TensorSpec) -> Shape:
    dims = sorted(d % len(x.shape) for d in node.attrs["dims"])
    if 0 in dims:
        raise IRError(f"{node.op} over the batch dimension is not supported", node.name)
    if node.attrs["keepdim"]:
        return tuple(1 if i in dims else s for i, s in enumerate(x.shape))
    return tuple(s for i, s in enumerate(x.shape) if i not in dims)


def _permute_shape(node: Node, x: TensorSpec) -> Shape:
    dims = tuple(node.attrs["dims"])
    if sorted(dims) != list(range(len(x.shape))) or dims[0] != 0:
        raise IRError(f"permute {list(dims)} must reorder all dims of input {list(x.shape)} and keep the batch first", node.name)
    return tuple(x.shape[d] for d in dims)


def _matmul_shape(node: Node, a: TensorSpec, b: TensorSpec) -> Shape:
    if len(a.shape) < 2 or len(b.shape) < 2 or a.shape[-1] != b.shape[-2]:
        raise IRError(f"matmul of {list(a.shape)} and {list(b.shape)}: needs [..., M, K] @ [..., K, N]", node.name)
    try:
        batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except RuntimeError:
        raise IRError(f"matmul batch dims of {list(a.shape)} and {list(b.shape)} do not broadcast", node.name) from None
    return (*batch, a.shape[-2], b.shape[-1])


def _matmul_axis(node: Node, a: TensorSpec, b: TensorSpec) -> int:
    # the channel axis carried to the output: a leading dim of a (heads), a's rows, a leading dim of b,
    # b's columns; a contracted axis leaves none (the output's last dim then, pinned by hwopt.channels)
    r, ra, rb = max(len(a.shape), len(b.shape)), len(a.shape), len(b.shape)
    if a.axis < ra - 1:
        return a.axis + r - ra
    if b.axis < rb - 2:
        return b.axis + r - rb
    return r - 1


def _attention_shape(node: Node, q: TensorSpec, k: TensorSpec, v: TensorSpec, *mask: TensorSpec) -> Shape:
    lead = None
    if len(q.shape) >= 3 and len(q.shape) == len(k.shape) == len(v.shape):
        try:  # k and v may broadcast over q's heads (multi-query attention)
            lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
        except RuntimeError:
            pass
    if lead != q.shape[:-2] or q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise IRError(f"attention needs q [..., L, E], k [..., S, E], v [..., S, Ev] whose leading dims broadcast to "
                      f"q's, got {list(q.shape)}, {list(k.shape)}, {list(v.shape)}", node.name)
    out = (*q.shape[:-1], v.shape[-1])
    if mask:
        try:
            if torch.broadcast_shapes(mask[0].shape, (*q.shape[:-1], k.shape[-2])) != (*q.shape[:-1], k.shape[-2]):
                raise RuntimeError
        except RuntimeError:
            raise IRError(f"attention mask {list(mask[0].shape)} does not broadcast to the scores "
                          f"{[*q.shape[:-1], k.shape[-2]]}", node.name) from None
    return out


def _attention_macs(node: Node, ins: list[TensorSpec]) -> int:
    q, k, v = ins[:3]
    scores = math.prod(q.shape[:-1]) * k.shape[-2]
    return scores * (q.shape[-1] + v.shape[-1])  # q kᵀ, then the weights times v


def _cond_conv_shape(node: Node, x: TensorSpec, routing: TensorSpec) -> Shape:
    if routing.shape != (x.shape[0], node.attrs["experts"]):
        raise IRError(f"cond_conv2d over {node.attrs['experts']} experts needs routing weights [N, "
                      f"{node.attrs['experts']}], got {list(routing.shape)}", node.name)
    return _conv_shape(node, x)


def _cond_conv_params(a: dict) -> dict[str, Shape]:
    w = _conv_params(a)["weight"]
    return {"weight": (a["experts"], *w), "bias": (a["experts"], a["out_channels"])}


def _cond_conv_macs(node: Node, ins: list[TensorSpec]) -> int:
    # the conv, plus mixing the experts' kernels for every sample (routing @ weights)
    kernel = math.prod(_cond_conv_params(node.attrs)["weight"])
    return _conv_macs(node, ins) + ins[0].shape[0] * (kernel + node.attrs["experts"] * node.attrs["out_channels"])


def _fold_batch_shape(node: Node, x: TensorSpec) -> Shape:
    if len(x.shape) < 3:
        raise IRError(f"fold_batch merges dim 1 into the batch and needs rank >= 3, got {list(x.shape)}", node.name)
    return (x.shape[0] * x.shape[1], *x.shape[2:])


def _unfold_batch_shape(node: Node, x: TensorSpec) -> Shape:
    k = node.attrs["factor"]
    if k < 1 or x.shape[0] % k:
        raise IRError(f"unfold_batch by {k} of a batch dim of {x.shape[0]}", node.name)
    return (x.shape[0] // k, k, *x.shape[1:])


def _expand_shape(node: Node, x: TensorSpec) -> Shape:
    target = (x.shape[0], *node.attrs["shape"])
    if len(target) != len(x.shape) or any(s != t and s != 1 for s, t in zip(x.shape[1:], target[1:])):
        raise IRError(f"expand of {list(x.shape)} to [N, {', '.join(map(str, node.attrs['shape']))}]: only "
                      f"singleton dims grow", node.name)
    return target


def _layer_norm_shape(node: Node, x: TensorSpec) -> Shape:
    if len(x.shape) < 2 or x.shape[-1] != node.attrs["normalized_size"]:
        raise IRError(f"layer_norm over the last dim of size {node.attrs['normalized_size']} got input {list(x.shape)}", node.name)
    return x.shape


# Where the channel axis goes (rules as data, beside the shape rules): (node, *input specs) -> output axis.
def _last_axis(node: Node, x: TensorSpec, *rest) -> int:
    return len(x.shape) - 1


def _permute_axis(node: Node, x: TensorSpec) -> int:
    return list(node.attrs["dims"]).index(x.axis)


def _flatten_axis(node: Node, x: TensorSpec) -> int:
    s, e = node.attrs["start_dim"], node.attrs["end_dim"] % len(x.shape)
    return x.axis if x.axis < s else s if x.axis <= e else x.axis - (e - s)


def _reshape_axis(node: Node, x: TensorSpec) -> int:
    return reshape_axis(x.shape, (x.shape[0], *node.attrs["shape"]), x.axis)[0]


def _mean_axis(node: Node, x: TensorSpec) -> int:
    dims = {d % len(x.shape) for d in node.attrs["dims"]}
    if node.attrs["keepdim"] or x.axis in dims:
        return min(x.axis, len(x.shape) - 1 - (0 if node.attrs["keepdim"] else len(dims)))
    return x.axis - sum(d < x.axis for d in dims)


def _binary_axis(node: Node, *xs: TensorSpec) -> int:
    out_rank = max(len(x.shape) for x in xs)
    full = [x for x in xs if len(x.shape) == out_rank and x.shape[x.axis] != 1] or [x for x in xs if len(x.shape) == out_rank]
    return full[0].axis


def _pad_shape(node: Node, x: TensorSpec) -> Shape:
    pads = node.attrs["pads"]  # torch order: last dim (left, right), then the one before, ...
    if len(pads) % 2 or len(pads) > 2 * (len(x.shape) - 2):
        raise IRError(f"pad {list(pads)} must pad spatial dims of input {list(x.shape)}", node.name)
    shape = list(x.shape)
    for i in range(len(pads) // 2):
        shape[-1 - i] += pads[2 * i] + pads[2 * i + 1]
        if shape[-1 - i] < 1:
            raise IRError(f"pad {list(pads)} leaves no output for input {list(x.shape)}", node.name)
    return tuple(shape)


def _group_norm_shape(node: Node, x: TensorSpec) -> Shape:
    a = node.attrs
    if len(x.shape) < 2 or x.shape[1] != a["num_channels"] or a["num_channels"] % a["num_groups"]:
        raise IRError(f"group_norm of {a['num_channels']} channels in {a['num_groups']} groups got input {list(x.shape)}",
                      node.name)
    return x.shape


def _const_shape(node: Node) -> Shape:
    return tuple(node.attrs["shape"])


def _conv_params(a: dict) -> dict[str, Shape]:
    w = (a["out_channels"], a["in_channels"] // a["groups"], *_pair(a["kernel_size"]))
    return {"weight": w, "bias": (a["out_channels"],), "weight_mask": w}


def _linear_params(a: dict) -> dict[str, Shape]:
    w = (a["out_features"], a["in_features"])
    return {"weight": w, "bias": (a["out_features"],), "weight_mask": w}


def _bn_params(a: dict) -> dict[str, Shape]:
    return {k: (a["num_features"],) for k in ("weight", "bias", "running_mean", "running_var")}


def _conv_macs(node: Node, ins: list[TensorSpec]) -> int:
    a = node.attrs
    kh, kw = _pair(a["kernel_size"])
    return node.spec.numel * (a["in_channels"] // a["groups"]) * kh * kw


# Conv1d, transposed conv, upsampling, vector norm (keyword spotting on MFCC, U-Net decoders, ConvNeXt-V2's GRN).
def _window_out_1d(node: Node, size: int) -> int:
    a = node.attrs
    out = (size + 2 * a["padding"] - a["dilation"] * (a["kernel_size"] - 1) - 1) // a["stride"] + 1
    if out < 1:
        raise IRError(f"conv1d with kernel {a['kernel_size']}, stride {a['stride']}, padding {a['padding']} leaves no "
                      f"output for length {size}", node.name)
    return out


def _conv1d_shape(node: Node, x: TensorSpec) -> Shape:
    a = node.attrs
    if len(x.shape) != 3 or x.shape[1] != a["in_channels"]:
        raise IRError(f"conv1d expects input [N, {a['in_channels']}, L], got {list(x.shape)}", node.name)
    return (x.shape[0], a["out_channels"], _window_out_1d(node, x.shape[2]))


def _conv1d_params(a: dict) -> dict[str, Shape]:
    return {"weight": (a["out_channels"], a["in_channels"] // a["groups"], a["kernel_size"]), "bias": (a["out_channels"],)}


def _conv_transpose_shape(node: Node, x: TensorSpec) -> Shape:
    a = node.attrs
    if len(x.shape) != 4 or x.shape[1] != a["in_channels"]:
        raise IRError(f"conv_transpose2d expects input [N, {a['in_channels']}, H, W], got {list(x.shape)}", node.name)
    k, s, p, op, d = (_pair(a[key]) for key in ("kernel_size", "stride", "padding", "output_padding", "dilation"))
    hw = tuple((x.shape[2 + i] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + op[i] + 1 for i in range(2))
    if min(hw) < 1 or any(op[i] >= max(s[i], d[i]) for i in range(2)):
        raise IRError(f"conv_transpose2d with kernel {k}, stride {s}, padding {p}, output_padding {op} is invalid for "
                      f"input {list(x.shape)}", node.name)
    return (x.shape[0], a["out_channels"], *hw)


def _conv_transpose_params(a: dict) -> dict[str, Shape]:
    # torch's layout: [in, out / groups, kh, kw]
    return {"weight": (a["in_channels"], a["out_channels"] // a["groups"], *_pair(a["kernel_size"])),
            "bias": (a["out_channels"],)}


def _conv_transpose_macs(node: Node, ins: list[TensorSpec]) -> int:
    # every input element is scattered into (out / groups) · kh · kw outputs
    a = node.attrs
    kh, kw = _pair(a["kernel_size"])
    return ins[0].numel * (a["out_channels"] // a["groups"]) * kh * kw


def conv_weight_oi(node: Node, weight: "torch.Tensor | None" = None) -> "torch.Tensor":
    """The weight of a conv1d / conv2d / conv_transpose2d node (or `weight`, a tensor of its shape such as a
    saliency) in the conv layout [out, in / groups, *k] (a transposed conv stores [in, out / groups, *k]):
    per-channel magnitudes read the same for all three."""
    w = node.params["weight"] if weight is None else weight
    if node.op != "conv_transpose2d":
        return w
    g = node.attrs["groups"]
    ig, og = w.shape[0] // g, w.shape[1]
    return w.reshape(g, ig, og, *w.shape[2:]).transpose(1, 2).reshape(g * og, ig, *w.shape[2:])


INTERPOLATE_MODES = ("nearest", "nearest-exact", "bilinear")


def _interpolate_shape(node: Node, x: TensorSpec) -> Shape:
    a = node.attrs
    if len(x.shape) != 4:
        raise IRError(f"interpolate needs a 4-D NCHW input, got {list(x.shape)}", node.name)
    if a["mode"] not in INTERPOLATE_MODES:
        raise IRError(f"interpolate mode {a['mode']!r} is not one of {list(INTERPOLATE_MODES)}", node.name)
    size = _pair(a["size"])
    if a.get("scale_factor") is not None:  # torch: floor(in · scale), and the scale maps the sample positions
        want = tuple(math.floor(x.shape[2 + i] * float(a["scale_factor"][i])) for i in range(2))
        if want != size:
            raise IRError(f"interpolate size {list(size)} disagrees with scale_factor {a['scale_factor']} on input "
                          f"{list(x.shape)}", node.name)
    if min(size) < 1:
        raise IRError(f"interpolate to size {list(size)} leaves no output", node.name)
    return (*x.shape[:2], *size)


def _interpolate_macs(node: Node, ins: list[TensorSpec]) -> int:
    return 0  # no multiply-accumulate with weights; its work (taps per output) is in targets/cost.py


@dataclass(frozen=True)
class OpDef:
    """Everything hwopt knows about one op. Rules are functions referenced here and defined beside their
    kind: shape / MAC / axis rules in this file, channel rules in hwopt.op_channels, lowerings in
    hwopt.op_lowering; features read the flags (see "How to add an op" in docs/ARCHITECTURE.md)."""
    arity: tuple[int, int | None]  # min, max number of tensor inputs (None: unbounded)
    attrs: tuple[str, ...] = ()
    shape: Callable[..., Shape] | None = None  # (node, *input specs) -> output shape; None: same as input 0
    params: Callable[[dict], dict[str, Shape]] | None = None  # allowed params and their shapes
    required_params: tuple[str, ...] = ()
    macs: Callable[[Node, list], int] | None = None
    channel_preserving: bool = False  # output channel i depends only on input channel i
    axis: Callable[..., int] | None = None  # (node, *input specs) -> output channel axis; None: input 0's (or 1)
    doc: str = ""  # what it computes, for the generated op list (docs/ops.md)
    nchw: bool = False  # its output's channels are dim 1 whatever its input's axis (an NCHW kernel)
    # channel-coupling rule (c, node) and removal rule (m, node, keep_in, keep_out, removed_in, graph), see
    # hwopt.op_channels; None: channel i <-> channel i if channel_preserving, and nothing to resize
    couple: Callable[..., None] | None = None
    resize: Callable[..., None] | None = None
    lower: Callable[..., Any] | None = None  # (node, emitter) -> nn.Module or fx node, see hwopt.op_lowering
    # cost kind (hwopt.targets.cost): view (no kernel), elementwise, pool, reduce, data (movement), dense,
    # matmul, conv, resample; `work`: operations per output element (elementwise) or input element (reduce)
    cost: str = ""
    work: float = 0
    int8: str = ""  # int8 kernel in hwopt.quant: "kernel", "lut" (a 256-entry table), "view"; "": none
    firmware: str = ""  # Cortex-M firmware (hwopt.firmware): "anchor" (others fuse into it), "fused", "kernel", "view"
    # removing dead units after magnitude pruning (hwopt.sparse): the constant a channel holds after the op
    # when its input channel is the constant v, (attrs, v) -> tensor (NaN: unknown); None: not folded through
    constant: Callable[[dict, torch.Tensor], torch.Tensor] | None = None


def _same_constant(a: dict, v: torch.Tensor) -> torch.Tensor:
    return v


def _pointwise(f: Callable) -> Callable[[dict, torch.Tensor], torch.Tensor]:
    return lambda a, v: f(v)


def _avg_pool_constant(a: dict, v: torch.Tensor) -> torch.Tensor:
    if a["count_include_pad"] and any(p > 0 for p in _pair(a["padding"])):
        return torch.where(v == 0, v, torch.full_like(v, float("nan")))  # padded borders dilute a non-zero
    return v


def _activation(doc: str, module: type[nn.Module], work: float, fn: Callable, *, int8: str) -> OpDef:
    """A unary, channel-preserving op without attributes, lowered to `module()`, computed by `fn` (which
    folds a dead unit's constant through it), fused into the producer's kernel on Cortex-M."""
    return OpDef((1, 1), channel_preserving=True, doc=doc, lower=lowering.module(lambda n: module()), cost="elementwise",
                 work=work, int8=int8, firmware="fused", constant=_pointwise(fn))


def _binary(doc: str, fn: Callable, work: float, **flags) -> OpDef:
    return OpDef((1, 2), ("scalar", "reverse"), shape=_broadcast, channel_preserving=True, axis=_binary_axis, doc=doc,
                 couple=channel.elementwise, lower=lowering.binary(fn), cost="elementwise", work=work, **flags)


_CONV_ATTRS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups")
_POOL_ATTRS = ("kernel_size", "stride", "padding", "ceil_mode")
_NCHW_SAME = channel.nchw(channel.same)

OPS: dict[str, OpDef] = {
    "input": OpDef((0, 0), doc="a graph input (its spec is the example input's)", couple=channel.pin_output,
                   lower=lowering.input_, cost="view"),
    "output": OpDef((1, None), doc="the graph's result(s)", nchw=True, couple=channel.pin_all, lower=lowering.output,
                    cost="view"),
    "conv2d": OpDef((1, 1), _CONV_ATTRS, _conv_shape, _conv_params, ("weight",), _conv_macs,
                    doc="2-D convolution (grouped, depthwise, dilated); optional weight_mask", nchw=True,
                    couple=channel.nchw(channel.conv_groups), resize=channel.resize_conv, lower=lowering.conv2d,
                    cost="conv", int8="kernel", firmware="anchor"),
    "conv1d": OpDef((1, 1), _CONV_ATTRS, _conv1d_shape, _conv1d_params, ("weight",),
                    lambda n, ins: n.spec.numel * (n.attrs["in_channels"] // n.attrs["groups"]) * n.attrs["kernel_size"],
                    doc="1-D convolution over [N, C, L] (grouped, depthwise, dilated)", nchw=True,
                    couple=channel.nchw(channel.conv_groups), resize=channel.resize_conv, lower=lowering.conv1d,
                    cost="conv"),
    "conv_transpose2d": OpDef((1, 1), _CONV_ATTRS[:5] + ("output_padding",) + _CONV_ATTRS[5:], _conv_transpose_shape,
                              _conv_transpose_params, ("weight",), _conv_transpose_macs,
                              doc="2-D transposed convolution (weight [in, out/groups, kh, kw]; output_padding, groups)",
                              nchw=True, couple=channel.nchw(channel.conv_groups), resize=channel.resize_conv_transpose,
                              lower=lowering.conv_transpose2d, cost="conv"),
    # upsampling to `size`; `scale_factor` (None or per-dim) is kept because torch maps sample positions with it
    "interpolate": OpDef((1, 1), ("size", "scale_factor", "mode", "align_corners"), _interpolate_shape,
                         channel_preserving=True, nchw=True, couple=_NCHW_SAME, lower=lowering.interpolate,
                         doc="upsample / resize NCHW to `size`: nearest, nearest-exact, bilinear (align_corners)",
                         cost="resample"),
    # p-norm over `dims` (torch.linalg.vector_norm; ConvNeXt-V2's GRN takes it over the spatial dims)
    "vector_norm": OpDef((1, 1), ("ord", "dims", "keepdim"), _mean_shape, axis=_mean_axis,
                         doc="p-norm over `dims` (Tensor.norm, torch.linalg.vector_norm)", couple=channel.over_dims,
                         lower=lowering.vector_norm, cost="reduce", work=2),
    "linear": OpDef((1, 1), ("in_features", "out_features"), _linear_shape, _linear_params, ("weight",),
                    lambda n, ins: n.spec.numel * n.attrs["in_features"], axis=_last_axis,
                    doc="x @ Wᵀ + b over the last dim (any rank)", couple=channel.linear, resize=channel.resize_linear,
                    lower=lowering.linear, cost="dense", int8="kernel", firmware="anchor"),
    "batch_norm": OpDef((1, 1), ("num_features", "eps", "momentum"), _bn_shape, _bn_params,
                        ("running_mean", "running_var"), channel_preserving=True, nchw=True,
                        doc="inference batch norm with running statistics", couple=_NCHW_SAME,
                        resize=channel.resize_batch_norm, lower=lowering.batch_norm, cost="elementwise", work=2,
                        firmware="fused"),
    "relu": _activation("max(x, 0)", nn.ReLU, 1, F.relu, int8="kernel"),
    "relu6": _activation("min(max(x, 0), 6)", nn.ReLU6, 1, F.relu6, int8="kernel"),
    "hardswish": _activation("x · relu6(x + 3) / 6", nn.Hardswish, 4, F.hardswish, int8="lut"),
    "hardsigmoid": _activation("relu6(x + 3) / 6", nn.Hardsigmoid, 3, F.hardsigmoid, int8="lut"),
    "sigmoid": _activation("1 / (1 + e⁻ˣ)", nn.Sigmoid, 16, torch.sigmoid, int8="lut"),
    "silu": _activation("x · sigmoid(x)", nn.SiLU, 16, F.silu, int8="lut"),
    "tanh": _activation("tanh(x)", nn.Tanh, 16, torch.tanh, int8="lut"),
    "identity": OpDef((1, 1), channel_preserving=True, doc="x", lower=lowering.module(lambda n: nn.Identity()),
                      cost="view", int8="view", firmware="view", constant=_same_constant),
    "gelu": OpDef((1, 1), ("approximate",), channel_preserving=True, doc="x · Φ(x) (exact or tanh)",
                  lower=lowering.module(lambda n: nn.GELU(approximate=n.attrs["approximate"])), cost="elementwise",
                  work=20, int8="lut", firmware="fused",
                  constant=lambda a, v: F.gelu(v, approximate=a.get("approximate", "none"))),
    "dropout": OpDef((1, 1), ("p",), channel_preserving=True, doc="dropout (identity at inference)",
                     lower=lowering.module(lambda n: nn.Dropout(n.attrs["p"])), cost="view", int8="view",
                     firmware="view", constant=_same_constant),
    "softmax": OpDef((1, 1), ("dim",), doc="softmax along `dim`", couple=channel.along_dim,
                     lower=lowering.module(lambda n: nn.Softmax(n.attrs["dim"])), cost="elementwise", work=20,
                     firmware="kernel"),
    "log_softmax": OpDef((1, 1), ("dim",), doc="log-softmax along `dim`", couple=channel.along_dim,
                         lower=lowering.module(lambda n: nn.LogSoftmax(n.attrs["dim"])), cost="elementwise", work=24,
                         firmware="kernel"),
    "add": _binary("x + y, or x + scalar", operator.add, 1, int8="kernel", firmware="fused"),
    "sub": _binary("x - y (scalar, reversed)", operator.sub, 1, firmware="fused"),
    "mul": _binary("x · y, or x · scalar", operator.mul, 1, firmware="fused"),
    "div": _binary("x / y (scalar, reversed)", operator.truediv, 4, firmware="fused"),
    "concat": OpDef((1, None), ("dim",), _concat_shape, doc="concatenate along `dim`", couple=channel.concat,
                    lower=lowering.concat, cost="data", int8="kernel", firmware="kernel"),
    "slice": OpDef((1, 1), ("dim", "start", "end"), _slice_shape, doc="x[start:end] along `dim`", couple=channel.slice_,
                   resize=channel.resize_slice, lower=lowering.slice_, cost="data", firmware="kernel"),
    "channel_shuffle": OpDef((1, 1), ("groups",), _shuffle_shape, doc="ShuffleNet channel shuffle", nchw=True,
                             couple=channel.channel_shuffle,
                             lower=lowering.module(lambda n: nn.ChannelShuffle(n.attrs["groups"])), cost="data"),
    "max_pool2d": OpDef((1, 1), _POOL_ATTRS + ("dilation",),
                        lambda n, x: (*x.shape[:2], *_spatial(n, x, True, n.attrs["ceil_mode"])), channel_preserving=True,
                        doc="2-D max pooling", nchw=True, couple=_NCHW_SAME,
                        lower=lowering.module(lambda n: nn.MaxPool2d(n.attrs["kernel_size"], n.attrs["stride"],
                                                                     n.attrs["padding"], n.attrs["dilation"],
                                                                     ceil_mode=n.attrs["ceil_mode"])),
                        cost="pool", int8="kernel", firmware="kernel", constant=_same_constant),
    "avg_pool2d": OpDef((1, 1), _POOL_ATTRS + ("count_include_pad",),
                        lambda n, x: (*x.shape[:2], *_spatial(n, x, False, n.attrs["ceil_mode"])), channel_preserving=True,
                        doc="2-D average pooling", nchw=True, couple=_NCHW_SAME,
                        lower=lowering.module(lambda n: nn.AvgPool2d(n.attrs["kernel_size"], n.attrs["stride"],
                                                                     n.attrs["padding"], n.attrs["ceil_mode"],
                                                                     n.attrs["count_include_pad"])),
                        cost="pool", int8="kernel", firmware="kernel", constant=_avg_pool_constant),
    "adaptive_avg_pool2d": OpDef((1, 1), ("output_size",), _adaptive_shape, channel_preserving=True,
                                 doc="adaptive average pooling", nchw=True, couple=_NCHW_SAME,
                                 lower=lowering.module(lambda n: nn.AdaptiveAvgPool2d(n.attrs["output_size"])),
                                 cost="pool", int8="kernel", firmware="kernel", constant=_same_constant),
    "adaptive_max_pool2d": OpDef((1, 1), ("output_size",), _adaptive_shape, channel_preserving=True,
                                 doc="adaptive max pooling", nchw=True, couple=_NCHW_SAME,
                                 lower=lowering.module(lambda n: nn.AdaptiveMaxPool2d(n.attrs["output_size"])),
                                 cost="pool", constant=_same_constant),
    "pad": OpDef((1, 1), ("pads", "value"), _pad_shape, channel_preserving=True,
                 doc="constant padding of spatial dims (TF 'same')", lower=lowering.pad, cost="data"),
    "leaky_relu": OpDef((1, 1), ("negative_slope",), channel_preserving=True, doc="max(x, 0) + slope · min(x, 0)",
                        lower=lowering.module(lambda n: nn.LeakyReLU(n.attrs["negative_slope"])), cost="elementwise",
                        work=2),
    "group_norm": OpDef((1, 1), ("num_groups", "num_channels", "eps"), _group_norm_shape,
                        lambda a: {"weight": (a["num_channels"],), "bias": (a["num_channels"],)},
                        doc="group norm with per-channel scale and shift", couple=channel.group_norm,
                        resize=channel.resize_group_norm, lower=lowering.group_norm, cost="elementwise", work=6),
    # a tensor that does not depend on the input (a layer-scale vector): learnable, batch dim 1
    "const": OpDef((0, 0), ("shape",), _const_shape, lambda a: {"value": tuple(a["shape"])}, ("value",),
                   axis=lambda n: n.attrs.get("axis", 1),
                   doc="a learnable tensor that does not depend on the input (layer scale)", couple=channel.untied,
                   resize=channel.resize_const, lower=lowering.const, cost="view"),
    "flatten": OpDef((1, 1), ("start_dim", "end_dim"), _flatten_shape, axis=_flatten_axis, doc="merge dims start..end",
                     couple=channel.reshape,
                     lower=lowering.module(lambda n: nn.Flatten(n.attrs["start_dim"], n.attrs["end_dim"])),
                     cost="view", int8="view", firmware="view", constant=_same_constant),
    "reshape": OpDef((1, 1), ("shape",), _reshape_shape, axis=_reshape_axis, doc="reshape keeping the batch dim",
                     couple=channel.reshape, resize=channel.resize_shape_attr, lower=lowering.reshape, cost="view",
                     int8="view", firmware="view"),
    "mean": OpDef((1, 1), ("dims", "keepdim"), _mean_shape, axis=_mean_axis, doc="mean over `dims` (not the batch)",
                  couple=channel.over_dims, lower=lowering.mean, cost="pool", int8="kernel", firmware="kernel"),
    "permute": OpDef((1, 1), ("dims",), _permute_shape, axis=_permute_axis,
                     doc="reorder dims, batch first (channels-last blocks)", couple=channel.same,
                     lower=lowering.permute, cost="data"),
    # LayerNorm over the last dim (channels-last blocks, tokens); over the channels it couples them like
    # batch norm (weight and bias per channel)
    "layer_norm": OpDef((1, 1), ("normalized_size", "eps"), _layer_norm_shape,
                        lambda a: {"weight": (a["normalized_size"],), "bias": (a["normalized_size"],)},
                        doc="layer norm over the last dim", couple=channel.last_dim_norm,
                        resize=channel.resize_layer_norm, lower=lowering.layer_norm, cost="elementwise", work=6),
    # tokens and attention: batched matrix products, scaled dot-product attention (its scale is stored,
    # so pruning head dims does not change it), sums, L2 normalisation, broadcasting singleton dims
    "matmul": OpDef((2, 2), (), _matmul_shape, macs=lambda n, ins: n.spec.numel * ins[0].shape[-1], axis=_matmul_axis,
                    doc="batched matrix product [..., M, K] @ [..., K, N] (leading dims broadcast)",
                    couple=channel.heads, lower=lowering.matmul, cost="matmul"),
    "attention": OpDef((3, 4), ("scale", "causal"), _attention_shape, macs=_attention_macs,
                       axis=lambda n, q, *rest: q.axis if q.axis < len(q.shape) - 1 else len(q.shape) - 1,
                       doc="softmax(q kᵀ · scale [+ mask]) v over the last two dims (scaled_dot_product_attention, heads)",
                       couple=channel.heads, lower=lowering.attention, cost="matmul"),
    "sum": OpDef((1, 1), ("dims", "keepdim"), _mean_shape, axis=_mean_axis, doc="sum over `dims` (not the batch)",
                 couple=channel.over_dims, lower=lowering.sum_, cost="reduce", work=1),
    "normalize": OpDef((1, 1), ("dim", "eps"), doc="x / max(‖x‖₂, eps) along `dim` (F.normalize)",
                       couple=channel.along_dim, lower=lowering.normalize, cost="reduce", work=4),
    "expand": OpDef((1, 1), ("shape",), _expand_shape, doc="broadcast singleton dims to `shape` (the batch dim kept)",
                    couple=channel.expand, resize=channel.resize_shape_attr, lower=lowering.expand, cost="data"),
    # a dim folded into the batch and back (MobileViT runs its transformer on [B * patch_area, patches, C]):
    # every op treats dim 0 as the batch, so a folded tensor's ops act per (sample, folded index)
    "fold_batch": OpDef((1, 1), (), _fold_batch_shape, axis=lambda n, x: max(1, x.axis - 1),
                        doc="merge dim 1 into the batch dim: [N, K, ...] -> [N·K, ...]", couple=channel.fold_batch,
                        lower=lowering.fold_batch, cost="view"),
    "unfold_batch": OpDef((1, 1), ("factor",), _unfold_batch_shape, axis=lambda n, x: x.axis + 1,
                          doc="split `factor` out of the batch dim: [N·factor, ...] -> [N, factor, ...]",
                          couple=channel.same, lower=lowering.unfold_batch, cost="view"),
    # CondConv (Yang et al. 2019): a conv whose kernel is each sample's mix of expert kernels, weighted by
    # its routing input [N, experts]; not pruned (exactness first)
    "cond_conv2d": OpDef((2, 2), _CONV_ATTRS + ("experts",), _cond_conv_shape, _cond_conv_params, ("weight",),
                         _cond_conv_macs, nchw=True, couple=channel.pin_all, lower=lowering.cond_conv2d, cost="conv",
                         doc="conv with per-sample kernels Σₑ routing[n, e] · weight[e] (CondConv; input 2: routing "
                             "[N, experts])"),
    # int8 quantization (hwopt.quant): float32 -> int8 with attrs["quant"] = {scale, zero_point}, and back
    "quantize": OpDef((1, 1), ("quant",), channel_preserving=True,
                      doc="float32 -> int8 with a per-tensor scale and zero point (hwopt.quant)",
                      lower=lowering.quantized_only, cost="elementwise", work=3),
    "dequantize": OpDef((1, 1), channel_preserving=True, doc="int8 -> float32 with the producer's scale and zero point",
                        lower=lowering.quantized_only, cost="elementwise", work=2),
}
OUTPUT_DTYPE = {"quantize": "int8", "dequantize": "float32"}  # ops whose output dtype is not their input's
# Per-node checks other modules add to verify() (hwopt.quant: dtypes and quantization parameters).
NODE_CHECKS: list[Callable[["Graph", Node], None]] = []


class _Docs(Mapping):
    """OP_DOCS[op]: the op table's `doc` of each op (a live view, so an op added to OPS is documented)."""

    def __getitem__(self, op: str) -> str:
        return OPS[op].doc

    def __iter__(self):
        return iter(OPS)

    def __len__(self) -> int:
        return len(OPS)


OP_DOCS: Mapping[str, str] = _Docs()


class OpsWhere(Set):
    """The ops whose OpDef passes `test`, read live from OPS (so an op added to the table is in it): the
    op lists features keep (hwopt.quant.INT8_OPS, the cost kinds, the firmware's fusable ops) are these."""

    def __init__(self, test: Callable[[OpDef], bool]):
        self.test = test

    def __contains__(self, op) -> bool:
        d = OPS.get(op)
        return d is not None and bool(self.test(d))

    def __iter__(self):
        return (op for op, d in OPS.items() if self.test(d))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    @classmethod
    def _from_iterable(cls, it):
        return set(it)

    def __repr__(self) -> str:
        return f"OpsWhere({sorted(self)})"


class OpWork(Mapping):
    """op -> its `work` for the ops of one cost kind, read live from OPS (hwopt.targets.cost.OP_WORK)."""

    def __init__(self, cost: str):
        self.ops = OpsWhere(lambda d: d.cost == cost)

    def __getitem__(self, op: str) -> float:
        if op not in self.ops:
            raise KeyError(op)
        return OPS[op].work

    def __iter__(self):
        return iter(self.ops)

    def __len__(self) -> int:
        return len(self.ops)
OPTIONAL_ATTRS = {"scalar": None, "reverse": False, "axis": 1, "step": 1}


def infer_spec(node: Node, inputs: list[TensorSpec]) -> TensorSpec:
    """The output spec of `node` given its input specs, checking attributes and parameters."""
    d = OPS.get(node.op)
    if d is None:
        raise IRError(f"op {node.op!r} is not in the op set ({', '.join(sorted(OPS))})", node.name)
    lo, hi = d.arity
    if len(inputs) < lo or (hi is not None and len(inputs) > hi):
        raise IRError(f"{node.op} takes {lo}..{hi if hi is not None else 'n'} inputs, has {len(inputs)}", node.name)
    missing = [a for a in d.attrs if a not in node.attrs and a not in OPTIONAL_ATTRS]
    if missing:
        raise IRError(f"{node.op} is missing attribute(s) {missing}", node.name)
    if node.op in ("conv1d", "conv_transpose2d") and (node.attrs["in_channels"] % node.attrs["groups"]
                                                     or node.attrs["out_channels"] % node.attrs["groups"]):
        a = node.attrs
        raise IRError(f"groups={a['groups']} does not divide in_channels={a['in_channels']} and out_channels={a['out_channels']}", node.name)
    if node.op in ("conv2d", "cond_conv2d") and (node.attrs["in_channels"] % node.attrs["groups"] or node.attrs["out_channels"] % node.attrs["groups"]):
        a = node.attrs
        raise IRError(f"groups={a['groups']} does not divide in_channels={a['in_channels']} and out_channels={a['out_channels']}", node.name)
    if d.params is not None:
        allowed = d.params(node.attrs)
        for name, t in node.params.items():
            if name not in allowed:
                raise IRError(f"{node.op} has unexpected parameter {name!r} (allowed: {sorted(allowed)})", node.name)
            if tuple(t.shape) != allowed[name]:
                raise IRError(f"parameter {name!r} has shape {tuple(t.shape)}, attributes imply {allowed[name]}", node.name)
        for name in d.required_params:
            if name not in node.params:
                raise IRError(f"{node.op} needs parameter {name!r}", node.name)
    elif node.params:
        raise IRError(f"{node.op} takes no parameters, has {sorted(node.params)}", node.name)
    if node.op == "input":
        if node.spec is None:
            raise IRError("input node has no spec", node.name)
        return node.spec
    if node.op in ("add", "sub", "mul", "div") and (len(inputs) == 1) != (node.attrs.get("scalar") is not None):
        raise IRError(f"{node.op} needs two tensor inputs, or one and a 'scalar' attribute", node.name)
    shape = tuple(int(s) for s in (d.shape(node, *inputs) if d.shape else inputs[0].shape))
    dtype = inputs[0].dtype if inputs else str(node.params["value"].dtype).removeprefix("torch.")
    axis = d.axis(node, *inputs) if d.axis else inputs[0].axis if inputs and not d.nchw else 1
    return TensorSpec(shape, OUTPUT_DTYPE.get(node.op, dtype), axis if len(shape) > 1 else 1)


# ---------------------------------------------------------------------------------------------------


def _copy_edges(src: nx.DiGraph) -> nx.DiGraph:
    """A copy of `src`, whose nodes and edges carry no attributes (hwopt's never do): its adjacency dicts
    filled directly, ~5x faster than DiGraph.copy(), which every pass's graph copy pays."""
    dst = nx.DiGraph()
    dst._node.update((n, {}) for n in src._node)
    succ, pred = dst._adj, dst._pred
    for u in src._node:
        succ[u], pred[u] = {}, {}
    for u, nbrs in src._adj.items():
        su = succ[u]
        for v in nbrs:
            su[v] = pred[v][u] = {}  # one edge-data dict seen from both ends, as networkx keeps it
    return dst


class Graph:
    """A DAG of `Node`s. Build with `add()`; read with `nodes`, `order()`, `users()`; check with `verify()`."""

    def __init__(self):
        self.nodes: dict[str, Node] = {}
        self.nx = nx.DiGraph()
        self._order: list[str] | None = None
        self._cache: dict[str, Any] = {}  # analyses (channel groups, cost, ...) dropped on every change
        self._verified = False

    # -- building -----------------------------------------------------------------------------------
    def add(self, name: str, op: str, inputs: Iterable[str] = (), attrs: dict | None = None,
            params: dict | None = None, spec: TensorSpec | None = None, source: str = "", infer: bool = True) -> Node:
        if name in self.nodes:
            raise IRError("a node of this name already exists", name)
        inputs = tuple(inputs)
        for i in inputs:
            if i not in self.nodes:
                raise IRError(f"input {i!r} does not exist", name)
        node = Node(name, op, inputs, dict(attrs or {}), dict(params or {}), spec, source)
        if infer and op != "input":
            node.spec = infer_spec(node, [self.nodes[i].spec for i in inputs])
        self.nodes[name] = node
        self.nx.add_node(name)
        self.nx.add_edges_from((i, name) for i in inputs)
        self.changed()
        return node

    def replace(self, node: Node) -> None:
        """Put `node` (a modified copy of an existing node of the same name) in place, re-wiring edges."""
        old = self.nodes[node.name]
        if tuple(node.inputs) == tuple(old.inputs):  # same edges: the topological order stays valid
            self.nodes[node.name] = node
            self._cache.clear()
            self._verified = False
            return
        for i in node.inputs:
            if i not in self.nodes:
                raise IRError(f"input {i!r} does not exist", node.name)
        self.nx.remove_edges_from([(i, node.name) for i in set(old.inputs)])
        self.nx.add_edges_from((i, node.name) for i in node.inputs)
        self.nodes[node.name] = node
        self.changed()

    def remove(self, name: str) -> None:
        if any(True for _ in self.nx.successors(name)):
            raise IRError(f"cannot remove: still used by {sorted(self.nx.successors(name))}", name)
        del self.nodes[name]
        self.nx.remove_node(name)
        self.changed()

    def replace_uses(self, old: str, new: str) -> None:
        """Make every user of `old` read `new` instead."""
        for user in list(self.nx.successors(old)):
            n = self.nodes[user].copy()
            n.inputs = tuple(new if i == old else i for i in n.inputs)
            self.replace(n)

    def unique_name(self, base: str) -> str:
        name, k = base, 1
        while name in self.nodes:
            name, k = f"{base}_{k}", k + 1
        return name

    def changed(self) -> None:
        self._order = None
        self._cache.clear()
        self._verified = False

    def copy(self) -> "Graph":
        """A new graph with copied nodes; tensors are shared (the IR never modifies a tensor in place)."""
        g = Graph()
        g.nodes = {k: n.copy() for k, n in self.nodes.items()}
        g.nx = _copy_edges(self.nx)
        g._order = list(self._order) if self._order is not None else None
        return g

    # -- reading ------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def __contains__(self, name: str) -> bool:
        return name in self.nodes

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self):
        return (self.nodes[n] for n in self.order())

    def order(self) -> list[str]:
        """Topological order; ties broken by insertion order so it is deterministic."""
        if self._order is None:
            rank = {n: i for i, n in enumerate(self.nodes)}
            try:
                self._order = list(nx.lexicographical_topological_sort(self.nx, key=rank.__getitem__))
            except nx.NetworkXUnfeasible:
                cycle = nx.find_cycle(self.nx)
                raise IRError(f"graph has a cycle through {[u for u, _ in cycle]}", cycle[0][0]) from None
        return self._order

    def users(self, name: str) -> list[str]:
        return list(self.nx.successors(name))

    @property
    def inputs(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.op == "input"]

    @property
    def output(self) -> Node:
        outs = [n for n in self.nodes.values() if n.op == "output"]
        if len(outs) != 1:
            raise IRError(f"graph must have exactly one output node, has {len(outs)}")
        return outs[0]

    def input_specs(self, node: Node | str) -> list[TensorSpec]:
        node = self.nodes[node] if isinstance(node, str) else node
        return [self.nodes[i].spec for i in node.inputs]

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """Analysis cache: `compute()` once per graph state; any change to the graph drops it."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    # -- invariants ---------------------------------------------------------------------------------
    def infer_shapes(self) -> None:
        """Recompute every node's spec from its inputs (after a pass changed channel counts)."""
        for name in self.order():
            n = self.nodes[name]
            if n.op != "input":
                n.spec = infer_spec(n, self.input_specs(n))
        self._cache.clear()

    def verify(self, *, infer_shapes: bool = False) -> "Graph":
        """Check every invariant; raise IRError naming the node and the broken invariant.

        infer_shapes=True first recomputes each node's spec from its inputs (as `infer_shapes()`), in the
        same walk: for a pass that changed channel counts, the one check it needs."""
        if infer_shapes:
            self._cache.clear()
        for name, n in self.nodes.items():
            if n.name != name:
                raise IRError(f"stored under the name {name!r} but named {n.name!r}", name)
            for i in n.inputs:
                if i not in self.nodes:
                    raise IRError(f"input {i!r} does not exist", name)
            if set(self.nx.predecessors(name)) != set(n.inputs):
                raise IRError(f"edges {sorted(self.nx.predecessors(name))} disagree with inputs {list(n.inputs)}", name)
        if set(self.nx.nodes) != set(self.nodes):
            extra = sorted(set(self.nx.nodes) ^ set(self.nodes))
            raise IRError(f"networkx nodes and IR nodes differ: {extra}", extra[0])
        if not self.inputs:
            raise IRError("graph has no input node")
        self.output  # exactly one
        order = self.order()  # raises on a cycle
        for name in order:
            n = self.nodes[name]
            for pname, t in n.params.items():
                if not isinstance(t, torch.Tensor):
                    raise IRError(f"parameter {pname!r} is a {type(t).__name__}, not a tensor", name)
                if not finite(t):
                    raise IRError(f"parameter {pname!r} holds NaN or inf", name)
            if infer_shapes and n.op != "input":
                n.spec = infer_spec(n, self.input_specs(n))  # checks parameter shapes against the inputs too
                for check in NODE_CHECKS:
                    check(self, n)
                continue
            if n.spec is None:
                raise IRError("node has no output spec", name)
            expected = infer_spec(n, self.input_specs(n))
            if expected != n.spec:
                raise IRError(f"stored output spec {list(n.spec.shape)} but op semantics give {list(expected.shape)}", name)
            for check in NODE_CHECKS:
                check(self, n)
        for n in self.nodes.values():
            if "weight_mask" in n.params and not ((n.params["weight_mask"] == 0) | (n.params["weight_mask"] == 1)).all():
                raise IRError("weight_mask must hold only 0 and 1", n.name)
        self._verified = True
        return self

    def verify_once(self) -> "Graph":
        """verify(), skipped when nothing changed through the Graph API since the last successful one."""
        return self if self._verified else self.verify()

    # -- figures ------------------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """params (learnable, as torch counts them), nonzero_params (after masks), macs, nodes, by op."""
        params = nonzero = macs = 0
        ops: dict[str, int] = {}
        seen: set[int] = set()  # a module called twice lifts to nodes holding the same tensors: count them once
        for n in self.nodes.values():
            ops[n.op] = ops.get(n.op, 0) + 1
            for pname in ("weight", "bias", "value"):
                t = n.params.get(pname)
                if t is None or id(t) in seen:
                    continue
                seen.add(id(t))
                params += t.numel()
                eff = t * n.params["weight_mask"] if pname == "weight" and "weight_mask" in n.params else t
                nonzero += int(torch.count_nonzero(eff))
            d = OPS[n.op]
            if d.macs is not None:
                macs += d.macs(n, self.input_specs(n))
        return {"params": params, "nonzero_params": nonzero, "macs": macs, "nodes": len(self.nodes), "ops": ops}

    def summary(self) -> str:
        lines = [repr(self.nodes[n]) for n in self.order()]
        s = self.stats()
        lines.append(f"# {s['nodes']} nodes, {s['params']:,} params, {s['macs']:,} MACs")
        return "\n".join(lines)

    def __repr__(self) -> str:
        s = self.stats()
        return f"<hwopt.Graph {s['nodes']} nodes, {s['params']:,} params, {s['macs']:,} MACs>"


def shared_nodes(graph: Graph) -> list[list[str]]:
    """Sets of (two or more) nodes that hold the very same parameter tensors: one module of the user's
    model called several times. They count once, lower to one module and must be pruned alike. (Cached
    per graph state: the channel analysis, removal and lowering all ask.)"""
    return graph.cached("shared_nodes", lambda: _shared_nodes(graph))


def _shared_nodes(graph: Graph) -> list[list[str]]:
    by_tensors: dict[tuple, list[str]] = {}
    for name in graph.order():
        n = graph.nodes[name]
        if n.params:
            by_tensors.setdefault((n.op, tuple(sorted((k, id(t)) for k, t in n.params.items()))), []).append(name)
    out = []
    for names in by_tensors.values():
        if len(names) > 1:
            # the same attributes too: `F.conv1d(x, self.conv.weight, stride=1)` beside a strided `self.conv`
            # reads the module's weight but is another layer
            by_attrs: dict[str, list[str]] = {}
            for name in names:
                by_attrs.setdefault(repr(sorted(graph.nodes[name].attrs.items())), []).append(name)
            out.extend(same for same in by_attrs.values() if len(same) > 1)
    return out


def node_macs(graph: Graph, node: Node) -> int:
    d = OPS[node.op]
    return d.macs(node, graph.input_specs(node)) if d.macs else 0
