"""The module `hwopt.lower` returns: its forward runs a recorded list of calls, with no generated code.

Lowering used to build a torch.fx graph and let fx generate and compile `forward` (about half of all the
lowering time: fx node bookkeeping, code generation, `compile`). A lowered graph is a straight line of
calls, so `Program` records them (the lowering rules write into it through the methods fx.Graph has:
`placeholder`, `call_function`, `call_method`, `call_module`, `output`) and `HwoptModule.forward` walks
the list. Per call that costs well under a microsecond more than generated code, nothing next to the
kernels, and values are dropped after their last use as fx's code does.

The module is an ordinary nn.Module: its forward takes the graph inputs by name (so fx tracing and
`torch.export` see the same signature a generated forward had), it deep-copies and pickles, and
`.graph` rebuilds the torch.fx graph of the same calls on demand, for tools that read one.
"""
from __future__ import annotations

import keyword

import torch.fx as fx
from torch import nn

_FUNCTION, _METHOD, _MODULE = 0, 1, 2


class Value:
    """A reference to the result of an earlier call (or to an input) of a `Program`."""
    __slots__ = ("slot", "name")

    def __init__(self, slot: int, name: str):
        self.slot, self.name = slot, name

    def __repr__(self) -> str:
        return f"%{self.name}"


_ATOMS = (int, float, bool, str, type(None))


def _resolve(x, env):
    """`x` with each Value replaced by env[its slot] (env: the running values, or a slot -> fx node map)."""
    t = type(x)
    if t is Value:
        return env[x.slot]
    if t is tuple or t is list:
        return t(_resolve(y, env) for y in x)
    if t is dict:
        return {k: _resolve(v, env) for k, v in x.items()}
    if t is slice:
        return slice(_resolve(x.start, env), _resolve(x.stop, env), _resolve(x.step, env))
    return x


def _slots(x, out: set) -> set:
    t = type(x)
    if t is Value:
        out.add(x.slot)
    elif t is tuple or t is list:
        for y in x:
            _slots(y, out)
    elif t is dict:
        for y in x.values():
            _slots(y, out)
    elif t is slice:
        _slots((x.start, x.stop, x.step), out)
    return out


def _identifier(name: str, taken: set) -> str:
    base = name if name.isidentifier() and not keyword.iskeyword(name) and name != "self" else f"_{name}"
    base = base if base.isidentifier() else "input"
    out, k = base, 1
    while out in taken:
        out, k = f"{base}_{k}", k + 1
    taken.add(out)
    return out


class Program:
    """The calls of a lowered graph, in order: what the lowering rules emit into (`e.out`)."""

    def __init__(self):
        # (kind, target, args, kwargs, nested, slot, slots read); target: a callable, a method name or a
        # module path
        self.calls: list[tuple] = []
        self.inputs: list[Value] = []
        self.result = None
        self.slots = 0
        self._names: set[str] = set()

    def _value(self, hint: str) -> Value:
        v = Value(self.slots, hint)
        self.slots += 1
        return v

    def placeholder(self, name: str) -> Value:
        v = self._value(_identifier(name, self._names))
        self.inputs.append(v)
        return v

    def _call(self, kind: int, target, args, kwargs, hint: str) -> Value:
        args, kwargs = tuple(args), dict(kwargs or {})
        used: list[int] = []
        nested = False
        for x in (*args, *kwargs.values()):
            if type(x) is Value:
                used.append(x.slot)
            elif not isinstance(x, _ATOMS):
                found = _slots(x, set())
                nested = nested or bool(found)
                used.extend(found)
        v = self._value(hint)
        self.calls.append((kind, target, args, kwargs, nested, v.slot, used))
        return v

    def call_function(self, fn, args=(), kwargs=None) -> Value:
        return self._call(_FUNCTION, fn, args, kwargs, getattr(fn, "__name__", "call"))

    def call_method(self, name: str, args=(), kwargs=None) -> Value:
        return self._call(_METHOD, name, args, kwargs, name)

    def call_module(self, path: str, args=(), kwargs=None) -> Value:
        return self._call(_MODULE, path, args, kwargs, path.replace(".", "_"))

    def output(self, result) -> None:
        self.result = result

    def compiled(self) -> tuple[tuple, tuple[int, ...], object, int]:
        """(steps, input slots, result, slot count) as HwoptModule runs them: each step is
        (kind, target, args, kwargs, nested, slot, slots to free after it)."""
        last: dict[int, int] = {}
        for i, call in enumerate(self.calls):
            for s in call[6]:
                last[s] = i
        keep = _slots(self.result, set())
        free: list[list[int]] = [[] for _ in self.calls]
        for s, i in last.items():
            if s not in keep:
                free[i].append(s)
        steps = []
        for (kind, target, args, kwargs, nested, slot, _), f in zip(self.calls, free):
            if kind == _MODULE:
                target = tuple(target.split("."))
            steps.append((kind, target, args, kwargs, nested, slot, tuple(f)))
        return tuple(steps), tuple(v.slot for v in self.inputs), self.result, self.slots


