"""channel-prune: structured removal of whole coupled channel groups, with hardware-friendly widths.

Which channels can go together is the channel-coupling analysis (`hwopt.channel_groups`: conv→BN,
residual adds, concat offsets, depthwise / grouped convs, SE, flatten→linear); this pass decides *which
units* of each prunable group to remove, and `hwopt.remove_channels` removes them physically, carrying
every kept weight over exactly.

Options (all writable as text, e.g. ``channel-prune{criterion=l1,ratio=0.5,round_to=8}``):

criterion
    ``l1`` / ``l2``: magnitude of every weight attached to the unit — the rows it owns in the group's
    producers (conv / linear output rows, depthwise filters) *and* the columns that read it in the
    group's consumers (conv / linear input columns, H·W columns per channel after a flatten). Both
    sides count because a channel is useless if either side is ~0: a channel whose readers ignore it is
    dead however large its filter (BN rescales filters, so the producer side alone is easily fooled).
    ``l2`` is the Euclidean norm over the same weights. ``bn``: Σ|γ| of the group's batch norms (Liu
    et al. 2017, network slimming); groups without a BN fall back to ``l1``. ``taylor``: first-order
    Taylor saliency Σ|w·∂L/∂w| over the same weights plus the BN γ/β of the unit (Molchanov et al.
    2019), with the cross-entropy loss accumulated over the batches of ``ctx.data`` (an iterable of
    (x, y) batches the caller sets on the context; it must be finite), or ``ctx.loss(output, y)`` if set.
ratio, or budgets
    ``ratio``: fraction of each eligible group's units to remove (per-layer), or of all eligible units
    (``global_ranking=true``). Budgets (one or several, absolute values in hwopt's resource vocabulary,
    ``hwopt.figures``): ``latency_ms``, ``peak_sram_bytes``, ``flash_bytes``, ``energy_mj`` (these use
    ``ctx.target``'s cost model), ``macs``, ``params``; ``macs_fraction`` is a fraction of the input's MACs
    (``macs_fraction=0.5`` halves them). Budget mode ranks removable chunks by normalised importance per
    unit of the resource saved (that resource split over the nodes carrying it, ``hwopt.passkit.node_costs``)
    and removes the cheapest until the *measured* figures of the pruned graph (re-evaluated after every
    round) meet every budget; each round works on the resource furthest over its budget. A budget below
    the figures of the smallest graph the pass may produce raises ``hwopt.BudgetError`` giving them.
global_ranking
    Ratio mode only (budget mode is always global). Units of different groups are compared after each
    group's importances are divided by the group's mean importance: raw magnitudes depend on fan-in,
    init and BN scale, so only the *relative* standing of a unit within its layer is comparable across
    layers; a layer whose units are uniformly important keeps more of them.
round_to
    ``target`` (the target's ``channel_multiple``), an int, or ``none`` (default: the target's multiple
    when ``ctx.target`` is set, else 1). Kept widths are multiples of it; rounding never raises a width
    above its original, a group never drops below ``min_channels`` (default: one multiple), and a group no
    wider than that is left alone. For units of several channels (grouped convs) the multiple applies to
    channels.
protect
    Node names (or module-path prefixes, e.g. ``layer1``) whose groups are never pruned.
steps, finetune_epochs
    Prune in ``steps`` equal increments (of the ratio, or of the cost gap to the budget); with
    ``finetune_epochs > 0`` the graph is lowered, trained with ``ctx.train(module, epochs=...)`` after
    each step (the last included) and the trained weights are written back into the graph.

Never removes every unit of a group. The input graph is never mutated.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Optional

import numpy as np
import torch

from hwopt.channels import ChannelGroup, channel_groups, remove_channels
from hwopt.errors import BudgetError, PassError
from hwopt.ir import Graph, conv_weight_oi
from hwopt.lower import submodules
from hwopt.passkit import (channel_multiple, kept_levels, min_units, node_costs, owns_its_layers, resource_value,
                           train_graph, unit_channels, unit_step)
from hwopt.passmanager import Pass, PassContext, option, register_pass

CRITERIA = ("l1", "l2", "bn", "taylor")

__all__ = ["ChannelPrune", "unit_importance", "eligible_groups", "kept_levels", "graph_macs", "channel_sensitivity"]


# ---------------------------------------------------------------------------------------------------
# Importance


def _row_col(w: torch.Tensor, criterion: str, want_cols: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Σ|w| (l1) or Σw² (l2) per output row and per input column (abs/square once; columns reduce over
    the rows first, a contiguous sum of slices, then the small kernel: measured ~2x faster on ResNet-50
    than one strided reduction over (0, 2, 3), and faster than torch.linalg.vector_norm)."""
    w = w.detach().float()
    m = w.abs() if criterion == "l1" else w * w
    rows = m.sum(dim=tuple(range(1, m.dim()))).double().numpy()
    cols = None
    if want_cols:
        c = m.sum(dim=0)
        cols = (c.sum(dim=tuple(range(1, c.dim()))) if c.dim() > 1 else c).double().numpy()
    return rows, cols


