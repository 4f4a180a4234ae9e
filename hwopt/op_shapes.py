"""The op table's shape rules (hwopt.ir.OPS): output shape, channel axis, parameter shapes and MACs.

A shape rule `(node, *input specs) -> shape` checks the node's attributes against its inputs and raises
IRError naming the node; an axis rule gives where the output's channel axis is; a parameter rule maps
attributes to the allowed parameters and their shapes; a MAC rule `(node, input specs) -> int`.
Imports nothing of hwopt but its errors and hwopt.op_channels (where a reshape takes the channel axis).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .errors import IRError
from .op_channels import reshape_axis

if TYPE_CHECKING:  # annotations only: hwopt.ir imports this module
    from .ir import Node, TensorSpec

Shape = tuple[int, ...]



def pair(v) -> tuple[int, int]:
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
    k, s, p = pair(a["kernel_size"]), pair(a["stride"]), pair(a["padding"])
    d = pair(a.get("dilation", 1)) if dilation else (1, 1)
    hw = tuple(_window_out(x.shape[2 + i], k[i], s[i], p[i], d[i], ceil) for i in range(2))
    if min(hw) < 1:
        raise IRError(f"{node.op} with kernel {k}, stride {s}, padding {p} leaves no output for input {x.shape}", node.name)
    return hw


def max_pool_shape(node, x) -> Shape:
    return (*x.shape[:2], *_spatial(node, x, True, node.attrs["ceil_mode"]))


def avg_pool_shape(node, x) -> Shape:
    return (*x.shape[:2], *_spatial(node, x, False, node.attrs["ceil_mode"]))


def conv_shape(node: Node, x: TensorSpec) -> Shape:
    a = node.attrs
    if len(x.shape) != 4 or x.shape[1] != a["in_channels"]:
        raise IRError(f"conv2d expects input [N, {a['in_channels']}, H, W], got {list(x.shape)}", node.name)
    return (x.shape[0], a["out_channels"], *_spatial(node, x))


def linear_shape(node: Node, x: TensorSpec) -> Shape:
    if len(x.shape) < 2 or x.shape[-1] != node.attrs["in_features"]:
        lead = "N, " if len(x.shape) <= 2 else "N, ..., "
        raise IRError(f"linear expects input [{lead}{node.attrs['in_features']}], got {list(x.shape)}", node.name)
    return (*x.shape[:-1], node.attrs["out_features"])


def bn_shape(node: Node, x: TensorSpec) -> Shape:
    if len(x.shape) not in (2, 3, 4) or x.shape[1] != node.attrs["num_features"]:
        raise IRError(f"batch_norm over {node.attrs['num_features']} features got input {list(x.shape)}", node.name)
    return x.shape


def broadcast(node: Node, *xs: TensorSpec) -> Shape:
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


def concat_shape(node: Node, *xs: TensorSpec) -> Shape:
    # a batch dim of 1 broadcasts (a class token: a parameter concatenated to every sample's tokens)
    d = node.attrs["dim"]
    first = (max(x.shape[0] for x in xs), *xs[0].shape[1:])
    for x in xs:
        if (len(x.shape) != len(first) or x.shape[0] not in (1, first[0])
                or any(a != b for i, (a, b) in enumerate(zip(x.shape, first)) if i not in (0, d))):
            raise IRError(f"concat along dim {d} of mismatched shapes {[list(x.shape) for x in xs]}", node.name)
    return tuple(sum(x.shape[d] for x in xs) if i == d else s for i, s in enumerate(first))


def slice_shape(node: Node, x: TensorSpec) -> Shape:
    d, start, end = node.attrs["dim"], node.attrs["start"], node.attrs["end"]
    step = node.attrs.get("step", 1)
    if not (0 < d < len(x.shape)) or not (0 <= start < end <= x.shape[d]) or step < 1:
        raise IRError(f"slice [{start}:{end}:{step}] along dim {d} out of range for input {list(x.shape)}", node.name)
    return tuple(len(range(start, end, step)) if i == d else s for i, s in enumerate(x.shape))


def shuffle_shape(node: Node, x: TensorSpec) -> Shape:
    if len(x.shape) != 4 or x.shape[1] % node.attrs["groups"]:
        raise IRError(f"channel_shuffle with {node.attrs['groups']} groups needs channels divisible by it, got {list(x.shape)}", node.name)
    return x.shape


def adaptive_shape(node: Node, x: TensorSpec) -> Shape:
    if len(x.shape) != 4:
        raise IRError(f"{node.op} needs a 4-D input, got {list(x.shape)}", node.name)
    return (x.shape[0], x.shape[1], *pair(node.attrs["output_size"]))


def flatten_shape(node: Node, x: TensorSpec) -> Shape:
    s, e = node.attrs["start_dim"], node.attrs["end_dim"] % len(x.shape)
    if not (1 <= s <= e):
        raise IRError(f"flatten dims {s}..{node.attrs['end_dim']} invalid for input {list(x.shape)} (the batch dim is kept)", node.name)
    return (*x.shape[:s], math.prod(x.shape[s:e + 1]), *x.shape[e + 1:])


def reshape_shape(node: Node, x: TensorSpec) -> Shape:
    target = tuple(node.attrs["shape"])
    if math.prod(target) != math.prod(x.shape[1:]):
        raise IRError(f"reshape of {list(x.shape)} to [N, {', '.join(map(str, target))}] changes the element count", node.name)
    return (x.shape[0], *target)


def mean_shape(node: Node, x: TensorSpec) -> Shape:
    dims = sorted(d % len(x.shape) for d in node.attrs["dims"])
    if 0 in dims:
        raise IRError(f"{node.op} over the batch dimension is not supported", node.name)
    if node.attrs["keepdim"]:
        return tuple(1 if i in dims else s for i, s in enumerate(x.shape))
    return tuple(s for i, s in enumerate(x.shape) if i not in dims)


def permute_shape(node: Node, x: TensorSpec) -> Shape:
    dims = tuple(node.attrs["dims"])
    if sorted(dims) != list(range(len(x.shape))) or dims[0] != 0:
        raise IRError(f"permute {list(dims)} must reorder all dims of input {list(x.shape)} and keep the batch first", node.name)
    return tuple(x.shape[d] for d in dims)


def matmul_shape(node: Node, a: TensorSpec, b: TensorSpec) -> Shape:
    if len(a.shape) < 2 or len(b.shape) < 2 or a.shape[-1] != b.shape[-2]:
        raise IRError(f"matmul of {list(a.shape)} and {list(b.shape)}: needs [..., M, K] @ [..., K, N]", node.name)
    try:
        batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except RuntimeError:
        raise IRError(f"matmul batch dims of {list(a.shape)} and {list(b.shape)} do not broadcast", node.name) from None
    return (*batch, a.shape[-2], b.shape[-1])


def matmul_axis(node: Node, a: TensorSpec, b: TensorSpec) -> int:
    # the channel axis carried to the output: a leading dim of a (heads), a's rows, a leading dim of b,
    # b's columns; a contracted axis leaves none (the output's last dim then, pinned by hwopt.channels)
    r, ra, rb = max(len(a.shape), len(b.shape)), len(a.shape), len(b.shape)
    if a.axis < ra - 1:
        return a.axis + r - ra
    if b.axis < rb - 2:
        return b.axis + r - rb
    return r - 1


def attention_shape(node: Node, q: TensorSpec, k: TensorSpec, v: TensorSpec, *mask: TensorSpec) -> Shape:
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


def attention_macs(node: Node, ins: list[TensorSpec]) -> int:
    q, k, v = ins[:3]
    scores = math.prod(q.shape[:-1]) * k.shape[-2]
    return scores * (q.shape[-1] + v.shape[-1])  # q kᵀ, then the weights times v


def cond_conv_shape(node: Node, x: TensorSpec, routing: TensorSpec) -> Shape:
    if routing.shape != (x.shape[0], node.attrs["experts"]):
        raise IRError(f"cond_conv2d over {node.attrs['experts']} experts needs routing weights [N, "
                      f"{node.attrs['experts']}], got {list(routing.shape)}", node.name)
    return conv_shape(node, x)


def cond_conv_params(a: dict) -> dict[str, Shape]:
    w = conv_params(a)["weight"]
    return {"weight": (a["experts"], *w), "bias": (a["experts"], a["out_channels"])}


def cond_conv_macs(node: Node, ins: list[TensorSpec]) -> int:
    # the conv, plus mixing the experts' kernels for every sample (routing @ weights)
    kernel = math.prod(cond_conv_params(node.attrs)["weight"])
    return conv_macs(node, ins) + ins[0].shape[0] * (kernel + node.attrs["experts"] * node.attrs["out_channels"])


def fold_batch_shape(node: Node, x: TensorSpec) -> Shape:
    if len(x.shape) < 3:
        raise IRError(f"fold_batch merges dim 1 into the batch and needs rank >= 3, got {list(x.shape)}", node.name)
    return (x.shape[0] * x.shape[1], *x.shape[2:])


def unfold_batch_shape(node: Node, x: TensorSpec) -> Shape:
    k = node.attrs["factor"]
    if k < 1 or x.shape[0] % k:
        raise IRError(f"unfold_batch by {k} of a batch dim of {x.shape[0]}", node.name)
    return (x.shape[0] // k, k, *x.shape[1:])


def expand_shape(node: Node, x: TensorSpec) -> Shape:
    target = (x.shape[0], *node.attrs["shape"])
    if len(target) != len(x.shape) or any(s != t and s != 1 for s, t in zip(x.shape[1:], target[1:])):
        raise IRError(f"expand of {list(x.shape)} to [N, {', '.join(map(str, node.attrs['shape']))}]: only "
                      f"singleton dims grow", node.name)
    return target


def layer_norm_shape(node: Node, x: TensorSpec) -> Shape:
    if len(x.shape) < 2 or x.shape[-1] != node.attrs["normalized_size"]:
        raise IRError(f"layer_norm over the last dim of size {node.attrs['normalized_size']} got input {list(x.shape)}", node.name)
    return x.shape


# Where the channel axis goes (rules as data, beside the shape rules): (node, *input specs) -> output axis.
def last_axis(node: Node, x: TensorSpec, *rest) -> int:
    return len(x.shape) - 1


def permute_axis(node: Node, x: TensorSpec) -> int:
    return list(node.attrs["dims"]).index(x.axis)


def flatten_axis(node: Node, x: TensorSpec) -> int:
    s, e = node.attrs["start_dim"], node.attrs["end_dim"] % len(x.shape)
    return x.axis if x.axis < s else s if x.axis <= e else x.axis - (e - s)


def reshape_node_axis(node: Node, x: TensorSpec) -> int:
    return reshape_axis(x.shape, (x.shape[0], *node.attrs["shape"]), x.axis)[0]


def mean_axis(node: Node, x: TensorSpec) -> int:
    dims = {d % len(x.shape) for d in node.attrs["dims"]}
    if node.attrs["keepdim"] or x.axis in dims:
        return min(x.axis, len(x.shape) - 1 - (0 if node.attrs["keepdim"] else len(dims)))
    return x.axis - sum(d < x.axis for d in dims)


def binary_axis(node: Node, *xs: TensorSpec) -> int:
    out_rank = max(len(x.shape) for x in xs)
    full = [x for x in xs if len(x.shape) == out_rank and x.shape[x.axis] != 1] or [x for x in xs if len(x.shape) == out_rank]
    return full[0].axis


def pad_shape(node: Node, x: TensorSpec) -> Shape:
    pads = node.attrs["pads"]  # torch order: last dim (left, right), then the one before, ...
    if len(pads) % 2 or len(pads) > 2 * (len(x.shape) - 2):
        raise IRError(f"pad {list(pads)} must pad spatial dims of input {list(x.shape)}", node.name)
    shape = list(x.shape)
    for i in range(len(pads) // 2):
        shape[-1 - i] += pads[2 * i] + pads[2 * i + 1]
        if shape[-1 - i] < 1:
            raise IRError(f"pad {list(pads)} leaves no output for input {list(x.shape)}", node.name)
    return tuple(shape)


def group_norm_shape(node: Node, x: TensorSpec) -> Shape:
    a = node.attrs
    if len(x.shape) < 2 or x.shape[1] != a["num_channels"] or a["num_channels"] % a["num_groups"]:
        raise IRError(f"group_norm of {a['num_channels']} channels in {a['num_groups']} groups got input {list(x.shape)}",
                      node.name)
    return x.shape


def const_shape(node: Node) -> Shape:
    return tuple(node.attrs["shape"])


def conv_params(a: dict) -> dict[str, Shape]:
    w = (a["out_channels"], a["in_channels"] // a["groups"], *pair(a["kernel_size"]))
    return {"weight": w, "bias": (a["out_channels"],), "weight_mask": w}


def linear_params(a: dict) -> dict[str, Shape]:
    w = (a["out_features"], a["in_features"])
    return {"weight": w, "bias": (a["out_features"],), "weight_mask": w}


def bn_params(a: dict) -> dict[str, Shape]:
    return {k: (a["num_features"],) for k in ("weight", "bias", "running_mean", "running_var")}


def conv_macs(node: Node, ins: list[TensorSpec]) -> int:
    a = node.attrs
    kh, kw = pair(a["kernel_size"])
    return node.spec.numel * (a["in_channels"] // a["groups"]) * kh * kw


# Conv1d, transposed conv, upsampling, vector norm (keyword spotting on MFCC, U-Net decoders, ConvNeXt-V2's GRN).
def _window_out_1d(node: Node, size: int) -> int:
    a = node.attrs
    out = (size + 2 * a["padding"] - a["dilation"] * (a["kernel_size"] - 1) - 1) // a["stride"] + 1
    if out < 1:
        raise IRError(f"conv1d with kernel {a['kernel_size']}, stride {a['stride']}, padding {a['padding']} leaves no "
                      f"output for length {size}", node.name)
    return out


def conv1d_shape(node: Node, x: TensorSpec) -> Shape:
    a = node.attrs
    if len(x.shape) != 3 or x.shape[1] != a["in_channels"]:
        raise IRError(f"conv1d expects input [N, {a['in_channels']}, L], got {list(x.shape)}", node.name)
    return (x.shape[0], a["out_channels"], _window_out_1d(node, x.shape[2]))


def conv1d_params(a: dict) -> dict[str, Shape]:
    return {"weight": (a["out_channels"], a["in_channels"] // a["groups"], a["kernel_size"]), "bias": (a["out_channels"],)}


def conv_transpose_shape(node: Node, x: TensorSpec) -> Shape:
    a = node.attrs
    if len(x.shape) != 4 or x.shape[1] != a["in_channels"]:
        raise IRError(f"conv_transpose2d expects input [N, {a['in_channels']}, H, W], got {list(x.shape)}", node.name)
    k, s, p, op, d = (pair(a[key]) for key in ("kernel_size", "stride", "padding", "output_padding", "dilation"))
    hw = tuple((x.shape[2 + i] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + op[i] + 1 for i in range(2))
    if min(hw) < 1 or any(op[i] >= max(s[i], d[i]) for i in range(2)):
        raise IRError(f"conv_transpose2d with kernel {k}, stride {s}, padding {p}, output_padding {op} is invalid for "
                      f"input {list(x.shape)}", node.name)
    return (x.shape[0], a["out_channels"], *hw)


def conv_transpose_params(a: dict) -> dict[str, Shape]:
    # torch's layout: [in, out / groups, kh, kw]
    return {"weight": (a["in_channels"], a["out_channels"] // a["groups"], *pair(a["kernel_size"])),
            "bias": (a["out_channels"],)}


def conv_transpose_macs(node: Node, ins: list[TensorSpec]) -> int:
    # every input element is scattered into (out / groups) · kh · kw outputs
    a = node.attrs
    kh, kw = pair(a["kernel_size"])
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


def interpolate_shape(node: Node, x: TensorSpec) -> Shape:
    a = node.attrs
    if len(x.shape) != 4:
        raise IRError(f"interpolate needs a 4-D NCHW input, got {list(x.shape)}", node.name)
    if a["mode"] not in INTERPOLATE_MODES:
        raise IRError(f"interpolate mode {a['mode']!r} is not one of {list(INTERPOLATE_MODES)}", node.name)
    size = pair(a["size"])
    if a.get("scale_factor") is not None:  # torch: floor(in · scale), and the scale maps the sample positions
        want = tuple(math.floor(x.shape[2 + i] * float(a["scale_factor"][i])) for i in range(2))
        if want != size:
            raise IRError(f"interpolate size {list(size)} disagrees with scale_factor {a['scale_factor']} on input "
                          f"{list(x.shape)}", node.name)
    if min(size) < 1:
        raise IRError(f"interpolate to size {list(size)} leaves no output", node.name)
    return (*x.shape[:2], *size)


def interpolate_macs(node: Node, ins: list[TensorSpec]) -> int:
    return 0  # no multiply-accumulate with weights; its work (taps per output) is in targets/cost.py
