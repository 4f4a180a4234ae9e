"""The supported-op list, generated from the op table and the tables that consume it.

    python -m hwopt.opsdoc > docs/ops.md     # tests/test_opsdoc.py checks the file is up to date

Each row is read from the code, never written by hand: the op's entry in `hwopt.ir.OPS` (semantics,
arity, attributes, parameters, channel-coupling rule, cost kind, lowering, the features that take it)
and `hwopt.frontend_rules` (what torch code lifts to it: the front end's own tables).
"""
from __future__ import annotations

import builtins
import operator
import sys

import torch
from torch.nn import functional as F

from . import frontend
from .ir import OP_DOCS, OPS

_HOW_TO_ADD = """
To add an op, see "How to add an op" in [ARCHITECTURE.md](ARCHITECTURE.md#how-to-add-an-op): a worked
example (`hardtanh`) naming every table an op goes in, which `tests/test_opsdoc.py` performs at run time.
"""


def _lifted_from() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for cls, rule in frontend.MODULE_RULES.items():
        for op in _ops_of_rule(rule, cls):
            out.setdefault(op, []).append(f"nn.{cls.__name__}" if cls.__module__.startswith("torch") else cls.__name__)
    names = {"add": "add", "sub": "sub", "mul": "mul", "div": "div", "cat": "concat", "chunk": "slice", "split": "slice",
             "narrow": "slice", "getitem": "slice", "contiguous": "identity", "reshape": "reshape", "transpose": "permute",
             "scaled_dot_product_attention": "attention", "unsqueeze": "reshape", "squeeze": "reshape",
             "unbind": "slice", "select": "slice", "expand_as": "expand", "reshape_as": "reshape"}
    for fn, name in frontend.FUNCTIONS.items():
        op = names.get(name.rstrip("!"), name.rstrip("!"))
        if op in OPS:
            out.setdefault(op, []).append(_function_name(fn))
    for meth, name in frontend.METHODS.items():
        op = names.get(name.rstrip("!"), name.rstrip("!"))
        if op in OPS:
            out.setdefault(op, []).append(f"Tensor.{meth}")
    out.setdefault("channel_shuffle", []).append("view/transpose/view")
    out.setdefault("interpolate", []).extend(["nn.Upsample", "nn.UpsamplingNearest2d", "nn.UpsamplingBilinear2d"])
    out.setdefault("vector_norm", []).append("Tensor.norm")
    for op in ("mul", "add"):
        out.setdefault(op, []).append("torch.addcmul")
    out.setdefault("const", []).append("parameters read in forward (layer scale)")
    out.setdefault("identity", []).append("stochastic depth / drop-path at inference")
    out.setdefault("attention", []).append("nn.MultiheadAttention (with linear, reshape, permute)")
    out.setdefault("cond_conv2d", []).append("timm CondConv2d")
    out.setdefault("concat", []).append("class token (cat of an expanded parameter)")
    out.setdefault("slice", []).append("x[:, 0], x[:, ::2], unbind, torch.roll (with concat)")
    out.setdefault("fold_batch", []).append("reshape merging dims into the batch (MobileViT)")
    out.setdefault("unfold_batch", []).append("reshape splitting the batch")
    out.setdefault("matmul", []).append("torchvision Swin shifted_window_attention (with the ops it computes)")
    out.setdefault("reshape", []).append("x[:, None], Tensor.unsqueeze / squeeze")
    return out


def _function_name(fn) -> str:
    name = getattr(fn, "__name__", str(fn))
    if fn is torch.linalg.vector_norm:  # its __name__ is linalg_vector_norm
        return "torch.linalg.vector_norm"
    for prefix, mod in (("F.", F), ("torch.", torch), ("operator.", operator), ("", builtins)):
        if getattr(mod, name, None) is fn:
            return prefix + name
    return name


