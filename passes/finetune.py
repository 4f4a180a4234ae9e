"""finetune: train the graph's weights with the context's `train` callback (the retrain step of every
prune → retrain recipe, e.g. Han et al. 2015, sec. 3.2). The structure is unchanged, only weights move;
masked weights stay masked (`hwopt.passkit.train_graph`).
"""
from __future__ import annotations

from hwopt.ir import Graph
from hwopt.passkit import train_graph
from hwopt.passmanager import Pass, PassContext, option, register_pass


@register_pass("finetune")
class Finetune(Pass):
    epochs: float = option(1.0, gt=0.0)
    needs = ("train",)

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        return train_graph(graph, ctx, self.epochs, who=self.name)