class HwoptModule(nn.Module):
    """A lowered hwopt graph (see the module docstring). Subclassed once per input signature, whose only
    addition is a `forward` taking the graph's inputs by name."""

    _input_names: tuple[str, ...] = ()

    def _run(self, inputs: tuple):
        env = [None] * self._slot_count
        for slot, x in zip(self._input_slots, inputs):
            env[slot] = x
        for kind, target, args, kwargs, nested, slot, free in self._steps:
            if nested:
                a, kw = _resolve(args, env), _resolve(kwargs, env)
            else:
                a = [env[x.slot] if type(x) is Value else x for x in args]
                kw = {k: env[v.slot] if type(v) is Value else v for k, v in kwargs.items()} if kwargs else kwargs
            if kind == _MODULE:
                m = self
                for part in target:
                    m = getattr(m, part)
                env[slot] = m(*a, **kw)
            elif kind == _FUNCTION:
                env[slot] = target(*a, **kw)
            else:
                env[slot] = getattr(a[0], target)(*a[1:], **kw)
            for s in free:
                env[s] = None
        return _resolve(self._result, env)

    @property
    def graph(self) -> fx.Graph:
        """The torch.fx graph of the same calls (built on each access; the module does not run it)."""
        g = fx.Graph()
        nodes: dict[int, fx.Node] = {}
        for slot, name in zip(self._input_slots, self._input_names):
            nodes[slot] = g.placeholder(name)
        convert = lambda x: _resolve(x, nodes)  # noqa: E731
        for kind, target, args, kwargs, nested, slot, free in self._steps:
            a, kw = convert(args), convert(kwargs)
            if kind == _MODULE:
                nodes[slot] = g.call_module(".".join(target), a, kw)
            elif kind == _FUNCTION:
                nodes[slot] = g.call_function(target, a, kw)
            else:
                nodes[slot] = g.call_method(target, a, kw)
        g.output(convert(self._result))
        return g

    def __reduce__(self):
        return _restore, (self._input_names, self.__dict__)


_CLASSES: dict[tuple[str, ...], type] = {}


def module_class(input_names: tuple[str, ...]) -> type:
    """The HwoptModule subclass whose forward takes `input_names` (valid, distinct identifiers)."""
    cls = _CLASSES.get(input_names)
    if cls is None:
        params = ", ".join(input_names)
        scope: dict = {}
        exec(f"def forward(self, {params}):\n    return self._run(({params}{',' if len(input_names) == 1 else ''}))\n", scope)
        cls = _CLASSES[input_names] = type("HwoptModule", (HwoptModule,), {
            "forward": scope["forward"], "_input_names": input_names, "__module__": __name__})
    return cls


def _restore(input_names: tuple[str, ...], state: dict) -> HwoptModule:
    cls = module_class(tuple(input_names))
    m = cls.__new__(cls)
    m.__setstate__(state)
    return m


def new_module(program: Program) -> HwoptModule:
    """An empty HwoptModule running `program` (its submodules are installed by the caller)."""
    cls = module_class(tuple(v.name for v in program.inputs))
    m = cls()
    m._steps, m._input_slots, m._result, m._slot_count = program.compiled()
    return m
