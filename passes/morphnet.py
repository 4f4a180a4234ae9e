"""morphnet: resource-weighted sparsifying regulariser on BN scales, shrink, then expand to a budget.

Gordon et al. 2018, "MorphNet: Fast & Simple Resource-Constrained Structure Learning of Deep Networks".
One iteration is

1. **Shrink.** Train (``ctx.train(module, epochs=epochs, penalty=...)``) with the penalty

       λ · Σ_groups c_g · Σ_units |γ_unit|

   on the batch-norm scales γ. Units and groups are hwopt's channel-coupling analysis
   (``hwopt.channel_groups``): a unit is a set of channels removable together. For a group with several
   batch norms (a residual stage: every BN feeding the same add), a unit's |γ| is the **max** over its
   BNs (and over its channels, for multi-channel units), as the MorphNet reference implementation's
   ``MaxGroupingRegularizer`` does: a unit is alive while any of its BNs is, so its gradient flows to
   the largest |γ| only. ``c_g`` is the **marginal cost of one unit of group g given the alive channels
   around it**: ``cost(widths) − cost(widths with g one unit narrower)``, evaluated on the graph with
   every group at its alive width (|γ| ≥ threshold, 1e-2 when unset). For ``flops`` and ``size`` this is exactly the
   paper's formulation (conv / linear cost is bilinear in in- and out-width, so the difference is
   "alive inputs × k² × HW" for an output channel plus its consumers' share); for ``latency`` and
   ``energy`` it is the target's cost model's finite difference. Coefficients are computed at the start
   of each iteration and refreshed every ``refresh_steps`` training steps from the alive counts.
   Groups with no batch norm (e.g. squeeze-excite bottlenecks) are not regularised and keep their width.
   After training, units are removed with ``hwopt.remove_channels`` in increasing |γ| until the resource
   is ``shrink_to`` of the way from its floor to the budget (and any with |γ| < ``threshold``, if set); never a whole group: the
   unit with the largest |γ| stays.
2. **Expand.** Find the width multiplier w by bisection so the network with every prunable group at
   ``round(w · width_g)`` (a multiple of ``round_to``) meets the budget; since rounding makes the
   resource a step function of w, finish with a greedy fill (one multiple at a time, to the group
   furthest below its proportional share, while it fits) and trim/swap so the result is as close to
   the budget as the widths allow (in practice within 2 %) and never over it. Widths are applied with
   ``hwopt.resize_groups``. Costs during the search are evaluated on shape-only copies of the graph
   (zero-stride tensors), so a search costs milliseconds per probe. A budget below the cost with every
   prunable group at its minimum width (one multiple) raises ``hwopt.BudgetError`` stating that minimum.
3. **Retrain** the expanded network from scratch (fresh init: conv / linear N(0, 2/fan_in), bias 0,
   BN γ=1, β=0), as the paper does, with ``ctx.train(module, epochs=retrain_epochs)``. With
   ``retrain_epochs=0`` (or no ``ctx.train``) the expanded graph keeps its trained weights (new units
   fresh), which makes ``morphnet{epochs=0,retrain_epochs=0}`` a pure expand-to-budget pass.

Options (text form e.g. ``morphnet{resource=latency_ms,budget=0.2,epochs=2,iterations=1}``):

resource
    hwopt's resource vocabulary (``hwopt.figures``): ``macs`` (multiply-accumulates of conv / linear
    layers; the paper's FLOP regulariser counts MACs), ``params``, and from ``ctx.target``'s cost model
    (required for these) ``flash_bytes`` (weights at the deploy dtype, biases, int8 requantisation data),
    ``peak_sram_bytes``, ``latency_ms``, ``energy_mj``.
budget
    A value of the resource (same unit as above); default: the input graph's cost (MorphNet's "same
    cost, better allocated").
strength
    λ. Default (none): chosen from the resource and the loss scale, so no λ sweep is needed: λ =
    ``DEFAULT_STRENGTH`` × loss scale / (the penalty's value at λ = 1 on the incoming γ), i.e. the penalty
    starts level with the training loss whatever the resource and its unit. The loss scale is the cross
    entropy on the first batches of ``ctx.data`` when given, else ln(outputs), a uniform guess's (see
    ``loss_scale``). The λ used is reported (``strength`` in the record, per iteration).
shrink_to
    The shrink stops by the budget: after shrink-training, units are removed in one global order of
    increasing |γ| (the penalty pushes an expensive unit's γ down by λ·c_g per step, the loss holds up
    the useful ones) until the resource is at most floor + ``shrink_to`` × (budget − floor) (default
    0.5; the floor is the cost with every group at its narrowest, e.g. latency's fixed overheads, where
    the narrowest is what expand can end at: one ``round_to`` step, so no group is cut below it);
    expand then grows the kept proportions back to the budget. Short training never has to drive a γ
    to 0.
threshold
    Optional: units with |γ| under it are removed first (the paper's rule, e.g. 1e-2, for long shrink
    training). With ``shrink_to=none`` it is the only stop.
epochs, retrain_epochs, iterations
    Shrink training epochs (0: no training, threshold the current γ only); retraining epochs of the
    expanded network (0: no retrain); shrink/expand rounds (each starts from the previous result).
round_to
    ``target`` (``ctx.target.channel_multiple``), none (the target's multiple, 1 without a target) or an int: expanded widths are
    multiples of it (for multi-channel units, of lcm(multiple, unit channels) / unit channels units).
refresh_steps
    Recompute the per-group coefficients from the alive widths every this many training steps (0: only
    at the start of each iteration).
plot
    Path of a PNG bar plot of per-group widths (before / after shrink / after expand). Without it, the
    plot is written to ``ctx.checkpoint_dir/morphnet_widths.png`` when ``ctx.checkpoint_dir`` is set.

The report (per-group widths at each stage, the multiplier, costs) goes to the pass's record through
``ctx.note`` (``record["info"]`` under a PassManager). The input graph is never mutated.

Module layout: this file holds the regulariser, the shrink and the pass; ``morphnet_widths.py`` the width
model (a resource as a function of group widths, the marginal unit costs) and the expand step. Every name
of both is importable from here.
"""
from __future__ import annotations

