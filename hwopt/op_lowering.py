"""The op table's torch lowerings (hwopt.ir.OPS[op].lower), used by hwopt.lower.

A lowering rule `lower(node, e)` returns either an nn.Module (hwopt.lower calls it with the node's
inputs, at the node's name as its module path, shared by nodes holding the same tensors), or the value
it emitted itself into `e.out` (a hwopt.lowered.Program, which has fx.Graph's emitting methods) from `e.ins`
(the values of the node's inputs). `e.graph`
is the IR graph and `e.bake_masks` says whether masks are multiplied into plain layers.
`module(...)`, `call(...)` and `method(...)` build the common rules.

Parametric layers are assembled without running their constructors' initialisation (see `_assemble`):
lowering is on the critical path of every pass that trains or measures a graph.
Imports nothing of hwopt but its errors, hwopt.nn (the masked layers) and hwopt.tensors.
"""
from __future__ import annotations

import operator
import re

import torch
from torch import nn
from torch.nn import functional as F

from . import nn as hnn
from .errors import IRError
from .tensors import snapshot


def _set(m: nn.Module, **tensors) -> nn.Module:
    with torch.no_grad():
        for k, t in tensors.items():
            if t is None:
                continue
            cur = getattr(m, k)
            if isinstance(cur, nn.Parameter):
                setattr(m, k, nn.Parameter(snapshot(t), requires_grad=cur.requires_grad))
            else:
                setattr(m, k, snapshot(t))
    return m


_NO_INIT: dict[type, type] = {}


def _empty(cls, *args, **kwargs) -> nn.Module:
    """`cls(*args)` with no parameter initialisation: every tensor is overwritten by _set. (Meta-device
    construction still runs reset_parameters, through slow decompositions.)"""
    sub = _NO_INIT.get(cls)
    if sub is None:
        sub = _NO_INIT[cls] = type(cls.__name__, (cls,), {"reset_parameters": lambda self: None,
                                                          "reset_running_stats": lambda self: None})
    m = sub(*args, **kwargs, device="meta")
    m.__class__ = cls  # same layout; the module is an ordinary cls from here on
    return m


# Constructing a layer through nn.Module.__init__ and __setattr__ costs ~0.3 ms, more than all the rest of
# lowering it (MobileNetV2 has 100+ layers). So a layer is assembled directly: its plain attributes (the
# ones its constructor derives from the arguments, written out below) and its tensors go into a fresh
# instance whose bookkeeping containers copy the layout of a real one. The first layer of each class is
# built the slow way and the assembled layout is checked against it; a torch whose constructor sets
# anything else (another version) keeps the slow path for that class.
_LAYOUT: dict[type, tuple[dict, tuple] | None] = {}
_MISSING = object()


def _split_layout(d: dict) -> tuple[dict, tuple]:
    """(plain values, (key, container type) pairs) of a module's __dict__: a copy of the module gets the
    plain values as they are and a fresh empty container for each of the others."""
    return ({k: v for k, v in d.items() if not isinstance(v, (dict, set))},
            tuple((k, type(v)) for k, v in d.items() if isinstance(v, (dict, set))))


def _fresh(cls: type, layout: tuple[dict, tuple]) -> nn.Module:
    plain, containers = layout
    m = cls.__new__(cls)
    d = m.__dict__
    d.update(plain)
    for k, t in containers:
        d[k] = t()
    return m


def _assemble(cls: type, attrs: dict, params: dict, buffers: dict, slow) -> nn.Module:
    layout = _LAYOUT.get(cls, _MISSING)
    if layout is _MISSING:
        real = slow()
        own = {k: v for k, v in real.__dict__.items() if k not in attrs}
        same = (set(real.__dict__) - set(own) == set(attrs) and all(real.__dict__[k] == v for k, v in attrs.items())
                and set(real._parameters) == set(params) and set(real._buffers) == set(buffers)
                and not real._modules and set(own) == set(nn.Module().__dict__))
        _LAYOUT[cls] = _split_layout(own) if same else None
        return real
    if layout is None:
        return slow()
    m = _fresh(cls, layout)
    m.__dict__.update(attrs)
    # snapshot() detaches, so no autograd state needs switching off here
    m._parameters.update((k, None if t is None else nn.Parameter(snapshot(t))) for k, t in params.items())
    m._buffers.update((k, snapshot(t)) for k, t in buffers.items())
    return m


