"""hwopt's graph IR: a DAG of named nodes over a closed op set.

A `Node` holds its op, attributes, parameters (torch tensors) and the spec of its output. The ordered
inputs of each node are the truth; a networkx DiGraph mirrors them so graph algorithms (topological
order, reachability, dominators) come from networkx. The op set is data: `OPS` maps each op to its
`OpDef`: arity, attribute names, parameter, shape, axis and MAC rules, its channel-coupling and removal
rules (hwopt.op_channels), its torch lowering (hwopt.op_lowering), its cost kind and what each feature
(int8, firmware, dead-unit folding) can do with it. Tensors held by a graph are never
modified in place: passes copy the graph (`Graph.copy()` is shallow in tensors) and replace tensors.
This module imports nothing else of hwopt but its errors and the rule modules the table references
(hwopt.op_shapes, hwopt.op_channels, hwopt.op_lowering, hwopt.tensors), which import nothing else of hwopt
but the errors and hwopt.nn.
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
from . import op_shapes as shapes
from .op_shapes import INTERPOLATE_MODES, conv_weight_oi  # noqa: F401 - re-exported
from .op_shapes import pair as _pair  # noqa: F401 - re-exported (the front end, quant and cost use it)
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
# The op set, as data: shape, axis, parameter and MAC rules are in hwopt.op_shapes.


@dataclass(frozen=True)
class OpDef:
    """Everything hwopt knows about one op. Rules are functions referenced here and defined beside their
    kind: shape / MAC / axis rules in hwopt.op_shapes, channel rules in hwopt.op_channels, lowerings in
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
    grow: Callable[..., None] | None = None  # growth rule (n, attrs, params, src_in, src_out, ctx); None: unchanged
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
    return OpDef((1, 2), ("scalar", "reverse"), shape=shapes.broadcast, channel_preserving=True, axis=shapes.binary_axis, doc=doc,
                 couple=channel.elementwise, lower=lowering.binary(fn), cost="elementwise", work=work, **flags)


_CONV_ATTRS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups")
_POOL_ATTRS = ("kernel_size", "stride", "padding", "ceil_mode")
_NCHW_SAME = channel.nchw(channel.same)

