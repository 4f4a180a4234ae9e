"""Lift a torch.nn.Module into an hwopt Graph, exactly, through torch.fx.symbolic_trace.

Why fx and not torch.export: symbolic tracing keeps module boundaries (a Conv2d stays one call with
its module path and parameters), costs ~15 ms on ResNet-50 where torch.export costs ~0.45 s, and needs
no decomposition back from aten ops. Its limit is data-dependent Python control flow in `forward`;
such a model fails with an error that says so, never with a silent fallback. Every op is mapped by
the tables below (rules as data); anything else raises UnsupportedOpError naming the op and the module
path. The user's model is only read: parameters are copied into the graph (copy-on-write: `ir.snapshot`).
"""
from __future__ import annotations

import operator
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from . import nn as hnn
from .errors import IRError, ShapeError, UnsupportedOpError
from .ir import Graph, TensorSpec, _pair, snapshot


def _p(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else snapshot(t)


def _params(**kw) -> dict[str, torch.Tensor]:
    return {k: _p(v) for k, v in kw.items() if v is not None}


def _conv(m: nn.Conv2d):
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise ValueError(f"padding={m.padding!r}, padding_mode={m.padding_mode!r} (only numeric zero padding)")
    return "conv2d", dict(in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=_pair(m.kernel_size),
                          stride=_pair(m.stride), padding=_pair(m.padding), dilation=_pair(m.dilation), groups=m.groups), \
        _params(weight=m.weight, bias=m.bias, weight_mask=getattr(m, "weight_mask", None))


def _linear(m: nn.Linear):
    return "linear", dict(in_features=m.in_features, out_features=m.out_features), \
        _params(weight=m.weight, bias=m.bias, weight_mask=getattr(m, "weight_mask", None))


def _bn(m: nn.modules.batchnorm._BatchNorm):
    if not m.track_running_stats:
        raise ValueError("batch norm without running statistics has no inference semantics")
    return "batch_norm", dict(num_features=m.num_features, eps=m.eps, momentum=m.momentum), \
        _params(weight=m.weight, bias=m.bias, running_mean=m.running_mean, running_var=m.running_var)


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
    nn.ChannelShuffle: lambda m: ("channel_shuffle", {"groups": m.groups}, {}),
}
INPLACE_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.Dropout)


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
}
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
    torch.narrow: "narrow",
}
METHODS = {"add": "add", "add_": "add!", "sub": "sub", "mul": "mul", "mul_": "mul!", "div": "div", "relu": "relu",
           "relu_": "relu!", "sigmoid": "sigmoid", "tanh": "tanh", "flatten": "flatten", "view": "reshape",
           "reshape": "reshape", "mean": "mean", "chunk": "chunk", "split": "split", "contiguous": "contiguous",
           "size": "size", "softmax": "softmax", "log_softmax": "log_softmax", "narrow": "narrow"}


def _bind(name: str, args: Sequence, kwargs: dict) -> dict[str, Any]:
    sig = SIGS[name]
    if name == "reshape" and len(args) > 2:  # x.view(a, b, c)
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


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m) in MODULE_RULES or super().is_leaf_module(m, qualname)


class _Shape(tuple):
    """The value of `x.shape` / `x.size()` during lifting: concrete ints (shapes are specialised)."""


