"""Sensitivity analysis: accuracy as a function of how much of one layer (or group) is pruned.

Han et al. 2015 (sec. 3.4, Figure 2) prune each layer alone at increasing fractions, measure accuracy
without retraining, and set each layer's threshold from its curve: conv layers tolerate less pruning
than fully connected ones. The same scan serves structured pruning (keys are then channel groups).

    results = sensitivity_scan(graph, keys, prune_fn, evaluate, fractions)   # {key: [(f, acc), ...]}
    plot_sensitivity(results, "sens.png")                                    # the paper's Figure 2
    per_layer = fractions_for_drop(results, max_drop=0.01)                   # {key: fraction}
    per_layer = allocate_sparsity(results, sizes, target=0.92)               # hit an overall sparsity
    per_layer = allocate_sparsity_min_drop(results, sizes, target=0.92)      # ... at least summed loss
    per_layer = allocate_global_threshold(magnitudes, target=0.92)           # one threshold, no scan

`evaluate` is the PassContext's callback: a torch module -> accuracy in [0, 1]; the scan lowers each
pruned graph itself. This module imports the core only (never a pass).
"""
from __future__ import annotations

import os
from typing import Callable, Hashable, Iterable, Sequence

from .fileio import atomic_output
from .ir import Graph

Curve = list[tuple[float, float]]
DEFAULT_FRACTIONS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.99)


def sensitivity_scan(graph: Graph, keys: Iterable[Hashable], prune_fn: Callable[[Graph, Hashable, float], Graph],
                     evaluate: Callable, fractions: Sequence[float] = DEFAULT_FRACTIONS, *,
                     progress: bool = False, stop_below: float | None = None) -> dict[Hashable, Curve]:
    """For each key, accuracy after `prune_fn(graph, key, f)` for every f in `fractions` (no retraining).

    Each curve starts with (0.0, accuracy of the unpruned graph). `prune_fn` must return a new graph
    (the input is never modified). `stop_below`: stop a key's scan once accuracy falls below this
    (the rest of its curve is filled with that last accuracy, which keeps the curve monotone-safe).
    """
    from .lower import lower  # local: lower is heavier and not needed to read results
    keys = list(keys)
    fractions = sorted(float(f) for f in fractions if f > 0)
    base = float(evaluate(lower(graph)))
    out: dict[Hashable, Curve] = {}
    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=len(keys) * len(fractions), desc="sensitivity", leave=False)
        except ImportError:
            bar = None
    for key in keys:
        curve: Curve = [(0.0, base)]
        stopped = None
        for f in fractions:
            if stopped is None:
                acc = float(evaluate(lower(prune_fn(graph, key, f))))
                if stop_below is not None and acc < stop_below:
                    stopped = acc
            else:
                acc = stopped
            curve.append((f, acc))
            if bar is not None:
                bar.update(1)
        out[key] = curve
    if bar is not None:
        bar.close()
    return out


def max_fraction(curve: Curve, max_drop: float, baseline: float | None = None) -> float:
    """The largest fraction whose accuracy, and that of every smaller fraction, stays within `max_drop`
    of the baseline (the curve's first point unless given); linearly interpolated to the crossing."""
    pts = sorted(curve)
    base = pts[0][1] if baseline is None else baseline
    floor = base - max_drop
    best = 0.0
    prev_f, prev_a = pts[0]
    for f, a in pts[1:]:
        if a >= floor:
            best, prev_f, prev_a = f, f, a
            continue
        if prev_a > a:  # interpolate between the last good point and the first bad one
            best = prev_f + (f - prev_f) * (prev_a - floor) / (prev_a - a)
        break
    return float(best)


def fractions_for_drop(results: dict[Hashable, Curve], max_drop: float, baseline: float | None = None) -> dict[Hashable, float]:
    """Per key: the largest fraction pruned within `max_drop` accuracy of the baseline."""
    return {k: max_fraction(c, max_drop, baseline) for k, c in results.items()}


def allocate_sparsity(results: dict[Hashable, Curve], sizes: dict[Hashable, int], target: float,
                      cap: float | None = None) -> dict[Hashable, float]:
    """Per-key fractions reaching `target` overall (size-weighted) sparsity at the smallest common
    accuracy drop: each key is pruned up to where its own curve loses δ, and δ is the least value whose
    fractions sum to the target (bisection). Sensitive keys (conv) thus get smaller fractions than
    robust ones (fc). If even pruning every key to its largest scanned fraction falls short, the
    remaining sparsity is spread over the keys in proportion to what each still keeps (up to `cap`).
    """
    total = sum(sizes[k] for k in results)
    if total == 0 or target <= 0:
        return {k: 0.0 for k in results}
    cap = cap if cap is not None else max(f for c in results.values() for f, _ in c)

    def frac(delta: float) -> dict[Hashable, float]:
        return {k: min(cap, max_fraction(c, delta)) for k, c in results.items()}

    def overall(fr) -> float:
        return sum(fr[k] * sizes[k] for k in fr) / total

    hi = 1.0 + max(a for c in results.values() for _, a in c)  # a drop no curve reaches: everything at cap
    best = frac(hi)
    if overall(best) < target:
        need = target * total - sum(best[k] * sizes[k] for k in best)
        room = {k: (1.0 - best[k]) * sizes[k] for k in best}
        r = sum(room.values())
        return {k: min(0.9999, best[k] + (1 - best[k]) * need / r) if r else best[k] for k in best}
    lo = 0.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if overall(frac(mid)) >= target:
            hi = mid
        else:
            lo = mid
    fr = frac(hi)
    # trim the overshoot proportionally so the overall sparsity is the target, not above it
    over = overall(fr)
    if over > target:
        scale = target / over
        fr = {k: v * scale for k, v in fr.items()}
    return fr