def _row_col_sums(graph: Graph, criterion: str, saliency: dict | None, needed: set[str] | None = None,
                  cols_needed: set[str] | None = None, bn_needed: bool = True) -> tuple[dict, dict, dict]:
    """Per node: magnitude summed per output channel (rows), per input channel (cols, groups==1 only),
    and for BN the |γ| (or taylor saliency of γ, β) per channel. `needed`: only these nodes;
    `cols_needed`: columns only for these (default: all of `needed`); `bn_needed`: BN values at all."""
    rows, cols, bn = {}, {}, {}
    for n in graph.nodes.values():
        if needed is not None and n.name not in needed:
            continue
        want_cols = cols_needed is None or n.name in cols_needed
        if n.op in ("conv2d", "linear"):
            w = n.params["weight"]
            if "weight_mask" in n.params:
                w = w * n.params["weight_mask"]
            want_cols = want_cols and (n.op == "linear" or n.attrs["groups"] == 1)
            if saliency is not None:
                r, c = _row_col(saliency[n.name]["weight"], "l1", want_cols)
                if "bias" in saliency[n.name]:
                    r = r + saliency[n.name]["bias"].double().numpy()
            else:
                r, c = _row_col(w, criterion, want_cols)
            rows[n.name] = r
            if c is not None:
                cols[n.name] = c
        elif n.op in ("conv1d", "conv_transpose2d"):  # magnitudes per output / input channel, conv layout
            r, c = _row_col(conv_weight_oi(n, None if saliency is None else saliency[n.name]["weight"]),
                            "l1" if saliency is not None else criterion, want_cols and n.attrs["groups"] == 1)
            if saliency is not None and "bias" in saliency[n.name]:
                r = r + saliency[n.name]["bias"].double().numpy()
            rows[n.name] = r
            if c is not None:
                cols[n.name] = c
        elif n.op == "batch_norm" and bn_needed:
            if saliency is not None:
                s = saliency.get(n.name, {})
                v = sum((s[k].double().numpy() for k in ("weight", "bias") if k in s), np.zeros(n.attrs["num_features"]))
                bn[n.name] = v
            elif "weight" in n.params:
                bn[n.name] = n.params["weight"].detach().double().abs().numpy()
    return rows, cols, bn


