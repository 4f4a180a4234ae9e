"""Lower an hwopt Graph to a torch module: an fx.GraphModule made of standard, trainable nn layers.

Parametric nodes become modules at their node's name used as a module path (so an unpruned lift/lower
keeps the user's state_dict keys); the rest become calls of torch functions. The batch dimension stays
dynamic. `bake_masks=True` multiplies masks into plain layers (for export and compilers); otherwise a
masked weight lowers to hwopt.nn.MaskedConv2d / MaskedLinear so retraining keeps pruned weights at zero.
"""
from __future__ import annotations

import operator
import re

import torch
import torch.fx as fx
from torch import nn

from . import nn as hnn
from . import quant
from .errors import IRError
from .gcpause import pauses_collector
from .ir import Graph, Node, snapshot


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
_LAYOUT: dict[type, dict | None] = {}
_MISSING = object()


def _assemble(cls: type, attrs: dict, params: dict, buffers: dict, slow) -> nn.Module:
    layout = _LAYOUT.get(cls, _MISSING)
    if layout is _MISSING:
        real = slow()
        own = {k: v for k, v in real.__dict__.items() if k not in attrs}
        same = (set(real.__dict__) - set(own) == set(attrs) and all(real.__dict__[k] == v for k, v in attrs.items())
                and set(real._parameters) == set(params) and set(real._buffers) == set(buffers)
                and not real._modules and set(own) == set(nn.Module().__dict__))
        _LAYOUT[cls] = own if same else None
        return real
    if layout is None:
        return slow()
    m = cls.__new__(cls)
    d = m.__dict__
    for k, v in layout.items():
        d[k] = type(v)() if isinstance(v, (dict, set)) else v
    d.update(attrs)
    with torch.no_grad():
        m._parameters.update((k, None if t is None else nn.Parameter(snapshot(t))) for k, t in params.items())
        m._buffers.update((k, snapshot(t)) for k, t in buffers.items())
    return m


def _weighted_layer(n: Node, bake: bool, masked_cls: type, plain_cls: type):
    """(class, weight, params, buffers, the slow path's keyword arguments) of a conv or linear layer:
    a mask stays a buffer of the masked class, or is multiplied into the weight when baking."""
    p = n.params
    masked = "weight_mask" in p and not bake
    w = p["weight"] * p["weight_mask"] if bake and "weight_mask" in p else p["weight"]
    params = {"weight": w, "bias": p.get("bias")}  # torch registers an absent bias as None
    buffers = {"weight_mask": p["weight_mask"]} if masked else {}
    slow_kw = dict(weight=w, bias=p.get("bias"), weight_mask=p["weight_mask"] if masked else None)
    return (masked_cls if masked else plain_cls), params, buffers, slow_kw


def _conv_module(n: Node, bake: bool) -> nn.Module:
    a, has_bias = n.attrs, "bias" in n.params
    cls, params, buffers, slow_kw = _weighted_layer(n, bake, hnn.MaskedConv2d, nn.Conv2d)
    attrs = dict(in_channels=a["in_channels"], out_channels=a["out_channels"], kernel_size=a["kernel_size"],
                 stride=a["stride"], padding=a["padding"], dilation=a["dilation"], transposed=False,
                 output_padding=(0, 0), groups=a["groups"], padding_mode="zeros",
                 _reversed_padding_repeated_twice=tuple(x for q in reversed(a["padding"]) for x in (q, q)))
    slow = lambda: _set(_empty(cls, a["in_channels"], a["out_channels"], a["kernel_size"], a["stride"],  # noqa: E731
                               a["padding"], a["dilation"], a["groups"], bias=has_bias), **slow_kw)
    return _assemble(cls, attrs, params, buffers, slow)


def _linear_module(n: Node, bake: bool) -> nn.Module:
    a, has_bias = n.attrs, "bias" in n.params
    cls, params, buffers, slow_kw = _weighted_layer(n, bake, hnn.MaskedLinear, nn.Linear)
    slow = lambda: _set(_empty(cls, a["in_features"], a["out_features"], bias=has_bias), **slow_kw)  # noqa: E731
    return _assemble(cls, dict(in_features=a["in_features"], out_features=a["out_features"]), params, buffers, slow)


