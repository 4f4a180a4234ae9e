"""`hwopt.optimize(model, target, example_inputs, budget=...)`: one call from a torch model to a smaller,
faster one for a device, with a report of what changed and why, and exports for deployment.

With no pipeline, the pipeline is chosen from the target and the budget (see `choose_pipeline`):
canonicalize, then structured channel removal ranked by the target's own cost model (latency budgets),
or by MACs / a channel ratio found by bisection for the other resources; with training callbacks the
channel removal fine-tunes, and a flash budget is met with Han et al.'s magnitude pruning instead.
The user's model is never modified; an infeasible budget raises BudgetError with the closest reachable
figures; nothing is written unless asked (`Result.export`, `Result.write_report`), and then atomically.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .channels import channel_groups, resize_groups
from .errors import BudgetError, HwoptError
from .frontend import lift
from .ir import Graph
from .lower import lower
from .fileio import atomic_output, atomic_write
from .passmanager import PassContext, PassManager, StatsInstrument

RESOURCES = ("latency_ms", "peak_sram_bytes", "flash_bytes", "energy_mj", "macs")
EXPORT_FORMATS = ("torch", "onnx", "tvm", "firmware")


def _as_inputs(example_inputs) -> tuple[torch.Tensor, ...]:
    return (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)


def check_budget(budget: dict | None) -> dict[str, float]:
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
        out[k] = float(v)
    return out


def figures(graph: Graph, target) -> dict[str, float]:
    c = target.cost(graph)
    return {"latency_ms": c.latency_ms, "peak_sram_bytes": c.peak_sram_bytes, "flash_bytes": c.flash_bytes,
            "energy_mj": c.energy_mj, "macs": c.macs, "params": c.params}


def _meets(fig: dict, budget: dict) -> bool:
    return all(fig[k] <= v * (1 + 1e-9) for k, v in budget.items())


def smallest_reachable(graph: Graph, round_to: int = 1) -> Graph:
    """Every prunable channel group at its minimum width: the floor structured pruning can reach."""
    groups = channel_groups(graph)
    return resize_groups(graph, {g.id: min(g.size, max(1, round_to)) for g in groups if g.prunable}, groups=groups)


def choose_pipeline(graph: Graph, target, budget: dict, *, train=None, evaluate=None) -> tuple[str, str]:
    """(pipeline text, why) for a budget on a target. RATIO in the text is found by `_ratio_search`."""
    tune = ",finetune{epochs=1.0}" if train is not None else ""
    if not budget:
        return "canonicalize", "no budget: only exact clean-ups (identities, BN folding, dead code)"
    if set(budget) == {"flash_bytes"} and train is not None and evaluate is not None:
        s = _flash_sparsity(graph, target, budget["flash_bytes"])
        return (f"canonicalize,magnitude-prune{{sparsity={s:.4f}}}",
                "flash budget with training callbacks: unstructured magnitude pruning (Han et al. 2015) stored "
                "sparsely, which keeps accuracy where channel removal would cost more")
    if set(budget) == {"latency_ms"}:
        return (f"canonicalize,channel-prune{{latency_ms={budget['latency_ms']!r},round_to=target}}{tune}",
                "latency budget: channel removal ranked by importance per millisecond the target's cost model "
                "predicts it saves, widths rounded to the target's SIMD multiple" + (", then fine-tuning" if tune else ""))
    if set(budget) == {"macs"}:
        return (f"canonicalize,channel-prune{{macs={budget['macs']!r}}}{tune}",
                "MAC budget: channel removal ranked by importance per MAC saved" + (", then fine-tuning" if tune else ""))
    return (f"canonicalize,channel-prune{{ratio=RATIO,round_to=target}}{tune}",
            f"budget on {', '.join(sorted(budget))}: channel removal at the smallest ratio (bisection on the "
            "target's cost model) that meets every resource — removing channels lowers latency, activation "
            "memory, weight memory and energy together" + (", then fine-tuning" if tune else ""))


def _flash_sparsity(graph: Graph, target, flash_budget: float) -> float:
    """The global magnitude sparsity whose sparse storage meets the flash budget (bisection on masks)."""
    weights = [n for n in graph if n.op in ("conv2d", "linear")]
    magnitudes = torch.cat([n.params["weight"].abs().flatten() for n in weights])

    def flash_at(s: float) -> int:
        k = int(s * magnitudes.numel())
        thr = magnitudes.kthvalue(k).values if k > 0 else torch.tensor(-1.0)
        g = graph.copy()
        for n in weights:
            m = g[n.name].copy()
            m.params["weight_mask"] = (n.params["weight"].abs() > thr).to(n.params["weight"].dtype)
            g.replace(m)
        return target.cost(g).flash_bytes

    lo, hi = 0.0, 0.995
    floor = flash_at(hi)
    if floor > flash_budget:
        raise BudgetError(f"flash budget {flash_budget:,.0f} B is below what 99.5 % sparsity reaches ({floor:,} B)",
                          {"flash_bytes": floor})
    for _ in range(20):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if flash_at(mid) <= flash_budget else (mid, hi)
    return hi


@dataclass
class Result:
    model: torch.nn.Module
    graph: Graph
    original: Graph
    target: Any
    example_inputs: tuple
    pipeline: str
    why: str
    before: dict
    after: dict
    budget: dict
    passes: list = field(default_factory=list)
    accuracy: dict = field(default_factory=dict)
    measured: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def report(self) -> dict:
        return {"target": self.target.name, "pipeline": self.pipeline, "why": self.why, "budget": self.budget,
                "before": self.before, "after": self.after, "accuracy": self.accuracy, "measured": self.measured,
                "passes": self.passes, "seconds": self.seconds,
                "ratios": {k: (self.before[k] / self.after[k] if self.after.get(k) else None) for k in self.before}}

    def table(self) -> str:
        rows = [("resource", "before", "after", "budget", "×")]
        for k in ("latency_ms", "macs", "params", "flash_bytes", "peak_sram_bytes", "energy_mj"):
            b, a = self.before[k], self.after[k]
            fmt = (lambda v: f"{v:.4g}") if isinstance(b, float) and b < 1e4 else (lambda v: f"{v:,.0f}")
            rows.append((k, fmt(b), fmt(a), fmt(self.budget[k]) if k in self.budget else "-", f"{b / a:.2f}" if a else "-"))
        for k, (b, a) in self.accuracy.items():
            rows.append((k, f"{b:.4f}", f"{a:.4f}", "-", "-"))
        for k, v in self.measured.items():
            rows.append((f"measured {k}", f"{v['before']:.3f}", f"{v['after']:.3f}", "-", f"{v['before'] / v['after']:.2f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def markdown(self) -> str:
        t = self.table().splitlines()
        md = ["| " + " | ".join(c.strip() for c in _cells(t[0])) + " |", "|" + "---|" * 5]
        md += ["| " + " | ".join(c.strip() for c in _cells(line)) + " |" for line in t[2:]]
        return "\n".join([f"# hwopt report: {self.target.name}", "", f"Pipeline: `{self.pipeline}`", "",
                          f"Why: {self.why}", "", *md, "", f"Took {self.seconds:.1f} s.", ""])

    def write_report(self, directory: str | os.PathLike) -> list[Path]:
        """report.md, report.json and PNGs (latency by op kind, widths per channel group) in `directory`."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write(d / "report.md", self.markdown())
        atomic_write(d / "report.json", json.dumps(self.report, indent=2, default=str))
        written = [d / "report.md", d / "report.json"]
        written += _plots(self, d)
        return written

    def export(self, path: str | os.PathLike, format: str = "torch") -> Path:
        """Write the optimized model: 'torch' (.pt2 of torch.export), 'onnx', 'tvm' (a library for the target), or
        'firmware' (Cortex-M targets: a C project in directory `path`, built into firmware.elf; hwopt.firmware)."""
        if format not in EXPORT_FORMATS:
            raise HwoptError(f"unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if format == "firmware":
            from .firmware import export_firmware
            export_firmware(self.graph, self.target, path)
            return path
        module = lower(self.graph, bake_masks=True)
        if format == "torch":
            ep = torch.export.export(module, self.example_inputs)
            _atomic_file(path, lambda tmp: torch.export.save(ep, tmp))
        elif format == "onnx":
            try:
                import onnx  # noqa: F401 - the exporter needs it
            except ImportError:
                raise HwoptError("ONNX export needs the 'onnx' package: pip install onnx") from None
            _atomic_file(path, lambda tmp: torch.onnx.export(module, self.example_inputs, tmp, dynamo=False,
                                                             input_names=[f"input{i}" for i in range(len(self.example_inputs))],
                                                             output_names=["output"]))
        else:
            from .tvm import compile_module
            compiled = compile_module(module, self.example_inputs, self.target.tvm_target)
            compiled.export(str(path))
        return path


def _cells(line: str) -> list[str]:
    import re
    return re.split(r"\s{2,}", line.strip())


def _atomic_file(path: Path, write: Callable[[str], Any]) -> None:
    with atomic_output(path) as tmp:
        write(tmp)


def _plots(result: Result, d: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = []
    before, after = result.target.cost(result.original), result.target.cost(result.graph)
    kinds = sorted(set(before.by_kind) | set(after.by_kind))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    xs = range(len(kinds))
    ax.bar([x - 0.2 for x in xs], [before.by_kind.get(k, 0) for k in kinds], 0.4, label="before")
    ax.bar([x + 0.2 for x in xs], [after.by_kind.get(k, 0) for k in kinds], 0.4, label="after")
    ax.set_xticks(list(xs), kinds, rotation=30, ha="right")
    ax.set_ylabel("predicted ms")
    ax.set_title(f"latency by op kind on {result.target.name}")
    ax.legend()
    fig.tight_layout()
    out.append(_save(fig, d / "latency_by_kind.png"))
    wb = [g.size for g in channel_groups(result.original) if g.prunable]
    wa = [g.size for g in channel_groups(result.graph) if g.prunable]
    if len(wb) == len(wa) and wb:
        fig, ax = plt.subplots(figsize=(max(6, len(wb) * 0.25), 3.5))
        ax.bar(range(len(wb)), wb, label="before", color="#bbb")
        ax.bar(range(len(wa)), wa, label="after")
        ax.set_xticks(range(len(wb)))
        ax.set_xlabel("channel group (input → output)")
        ax.set_ylabel("channels")
        ax.set_title("widths per coupled channel group")
        ax.legend()
        fig.tight_layout()
        out.append(_save(fig, d / "widths.png"))
    plt.close("all")
    return out


def _save(fig, path: Path) -> Path:
    _atomic_file(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    return path


def _ratio_search(graph: Graph, target, budget: dict, seed: int) -> float:
    """Smallest channel-prune ratio meeting every budgeted resource (resources fall as the ratio rises)."""
    def fig(r: float) -> dict:
        g = PassManager.parse(f"channel-prune{{ratio={r:.4f},round_to=target}}").run(graph, PassContext(target=target, seed=seed))
        return figures(g, target)
    lo, hi = 0.0, 0.95
    top = fig(hi)
    if not _meets(top, budget):
        raise BudgetError(f"budget {_fmt_fig(budget, budget)} cannot be met by channel removal on {target.name}; "
                          f"the closest reachable figures are {_fmt_fig(top, budget)}", {k: top[k] for k in budget})
    for _ in range(10):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _meets(fig(mid), budget) else (mid, hi)
    return round(hi, 4)


def _fmt_fig(fig: dict, keys) -> str:
    return ", ".join(f"{k}={fig[k]:,.4g}" for k in keys)


def optimize(model: torch.nn.Module, target, example_inputs, *, budget: dict | None = None,
             pipeline: str | None = None, train=None, evaluate=None, seed: int = 0, measure: bool = False,
             workdir: str | None = None, progress: bool = False) -> Result:
    """Optimize `model` for `target` (a name, a path to a target file, or a Target) within `budget`.

    budget: {resource: limit} over latency_ms, peak_sram_bytes, flash_bytes, energy_mj, macs.
    pipeline: pass pipeline text; None lets hwopt choose (Result.why says why).
    train(module, *, epochs, penalty=None) / evaluate(module) -> accuracy: optional callbacks.
    measure: also compile with TVM and time before/after where the target runs (the host).
    """
    from .targets import load_target
    t0 = time.perf_counter()
    tgt = load_target(target) if not hasattr(target, "cost") else target
    budget = check_budget(budget)
    inputs = _as_inputs(example_inputs)
    torch.manual_seed(seed)
    graph = lift(model, inputs)
    before = figures(graph, tgt)
    if budget:
        floor = figures(smallest_reachable(graph, 1), tgt)
        if not _meets(floor, budget) and pipeline is None:
            raise BudgetError(f"budget {_fmt_fig(budget, budget)} is out of reach on {tgt.name}: even with every "
                              f"prunable channel group at one channel the model needs {_fmt_fig(floor, budget)}",
                              {k: floor[k] for k in budget})
    why = "pipeline given by the caller"
    if pipeline is None:
        pipeline, why = choose_pipeline(graph, tgt, budget, train=train, evaluate=evaluate)
    ctx = PassContext(target=tgt, train=train, evaluate=evaluate, example_inputs=inputs, seed=seed,
                      progress=progress, workdir=workdir, instruments=[StatsInstrument()])
    if "RATIO" in pipeline:
        canonical = PassManager.parse("canonicalize").run(graph)
        pipeline = pipeline.replace("RATIO", repr(_ratio_search(canonical, tgt, budget, seed)))
    graph_out = PassManager.parse(pipeline).run(graph, ctx)
    after = figures(graph_out, tgt)
    if budget and not _meets(after, budget):
        raise BudgetError(f"pipeline {pipeline!r} did not meet budget {_fmt_fig(budget, budget)} on {tgt.name}; "
                          f"it reached {_fmt_fig(after, budget)}", {k: after[k] for k in budget})
    out_model = lower(graph_out)
    result = Result(out_model, graph_out, graph, tgt, inputs, pipeline, why, before, after, budget,
                    passes=ctx.records)
    if evaluate is not None:
        result.accuracy["accuracy"] = (float(evaluate(lower(graph))), float(evaluate(out_model)))
    if measure:
        result.measured = _measure(graph, graph_out, tgt, inputs)
    result.seconds = time.perf_counter() - t0
    return result


def _measure(before: Graph, after: Graph, target, inputs) -> dict:
    """Median latency (ms) before/after, compiled with TVM and timed where the target runs (this host)."""
    from .tvm import compile_module
    if target.name != "host":
        return {}
    out = {}
    for key, g in (("before", before), ("after", after)):
        compiled = compile_module(lower(g, bake_masks=True), inputs, target.tvm_target)
        out[key] = compiled.benchmark(*inputs)["median_ms"]
    return {"latency_ms (TVM, default schedules)": out}
