"""The supported-op list, generated from the op table and the tables that consume it.

    python -m hwopt.opsdoc > docs/ops.md     # tests/test_opsdoc.py checks the file is up to date

Each row is read from the code, never written by hand: `hwopt.ir.OPS` (arity, attributes, parameters,
shape / channel-axis / MAC rules), `hwopt.ir.OP_DOCS` (semantics), `hwopt.frontend_rules` (what torch code
lifts to it), `hwopt.lower` (how it lowers), `hwopt.channels` (how it couples channels) and
`hwopt.targets.cost` (its cost kind).
"""
from __future__ import annotations

import builtins
import importlib
import operator
import sys

import torch
from torch.nn import functional as F

from . import frontend
from .ir import OP_DOCS, OPS

lower = importlib.import_module("hwopt.lower")  # `hwopt.lower` the attribute is the function

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
    special = {"conv2d": "groups tie their in/out channels", "linear": "contracts its input's channels; fresh outputs",
               "concat": "offsets along the concat dim", "slice": "a window of its input's channels",
               "flatten": "channel owns its H·W block", "reshape": "tracked if the channel dim survives (whole or as a block)",
               "permute": "channels move with their axis", "channel_shuffle": "unit = one offset of every shuffle group",
               "group_norm": "unit = one norm group", "layer_norm": "per channel (channels-last)",
               "softmax": "pins the channels it normalizes over", "log_softmax": "pins the channels it normalizes over",
               "mean": "pins channels it averages over", "input": "pinned", "output": "pinned",
               "const": "tied by the op reading it", "add": "operands tied channel by channel",
               "sub": "operands tied channel by channel", "mul": "operands tied channel by channel",
               "div": "operands tied channel by channel",
               "matmul": "heads (a shared leading channel axis) tied across operands; else pins",
               "attention": "heads tied across q, k, v and output; else pins", "sum": "pins channels it sums over",
               "normalize": "pins the channels it normalizes over", "expand": "tracked unless the channel axis grows",
               "cond_conv2d": "pins (per-sample kernels)", "fold_batch": "channels move with their axis (pins if folded)",
               "unfold_batch": "channels move with their axis"}
    special.update({"conv1d": "groups tie their in/out channels", "conv_transpose2d": "groups tie their in/out channels",
                    "vector_norm": "pins channels it takes the norm over"})
    if op in special:
        return special[op]
    return "channel i ↔ channel i" if OPS[op].channel_preserving else "pins"


def _cost_kind(op: str) -> str:
    try:
        from .targets import cost
    except Exception:  # noqa: BLE001 - the doc lists what it can
        return "?"
    if op in cost.VIEW_OPS:
        return "view (no kernel)"
    if op in ("conv2d", "cond_conv2d", "conv1d", "conv_transpose2d"):
        return "conv / pointwise / depthwise"
    if op == "interpolate":
        return "data movement (nearest) / pooling (bilinear)"
    if op == "vector_norm":
        return "pooling"
    if op == "linear":
        return "dense"
    if op in cost.MATMUL_OPS:
        return "dense (GEMM)" + (" + softmax over the scores" if op == "attention" else "")
    if op in cost.REDUCE_OPS:
        return "pooling (reduction)"
    if op in cost.POOL_OPS:
        return "pooling"
    if op in cost.DATA_OPS:
        return "data movement"
    if op in cost.ELEMENTWISE:
        return f"elementwise ({cost.OP_WORK[op]} ops/element)"
    return "—"


def _lowering(op: str) -> str:
    if op in lower.MODULES:
        return "module"
    if op in ("conv2d", "linear", "batch_norm"):
        return "module (weights kept)"
    if op in lower.BINARY:
        return "operator"
    return {"input": "placeholder", "output": "output"}.get(op, "torch call")


def markdown() -> str:
    froms = _lifted_from()
    lines = ["# Supported ops", "",
             "Generated by `python -m hwopt.opsdoc` from `hwopt.ir.OPS` and the tables that consume it "
             "(front end, lowering, channel coupling, cost). Do not edit by hand.", "",
             "| op | semantics | inputs | attributes | parameters | lifted from | channel coupling | cost kind | lowers to |",
             "|---|---|---|---|---|---|---|---|---|"]
    for op, d in OPS.items():
        lo, hi = d.arity
        arity = f"{lo}" if lo == hi else f"{lo}..{hi if hi is not None else 'n'}"
        params = ", ".join(d.params({a: 1 for a in d.attrs} | {"kernel_size": (1, 1), "groups": 1, "shape": (1,)}).keys()) \
            if d.params else ""
        lines.append(f"| `{op}` | {OP_DOCS[op]} | {arity} | {', '.join(d.attrs)} | {params} | "
                     f"{', '.join(f'`{f}`' for f in sorted(set(froms.get(op, []))))} | {_coupling(op)} | "
                     f"{_cost_kind(op)} | {_lowering(op)} |")
    lines += ["", f"{len(OPS)} ops. A model using anything else fails to lift with `UnsupportedOpError`, which "
              "names every unsupported op found and its module path (`err.found` lists them)."]
    lines += ["", "Refused on purpose (the error says why):", ""]
    lines += [f"- `nn.{cls.__name__}`: {why}" for cls, why in frontend.REFUSED.items()]
    lines += [_HOW_TO_ADD.rstrip(), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(markdown())
