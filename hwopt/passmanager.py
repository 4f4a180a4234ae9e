"""Passes, the pass registry, pipelines written as text, and the pass manager with its instruments.

A pass is a frozen dataclass registered under a name; its fields are its options, so a pipeline reads
and prints as text: `fold-bn,channel-prune{criterion=l1,ratio=0.4,protect=[stem,fc]}`. `run(graph,
ctx)` returns a graph and never mutates its input (returning the input itself means "unchanged").
Options declare their constraints on the fields (`option(...)`), checked once when the pass is made.
A PassManager is itself a pass, so pipelines nest; `pipeline(name, ...)` registers a fixed one. The
manager checks what each pass needs, runs it, verifies the result, and calls instruments (enter/exit,
should_run, before/after: timing, figures, IR dumps) around it, like TVM's pass instruments. Passes are
found by name in a lazy registry: a bundled pass's module is imported the first time a pipeline names it.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import time
import types
import warnings
import typing
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

from .errors import PassError
from .fileio import atomic_write  # noqa: F401 - passes import it from here
from .ir import Graph

PASSES: dict[str, type["Pass"]] = {}

# The bundled passes, loaded on first use by name: a pipeline imports only the passes it names, and the
# pass library may import this module freely (no import loop, no import of every pass on first parse).
BUILTIN_PASSES: dict[str, str] = {
    "canonicalize": "hwopt.passes.canonicalize",
    "drop-identity": "hwopt.passes.canonicalize",
    "fold-bn": "hwopt.passes.fold_bn",
    "dce": "hwopt.passes.dce",
    "finetune": "hwopt.passes.finetune",
    "channel-prune": "hwopt.passes.channel_prune",
    "magnitude-prune": "hwopt.passes.magnitude_prune",
    "obd": "hwopt.passes.obd",
    "morphnet": "hwopt.passes.morphnet",
    "nas": "hwopt.passes.nas",
    "quantize": "hwopt.passes.quantize",
}


def register_pass(name: str):
    """Class decorator: make a frozen-dataclass pass available under `name` in pipelines."""
    def deco(cls):
        if name in PASSES and PASSES[name] is not cls:
            raise PassError(f"a pass named {name!r} is already registered ({PASSES[name].__qualname__})")
        if name in BUILTIN_PASSES and cls.__module__ != BUILTIN_PASSES[name] and name not in PASSES:
            raise PassError(f"a pass named {name!r} is already registered (bundled in {BUILTIN_PASSES[name]})")
        is_pipeline = isinstance(cls, type) and issubclass(cls, PassManager)
        if not is_pipeline and "__dataclass_fields__" not in cls.__dict__:  # inheriting Pass's fields is not enough
            cls = dataclass(frozen=True)(cls)
        cls.name = name
        PASSES[name] = cls
        return cls
    return deco


def pass_class(name: str) -> type["Pass"]:
    """The pass registered under `name`, importing its bundled module on first use."""
    if name not in PASSES and name in BUILTIN_PASSES:
        importlib.import_module(BUILTIN_PASSES[name])
    cls = PASSES.get(name)
    if cls is None:
        raise PassError(f"unknown pass {name!r}; known passes: {', '.join(known_passes())}")
    return cls


def known_passes() -> list[str]:
    """Every pass name a pipeline may use: the bundled ones and those registered since."""
    return sorted(set(BUILTIN_PASSES) | set(PASSES))


# --- options: declared on the dataclass fields, checked once when a pass is made -------------------


def option(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
           le: float | None = None, lt: float | None = None, choices: tuple | None = None, doc: str = ""):
    """A pass option with its constraints: `steps: int = option(1, ge=1, doc="...")`.

    Bounds apply to numbers (None passes when it is the default), `choices` to any value. The manager
    checks them once, when the pass is constructed, and names the option and the pass in the error."""
    meta = {"hwopt": {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "doc": doc}}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _check_constraints(p: "Pass") -> None:
    hints = typing.get_type_hints(type(p))
    for f in dataclasses.fields(p):
        v = getattr(p, f.name)
        rule = f.metadata.get("hwopt")
        hint = hints.get(f.name)
        if hint in (int, float) and not _is_number(v, hint):
            p.invalid(f.name, f"expected {hint.__name__}, got {v!r}")
        if hint is bool and not isinstance(v, bool):
            p.invalid(f.name, f"expected true or false, got {v!r}")
        if not rule or v is None:
            continue
        if rule["choices"] is not None and v not in rule["choices"]:
            p.invalid(f.name, f"{v!r} is not one of {list(rule['choices'])}")
        bounds = [(k, rule[k]) for k in ("ge", "gt", "le", "lt") if rule[k] is not None]
        if bounds and not _is_number(v, float):
            p.invalid(f.name, f"expected a number, got {v!r}")
        for k, b in bounds:
            ok = {"ge": v >= b, "gt": v > b, "le": v <= b, "lt": v < b}[k]
            if not ok:
                p.invalid(f.name, f"must be {_OPS[k]} {b}, got {v!r}")


_OPS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _is_number(v, hint) -> bool:
    if isinstance(v, bool):
        return False
    if hint is int:
        return isinstance(v, int)
    return isinstance(v, (int, float)) and math.isfinite(v)


@dataclass(frozen=True)
class Pass:
    """A graph -> graph transformation whose dataclass fields are its options.

    Declare constraints with `option(...)`; cross-option rules go in `validate()` (raise with
    `self.invalid(option, message)`). Override `requirements()` when what a pass needs from the context
    depends on its options."""
    name: ClassVar[str] = "?"
    needs: ClassVar[tuple[str, ...]] = ()  # context fields that must be set: "target", "train", "evaluate", "data"

    def __post_init__(self):
        _check_constraints(self)
        self.validate()

    def validate(self) -> None:
        """Rules across options; field constraints are already checked."""

    def invalid(self, option_name: str, message: str):
        raise PassError(f"option {option_name!r} of pass {self.name!r}: {message}")

    def requirements(self) -> tuple[str, ...]:
        """Context fields this pass needs with its options (default: `needs`)."""
        return tuple(self.needs)

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
    """Instantiate a registered pass from option values (text is converted by the declared types);
    the pass checks its options once, as it is constructed."""
    cls = pass_class(name)
    if issubclass(cls, PassManager):
        if options:
            raise PassError(f"pipeline {name!r} takes no options")
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for k, v in options.items():
        if k not in fields:
            raise PassError(f"pass {name!r} has no option {k!r}; its options: {', '.join(fields) or '(none)'}")
        if isinstance(v, str) and hints[k] is not str:
            options[k] = _convert(name, fields[k], hints[k], v)
    try:
        return cls(**options)
    except TypeError as e:
        raise PassError(f"pass {name!r}: {e}") from None


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


# --- context and instruments -----------------------------------------------------------------------


class Instrument:
    """Hooks around a pipeline run and each pass (TVM's PassInstrument). Override what you need.

    `enter`/`exit` bracket the outermost run; `should_run` may skip a pass; `before`/`after` wrap each
    pass that runs (nested pipelines included)."""

    def enter(self, ctx: "PassContext") -> None: ...

    def exit(self, ctx: "PassContext") -> None: ...

    def should_run(self, p: Pass, graph: Graph, ctx: "PassContext") -> bool:
        return True

    def before(self, p: Pass, graph: Graph, ctx: "PassContext") -> None: ...

    def after(self, p: Pass, before: Graph, after: Graph, ctx: "PassContext", record: dict) -> None: ...


class StatsInstrument(Instrument):
    """Records before/after params, MACs and, with a target, predicted latency, peak SRAM, flash, energy."""

    @staticmethod
    def figures(graph: Graph, ctx: "PassContext") -> dict:
        from .figures import graph_figures
        return graph_figures(graph, ctx.target)

    def after(self, p, before, after, ctx, record):
        if isinstance(p, PassManager):
            return  # its passes carry the figures
        record["before"] = self.figures(before, ctx)
        record["after"] = self.figures(after, ctx) if after is not before else dict(record["before"])


class DumpIR(Instrument):
    """Writes the IR after every pass to `directory/NN-passname.txt`."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)

    def after(self, p, before, after, ctx, record):
        if isinstance(p, PassManager):
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.dir / f"{len(ctx.records):02d}-{p.name}.txt", after.summary() + "\n")


