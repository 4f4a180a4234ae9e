"""The front end's rules as data: which torch modules, functions and methods lift to which IR op.

`MODULE_RULES` maps a module class to (op, attributes, parameters); `FUNCTIONS` / `METHODS` map torch
functions and Tensor methods to a canonical name whose signature is in `SIGS` and whose handler is
`_Lifter.f_<name>` in hwopt.frontend (a trailing "!" marks an in-place form). Adding an op: docs/ops.md.
"""
from __future__ import annotations

import operator
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import nn as hnn
from .ir import _pair


def _params(**kw) -> dict[str, torch.Tensor]:
    """The tensors a node takes from the model (the lifter snapshots each source tensor once)."""
    return {k: v for k, v in kw.items() if v is not None}


def _attribute(m: nn.Module, name: str):
    """getattr(m, name, None), without nn.Module.__getattr__ building an AttributeError when `m` has no such
    attribute (the usual case for `weight_mask` and `inplace`, asked of every layer)."""
    if hasattr(type(m), name):  # a class attribute or property comes first, as in getattr
        return getattr(m, name, None)
    if name in m.__dict__:
        return m.__dict__[name]
    for store in (m._parameters, m._buffers, m._modules):  # nn.Module.__getattr__'s order
        if name in store:
            return store[name]
    return None


def _conv(m: nn.Conv2d):
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise ValueError(f"padding={m.padding!r}, padding_mode={m.padding_mode!r} (only numeric zero padding)")
    return "conv2d", dict(in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=_pair(m.kernel_size),
                          stride=_pair(m.stride), padding=_pair(m.padding), dilation=_pair(m.dilation), groups=m.groups), \
        _params(weight=m.weight, bias=m.bias, weight_mask=_attribute(m, "weight_mask"))


def _linear(m: nn.Linear):
    return "linear", dict(in_features=m.in_features, out_features=m.out_features), \
        _params(weight=m.weight, bias=m.bias, weight_mask=_attribute(m, "weight_mask"))


def _bn(m: nn.modules.batchnorm._BatchNorm):
    if not m.track_running_stats:
        raise ValueError("batch norm without running statistics has no inference semantics")
    return "batch_norm", dict(num_features=m.num_features, eps=m.eps, momentum=m.momentum), \
        _params(weight=m.weight, bias=m.bias, running_mean=m.running_mean, running_var=m.running_var)


def _layer_norm(shape, eps, weight, bias):
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if len(shape) != 1:
        raise ValueError(f"layer norm over {len(shape)} dims {list(shape)} (only over the last dim)")
    return "layer_norm", {"normalized_size": int(shape[0]), "eps": float(eps)}, _params(weight=weight, bias=bias)


def _pool_attrs(k, s, p, ceil):
    return dict(kernel_size=_pair(k), stride=_pair(s if s is not None and s != [] else k), padding=_pair(p), ceil_mode=bool(ceil))


def _out_size(size):
    if size is None or (isinstance(size, (tuple, list)) and None in size):
        raise ValueError("adaptive pooling with a None output size")
    return _pair(size)