import math
import os
from typing import Literal, Optional

import numpy as np
import torch

from hwopt.channels import ChannelGroup, channel_groups, remove_channels
from hwopt.ir import Graph
from hwopt.lower import submodules
from hwopt.passkit import channel_multiple, group_label, min_units, resource_value, train_graph
from hwopt.passmanager import Pass, PassContext, option, register_pass

from .morphnet_widths import WidthModel, expand, expand_sizes, floor_units, group_widths, unit_costs

__all__ = ["MorphNet", "RESOURCES", "DEFAULT_STRENGTH", "WidthModel", "unit_costs", "Regularizer", "unit_gammas",
           "dead_units", "units_to_budget", "loss_scale", "shrink", "expand", "expand_sizes", "floor_units",
           "group_widths", "fresh_init"]

RESOURCES = ("macs", "params", "flash_bytes", "peak_sram_bytes", "latency_ms", "energy_mj")
DEFAULT_STRENGTH = 1.0  # λ × initial penalty / loss scale: the penalty starts level with the loss
DEFAULT_SHRINK_TO = 0.5  # the shrink stops this far from the floor to the budget (by |γ| order); expand restores it
ALIVE = 1e-2  # |γ| under which the regulariser's coefficient refresh counts a unit as gone (threshold unset)


# ---------------------------------------------------------------------------------------------------
# Fresh weights


def fresh_init(graph: Graph, generator: torch.Generator) -> Graph:
    """A copy of `graph` re-initialised from scratch: conv / linear weights N(0, 2/fan_in), biases 0, BN γ=1,
    β=0, running mean 0, var 1 (masks kept)."""
    new = graph.copy()
    for name in graph.order():
        n = graph[name]
        if n.op in ("conv2d", "linear"):
            w = n.params["weight"]
            fan_in = w[0].numel()
            p = dict(n.params)
            p["weight"] = torch.randn(w.shape, generator=generator, dtype=w.dtype) * math.sqrt(2.0 / fan_in)
            if "bias" in p:
                p["bias"] = torch.zeros_like(p["bias"])
        elif n.op == "batch_norm":
            init = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}
            p = {k: torch.full_like(v, init[k]) for k, v in n.params.items()}
        else:
            continue
        m = new[name].copy()
        m.params = p
        new.replace(m)
    return new


# ---------------------------------------------------------------------------------------------------
# The regulariser


def _bn_members(graph: Graph, gr: ChannelGroup) -> list[tuple[str, np.ndarray]]:
    return [(name, idx) for name, idx in gr.members.items()
            if graph[name].op == "batch_norm" and "weight" in graph[name].params]


