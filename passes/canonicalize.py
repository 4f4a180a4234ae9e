"""canonicalize: the clean-up every pipeline starts with — drop identities, fold BN, remove dead code.

Compiler practice. A pipeline of three passes (it runs like one pass and prints as `canonicalize`):
1) drop-identity: identity nodes are bypassed (their users read their input); 2) fold-bn; 3) dce.
Dropout is kept: it is the identity at inference but matters when a later pass retrains.
"""
from __future__ import annotations

from hwopt.ir import Graph
from hwopt.passmanager import Pass, PassContext, pipeline, register_pass

from .dce import DeadCodeElimination
from .fold_bn import FoldBatchNorm


@register_pass("drop-identity")
class DropIdentity(Pass):
    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        out = None
        for n in list(graph):
            if n.op == "identity":
                out = out if out is not None else graph.copy()
                out.replace_uses(n.name, out[n.name].inputs[0])  # its input may be a bypassed identity too
                out.remove(n.name)
        return graph if out is None else out


Canonicalize = pipeline("canonicalize", DropIdentity(), FoldBatchNorm(), DeadCodeElimination())