MODULE_RULES: dict[type, Callable[[nn.Module], tuple[str, dict, dict]]] = {
    nn.Conv2d: _conv, hnn.MaskedConv2d: _conv, nn.Linear: _linear, hnn.MaskedLinear: _linear,
    nn.BatchNorm1d: _bn, nn.BatchNorm2d: _bn,
    nn.ReLU: lambda m: ("relu", {}, {}), nn.ReLU6: lambda m: ("relu6", {}, {}),
    nn.Hardswish: lambda m: ("hardswish", {}, {}), nn.Hardsigmoid: lambda m: ("hardsigmoid", {}, {}),
    nn.Sigmoid: lambda m: ("sigmoid", {}, {}), nn.SiLU: lambda m: ("silu", {}, {}), nn.Tanh: lambda m: ("tanh", {}, {}),
    nn.GELU: lambda m: ("gelu", {"approximate": m.approximate}, {}), nn.Identity: lambda m: ("identity", {}, {}),
    nn.Dropout: lambda m: ("dropout", {"p": float(m.p)}, {}),
    nn.Softmax: lambda m: ("softmax", {"dim": m.dim}, {}), nn.LogSoftmax: lambda m: ("log_softmax", {"dim": m.dim}, {}),
    nn.MaxPool2d: lambda m: ("max_pool2d", {**_pool_attrs(m.kernel_size, m.stride, m.padding, m.ceil_mode),
                                            "dilation": _pair(m.dilation)}, {}) if not m.return_indices else _no("return_indices=True"),
    nn.AvgPool2d: lambda m: ("avg_pool2d", {**_pool_attrs(m.kernel_size, m.stride, m.padding, m.ceil_mode),
                                            "count_include_pad": bool(m.count_include_pad)}, {})
    if m.divisor_override is None else _no("divisor_override"),
    nn.AdaptiveAvgPool2d: lambda m: ("adaptive_avg_pool2d", {"output_size": _out_size(m.output_size)}, {}),
    nn.AdaptiveMaxPool2d: lambda m: ("adaptive_max_pool2d", {"output_size": _out_size(m.output_size)}, {})
    if not m.return_indices else _no("return_indices=True"),
    nn.Flatten: lambda m: ("flatten", {"start_dim": m.start_dim, "end_dim": m.end_dim}, {}),
    nn.LayerNorm: lambda m: _layer_norm(m.normalized_shape, m.eps, m.weight, getattr(m, "bias", None)),
    nn.LeakyReLU: lambda m: ("leaky_relu", {"negative_slope": float(m.negative_slope)}, {}),
    nn.GroupNorm: lambda m: ("group_norm", {"num_groups": m.num_groups, "num_channels": m.num_channels, "eps": m.eps},
                             _params(weight=m.weight, bias=m.bias)),
    nn.ChannelShuffle: lambda m: ("channel_shuffle", {"groups": m.groups}, {}),
}


def _conv1d(m: nn.Conv1d):
    from .frontend_conv import same_padding_1d, single
    if m.padding_mode != "zeros":
        raise ValueError(f"padding_mode={m.padding_mode!r} (only zero padding)")
    k, d = single(m.kernel_size), single(m.dilation)
    return "conv1d", dict(in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=k, stride=single(m.stride),
                          padding=same_padding_1d(m.padding, k, d), dilation=d, groups=m.groups), \
        _params(weight=m.weight, bias=m.bias)


def _conv_transpose2d(m: nn.ConvTranspose2d):
    if m.padding_mode != "zeros":
        raise ValueError(f"padding_mode={m.padding_mode!r} (only zero padding)")
    return "conv_transpose2d", dict(in_channels=m.in_channels, out_channels=m.out_channels,
                                    kernel_size=_pair(m.kernel_size), stride=_pair(m.stride), padding=_pair(m.padding),
                                    output_padding=_pair(m.output_padding), dilation=_pair(m.dilation), groups=m.groups), \
        _params(weight=m.weight, bias=m.bias)


# nn.Upsample (and UpsamplingNearest2d / UpsamplingBilinear2d) is traced through: its F.interpolate call
# needs the input's size, which a module rule does not see.
MODULE_RULES.update({nn.Conv1d: _conv1d, nn.ConvTranspose2d: _conv_transpose2d})


# Modules refused on purpose, and why (the error says so).
_RECURRENT = ("recurrent layers are not lifted: an exact lift needs a recurrent op whose hidden units tie the rows "
              "of every gate in weight_ih and weight_hh, weight_hh's columns and the carried state, costed as T "
              "sequential steps; the keyword-spotting nets hwopt targets are convolutional (DS-CNN, TC-ResNet: "
              "nn.Conv1d over [N, C, T] lifts and prunes), so export the model without its RNN or use temporal convs")
_REFUSED = {nn.LSTM: _RECURRENT, nn.GRU: _RECURRENT, nn.RNN: _RECURRENT}


def _no(what: str):
    raise ValueError(f"{what} is not supported")


