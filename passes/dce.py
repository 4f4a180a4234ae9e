"""dce: dead-code elimination — drop every node from which the graph output cannot be reached.

Compiler practice. Reachability comes from networkx: live = ancestors(output) ∪ {output}; graph inputs
are always kept, because they are the module's signature.
"""
from __future__ import annotations

import networkx as nx

from hwopt.ir import Graph
from hwopt.passmanager import Pass, PassContext, register_pass


@register_pass("dce")
class DeadCodeElimination(Pass):
    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        live = nx.ancestors(graph.nx, graph.output.name) | {graph.output.name}
        dead = [n for n in graph.order() if n not in live and graph[n].op != "input"]
        if not dead:
            return graph
        out = graph.copy()
        for name in reversed(dead):
            out.remove(name)
        return out