def _hull_segments(curve: Curve, size: int, cap: float) -> list[tuple[float, float]]:
    """The lower convex hull of a curve as (weights pruned, accuracy lost) segments [(Δn, Δdrop)], in
    order of rising slope. The loss is clamped at 0 and made non-decreasing (noise above the baseline
    is no gain); points beyond `cap` are dropped."""
    pts = sorted(curve)
    base = pts[0][1]
    xy, worst = [(0.0, 0.0)], 0.0
    for f, a in pts[1:]:
        if f > cap + 1e-12:
            break
        worst = max(worst, base - a, 0.0)
        xy.append((f * size, worst))
    hull: list[tuple[float, float]] = []
    for p in xy:  # monotone chain, lower hull
        while len(hull) >= 2 and ((hull[-1][0] - hull[-2][0]) * (p[1] - hull[-2][1])
                                  - (hull[-1][1] - hull[-2][1]) * (p[0] - hull[-2][0])) <= 0:
            hull.pop()
        hull.append(p)
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(hull, hull[1:]) if b[0] > a[0]]


def allocate_sparsity_min_drop(results: dict[Hashable, Curve], sizes: dict[Hashable, int], target: float,
                               cap: float | None = None) -> dict[Hashable, float]:
    """Per-key fractions reaching `target` overall (size-weighted) sparsity with the least *summed*
    accuracy loss, reading each key's loss off its own curve (first-order: losses of separately pruned
    layers add). Unlike `allocate_sparsity` (the same loss δ for every key), a weight pruned from a
    small layer costs as much accuracy as its curve says for *its* share of that layer, so small
    layers (a classifier's last layer: 1k of 267k weights) are spared and large robust ones pruned
    more — the equal-marginal-cost (Lagrangian) solution: curves are replaced by their lower convex
    hulls in (weights pruned, loss), and hull segments of all keys are taken cheapest-per-weight first
    until the target is reached (the last one interpolated). Falls back to `allocate_sparsity`'s
    spreading rule if even every key at `cap` falls short.
    """
    keys = list(results)
    total = sum(sizes[k] for k in keys)
    if total == 0 or target <= 0:
        return {k: 0.0 for k in keys}
    cap = cap if cap is not None else max(f for c in results.values() for f, _ in c)
    segs = []
    for order, k in enumerate(keys):
        for j, (dn, dd) in enumerate(_hull_segments(results[k], sizes[k], cap)):
            segs.append((dd / dn, order, j, k, dn))
    segs.sort()
    need = target * total
    pruned = {k: 0.0 for k in keys}
    for _, _, _, k, dn in segs:
        if need <= 0:
            break
        take = min(dn, need)
        pruned[k] += take
        need -= take
    fr = {k: min(1.0, pruned[k] / sizes[k]) if sizes[k] else 0.0 for k in keys}
    if need > 1e-9 * total:
        room = {k: (1.0 - fr[k]) * sizes[k] for k in keys}
        r = sum(room.values())
        return {k: min(0.9999, fr[k] + (1 - fr[k]) * need / r) if r else fr[k] for k in keys}
    return fr


ALLOCATIONS = {"equal-drop": allocate_sparsity, "min-drop": allocate_sparsity_min_drop}


def allocate_global_threshold(magnitudes: dict[Hashable, "torch.Tensor"], target: float) -> dict[Hashable, float]:
    """Per-key fractions of one magnitude threshold over all keys (the baseline a skeptic tries first:
    `torch.nn.utils.prune.global_unstructured` with L1): the round(target·N) smallest |w| of all N
    weights together are pruned, wherever they are. Needs no scan. Weights already masked off should
    be passed as 0: they are pruned first and count towards the target."""
    import torch
    keys = list(magnitudes)
    sizes = [magnitudes[k].numel() for k in keys]
    total = sum(sizes)
    k = int(round(min(max(target, 0.0), 1.0) * total))
    if total == 0 or k == 0:
        return {key: 0.0 for key in keys}
    flat = torch.cat([magnitudes[key].detach().reshape(-1).to(torch.float64) for key in keys])
    pruned = torch.zeros(total, dtype=torch.bool)
    pruned[torch.topk(flat, k, largest=False).indices] = True
    return {key: float(part.float().mean()) for key, part in zip(keys, torch.split(pruned, sizes))}


def plot_sensitivity(results: dict[Hashable, Curve], path: str | os.PathLike, title: str = "Pruning sensitivity",
                     labels: dict[Hashable, str] | None = None) -> str:
    """Accuracy vs fraction pruned, one line per key (Han et al. 2015, Figure 2), written atomically as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # no pyplot: no global state, safe in threads
    fig = Figure(figsize=(6, 4), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    for k, curve in results.items():
        fs, accs = zip(*sorted(curve))
        ax.plot([100 * f for f in fs], [100 * a for a in accs], marker="o", ms=3,
                label=(labels or {}).get(k, str(k)))
    ax.set_xlabel("parameters pruned away (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.fspath(path)
    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path