# Functions and methods: canonical name and signature (names, defaults). Methods get `self` first.
_REQ = object()
SIGS: dict[str, tuple[tuple[str, Any], ...]] = {
    "add": (("input", _REQ), ("other", _REQ), ("alpha", 1)), "sub": (("input", _REQ), ("other", _REQ), ("alpha", 1)),
    "mul": (("input", _REQ), ("other", _REQ)), "div": (("input", _REQ), ("other", _REQ), ("rounding_mode", None)),
    "cat": (("tensors", _REQ), ("dim", 0)), "flatten": (("input", _REQ), ("start_dim", 0), ("end_dim", -1)),
    **{a: (("input", _REQ), ("inplace", False)) for a in ("relu", "relu6", "hardswish", "hardsigmoid", "silu")},
    "sigmoid": (("input", _REQ),), "tanh": (("input", _REQ),), "gelu": (("input", _REQ), ("approximate", "none")),
    "dropout": (("input", _REQ), ("p", 0.5), ("training", True), ("inplace", False)),
    "softmax": (("input", _REQ), ("dim", None), ("_stacklevel", 3), ("dtype", None)),
    "log_softmax": (("input", _REQ), ("dim", None), ("_stacklevel", 3), ("dtype", None)),
    "adaptive_avg_pool2d": (("input", _REQ), ("output_size", _REQ)),
    "adaptive_max_pool2d": (("input", _REQ), ("output_size", _REQ), ("return_indices", False)),
    "avg_pool2d": (("input", _REQ), ("kernel_size", _REQ), ("stride", None), ("padding", 0), ("ceil_mode", False),
                   ("count_include_pad", True), ("divisor_override", None)),
    "max_pool2d": (("input", _REQ), ("kernel_size", _REQ), ("stride", None), ("padding", 0), ("dilation", 1),
                   ("ceil_mode", False), ("return_indices", False)),
    "mean": (("input", _REQ), ("dim", None), ("keepdim", False), ("dtype", None)),
    "chunk": (("input", _REQ), ("chunks", _REQ), ("dim", 0)), "split": (("input", _REQ), ("split_size", _REQ), ("dim", 0)),
    "channel_shuffle": (("input", _REQ), ("groups", _REQ)), "getitem": (("input", _REQ), ("index", _REQ)),
    "size": (("input", _REQ), ("dim", None)), "contiguous": (("input", _REQ),), "getattr": (("input", _REQ), ("name", _REQ)),
    "reshape": (("input", _REQ), ("shape", _REQ)), "floordiv": (("input", _REQ), ("other", _REQ)),
    "narrow": (("input", _REQ), ("dim", _REQ), ("start", _REQ), ("length", _REQ)),
    "batch_norm": (("input", _REQ), ("running_mean", _REQ), ("running_var", _REQ), ("weight", None), ("bias", None),
                   ("training", False), ("momentum", 0.1), ("eps", 1e-5)),
    "conv2d": (("input", _REQ), ("weight", _REQ), ("bias", None), ("stride", 1), ("padding", 0), ("dilation", 1),
               ("groups", 1)),
    "linear": (("input", _REQ), ("weight", _REQ), ("bias", None)),
    "pad": (("input", _REQ), ("pad", _REQ), ("mode", "constant"), ("value", None)),
    "leaky_relu": (("input", _REQ), ("negative_slope", 0.01), ("inplace", False)),
    "permute": (("input", _REQ), ("dims", _REQ)), "transpose": (("input", _REQ), ("dim0", _REQ), ("dim1", _REQ)),
    "layer_norm": (("input", _REQ), ("normalized_shape", _REQ), ("weight", None), ("bias", None), ("eps", 1e-5)),
    "group_norm": (("input", _REQ), ("num_groups", _REQ), ("weight", None), ("bias", None), ("eps", 1e-5)),
    # tokens and attention
    "matmul": (("input", _REQ), ("other", _REQ)),
    "scaled_dot_product_attention": (("query", _REQ), ("key", _REQ), ("value", _REQ), ("attn_mask", None),
                                     ("dropout_p", 0.0), ("is_causal", False), ("scale", None), ("enable_gqa", False)),
    "sum": (("input", _REQ), ("dim", None), ("keepdim", False), ("dtype", None)),
    "unsqueeze": (("input", _REQ), ("dim", _REQ)), "squeeze": (("input", _REQ), ("dim", None)),
    "unbind": (("input", _REQ), ("dim", 0)), "select": (("input", _REQ), ("dim", _REQ), ("index", _REQ)),
    "expand": (("input", _REQ), ("size", _REQ)), "expand_as": (("input", _REQ), ("other", _REQ)),
    "reshape_as": (("input", _REQ), ("other", _REQ)),
    "normalize": (("input", _REQ), ("p", 2.0), ("dim", 1), ("eps", 1e-12), ("out", None)),
    "conv1d": (("input", _REQ), ("weight", _REQ), ("bias", None), ("stride", 1), ("padding", 0), ("dilation", 1),
               ("groups", 1)),
    "conv_transpose2d": (("input", _REQ), ("weight", _REQ), ("bias", None), ("stride", 1), ("padding", 0),
                         ("output_padding", 0), ("groups", 1), ("dilation", 1)),
    "interpolate": (("input", _REQ), ("size", None), ("scale_factor", None), ("mode", "nearest"), ("align_corners", None),
                    ("recompute_scale_factor", None), ("antialias", False)),
    "norm": (("input", _REQ), ("p", "fro"), ("dim", None), ("keepdim", False), ("out", None), ("dtype", None)),
    "vector_norm": (("input", _REQ), ("ord", 2), ("dim", None), ("keepdim", False), ("dtype", None)),
    "addcmul": (("input", _REQ), ("tensor1", _REQ), ("tensor2", _REQ), ("value", 1)),
    "roll": (("input", _REQ), ("shifts", _REQ), ("dims", None)),
    "shifted_window_attention": (("input", _REQ), ("qkv_weight", _REQ), ("proj_weight", _REQ),
                                 ("relative_position_bias", _REQ), ("window_size", _REQ), ("num_heads", _REQ),
                                 ("shift_size", _REQ), ("attention_dropout", 0.0), ("dropout", 0.0), ("qkv_bias", None),
                                 ("proj_bias", None), ("logit_scale", None), ("training", True)),
    "patch_merging_pad": (("input", _REQ),),
}
# Functions of libraries hwopt does not import, by (module, name): torchvision wraps these for fx.
NAMED_FUNCTIONS: dict[tuple[str, str], str] = {
    ("torchvision.models.swin_transformer", "shifted_window_attention"): "shifted_window_attention",
    ("torchvision.models.swin_transformer", "_patch_merging_pad"): "patch_merging_pad",
}
# Modules lifted by a method of the lifter (`m_<name>`) rather than one op: they take several tensors.
MODULE_LIFTERS: dict[type, str] = {nn.MultiheadAttention: "multihead_attention"}
# The same for classes of libraries hwopt does not import, by (module, class name).
NAMED_MODULE_LIFTERS: dict[tuple[str, str], str] = {("timm.layers.cond_conv2d", "CondConv2d"): "cond_conv2d",
                                                     ("timm.layers.norm_act", "BatchNormAct2d"): "batch_norm_act"}


