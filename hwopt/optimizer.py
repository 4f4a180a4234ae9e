"""`hwopt.optimize(model, target, example_inputs, budget=...)`: one call from a torch model to a smaller,
faster one for a device, with a report of what changed and why, and exports for deployment.

The device's own SRAM and flash are part of every budget (`fit_device=False` relaxes them): the result
fits the device or BudgetError says which limit is out of reach and the closest figures. The pipeline is
chosen by `hwopt.planning` unless given; the result, its report, plots and exports are `hwopt.report`'s.
The user's model is never modified; nothing is written unless asked, and then atomically.
"""
from __future__ import annotations

import itertools
import math
import time

import torch

from .errors import BudgetError, HwoptError, ShapeError
from .figures import check_budget, device_limits, format_figures, graph_figures, meets
from .frontend import lift
from .lower import lower
from .passmanager import PassContext, PassManager, StatsInstrument
from .planning import choose_pipeline, out_of_reach
from .report import EXPORT_FORMATS, Result  # noqa: F401 - the public names live here too

PRUNING_PASSES = ("channel-prune", "magnitude-prune", "obd", "morphnet", "nas")


def _as_inputs(example_inputs) -> tuple[torch.Tensor, ...]:
    if example_inputs is None:
        raise ShapeError("example_inputs is required: a tensor (or tuple of tensors) shaped like the model's input")
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    if not isinstance(inputs, (tuple, list)) or not inputs:
        raise ShapeError(f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}")
    bad = [i for i, x in enumerate(inputs) if not isinstance(x, torch.Tensor)]
    if bad:
        raise ShapeError(f"example_inputs[{bad[0]}] is a {type(inputs[bad[0]]).__name__}, not a tensor")
    return tuple(inputs)


def _as_batches(data, limit: int = 1_000_000) -> list | None:
    """`data` (an iterable of (x, y) tensor batches, or a callable returning one) as a list, checked."""
    if data is None:
        return None
    batches = data() if callable(data) else data
    try:
        batches = list(itertools.islice(iter(batches), limit))
    except TypeError:
        raise HwoptError(f"data must be an iterable of (inputs, labels) batches, got {type(data).__name__}") from None
    if not batches:
        raise HwoptError("data yielded no batch")
    for i, b in enumerate(batches):
        if not (isinstance(b, (tuple, list)) and len(b) == 2 and all(isinstance(t, torch.Tensor) for t in b)):
            raise HwoptError(f"data batch {i} must be a pair (inputs, labels) of tensors, got {type(b).__name__}")
        if len(b[0]) != len(b[1]):
            raise HwoptError(f"data batch {i}: {len(b[0])} inputs but {len(b[1])} labels")
    return batches


def default_trainer(batches: list):
    """ctx.train for `data=` without `train=`: SGD with momentum and a cosine schedule over the batches
    (hwopt.data.Trainer), cross-entropy loss."""
    from .data import Trainer
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    return Trainer(x, y, x, y, batch_size=min(128, len(batches[0][0]))).train