def _ops_of_rule(rule, cls) -> list[str]:
    """The op a module rule lifts `cls` to: the rule applied to a default-constructed instance (so a new
    rule needs no line here); modules without a default constructor are named by the probes below."""
    try:
        op = rule(cls())[0]
        if op in OPS:
            return [op]
    except Exception:  # noqa: BLE001 - required constructor arguments, or a rule that needs a real layer
        pass
    probes = {"Conv1d": "conv1d", "ConvTranspose2d": "conv_transpose2d", "Conv": "conv2d", "Linear": "linear", "BatchNorm": "batch_norm", "LayerNorm": "layer_norm",
              "GroupNorm": "group_norm", "ChannelShuffle": "channel_shuffle", "AdaptiveAvgPool": "adaptive_avg_pool2d",
              "AdaptiveMaxPool": "adaptive_max_pool2d", "MaxPool": "max_pool2d", "AvgPool": "avg_pool2d",
              "Softmax": "softmax"}  # first match wins: Adaptive* before *Pool
    for key, op in probes.items():
        if key in cls.__name__:
            return ["log_softmax" if cls.__name__ == "LogSoftmax" else op]
    return []


def _coupling(op: str) -> str:
    rule = OPS[op].couple
    if rule is None:
        return "channel i ↔ channel i" if OPS[op].channel_preserving else "—"
    return getattr(rule, "summary", rule.__name__)


_COST_KINDS = {"view": "view (no kernel)", "conv": "conv / pointwise / depthwise", "dense": "dense",
               "matmul": "dense (GEMM)", "pool": "pooling", "data": "data movement",
               "resample": "data movement (nearest) / pooling (bilinear)"}


def _cost_kind(op: str) -> str:
    d = OPS[op]
    if d.cost == "elementwise":
        return f"elementwise ({d.work:g} ops/element)"
    if d.cost == "reduce":
        return f"pooling (reduction, {d.work:g} ops/input element)"
    if op == "attention":
        return "dense (GEMM) + softmax over the scores"
    return _COST_KINDS.get(d.cost, "—")


def _lowering(op: str) -> str:
    rule = OPS[op].lower
    return "—" if rule is None else getattr(rule, "kind", "torch call")


def _features(op: str) -> str:
    d = OPS[op]
    out = [f"int8 ({d.int8})" if d.int8 else "", f"firmware ({d.firmware})" if d.firmware else "",
           "dead-unit folding" if d.constant is not None else ""]
    return ", ".join(x for x in out if x)


def markdown() -> str:
    froms = _lifted_from()
    lines = ["# Supported ops", "",
             "Generated by `python -m hwopt.opsdoc` from `hwopt.ir.OPS` and the tables that consume it "
             "(one entry per op; the front end's recognition from hwopt.frontend_rules). Do not edit by hand.", "",
             "| op | semantics | inputs | attributes | parameters | lifted from | channel coupling | cost kind | lowers to | also in |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for op, d in OPS.items():
        lo, hi = d.arity
        arity = f"{lo}" if lo == hi else f"{lo}..{hi if hi is not None else 'n'}"
        params = ", ".join(d.params({a: 1 for a in d.attrs} | {"kernel_size": (1, 1), "groups": 1, "shape": (1,)}).keys()) \
            if d.params else ""
        lines.append(f"| `{op}` | {OP_DOCS[op]} | {arity} | {', '.join(d.attrs)} | {params} | "
                     f"{', '.join(f'`{f}`' for f in sorted(set(froms.get(op, []))))} | {_coupling(op)} | "
                     f"{_cost_kind(op)} | {_lowering(op)} | {_features(op)} |")
    lines += ["", f"{len(OPS)} ops. A model using anything else fails to lift with `UnsupportedOpError`, which "
              "names every unsupported op found and its module path (`err.found` lists them)."]
    lines += ["", "Refused on purpose (the error says why):", ""]
    lines += [f"- `nn.{cls.__name__}`: {why}" for cls, why in frontend.REFUSED.items()]
    lines += [_HOW_TO_ADD.rstrip(), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(markdown())