def _plain_norm_act(m: nn.Module) -> bool:
    """timm's BatchNormAct2d in eval mode whose drop and act layers have module rules: lifted as one call (batch
    norm, then drop, then act), not traced through its forward's torchscript-style branches op by op. Any other
    (train mode, no running statistics, timm's own activation classes) is traced through as before."""
    return (not m.training and m.track_running_stats and m.running_mean is not None and m.running_var is not None
            and type(m.drop) in MODULE_RULES and type(m.act) in MODULE_RULES)


# Lifters that take only some instances of their class (the others are traced through).
LIFTER_CONDITIONS: dict[str, Callable[[nn.Module], bool]] = {"batch_norm_act": _plain_norm_act}


def module_lifter(m: nn.Module) -> str | None:
    """The `_Lifter.m_<name>` method that lifts module `m`, if any."""
    name = MODULE_LIFTERS.get(type(m)) or NAMED_MODULE_LIFTERS.get((type(m).__module__, type(m).__name__))
    if name is not None and name in LIFTER_CONDITIONS and not LIFTER_CONDITIONS[name](m):
        return None
    return name
FUNCTIONS: dict[Any, str] = {
    operator.add: "add", torch.add: "add", operator.iadd: "add!", operator.sub: "sub", torch.sub: "sub",
    operator.isub: "sub!", operator.mul: "mul", torch.mul: "mul", operator.imul: "mul!", operator.truediv: "div",
    torch.div: "div", operator.itruediv: "div!", torch.cat: "cat", torch.concat: "cat", torch.flatten: "flatten",
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid",
    torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.silu: "silu", torch.tanh: "tanh", F.tanh: "tanh", F.gelu: "gelu",
    F.dropout: "dropout", F.softmax: "softmax", torch.softmax: "softmax", F.log_softmax: "log_softmax",
    F.adaptive_avg_pool2d: "adaptive_avg_pool2d", F.adaptive_max_pool2d: "adaptive_max_pool2d",
    F.avg_pool2d: "avg_pool2d", F.max_pool2d: "max_pool2d", torch.mean: "mean", torch.chunk: "chunk",
    torch.split: "split", F.channel_shuffle: "channel_shuffle", torch.channel_shuffle: "channel_shuffle",
    operator.getitem: "getitem", torch.reshape: "reshape", getattr: "getattr", operator.floordiv: "floordiv",
    torch.narrow: "narrow", F.batch_norm: "batch_norm", F.conv2d: "conv2d", torch.conv2d: "conv2d", F.linear: "linear",
    F.pad: "pad", F.leaky_relu: "leaky_relu", F.group_norm: "group_norm", torch.permute: "permute",
    torch.transpose: "transpose", F.layer_norm: "layer_norm",
    torch.matmul: "matmul", operator.matmul: "matmul", torch.bmm: "matmul",
    F.scaled_dot_product_attention: "scaled_dot_product_attention", torch.sum: "sum", torch.unsqueeze: "unsqueeze",
    torch.squeeze: "squeeze", torch.unbind: "unbind", torch.select: "select", F.normalize: "normalize",
    torch.roll: "roll",
}
FUNCTIONS.update({F.conv1d: "conv1d", torch.conv1d: "conv1d", F.conv_transpose2d: "conv_transpose2d",
                  torch.conv_transpose2d: "conv_transpose2d", F.interpolate: "interpolate", torch.norm: "norm",
                  torch.linalg.vector_norm: "vector_norm", torch.addcmul: "addcmul"})
