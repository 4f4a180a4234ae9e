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

import builtins
import keyword
import operator
from typing import Any

import torch
import torch.fx as fx
from torch.fx.proxy import TraceError

from .tensors import snapshot

VALUE = "hwopt_value"
ERROR = "hwopt_error"
MODULE = "hwopt_module"  # node.meta key: the path of the innermost module that made the node
# Tensor metadata answered concretely (the graph is specialised to the example shapes).
_META_ATTRS = frozenset({"shape", "ndim", "dtype", "device", "is_cuda", "layout", "is_quantized", "is_sparse",
                         "requires_grad", "is_meta"})
_META_METHODS = frozenset({"size", "dim", "numel", "nelement", "is_floating_point", "is_complex", "get_device",
                           "element_size", "is_contiguous", "ndimension"})


class Const:
    """A tensor that does not depend on the inputs, as an fx node argument: a parameter or buffer read in
    `forward`, or a value computed from those alone (eagerly while tracing, or folded at lift time)."""

    def __init__(self, t: torch.Tensor):
        self.t = t


def value_of(a):
    """The example value behind a proxy, recursively through containers."""
    if isinstance(a, fx.Proxy):
        return a.tracer.value(a.node)
    if isinstance(a, Const):
        return a.t
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
# Modules whose forward returns its input: traced through, they add no node (timm puts an nn.Identity in
# every norm+act layer's drop and in each block's drop-path; as nodes they were a third of a MobileNetV3).
TRANSPARENT: frozenset[type] = frozenset({torch.nn.Identity})


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

    def __init__(self, examples: tuple[torch.Tensor, ...], leaf, shape_of=None, modules: dict | None = None):
        super().__init__()
        self.modules = modules  # the root's named_modules(), if the caller has them
        # shape_of(node) -> its shape or None: answers shape questions without computing example values
        # (the front end lifts the ops recorded so far and reads the IR's shape rules)
        self.shape_of = shape_of
        self.recorded: list[fx.Node] = []  # every node, in graph order
        # copies (copy-on-write): an in-place op in forward must not write into the caller's tensors
        self.examples = [snapshot(t) if isinstance(t, torch.Tensor) else t for t in examples]
        self.leaf = leaf
        self._placeholders = 0
        self._pending: list = []
        self.evaluating = False
        self._target_names: dict = {}  # node target -> fx's name for it

    def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
        if type(m) in TRANSPARENT:
            return False
        if isinstance(m, TRACED_THROUGH):
            return self.leaf(m)
        return self.leaf(m) or super().is_leaf_module(m, qualname)

    def call_module(self, m: torch.nn.Module, forward, args, kwargs):
        """fx's Tracer.call_module without its per-call scope copy and call counting (the lifter reads only
        the innermost module's path): a leaf becomes a call_module node, any other module is traced through.
        On an exception the stack keeps the failing module on top (the front end names it)."""
        path = self.submodule_paths.get(m)
        if path is None:
            raise NameError(f"module {type(m).__name__} is not installed as a submodule of the traced model")
        self._calls += 1
        self.module_stack[self._calls] = (path, type(m))
        if self.is_leaf_module(m, path):
            out = self.create_proxy("call_module", path, args, kwargs)
        else:
            forward_globals = getattr(getattr(m, "forward", m), "__globals__", None)
            if forward_globals is not None:  # fx's autowrap of math functions the module's code calls
                fx._symbolic_trace._autowrap_check(self._patcher, forward_globals, self._autowrap_function_ids)
            out = forward(*args, **kwargs)
        self.module_stack.popitem()
        return out

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return ConcreteProxy(node, self)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        if proxy_factory_fn is None and type(args) is tuple and type(kwargs) is dict:
            # fx's TracerBase.create_proxy, minus its generic container walk for the usual argument shapes
            node = self.create_node(kind, target, tuple([self.create_arg(a) for a in args]),
                                    {k: self.create_arg(v) for k, v in kwargs.items()}, name, type_expr)
            proxy = ConcreteProxy(node, self)
        else:
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
        # fx's TracerBase.create_node also keeps a name -> scope table, a copy of the whole module stack per
        # node and optional stack traces; the lifter needs only the innermost module's path
        node = self._new_node(kind, target, args, kwargs, name, type_expr)
        if self.module_stack:
            node.meta[MODULE] = next(reversed(self.module_stack.values()))[0]
        self.recorded.append(node)
        return node

    def _new_node(self, kind, target, args, kwargs, name, type_expr) -> fx.Node:
        """fx's Graph.create_node, less its walk over every argument looking for SymInts (this tracer makes
        none: shapes are concrete ints), which was a quarter of tracing; the target's name is worked out once
        per target."""
        graph = self.graph
        namespace = graph._graph_namespace
        if name is None and kind == "call_module":
            # the module's path, made an identifier: unique unless the module is called twice (fx's namer
            # runs two regexes per node; a mobile net has ~150 module calls)
            name = target.replace(".", "_")
            if (name.isidentifier() and name not in namespace._used_names and not keyword.iskeyword(name)
                    and name not in builtins.__dict__):
                namespace._used_names.add(name)
                return self._insert_node(kind, target, args, kwargs, name, type_expr)
        if name is None:
            try:
                name = self._target_names.get(target)
                if name is None:
                    name = self._target_names[target] = graph._target_to_str(target)
            except TypeError:  # an unhashable target
                name = graph._target_to_str(target)
        return self._insert_node(kind, target, args, kwargs, namespace.create_name(name, None), type_expr)

    def _insert_node(self, kind, target, args, kwargs, name, type_expr) -> fx.Node:
        graph, namespace = self.graph, self.graph._graph_namespace
        node = fx.Node(graph, name, kind, target, args, kwargs or _NO_KWARGS, type_expr)
        namespace.associate_name_with_obj(name, node)
        graph._insert(node)
        graph._find_nodes_lookup_table.insert(node)
        graph._len += 1
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
        # While tracing, calling a module of the model records a node (`trace`); `evaluating` makes that a
        # plain call, so running an op here records no nodes of its own.
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
        if isinstance(a, fx.Proxy):  # the common cases first: fx's generic path costs ~10 us an argument
            return a.node
        if a is None or type(a) in _PLAIN:
            return a
        # A tensor argument that is not a proxy (a parameter or buffer, `F.batch_norm(x, self.running_mean,
        # ..., self.weight)`, or a constant computed from them) is kept as the value itself: fx would make a
        # get_attr node of it, found by scanning every tensor of the model per argument.
        if isinstance(a, torch.Tensor):
            return Const(a)
        return super().create_arg(a)

    def trace(self, root: torch.nn.Module, concrete_args=None) -> fx.Graph:
        """fx's Tracer.trace for a module root, intercepting module calls per instance instead of patching
        nn.Module.__call__ and __getattr__: assigning to nn.Module's attributes re-derives the type slots of
        every nn.Module subclass loaded (~1,400 with timm imported), ~3 ms per write, four writes per trace.
        Without the __getattr__ patch, parameters read in `forward` are the real tensors: an op on them alone
        runs eagerly (a constant, as the lifter would fold it) and one reaching a traced op is a `Const`
        argument (`create_arg`)."""
        st = fx._symbolic_trace
        flag, st._is_fx_tracing_flag = st._is_fx_tracing_flag, True
        hooked: list[tuple[torch.nn.Module, Any]] = []
        try:
            self.root = root
            fn = type(root).forward
            self.root_module_name = root._get_name()
            modules = self.modules if self.modules is not None else dict(root.named_modules())
            self.submodule_paths = {m: name for name, m in modules.items()}
            self.graph = fx.Graph(tracer_cls=type(self))
            self.tensor_attrs = {}  # fx's map of tensor attributes: unused, tensors are `Const` arguments
            fn_globals = fn.__globals__
            fn, args = self.create_args_for_root(fn, True, concrete_args)
            with st._new_patcher() as patcher:
                st._patch_wrapped_functions(patcher)
                st._autowrap_check(patcher, fn_globals, self._autowrap_function_ids)
                for module in self._autowrap_search:
                    st._autowrap_check(patcher, module.__dict__, self._autowrap_function_ids)
                self._patcher, self._calls = patcher, 0
                for m in modules.values():
                    hooked.append((m, m.__dict__.get("_compiled_call_impl", _ABSENT)))
                    m.__dict__["_compiled_call_impl"] = self._module_call(m)
                self.create_node("output", "output", (self.create_arg(fn(*args)),), {})
            self.submodule_paths = None
        finally:
            for m, old in hooked:
                if old is _ABSENT:
                    del m.__dict__["_compiled_call_impl"]
                else:
                    m.__dict__["_compiled_call_impl"] = old
            st._is_fx_tracing_flag = flag
        return self.graph

    def _module_call(self, m: torch.nn.Module):
        """What calling `m` does while tracing (nn.Module.__call__ defers to an instance's
        `_compiled_call_impl`): `call_module`, or the plain call while evaluating an example value."""
        def call(*args, **kwargs):
            if self.evaluating:
                return m._call_impl(*args, **kwargs)
            return self.call_module(m, m._call_impl, args, kwargs)
        return call


_PLAIN = frozenset({int, float, bool, str})
_NO_KWARGS = fx.immutable_collections.immutable_dict()
_ABSENT = object()


def _inplace(fn):
    def method(self, other):
        return self.tracer.create_proxy("call_function", fn, (self, other), {})
    return method


# fx proxies have no __iadd__ & co, so Python runs `z += y` as `z = z + y`: an out-of-place add that loses
# the write every alias of z sees. Record the in-place operator instead.
for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift", "rshift"):
    setattr(ConcreteProxy, f"__i{_name}__", _inplace(getattr(operator, f"i{_name}")))

