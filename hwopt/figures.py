"""One resource vocabulary for budgets, passes and reports, and one way to count each figure.

Resources (absolute values, always in these units):
    latency_ms       predicted latency on the target, ms
    peak_sram_bytes  peak activation memory, bytes (the target's SRAM limit applies to it)
    flash_bytes      stored model, bytes (weights at the deploy dtype; the target's flash limit applies)
    energy_mj        energy per inference, mJ: dynamic (MACs, memory traffic) + static (board power x latency
                     where the target file gives `energy.board_power_w`)
    macs             multiply-accumulates of conv / linear layers
    params           learnable parameters (weights and biases; BN statistics are not parameters), counted
                     by `Graph.stats()` and nowhere else

A fraction of the starting figure is spelled `<resource>_fraction` in a pass option (e.g. channel-prune's
`macs_fraction=0.5`); a budget is always absolute.
"""
from __future__ import annotations

import math

from .errors import BudgetError
from .ir import Graph, node_macs

RESOURCES = ("latency_ms", "peak_sram_bytes", "flash_bytes", "energy_mj", "macs", "params")
TARGET_RESOURCES = ("latency_ms", "peak_sram_bytes", "flash_bytes", "energy_mj")  # need a target's cost model
# a device's own limits: the budget resource each is and the target attribute holding it
DEVICE_LIMITS = {"peak_sram_bytes": "sram_bytes", "flash_bytes": "flash_bytes"}
UNITS = {"latency_ms": "ms", "peak_sram_bytes": "B", "flash_bytes": "B", "energy_mj": "mJ", "macs": "", "params": ""}


def graph_figures(graph: Graph, target=None) -> dict:
    """Every figure of `graph`: params, nonzero_params, macs and, with a target, its cost-model figures."""
    s = graph.stats()
    fig = {"params": s["params"], "nonzero_params": s["nonzero_params"], "macs": s["macs"]}
    if target is not None:
        c = target.cost(graph)  # energy_mj = dynamic + static (Target.cost, the one place it is summed)
        fig.update(latency_ms=c.latency_ms, peak_sram_bytes=c.peak_sram_bytes, flash_bytes=c.flash_bytes,
                   energy_mj=c.energy_mj, dynamic_energy_mj=c.dynamic_energy_mj, static_energy_mj=c.static_energy_mj)
    return fig


def resource_value(graph: Graph, resource: str, target=None) -> float:
    """One figure of `graph` (see RESOURCES); the target's figures need `target`."""
    if resource in TARGET_RESOURCES and target is None:
        from .errors import PassError
        raise PassError(f"resource {resource!r} needs a target (a cost model)")
    if resource == "params":
        return float(graph.stats()["params"])
    if resource == "macs":
        return float(sum(node_macs(graph, n) for n in graph))  # the op table's count, as stats() sums it
    return float(graph_figures(graph, target)[resource])


def device_limits(target) -> dict[str, float]:
    """The target's SRAM and flash as budget entries (only those the target file gives)."""
    out = {}
    for resource, attr in DEVICE_LIMITS.items():
        v = getattr(target, attr, None)
        if v:
            out[resource] = float(v)
    return out


def fits(figs: dict, target) -> dict[str, bool]:
    """{"peak_sram_bytes": bool, "flash_bytes": bool} for the limits the target has."""
    return {k: figs[k] <= v for k, v in device_limits(target).items()}


def check_budget(budget: dict | None) -> dict[str, float]:
    """A budget as {resource: absolute limit}; unknown names, non-positive values and values that read
    as fractions of a count (macs=0.5) are errors naming the entry."""
    if budget is None:
        return {}
    if not isinstance(budget, dict):
        raise BudgetError(f"budget must be a dict of resources {list(RESOURCES)}, got {type(budget).__name__}")
    out = {}
    for k, v in budget.items():
        if k not in RESOURCES:
            raise BudgetError(f"unknown budget resource {k!r}; known resources: {', '.join(RESOURCES)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise BudgetError(f"budget {k!r} must be a positive number, got {v!r}")
        if k in ("macs", "params", "peak_sram_bytes", "flash_bytes") and v < 1:
            raise BudgetError(f"budget {k!r}={v!r} is below one: budgets are absolute counts, not fractions "
                              f"(for half the start write {k}=0.5 * the starting figure)")
        out[k] = float(v)
    return out


def meets(figs: dict, budget: dict) -> bool:
    return all(figs[k] <= v * (1 + 1e-9) for k, v in budget.items())


def format_figures(figs: dict, keys) -> str:
    return ", ".join(f"{k}={figs[k]:,.4g}" for k in keys)
