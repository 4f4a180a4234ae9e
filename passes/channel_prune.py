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
ratio | macs | latency_ms  (exactly one)
    ``ratio``: fraction of each eligible group's units to remove (per-layer), or of all eligible units
    (``global_ranking=true``). ``macs``: a MAC budget — a value ≤ 1 is a fraction of the input graph's
    MACs (``macs=0.5`` halves them), a value > 1 an absolute MAC count. ``latency_ms``: predicted
    latency on ``ctx.target`` in ms. Budget mode ranks removable chunks by normalised importance per
    unit of predicted cost saved (MACs, or the target's latency model) and removes the cheapest until
    the *measured* cost of the pruned graph (re-evaluated after every round) meets the budget. A budget
    below the cost of the smallest graph the pass may produce raises ``hwopt.BudgetError`` giving that
    closest reachable cost.
global_ranking
    Ratio mode only (budget mode is always global). Units of different groups are compared after each
    group's importances are divided by the group's mean importance: raw magnitudes depend on fan-in,
    init and BN scale, so only the *relative* standing of a unit within its layer is comparable across
    layers; a layer whose units are uniformly important keeps more of them.
round_to
    ``target`` (the target's ``channel_multiple``), an int, or ``none`` (default: the target's multiple
    when ``ctx.target`` is set, else 1). Kept widths are multiples of it; rounding never raises a width
    above its original, a group never drops below one multiple, and a group no wider than the multiple
    is left alone. For units of several channels (grouped convs) the multiple applies to channels.
protect
    Node names (or module-path prefixes, e.g. ``layer1``) whose groups are never pruned.
steps, finetune_epochs
    Prune in ``steps`` equal increments (of the ratio, or of the cost gap to the budget); with
    ``finetune_epochs > 0`` the graph is lowered, trained with ``ctx.train(module, epochs=...)`` after
    each step (the last included) and the trained weights are written back into the graph.

Never removes every unit of a group. The input graph is never mutated.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Optional

import numpy as np
import torch

from hwopt.channels import ChannelGroup, channel_groups, remove_channels
from hwopt.errors import BudgetError, PassError
from hwopt.ir import Graph, node_macs
from hwopt.lower import read_back, submodules
from hwopt.passmanager import Pass, PassContext, register_pass

CRITERIA = ("l1", "l2", "bn", "taylor")

__all__ = ["ChannelPrune", "unit_importance", "eligible_groups", "kept_levels", "graph_macs", "sync_params",
           "module_of_node", "channel_sensitivity"]


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


def _row_col_sums(graph: Graph, criterion: str, saliency: dict | None, needed: set[str] | None = None) -> tuple[dict, dict, dict]:
    """Per node: magnitude summed per output channel (rows), per input channel (cols, groups==1 only),
    and for BN the |γ| (or taylor saliency of γ, β) per channel. `needed`: only these nodes."""
    rows, cols, bn = {}, {}, {}
    for n in graph.nodes.values():
        if needed is not None and n.name not in needed:
            continue
        if n.op in ("conv2d", "linear"):
            w = n.params["weight"]
            if "weight_mask" in n.params:
                w = w * n.params["weight_mask"]
            want_cols = n.op == "linear" or n.attrs["groups"] == 1
            if saliency is not None:
                r, c = _row_col(saliency[n.name]["weight"], "l1", want_cols)
                if "bias" in saliency[n.name]:
                    r = r + saliency[n.name]["bias"].double().numpy()
            else:
                r, c = _row_col(w, criterion, want_cols)
            rows[n.name] = r
            if c is not None:
                cols[n.name] = c
        elif n.op == "batch_norm":
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
    rows, cols, bn = _row_col_sums(graph, mag, saliency, needed)
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


# the lowered module's layers and trained weights: one mechanism for every pass, in hwopt.lower
module_of_node, sync_params = submodules, read_back


def _taylor_saliency(graph: Graph, data, loss) -> dict[str, dict[str, torch.Tensor]]:
    if data is None:
        raise PassError("option 'criterion' of pass 'channel-prune': criterion=taylor needs data — set "
                        "ctx.data to a finite iterable of (x, y) batches")
    from hwopt.lower import lower

    module = lower(graph)
    mapping = module_of_node(graph, module)
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
            not any(_is_protected(n, protect) for n in list(g.members) + g.producers)]