METHODS = {"add": "add", "add_": "add!", "sub": "sub", "mul": "mul", "mul_": "mul!", "div": "div", "relu": "relu",
           "relu_": "relu!", "sigmoid": "sigmoid", "tanh": "tanh", "flatten": "flatten", "view": "reshape",
           "reshape": "reshape", "mean": "mean", "chunk": "chunk", "split": "split", "contiguous": "contiguous",
           "size": "size", "softmax": "softmax", "log_softmax": "log_softmax", "narrow": "narrow",
           "permute": "permute", "transpose": "transpose", "matmul": "matmul", "bmm": "matmul", "sum": "sum",
           "unsqueeze": "unsqueeze", "squeeze": "squeeze", "unbind": "unbind", "select": "select",
           "expand": "expand", "expand_as": "expand_as", "reshape_as": "reshape_as", "view_as": "reshape_as", "roll": "roll"}
METHODS.update({"norm": "norm", "addcmul": "addcmul"})


def _bind(name: str, args: Sequence, kwargs: dict) -> dict[str, Any]:
    sig = SIGS[name]
    if name in ("reshape", "permute", "expand") and len(args) > 2:  # x.view(a, b, c), x.permute(0, 2, 3, 1)
        args = (args[0], tuple(args[1:]))
    if len(args) > len(sig):
        raise ValueError(f"{name} got {len(args)} positional arguments")
    out = {k: v for (k, _), v in zip(sig, args)}
    for k, v in kwargs.items():
        if k not in dict(sig):
            raise ValueError(f"{name} got unexpected argument {k!r}")
        out[k] = v
    for k, default in sig:
        if k not in out:
            if default is _REQ:
                raise ValueError(f"{name} is missing argument {k!r}")
            out[k] = default
    return out
