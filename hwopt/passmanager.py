"""Passes, the pass registry, pipelines written as text, and the pass manager with its instruments.

A pass is a frozen dataclass registered under a name; its fields are its options, so a pipeline reads
and prints as text: `fold-bn,channel-prune{criterion=l1,ratio=0.4,protect=[stem,fc]}`. `run(graph,
ctx)` returns a graph and never mutates its input (returning the input itself means "unchanged").
The manager checks what each pass needs, runs it, verifies the result, and calls instruments (timing,
before/after figures, IR dumps) around it, like TVM's pass instruments.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

from .errors import PassError
from .fileio import atomic_write  # noqa: F401 - passes import it from here
from .ir import Graph

PASSES: dict[str, type["Pass"]] = {}


def register_pass(name: str):
    """Class decorator: make a frozen-dataclass pass available under `name` in pipelines."""
    def deco(cls):
        if name in PASSES and PASSES[name] is not cls:
            raise PassError(f"a pass named {name!r} is already registered ({PASSES[name].__qualname__})")
        if "__dataclass_fields__" not in cls.__dict__:  # inheriting Pass's fields is not enough
            cls = dataclass(frozen=True)(cls)
        cls.name = name
        PASSES[name] = cls
        return cls
    return deco


@dataclass(frozen=True)
class Pass:
    name: ClassVar[str] = "?"
    needs: ClassVar[tuple[str, ...]] = ()  # context fields that must be set: "target", "train", "evaluate"

    def run(self, graph: Graph, ctx: "PassContext") -> Graph:
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __str__(self) -> str:
        opts = [f"{f.name}={_fmt(getattr(self, f.name))}" for f in dataclasses.fields(self)
                if getattr(self, f.name) != _default(f)]
        return self.name + (f"{{{','.join(opts)}}}" if opts else "")


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    if v is None:
        return "none"
    return repr(v) if isinstance(v, float) else str(v)


# --- parsing ---------------------------------------------------------------------------------------


def _split_top(text: str, sep: str = ",") -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth < 0:
                raise PassError(f"unbalanced brackets in {text!r}")
        if ch == sep and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise PassError(f"unbalanced brackets in {text!r}")
    parts.append("".join(cur).strip())
    return parts


def _convert(pass_name: str, f: dataclasses.Field, hint, raw: str):
    where = f"option {f.name!r} of pass {pass_name!r}"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if raw.lower() == "none" and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(pass_name, f, a, raw)
            except PassError as e:
                errors.append(str(e))
        raise PassError(f"{where}: {raw!r} fits none of {[getattr(a, '__name__', str(a)) for a in args]}")
    if origin is Literal:
        for a in args:
            if str(a) == raw or _fmt(a) == raw:
                return a
        raise PassError(f"{where}: {raw!r} is not one of {list(args)}")
    if origin in (tuple, list):
        if not (raw.startswith("[") and raw.endswith("]")):
            raise PassError(f"{where}: expected a list like [a,b], got {raw!r}")
        inner = raw[1:-1].strip()
        item = args[0] if args else str
        items = [_convert(pass_name, f, item, x) for x in _split_top(inner)] if inner else []
        return tuple(items) if origin is tuple else items
    if hint is bool:
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise PassError(f"{where}: expected true or false, got {raw!r}")
    if hint in (int, float):
        try:
            return hint(raw)
        except ValueError:
            raise PassError(f"{where}: expected {hint.__name__}, got {raw!r}") from None
    if hint is str:
        return raw
    raise PassError(f"{where}: cannot parse a value of type {hint}")


def make_pass(name: str, **options) -> Pass:
    """Instantiate a registered pass, validating option names and values."""
    _load_builtin_passes()
    cls = PASSES.get(name)
    if cls is None:
        raise PassError(f"unknown pass {name!r}; known passes: {', '.join(sorted(PASSES))}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for k, v in options.items():
        if k not in fields:
            raise PassError(f"pass {name!r} has no option {k!r}; its options: {', '.join(fields) or '(none)'}")
        if isinstance(v, str) and hints[k] is not str:
            options[k] = _convert(name, fields[k], hints[k], v)
    try:
        p = cls(**options)
    except TypeError as e:
        raise PassError(f"pass {name!r}: {e}") from None
    validate = getattr(p, "validate", None)
    if validate:
        validate()
    return p


def parse_pass(text: str) -> Pass:
    text = text.strip()
    if "{" in text:
        if not text.endswith("}"):
            raise PassError(f"expected 'name{{key=value,...}}', got {text!r}")
        name, body = text[:text.index("{")].strip(), text[text.index("{") + 1:-1]
    else:
        name, body = text, ""
    options = {}
    for item in _split_top(body) if body.strip() else []:
        if "=" not in item:
            raise PassError(f"option {item!r} of pass {name!r} must be key=value")
        k, v = item.split("=", 1)
        options[k.strip()] = v.strip()
    return make_pass(name, **options)


_BUILTINS_LOADED = False


def _load_builtin_passes() -> None:
    # The registry is filled by importing the pass library; only pipeline assembly needs it.
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        import hwopt.passes  # noqa: F401


# --- context and instruments -----------------------------------------------------------------------


class Instrument:
    """Hooks around each pass. Override what you need."""

    def before(self, p: Pass, graph: Graph, ctx: "PassContext") -> None: ...

    def after(self, p: Pass, before: Graph, after: Graph, ctx: "PassContext", record: dict) -> None: ...


class StatsInstrument(Instrument):
    """Records before/after params, MACs and, with a target, predicted latency, peak SRAM, flash."""

    @staticmethod
    def figures(graph: Graph, ctx: "PassContext") -> dict:
        s = graph.stats()
        fig = {"params": s["params"], "nonzero_params": s["nonzero_params"], "macs": s["macs"]}
        if ctx.target is not None:
            c = ctx.target.cost(graph)
            fig.update(latency_ms=c.latency_ms, peak_sram_bytes=c.peak_sram_bytes, flash_bytes=c.flash_bytes,
                       energy_mj=c.energy_mj)
        return fig

    def after(self, p, before, after, ctx, record):
        record["before"] = self.figures(before, ctx)
        record["after"] = self.figures(after, ctx) if after is not before else dict(record["before"])


class DumpIR(Instrument):
    """Writes the IR after every pass to `directory/NN-passname.txt`."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)

    def after(self, p, before, after, ctx, record):
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.dir / f"{len(ctx.records):02d}-{p.name}.txt", after.summary() + "\n")