def _unit_channels(gr: ChannelGroup) -> int:
    key = gr.producers[0] if gr.producers else next(iter(gr.members))
    return int(gr.members[key].shape[1])


def kept_levels(size: int, multiple: int, unit_channels: int = 1) -> list[int]:
    """Allowed kept unit counts for a group of `size` units, largest first: `size` itself, then every
    count whose channel width is a multiple of `multiple`, down to one multiple (never 0)."""
    mu = max(1, multiple // math.gcd(multiple, unit_channels)) if multiple > 1 else 1
    levels = [size]
    k = (size - 1) // mu * mu  # largest multiple below size
    while k >= mu:
        levels.append(k)
        k -= mu
    return levels


def _nearest_level(levels: list[int], want: float) -> int:
    # levels descend; nearest, ties toward keeping more
    return min(levels, key=lambda k: (abs(k - want), -k))


def _nearest_keep(size: int, multiple: int, unit_channels: int, want: float) -> int:
    """`_nearest_level(kept_levels(size, multiple, unit_channels), want)` without building the list."""
    mu = max(1, multiple // math.gcd(multiple, unit_channels)) if multiple > 1 else 1
    top = (size - 1) // mu * mu  # largest multiple below size (0: no smaller level)
    if want >= size or top < mu:
        return size
    q = min(max(mu, int(math.floor(want / mu + 0.5)) * mu), top)
    return size if abs(size - want) <= abs(q - want) else q


def graph_macs(graph: Graph) -> int:
    return int(sum(node_macs(graph, n) for n in graph.nodes.values() if n.op in ("conv2d", "linear")))


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


def _per_unit_saving(graph: Graph, gr: ChannelGroup, node_cost: dict[str, float]) -> float:
    """Linearised cost saved by removing one unit of `gr`: each node reading or writing the group's
    channels loses the unit's share of its cost (its output share if it writes them, else its input share)."""
    total = 0.0
    touched = set()
    for name, idx in gr.members.items():
        ch = graph[name].spec.channels
        if name in node_cost and name not in touched:
            total += node_cost[name] * idx.shape[1] / ch
            touched.add(name)
        for u in graph.users(name):
            if u in touched or u in gr.members or u not in node_cost:
                continue
            un = graph[u]
            if un.inputs and un.inputs[0] == name:
                total += node_cost[u] * idx.shape[1] / ch
                touched.add(u)
    return total


# ---------------------------------------------------------------------------------------------------
# The pass


@register_pass("channel-prune")
@dataclass(frozen=True)
class ChannelPrune(Pass):
    criterion: Literal["l1", "l2", "bn", "taylor"] = "l1"
    ratio: Optional[float] = None
    macs: Optional[float] = None
    latency_ms: Optional[float] = None
    global_ranking: bool = False
    round_to: Optional[int | Literal["target"]] = None
    protect: tuple[str, ...] = ()
    steps: int = 1
    finetune_epochs: float = 0.0

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def bad(opt, msg):
            raise PassError(f"option {opt!r} of pass 'channel-prune': {msg}")

        if self.criterion not in CRITERIA:
            bad("criterion", f"{self.criterion!r} is not one of {list(CRITERIA)}")
        amounts = [k for k in ("ratio", "macs", "latency_ms") if getattr(self, k) is not None]
        if len(amounts) != 1:
            bad("ratio", f"set exactly one of ratio, macs, latency_ms (got {amounts or 'none'})")
        if self.ratio is not None and not (isinstance(self.ratio, (int, float)) and 0.0 <= self.ratio < 1.0):
            bad("ratio", f"must be in [0, 1), got {self.ratio!r}")
        if self.macs is not None and not (isinstance(self.macs, (int, float)) and self.macs > 0):
            bad("macs", f"must be > 0 (≤ 1: fraction of the input's MACs; > 1: a MAC count), got {self.macs!r}")
        if self.latency_ms is not None and not (isinstance(self.latency_ms, (int, float)) and self.latency_ms > 0):
            bad("latency_ms", f"must be > 0, got {self.latency_ms!r}")
        if self.round_to is not None and self.round_to != "target" and not (
                isinstance(self.round_to, int) and not isinstance(self.round_to, bool) and self.round_to >= 1):
            bad("round_to", f"must be 'target', none or an int >= 1, got {self.round_to!r}")
        if not isinstance(self.protect, tuple) or not all(isinstance(p, str) for p in self.protect):
            bad("protect", f"must be a tuple of node names, got {self.protect!r}")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            bad("steps", f"must be an int >= 1, got {self.steps!r}")
        if not isinstance(self.finetune_epochs, (int, float)) or self.finetune_epochs < 0:
            bad("finetune_epochs", f"must be >= 0, got {self.finetune_epochs!r}")
        if self.global_ranking not in (True, False):
            bad("global_ranking", f"must be true or false, got {self.global_ranking!r}")

    # -- context checks ------------------------------------------------------------------------------
    def _multiple(self, ctx: PassContext) -> int:
        if self.round_to == "target":
            if ctx.target is None:
                raise PassError("option 'round_to' of pass 'channel-prune': round_to=target needs ctx.target")
            return max(1, int(ctx.target.channel_multiple))
        if self.round_to is None:
            return max(1, int(getattr(ctx.target, "channel_multiple", 1) or 1)) if ctx.target is not None else 1
        return int(self.round_to)

    def _check(self, graph: Graph, ctx: PassContext) -> None:
        if self.latency_ms is not None and ctx.target is None:
            raise PassError("option 'latency_ms' of pass 'channel-prune': a latency budget needs ctx.target")
        if self.finetune_epochs > 0 and ctx.train is None:
            raise PassError("option 'finetune_epochs' of pass 'channel-prune': fine-tuning needs ctx.train")
        missing = [p for p in self.protect if p not in graph.nodes and not any(n.startswith(p + ".") for n in graph.nodes)]
        if missing:
            raise PassError(f"option 'protect' of pass 'channel-prune': no node named {missing} in the graph")

    def _importance(self, graph: Graph, ctx: PassContext, groups) -> dict[int, np.ndarray]:
        return unit_importance(graph, self.criterion, getattr(ctx, "data", None), getattr(ctx, "loss", None), groups)

    # -- run -------------------------------------------------------------------------------------------
    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        self._check(graph, ctx)
        mult = self._multiple(ctx)
        if self.ratio is not None:
            if self.ratio == 0:
                return graph
            original = {_group_key(g): g.size for g in eligible_groups(graph, self.protect)}
            total = sum(original.values())
            cur = graph
            for step in range(1, self.steps + 1):
                frac = self.ratio * step / self.steps
                cur = self._ratio_step(cur, ctx, mult, frac, original, total)
                cur = self._finetune(cur, ctx)
            return cur
        cost_fn, per_node_fn, unit = self._cost_fns(ctx)
        c0 = cost_fn(graph)
        budget = self.latency_ms if self.latency_ms is not None else (self.macs * c0 if self.macs <= 1 else self.macs)
        self._check_feasible(graph, mult, budget, cost_fn, unit)
        if c0 <= budget:
            return graph
        cur = graph
        for step in range(1, self.steps + 1):
            b = c0 - (c0 - budget) * step / self.steps
            cur = self._budget_step(cur, ctx, mult, b, cost_fn, per_node_fn)
            cur = self._finetune(cur, ctx)
        if cost_fn(cur) > budget * (1 + 1e-9):  # fine-tuning never changes the cost; a guard all the same
            raise BudgetError(f"channel-prune: reached {cost_fn(cur):.6g} {unit}, budget {budget:.6g}",
                              closest={unit: cost_fn(cur)})
        return cur

    def _finetune(self, g: Graph, ctx: PassContext) -> Graph:
        if self.finetune_epochs <= 0:
            return g
        from hwopt.lower import lower

        module = lower(g)
        ctx.train(module, epochs=self.finetune_epochs)
        return sync_params(g, module)

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
                keep = _nearest_keep(gr.size, mult, _unit_channels(gr), min(want, gr.size))
                if keep < gr.size:
                    removal[gr.id] = np.argsort(imp[gr.id], kind="stable")[:gr.size - keep]
        else:
            already = total - sum(gr.size for gr in groups if gr.prunable and _group_key(gr) in original)
            target = round(frac * total) - already
            plans = [_GroupPlan(gr, _normalise(imp[gr.id]), kept_levels(gr.size, mult, _unit_channels(gr))) for gr in elig]
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
    def _cost_fns(self, ctx):
        if self.latency_ms is not None:
            t = ctx.target
            return (lambda g: float(t.cost(g).latency_ms)), (lambda g: dict(t.cost(g).per_node)), "latency_ms"
        per_node = lambda g: {n.name: float(node_macs(g, n)) for n in g.nodes.values() if n.op in ("conv2d", "linear")}
        return (lambda g: float(graph_macs(g))), per_node, "macs"

    def _minimal(self, g: Graph, mult: int) -> Graph:
        groups = channel_groups(g)
        removal = {}
        for gr in eligible_groups(g, self.protect, groups):
            keep = kept_levels(gr.size, mult, _unit_channels(gr))[-1]
            if keep < gr.size:
                removal[gr.id] = np.arange(keep, gr.size)
        return remove_channels(g, removal, groups) if removal else g

    def _check_feasible(self, g, mult, budget, cost_fn, unit) -> None:
        if cost_fn(g) <= budget:
            return
        smallest = self._minimal(g, mult)
        best = cost_fn(smallest)
        if best > budget:
            closest = {"macs": graph_macs(smallest), unit: best}
            raise BudgetError(
                f"channel-prune: budget {unit}={budget:.6g} is infeasible; the closest reachable is {best:.6g} {unit} "
                f"(every eligible group at its minimum width with round_to={mult}, protect={list(self.protect)})",
                closest=closest)

    def _budget_step(self, g: Graph, ctx, mult, budget, cost_fn, per_node_fn) -> Graph:
        groups = channel_groups(g)
        raw = self._importance(g, ctx, groups)
        # normalised importance, carried across rounds by group key so later rounds rank consistently
        carried = {_group_key(gr): _normalise(raw[gr.id]) for gr in eligible_groups(g, self.protect, groups)}
        cur = g
        for _ in range(200):
            c = cost_fn(cur)
            if c <= budget:
                return cur
            groups = channel_groups(cur)
            node_cost = per_node_fn(cur)
            plans, chunks = [], []
            for gr in eligible_groups(cur, self.protect, groups):
                imp = carried.get(_group_key(gr))
                if imp is None or len(imp) != gr.size:
                    continue
                levels = kept_levels(gr.size, mult, _unit_channels(gr))
                if len(levels) < 2:
                    continue
                s = _per_unit_saving(cur, gr, node_cost)
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
            gap = c - budget
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
        if cost_fn(cur) > budget:
            raise BudgetError(f"channel-prune: could only reach {cost_fn(cur):.6g} against a budget of {budget:.6g}",
                              closest={"cost": cost_fn(cur)})
        return cur


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
        keep = _nearest_level(kept_levels(gr.size, round_to, _unit_channels(gr)), gr.size - round(frac * gr.size))
        if keep >= gr.size:
            return g
        return remove_channels(g, {gr.id: np.argsort(imp[gr.id], kind="stable")[:gr.size - keep]}, groups)

    results = _sens.sensitivity_scan(graph, list(by_label), prune_fn, evaluate, tuple(fractions), progress=progress)
    if plot:
        _sens.plot_sensitivity(results, plot, title="Channel pruning sensitivity (per coupled group)")
    return results