def unit_gammas(graph: Graph, gr: ChannelGroup, weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """|γ| per unit of `gr`: max over the unit's BN channels (empty tensor if the group has no BN)."""
    parts = []
    for name, idx in _bn_members(graph, gr):
        w = weights[name] if weights is not None else graph[name].params["weight"]
        parts.append(w.abs()[torch.from_numpy(idx)])
    if not parts:
        return torch.zeros(0)
    return torch.cat(parts, dim=1).amax(dim=1)


class Regularizer:
    """MorphNet's penalty λ · Σ_g c_g · Σ_units max|γ_unit| as a callable on ``hwopt.lower(graph)``.

    `coeffs[gid]` is c_g (marginal cost of one unit); ``refresh_steps`` > 0 recomputes them from the
    alive widths (units with |γ| ≥ threshold) every that many calls."""

    def __init__(self, graph: Graph, resource: str, target=None, strength: float = 1.0, threshold: float = 1e-2,
                 refresh_steps: int = 0, width_model: WidthModel | None = None):
        self.graph, self.strength, self.threshold, self.refresh_steps = graph, strength, threshold, refresh_steps
        self.wm = width_model or WidthModel(graph, resource, target)
        groups = channel_groups(graph)
        self.groups = [gr for gr in groups if gr.prunable and _bn_members(graph, gr)]
        self.index = {gr.id: [(name, torch.from_numpy(idx)) for name, idx in _bn_members(graph, gr)] for gr in self.groups}
        self.coeffs = self.wm.marginal({}, [gr.id for gr in self.groups])
        self.calls = 0
        self.history: list[dict[int, float]] = [dict(self.coeffs)]
        self._modules: dict[int, dict[str, torch.nn.Module]] = {}

    def _bns(self, module) -> dict[str, torch.nn.Module]:
        key = id(module)
        if key not in self._modules:
            self._modules = {key: submodules(self.graph, module)}
        return self._modules[key]

    def unit_terms(self, module) -> dict[int, torch.Tensor]:
        bns = self._bns(module)
        out = {}
        for gr in self.groups:
            parts = [bns[name].weight.abs()[idx] for name, idx in self.index[gr.id]]
            out[gr.id] = torch.cat(parts, dim=1).amax(dim=1)
        return out

    def alive(self, module) -> dict[int, int]:
        with torch.no_grad():
            return {g: max(1, int((t >= self.threshold).sum())) for g, t in self.unit_terms(module).items()}

    def refresh(self, module) -> None:
        self.coeffs = self.wm.marginal(self.alive(module), [gr.id for gr in self.groups])
        self.history.append(dict(self.coeffs))

    def __call__(self, module) -> torch.Tensor:
        if self.refresh_steps and self.calls and self.calls % self.refresh_steps == 0:
            self.refresh(module)
        self.calls += 1
        total = None
        for g, t in self.unit_terms(module).items():
            term = t.sum() * float(self.coeffs[g])
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return total * self.strength


# ---------------------------------------------------------------------------------------------------
# Shrink



def dead_units(graph: Graph, threshold: float) -> dict[int, np.ndarray]:
    """Per prunable group with a BN: units whose |γ| (max over the unit's BNs) < threshold, never all of them."""
    removal = {}
    for gr in channel_groups(graph):
        if not gr.prunable or not _bn_members(graph, gr):
            continue
        g = unit_gammas(graph, gr).numpy()
        dead = np.flatnonzero(g < threshold)
        keep = min_units(graph, gr)
        if gr.size - len(dead) < keep:  # never empty a group: the largest |γ| stay
            dead = np.setdiff1d(dead, np.argsort(-g, kind="stable")[:keep])
        if len(dead):
            removal[gr.id] = dead
    return removal


def units_to_budget(graph: Graph, goal: float, resource: str, target=None,
                    removal: dict[int, np.ndarray] | None = None, round_to: int = 1) -> dict[int, np.ndarray]:
    """`removal` (default: nothing) extended by the units of smallest |γ| over all groups with a BN, in
    one global order, until the resource of what is left is ≤ `goal` (or every group is at its
    narrowest). The shrink's stop, set by the budget: after a short shrink-training no |γ| may reach a
    threshold, but their order already says which units the penalty and the loss value least.

    A group's narrowest is the width expand can end at (`floor_units`: one step of `round_to`): a unit
    removed below it would come back in expand, so counting its cost as saved would stop the shrink before
    it removed anything from the groups that can actually trade width (cortex-a72's 4-channel step put a
    28x28 first conv's units, each ~10x a later layer's latency, below it: expand restored them and
    returned the input's widths)."""
    wm = WidthModel(graph, resource, target)
    groups = {gr.id: gr for gr in wm.groups}
    removal = {g: np.asarray(u) for g, u in (removal or {}).items()}
    order = []  # (|γ|, group, unit) of every removable unit not removed yet, a group's largest |γ| kept
    for gid in wm.prunable:
        gr = groups[gid]
        if not _bn_members(graph, gr):
            continue
        gam = unit_gammas(graph, gr).numpy()
        gone = set(removal.get(gid, np.zeros(0, int)).tolist())
        ranked = [u for u in np.argsort(gam, kind="stable") if u not in gone]
        spare = gr.size - len(gone) - floor_units(graph, gr, round_to)
        order += [(float(gam[u]), gid, int(u)) for u in ranked[:max(0, spare)]]
    order.sort()

    def sizes_after(n: int) -> dict[int, int]:
        cut = {g: len(removal.get(g, ())) for g in wm.prunable}
        for _, g, _ in order[:n]:
            cut[g] += 1
        return {g: wm.base[g] - cut[g] for g in wm.prunable}

    if wm.cost(sizes_after(0)) <= goal or not order:
        return removal
    lo, hi = 0, len(order)  # cost falls as units go: the fewest removals that reach the goal
    while lo < hi:
        mid = (lo + hi) // 2
        if wm.cost(sizes_after(mid)) <= goal:
            hi = mid
        else:
            lo = mid + 1
    out = {g: list(u) for g, u in removal.items()}
    for _, g, u in order[:lo]:
        out.setdefault(g, []).append(u)
    return {g: np.array(sorted(u), dtype=int) for g, u in out.items() if len(u)}


def loss_scale(graph: Graph, data=None, batches: int = 4) -> tuple[float, str]:
    """The training loss's scale, the unit λ is set in: the cross entropy of the graph on the first
    `batches` of `data` ((x, y) batches) when given, else that of a uniform guess, ln(outputs)."""
    from hwopt.lower import lower
    if data is not None:
        try:
            module, total, n = lower(graph).eval(), 0.0, 0
            with torch.no_grad():
                for i, (x, y) in enumerate(data):
                    if i >= batches:
                        break
                    total += float(torch.nn.functional.cross_entropy(module(x), y, reduction="sum"))
                    n += len(y)
            if n:
                return max(total / n, 1e-3), f"cross entropy on {n} examples of ctx.data"
        except (TypeError, ValueError, RuntimeError):
            pass  # data that is not (x, class label) batches: fall back to the uniform guess
    try:
        out = graph.output.spec.channels
    except Exception:  # noqa: BLE001 - a graph without one output node: the two-class floor
        out = None
    c = int(out) if out and out > 1 else 2
    return math.log(c), f"ln({c}), the cross entropy of a uniform guess over the {c} outputs"


def shrink(graph: Graph, *, resource: str, target=None, train=None, epochs: float = 0.0,
           strength: float | None = None, threshold: float | None = None, refresh_steps: int = 0,
           goal: float | None = None, data=None, round_to: int = 1) -> tuple[Graph, dict]:
    """Train `graph` with the MorphNet penalty (when `train` and epochs > 0), then remove units: those with
    |γ| < `threshold` (if set), then by smallest |γ| until the resource is ≤ `goal` (if set), no group below
    the width expand can end at (`round_to`, see `units_to_budget`).

    `strength` (λ) default: the loss scale (`loss_scale`) over the penalty's value at the start, so the
    penalty starts level with the loss, whatever the resource and its unit."""
    info: dict = {}
    if train is not None and epochs > 0:
        reg = Regularizer(graph, resource, target, 1.0, ALIVE if threshold is None else threshold, refresh_steps)
        if strength is None:
            scale, how = loss_scale(graph, data)
            p0 = sum(float(unit_gammas(graph, gr).sum()) * float(reg.coeffs[gr.id]) for gr in reg.groups)
            strength = DEFAULT_STRENGTH * scale / max(p0, 1e-30)
            info.update(loss_scale=scale, loss_scale_from=how, initial_penalty=p0)
        reg.strength = strength
        graph = train_graph(graph, PassContext(train=train), epochs, penalty=reg, who="morphnet")
        info.update(strength=strength, coeffs={group_label(gr): reg.coeffs[gr.id] for gr in reg.groups},
                    refreshes=len(reg.history) - 1)
    removal = dead_units(graph, threshold) if threshold is not None else {}
    if goal is not None:
        removal = units_to_budget(graph, goal, resource, target, removal, round_to)
        info["goal"] = goal
    info["removed_units"] = {group_label(channel_groups(graph)[g]): int(len(u)) for g, u in removal.items()}
    return (remove_channels(graph, removal) if removal else graph), info


# ---------------------------------------------------------------------------------------------------
# The pass


@register_pass("morphnet")
class MorphNet(Pass):
    resource: str = option("macs", choices=RESOURCES)
    budget: Optional[float] = option(None, gt=0.0)
    strength: Optional[float] = option(None, ge=0.0)
    threshold: Optional[float] = option(None, ge=0.0)
    shrink_to: Optional[float] = option(DEFAULT_SHRINK_TO, gt=0.0, le=1.0)
    epochs: float = option(1.0, ge=0.0)
    retrain_epochs: float = option(1.0, ge=0.0)
    iterations: int = option(1, ge=1)
    round_to: Optional[int | Literal["target"]] = None
    refresh_steps: int = option(50, ge=0)
    plot: Optional[str] = None

    def validate(self) -> None:
        if self.shrink_to is None and self.threshold is None:
            self.invalid("shrink_to", "none needs a threshold: with neither, the shrink would remove nothing")
        if not (self.round_to in (None, "target") or (isinstance(self.round_to, int) and not isinstance(self.round_to, bool)
                                                      and self.round_to >= 1)):
            self.invalid("round_to", f"must be 'target', none or an int >= 1, got {self.round_to!r}")

    def requirements(self) -> tuple[str, ...]:
        return (("target",) if self.resource in ("flash_bytes", "peak_sram_bytes", "latency_ms", "energy_mj")
                or self.round_to == "target" else ()) + (("train",) if self.epochs > 0 else ())

    def shrink_goal(self, graph: Graph, budget: float, target, round_to: int = 1) -> Optional[float]:
        """Where the shrink stops: `shrink_to` of the way from the floor (every group at the narrowest
        width expand can end at, `floor_units`) to the budget. A resource with a fixed part (latency's per-layer overheads) would otherwise ask
        for a goal under the floor, and the shrink would cut every group to one unit: no signal left."""
        if self.shrink_to is None:
            return None
        wm = WidthModel(graph, self.resource, target)
        groups = {gr.id: gr for gr in wm.groups}
        floor = wm.cost({g: floor_units(graph, groups[g], round_to) for g in wm.prunable})
        return floor + self.shrink_to * max(0.0, budget - floor)

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        for need, opt in (("target", "resource"), ("train", "epochs")):
            if need in self.requirements() and getattr(ctx, need) is None:
                self.invalid(opt, f"{opt}={getattr(self, opt)} needs ctx.{need}")
        target = ctx.target
        cost0 = resource_value(graph, self.resource, target)
        budget = self.budget if self.budget is not None else cost0
        multiple = channel_multiple(self.round_to, ctx, self.name)
        gen = torch.Generator().manual_seed(int(ctx.seed))
        report = {"resource": self.resource, "budget": budget, "initial_cost": cost0, "round_to": multiple,
                  "before": group_widths(graph), "iterations": []}
        g = graph
        for it in range(self.iterations):
            shrunk, sinfo = shrink(g, resource=self.resource, target=target, train=ctx.train, epochs=self.epochs,
                                   strength=self.strength, threshold=self.threshold, refresh_steps=self.refresh_steps,
                                   data=ctx.data, goal=self.shrink_goal(g, budget, target, multiple), round_to=multiple)
            expanded, einfo = expand(shrunk, budget, self.resource, target, multiple, generator=gen)
            if self.retrain_epochs > 0 and ctx.train is not None:  # from scratch, as the paper does
                expanded = train_graph(fresh_init(expanded, gen), ctx, self.retrain_epochs, who=self.name)
            report["iterations"].append({
                "after_shrink": group_widths(shrunk), "after_expand": group_widths(expanded),
                "shrunk_cost": resource_value(shrunk, self.resource, target),
                "cost": resource_value(expanded, self.resource, target), "multiplier": einfo["multiplier"],
                "minimum": einfo["minimum"], "shrink": sinfo})
            g = expanded
        last = report["iterations"][-1]
        report["strength"] = [it["shrink"].get("strength") for it in report["iterations"]]  # λ, per iteration
        report["after_shrink"], report["after_expand"], report["cost"] = last["after_shrink"], last["after_expand"], last["cost"]
        path = self.plot or (os.path.join(ctx.checkpoint_dir, "morphnet_widths.png") if ctx.checkpoint_dir else None)
        if path:
            from hwopt.report import plot_widths
            plot_widths({"before": report["before"], "after shrink": report["after_shrink"],
                         "after expand": report["after_expand"]}, path,
                        f"morphnet widths ({self.resource}, budget {budget:.4g})")
            report["plot"] = str(path)
        ctx.note(**report)
        return g