class SkipPasses(Instrument):
    """Skips the passes named in `names` (e.g. to bisect a pipeline)."""

    def __init__(self, *names: str):
        self.names = set(names)

    def should_run(self, p, graph, ctx):
        return p.name not in self.names


TrainFn = Callable[..., None]  # train(module, *, epochs=1.0, penalty=None) trains the module in place
EvalFn = Callable[..., float]  # evaluate(module) -> accuracy in [0, 1]


@dataclass
class PassContext:
    """What passes may use: the target (cost model), the user's callbacks and data, the seed, instruments."""
    target: Any = None
    train: TrainFn | None = None
    evaluate: EvalFn | None = None
    example_inputs: Any = None
    data: Any = None  # optional iterable of (x, y) training batches (OBD's Hessian, Taylor importance)
    seed: int = 0
    verify: bool = True
    progress: bool = False
    checkpoint_dir: str | None = None  # where searching passes (nas, morphnet) keep checkpoints and their plots
    instruments: list[Instrument] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    depth: int = 0  # how many pipelines are running (instruments enter/exit at the outermost)
    notes: dict = field(default_factory=dict)  # what the running pass reports (`ctx.note`), kept in its record
    workdir: InitVar[str | None] = None  # the old name of checkpoint_dir (DeprecationWarning)

    def __post_init__(self, workdir: str | None) -> None:
        if workdir is not None and not isinstance(workdir, property):
            if self.checkpoint_dir is not None:
                raise PassError("PassContext: give checkpoint_dir= only (workdir= is its old name)")
            warnings.warn("PassContext(workdir=) is deprecated: use checkpoint_dir=", DeprecationWarning, stacklevel=3)
            self.checkpoint_dir = workdir

    def require(self, p: Pass) -> None:
        if isinstance(p, PassManager):
            for q in p.passes:
                self.require(q)
            return
        missing = [n for n in p.requirements() if getattr(self, n, None) is None]
        if missing:
            raise PassError(f"pass {p.name!r} needs {', '.join(missing)} in the PassContext")

    def note(self, **info) -> None:
        """Attach figures to the running pass's record (`record["info"]`; `ctx.notes` when run directly)."""
        self.notes.update(info)


