"""Symbolic tracing with concrete shapes: torch.fx where every proxy also knows its example value.

Plain `fx.symbolic_trace` fails on the Python real models run in `forward`: `x.ndim` asserts (timm's
norm+act layers), `if pad_h > 0` on sizes computed from `x.size()` (TF "same" padding), `len(x)`,
iterating a tuple a layer returned. hwopt specialises a graph to the example input's shapes anyway, so
the tracer runs each op once more on (a copy of) the example input and answers shape questions with
concrete Python ints. Real tensors rather than fake ones: FakeTensorMode costs ~10 ms an op in dispatch,
more than computing a mobile net at its example size. What stays symbolic is tensor *data*:
`bool(tensor)` (data-dependent control flow) is refused with an error naming the module.

`ConcreteTracer.value(node)` gives a node's example value (computed on first demand: a forward that
asks nothing costs no forward pass at lift time).
"""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
from torch.fx.proxy import TraceError

VALUE = "hwopt_value"
ERROR = "hwopt_error"
# Tensor metadata answered concretely (the graph is specialised to the example shapes).
_META_ATTRS = frozenset({"shape", "ndim", "dtype", "device", "is_cuda", "layout", "is_quantized", "is_sparse",
                         "requires_grad", "is_meta"})
_META_METHODS = frozenset({"size", "dim", "numel", "nelement", "is_floating_point", "is_complex", "get_device",
                           "element_size", "is_contiguous", "ndimension"})


def value_of(a):
    """The example value behind a proxy, recursively through containers."""
    if isinstance(a, fx.Proxy):
        return a.tracer.value(a.node)
    if isinstance(a, (list, tuple)):
        return type(a)(value_of(x) for x in a) if not hasattr(a, "_fields") else type(a)(*(value_of(x) for x in a))
    if isinstance(a, dict):
        return {k: value_of(v) for k, v in a.items()}
    if isinstance(a, slice):
        return slice(value_of(a.start), value_of(a.stop), value_of(a.step))
    return a


def _name(target) -> str:
    return getattr(target, "__name__", str(target))


# torch.nn modules fx would keep as calls but whose forward is lifted op by op (nn.Upsample's F.interpolate
# needs the input's size, which a module rule does not see).
TRACED_THROUGH: tuple[type, ...] = (torch.nn.Upsample,)


# Shape questions the lifted IR answers without running the model (`ConcreteTracer.shape_of`).
_SHAPE_ATTRS = frozenset({"shape", "ndim"})
_SHAPE_METHODS = frozenset({"size", "dim", "ndimension", "numel", "nelement"})


