"""Lift a torch.nn.Module into an hwopt Graph, exactly, through torch.fx with concrete shapes.

Why fx and not torch.export: symbolic tracing keeps module boundaries (a Conv2d stays one call with
its module path and parameters), costs ~15 ms on ResNet-50 where torch.export costs ~0.45 s, and needs
no decomposition back from aten ops. Its classic limit, Python that inspects shapes (`x.ndim` asserts,
TF "same" padding computed from `x.size()`, `len(x)`), is lifted by `frontend_trace.ConcreteTracer`:
the graph is specialised to the example input anyway, so shape questions get concrete answers (the
example is run op by op only when something asks). Control flow on tensor *data* is refused with an
error naming the module. Every op is mapped by the tables below (rules as data); anything else is an
UnsupportedOpError naming each unsupported op found and its module path. Tensors written in place are
lifted only when no alias can see the write. The user's model is only read: parameters are copied into
the graph once per tensor (copy-on-write: `ir.snapshot`), so a module called twice shares its weights.
"""
from __future__ import annotations

import contextlib
import copy
import math
import operator
import warnings
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .errors import IRError, ShapeError, UnsupportedOpError
from .frontend_rules import (FUNCTIONS, METHODS, MODULE_RULES, NAMED_FUNCTIONS, SIGS, _attribute, _bind,  # noqa: F401
                             _layer_norm, _out_size, _pool_attrs, _REFUSED, module_lifter)
REFUSED = _REFUSED  # modules refused on purpose, and why (docs/ops.md lists them)
from .frontend_conv import ConvOps
from .frontend_trace import ERROR, MODULE, TRANSPARENT, ConcreteTracer
from .frontend_trace import Const as _Const
from .gcpause import collector_paused
from .ir import Graph, TensorSpec, _pair, snapshot
from .tensors import check_finite_at_once


class _Tensor(str):
    """A lifted tensor: the name of its graph node."""


class _GroupedChannels:
    """`x.view(N, g, C // g, H, W)` of an NCHW tensor, and after `.transpose(1, 2)` (`swapped`): the first
    steps of a channel shuffle, lifted as one channel_shuffle op when the view back to NCHW follows."""

    def __init__(self, x: str, groups: int, swapped: bool = False):
        self.x, self.groups, self.swapped = x, groups, swapped


class _Lazy:
    """A value the IR does not hold as one tensor, lifted once a consumer that knows it reads it. Any
    other consumer is an unsupported op, with `why`."""
    accepted: frozenset = frozenset()
    why = ""


class _Moved(_Lazy):
    """`x.permute(dims)` that moves the batch dim from the front (timm's qkv.reshape(B, N, 3, H, D)
    .permute(2, 0, 3, 1, 4)): unbinding or indexing its first dim selects along x's dim dims[0], after
    which the batch is first again."""
    accepted = frozenset({"unbind", "getitem", "select", "contiguous"})

    def __init__(self, x: str, dims: tuple[int, ...]):
        self.x, self.dims = x, dims
        self.why = f"permute {list(dims)} moves the batch dimension from the front (only unbinding/indexing the new first dim is lifted)"


class _Unbound(_Lazy):
    """`x.unbind(dim)` (of a tensor, or of a _Moved along its first dim): one selection per index, made
    when read (q, k, v = qkv.unbind(0) reads each once)."""
    accepted = frozenset({"getitem"})
    why = "the tuple unbind() returns, used other than by indexing"

    def __init__(self, x, dim: int, count: int):
        self.x, self.dim, self.count = x, dim, count
        self.made: dict[int, Any] = {}


class _BatchMerged(_Lazy):
    """`x.flatten(0, 1)` of tokens [B, N, C] (LeViT's Linear + BatchNorm1d): a BatchNorm1d over its
    features is a batch norm of x's channels-last features; reshaping back to x's shape ends it."""
    accepted = frozenset({"reshape", "reshape_as", "contiguous"})
    why = "flatten of the batch dimension with other dims (only a BatchNorm1d and a reshape back are lifted)"

    def __init__(self, x: str):
        self.x = x


class _Unsupported:
    """The value of an op that could not be lifted; ops reading it are skipped (one error per cause)."""


_INPLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
                      operator.imod, operator.ipow, operator.imatmul, operator.iand, operator.ior, operator.ixor}
_VIEW_OPS = ("reshape", "flatten", "slice", "identity", "permute", "transpose", "pieces")


class _Shape(tuple):
    """The value of `x.shape` / `x.size()` during lifting: concrete ints (shapes are specialised)."""


