"""finetune: train the graph's weights with the context's `train` callback (the retrain step of every
prune → retrain recipe, e.g. Han et al. 2015, sec. 3.2).

Lower to a trainable torch module (masked weights stay masked), call ctx.train(module, epochs=...),
read the trained weights back into a copy of the graph; the structure is unchanged, only weights move.
"""
from __future__ import annotations

from hwopt.ir import Graph
from hwopt.lower import lower, read_back
from hwopt.passmanager import Pass, PassContext, register_pass
from hwopt.errors import PassError


@register_pass("finetune")
class Finetune(Pass):
    epochs: float = 1.0
    needs = ("train",)

    def validate(self) -> None:
        if not self.epochs > 0:
            raise PassError(f"option 'epochs' of pass 'finetune' must be > 0, got {self.epochs}")

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        module = lower(graph)
        ctx.train(module, epochs=self.epochs)
        return read_back(graph, module)
