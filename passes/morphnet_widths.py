"""MorphNet's width model: a graph's resource as a function of its channel-group widths, and the expand step.

`WidthModel` costs a graph with its prunable groups at other widths on shape-only copies (no weights
materialised), memoised per width vector; `unit_costs` is the marginal cost of one unit per group, the
regulariser's coefficients c_g; `expand_sizes` / `expand` grow (or shrink) every group uniformly, then
greedily, to a budget. Split from morphnet.py (the regulariser, the shrink and the pass), which
re-exports every name here.
"""
from __future__ import annotations

import math

import torch

from hwopt.channels import channel_groups, resize_groups
from hwopt.errors import BudgetError
from hwopt.ir import Graph
from hwopt.passkit import group_label, min_units, resource_value, unit_channels, unit_step

__all__ = ["WidthModel", "unit_costs", "floor_units", "expand_sizes", "expand", "group_widths", "SWAP_BELOW"]

SWAP_BELOW = 0.985  # expand trades widths between groups only while the fill leaves it under this fraction of the budget


# ---------------------------------------------------------------------------------------------------
# Resources


class WidthModel:
    """The resource of `graph` with its prunable groups at other widths, without materialising weights.

    `graph_for(sizes)` builds a shape-only copy (parameters are zero-stride expanded tensors, so a graph of
    any width costs no memory) whose cost equals that of ``hwopt.resize_groups(graph, sizes)``; graphs
    with a channel slice fall back to ``resize_groups`` itself (exact, slower)."""

    def __init__(self, graph: Graph, resource: str, target=None):
        resource_value(graph, resource, target)  # a resource of the target's needs a target: fail here
        self.graph, self.resource, self.target = graph, resource, target
        self.groups = channel_groups(graph)
        self.base = {gr.id: gr.size for gr in self.groups}
        self.prunable = [gr.id for gr in self.groups if gr.prunable]
        self.contrib: dict[str, list[tuple[int, int]]] = {}
        for gr in self.groups:
            for name, idx in gr.members.items():
                self.contrib.setdefault(name, []).append((gr.id, int(idx.shape[1])))
        self.exact = any(n.op == "slice" and n.attrs["dim"] == 1 for n in graph.nodes.values())
        self._memo: dict[tuple, float] = {}
        self.evaluations = 0

    def _key(self, sizes: dict[int, int]) -> tuple:
        return tuple(int(sizes.get(g, self.base[g])) for g in self.prunable)

    def graph_for(self, sizes: dict[int, int]) -> Graph:
        if self.exact:
            return resize_groups(self.graph, {g: int(s) for g, s in sizes.items() if s != self.base[g]}, groups=self.groups)
        g0 = self.graph
        ch = {}
        for name, parts in self.contrib.items():
            ch[name] = sum(int(sizes.get(gid, self.base[gid])) * k for gid, k in parts)
        new = g0.copy()
        z = torch.zeros(())
        for name, n in new.nodes.items():
            if n.op not in ("conv2d", "linear", "batch_norm"):
                continue
            out = ch.get(name, g0[name].spec.channels)
            cin = ch.get(n.inputs[0], g0[n.inputs[0]].spec.channels)
            a, p = dict(n.attrs), {}
            if n.op == "conv2d":
                groups = a["groups"]
                if groups > 1:
                    groups = cin // (a["in_channels"] // a["groups"])
                a.update(out_channels=out, in_channels=cin, groups=groups)
                kh, kw = n.params["weight"].shape[2:]
                wshape = (out, cin // groups, kh, kw)
            elif n.op == "linear":
                a.update(out_features=out, in_features=cin)
                wshape = (out, cin)
            else:
                a["num_features"] = out
                wshape = (out,)
            for k in n.params:
                if k in ("weight", "weight_mask"):
                    p[k] = (z + (1.0 if k == "weight_mask" else 0.0)).expand(wshape)
                else:
                    p[k] = z.expand((out,))
            n.attrs, n.params = a, p
        new.infer_shapes()
        return new

    def cost(self, sizes: dict[int, int]) -> float:
        key = self._key(sizes)
        hit = self._memo.get(key)
        if hit is None:
            self.evaluations += 1
            hit = self._memo[key] = resource_value(self.graph_for(sizes), self.resource, self.target)
        return hit

    def marginal(self, sizes: dict[int, int], gids) -> dict[int, float]:
        """Cost of one unit of each group in `gids` at `sizes`: c(sizes) − c(g one unit narrower)
        (one unit wider − c(sizes) for a group of one unit)."""
        sizes = {g: int(sizes.get(g, self.base[g])) for g in self.prunable}
        here = self.cost(sizes)
        out = {}
        for g in gids:
            s = sizes[g]
            if s > 1:
                out[g] = here - self.cost({**sizes, g: s - 1})
            else:
                out[g] = self.cost({**sizes, g: s + 1}) - here
        return out


def unit_costs(graph: Graph, resource: str, target=None, sizes: dict[int, int] | None = None) -> dict[int, float]:
    """Marginal cost of one unit of every prunable group of `graph` (at `sizes`, default the current widths)."""
    wm = WidthModel(graph, resource, target)
    return wm.marginal(sizes or {}, wm.prunable)


# ---------------------------------------------------------------------------------------------------
# Expand


def floor_units(graph: Graph, gr, round_to: int = 1) -> int:
    """The narrowest width (in units) `gr` can end at after expand: one step of `round_to` channels, and at
    least ``min_units`` (2 where a depthwise conv reads the group)."""
    step = unit_step(max(1, int(round_to)), unit_channels(gr))
    return step * max(1, -(-min_units(graph, gr) // step))


def expand_sizes(graph: Graph, budget: float, resource: str, target=None, round_to: int = 1,
                 width_model: WidthModel | None = None) -> tuple[dict[int, int], dict]:
    """Unit counts of every prunable group so that the resource is ≤ budget and as close to it as the
    rounding allows: bisection on a uniform multiplier, then greedy fill and swaps. Raises BudgetError if
    even every group at one multiple costs more than `budget`."""
    wm = width_model or WidthModel(graph, resource, target)
    gids = wm.prunable
    if not gids:
        raise BudgetError("morphnet: the graph has no prunable channel group to resize",
                          {"resource": resource, "cost": wm.cost({})})
    groups = {gr.id: gr for gr in wm.groups}
    step = {g: unit_step(max(1, int(round_to)), unit_channels(groups[g])) for g in gids}
    base = {g: wm.base[g] for g in gids}

    low = {g: floor_units(graph, groups[g], round_to) for g in gids}

    def at(w: float) -> dict[int, int]:
        return {g: max(low[g], int(math.floor(w * base[g] / step[g] + 0.5)) * step[g]) for g in gids}

    minimum = dict(low)
    c_min = wm.cost(minimum)
    if c_min > budget:
        raise BudgetError(f"morphnet: budget {budget:.6g} ({resource}) is below the reachable minimum {c_min:.6g} "
                          f"(every prunable group at its minimum width of {max(1, int(round_to))} channel(s))",
                          {"resource": resource, "minimum": c_min, "budget": budget})
    lo, hi = 0.0, 2.0
    while wm.cost(at(hi)) <= budget and hi < 2 ** 12:
        lo, hi = hi, hi * 2
    for _ in range(40):
        if at(lo) == at(hi) or hi - lo < 1e-6:
            break
        mid = (lo + hi) / 2
        if wm.cost(at(mid)) <= budget:
            lo = mid
        else:
            hi = mid
    sizes = at(lo)
    sizes_bisect = dict(sizes)
    ideal = {g: max(hi, 1e-9) * base[g] for g in gids}

    def fill(sizes: dict[int, int], frozen: set[int] = frozenset()) -> dict[int, int]:
        """Add one step to the group furthest below its proportional share while it fits."""
        sizes = dict(sizes)
        exhausted = set(frozen)
        while True:
            cands = sorted((g for g in gids if g not in exhausted), key=lambda g: (sizes[g] / ideal[g], g))
            for g in cands:
                trial = {**sizes, g: sizes[g] + step[g]}
                if wm.cost(trial) <= budget:
                    sizes = trial
                    break
                exhausted.add(g)  # costs only rise from here: it never fits again
            else:
                return sizes

    sizes = fill(sizes)
    best = wm.cost(sizes)
    # swap: give back one step of a group and refill others, while that gets closer to the budget
    for _ in range(8):
        if best >= SWAP_BELOW * budget:
            break
        improved = False
        for g in sorted(gids, key=lambda g: -wm.marginal(sizes, [g])[g] if sizes[g] - step[g] >= low[g] else 0):
            if sizes[g] - step[g] < low[g]:
                continue
            trial = fill({**sizes, g: sizes[g] - step[g]}, frozen={g})
            c = wm.cost(trial)
            if best < c <= budget:
                sizes, best, improved = trial, c, True
                break
        if not improved:
            break
    return sizes, {"multiplier": lo, "multiplier_over": hi, "bisection_sizes": sizes_bisect, "minimum": c_min,
                   "cost": best, "budget": budget, "evaluations": wm.evaluations, "step": step}


def expand(graph: Graph, budget: float, resource: str, target=None, round_to: int = 1,
           generator: torch.Generator | None = None) -> tuple[Graph, dict]:
    """`graph` with every prunable group resized so that `resource` ≤ budget, within the rounding of it
    (see `expand_sizes`); kept channels keep their weights, new ones are fresh. Returns (graph, info)."""
    wm = WidthModel(graph, resource, target)
    sizes, info = expand_sizes(graph, budget, resource, target, round_to, wm)
    out = resize_groups(graph, sizes, generator=generator, groups=wm.groups)
    info["cost"] = resource_value(out, resource, target)
    return out, info


def group_widths(graph: Graph) -> dict[str, int]:
    """Channels of every prunable group, labelled by its first producer (or first member)."""
    return {group_label(gr): gr.size * unit_channels(gr) for gr in channel_groups(graph) if gr.prunable}