_IMMUTABLE = (int, float, bool, str, type(None))


def _immutable(v) -> bool:
    return isinstance(v, _IMMUTABLE) or (type(v) is tuple and all(_immutable(x) for x in v))


def _copyable(m: nn.Module) -> bool:
    """A module without tensors or children whose every other attribute is an immutable value: a copy of its
    __dict__ (fresh containers) is as good as constructing another."""
    return (not m._parameters and not m._buffers and not m._modules
            and all(isinstance(v, (dict, set)) or _immutable(v) for v in m.__dict__.values()))


_TEMPLATES: dict[tuple, tuple[type, tuple] | None] = {}


def stateless(key: tuple, build) -> nn.Module:
    """`build()`, or a copy of the module it returned for the same `key` when that one holds no tensors:
    nn.Module.__init__ costs ~20 us, and a model has ~100 activations, pools and containers."""
    hit = _TEMPLATES.get(key, _MISSING)
    if hit is _MISSING:
        m = build()
        _TEMPLATES[key] = (type(m), _split_layout(m.__dict__)) if _copyable(m) else None
        return m
    if hit is None:
        return build()
    return _fresh(*hit)


def _weighted_layer(n, bake: bool, masked_cls: type, plain_cls: type):
    """(class, weight, params, buffers, the slow path's keyword arguments) of a conv or linear layer:
    a mask stays a buffer of the masked class, or is multiplied into the weight when baking."""
    p = n.params
    masked = "weight_mask" in p and not bake
    w = p["weight"] * p["weight_mask"] if bake and "weight_mask" in p else p["weight"]
    params = {"weight": w, "bias": p.get("bias")}  # torch registers an absent bias as None
    buffers = {"weight_mask": p["weight_mask"]} if masked else {}
    slow_kw = dict(weight=w, bias=p.get("bias"), weight_mask=p["weight_mask"] if masked else None)
    return (masked_cls if masked else plain_cls), params, buffers, slow_kw


def _conv_module(n, bake: bool) -> nn.Module:
    a, has_bias = n.attrs, "bias" in n.params
    cls, params, buffers, slow_kw = _weighted_layer(n, bake, hnn.MaskedConv2d, nn.Conv2d)
    attrs = dict(in_channels=a["in_channels"], out_channels=a["out_channels"], kernel_size=a["kernel_size"],
                 stride=a["stride"], padding=a["padding"], dilation=a["dilation"], transposed=False,
                 output_padding=(0, 0), groups=a["groups"], padding_mode="zeros",
                 _reversed_padding_repeated_twice=tuple(x for q in reversed(a["padding"]) for x in (q, q)))
    slow = lambda: _set(_empty(cls, a["in_channels"], a["out_channels"], a["kernel_size"], a["stride"],  # noqa: E731
                               a["padding"], a["dilation"], a["groups"], bias=has_bias), **slow_kw)
    return _assemble(cls, attrs, params, buffers, slow)


def _linear_module(n, bake: bool) -> nn.Module:
    a, has_bias = n.attrs, "bias" in n.params
    cls, params, buffers, slow_kw = _weighted_layer(n, bake, hnn.MaskedLinear, nn.Linear)
    slow = lambda: _set(_empty(cls, a["in_features"], a["out_features"], bias=has_bias), **slow_kw)  # noqa: E731
    return _assemble(cls, dict(in_features=a["in_features"], out_features=a["out_features"]), params, buffers, slow)


def _bn_module(n, rank: int) -> nn.Module:
    a, p = n.attrs, n.params
    cls = nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d
    affine = "weight" in p
    params = {"weight": p.get("weight"), "bias": p.get("bias")}
    buffers = {"running_mean": p["running_mean"], "running_var": p["running_var"],
               "num_batches_tracked": torch.zeros((), dtype=torch.long)}
    attrs = dict(num_features=a["num_features"], eps=a["eps"], momentum=a["momentum"], affine=affine,
                 track_running_stats=True)
    slow = lambda: _set(_empty(cls, a["num_features"], eps=a["eps"], momentum=a["momentum"], affine=affine),  # noqa: E731
                        **{k: p.get(k) for k in ("weight", "bias", "running_mean", "running_var")},
                        num_batches_tracked=torch.zeros((), dtype=torch.long))
    return _assemble(cls, attrs, params, buffers, slow)


