"""A new pass written against hwopt's pass toolkit: MobileNet's width multiplier (Howard et al. 2017),
every prunable layer to `alpha` of its width in the target's SIMD multiples, then optional fine-tuning.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python examples/width_multiplier_pass.py
"""
from __future__ import annotations

import numpy as np

import hwopt
from hwopt.passes.channel_prune import unit_importance
from hwopt.passkit import channel_multiple, kept_levels, min_units, resource_value, train_graph, unit_channels
from hwopt.passmanager import Pass, option, register_pass


@register_pass("width-multiplier")
class WidthMultiplier(Pass):
    alpha: float = option(0.5, gt=0.0, le=1.0, doc="fraction of every prunable layer's width to keep")
    epochs: float = option(0.0, ge=0.0, doc="fine-tuning epochs afterwards (needs ctx.train)")
    round_to: int | None = option(None, ge=1, doc="width multiple (default: the target's)")

    def requirements(self):
        return ("train",) if self.epochs > 0 else ()

    def run(self, graph, ctx):
        multiple = channel_multiple(self.round_to, ctx, self.name)
        groups = hwopt.channel_groups(graph)
        importance = unit_importance(graph, "l1", groups=groups)
        removal = {}
        for gr in (g for g in groups if g.prunable):
            levels = kept_levels(gr.size, multiple, unit_channels(gr), min_units(graph, gr, multiple))
            keep = min(levels, key=lambda k: abs(k - self.alpha * gr.size))
            if keep < gr.size:  # the least important units go
                removal[gr.id] = np.argsort(importance[gr.id], kind="stable")[:gr.size - keep]
        out = hwopt.remove_channels(graph, removal, groups) if removal else graph
        ctx.note(macs_before=resource_value(graph, "macs"), macs_after=resource_value(out, "macs"))
        return train_graph(out, ctx, self.epochs, who=self.name)


if __name__ == "__main__":
    import torch
    from hwopt import models

    x = torch.randn(1, 3, 64, 64)
    graph = hwopt.lift(models.mobilenet_v2(num_classes=10).eval(), x)
    ctx = hwopt.PassContext(target=hwopt.load_target("cortex-m7"))
    pipeline = hwopt.PassManager.parse("canonicalize,width-multiplier{alpha=0.5}")
    small = pipeline.run(graph, ctx)
    print(pipeline, "->", small, "\n", ctx.records[-1]["info"])
    assert hwopt.lower(small)(x).shape == (1, 10)