class _Lifter(ConvOps):
    def __init__(self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...], modules: dict[str, nn.Module]):
        self.model, self.examples = model, example_inputs
        self.g = Graph()
        self.env: dict[fx.Node, Any] = {}
        self.modules = modules  # model.named_modules()
        self.snapshots: dict[int, torch.Tensor] = {}  # id(model tensor) -> its one copy in the graph
        self.errors: list[UnsupportedOpError] = []
        self.shaped: dict[tuple, tuple] = {}  # (id(constant), rank) -> (its broadcastable view, the constant)
        self.lifters: dict[int, str | None] = {}  # id(module of the model) -> module_lifter(module)

    def snap(self, t: torch.Tensor) -> torch.Tensor:
        # one copy per model tensor: a module called twice lifts to two nodes holding the *same* tensors,
        # which the IR counts once, lowers to one shared module, and prunes alike
        s = self.snapshots.get(id(t))
        if s is None:
            s = self.snapshots[id(t)] = snapshot(t)
            self._keep_alive = getattr(self, "_keep_alive", []) + [t]
        return s

    def lifter_of(self, m: nn.Module) -> str | None:
        """module_lifter(m), asked once per module (the tracer, `known` and `lift_node` all ask)."""
        try:
            return self.lifters[id(m)]
        except KeyError:
            name = self.lifters[id(m)] = module_lifter(m)
            return name

    def where(self, n: fx.Node) -> str:
        if n.op == "call_module":
            return str(n.target)
        return n.meta.get(MODULE, "")

    def spec(self, v) -> TensorSpec:
        return self.g[v].spec

    def emit(self, n: fx.Node, op: str, inputs, attrs=None, params=None, name=None) -> str:
        name = self.g.unique_name(name or n.name)
        params = {k: self.snap(v) for k, v in (params or {}).items()}
        try:
            self.g.add(name, op, inputs, attrs, params, source=self.where(n))
        except IRError as e:
            shapes = ", ".join(str(list(self.spec(i).shape)) for i in inputs)
            raise ShapeError(f"example input(s) {[list(t.shape) for t in self.examples]} do not fit the model at "
                             f"{self.describe(n)}: {e} (its input shapes: {shapes})") from None
        return _Tensor(name)

    def known(self, n: fx.Node) -> bool:
        """Is `n`'s op in the tables (whether or not its arguments will fit)?"""
        if n.op == "call_module":
            m = self.modules[str(n.target)]
            return type(m) in MODULE_RULES or self.lifter_of(m) is not None
        if n.op == "call_function":
            return _function_name(n.target) is not None
        if n.op == "call_method":
            return n.target in METHODS
        return True

    def writes_input(self, n: fx.Node) -> bool:
        """Does `n` write into its first argument (`x += y`, `x.add_(y)`, `relu(x, inplace=True)`, a module
        built with inplace=True)?"""
        if not n.args or not isinstance(n.args[0], fx.Node):
            return False
        if n.kwargs.get("inplace") is True:
            return True
        if n.op == "call_function":
            name = getattr(n.target, "__name__", "")
            return n.target in _INPLACE_OPERATORS or (name.endswith("_") and not name.startswith("_"))
        if n.op == "call_method":
            return n.target.endswith("_") and not n.target.startswith("_")
        if n.op == "call_module":
            return _attribute(self.modules[str(n.target)], "inplace") is True
        return False

    def misfit(self, n: fx.Node) -> ShapeError:
        err = str(n.meta[ERROR]).splitlines()[0] if str(n.meta[ERROR]) else type(n.meta[ERROR]).__name__
        return ShapeError(f"example input(s) {[list(t.shape) for t in self.examples]} do not fit the model at "
                          f"{self.describe(n)}: {err}")

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
        # In eager mode an in-place op is seen by every other reader of its input and of every tensor
        # that input is a view of; as a value it is only equivalent when this op is the sole reader all
        # the way up the chain of views.
        while isinstance(arg, fx.Node):
            if arg.op == "placeholder":
                raise self.unsupported(n, f"in-place op writes into the model's input {arg.name!r}")
            if len(arg.users) > 1:
                raise self.unsupported(n, f"in-place op on tensor {arg.name!r}, which {len(arg.users) - 1} other op(s) "
                                          f"also read (lifting it out of place would change their result)")
            lifted = self.env.get(arg)
            src = self.g[lifted] if isinstance(lifted, _Tensor) and lifted in self.g else None
            is_view = (src is not None and src.op in _VIEW_OPS) or isinstance(lifted, tuple) or (
                arg.op in ("call_method", "call_function") and getattr(arg.target, "__name__", arg.target) in
                ("getitem", "view", "reshape", "flatten", "narrow", "permute", "transpose", "contiguous", "chunk", "split",
                 "unflatten", "squeeze", "unsqueeze", "expand"))
            if not is_view:
                return
            arg = arg.args[0] if arg.args else None

    def val(self, a):
        if isinstance(a, fx.Node):
            return self.env[a]
        if isinstance(a, (list, tuple)):
            return type(a)(self.val(x) for x in a)
        return a

    def run(self) -> Graph:
        tracer = self.tracer = ConcreteTracer(self.examples, shape_of=self.lifted_shape, modules=self.modules,
                                              leaf=lambda m: type(m) in MODULE_RULES or self.lifter_of(m) is not None)
        self.lifted, self.speculating, self.placeholders = 0, True, None
        try:
            fxg = tracer.trace(self.model)
        except Exception as e:  # noqa: BLE001 - fx raises many kinds; all mean "not symbolically traceable"
            failed = [n for n in tracer.graph.nodes if ERROR in n.meta]
            if failed:  # an op failed on the example's shapes, and the Python after it needed its result
                raise self.misfit(failed[0]) from None
            stack = list(tracer.module_stack.values())
            raise UnsupportedOpError("data-dependent control flow or untraceable Python", stack[-1][0] if stack else "",
                                     f"tracing failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        nodes = list(fxg.nodes)
        placeholders = [n for n in nodes if n.op == "placeholder"]
        required = [p for p in placeholders if not p.args]  # fx keeps a parameter's default as its arg
        if not len(required) <= len(self.examples) <= len(placeholders):
            raise ShapeError(f"the model's forward takes {len(placeholders)} input(s) "
                             f"({', '.join(p.name for p in placeholders)}), got {len(self.examples)} example input(s)")
        if not self.speculation_holds(nodes):
            self.g, self.env, self.errors, self.shaped, self.lifted = Graph(), {}, [], {}, 0
        for n in nodes[self.lifted:]:
            self.step(n, placeholders)
        if self.errors:
            first = self.errors[0]
            if len(self.errors) == 1:
                raise first
            listing = "; ".join(str(e).removeprefix("unsupported op ") for e in self.errors)
            raise UnsupportedOpError(first.op, first.module_path,
                                     f"{len(self.errors)} unsupported ops: {listing}", found=self.errors)
        return self.g

    def step(self, n: fx.Node, placeholders: list[fx.Node], speculative: bool = False) -> None:
        """Lift fx node `n` into self.env (an unsupported op is recorded in self.errors)."""
        # (values are _Unsupported only after an error was recorded)
        if self.errors and any(isinstance(self.env.get(a), _Unsupported) for a in n.all_input_nodes):
            # downstream of an unsupported op: not lifted, but an op outside the tables is reported too
            self.env[n] = _Unsupported()
            if not self.known(n):
                self.errors.append(self.unsupported(n))
            return
        try:
            self.env[n] = self.lift_node(n, placeholders)
            if ERROR in n.meta:
                raise self.misfit(n)
            if not speculative and self.writes_input(n):  # a speculative step is checked once all users are known
                self.check_inplace(n, n.args[0])
        except UnsupportedOpError as e:
            self.errors.append(e)
            self.env[n] = _Unsupported()
        except ShapeError:
            raise
        except (ValueError, TypeError, KeyError, IndexError) as e:
            self.errors.append(self.unsupported(n, str(e)))
            self.env[n] = _Unsupported()

    # Speculative lifting: timm's norm+act layers ask `x.ndim` of nearly every tensor while being traced.
    # Computing example values to answer would run the whole forward at lift time (most of a mobile net's
    # lift); instead the nodes recorded so far are lifted as they are traced, and the IR's shape rules
    # answer. Only when the speculation held (no unsupported op, misfit or unsafe in-place write, which
    # depend on the finished graph) is it kept; otherwise everything is lifted again after tracing, as
    # without it.
    def lifted_shape(self, node: fx.Node) -> tuple[int, ...] | None:
        """The shape of traced `node` from the lifted IR, lifting the nodes recorded up to it (None: unknown)."""
        if not self.speculating:
            return None
        recorded, tracer = self.tracer.recorded, self.tracer
        if self.placeholders is None:  # the forward is running: every placeholder exists
            self.placeholders = [n for n in recorded if n.op == "placeholder"]
            if len(self.placeholders) < len(self.examples):
                self.speculating = False
                return None
        was, tracer.evaluating = tracer.evaluating, True  # modules the lifter calls record no nodes
        try:
            while node not in self.env and self.lifted < len(recorded):
                n = recorded[self.lifted]
                self.step(n, self.placeholders, speculative=True)
                if self.errors or isinstance(self.env.get(n), _Unsupported):
                    self.speculating = False
                    return None
                self.lifted += 1
        except Exception:  # noqa: BLE001 - lifted again after tracing, where the error is reported as usual
            self.speculating = False
            return None
        finally:
            tracer.evaluating = was
        v = self.env.get(node)
        return self.g[v].spec.shape if isinstance(v, _Tensor) else None

    def speculation_holds(self, nodes: list[fx.Node]) -> bool:
        """Are the nodes lifted while tracing lifted as they would be now that the graph is complete?"""
        if not self.speculating or any(a is not b for a, b in zip(self.tracer.recorded[:self.lifted], nodes)):
            return False
        try:
            for n in nodes[:self.lifted]:
                if ERROR in n.meta:
                    return False
                if self.writes_input(n):
                    self.check_inplace(n, n.args[0])
        except UnsupportedOpError:
            return False
        return True

    def lift_node(self, n: fx.Node, placeholders: list[fx.Node]):
        if n.op == "placeholder":
            if placeholders.index(n) >= len(self.examples):
                return n.args[0]  # an optional forward argument left at its default (e.g. attn_mask=None)
            t = self.examples[placeholders.index(n)]
            if not isinstance(t, torch.Tensor) or t.dim() < 2:
                raise ShapeError(f"example input {n.name!r} must be a tensor with a batch dimension, got "
                                 f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
            return _Tensor(self.g.add(self.g.unique_name(n.name), "input",
                                      spec=TensorSpec(tuple(t.shape), str(t.dtype).removeprefix("torch."))).name)
        if n.op == "output":
            outs = n.args[0]
            outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
            if not all(isinstance(o, fx.Node) and isinstance(self.env[o], _Tensor) for o in outs):
                raise self.unsupported(n, "the model must return a tensor or a tuple/list of tensors")
            return self.g.add("output", "output", [self.env[o] for o in outs]).name
        if n.op == "call_module":
            m = self.modules[str(n.target)]
            if len(n.args) == 1 and not n.kwargs and isinstance(n.args[0], fx.Node):
                x = self.env[n.args[0]]
                rule = MODULE_RULES.get(type(m))
                if type(x) is _Tensor and rule is not None and self.lifter_of(m) is None:
                    # the usual case, one lifted tensor into a module with a rule: what the general path
                    # below does for it, without its walks over the arguments
                    op, attrs, params = rule(m)
                    return self.emit(n, op, [x], attrs, params, name=str(n.target))
            args, kwargs = self.val(n.args), self.val(dict(n.kwargs))
            if not _has(args, kwargs, _Tensor) and _has(args, kwargs, _Const):
                return self.fold(n, args, kwargs)  # e.g. a conv over a positional-encoding grid
            lifter = self.lifter_of(m)
            if lifter is not None:
                self.check_lazy(n, None, (args, kwargs))
                return getattr(self, "m_" + lifter)(n, m, args, kwargs)
            if isinstance(m, nn.BatchNorm1d) and len(args) == 1 and isinstance(args[0], _BatchMerged):
                return self.batch_norm_tokens(n, m, args[0])
            self.check_lazy(n, None, (args, kwargs))
            rule = MODULE_RULES.get(type(m))
            if rule is None:
                why = _REFUSED.get(type(m), "")
                raise self.unsupported(n, f"no rule for {type(m).__module__}.{type(m).__name__}" + (f": {why}" if why else ""))
            if len(n.args) != 1 or n.kwargs or not isinstance(n.args[0], fx.Node):
                raise self.unsupported(n, "expected exactly one tensor argument")
            op, attrs, params = rule(m)
            return self.emit(n, op, [self.env[n.args[0]]], attrs, params, name=str(n.target))
        if n.op == "get_attr":  # a module passed to an op (tensors are `_Const` arguments)
            obj = self.model
            for part in str(n.target).split("."):
                obj = getattr(obj, part)
            if not isinstance(obj, torch.Tensor):
                raise self.unsupported(n, f"attribute {n.target!r} is a {type(obj).__name__}, not a tensor")
            return _Const(obj)
        if n.op == "call_function":
            name = _function_name(n.target)
        elif n.op == "call_method":
            name = METHODS.get(n.target)
        else:
            raise self.unsupported(n, f"node kind {n.op}")
        args, kwargs = self.val(n.args), self.val(dict(n.kwargs))
        if not _has(args, kwargs, _Tensor) and _has(args, kwargs, _Const):
            return self.fold(n, args, kwargs)
        self.check_lazy(n, name, (args, kwargs))
        if name is None:
            return self.passthrough(n)
        a = _bind(name.rstrip("!"), n.args, n.kwargs)
        return getattr(self, "f_" + name.rstrip("!"))(n, a, {k: self.val(v) for k, v in a.items()})

    def check_lazy(self, n: fx.Node, name: str | None, values) -> None:
        """A lazy value (`_Lazy`) may only reach the handlers that know it."""
        for v in _flat(values):
            if isinstance(v, _Lazy) and (name is None or name.rstrip("!") not in v.accepted):
                raise self.unsupported(n, v.why)

    def fold(self, n: fx.Node, args, kwargs) -> _Const:
        """An op on constants only (e.g. `self.gamma.view(1, -1, 1, 1)`): computed now, on the real tensors."""
        real = lambda v: v.t if isinstance(v, _Const) else v  # noqa: E731
        args = tuple(real(a) if not isinstance(a, (list, tuple)) else type(a)(real(x) for x in a) for a in args)
        kwargs = {k: real(v) for k, v in kwargs.items()}
        with torch.no_grad():
            if n.op == "call_module":
                out = self.modules[str(n.target)](*args, **kwargs)
            elif n.op == "call_function":
                out = n.target(*args, **kwargs)
            else:
                out = getattr(args[0], n.target)(*args[1:], **kwargs)
        if not isinstance(out, torch.Tensor):
            raise self.unsupported(n, "an op on constant tensors that does not return a tensor")
        return _Const(out)

    def passthrough(self, n: fx.Node):
        """An op outside the tables that returned one of its inputs unchanged at the example (stochastic
        depth and drop-path at inference, assertions, `x.to(x.dtype)`): it is the identity here."""
        out = self.tracer.value(n)
        if isinstance(out, torch.Tensor) and not self.writes_input(n):
            for a in n.all_input_nodes:
                if self.tracer.value(a) is out and isinstance(self.env.get(a), _Tensor):
                    return self.env[a]
        raise self.unsupported(n)

    # --- functional ops: `a` holds raw fx args, `v` their lifted values -----------------------------
    def _is_tensor(self, v) -> bool:
        return isinstance(v, _Tensor)

    def _binary(self, op, n, v):
        x, y = v["input"], v["other"]
        if v.get("alpha", 1) != 1 or v.get("rounding_mode") is not None:
            raise self.unsupported(n, "alpha / rounding_mode arguments")
        x, y = self._scalar_or_const(n, x, y), self._scalar_or_const(n, y, x)
        if self._is_tensor(x) and self._is_tensor(y):
            return self.emit(n, op, [x, y])
        if isinstance(x, (int, float)) and isinstance(y, (int, float)):
            return {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}[op](x, y)
        if self._is_tensor(x) and isinstance(y, (int, float)):
            return self.emit(n, op, [x], {"scalar": float(y), "reverse": False})
        if self._is_tensor(y) and isinstance(x, (int, float)):
            return self.emit(n, op, [y], {"scalar": float(x), "reverse": True})
        raise self.unsupported(n, "operands must be tensors or Python numbers")

    def _scalar_or_const(self, n, v, other, scalar: bool = True):
        """A constant operand (layer scale `x * self.gamma`): a number when it holds one value (and `scalar`),
        else a `const` node of the other operand's rank (leading singleton dims), so it broadcasts as in torch."""
        if not isinstance(v, _Const):
            return v
        t = v.t
        if t.numel() == 1 and scalar:
            return float(t.detach().reshape(()))
        if not self._is_tensor(other):
            raise self.unsupported(n, "an op on two constants")
        rank = len(self.spec(other).shape)
        if t.dim() > rank or (t.dim() == rank and t.shape[0] != 1):
            raise self.unsupported(n, f"a constant of shape {tuple(t.shape)} that varies along the batch dimension")
        if not t.is_floating_point():
            raise self.unsupported(n, f"a constant of dtype {t.dtype}")
        key = (id(t), rank)  # one tensor per constant: a layer scale read twice stays one parameter
        if key not in self.shaped:
            self.shaped[key] = (t.reshape((1,) * (rank - t.dim()) + tuple(t.shape)), t)
        shaped = self.shaped[key][0]
        axis = self.spec(other).axis
        return self.emit(n, "const", [], {"shape": tuple(shaped.shape), "axis": axis}, {"value": shaped},
                         name=f"{n.name}_const")

    def _batch_const(self, n, c: _Const, ref: str) -> str:
        """A constant operand of a concat with tensor `ref`: a `const` node of batch 1 (the lowering expands
        it to the batch); a constant made for the example's batch (`cls_token.expand(B, -1, -1)`) must hold
        the same value for every sample."""
        t, rank = c.t, len(self.spec(ref).shape)
        if t.dim() == rank and t.shape[0] > 1:
            if not bool((t == t[:1]).all()):
                raise self.unsupported(n, f"a constant of shape {tuple(t.shape)} that varies along the batch dimension")
            t = t[:1]
        return self._scalar_or_const(n, _Const(t) if t is not c.t else c, ref, scalar=False)

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
    f_sigmoid, f_silu, f_tanh = _unary("sigmoid"), _unary("silu"), _unary("tanh")

    def f_contiguous(self, n, a, v):
        return v["input"] if isinstance(v["input"], (_GroupedChannels, _Lazy)) else self.emit(n, "identity", [v["input"]])

    def f_permute(self, n, a, v):
        x, dims = v["input"], v["dims"]
        dims = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
        if isinstance(x, _GroupedChannels):
            return self._swap(n, x, dims)
        rank = len(self.spec(x).shape)
        dims = tuple(int(d) % rank for d in dims)
        if len(dims) != rank or sorted(dims) != list(range(rank)):
            raise self.unsupported(n, f"permute {list(dims)} of a rank-{rank} tensor")
        if dims[0] != 0:
            return _Moved(x, dims)
        if dims == tuple(range(rank)):
            return self.emit(n, "identity", [x])
        return self.emit(n, "permute", [x], {"dims": dims})

    def f_transpose(self, n, a, v):
        x = v["input"]
        if isinstance(x, _GroupedChannels):
            return self._swap(n, x, tuple(sorted((v["dim0"] % 5, v["dim1"] % 5))))
        rank = len(self.spec(x).shape)
        d0, d1 = v["dim0"] % rank, v["dim1"] % rank
        dims = list(range(rank))
        dims[d0], dims[d1] = dims[d1], dims[d0]
        return self.f_permute(n, a, {"input": x, "dims": tuple(dims)})

    def _swap(self, n, x: "_GroupedChannels", dims) -> "_GroupedChannels":
        if dims not in ((1, 2), (0, 2, 1, 3, 4)) or x.swapped:
            raise self.unsupported(n, f"a permute {list(dims)} of channels viewed as groups (only a channel shuffle is lifted)")
        return _GroupedChannels(x.x, x.groups, swapped=True)

    def f_layer_norm(self, n, a, v):
        p = self._const(n, v, "weight", "bias")
        op, attrs, _ = _layer_norm(v["normalized_shape"], v["eps"], None, None)
        return self.emit(n, op, [v["input"]], attrs, p)

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
        ref = next((x for x in xs if self._is_tensor(x)), None)
        if ref is not None:  # a class token (a parameter, expanded to the batch)
            xs = [self._batch_const(n, x, ref) if isinstance(x, _Const) else x for x in xs]
        if not all(self._is_tensor(x) for x in xs):
            raise self.unsupported(n, "concat of non-tensors")
        rank = len(self.spec(xs[0]).shape)
        return self.emit(n, "concat", xs, {"dim": v["dim"] % rank})

    def f_flatten(self, n, a, v):
        rank = len(self.spec(v["input"]).shape)
        if v["start_dim"] % rank == 0:
            if v["end_dim"] % rank == 1 and rank == 3:
                return _BatchMerged(v["input"])
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

    def _reduce(op):
        def f(self, n, a, v):
            rank = len(self.spec(v["input"]).shape)
            dims = v["dim"]
            if dims is None or v["dtype"] is not None:
                raise self.unsupported(n, f"{op} needs explicit dims (the batch dimension is kept)")
            dims = tuple(sorted(d % rank for d in ((dims,) if isinstance(dims, int) else dims)))
            return self.emit(n, op, [v["input"]], {"dims": dims, "keepdim": bool(v["keepdim"])})
        return f

    f_mean, f_sum = _reduce("mean"), _reduce("sum")

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
        if isinstance(src, _Unbound):
            if not isinstance(idx, int):
                raise self.unsupported(n, f"indexing the result of unbind() with {idx!r}")
            idx %= src.count
            if idx not in src.made:
                src.made[idx] = self.select(n, src.x, src.dim, idx)
            return src.made[idx]
        if isinstance(src, _Moved):
            if not isinstance(idx, int):
                raise self.unsupported(n, src.why)
            return self.select(n, src, 0, idx)
        if isinstance(src, _Multi):
            item = src.items[idx]
            if isinstance(item, str) and not isinstance(item, _Tensor):
                raise self.unsupported(n, item)
            return item
        if isinstance(src, tuple) and src and src[0] == "pieces":
            _, x, dim, bounds = src
            start, end = bounds[idx]
            return self.emit(n, "slice", [x], {"dim": dim, "start": start, "end": end})
        if isinstance(src, _Shape):
            r = src[idx]
            return _Shape(r) if isinstance(r, tuple) else r
        if self._is_tensor(src):
            return self._basic_slices(n, src, idx)
        raise self.unsupported(n, "indexing or slicing a tensor")

    def _basic_slices(self, n, x, idx):
        """`x[:, a:b, ...]` (GhostNet cuts channels so), `x[:, 0]` (a class token), `x[:, None]`, `x[:, ::2]`:
        one slice per narrowed dim, a select per integer, a reshape per None. Tensor indices are not lifted."""
        idx = idx if isinstance(idx, tuple) else (idx,)
        if sum(i is Ellipsis for i in idx) > 1 or not all(isinstance(i, (slice, int)) or i is Ellipsis or i is None
                                                          for i in idx):
            raise self.unsupported(n, f"indexing a tensor with {idx!r} (slices, integers and None are lifted)")
        rank = len(self.spec(x).shape)
        if Ellipsis in idx:
            k = idx.index(Ellipsis)
            used = sum(isinstance(i, (slice, int)) for i in idx)
            idx = idx[:k] + (slice(None),) * (rank - used) + idx[k + 1:]
        out, dim = x, 0  # dim: position in `out` of the next input dim
        for i in idx:
            shape = self.spec(out).shape
            if i is None:
                if dim == 0:
                    raise self.unsupported(n, "a new dim before the batch dimension")
                out = self.emit(n, "reshape", [out], {"shape": (*shape[1:dim], 1, *shape[dim:])})
                dim += 1
                continue
            if dim == 0 and i != slice(None):
                raise self.unsupported(n, f"indexing the batch dimension with {i!r}")
            if isinstance(i, int):
                out = self.select(n, out, dim, i)
                continue
            start, end, step = i.indices(shape[dim])
            if (start, end, step) != (0, shape[dim], 1):
                if step < 1 or end <= start:
                    raise self.unsupported(n, f"slice {i} of dim {dim} (reversed or empty)")
                attrs = {"dim": dim, "start": start, "end": min(end, shape[dim])}
                out = self.emit(n, "slice", [out], attrs if step == 1 else {**attrs, "step": step})
            dim += 1
        return out if out is not x else self.emit(n, "identity", [x])

    def select(self, n, x, dim: int, index: int):
        """`x.select(dim, index)`: a one-wide slice, then a reshape that drops the dim. On a `_Moved`
        tensor, dim 0 is its dims[0]; the permute of the other dims follows (the batch first again)."""
        if isinstance(x, _Moved):
            if dim != 0:
                raise self.unsupported(n, x.why)
            inner, rest = x.dims[0], [d - (d > x.dims[0]) for d in x.dims[1:]]
            y = self.select(n, x.x, inner, index)
            return self.f_permute(n, {}, {"input": y, "dims": tuple(rest)})
        shape = self.spec(x).shape
        dim %= len(shape)
        if dim == 0:
            raise self.unsupported(n, "selecting from the batch dimension")
        index %= shape[dim]
        if shape[dim] > 1:
            x = self.emit(n, "slice", [x], {"dim": dim, "start": index, "end": index + 1})
        return self.emit(n, "reshape", [x], {"shape": (*shape[1:dim], *shape[dim + 1:])})

    def f_size(self, n, a, v):
        shape = _Shape(self.spec(v["input"]).shape)
        return shape if v["dim"] is None else shape[v["dim"]]

    def _const(self, n, v, *names) -> dict[str, torch.Tensor]:
        out = {}
        for k in names:
            if v[k] is None:
                continue
            if not isinstance(v[k], _Const):
                raise self.unsupported(n, f"argument {k!r} must be a parameter or buffer of the model, not computed from the input")
            out[k] = v[k].t
        return out

    def f_batch_norm(self, n, a, v):
        if v["training"]:
            raise self.unsupported(n, "batch norm with batch statistics (training=True); lift the model in eval mode")
        p = self._const(n, v, "running_mean", "running_var", "weight", "bias")
        if "running_mean" not in p or "running_var" not in p:
            raise self.unsupported(n, "batch norm without running statistics has no inference semantics")
        attrs = dict(num_features=p["running_mean"].numel(), eps=float(v["eps"]), momentum=v["momentum"])
        return self.emit(n, "batch_norm", [v["input"]], attrs, p)

    def f_conv2d(self, n, a, v):
        p = self._const(n, v, "weight", "bias")
        w = p["weight"]
        if w.dim() != 4:
            raise self.unsupported(n, f"conv2d weight of shape {tuple(w.shape)}")
        k, s, d, pad = _pair(tuple(w.shape[2:])), _pair(v["stride"]), _pair(v["dilation"]), v["padding"]
        if isinstance(pad, str):
            if pad == "valid":
                pad = (0, 0)
            elif pad == "same" and all(d[i] * (k[i] - 1) % 2 == 0 for i in range(2)):
                pad = tuple(d[i] * (k[i] - 1) // 2 for i in range(2))
            else:
                raise self.unsupported(n, f"padding={pad!r} with kernel {k} and dilation {d} (asymmetric)")
        groups = int(v["groups"])
        attrs = dict(in_channels=w.shape[1] * groups, out_channels=w.shape[0], kernel_size=k, stride=s,
                     padding=_pair(pad), dilation=d, groups=groups)
        return self.emit(n, "conv2d", [v["input"]], attrs, {"weight": w, **({"bias": p["bias"]} if "bias" in p else {})})

    def f_linear(self, n, a, v):
        p = self._const(n, v, "weight", "bias")
        w = p["weight"]
        return self.emit(n, "linear", [v["input"]], dict(in_features=w.shape[1], out_features=w.shape[0]), p)

    def f_leaky_relu(self, n, a, v):
        return self.emit(n, "leaky_relu", [v["input"]], {"negative_slope": float(v["negative_slope"])})

    def f_group_norm(self, n, a, v):
        p = self._const(n, v, "weight", "bias")
        c = self.spec(v["input"]).channels
        return self.emit(n, "group_norm", [v["input"]], {"num_groups": int(v["num_groups"]), "num_channels": c,
                                                        "eps": float(v["eps"])}, p)

    def f_pad(self, n, a, v):
        pads = tuple(int(q) for q in v["pad"])
        rank = len(self.spec(v["input"]).shape)
        if v["mode"] != "constant" or len(pads) > 2 * (rank - 2) or len(pads) % 2:
            raise self.unsupported(n, f"pad {list(pads)} in mode {v['mode']!r} (constant padding of spatial dims only)")
        return self.emit(n, "pad", [v["input"]], {"pads": pads, "value": float(v["value"] or 0.0)})

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
        shape = list(shape if isinstance(shape, (tuple, list)) else (shape,))
        if isinstance(x, _BatchMerged):
            if _resolve(shape, self.spec(x.x).shape) == list(self.spec(x.x).shape):
                return x.x
            raise self.unsupported(n, x.why)
        if isinstance(x, _GroupedChannels):
            in_shape = self.spec(x.x).shape
            if x.swapped and _resolve(shape, in_shape) == list(in_shape):
                return self.emit(n, "channel_shuffle", [x.x], {"groups": x.groups})
            raise self.unsupported(n, f"a view {shape} of channels viewed as groups (only a channel shuffle is lifted)")
        in_shape = self.spec(x).shape
        target = _resolve(shape, in_shape) if all(isinstance(s, int) for s in shape) else None
        if (target is not None and len(in_shape) == 4 and len(target) == 5 and target[0] == in_shape[0]
                and target[1] * target[2] == in_shape[1] and target[3:] == list(in_shape[2:]) and self.spec(x).axis == 1):
            return _GroupedChannels(x, target[1])
        if not all(isinstance(s, int) for s in shape):
            raise self.unsupported(n, "reshape to a shape that is not made of integers")
        if -1 in shape:
            known = -1 * int(torch.tensor(shape).prod())
            shape[shape.index(-1)] = (int(torch.tensor(in_shape).prod()) // known) if known else 0
        if shape and shape[0] != in_shape[0]:
            return self.refold(n, x, in_shape, shape)
        if not shape:
            raise self.unsupported(n, f"reshape {list(in_shape)} -> {shape} must keep the batch dimension first")
        if len(shape) == 2 and len(in_shape) > 2:
            return self.emit(n, "flatten", [x], {"start_dim": 1, "end_dim": len(in_shape) - 1})
        return self.emit(n, "reshape", [x], {"shape": tuple(shape[1:])})


    def refold(self, n, x, in_shape, shape):
        """A reshape that moves dims into or out of the batch dim (MobileViT: [B, P, N, C] -> [B * P, N, C] and
        back). The batch is the outermost factor of dim 0 (a row-major reshape keeps it so), so it is a reshape
        keeping dim 0, then `fold_batch`; or `unfold_batch`, then a reshape keeping the new dim 0."""
        b = self.examples[0].shape[0]
        if in_shape[0] % b or shape[0] % b:
            raise self.unsupported(n, f"reshape {list(in_shape)} -> {shape} mixes the batch of {b} with other dims")
        f, g = in_shape[0] // b, shape[0] // b
        if g > f and g % f == 0 and math.prod(in_shape[1:]) % (g // f) == 0:
            y = self.emit(n, "reshape", [x], {"shape": (g // f, *shape[1:])})
            return self.emit(n, "fold_batch", [y])
        if g < f and f % g == 0:
            y = self.emit(n, "unfold_batch", [x], {"factor": f // g})
            return self.emit(n, "reshape", [y], {"shape": tuple(shape[1:])})
        raise self.unsupported(n, f"reshape {list(in_shape)} -> {shape} must keep the batch dimension first")

    # --- tokens and attention ---------------------------------------------------------------------
    def f_matmul(self, n, a, v):
        x, y = v["input"], v["other"]
        if isinstance(x, _Const) and isinstance(y, _Const):
            raise self.unsupported(n, "a matmul of two constants")
        x, y = self._scalar_or_const(n, x, y, scalar=False), self._scalar_or_const(n, y, x, scalar=False)
        if not (self._is_tensor(x) and self._is_tensor(y)):
            raise self.unsupported(n, "matmul operands must be tensors")
        if len(self.spec(x).shape) < 2 or len(self.spec(y).shape) < 2:
            raise self.unsupported(n, "matmul of a vector (rank 1)")
        return self.emit(n, "matmul", [x, y])

    def f_scaled_dot_product_attention(self, n, a, v):
        q, k, val, mask = v["query"], v["key"], v["value"], v["attn_mask"]
        if v["dropout_p"] or v["enable_gqa"]:
            raise self.unsupported(n, "attention dropout (dropout_p > 0) or enable_gqa")
        if not all(self._is_tensor(t) for t in (q, k, val)):
            raise self.unsupported(n, "query, key and value must be computed from the input")
        if mask is not None:
            mask = self._scalar_or_const(n, mask, q, scalar=False)
            if not self._is_tensor(mask) or self.spec(mask).dtype == "bool":
                raise self.unsupported(n, "an attention mask that is not a float tensor")
        scale = v["scale"] if v["scale"] is not None else 1.0 / math.sqrt(self.spec(q).shape[-1])
        return self.emit(n, "attention", [q, k, val] + ([mask] if mask is not None else []),
                         {"scale": float(scale), "causal": bool(v["is_causal"])})

    def f_unsqueeze(self, n, a, v):
        shape = self.spec(v["input"]).shape
        dim = v["dim"] % (len(shape) + 1)
        if dim == 0:
            raise self.unsupported(n, "unsqueeze(0): a new dim before the batch dimension")
        return self.emit(n, "reshape", [v["input"]], {"shape": (*shape[1:dim], 1, *shape[dim:])})

    def f_squeeze(self, n, a, v):
        shape = self.spec(v["input"]).shape
        dims = v["dim"]
        dims = [d for d in range(1, len(shape)) if shape[d] == 1] if dims is None else \
            [d % len(shape) for d in ((dims,) if isinstance(dims, int) else dims) if shape[d % len(shape)] == 1]
        if 0 in dims:
            raise self.unsupported(n, "squeezing the batch dimension")
        if v["dim"] is None and shape[0] == 1:
            raise self.unsupported(n, "squeeze() with no dim of a batch of one would also drop the batch dimension")
        return self.emit(n, "reshape", [v["input"]], {"shape": tuple(s for d, s in enumerate(shape) if d and d not in dims)})

    def f_unbind(self, n, a, v):
        x = v["input"]
        if isinstance(x, _Moved):
            if v["dim"] != 0:
                raise self.unsupported(n, x.why)
            return _Unbound(x, 0, self.spec(x.x).shape[x.dims[0]])
        shape = self.spec(x).shape
        return _Unbound(x, v["dim"] % len(shape), shape[v["dim"] % len(shape)])

    def f_select(self, n, a, v):
        return self.select(n, v["input"], v["dim"], v["index"])

    def f_expand(self, n, a, v):
        x, size = v["input"], v["size"]
        size = list(size if isinstance(size, (tuple, list)) else (size,))
        shape = self.spec(x).shape
        if len(size) != len(shape) or not all(isinstance(s, int) for s in size) or size[0] not in (-1, shape[0]):
            raise self.unsupported(n, f"expand of {list(shape)} to {size} (same rank, the batch dimension kept)")
        target = tuple(s if t == -1 else t for s, t in zip(shape, size))
        return self.emit(n, "expand", [x], {"shape": target[1:]}) if target != shape else x

    def f_expand_as(self, n, a, v):
        return self.f_expand(n, a, {"input": v["input"], "size": self.spec(v["other"]).shape})

    def f_reshape_as(self, n, a, v):
        return self.f_reshape(n, a, {"input": v["input"], "shape": self.spec(v["other"]).shape})

    def f_normalize(self, n, a, v):
        if v["p"] != 2 or v["out"] is not None:
            raise self.unsupported(n, f"normalize with p={v['p']} (the L2 norm is lifted)")
        return self.emit(n, "normalize", [v["input"]], {"dim": v["dim"] % len(self.spec(v["input"]).shape),
                                                        "eps": float(v["eps"])})

    def batch_norm_tokens(self, n, m: nn.BatchNorm1d, x: _BatchMerged) -> _BatchMerged:
        """BatchNorm1d over x.flatten(0, 1) of tokens [B, N, C]: the same as a batch norm over the channels of
        x.transpose(1, 2), lifted so (permute, batch_norm, permute back)."""
        op, attrs, params = MODULE_RULES[nn.BatchNorm1d](m)
        t = self.emit(n, "permute", [x.x], {"dims": (0, 2, 1)}, name=f"{n.target}_in")
        t = self.emit(n, op, [t], attrs, params, name=str(n.target))
        return _BatchMerged(self.emit(n, "permute", [t], {"dims": (0, 2, 1)}, name=f"{n.target}_out"))

    def m_multihead_attention(self, n, m: nn.MultiheadAttention, args, kwargs) -> "_Multi":
        """nn.MultiheadAttention as the ops it computes: q, k, v projections (Linear nodes over the rows of
        in_proj_weight), a split into heads, attention, the heads merged, the output projection. So heads
        prune like any attention block's."""
        names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights", "is_causal")
        v = dict(zip(names, args)) | kwargs
        q, k, val = v.get("query"), v.get("key"), v.get("value")
        if not all(self._is_tensor(t) for t in (q, k, val)):
            raise self.unsupported(n, "query, key and value must be computed from the input")
        if v.get("key_padding_mask") is not None or v.get("attn_mask") is not None or v.get("is_causal"):
            raise self.unsupported(n, "attention masks (key_padding_mask, attn_mask, is_causal)")
        if not m.batch_first:
            raise self.unsupported(n, "batch_first=False (the sequence dim first): hwopt keeps the batch dim first")
        if m.bias_k is not None or m.add_zero_attn:
            raise self.unsupported(n, "add_bias_kv / add_zero_attn")
        e, h = m.embed_dim, m.num_heads
        if m._qkv_same_embed_dim:
            ws = m.in_proj_weight.split(e)
        else:
            ws = (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)
        bs = m.in_proj_bias.split(e) if m.in_proj_bias is not None else (None, None, None)
        path = str(n.target)
        heads = []
        for part, x, w, b in zip("qkv", (q, k, val), ws, bs):
            shape = self.spec(x).shape
            if len(shape) != 3:
                raise self.unsupported(n, f"{part} of shape {list(shape)} (batch, sequence, features)")
            t = self.emit(n, "linear", [x], {"in_features": w.shape[1], "out_features": w.shape[0]},
                          {"weight": w, **({"bias": b} if b is not None else {})}, name=f"{path}.{part}_proj")
            t = self.emit(n, "reshape", [t], {"shape": (shape[1], h, e // h)}, name=f"{path}.{part}_heads")
            heads.append(self.emit(n, "permute", [t], {"dims": (0, 2, 1, 3)}, name=f"{path}.{part}_heads_first"))
        t = self.emit(n, "attention", heads, {"scale": 1.0 / math.sqrt(e // h), "causal": False}, name=f"{path}.attention")
        t = self.emit(n, "permute", [t], {"dims": (0, 2, 1, 3)}, name=f"{path}.heads_last")
        t = self.emit(n, "reshape", [t], {"shape": (self.spec(q).shape[1], e)}, name=f"{path}.merge_heads")
        out = m.out_proj
        t = self.emit(n, "linear", [t], {"in_features": out.in_features, "out_features": out.out_features},
                      {"weight": out.weight, **({"bias": out.bias} if out.bias is not None else {})}, name=f"{path}.out_proj")
        weights = "the attention weights MultiheadAttention returns (need_weights=True) are not lifted"
        return _Multi((t, weights if v.get("need_weights", True) else None))


    def m_batch_norm_act(self, n, m, args, kwargs) -> str:
        """timm's BatchNormAct2d (a BatchNorm2d whose forward also applies `drop` then `act`): the batch_norm op,
        then the drop and act modules' ops (an nn.Identity adds none)."""
        if len(args) != 1 or kwargs or not self._is_tensor(args[0]):
            raise self.unsupported(n, "expected exactly one tensor argument")
        rank = len(self.spec(args[0]).shape)
        if rank != 4:  # the module's own check (timm asserts x.ndim == 4)
            raise ShapeError(f"example input(s) {[list(t.shape) for t in self.examples]} do not fit the model at "
                             f"{self.describe(n)}: expected 4D input (got {rank}D input)")
        op, attrs, params = MODULE_RULES[nn.BatchNorm2d](m)
        # named `<path>.bn` beside `<path>.act`: lowered, the module's path holds both (a node named `<path>`
        # could not also be the prefix of its act's path)
        t = self.emit(n, op, [args[0]], attrs, params, name=f"{n.target}.bn")
        for part in ("drop", "act"):
            layer = getattr(m, part)
            if type(layer) not in TRANSPARENT:
                op, attrs, params = MODULE_RULES[type(layer)](layer)
                t = self.emit(n, op, [t], attrs, params, name=f"{n.target}.{part}")
        return t

    def m_cond_conv2d(self, n, m, args, kwargs) -> str:
        """timm's CondConv2d(x, routing_weights): the `cond_conv2d` op, its flat expert kernels reshaped to
        [experts, out, in / groups, kh, kw]."""
        x, routing = (list(args) + [kwargs.get("routing_weights")])[:2]
        if not (self._is_tensor(x) and self._is_tensor(routing)) or len(args) + len(kwargs) != 2:
            raise self.unsupported(n, "expected CondConv2d(x, routing_weights) computed from the input")
        if m.dynamic_padding:
            raise self.unsupported(n, "CondConv2d with TF 'same' padding computed at run time")
        attrs = dict(in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=_pair(m.kernel_size),
                     stride=_pair(m.stride), padding=_pair(m.padding), dilation=_pair(m.dilation), groups=m.groups,
                     experts=m.num_experts)
        params = {"weight": m.weight.reshape(m.num_experts, *m.weight_shape)}
        if m.bias is not None:
            params["bias"] = m.bias
        return self.emit(n, "cond_conv2d", [x, routing], attrs, params, name=str(n.target))


    def f_roll(self, n, a, v):
        """torch.roll along dims other than the batch: two slices concatenated, per dim."""
        x, shifts, dims = v["input"], v["shifts"], v["dims"]
        if dims is None:
            raise self.unsupported(n, "roll of the flattened tensor (no dims)")
        shifts = (shifts,) if isinstance(shifts, int) else tuple(shifts)
        dims = (dims,) if isinstance(dims, int) else tuple(dims)
        for shift, dim in zip(shifts, dims):
            size = self.spec(x).shape[dim]
            dim %= len(self.spec(x).shape)
            shift %= size
            if dim == 0:
                raise self.unsupported(n, "roll along the batch dimension")
            if shift:
                tail = self.emit(n, "slice", [x], {"dim": dim, "start": size - shift, "end": size})
                head = self.emit(n, "slice", [x], {"dim": dim, "start": 0, "end": size - shift})
                x = self.emit(n, "concat", [tail, head], {"dim": dim})
        return x

    def f_patch_merging_pad(self, n, a, v):
        """torchvision Swin's _patch_merging_pad: the four 2x2-strided views of [B, H, W, C], concatenated
        on the features."""
        x = v["input"]
        shape = self.spec(x).shape
        if len(shape) != 4 or shape[1] % 2 or shape[2] % 2:
            raise self.unsupported(n, f"patch merging of {list(shape)} (odd sizes are padded: not lifted)")
        parts = [self._basic_slices(n, x, (slice(None), slice(i, None, 2), slice(j, None, 2), slice(None)))
                 for i, j in ((0, 0), (1, 0), (0, 1), (1, 1))]
        return self.emit(n, "concat", parts, {"dim": 3})

    def f_shifted_window_attention(self, n, a, v):
        """torchvision Swin's window attention on [B, H, W, C], as the ops it computes: cyclic shift (rolls),
        windows ([B, windows, tokens, C]), per-head q kᵀ · scale + relative position bias (+ the shift mask,
        folded into one constant), softmax, @ v, projection, windows back, shift back. Heads prune."""
        x = v["input"]
        if v["logit_scale"] is not None:
            raise self.unsupported(n, "Swin-V2 cosine attention (logit_scale)")
        p = self._const(n, v, "qkv_weight", "proj_weight", "relative_position_bias", "qkv_bias", "proj_bias")
        b, hh, ww, c = self.spec(x).shape
        (wh, wwin), heads = v["window_size"], int(v["num_heads"])
        shift = list(v["shift_size"])
        if hh % wh or ww % wwin:
            raise self.unsupported(n, f"window size {[wh, wwin]} does not divide the feature map {[hh, ww]} (padding)")
        shift = [0 if wh >= hh else shift[0], 0 if wwin >= ww else shift[1]]
        if sum(shift):
            x = self.f_roll(n, a, {"input": x, "shifts": (-shift[0], -shift[1]), "dims": (1, 2)})
        nh, nw, tokens, d = hh // wh, ww // wwin, wh * wwin, c // heads
        x = self.emit(n, "reshape", [x], {"shape": (nh, wh, nw, wwin, c)})
        x = self.emit(n, "permute", [x], {"dims": (0, 1, 3, 2, 4, 5)})
        x = self.emit(n, "reshape", [x], {"shape": (nh * nw, tokens, c)})
        path = self.where(n) or n.name  # the linears are named like torchvision's modules (attn.qkv, attn.proj)
        qkv = self.emit(n, "linear", [x], {"in_features": c, "out_features": 3 * c},
                        {"weight": p["qkv_weight"], **({"bias": p["qkv_bias"]} if "qkv_bias" in p else {})},
                        name=f"{path}.qkv")
        qkv = self.emit(n, "reshape", [qkv], {"shape": (nh * nw, tokens, 3, heads, d)})
        q, k, val = (self.emit(n, "permute", [self.select(n, qkv, 3, i)], {"dims": (0, 1, 3, 2, 4)}) for i in range(3))
        q = self.emit(n, "mul", [q], {"scalar": float(d ** -0.5), "reverse": False})
        scores = self.emit(n, "matmul", [q, self.emit(n, "permute", [k], {"dims": (0, 1, 2, 4, 3)})])
        bias = p["relative_position_bias"].reshape(1, 1, heads, tokens, tokens)
        if sum(shift):
            bias = bias + _swin_shift_mask((hh, ww), (wh, wwin), shift).reshape(1, nh * nw, 1, tokens, tokens)
        scores = self.emit(n, "add", [scores, self._scalar_or_const(n, _Const(bias), scores, scalar=False)])
        att = self.emit(n, "softmax", [scores], {"dim": 4})
        y = self.emit(n, "permute", [self.emit(n, "matmul", [att, val])], {"dims": (0, 1, 3, 2, 4)})
        y = self.emit(n, "reshape", [y], {"shape": (nh * nw, tokens, c)})
        y = self.emit(n, "linear", [y], {"in_features": c, "out_features": c},
                      {"weight": p["proj_weight"], **({"bias": p["proj_bias"]} if "proj_bias" in p else {})},
                      name=f"{path}.proj")
        y = self.emit(n, "reshape", [y], {"shape": (nh, nw, wh, wwin, c)})
        y = self.emit(n, "permute", [y], {"dims": (0, 1, 3, 2, 4, 5)})
        y = self.emit(n, "reshape", [y], {"shape": (hh, ww, c)})
        if sum(shift):
            y = self.f_roll(n, a, {"input": y, "shifts": tuple(shift), "dims": (1, 2)})
        return y


def _swin_shift_mask(size, window, shift) -> torch.Tensor:
    """The additive mask of shifted-window attention [windows, tokens, tokens]: -100 between tokens that
    came from different regions of the unshifted map (torchvision's construction)."""
    (h, w), (wh, ww) = size, window
    regions = torch.zeros(h, w)
    count = 0
    for hs in ((0, -wh), (-wh, -shift[0]), (-shift[0], None)):
        for ws in ((0, -ww), (-ww, -shift[1]), (-shift[1], None)):
            regions[hs[0]:hs[1], ws[0]:ws[1]] = count
            count += 1
    regions = regions.view(h // wh, wh, w // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    diff = regions.unsqueeze(1) - regions.unsqueeze(2)
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


def _function_name(target) -> str | None:
    name = FUNCTIONS.get(target) if not isinstance(target, str) else None
    if name is None:
        name = NAMED_FUNCTIONS.get((getattr(target, "__module__", None), getattr(target, "__name__", None)))
    return name


class _Multi:
    """A module's tuple result (MultiheadAttention: output, weights); a str item is why it is not lifted."""

    def __init__(self, items: tuple):
        self.items = items


def _flat(v):
    if isinstance(v, (list, tuple)):
        for x in v:
            yield from _flat(x)
    elif isinstance(v, dict):
        for x in v.values():
            yield from _flat(x)
    else:
        yield v


def _resolve(shape: list, in_shape) -> list | None:
    """`shape` with its -1 worked out for an input of `in_shape`."""
    shape = list(shape)
    if shape.count(-1) == 1:
        known = -math.prod(shape)
        shape[shape.index(-1)] = math.prod(in_shape) // known if known else 0
    return shape if math.prod(shape) == math.prod(in_shape) else None


def _has(args, kwargs, cls) -> bool:
    def walk(v):
        if isinstance(v, cls):
            return True
        if isinstance(v, (list, tuple)):
            return any(walk(x) for x in v)
        return False
    return walk(args) or walk(tuple(kwargs.values()))


_MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


def _check_dtypes(modules, examples: tuple) -> None:
    dtypes = {p.dtype for m in modules for p in m._parameters.values() if p is not None and p.is_floating_point()}
    if len(dtypes) != 1:
        return
    want = next(iter(dtypes))
    for i, t in enumerate(examples):
        if isinstance(t, torch.Tensor) and t.dtype != want:
            raise ShapeError(f"example input {i} is {t.dtype} but the model's parameters are {want}: hwopt lifts, "
                             f"prunes and exports in the parameters' dtype; pass x.to({want}) (or convert the model)")


def lift(model: nn.Module, example_inputs) -> Graph:
    """Lift `model` into a verified Graph specialised to the shapes of `example_inputs`.

    `example_inputs` is a tensor or a tuple of tensors. The model is not modified (not even its mode).
    Raises UnsupportedOpError (op and module path) or ShapeError (inputs that do not fit).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"lift expects a torch.nn.Module, got {type(model).__name__}")
    examples = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    modules = dict(model.named_modules())  # walked once: a timm model has ~300 modules
    _check_dtypes(modules.values(), examples)
    if model.training and any(m.training and isinstance(m, _MODE_DEPENDENT) for m in modules.values()):
        warnings.warn(f"{type(model).__name__} is in train mode: hwopt lifts its inference (eval-mode) semantics "
                      f"(batch norm uses running statistics, dropout is kept as an op); call model.eval() first "
                      f"to silence this", stacklevel=2)
    # no_grad: nothing lifting computes is differentiated (parameters are snapshotted without detaching)
    with _state_kept(modules.values()), collector_paused(), torch.no_grad():
        g = _Lifter(model, examples, modules).run()
        check_finite_at_once(t for n in g.nodes.values() for t in n.params.values())
    return g.verify()


@contextlib.contextmanager
def _state_kept(modules):
    """Leave the model as it was: tracing runs its forward, which may fill caches in plain attributes (LeViT
    caches its attention biases in a dict per device, which would keep an fx proxy). Attributes added during
    lifting are removed and public containers (dict, list, set) get their contents back, in place."""
    saved = []
    for m in modules:
        d = m.__dict__
        saved.append((d, set(d), {k: (v, copy.copy(v)) for k, v in d.items()
                                  if k[:1] != "_" and isinstance(v, (dict, list, set))}))
    try:
        yield
    finally:
        for d, keys, containers in saved:
            if d.keys() != keys:
                for k in d.keys() - keys:
                    del d[k]
            for k, (obj, contents) in containers.items():
                if isinstance(obj, list):
                    obj[:] = contents
                else:
                    obj.clear()
                    obj.update(contents)