class Constant(nn.Module):
    """A learnable tensor that does not depend on the input (a layer-scale vector): the `const` op."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = nn.Parameter(snapshot(value))

    def forward(self) -> torch.Tensor:
        return self.value


class CondConv2d(nn.Module):
    """The `cond_conv2d` op: each sample convolved with its own kernel, Σₑ routing[n, e] · weight[e]
    (computed for the whole batch as one grouped conv, as timm does)."""

    def __init__(self, n):
        super().__init__()
        a = n.attrs
        self.stride, self.padding, self.dilation, self.groups = a["stride"], a["padding"], a["dilation"], a["groups"]
        self.weight = nn.Parameter(snapshot(n.params["weight"]))
        self.bias = nn.Parameter(snapshot(n.params["bias"])) if "bias" in n.params else None

    def forward(self, x: torch.Tensor, routing: torch.Tensor) -> torch.Tensor:
        b, experts = routing.shape
        out = self.weight.shape[1]
        weight = (routing @ self.weight.reshape(experts, -1)).reshape(b * out, *self.weight.shape[2:])
        bias = (routing @ self.bias).reshape(-1) if self.bias is not None else None
        y = torch.nn.functional.conv2d(x.reshape(1, -1, *x.shape[2:]), weight, bias, self.stride, self.padding,
                                       self.dilation, self.groups * b)
        return y.reshape(b, out, *y.shape[2:])


def _layer_norm_module(n) -> nn.Module:
    a, p = n.attrs, n.params
    m = nn.LayerNorm(a["normalized_size"], eps=a["eps"], elementwise_affine="weight" in p, bias="bias" in p)
    return _set(m, weight=p.get("weight"), bias=p.get("bias"))


def _group_norm_module(n) -> nn.Module:
    a, p = n.attrs, n.params
    m = nn.GroupNorm(a["num_groups"], a["num_channels"], eps=a["eps"], affine="weight" in p)
    return _set(m, weight=p.get("weight"), bias=p.get("bias"))


def _conv1d_module(n) -> nn.Module:
    a, p = n.attrs, n.params
    m = _empty(nn.Conv1d, a["in_channels"], a["out_channels"], a["kernel_size"], a["stride"], a["padding"], a["dilation"],
               a["groups"], bias="bias" in p)
    return _set(m, weight=p["weight"], bias=p.get("bias"))


def _conv_transpose2d_module(n) -> nn.Module:
    a, p = n.attrs, n.params
    m = _empty(nn.ConvTranspose2d, a["in_channels"], a["out_channels"], a["kernel_size"], a["stride"], a["padding"],
               a["output_padding"], a["groups"], "bias" in p, a["dilation"])
    return _set(m, weight=p["weight"], bias=p.get("bias"))


def _upsample_module(n) -> nn.Module:
    a = n.attrs  # a scale factor lowers as one: torch maps sample positions by it, not by the sizes
    size = None if a["scale_factor"] is not None else tuple(a["size"])
    scale = tuple(a["scale_factor"]) if a["scale_factor"] is not None else None
    return nn.Upsample(size=size, scale_factor=scale, mode=a["mode"], align_corners=a["align_corners"])


# ---------------------------------------------------------------------------------------------------
# Rule builders. Each rule carries `kind`, how it lowers, for the generated op list (docs/ops.md).


def _kind(kind: str):
    def mark(rule):
        rule.kind = kind
        return rule
    return mark


def module(build):
    """A rule lowering a node to the module `build(node)` (called with the node's inputs). A module without
    tensors may be copied from the one `build` made for another node of the same op and attributes, so
    such a module must depend on nothing but them."""
    def lower(n, e):
        try:
            key = (n.op, build, tuple(n.attrs.items()))
            hash(key)
        except TypeError:  # a list-valued attribute: built each time
            return build(n)
        return stateless(key, lambda: build(n))
    return _kind("module")(lower)


def call(fn, *attrs: str, **kwattrs: str):
    """A rule emitting `fn(input..., attrs[0], ..., key=attrs[key]...)`; list attributes pass as tuples."""
    def lower(n, e):
        a = n.attrs
        val = lambda k: tuple(a[k]) if isinstance(a[k], list) else a[k]  # noqa: E731
        return e.out.call_function(fn, (*e.ins, *(val(k) for k in attrs)), {k: val(v) for k, v in kwattrs.items()})
    return _kind("torch call")(lower)


def binary(fn):
    """x ∘ y, or x ∘ scalar (scalar ∘ x when `reverse`)."""
    def lower(n, e):
        a = n.attrs
        if a.get("scalar") is None:
            args = tuple(e.ins)
        else:
            args = (a["scalar"], e.ins[0]) if a.get("reverse") else (e.ins[0], a["scalar"])
        return e.out.call_function(fn, args)
    return _kind("operator")(lower)


# ---------------------------------------------------------------------------------------------------
# Rules


@_kind("placeholder")
def input_(n, e):
    return e.out.placeholder(re.sub(r"\W", "_", n.name))


@_kind("output")
def output(n, e):
    e.out.output(e.ins[0] if len(e.ins) == 1 else tuple(e.ins))


conv2d = _kind("module (weights kept)")(lambda n, e: _conv_module(n, e.bake_masks))
linear = _kind("module (weights kept)")(lambda n, e: _linear_module(n, e.bake_masks))
batch_norm = _kind("module (weights kept)")(lambda n, e: _bn_module(n, len(n.spec.shape)))
conv1d = module(lambda n: _conv1d_module(n))
conv_transpose2d = module(lambda n: _conv_transpose2d_module(n))
interpolate = module(lambda n: _upsample_module(n))
layer_norm = module(lambda n: _layer_norm_module(n))
group_norm = module(lambda n: _group_norm_module(n))
cond_conv2d = module(lambda n: CondConv2d(n))
const = module(lambda n: Constant(n.params["value"]))
add, sub, mul, div = (binary(f) for f in (operator.add, operator.sub, operator.mul, operator.truediv))
matmul = call(torch.matmul)
mean = call(torch.mean, "dims", keepdim="keepdim")
sum_ = call(torch.sum, "dims", keepdim="keepdim")
vector_norm = call(torch.linalg.vector_norm, "ord", "dims", "keepdim")
normalize = call(F.normalize, dim="dim", eps="eps")
pad = call(F.pad, "pads", value="value")


@_kind("torch call")
def concat(n, e):
    ins = e.ins
    consts = [e.graph[i].op == "const" and e.graph[i].spec.shape[0] == 1 for i in n.inputs]
    if any(consts) and not all(consts):  # a class token: one copy for every sample of the batch
        batch = e.out.call_method("size", (ins[consts.index(False)], 0))
        rest = (-1,) * (len(n.spec.shape) - 1)
        ins = [e.out.call_method("expand", (x, batch, *rest)) if k else x for x, k in zip(ins, consts)]
    return e.out.call_function(torch.cat, (tuple(ins),), {"dim": n.attrs["dim"]})


@_kind("torch call")
def slice_(n, e):
    a = n.attrs
    if a.get("step", 1) != 1:
        index = (slice(None),) * a["dim"] + (slice(a["start"], a["end"], a["step"]),)
        return e.out.call_function(operator.getitem, (e.ins[0], index))
    return e.out.call_function(torch.narrow, (e.ins[0], a["dim"], a["start"], a["end"] - a["start"]))


@_kind("torch call")
def attention(n, e):
    a = n.attrs
    return e.out.call_function(F.scaled_dot_product_attention, tuple(e.ins[:3]),
                               {"attn_mask": e.ins[3] if len(e.ins) > 3 else None, "is_causal": a["causal"],
                                "scale": a["scale"]})


@_kind("torch call")
def fold_batch(n, e):
    return e.out.call_function(torch.flatten, (e.ins[0], 0, 1))


@_kind("torch call")
def unfold_batch(n, e):
    return e.out.call_method("unflatten", (e.ins[0], 0, (-1, n.attrs["factor"])))


@_kind("torch call")
def expand(n, e):
    batch = e.out.call_method("size", (e.ins[0], 0))
    return e.out.call_method("expand", (e.ins[0], batch, *n.attrs["shape"]))


@_kind("torch call")
def reshape(n, e):
    batch = e.out.call_method("size", (e.ins[0], 0))  # the batch dimension stays dynamic
    return e.out.call_method("reshape", (e.ins[0], (batch, *n.attrs["shape"])))


@_kind("torch call")
def permute(n, e):
    return e.out.call_method("permute", (e.ins[0], *n.attrs["dims"]))


@_kind("hwopt.quant.QuantizedModule")
def quantized_only(n, e):
    raise IRError(f"{n.op}: a graph with int8 nodes lowers to hwopt.quant.QuantizedModule", n.name)
