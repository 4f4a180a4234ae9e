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
from .passmanager import PassContext, PassManager, StatsInstrument, make_pass
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
             min_channels: int | None = None, protect: tuple[str, ...] = (), quantize: bool | None = None,
             seed: int = 0, measure: bool = False, checkpoint_dir: str | None = None, progress: bool = False,
             workdir: str | None = None) -> Result:
    """Optimize `model` for `target` (a name, a path to a target file, or a Target) within `budget`.

    budget: {resource: absolute limit} over latency_ms, peak_sram_bytes, flash_bytes, energy_mj, macs, params.
    fit_device: the target's SRAM and flash are budget entries too (default); False reports them only.
    pipeline: pass pipeline text; None lets hwopt choose (Result.why says why).
    train(module, *, epochs, penalty=None) / evaluate(module) -> accuracy: optional callbacks.
    data: (x, y) batches (or a callable returning them): OBD's Hessian, Taylor importance, and, without
        `train`, fine-tuning with a default SGD trainer.
    min_channels: the narrowest a pruned layer may get (default: the target's channel multiple);
    protect: layer names (or module-path prefixes) never pruned.
    quantize: int8 post-training quantization (the `quantize` pass, calibrated on `data`) as the last step.
        None (default): on targets that deploy int8 (Cortex-M) when `data` is given; without data the
        result stays float32 and is costed as float32 (the report says so). True: always (needs data);
        False: never. Pruning then plans with the int8 figures of the graph it will become.
    measure: also compile with TVM and time before/after where the target runs (the host).
    checkpoint_dir: where searching passes (nas) keep their checkpoints to resume from (`workdir=` is
        its old, deprecated name).
    """
    from .targets import load_target
    t0 = time.perf_counter()
    if not isinstance(model, torch.nn.Module):
        raise HwoptError(f"model must be a torch.nn.Module, got {type(model).__name__} {getattr(model, '__name__', '')}"
                         .rstrip() + (" (call the factory to build the model first)" if callable(model) else ""))
    tgt = load_target(target) if not hasattr(target, "cost") else target
    checkpoint_dir = _renamed(workdir, checkpoint_dir, "workdir", "checkpoint_dir")
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
                      progress=progress, checkpoint_dir=checkpoint_dir, instruments=[StatsInstrument()])
    widths = {"min_channels": min_channels, "protect": tuple(protect)}
    why = "pipeline given by the caller"
    canonical = PassManager.parse("canonicalize").run(graph)
    quant_pass, dtype_note, ends_int8 = plan_quantization(canonical, tgt, ctx, quantize, given_pipeline=pipeline)
    if ends_int8:
        ctx.target = tgt.priced_as("int8")  # every pass plans with the figures of the int8 model it becomes
    if pipeline is None:
        if full:
            error = out_of_reach(canonical, ctx.target, full, limits if fit_device else {}, **widths)
            if error is not None:
                raise error
        pm, why = choose_pipeline(canonical, ctx.target, full, user_budget, can_train=ctx_train is not None,
                                  can_evaluate=evaluate is not None, **widths)
        if quant_pass is not None:
            pm = PassManager([*pm.passes, quant_pass])
            why += "; then int8 quantization (the target deploys int8)"
    else:
        pm = PassManager.parse(pipeline)
        if quant_pass is not None:
            pm = PassManager([*pm.passes, quant_pass])
    graph_out = pm.run(graph, ctx)
    ctx.target = tgt
    after = graph_figures(graph_out, tgt)
    if not meets(after, full):
        missed = [k for k in full if after[k] > full[k] * (1 + 1e-9)]
        hint = " (fit_device=False accepts a model over the device's limits)" if set(missed) & set(limits) else ""
        raise BudgetError(f"pipeline {str(pm)!r} did not meet budget {format_figures(full, missed)} on {tgt.name}; "
                          f"it reached {format_figures(after, missed)}{hint}", {k: after[k] for k in full})
    out_model = lower(graph_out)
    result = Result(out_model, graph_out, graph, tgt, inputs, str(pm), why, before, after, user_budget,
                    passes=ctx.records, limits=limits, warnings=_warnings(pm, graph, graph_out, ctx),
                    dtype_note=dtype_note)
    if evaluate is not None:
        result.accuracy["accuracy"] = (float(evaluate(lower(graph))), float(evaluate(out_model)))
    if measure:
        result.measured = _measure(graph, graph_out, tgt, inputs)
    result.seconds = time.perf_counter() - t0
    return result


def plan_quantization(canonical, target, ctx: PassContext, quantize: bool | None,
                      given_pipeline: str | None = None) -> tuple:
    """(the quantize pass to end the pipeline with or None, the report's line on the dtype, whether the
    pipeline ends int8 so that its passes plan with int8 figures)."""
    from .quant import is_quantized
    if quantize is not None and not isinstance(quantize, bool):
        raise HwoptError(f"quantize must be True, False or None (the target decides), got {quantize!r}")
    deploys_int8 = target.deploy_dtype == "int8"
    if given_pipeline is not None and "quantize" in [p.name for p in PassManager.parse(given_pipeline).passes]:
        return None, "quantized to int8 by the given pipeline; costs are of the int8 graph (int8 kernels)", True
    if quantize is False or (quantize is None and not deploys_int8):
        why = "quantize=False" if quantize is False else f"{target.name} deploys {target.deploy_dtype}"
        return None, f"float32 ({why}); costs are of the float32 graph (float kernels)", False
    if ctx.data is None:
        if quantize:
            raise HwoptError("quantize=True needs calibration batches: give data= (an iterable of (x, y) batches)")
        return None, (f"NOT quantized: {target.name} deploys int8 but no data= was given to calibrate int8 "
                      "ranges; costs are of the float32 graph (float kernels: 4 B per weight, float latency)"), False
    if is_quantized(canonical):
        return None, "the model is already int8; costs are of the int8 graph (int8 kernels)", False
    q = make_pass("quantize", batches=min(8, len(ctx.data)))
    try:
        q.check_supported(canonical)
    except HwoptError as e:
        if quantize:
            raise
        return None, (f"NOT quantized: {e}; costs are of the float32 graph (float kernels). quantize=False "
                      "silences this"), False
    n = min(8, len(ctx.data))
    reason = "quantize=True" if quantize else f"{target.name} deploys int8"
    return q, (f"quantized to int8 (post-training, calibrated on {n} batch{'es' if n > 1 else ''} of data=) because "
               f"{reason}; costs and accuracy are of the int8 graph (int8 kernels, the "
               "device's integer arithmetic); quantize=False keeps float32"), True


def _renamed(old_value, new_value, old: str, new: str):
    """`new_value`, or `old_value` given under its deprecated name `old` (a DeprecationWarning)."""
    if old_value is None:
        return new_value
    import warnings
    if new_value is not None:
        raise HwoptError(f"give {new}= only ({old}= is its old name)")
    warnings.warn(f"{old}= is deprecated: use {new}=", DeprecationWarning, stacklevel=3)
    return old_value


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