OPS: dict[str, OpDef] = {
    "input": OpDef((0, 0), doc="a graph input (its spec is the example input's)", couple=channel.pin_output,
                   lower=lowering.input_, cost="view"),
    "output": OpDef((1, None), doc="the graph's result(s)", nchw=True, couple=channel.pin_all, lower=lowering.output,
                    cost="view"),
    "conv2d": OpDef((1, 1), _CONV_ATTRS, shapes.conv_shape, shapes.conv_params, ("weight",), shapes.conv_macs,
                    doc="2-D convolution (grouped, depthwise, dilated); optional weight_mask", nchw=True,
                    couple=channel.nchw(channel.conv_groups), resize=channel.resize_conv, grow=channel.grow_weighted, lower=lowering.conv2d,
                    cost="conv", int8="kernel", firmware="anchor"),
    "conv1d": OpDef((1, 1), _CONV_ATTRS, shapes.conv1d_shape, shapes.conv1d_params, ("weight",),
                    lambda n, ins: n.spec.numel * (n.attrs["in_channels"] // n.attrs["groups"]) * n.attrs["kernel_size"],
                    doc="1-D convolution over [N, C, L] (grouped, depthwise, dilated)", nchw=True,
                    couple=channel.nchw(channel.conv_groups), resize=channel.resize_conv, grow=channel.grow_weighted, lower=lowering.conv1d,
                    cost="conv"),
    "conv_transpose2d": OpDef((1, 1), _CONV_ATTRS[:5] + ("output_padding",) + _CONV_ATTRS[5:], shapes.conv_transpose_shape,
                              shapes.conv_transpose_params, ("weight",), shapes.conv_transpose_macs,
                              doc="2-D transposed convolution (weight [in, out/groups, kh, kw]; output_padding, groups)",
                              nchw=True, couple=channel.nchw(channel.conv_groups), resize=channel.resize_conv_transpose, grow=channel.grow_refused,
                              lower=lowering.conv_transpose2d, cost="conv"),
    # upsampling to `size`; `scale_factor` (None or per-dim) is kept because torch maps sample positions with it
    "interpolate": OpDef((1, 1), ("size", "scale_factor", "mode", "align_corners"), shapes.interpolate_shape,
                         channel_preserving=True, nchw=True, couple=_NCHW_SAME, lower=lowering.interpolate,
                         doc="upsample / resize NCHW to `size`: nearest, nearest-exact, bilinear (align_corners)",
                         cost="resample"),
    # p-norm over `dims` (torch.linalg.vector_norm; ConvNeXt-V2's GRN takes it over the spatial dims)
    "vector_norm": OpDef((1, 1), ("ord", "dims", "keepdim"), shapes.mean_shape, axis=shapes.mean_axis,
                         doc="p-norm over `dims` (Tensor.norm, torch.linalg.vector_norm)", couple=channel.over_dims,
                         lower=lowering.vector_norm, cost="reduce", work=2),
    "linear": OpDef((1, 1), ("in_features", "out_features"), shapes.linear_shape, shapes.linear_params, ("weight",),
                    lambda n, ins: n.spec.numel * n.attrs["in_features"], axis=shapes.last_axis,
                    doc="x @ Wᵀ + b over the last dim (any rank)", couple=channel.linear, resize=channel.resize_linear, grow=channel.grow_weighted,
                    lower=lowering.linear, cost="dense", int8="kernel", firmware="anchor"),
    "batch_norm": OpDef((1, 1), ("num_features", "eps", "momentum"), shapes.bn_shape, shapes.bn_params,
                        ("running_mean", "running_var"), channel_preserving=True, nchw=True,
                        doc="inference batch norm with running statistics", couple=_NCHW_SAME,
                        resize=channel.resize_batch_norm, grow=channel.grow_batch_norm, lower=lowering.batch_norm, cost="elementwise", work=2,
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
    "sub": _binary("x - y (scalar, reversed)", operator.sub, 1, int8="kernel", firmware="fused"),
    "mul": _binary("x · y, or x · scalar", operator.mul, 1, int8="kernel", firmware="fused"),
    "div": _binary("x / y (scalar, reversed)", operator.truediv, 4, firmware="fused"),
    "concat": OpDef((1, None), ("dim",), shapes.concat_shape, doc="concatenate along `dim`", couple=channel.concat,
                    lower=lowering.concat, cost="data", int8="kernel", firmware="kernel"),
    "slice": OpDef((1, 1), ("dim", "start", "end"), shapes.slice_shape, doc="x[start:end] along `dim`", couple=channel.slice_,
                   resize=channel.resize_slice, grow=channel.grow_slice, lower=lowering.slice_, cost="data", int8="kernel",
                   firmware="kernel"),
    "channel_shuffle": OpDef((1, 1), ("groups",), shapes.shuffle_shape, doc="ShuffleNet channel shuffle", nchw=True,
                             couple=channel.channel_shuffle,
                             lower=lowering.module(lambda n: nn.ChannelShuffle(n.attrs["groups"])), cost="data",
                             int8="kernel", firmware="kernel"),
    "max_pool2d": OpDef((1, 1), _POOL_ATTRS + ("dilation",),
                        shapes.max_pool_shape, channel_preserving=True,
                        doc="2-D max pooling", nchw=True, couple=_NCHW_SAME,
                        lower=lowering.module(lambda n: nn.MaxPool2d(n.attrs["kernel_size"], n.attrs["stride"],
                                                                     n.attrs["padding"], n.attrs["dilation"],
                                                                     ceil_mode=n.attrs["ceil_mode"])),
                        cost="pool", int8="kernel", firmware="kernel", constant=_same_constant),
    "avg_pool2d": OpDef((1, 1), _POOL_ATTRS + ("count_include_pad",),
                        shapes.avg_pool_shape, channel_preserving=True,
                        doc="2-D average pooling", nchw=True, couple=_NCHW_SAME,
                        lower=lowering.module(lambda n: nn.AvgPool2d(n.attrs["kernel_size"], n.attrs["stride"],
                                                                     n.attrs["padding"], n.attrs["ceil_mode"],
                                                                     n.attrs["count_include_pad"])),
                        cost="pool", int8="kernel", firmware="kernel", constant=_avg_pool_constant),
    "adaptive_avg_pool2d": OpDef((1, 1), ("output_size",), shapes.adaptive_shape, channel_preserving=True,
                                 doc="adaptive average pooling", nchw=True, couple=_NCHW_SAME,
                                 lower=lowering.module(lambda n: nn.AdaptiveAvgPool2d(n.attrs["output_size"])),
                                 cost="pool", int8="kernel", firmware="kernel", constant=_same_constant),
    "adaptive_max_pool2d": OpDef((1, 1), ("output_size",), shapes.adaptive_shape, channel_preserving=True,
                                 doc="adaptive max pooling", nchw=True, couple=_NCHW_SAME,
                                 lower=lowering.module(lambda n: nn.AdaptiveMaxPool2d(n.attrs["output_size"])),
                                 cost="pool", constant=_same_constant),
    "pad": OpDef((1, 1), ("pads", "value"), shapes.pad_shape, channel_preserving=True,
                 doc="constant padding of spatial dims (TF 'same')", lower=lowering.pad, cost="data", int8="kernel",
                 firmware="kernel"),
    "leaky_relu": OpDef((1, 1), ("negative_slope",), channel_preserving=True, doc="max(x, 0) + slope · min(x, 0)",
                        lower=lowering.module(lambda n: nn.LeakyReLU(n.attrs["negative_slope"])), cost="elementwise",
                        work=2, int8="lut", firmware="fused",
                        constant=lambda a, v: F.leaky_relu(v, a["negative_slope"])),
    "group_norm": OpDef((1, 1), ("num_groups", "num_channels", "eps"), shapes.group_norm_shape,
                        lambda a: {"weight": (a["num_channels"],), "bias": (a["num_channels"],)},
                        doc="group norm with per-channel scale and shift", couple=channel.group_norm,
                        resize=channel.resize_group_norm, grow=channel.grow_group_norm, lower=lowering.group_norm, cost="elementwise", work=6),
    # a tensor that does not depend on the input (a layer-scale vector): learnable, batch dim 1
    "const": OpDef((0, 0), ("shape",), shapes.const_shape, lambda a: {"value": tuple(a["shape"])}, ("value",),
                   axis=lambda n: n.attrs.get("axis", 1),
                   doc="a learnable tensor that does not depend on the input (layer scale)", couple=channel.untied,
                   resize=channel.resize_const, grow=channel.grow_const, lower=lowering.const, cost="view"),
    "flatten": OpDef((1, 1), ("start_dim", "end_dim"), shapes.flatten_shape, axis=shapes.flatten_axis, doc="merge dims start..end",
                     couple=channel.reshape,
                     lower=lowering.module(lambda n: nn.Flatten(n.attrs["start_dim"], n.attrs["end_dim"])),
                     cost="view", int8="view", firmware="view", constant=_same_constant),
    "reshape": OpDef((1, 1), ("shape",), shapes.reshape_shape, axis=shapes.reshape_node_axis, doc="reshape keeping the batch dim",
                     couple=channel.reshape, resize=channel.resize_shape_attr, grow=channel.grow_shape_attr, lower=lowering.reshape, cost="view",
                     int8="view", firmware="view"),
    "mean": OpDef((1, 1), ("dims", "keepdim"), shapes.mean_shape, axis=shapes.mean_axis, doc="mean over `dims` (not the batch)",
                  couple=channel.over_dims, lower=lowering.mean, cost="pool", int8="kernel", firmware="kernel"),
    "permute": OpDef((1, 1), ("dims",), shapes.permute_shape, axis=shapes.permute_axis,
                     doc="reorder dims, batch first (channels-last blocks)", couple=channel.same,
                     lower=lowering.permute, cost="data"),
    # LayerNorm over the last dim (channels-last blocks, tokens); over the channels it couples them like
    # batch norm (weight and bias per channel)
    "layer_norm": OpDef((1, 1), ("normalized_size", "eps"), shapes.layer_norm_shape,
                        lambda a: {"weight": (a["normalized_size"],), "bias": (a["normalized_size"],)},
                        doc="layer norm over the last dim", couple=channel.last_dim_norm,
                        resize=channel.resize_layer_norm, grow=channel.grow_layer_norm, lower=lowering.layer_norm, cost="elementwise", work=6),
    # tokens and attention: batched matrix products, scaled dot-product attention (its scale is stored,
    # so pruning head dims does not change it), sums, L2 normalisation, broadcasting singleton dims
    "matmul": OpDef((2, 2), (), shapes.matmul_shape, macs=lambda n, ins: n.spec.numel * ins[0].shape[-1], axis=shapes.matmul_axis,
                    doc="batched matrix product [..., M, K] @ [..., K, N] (leading dims broadcast)",
                    couple=channel.heads, lower=lowering.matmul, cost="matmul"),
    "attention": OpDef((3, 4), ("scale", "causal"), shapes.attention_shape, macs=shapes.attention_macs,
                       axis=lambda n, q, *rest: q.axis if q.axis < len(q.shape) - 1 else len(q.shape) - 1,
                       doc="softmax(q kᵀ · scale [+ mask]) v over the last two dims (scaled_dot_product_attention, heads)",
                       couple=channel.heads, lower=lowering.attention, cost="matmul"),
    "sum": OpDef((1, 1), ("dims", "keepdim"), shapes.mean_shape, axis=shapes.mean_axis, doc="sum over `dims` (not the batch)",
                 couple=channel.over_dims, lower=lowering.sum_, cost="reduce", work=1),
    "normalize": OpDef((1, 1), ("dim", "eps"), doc="x / max(‖x‖₂, eps) along `dim` (F.normalize)",
                       couple=channel.along_dim, lower=lowering.normalize, cost="reduce", work=4),
    "expand": OpDef((1, 1), ("shape",), shapes.expand_shape, doc="broadcast singleton dims to `shape` (the batch dim kept)",
                    couple=channel.expand, resize=channel.resize_shape_attr, grow=channel.grow_shape_attr, lower=lowering.expand, cost="data"),
    # a dim folded into the batch and back (MobileViT runs its transformer on [B * patch_area, patches, C]):
    # every op treats dim 0 as the batch, so a folded tensor's ops act per (sample, folded index)
    "fold_batch": OpDef((1, 1), (), shapes.fold_batch_shape, axis=lambda n, x: max(1, x.axis - 1),
                        doc="merge dim 1 into the batch dim: [N, K, ...] -> [N·K, ...]", couple=channel.fold_batch,
                        lower=lowering.fold_batch, cost="view"),
    "unfold_batch": OpDef((1, 1), ("factor",), shapes.unfold_batch_shape, axis=lambda n, x: x.axis + 1,
                          doc="split `factor` out of the batch dim: [N·factor, ...] -> [N, factor, ...]",
                          couple=channel.same, lower=lowering.unfold_batch, cost="view"),
    # CondConv (Yang et al. 2019): a conv whose kernel is each sample's mix of expert kernels, weighted by
    # its routing input [N, experts]; not pruned (exactness first)
    "cond_conv2d": OpDef((2, 2), _CONV_ATTRS + ("experts",), shapes.cond_conv_shape, shapes.cond_conv_params, ("weight",),
                         shapes.cond_conv_macs, nchw=True, couple=channel.pin_all, lower=lowering.cond_conv2d, cost="conv",
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
        self._order: list[str] | None = []
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
        order = self._order
        self.changed()
        if order is not None:
            # a new node comes after its inputs and last in insertion order: the order stays the sorted one,
            # extended (a new list: callers may be iterating the one order() gave them)
            self._order = order + [name]
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