def _bn_module(n: Node, rank: int) -> nn.Module:
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

    def __init__(self, n: Node):
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


def _layer_norm_module(n: Node) -> nn.Module:
    a, p = n.attrs, n.params
    m = nn.LayerNorm(a["normalized_size"], eps=a["eps"], elementwise_affine="weight" in p, bias="bias" in p)
    return _set(m, weight=p.get("weight"), bias=p.get("bias"))


def _group_norm_module(n: Node) -> nn.Module:
    a, p = n.attrs, n.params
    m = nn.GroupNorm(a["num_groups"], a["num_channels"], eps=a["eps"], affine="weight" in p)
    return _set(m, weight=p.get("weight"), bias=p.get("bias"))


MODULES = {
    "leaky_relu": lambda n: nn.LeakyReLU(n.attrs["negative_slope"]), "group_norm": _group_norm_module,
    "layer_norm": _layer_norm_module,
    "const": lambda n: Constant(n.params["value"]), "cond_conv2d": CondConv2d,
    "relu": lambda n: nn.ReLU(), "relu6": lambda n: nn.ReLU6(), "hardswish": lambda n: nn.Hardswish(),
    "hardsigmoid": lambda n: nn.Hardsigmoid(), "sigmoid": lambda n: nn.Sigmoid(), "silu": lambda n: nn.SiLU(),
    "tanh": lambda n: nn.Tanh(), "gelu": lambda n: nn.GELU(approximate=n.attrs["approximate"]),
    "identity": lambda n: nn.Identity(), "dropout": lambda n: nn.Dropout(n.attrs["p"]),
    "softmax": lambda n: nn.Softmax(n.attrs["dim"]), "log_softmax": lambda n: nn.LogSoftmax(n.attrs["dim"]),
    "max_pool2d": lambda n: nn.MaxPool2d(n.attrs["kernel_size"], n.attrs["stride"], n.attrs["padding"],
                                         n.attrs["dilation"], ceil_mode=n.attrs["ceil_mode"]),
    "avg_pool2d": lambda n: nn.AvgPool2d(n.attrs["kernel_size"], n.attrs["stride"], n.attrs["padding"],
                                         n.attrs["ceil_mode"], n.attrs["count_include_pad"]),
    "adaptive_avg_pool2d": lambda n: nn.AdaptiveAvgPool2d(n.attrs["output_size"]),
    "adaptive_max_pool2d": lambda n: nn.AdaptiveMaxPool2d(n.attrs["output_size"]),
    "flatten": lambda n: nn.Flatten(n.attrs["start_dim"], n.attrs["end_dim"]),
    "channel_shuffle": lambda n: nn.ChannelShuffle(n.attrs["groups"]),
}


def _conv1d_module(n: Node) -> nn.Module:
    a, p = n.attrs, n.params
    m = _empty(nn.Conv1d, a["in_channels"], a["out_channels"], a["kernel_size"], a["stride"], a["padding"], a["dilation"],
               a["groups"], bias="bias" in p)
    return _set(m, weight=p["weight"], bias=p.get("bias"))


def _conv_transpose2d_module(n: Node) -> nn.Module:
    a, p = n.attrs, n.params
    m = _empty(nn.ConvTranspose2d, a["in_channels"], a["out_channels"], a["kernel_size"], a["stride"], a["padding"],
               a["output_padding"], a["groups"], "bias" in p, a["dilation"])
    return _set(m, weight=p["weight"], bias=p.get("bias"))


def _upsample_module(n: Node) -> nn.Module:
    a = n.attrs  # a scale factor lowers as one: torch maps sample positions by it, not by the sizes
    size = None if a["scale_factor"] is not None else tuple(a["size"])
    scale = tuple(a["scale_factor"]) if a["scale_factor"] is not None else None
    return nn.Upsample(size=size, scale_factor=scale, mode=a["mode"], align_corners=a["align_corners"])


