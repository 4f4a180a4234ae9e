"""torch -> Relax (torch.export + from_exported_program) and the Relax pass pipelines hwopt builds with."""
from __future__ import annotations

import operator
import warnings

import re
from typing import Any

import tvm
from tvm import relax

from .target import CompileError

# --------------------------------------------------------------------------------------------
# torch -> Relax
# --------------------------------------------------------------------------------------------


def _as_tuple(example_inputs) -> tuple:
    if isinstance(example_inputs, (list, tuple)):
        return tuple(example_inputs)
    return (example_inputs,)


def to_relax(module, example_inputs, *, target: Any = None) -> tvm.IRModule:
    """Lift a torch module (eval mode) into a Relax ``IRModule`` with weights as constants.

    ``target`` is only used for error messages.
    """
    import torch

    inputs = tuple(
        torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x
        for x in _as_tuple(example_inputs)
    )
    was_training = bool(getattr(module, "training", False))
    module.eval()
    try:
        try:
            with torch.no_grad():
                ep = torch.export.export(module, inputs)
        except Exception as exc:
            raise CompileError("export", target, f"torch.export.export failed: {exc}") from exc
        try:
            from tvm.relax.frontend.torch import from_exported_program

            # torch 2.13 warns about its own pytree internals (LeafSpec) when TVM reads the exported
            # program, at every compile: nothing a user can act on
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
                mod = from_exported_program(ep, keep_params_as_input=False, unwrap_unit_return_tuple=True,
                                            custom_convert_map=_SHIFTS)
            mod = relax.transform.DecomposeOpsForInference()(mod)
            mod = relax.transform.CanonicalizeBindings()(mod)
        except Exception as exc:
            raise CompileError(
                "import", target, f"from_exported_program failed: {type(exc).__name__}: {exc}"
            ) from exc
    finally:
        if was_training:
            module.train()
    return mod


def _shift(relax_op, python_op):
    """A converter of torch's `>>` / `<<` (int8 graphs requantize with them: hwopt.quant), which
    from_exported_program of TVM 0.27 does not map, onto Relax's shift through the importer's own
    binary-op conversion (operand promotion as for its bitwise ops)."""
    return lambda node, importer: importer._binary_op(relax_op, python_op)(node)


_SHIFTS = {f"__{name}__.{kind}": _shift(getattr(relax.op, f"{side}_shift"), getattr(operator, name))
           for name, side in (("rshift", "right"), ("lshift", "left")) for kind in ("Tensor", "Scalar")}


# --------------------------------------------------------------------------------------------
# Pass pipelines
# --------------------------------------------------------------------------------------------


def _cpu_backend():
    from tvm.relax.backend.cpu_generic import pipeline

    return pipeline


def _fuse_passes(target: tvm.target.Target) -> list:
    """Legalize + fuse: the same preparation for task extraction and for the final build, so
    that the MetaSchedule database keys match."""
    cg = _cpu_backend()
    return list(cg.library_dispatch_passes(target)) + list(cg.legalize_passes(target))


def _prepare(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    with target, tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential(_fuse_passes(target))(mod)


_SBLOCK_NAME = re.compile(r'T\.sblock\("([^"]+)"\)')


def _canonical_block_names(mod: tvm.IRModule) -> tvm.IRModule:
    """Every PrimFunc's blocks renamed b0, b1, ... in program order ("root" kept).

    MetaSchedule finds a workload in its database by structural equality, which ignores block names,
    but replays the stored trace by block name, and LegalizeOps names some blocks after Relax variables
    (a mean's reduction block is "lv32_red"). So a record tuned in one model matched the same workload
    in another and then failed to replay (ScheduleError). TVM 0.27 exposes no TIR mutator to Python,
    hence the round trip through TVMScript, checked structurally equal (~70 ms per function)."""
    import tvm.script

    out = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            out[gv] = func
            continue
        names: dict[str, str] = {}

        def rename(m: re.Match) -> str:
            old = m.group(1)
            if old == "root":
                return m.group(0)
            return f'T.sblock("{names.setdefault(old, f"b{len(names)}")}")'

        text = func.script()
        renamed = _SBLOCK_NAME.sub(rename, text)
        if renamed == text:
            out[gv] = func
            continue
        new = tvm.script.from_source(renamed)
        tvm.ir.assert_structural_equal(func, new)
        out[gv] = new.with_attrs(dict(func.attrs)) if func.attrs is not None else new
    return tvm.IRModule(out, attrs=mod.attrs)


def _lower_pipeline(target: tvm.target.Target):
    """The Relax VM lowering after ``_prepare`` (and after MetaScheduleApplyDatabase)."""
    cg = _cpu_backend()
    lower = list(cg.dataflow_lower_passes(target)) + list(cg.finalize_passes(target))

    @tvm.transform.module_pass(opt_level=0, name="hwopt_relax_lower")
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            return tvm.transform.Sequential(lower)(mod)

    return _pipeline


def _tir_func_names(mod: tvm.IRModule) -> list[str]:
    return [gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]


def _scheduled_names(mod: tvm.IRModule) -> set[str]:
    out = set()
    for gv, f in mod.functions.items():
        if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None:
            if any("is_scheduled" in str(k) and bool(f.attrs[k]) for k in f.attrs.keys()):
                out.add(gv.name_hint)
    return out
