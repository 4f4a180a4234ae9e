"""`hwopt.compile(graph, target)`: build a graph with Apache TVM for a target's TVM target."""
from __future__ import annotations

import torch

from .ir import Graph
from .lower import lower


def compile(graph: Graph, target, *, tune_trials: int = 0, store=None):  # noqa: A001 - the verb users expect
    """A `hwopt.tvm.CompiledModel` for `graph` on `target` (name, path or Target): `.run`, `.benchmark`, `.export`.

    Masks are baked into the weights; inputs take the graph's input shapes. `tune_trials > 0` tunes with
    MetaSchedule into `store` (a hwopt.tvm.TuningStore or its root directory; default the shared store),
    whose records later builds reuse. For a whole-network Cortex-M image see hwopt.firmware.
    """
    from .tvm import compile_module
    from .targets import load_target
    tgt = load_target(target) if not hasattr(target, "tvm_target") else target
    inputs = tuple(torch.zeros(n.spec.shape, dtype=getattr(torch, n.spec.dtype)) for n in graph.inputs)
    return compile_module(lower(graph, bake_masks=True), inputs, tgt.tvm_target, tune_trials=tune_trials, store=store)
