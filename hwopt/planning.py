"""Pipeline choice: which passes meet a budget on a target, and why. No pipeline text is patched: every
budget entry (the user's and the device's SRAM / flash limits) becomes an option of the pass that meets it.

- no budget: `canonicalize` only (exact clean-ups);
- a flash budget alone, with training and evaluation callbacks, on a model whose activations already fit:
  unstructured magnitude pruning (Han et al. 2015) at the global sparsity whose sparse storage meets it;
- otherwise `channel-prune` in budget mode with every budgeted resource at once (removing channels
  lowers latency, activation memory, weights and energy together), widths in multiples of the target's
  SIMD width and never below `min_channels`; then `finetune` when there is a way to train.
"""
from __future__ import annotations

import torch

from . import sparse as sp
from .errors import BudgetError
from .figures import format_figures, graph_figures, meets
from .ir import Graph
from .passmanager import Pass, PassContext, PassManager, make_pass

FINETUNE_EPOCHS = 1.0


def prune_pass(budget: dict, *, min_channels: int | None = None, protect: tuple[str, ...] = ()) -> Pass:
    """channel-prune in budget mode for every entry of `budget`, widths rounded to the target's multiple."""
    opts = dict(budget, round_to="target")
    if min_channels is not None:
        opts["min_channels"] = int(min_channels)
    if protect:
        opts["protect"] = tuple(protect)
    return make_pass("channel-prune", **opts)


def smallest_reachable(graph: Graph, target, *, min_channels: int | None = None, protect: tuple[str, ...] = ()) -> Graph:
    """Every eligible channel group at its minimum width: the floor channel removal can reach."""
    p = make_pass("channel-prune", ratio=0.5, round_to="target", min_channels=min_channels, protect=tuple(protect))
    return p.smallest(graph, PassContext(target=target))


def choose_pipeline(graph: Graph, target, budget: dict, user_budget: dict, *, can_train: bool, can_evaluate: bool,
                    min_channels: int | None = None, protect: tuple[str, ...] = ()) -> tuple[PassManager, str]:
    """(pipeline, why) for `budget` (the user's `user_budget` plus the device limits) on `target`;
    `graph` is the canonicalized model."""
    passes: list[Pass] = [make_pass("canonicalize")]
    tune = ", then fine-tuning" if can_train else " (no fine-tuning: give train= or data=)"
    limits = sorted(set(budget) - set(user_budget))
    device = f"; the device's own limits ({', '.join(limits)}) are part of the budget" if limits else ""
    start = graph_figures(graph, target)
    if meets(start, budget):
        return PassManager(passes), ("the model already meets the budget" if budget else "no budget") + \
            ": only exact clean-ups (identities, BN folding, dead code)" + device
    if set(user_budget) == {"flash_bytes"} and can_train and can_evaluate and meets(start, {
            k: v for k, v in budget.items() if k != "flash_bytes"}):
        s = flash_sparsity(graph, target, budget["flash_bytes"])
        passes.append(make_pass("magnitude-prune", sparsity=round(s, 4)))
        return PassManager(passes), ("flash budget with training callbacks: unstructured magnitude pruning "
                                     "(Han et al. 2015) stored sparsely, which keeps accuracy where channel "
                                     "removal would cost more" + device)
    passes.append(prune_pass(budget, min_channels=min_channels, protect=protect))
    if can_train:
        passes.append(make_pass("finetune", epochs=FINETUNE_EPOCHS))
    return PassManager(passes), (
        f"budget on {', '.join(sorted(budget))}: channel removal ranked by importance per unit of the resource "
        "furthest over budget (the target's cost model), widths rounded to the target's SIMD multiple" + tune + device)


def flash_sparsity(graph: Graph, target, flash_budget: float) -> float:
    """The global magnitude sparsity whose sparse storage meets the flash budget (bisection on masks)."""
    names = sp.prunable_layers(graph)
    scores = torch.cat([sp.effective_weight(graph[n]).abs().flatten() for n in names])
    ones = torch.ones_like(scores)
    sizes = [graph[n].params["weight"].numel() for n in names]

    def flash_at(s: float) -> int:
        mask = sp.prune_lowest(scores, ones, s)
        masks = {n: m.reshape(graph[n].params["weight"].shape) for n, m in zip(names, torch.split(mask, sizes))}
        return target.cost(sp.with_masks(graph, masks)).flash_bytes

    lo, hi = 0.0, 0.995
    floor = flash_at(hi)
    if floor > flash_budget:
        raise BudgetError(f"flash budget {flash_budget:,.0f} B is below what 99.5 % sparsity reaches ({floor:,} B)",
                          {"flash_bytes": floor})
    for _ in range(20):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if flash_at(mid) <= flash_budget else (mid, hi)
    return hi


def out_of_reach(graph: Graph, target, budget: dict, limits: dict, **widths) -> BudgetError | None:
    """A BudgetError naming the budget entries even the narrowest model misses (None if all are reachable)."""
    floor = graph_figures(smallest_reachable(graph, target, **widths), target)
    missed = [k for k in budget if floor[k] > budget[k] * (1 + 1e-9)]
    if not missed:
        return None
    named = ", ".join(f"{k}={budget[k]:,.4g}" + (" (the device's limit)" if k in limits else "") for k in missed)
    return BudgetError(f"budget {named} is out of reach on {target.name}: even with every prunable channel group "
                       f"at its minimum width the model needs {format_figures(floor, missed)}",
                       {k: floor[k] for k in budget})