TrainFn = Callable[..., None]  # train(module, *, epochs=1.0, penalty=None) trains the module in place
EvalFn = Callable[..., float]  # evaluate(module) -> accuracy in [0, 1]


@dataclass
class PassContext:
    """What passes may use: the target (cost model), the user's callbacks, the seed, instruments."""
    target: Any = None
    train: TrainFn | None = None
    evaluate: EvalFn | None = None
    example_inputs: Any = None
    data: Any = None  # optional iterable of (x, y) training batches (OBD's Hessian, Taylor importance)
    seed: int = 0
    verify: bool = True
    progress: bool = False
    workdir: str | None = None  # where long passes checkpoint
    instruments: list[Instrument] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)

    def require(self, p: Pass) -> None:
        missing = [n for n in p.needs if getattr(self, n, None) is None]
        if missing:
            raise PassError(f"pass {p.name!r} needs {', '.join(missing)} in the PassContext")


class PassManager:
    """An ordered pipeline of passes. `PassManager.parse(text)`; `str(pm)` prints it back."""

    def __init__(self, passes: list[Pass] | None = None):
        self.passes = list(passes or [])

    @classmethod
    def parse(cls, text: str) -> "PassManager":
        text = text.strip()
        return cls([parse_pass(t) for t in _split_top(text)] if text else [])

    def __str__(self) -> str:
        return ",".join(str(p) for p in self.passes)

    def __repr__(self) -> str:
        return f"PassManager({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, PassManager) and self.passes == other.passes

    def run(self, graph: Graph, ctx: PassContext | None = None) -> Graph:
        ctx = ctx if ctx is not None else PassContext()
        for p in self.passes:
            ctx.require(p)
        for p in self.passes:
            for ins in ctx.instruments:
                ins.before(p, graph, ctx)
            t0 = time.perf_counter()
            result = p.run(graph, ctx)
            seconds = time.perf_counter() - t0
            if not isinstance(result, Graph):
                raise PassError(f"pass {p.name!r} returned {type(result).__name__}, not a Graph")
            if ctx.verify and result is not graph:
                try:
                    result.verify_once()  # any change through the Graph API since a verify resets this
                except Exception as e:
                    raise PassError(f"pass {p.name!r} produced an invalid graph: {e}") from e
            record = {"pass": str(p), "seconds": seconds, "changed": result is not graph}
            for ins in ctx.instruments:
                ins.after(p, graph, result, ctx, record)
            ctx.records.append(record)
            graph = result
        return graph

    def report(self, ctx: PassContext) -> str:
        return json.dumps({"pipeline": str(self), "passes": ctx.records}, indent=2, default=str)