def unit_importance(graph: Graph, criterion: str = "l1", data: Iterable | None = None,
                    loss: Callable | None = None, groups: list[ChannelGroup] | None = None) -> dict[int, np.ndarray]:
    """Raw importance of every unit of every prunable group: {group id: array (units,)}.

    See the module docstring for the criteria. `data` (batches of (x, y)) is needed for 'taylor'.
    """
    if criterion not in CRITERIA:
        raise PassError(f"option 'criterion' of pass 'channel-prune': {criterion!r} is not one of {list(CRITERIA)}")
    groups = groups if groups is not None else channel_groups(graph)
    saliency = _taylor_saliency(graph, data, loss) if criterion == "taylor" else None
    mag = "l1" if criterion in ("bn", "taylor") else criterion
    needed = {n for gr in groups if gr.prunable for n in (*gr.producers, *gr.consumers)}
    # the columns read below: a consumer's, where its input is one of the group's tensors
    cols_needed = {c for gr in groups if gr.prunable for c in gr.consumers if graph[c].inputs[0] in gr.members}
    rows, cols, bn = _row_col_sums(graph, mag, saliency, needed, cols_needed, criterion in ("bn", "taylor"))
    out = {}
    for gr in groups:
        if not gr.prunable:
            continue
        imp = np.zeros(gr.size)
        if criterion == "bn":
            bns = [p for p in gr.producers if p in bn]
            for p in bns:
                imp += bn[p][gr.members[p]].sum(axis=1)
            if bns:
                out[gr.id] = imp
                continue
        for p in gr.producers:
            if p in rows:
                imp += rows[p][gr.members[p]].sum(axis=1)
            elif saliency is not None and p in bn:
                imp += bn[p][gr.members[p]].sum(axis=1)
        for c in gr.consumers:
            src = graph[c].inputs[0]
            if c in cols and src in gr.members:
                imp += cols[c][gr.members[src]].sum(axis=1)
        out[gr.id] = np.sqrt(imp) if criterion == "l2" else imp
    return out


def _taylor_saliency(graph: Graph, data, loss) -> dict[str, dict[str, torch.Tensor]]:
    if data is None:
        raise PassError("option 'criterion' of pass 'channel-prune': criterion=taylor needs data — set "
                        "ctx.data to a finite iterable of (x, y) batches")
    from hwopt.lower import lower

    module = lower(graph)
    mapping = submodules(graph, module)
    module.eval()  # BN in inference mode: the saliency of the deployed function
    loss = loss or torch.nn.functional.cross_entropy
    params = {(name, k): getattr(m, k) for name, m in mapping.items() for k in ("weight", "bias")
              if isinstance(getattr(m, k, None), torch.nn.Parameter)}
    acc = {key: torch.zeros_like(p) for key, p in params.items()}
    seen = 0
    for x, y in data:
        module.zero_grad(set_to_none=True)
        out = module(x)
        loss(out, y).backward()
        for key, p in params.items():
            if p.grad is not None:
                acc[key] += (p.detach() * p.grad).abs()
        seen += 1
    if seen == 0:
        raise PassError("option 'criterion' of pass 'channel-prune': ctx.data yielded no batch for criterion=taylor")
    out: dict[str, dict[str, torch.Tensor]] = {}
    for (name, k), v in acc.items():
        if graph[name].op in ("conv2d", "linear") and "weight_mask" in graph[name].params and k == "weight":
            v = v * graph[name].params["weight_mask"]
        out.setdefault(name, {})[k] = v
    return out


# ---------------------------------------------------------------------------------------------------
# Planning


def _is_protected(name: str, protect: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in protect)


def eligible_groups(graph: Graph, protect: tuple[str, ...] = (), groups: list[ChannelGroup] | None = None) -> list[ChannelGroup]:
    """Prunable groups none of whose member / producer nodes is protected."""
    groups = groups if groups is not None else channel_groups(graph)
    return [g for g in groups if g.prunable and g.size > 1 and
            not (protect and any(_is_protected(n, protect) for n in list(g.members) + g.producers))]


def _nearest_level(levels: list[int], want: float) -> int:
    # levels descend (distinct); nearest, ties toward keeping more. Distance to `want` falls then rises
    # along the sorted levels, so only the two around it compete (a min over all of them was ~360 key
    # calls a group on MobileNetV2).
    ascending = levels[::-1]
    i = bisect.bisect_left(ascending, want)
    return min(ascending[max(0, i - 1):i + 1], key=lambda k: (abs(k - want), -k))


