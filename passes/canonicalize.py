"""canonicalize: the clean-up every pipeline starts with — drop identities, fold BN, remove dead code.

Compiler practice. A pipeline of three passes (it runs like one pass and prints as `canonicalize`):
1) drop-identity: identity nodes, and arithmetic that is the identity (x + 0, x - 0, x · 1, x / 1: timm's
MobileOne adds a Python 0 where a branch is absent), are bypassed (their users read their input); 2) fold-bn;
3) dce.
Dropout is kept: it is the identity at inference but matters when a later pass retrains.
"""
from __future__ import annotations

from hwopt.ir import Graph
from hwopt.passmanager import Pass, PassContext, pipeline, register_pass

from .dce import DeadCodeElimination
from .fold_bn import FoldBatchNorm


def is_identity(n) -> bool:
    """`n` returns its (only) input unchanged: an identity op, or x + 0, x - 0, x · 1, x / 1 with a scalar."""
    if n.op == "identity":
        return True
    if len(n.inputs) != 1 or n.attrs.get("scalar") is None:
        return False
    s, reverse = n.attrs["scalar"], n.attrs.get("reverse", False)
    if n.op in ("add", "mul"):
        return s == (0 if n.op == "add" else 1)
    return n.op in ("sub", "div") and not reverse and s == (0 if n.op == "sub" else 1)


@register_pass("drop-identity")
class DropIdentity(Pass):
    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        out = None
        for n in list(graph):
            if is_identity(n):
                out = out if out is not None else graph.copy()
                out.replace_uses(n.name, out[n.name].inputs[0])  # its input may be a bypassed identity too
                out.remove(n.name)
        return graph if out is None else out


Canonicalize = pipeline("canonicalize", DropIdentity(), FoldBatchNorm(), DeadCodeElimination())