MODULES.update({"conv1d": _conv1d_module, "conv_transpose2d": _conv_transpose2d_module, "interpolate": _upsample_module})
BINARY = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}


_PLAIN_PATH = re.compile(r"\w+(\.\w+)*")  # a module path that needs no sanitising (the common case)


class _Paths:
    """Unique module paths; a path may not also be a prefix of another (a leaf module has no children)."""

    def __init__(self):
        self.leaves: set[str] = set()
        self.prefixes: set[str] = set()

    def take(self, name: str) -> str:
        base = name if _PLAIN_PATH.fullmatch(name) else ".".join(re.sub(r"\W", "_", p) or "_" for p in name.split("."))
        path, k = base, 1
        while self._clash(path):
            path, k = f"{base}_{k}", k + 1
        self.leaves.add(path)
        parts = path.split(".")
        self.prefixes.update(".".join(parts[:i]) for i in range(1, len(parts)))
        return path

    def _clash(self, path: str) -> bool:
        parts = path.split(".")
        return (path in self.leaves or path in self.prefixes
                or any(".".join(parts[:i]) in self.leaves for i in range(1, len(parts))))


@pauses_collector
def lower(graph: Graph, *, bake_masks: bool = False) -> fx.GraphModule:
    """A torch module computing `graph`, in eval mode. The graph is only read. A quantized graph lowers to a
    hwopt.quant.QuantizedModule computing in the device's integers (not trainable)."""
    graph.verify_once()
    if quant.is_quantized(graph):
        return quant.QuantizedModule(graph)
    out = fx.Graph()
    modules: dict[str, nn.Module] = {}
    taken = _Paths()
    paths: dict[str, str] = {}
    shared: dict[tuple, str] = {}  # nodes holding the same tensors -> the one module they share
    env: dict[str, fx.Node] = {}
    for node in graph:
        ins = [env[i] for i in node.inputs]
        op, a = node.op, node.attrs
        if op == "input":
            env[node.name] = out.placeholder(re.sub(r"\W", "_", node.name))
            continue
        if op == "output":
            out.output(ins[0] if len(ins) == 1 else tuple(ins))
            continue
        module = None
        if op == "conv2d":
            module = _conv_module(node, bake_masks)
        elif op == "linear":
            module = _linear_module(node, bake_masks)
        elif op == "batch_norm":
            module = _bn_module(node, len(node.spec.shape))
        elif op in MODULES:
            module = MODULES[op](node)
        if module is not None:
            key = (op, tuple(sorted((k, id(t)) for k, t in node.params.items())),
                   repr(sorted(a.items()))) if node.params else None  # same tensors, same attributes: ir.shared_nodes
            if key is not None and key in shared:  # one module of the user's, called again
                path = paths[node.name] = shared[key]
            else:
                path = paths[node.name] = taken.take(node.name)
                modules[path] = module
                if key is not None:
                    shared[key] = path
            env[node.name] = out.call_module(path, tuple(ins))
        elif op in BINARY:
            f = BINARY[op]
            if a.get("scalar") is None:
                args = tuple(ins)
            else:
                args = (a["scalar"], ins[0]) if a.get("reverse") else (ins[0], a["scalar"])
            env[node.name] = out.call_function(f, args)
        elif op == "concat":
            consts = [graph[i].op == "const" and graph[i].spec.shape[0] == 1 for i in node.inputs]
            if any(consts) and not all(consts):  # a class token: one copy for every sample of the batch
                batch = out.call_method("size", (ins[consts.index(False)], 0))
                rest = (-1,) * (len(node.spec.shape) - 1)
                ins = [out.call_method("expand", (x, batch, *rest)) if k else x for x, k in zip(ins, consts)]
            env[node.name] = out.call_function(torch.cat, (tuple(ins),), {"dim": a["dim"]})
        elif op == "slice" and a.get("step", 1) != 1:
            index = (slice(None),) * a["dim"] + (slice(a["start"], a["end"], a["step"]),)
            env[node.name] = out.call_function(operator.getitem, (ins[0], index))
        elif op == "slice":
            env[node.name] = out.call_function(torch.narrow, (ins[0], a["dim"], a["start"], a["end"] - a["start"]))
        elif op == "matmul":
            env[node.name] = out.call_function(torch.matmul, (ins[0], ins[1]))
        elif op == "attention":
            env[node.name] = out.call_function(torch.nn.functional.scaled_dot_product_attention, tuple(ins[:3]),
                                               {"attn_mask": ins[3] if len(ins) > 3 else None,
                                                "is_causal": a["causal"], "scale": a["scale"]})
        elif op == "sum":
            env[node.name] = out.call_function(torch.sum, (ins[0], tuple(a["dims"])), {"keepdim": a["keepdim"]})
        elif op == "normalize":
            env[node.name] = out.call_function(torch.nn.functional.normalize, (ins[0],), {"dim": a["dim"], "eps": a["eps"]})
        elif op == "fold_batch":
            env[node.name] = out.call_function(torch.flatten, (ins[0], 0, 1))
        elif op == "unfold_batch":
            env[node.name] = out.call_method("unflatten", (ins[0], 0, (-1, a["factor"])))
        elif op == "expand":
            batch = out.call_method("size", (ins[0], 0))
            env[node.name] = out.call_method("expand", (ins[0], batch, *a["shape"]))
        elif op == "reshape":
            batch = out.call_method("size", (ins[0], 0))  # the batch dimension stays dynamic
            env[node.name] = out.call_method("reshape", (ins[0], (batch, *a["shape"])))
        elif op == "permute":
            env[node.name] = out.call_method("permute", (ins[0], *a["dims"]))
        elif op == "pad":
            env[node.name] = out.call_function(torch.nn.functional.pad, (ins[0], tuple(a["pads"])), {"value": a["value"]})
        elif op == "mean":
            env[node.name] = out.call_function(torch.mean, (ins[0], tuple(a["dims"])), {"keepdim": a["keepdim"]})
        elif op == "vector_norm":
            env[node.name] = out.call_function(torch.linalg.vector_norm, (ins[0], a["ord"], tuple(a["dims"]), a["keepdim"]))
        else:
            raise IRError(f"no lowering for op {op!r}", node.name)
    gm = fx.GraphModule(modules, out, class_name="HwoptModule")
    gm.hwopt_module_paths = paths  # node name -> submodule path (names can need sanitising)
    return gm.eval()