def _nearest_kept(size: int, multiple: int, unit_ch: int, min_keep: int, want: float) -> int:
    """`_nearest_level(kept_levels(size, multiple, unit_ch, min_keep), want)` without listing the levels (a
    2048-unit group has 2048 of them at multiple 1): they are `size` and the multiples of the unit step
    in [floor, size), so only `size` and the two steps around `want` can be nearest."""
    mu = unit_step(multiple, unit_ch)
    floor = mu * max(1, -(-min_keep // mu))
    top = (size - 1) // mu * mu
    candidates = [size]
    if top >= floor:
        below = min(max(int(want // mu) * mu, floor), top)
        candidates += [below, min(below + mu, top)]
    return min(candidates, key=lambda k: (abs(k - want), -k))


def graph_macs(graph: Graph) -> int:
    return int(resource_value(graph, "macs"))


def _group_key(gr: ChannelGroup) -> tuple[str, ...]:
    return tuple(sorted(gr.members))


@dataclass
class _GroupPlan:
    group: ChannelGroup
    imp: np.ndarray  # normalised importance per unit (aligned with the group's units)
    levels: list[int]

    @property
    def order(self) -> np.ndarray:
        return np.argsort(self.imp, kind="stable")


def _normalise(imp: np.ndarray) -> np.ndarray:
    m = float(np.mean(imp))
    return imp / m if m > 0 else np.ones_like(imp)


def _per_unit_saving(graph: Graph, gr: ChannelGroup, node_cost: dict[str, float], readers: bool) -> float:
    """Linearised cost saved by removing one unit of `gr`: each node writing the group's channels loses
    the unit's share of its cost, and (`readers`: costs of work, not of buffers) so does each node reading them."""
    total = 0.0
    touched = set()
    for name, idx in gr.members.items():
        ch = graph[name].spec.channels
        if name in node_cost and name not in touched:
            total += node_cost[name] * idx.shape[1] / ch
            touched.add(name)
        if not readers:
            continue
        for u in graph.users(name):
            if u in touched or u in gr.members or u not in node_cost:
                continue
            un = graph[u]
            if un.inputs and un.inputs[0] == name:
                total += node_cost[u] * idx.shape[1] / ch
                touched.add(u)
    return total


BUDGETS = ("latency_ms", "peak_sram_bytes", "flash_bytes", "energy_mj", "macs", "params")


# ---------------------------------------------------------------------------------------------------
# The pass


@register_pass("channel-prune")
@dataclass(frozen=True)
class ChannelPrune(Pass):
    criterion: str = option("l1", choices=CRITERIA)
    ratio: Optional[float] = option(None, ge=0.0, lt=1.0)
    macs_fraction: Optional[float] = option(None, gt=0.0, le=1.0)
    latency_ms: Optional[float] = option(None, gt=0.0)
    peak_sram_bytes: Optional[float] = option(None, ge=1.0)
    flash_bytes: Optional[float] = option(None, ge=1.0)
    energy_mj: Optional[float] = option(None, gt=0.0)
    macs: Optional[float] = option(None, gt=0.0)
    params: Optional[float] = option(None, ge=1.0)
    global_ranking: bool = False
    round_to: Optional[int | Literal["target"]] = None
    min_channels: Optional[int] = option(None, ge=1)
    protect: tuple[str, ...] = ()
    steps: int = option(1, ge=1)
    finetune_epochs: float = option(0.0, ge=0.0)

    def validate(self) -> None:
        budgets = [k for k in (*BUDGETS, "macs_fraction") if getattr(self, k) is not None]
        if (self.ratio is None) == (not budgets) or (self.ratio is not None and budgets):
            self.invalid("ratio", f"set either ratio or budgets ({', '.join(BUDGETS)}, macs_fraction); got "
                                  f"{['ratio'] * (self.ratio is not None) + budgets or 'none'}")
        if self.macs is not None and self.macs < 1:
            self.invalid("macs", f"is a MAC count, got {self.macs!r}; for a fraction of the input's MACs write "
                                 f"macs_fraction={self.macs!r}")
        if self.macs is not None and self.macs_fraction is not None:
            self.invalid("macs", "set macs (a count) or macs_fraction (of the input's MACs), not both")
        if self.round_to is not None and self.round_to != "target" and not (
                isinstance(self.round_to, int) and not isinstance(self.round_to, bool) and self.round_to >= 1):
            self.invalid("round_to", f"must be 'target', none or an int >= 1, got {self.round_to!r}")
        if not isinstance(self.protect, tuple) or not all(isinstance(p, str) for p in self.protect):
            self.invalid("protect", f"must be a tuple of node names, got {self.protect!r}")

    def requirements(self) -> tuple[str, ...]:
        need = []
        if any(getattr(self, k) is not None for k in ("latency_ms", "peak_sram_bytes", "flash_bytes", "energy_mj")) \
                or self.round_to == "target":
            need.append("target")
        if self.finetune_epochs > 0:
            need.append("train")
        if self.criterion == "taylor":
            need.append("data")
        return tuple(need)

    def budgets(self, graph: Graph) -> dict[str, float]:
        out = {k: float(getattr(self, k)) for k in BUDGETS if getattr(self, k) is not None}
        if self.macs_fraction is not None:
            out["macs"] = self.macs_fraction * resource_value(graph, "macs")
        return out

    # -- context checks ------------------------------------------------------------------------------
    def _check(self, graph: Graph, ctx: PassContext) -> None:
        for need in self.requirements():
            if getattr(ctx, need, None) is None:
                opt = {"target": next((k for k in ("latency_ms", "peak_sram_bytes", "flash_bytes", "energy_mj", "round_to")
                                       if getattr(self, k) is not None), "round_to"),
                       "train": "finetune_epochs", "data": "criterion"}[need]
                self.invalid(opt, f"needs ctx.{need}")
        missing = [p for p in self.protect if p not in graph.nodes and not any(n.startswith(p + ".") for n in graph.nodes)]
        if missing:
            self.invalid("protect", f"no node named {missing} in the graph")

    def _importance(self, graph: Graph, ctx: PassContext, groups) -> dict[int, np.ndarray]:
        return unit_importance(graph, self.criterion, getattr(ctx, "data", None), getattr(ctx, "loss", None), groups)

    def _level_args(self, graph: Graph, gr: ChannelGroup, mult: int) -> tuple[int, int, int, int]:
        """kept_levels' arguments for `gr`: (size, multiple, channels per unit, min units)."""
        low = min_units(graph, gr, self.min_channels if self.min_channels is not None else mult)
        # a group that holds only part of its layers' channels steps by one unit: those widths are sums
        # over several groups, which no one group can round
        return gr.size, mult if owns_its_layers(graph, gr) else 1, unit_channels(gr), low

    def _levels(self, graph: Graph, gr: ChannelGroup, mult: int) -> list[int]:
        return kept_levels(*self._level_args(graph, gr, mult))

    # -- run -------------------------------------------------------------------------------------------
    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        self._check(graph, ctx)
        mult = channel_multiple(self.round_to, ctx, self.name)
        if self.ratio is not None:
            if self.ratio == 0:
                return graph
            original = {_group_key(g): g.size for g in eligible_groups(graph, self.protect)}
            total = sum(original.values())
            cur = graph
            for step in range(1, self.steps + 1):
                frac = self.ratio * step / self.steps
                cur = self._ratio_step(cur, ctx, mult, frac, original, total)
                cur = train_graph(cur, ctx, self.finetune_epochs, who=self.name)
            return cur
        budget = self.budgets(graph)
        start = {k: resource_value(graph, k, ctx.target) for k in budget}
        self._check_feasible(graph, ctx, mult, budget)
        if all(start[k] <= b for k, b in budget.items()):
            return graph
        cur = graph
        for step in range(1, self.steps + 1):
            b = {k: start[k] - max(0.0, start[k] - v) * step / self.steps for k, v in budget.items()}
            cur = self._budget_step(cur, ctx, mult, b)
            cur = train_graph(cur, ctx, self.finetune_epochs, who=self.name)
        return cur

    # -- ratio mode ------------------------------------------------------------------------------------
    def _ratio_step(self, g: Graph, ctx, mult, frac, original, total) -> Graph:
        groups = channel_groups(g)
        elig = eligible_groups(g, self.protect, groups)
        imp = self._importance(g, ctx, groups)
        removal = {}
        if not self.global_ranking:
            for gr in elig:
                size0 = original.get(_group_key(gr), gr.size)
                want = size0 - round(frac * size0)
                keep = _nearest_kept(*self._level_args(g, gr, mult), min(want, gr.size))
                if keep < gr.size:
                    removal[gr.id] = np.argsort(imp[gr.id], kind="stable")[:gr.size - keep]
        else:
            already = total - sum(gr.size for gr in groups if gr.prunable and _group_key(gr) in original)
            target = round(frac * total) - already
            plans = [_GroupPlan(gr, _normalise(imp[gr.id]), self._levels(g, gr, mult)) for gr in elig]
            chunks = []  # (mean normalised importance, plan index, level index)
            for pi, p in enumerate(plans):
                srt = np.sort(p.imp)
                for li in range(1, len(p.levels)):
                    a, b = p.group.size - p.levels[li - 1], p.group.size - p.levels[li]
                    chunks.append((float(srt[a:b].mean()), pi, li))
            chunks.sort()
            taken = [0] * len(plans)
            blocked = set()
            removed = 0
            for score, pi, li in chunks:
                if pi in blocked or li != taken[pi] + 1:
                    blocked.add(pi)
                    continue
                n = plans[pi].levels[li - 1] - plans[pi].levels[li]
                if removed + n > target + n / 2:
                    blocked.add(pi)
                    continue
                taken[pi] = li
                removed += n
                if removed >= target:
                    break
            for pi, p in enumerate(plans):
                if taken[pi]:
                    removal[p.group.id] = p.order[:p.group.size - p.levels[taken[pi]]]
        return remove_channels(g, removal, groups) if removal else g

    # -- budget mode -----------------------------------------------------------------------------------
    def smallest(self, g: Graph, ctx: PassContext) -> Graph:
        """Every eligible group at the narrowest width this pass may give it."""
        return self._minimal(g, channel_multiple(self.round_to, ctx, self.name))

    def _minimal(self, g: Graph, mult: int) -> Graph:
        groups = channel_groups(g)
        removal = {}
        for gr in eligible_groups(g, self.protect, groups):
            keep = self._levels(g, gr, mult)[-1]
            if keep < gr.size:
                removal[gr.id] = np.arange(keep, gr.size)
        return remove_channels(g, removal, groups) if removal else g

    def _check_feasible(self, g, ctx, mult, budget) -> None:
        if all(resource_value(g, k, ctx.target) <= v for k, v in budget.items()):
            return
        smallest = self._minimal(g, mult)
        reach = {k: resource_value(smallest, k, ctx.target) for k in budget}
        over = [k for k, v in budget.items() if reach[k] > v * (1 + 1e-9)]
        if over:
            raise BudgetError(
                f"channel-prune: budget {', '.join(f'{k}={budget[k]:.6g}' for k in over)} is infeasible; the closest "
                f"reachable is {', '.join(f'{k}={reach[k]:.6g}' for k in over)} (every eligible group at its minimum "
                f"width with round_to={mult}, min_channels={self.min_channels or mult}, protect={list(self.protect)})",
                closest=reach)

    def _budget_step(self, g: Graph, ctx, mult, budget: dict[str, float]) -> Graph:
        """Remove the least important chunks per unit of cost saved until every budget is met: each round
        works on the resource furthest over its budget (relatively) and re-measures them all."""
        groups = channel_groups(g)
        raw = self._importance(g, ctx, groups)
        # normalised importance, carried across rounds by group key so later rounds rank consistently
        carried = {_group_key(gr): _normalise(raw[gr.id]) for gr in eligible_groups(g, self.protect, groups)}
        cur = g
        for _ in range(400):
            figs = {k: resource_value(cur, k, ctx.target) for k in budget}
            over = {k: figs[k] / v for k, v in budget.items() if figs[k] > v * (1 + 1e-9)}
            if not over:
                return cur
            resource = max(over, key=over.get)
            groups = channel_groups(cur)
            node_cost = node_costs(cur, resource, ctx.target)
            plans, chunks = [], []
            for gr in eligible_groups(cur, self.protect, groups):
                imp = carried.get(_group_key(gr))
                if imp is None or len(imp) != gr.size:
                    continue
                levels = self._levels(cur, gr, mult)
                if len(levels) < 2:
                    continue
                s = _per_unit_saving(cur, gr, node_cost, readers=resource != "peak_sram_bytes")
                if s <= 0:
                    continue
                pi = len(plans)
                plans.append(_GroupPlan(gr, imp, levels))
                srt = np.sort(imp)
                for li in range(1, len(levels)):
                    a, b = gr.size - levels[li - 1], gr.size - levels[li]
                    # importance lost per unit of cost saved; importances are ≥ 0
                    chunks.append((float(srt[a:b].mean()) / s, pi, li, (b - a) * s))
            if not chunks:
                break
            chunks.sort(key=lambda t: (t[0], t[1], t[2]))
            gap = figs[resource] - budget[resource]
            taken = [0] * len(plans)
            saved = 0.0
            for score, pi, li, save in chunks:
                if li != taken[pi] + 1:
                    continue  # chunk order inside a group follows importance, so this is rare
                taken[pi] = li
                saved += save
                if saved >= gap:
                    break
            removal = {}
            for pi, p in enumerate(plans):
                if taken[pi]:
                    drop = p.order[:p.group.size - p.levels[taken[pi]]]
                    removal[p.group.id] = drop
                    carried[_group_key(p.group)] = np.delete(p.imp, drop)
            if not removal:
                break
            cur = remove_channels(cur, removal, groups)
        figs = {k: resource_value(cur, k, ctx.target) for k in budget}
        raise BudgetError(f"channel-prune: could only reach {', '.join(f'{k}={figs[k]:.6g}' for k in budget)} "
                          f"against a budget of {', '.join(f'{k}={v:.6g}' for k, v in budget.items())}", closest=figs)


# ---------------------------------------------------------------------------------------------------
# Sensitivity


def channel_sensitivity(graph: Graph, evaluate: Callable[[torch.nn.Module], float],
                        fractions: Iterable[float] = (0.25, 0.5, 0.75), criterion: str = "l1",
                        protect: tuple[str, ...] = (), round_to: int = 1, plot: str | None = None,
                        progress: bool = False) -> dict[str, list[tuple[float, float]]]:
    """Accuracy vs fraction of channels pruned, one coupled group at a time (the others untouched), no
    retraining: {group label (its first producer): [(0.0, baseline), (f, accuracy), ...]}.

    Units are chosen by `criterion` and widths rounded to `round_to`, as the pass would. `evaluate` is
    the PassContext callback (torch module -> accuracy). With `plot` (a .png path) draws the curves.
    The scan and the plot are hwopt.sensitivity's (shared with magnitude pruning).
    """
    from hwopt import sensitivity as _sens

    groups = channel_groups(graph)
    elig = eligible_groups(graph, protect, groups)
    imp = unit_importance(graph, criterion, groups=groups)
    by_label = {(gr.producers[0] if gr.producers else next(iter(gr.members))): gr for gr in elig}

    def prune_fn(g: Graph, label: str, frac: float) -> Graph:
        gr = by_label[label]
        keep = _nearest_level(kept_levels(gr.size, round_to, unit_channels(gr)), gr.size - round(frac * gr.size))
        if keep >= gr.size:
            return g
        return remove_channels(g, {gr.id: np.argsort(imp[gr.id], kind="stable")[:gr.size - keep]}, groups)

    results = _sens.sensitivity_scan(graph, list(by_label), prune_fn, evaluate, tuple(fractions), progress=progress)
    if plot:
        _sens.plot_sensitivity(results, plot, title="Channel pruning sensitivity (per coupled group)")
    return results