def _deprecated_workdir(ctx: PassContext) -> str | None:
    warnings.warn("PassContext.workdir is deprecated: use checkpoint_dir", DeprecationWarning, stacklevel=2)
    return ctx.checkpoint_dir


PassContext.workdir = property(_deprecated_workdir)  # reading the old name still works, with a warning


class PassManager(Pass):
    """An ordered pipeline of passes, itself a pass: pipelines nest (`canonicalize` is one).

    `PassManager.parse(text)`; `str(pm)` prints it back. Running checks every pass's requirements first,
    then runs each (unless an instrument's `should_run` says no), verifies its result and calls the
    instruments around it."""

    def __init__(self, passes: list[Pass] | None = None):
        object.__setattr__(self, "passes", list(passes or []))

    def requirements(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for p in self.passes for n in p.requirements()))

    @classmethod
    def parse(cls, text: str) -> "PassManager":
        text = text.strip()
        return cls([parse_pass(t) for t in _split_top(text)] if text else [])

    def __str__(self) -> str:
        if type(self).name != "?":  # a registered pipeline prints as its name
            return type(self).name
        return ",".join(str(p) for p in self.passes)

    def __repr__(self) -> str:
        return f"PassManager({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, PassManager) and str(self) == str(other) and self.passes == other.passes

    __hash__ = None

    def run(self, graph: Graph, ctx: PassContext | None = None) -> Graph:
        ctx = ctx if ctx is not None else PassContext()
        ctx.require(self)
        outermost = ctx.depth == 0
        if outermost:
            for ins in ctx.instruments:
                ins.enter(ctx)
        ctx.depth += 1
        try:
            for p in self.passes:
                graph = self._run_one(p, graph, ctx)
        finally:
            ctx.depth -= 1
            if outermost:
                for ins in ctx.instruments:
                    ins.exit(ctx)
        return graph

    def _run_one(self, p: Pass, graph: Graph, ctx: PassContext) -> Graph:
        if not all(ins.should_run(p, graph, ctx) for ins in ctx.instruments):
            ctx.records.append({"pass": str(p), "skipped": True})
            return graph
        for ins in ctx.instruments:
            ins.before(p, graph, ctx)
        outer_notes, ctx.notes = ctx.notes, {}
        t0 = time.perf_counter()
        try:
            result = p.run(graph, ctx)
        finally:
            notes, ctx.notes = ctx.notes, outer_notes
        seconds = time.perf_counter() - t0
        if not isinstance(result, Graph):
            raise PassError(f"pass {p.name!r} returned {type(result).__name__}, not a Graph")
        if ctx.verify and result is not graph:
            try:
                result.verify_once()  # any change through the Graph API since a verify resets this
            except Exception as e:
                raise PassError(f"pass {p.name!r} produced an invalid graph: {e}") from e
        record = {"pass": str(p), "seconds": seconds, "changed": result is not graph}
        if notes:
            record["info"] = notes
        for ins in ctx.instruments:
            ins.after(p, graph, result, ctx, record)
        if not isinstance(p, PassManager):  # a nested pipeline's passes have their own records
            ctx.records.append(record)
        return result

    def report(self, ctx: PassContext) -> str:
        return json.dumps({"pipeline": str(self), "passes": ctx.records}, indent=2, default=str)


def pipeline(name: str, *passes: Pass) -> type[PassManager]:
    """Register a fixed pipeline under `name`: it runs like one pass and prints as its name."""
    def __init__(self):
        PassManager.__init__(self, list(passes))
    cls = type(name.title().replace("-", ""), (PassManager,), {"__init__": __init__, "__doc__": f"pipeline: {name}"})
    cls.__module__ = _caller_module()
    return register_pass(name)(cls)


def _caller_module() -> str:
    import sys
    return sys._getframe(2).f_globals.get("__name__", __name__)