def submodules(graph: Graph, module: nn.Module) -> dict[str, nn.Module]:
    """The submodule `lower(graph)` made for each parametric node of `graph`, by node name."""
    paths = getattr(module, "hwopt_module_paths", None)
    if paths is None:
        raise IRError("this module was not made by hwopt.lower (it has no hwopt_module_paths)")
    return {n.name: module.get_submodule(paths[n.name]) for n in graph if n.params}


def read_back(graph: Graph, module: nn.Module) -> Graph:
    """A copy of `graph` holding the parameters of `module` = `lower(graph)` after training it.

    Masks are kept from the graph and multiplied in, so pruned weights are exact zeros."""
    new = graph.copy()
    copies: dict[int, torch.Tensor] = {}  # a shared module's tensors are read once, so its nodes stay shared
    for name, m in submodules(graph, module).items():
        node = new[name].copy()
        params = {}
        for k, old in node.params.items():
            t = getattr(m, k, None)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(old.shape):
                raise IRError(f"lowered module has no {k!r} of shape {tuple(old.shape)}", name)
            params[k] = copies[id(t)] if id(t) in copies else copies.setdefault(id(t), snapshot(t))
        if "weight_mask" in node.params:
            params["weight_mask"] = node.params["weight_mask"]
            key = ("masked", id(params["weight"]), id(params["weight_mask"]))
            params["weight"] = copies[key] if key in copies else copies.setdefault(key, params["weight"] * params["weight_mask"])
        node.params = params
        new.replace(node)
    return new.verify()