class _ShapeView:
    """The shape-only face of a tensor: what `x.ndim`, `x.shape`, `x.size(d)`, `x.dim()`, `x.numel()` give."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = torch.Size(shape)
        self.ndim = len(shape)

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return self.ndim

    ndimension = dim

    def numel(self) -> int:
        return self.shape.numel()

    nelement = numel


class ConcreteProxy(fx.Proxy):
    def __getattr__(self, k: str):
        if k in _SHAPE_ATTRS or k in _SHAPE_METHODS:
            shape = self.tracer.known_shape(self.node)
            if shape is not None:
                return getattr(_ShapeView(shape), k)
        if k in _META_ATTRS or k in _META_METHODS:  # only these need the example value (`x.mean` does not)
            value = self.tracer.value(self.node)
            if isinstance(value, torch.Tensor):
                return getattr(value, k)
        return super().__getattr__(k)

    def __bool__(self) -> bool:
        value = self.tracer.value(self.node)
        if isinstance(value, (list, tuple)):
            return bool(value)
        raise TraceError(f"data-dependent control flow: the truth value of tensor {self.node.name!r} "
                         f"(`if tensor`, `and`/`or` on a tensor, or a tensor comparison in an assert)")

    def __len__(self) -> int:
        shape = self.tracer.known_shape(self.node)
        if shape:
            return shape[0]
        value = self.tracer.value(self.node)
        if isinstance(value, (list, tuple, torch.Tensor)):
            return len(value)
        raise TraceError(f"len() of {self.node.name!r}")

    def __iter__(self):
        shape = self.tracer.known_shape(self.node)
        if shape:
            return iter([self[i] for i in range(shape[0])])
        value = self.tracer.value(self.node)
        if isinstance(value, (list, tuple)):
            return iter([self[i] for i in range(len(value))])
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return iter([self[i] for i in range(value.shape[0])])
        return super().__iter__()

    def __index__(self):
        raise TraceError(f"tensor {self.node.name!r} used as a Python integer (data-dependent)")


class ConcreteTracer(fx.Tracer):
    """An fx tracer whose proxies carry example values; `leaf` decides which modules stay calls."""

    def __init__(self, examples: tuple[torch.Tensor, ...], leaf, shape_of=None):
        super().__init__()
        # shape_of(node) -> its shape or None: answers shape questions without computing example values
        # (the front end lifts the ops recorded so far and reads the IR's shape rules)
        self.shape_of = shape_of
        self.recorded: list[fx.Node] = []  # every node, in graph order
        # copies: an in-place op in forward must not write into the caller's tensors
        self.examples = [t.detach().clone() if isinstance(t, torch.Tensor) else t for t in examples]
        self._param_names: dict[int, str] | None = None
        self._buffer_names: dict[int, str] | None = None
        self.leaf = leaf
        self._placeholders = 0
        self._pending: list = []
        self.evaluating = False

    def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
        if isinstance(m, TRACED_THROUGH):
            return self.leaf(m)
        return self.leaf(m) or super().is_leaf_module(m, qualname)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return ConcreteProxy(node, self)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        if kind == "placeholder":
            i = self._placeholders  # past the examples: the parameter's default (fx passes it as the arg)
            proxy.node.meta[VALUE] = self.examples[i] if i < len(self.examples) else (args[0] if args else None)
            self._placeholders += 1
        else:
            # computed when something asks (a shape, a truth value): a model whose forward never asks costs
            # no forward pass at lift time
            self._pending.append((proxy.node, kind, target, args, kwargs))
        return proxy

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None) -> fx.Node:
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        self.recorded.append(node)
        return node

    def known_shape(self, node: fx.Node) -> tuple[int, ...] | None:
        """`node`'s shape if it is a tensor whose shape is known without running an op (its example value
        is computed already, or `shape_of` knows it); None otherwise."""
        value = node.meta.get(VALUE)
        if value is not None or VALUE in node.meta:
            return tuple(value.shape) if isinstance(value, torch.Tensor) else None
        return self.shape_of(node) if self.shape_of is not None else None

    def value(self, node: fx.Node):
        """The example value of `node`, computing every op recorded so far that is not computed yet."""
        if VALUE not in node.meta:
            pending, self._pending = self._pending, []
            for n, kind, target, args, kwargs in pending:
                try:
                    n.meta[VALUE] = self._value(kind, target, args, kwargs)
                except Exception as e:  # noqa: BLE001 - e.g. inputs that do not fit; reported at this node
                    n.meta[VALUE], n.meta[ERROR] = None, e
        return node.meta.get(VALUE)

    def _value(self, kind: str, target, args, kwargs) -> Any:
        # fx patches Module.__call__ / __getattr__ while tracing; `evaluating` makes those hooks (call_module,
        # getattr below) plain calls, so running an op here records no nodes of its own. (Reverting the
        # patches instead costs ~10 ms an op: every class attribute write invalidates type caches.)
        was, self.evaluating = self.evaluating, True
        try:
            if kind == "get_attr":
                obj: Any = self.root
                for part in str(target).split("."):
                    obj = getattr(obj, part)
                return obj
            a, kw = value_of(args), value_of(kwargs)
            with torch.no_grad():
                if kind == "call_function":
                    return target(*a, **kw)
                if kind == "call_method":
                    return getattr(a[0], target)(*a[1:], **kw)
                if kind == "call_module":
                    return self.root.get_submodule(target)(*a, **kw)
        finally:
            self.evaluating = was
        raise TraceError(f"cannot evaluate a {kind} node")

    def create_arg(self, a):
        # fx finds a buffer passed as an argument (the BN statistics timm's norm+act layers hand to
        # F.batch_norm) by scanning every buffer of the model, per argument: quadratic. By identity instead.
        if isinstance(a, torch.Tensor) and not isinstance(a, torch.nn.Parameter):
            if self._buffer_names is None:
                self._buffer_names = {}
                for name, b in self.root.named_buffers():
                    self._buffer_names.setdefault(id(b), name)
            name = self._buffer_names.get(id(a))
            if name is not None:
                return self.create_node("get_attr", name, (), {})
        return super().create_arg(a)

    def call_module(self, m, forward, args, kwargs):
        if self.evaluating:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if self.evaluating or not isinstance(attr_val, torch.nn.Parameter):
            return attr_val
        # fx's own lookup scans every parameter of the model on each access (quadratic on timm models)
        if self._param_names is None:
            self._param_names = {id(p): n for n, p in self.root.named_parameters()}
        name = self._param_names.get(id(attr_val))
        if name is None:
            return attr_val
        if name not in parameter_proxy_cache:
            parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
        return parameter_proxy_cache[name]


def _inplace(fn):
    def method(self, other):
        return self.tracer.create_proxy("call_function", fn, (self, other), {})
    return method


# fx proxies have no __iadd__ & co, so Python runs `z += y` as `z = z + y`: an out-of-place add that loses
# the write every alias of z sees. Record the in-place operator instead.
for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift", "rshift"):
    setattr(ConcreteProxy, f"__i{_name}__", _inplace(getattr(operator, f"i{_name}")))