def optimize(model: torch.nn.Module, target, example_inputs, *, budget: dict | None = None,
             pipeline: str | None = None, train=None, evaluate=None, data=None, fit_device: bool = True,
             min_channels: int | None = None, protect: tuple[str, ...] = (), seed: int = 0,
             measure: bool = False, workdir: str | None = None, progress: bool = False) -> Result:
    """Optimize `model` for `target` (a name, a path to a target file, or a Target) within `budget`.

    budget: {resource: absolute limit} over latency_ms, peak_sram_bytes, flash_bytes, energy_mj, macs, params.
    fit_device: the target's SRAM and flash are budget entries too (default); False reports them only.
    pipeline: pass pipeline text; None lets hwopt choose (Result.why says why).
    train(module, *, epochs, penalty=None) / evaluate(module) -> accuracy: optional callbacks.
    data: (x, y) batches (or a callable returning them): OBD's Hessian, Taylor importance, and, without
        `train`, fine-tuning with a default SGD trainer.
    min_channels: the narrowest a pruned layer may get (default: the target's channel multiple);
    protect: layer names (or module-path prefixes) never pruned.
    measure: also compile with TVM and time before/after where the target runs (the host).
    """
    from .targets import load_target
    t0 = time.perf_counter()
    if not isinstance(model, torch.nn.Module):
        raise HwoptError(f"model must be a torch.nn.Module, got {type(model).__name__} {getattr(model, '__name__', '')}"
                         .rstrip() + (" (call the factory to build the model first)" if callable(model) else ""))
    tgt = load_target(target) if not hasattr(target, "cost") else target
    user_budget = check_budget(budget)
    limits = device_limits(tgt)
    full = dict(user_budget)
    if fit_device:
        for k, v in limits.items():
            full[k] = min(v, full.get(k, math.inf))
    inputs = _as_inputs(example_inputs)
    batches = _as_batches(data)
    if train is not None and not callable(train) or evaluate is not None and not callable(evaluate):
        raise HwoptError("train and evaluate must be callables: train(module, *, epochs, penalty=None), evaluate(module)")
    torch.manual_seed(seed)
    graph = lift(model, inputs)
    before = graph_figures(graph, tgt)
    ctx_train = train if train is not None else (default_trainer(batches) if batches else None)
    ctx = PassContext(target=tgt, train=ctx_train, evaluate=evaluate, data=batches, example_inputs=inputs, seed=seed,
                      progress=progress, workdir=workdir, instruments=[StatsInstrument()])
    widths = {"min_channels": min_channels, "protect": tuple(protect)}
    why = "pipeline given by the caller"
    if pipeline is None:
        canonical = PassManager.parse("canonicalize").run(graph)
        if full:
            error = out_of_reach(canonical, tgt, full, limits if fit_device else {}, **widths)
            if error is not None:
                raise error
        pm, why = choose_pipeline(canonical, tgt, full, user_budget, can_train=ctx_train is not None,
                                  can_evaluate=evaluate is not None, **widths)
    else:
        pm = PassManager.parse(pipeline)
    graph_out = pm.run(graph, ctx)
    after = graph_figures(graph_out, tgt)
    if not meets(after, full):
        missed = [k for k in full if after[k] > full[k] * (1 + 1e-9)]
        hint = " (fit_device=False accepts a model over the device's limits)" if set(missed) & set(limits) else ""
        raise BudgetError(f"pipeline {str(pm)!r} did not meet budget {format_figures(full, missed)} on {tgt.name}; "
                          f"it reached {format_figures(after, missed)}{hint}", {k: after[k] for k in full})
    out_model = lower(graph_out)
    result = Result(out_model, graph_out, graph, tgt, inputs, str(pm), why, before, after, user_budget,
                    passes=ctx.records, limits=limits, warnings=_warnings(pm, graph, graph_out, ctx))
    if evaluate is not None:
        result.accuracy["accuracy"] = (float(evaluate(lower(graph))), float(evaluate(out_model)))
    if measure:
        result.measured = _measure(graph, graph_out, tgt, inputs)
    result.seconds = time.perf_counter() - t0
    return result


def _warnings(pm: PassManager, before, after, ctx: PassContext) -> list[str]:
    pruned = any(r["pass"].split("{")[0] in PRUNING_PASSES and r.get("changed") for r in ctx.records)
    out = []
    if pruned and ctx.train is None:
        out.append("the model was pruned without fine-tuning (give train= or data=): expect an accuracy drop")
    if pruned and ctx.evaluate is None:
        out.append("the model was pruned and never evaluated (give evaluate=): its accuracy is unknown")
    return out


def _measure(before, after, target, inputs) -> dict:
    """Median latency (ms) before/after, compiled with TVM and timed where the target runs (this host)."""
    from .tvm import compile_module
    if target.name != "host":
        return {}
    out = {}
    for key, g in (("before", before), ("after", after)):
        compiled = compile_module(lower(g, bake_masks=True), inputs, target.tvm_target)
        out[key] = compiled.benchmark(*inputs)["median_ms"]
    return {"latency_ms (TVM, default schedules)": out}
