"""canonicalize: the clean-up every pipeline starts with — drop identities, fold BN, remove dead code.

Compiler practice. 1) identity nodes are bypassed (their users read their input); 2) fold-bn;
3) dce. Dropout is kept: it is the identity at inference but matters when a later pass retrains.
"""
from __future__ import annotations

from hwopt.ir import Graph
from hwopt.passmanager import Pass, PassContext, register_pass

from .dce import DeadCodeElimination
from .fold_bn import FoldBatchNorm


@register_pass("canonicalize")
class Canonicalize(Pass):
    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        out = None
        for n in list(graph):
            if n.op == "identity":
                out = out if out is not None else graph.copy()
                out.replace_uses(n.name, out[n.name].inputs[0])  # its input may be a bypassed identity too
                out.remove(n.name)
        g = out if out is not None else graph
        g2 = DeadCodeElimination().run(FoldBatchNorm().run(g, ctx), ctx)
        return g2 if (g2 is not g or out is not None) else graph