class _Lifter:
    def __init__(self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...]):
        self.model, self.examples = model, example_inputs
        self.g = Graph()
        self.env: dict[fx.Node, Any] = {}
        self.modules = dict(model.named_modules())

    def where(self, n: fx.Node) -> str:
        if n.op == "call_module":
            return str(n.target)
        stack = n.meta.get("nn_module_stack") or {}
        return list(stack.values())[-1][0] if stack else ""

    def spec(self, v) -> TensorSpec:
        return self.g[v].spec

    def emit(self, n: fx.Node, op: str, inputs, attrs=None, params=None, name=None) -> str:
        name = self.g.unique_name(name or n.name)
        try:
            self.g.add(name, op, inputs, attrs, params, source=self.where(n))
        except IRError as e:
            shapes = ", ".join(str(list(self.spec(i).shape)) for i in inputs)
            raise ShapeError(f"example input(s) {[list(t.shape) for t in self.examples]} do not fit the model at "
                             f"{self.describe(n)}: {e} (its input shapes: {shapes})") from None
        return name

    def describe(self, n: fx.Node) -> str:
        path = self.where(n)
        if n.op == "call_module":
            return f"module {path!r} ({type(self.modules[path]).__name__})"
        return f"{n.op} {getattr(n.target, '__name__', n.target)!s} in module {path!r}" if path else f"{n.target}"

    def unsupported(self, n: fx.Node, detail: str = "") -> UnsupportedOpError:
        if n.op == "call_module":
            op = type(self.modules[str(n.target)]).__name__
        else:
            op = getattr(n.target, "__name__", str(n.target))
            op = f"{op}()" if n.op == "call_function" else f"Tensor.{op}()" if n.op == "call_method" else f"{n.op} {op}"
        return UnsupportedOpError(op, self.where(n), detail)

    def check_inplace(self, n: fx.Node, arg: fx.Node) -> None:
        # In eager mode an in-place op is seen by every other reader of its input; as a value it is
        # only equivalent when this op is the input's sole reader.
        if isinstance(arg, fx.Node) and len(arg.users) > 1:
            raise self.unsupported(n, f"in-place op on a tensor that {len(arg.users) - 1} other op(s) also read")

    def val(self, a):
        if isinstance(a, fx.Node):
            return self.env[a]
        if isinstance(a, (list, tuple)):
            return type(a)(self.val(x) for x in a)
        return a

    def run(self) -> Graph:
        tracer = _Tracer()
        try:
            fxg = tracer.trace(self.model)
        except Exception as e:  # noqa: BLE001 - fx raises many kinds; all mean "not symbolically traceable"
            raise UnsupportedOpError("data-dependent control flow or untraceable Python", "",
                                     f"torch.fx.symbolic_trace failed: {type(e).__name__}: {e}") from None
        placeholders = [n for n in fxg.nodes if n.op == "placeholder"]
        if len(placeholders) != len(self.examples):
            raise ShapeError(f"the model's forward takes {len(placeholders)} input(s) "
                             f"({', '.join(p.name for p in placeholders)}), got {len(self.examples)} example input(s)")
        for n in fxg.nodes:
            try:
                self.env[n] = self.lift_node(n, placeholders)
            except (UnsupportedOpError, ShapeError):
                raise
            except (ValueError, TypeError, KeyError) as e:
                raise self.unsupported(n, str(e)) from None
        return self.g

    def lift_node(self, n: fx.Node, placeholders: list[fx.Node]):
        if n.op == "placeholder":
            t = self.examples[placeholders.index(n)]
            if not isinstance(t, torch.Tensor) or t.dim() < 2:
                raise ShapeError(f"example input {n.name!r} must be a tensor with a batch dimension, got "
                                 f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
            return self.g.add(self.g.unique_name(n.name), "input", spec=TensorSpec(tuple(t.shape), str(t.dtype).removeprefix("torch."))).name
        if n.op == "output":
            outs = n.args[0]
            outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
            if not all(isinstance(o, fx.Node) and isinstance(self.env[o], str) for o in outs):
                raise self.unsupported(n, "the model must return a tensor or a tuple/list of tensors")
            return self.g.add("output", "output", [self.env[o] for o in outs]).name
        if n.op == "call_module":
            m = self.modules[str(n.target)]
            rule = MODULE_RULES.get(type(m))
            if rule is None:
                raise self.unsupported(n, f"no rule for {type(m).__module__}.{type(m).__name__}")
            if len(n.args) != 1 or n.kwargs or not isinstance(n.args[0], fx.Node):
                raise self.unsupported(n, "expected exactly one tensor argument")
            if isinstance(m, INPLACE_MODULES) and getattr(m, "inplace", False):
                self.check_inplace(n, n.args[0])
            op, attrs, params = rule(m)
            return self.emit(n, op, [self.env[n.args[0]]], attrs, params, name=str(n.target))
        if n.op == "call_function":
            name = FUNCTIONS.get(n.target)
        elif n.op == "call_method":
            name = METHODS.get(n.target)
        else:
            raise self.unsupported(n, "parameters or buffers used directly in forward (get_attr); use nn modules")
        if name is None:
            raise self.unsupported(n)
        inplace = name.endswith("!")
        name = name.rstrip("!")
        a = _bind(name, n.args, n.kwargs)
        if inplace or a.get("inplace"):
            self.check_inplace(n, n.args[0])
        return getattr(self, "f_" + name)(n, a, {k: self.val(v) for k, v in a.items()})

    # --- functional ops: `a` holds raw fx args, `v` their lifted values -----------------------------
    def _is_tensor(self, v) -> bool:
        return isinstance(v, str)

    def _binary(self, op, n, v):
        x, y = v["input"], v["other"]
        if v.get("alpha", 1) != 1 or v.get("rounding_mode") is not None:
            raise self.unsupported(n, "alpha / rounding_mode arguments")
        if self._is_tensor(x) and self._is_tensor(y):
            return self.emit(n, op, [x, y])
        if isinstance(x, (int, float)) and isinstance(y, (int, float)):
            return {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}[op](x, y)
        if self._is_tensor(x) and isinstance(y, (int, float)):
            return self.emit(n, op, [x], {"scalar": float(y), "reverse": False})
        if self._is_tensor(y) and isinstance(x, (int, float)):
            return self.emit(n, op, [y], {"scalar": float(x), "reverse": True})
        raise self.unsupported(n, "operands must be tensors or Python numbers")

    def f_add(self, n, a, v): return self._binary("add", n, v)
    def f_sub(self, n, a, v): return self._binary("sub", n, v)
    def f_mul(self, n, a, v): return self._binary("mul", n, v)
    def f_div(self, n, a, v): return self._binary("div", n, v)

    def f_floordiv(self, n, a, v):
        if isinstance(v["input"], int) and isinstance(v["other"], int):
            return v["input"] // v["other"]
        raise self.unsupported(n, "floor division of tensors")

    def _unary(op):
        def f(self, n, a, v):
            return self.emit(n, op, [v["input"]])
        return f

    f_relu, f_relu6, f_hardswish, f_hardsigmoid = _unary("relu"), _unary("relu6"), _unary("hardswish"), _unary("hardsigmoid")
    f_sigmoid, f_silu, f_tanh, f_contiguous = _unary("sigmoid"), _unary("silu"), _unary("tanh"), _unary("identity")

    def f_gelu(self, n, a, v): return self.emit(n, "gelu", [v["input"]], {"approximate": v["approximate"]})

    def f_dropout(self, n, a, v):
        return self.emit(n, "dropout", [v["input"]], {"p": float(v["p"])}) if v["training"] else self.emit(n, "identity", [v["input"]])

    def f_softmax(self, n, a, v):
        if v["dim"] is None or v["dtype"] is not None:
            raise self.unsupported(n, "softmax needs an explicit dim and no dtype")
        return self.emit(n, "softmax", [v["input"]], {"dim": v["dim"]})

    def f_log_softmax(self, n, a, v):
        if v["dim"] is None or v["dtype"] is not None:
            raise self.unsupported(n, "log_softmax needs an explicit dim and no dtype")
        return self.emit(n, "log_softmax", [v["input"]], {"dim": v["dim"]})

    def f_cat(self, n, a, v):
        xs = list(v["tensors"])
        if not all(self._is_tensor(x) for x in xs):
            raise self.unsupported(n, "concat of non-tensors")
        rank = len(self.spec(xs[0]).shape)
        return self.emit(n, "concat", xs, {"dim": v["dim"] % rank})

    def f_flatten(self, n, a, v):
        rank = len(self.spec(v["input"]).shape)
        if v["start_dim"] % rank == 0:
            raise self.unsupported(n, "flatten over the batch dimension (use torch.flatten(x, 1))")
        return self.emit(n, "flatten", [v["input"]], {"start_dim": v["start_dim"] % rank, "end_dim": v["end_dim"] % rank})

    def f_adaptive_avg_pool2d(self, n, a, v):
        return self.emit(n, "adaptive_avg_pool2d", [v["input"]], {"output_size": _out_size(v["output_size"])})

    def f_adaptive_max_pool2d(self, n, a, v):
        if v["return_indices"]:
            raise self.unsupported(n, "return_indices=True")
        return self.emit(n, "adaptive_max_pool2d", [v["input"]], {"output_size": _out_size(v["output_size"])})

    def f_avg_pool2d(self, n, a, v):
        if v["divisor_override"] is not None:
            raise self.unsupported(n, "divisor_override")
        return self.emit(n, "avg_pool2d", [v["input"]], {**_pool_attrs(v["kernel_size"], v["stride"], v["padding"], v["ceil_mode"]),
                                                         "count_include_pad": bool(v["count_include_pad"])})

    def f_max_pool2d(self, n, a, v):
        if v["return_indices"]:
            raise self.unsupported(n, "return_indices=True")
        return self.emit(n, "max_pool2d", [v["input"]], {**_pool_attrs(v["kernel_size"], v["stride"], v["padding"], v["ceil_mode"]),
                                                         "dilation": _pair(v["dilation"])})

    def f_mean(self, n, a, v):
        rank = len(self.spec(v["input"]).shape)
        dims = v["dim"]
        if dims is None or v["dtype"] is not None:
            raise self.unsupported(n, "mean needs explicit dims (the batch dimension is kept)")
        dims = tuple(sorted(d % rank for d in ((dims,) if isinstance(dims, int) else dims)))
        return self.emit(n, "mean", [v["input"]], {"dims": dims, "keepdim": bool(v["keepdim"])})

    def f_channel_shuffle(self, n, a, v):
        return self.emit(n, "channel_shuffle", [v["input"]], {"groups": int(v["groups"])})

    def _pieces(self, n, x, sizes: list[int], dim: int):
        shape = self.spec(x).shape
        dim %= len(shape)
        if dim == 0:
            raise self.unsupported(n, "splitting the batch dimension")
        bounds, start = [], 0
        for s in sizes:
            bounds.append((start, min(start + s, shape[dim])))
            start += s
        return ("pieces", x, dim, [b for b in bounds if b[0] < b[1]])

    def f_chunk(self, n, a, v):
        size = self.spec(v["input"]).shape[v["dim"] % len(self.spec(v["input"]).shape)]
        step = -(-size // v["chunks"])
        return self._pieces(n, v["input"], [step] * v["chunks"], v["dim"])

    def f_split(self, n, a, v):
        x, s = v["input"], v["split_size"]
        size = self.spec(x).shape[v["dim"] % len(self.spec(x).shape)]
        return self._pieces(n, x, list(s) if isinstance(s, (list, tuple)) else [s] * (-(-size // s)), v["dim"])

    def f_getitem(self, n, a, v):
        src, idx = v["input"], v["index"]
        if isinstance(src, tuple) and src and src[0] == "pieces":
            _, x, dim, bounds = src
            start, end = bounds[idx]
            return self.emit(n, "slice", [x], {"dim": dim, "start": start, "end": end})
        if isinstance(src, _Shape):
            r = src[idx]
            return _Shape(r) if isinstance(r, tuple) else r
        raise self.unsupported(n, "indexing or slicing a tensor")

    def f_size(self, n, a, v):
        shape = _Shape(self.spec(v["input"]).shape)
        return shape if v["dim"] is None else shape[v["dim"]]

    def f_getattr(self, n, a, v):
        if v["name"] == "shape" and self._is_tensor(v["input"]):
            return _Shape(self.spec(v["input"]).shape)
        raise self.unsupported(n, f"attribute {v['name']!r}")

    def f_narrow(self, n, a, v):
        dim = v["dim"] % len(self.spec(v["input"]).shape)
        if dim == 0:
            raise self.unsupported(n, "narrowing the batch dimension")
        return self.emit(n, "slice", [v["input"]], {"dim": dim, "start": v["start"], "end": v["start"] + v["length"]})

    def f_reshape(self, n, a, v):
        x, shape = v["input"], v["shape"]
        in_shape = self.spec(x).shape
        shape = list(shape if isinstance(shape, (tuple, list)) else (shape,))
        if not all(isinstance(s, int) for s in shape):
            raise self.unsupported(n, "reshape to a shape that is not made of integers")
        if -1 in shape:
            known = -1 * int(torch.tensor(shape).prod())
            shape[shape.index(-1)] = (int(torch.tensor(in_shape).prod()) // known) if known else 0
        if not shape or shape[0] != in_shape[0]:
            raise self.unsupported(n, f"reshape {list(in_shape)} -> {shape} must keep the batch dimension first")
        if len(shape) == 2 and len(in_shape) > 2:
            return self.emit(n, "flatten", [x], {"start_dim": 1, "end_dim": len(in_shape) - 1})
        return self.emit(n, "reshape", [x], {"shape": tuple(shape[1:])})


def lift(model: nn.Module, example_inputs) -> Graph:
    """Lift `model` into a verified Graph specialised to the shapes of `example_inputs`.

    `example_inputs` is a tensor or a tuple of tensors. The model is not modified (not even its mode).
    Raises UnsupportedOpError (op and module path) or ShapeError (inputs that do not fit).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"lift expects a torch.nn.Module, got {type(model).__name__}")
    examples = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    g = _Lifter(model, examples).run()
    return g.verify()
