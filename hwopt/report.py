"""What `optimize()` returns: the result, its table and report (markdown, JSON, plots) and its exports.

Every table and report states whether the model fits the device (SRAM, flash) and the dtype it is
costed and deployed at. Outputs are checked before any work and written atomically.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .channels import channel_groups
from .errors import HwoptError
from .fileio import atomic_output, atomic_write, check_output_dir, check_output_file
from .ir import Graph
from .lower import lower
from .passkit import group_label, unit_channels

EXPORT_FORMATS = ("torch", "onnx", "tvm", "firmware")
EXPORT_SUFFIX = {"torch": ".pt2", "onnx": ".onnx", "tvm": ".so", "firmware": "-firmware"}
TABLE_ROWS = ("latency_ms", "macs", "params", "flash_bytes", "peak_sram_bytes", "energy_mj")


# --- the result ------------------------------------------------------------------------------------


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
    limits: dict = field(default_factory=dict)  # the device's SRAM / flash, as budget entries
    warnings: list = field(default_factory=list)
    seconds: float = 0.0
    dtype_note: str = ""  # whether the model was quantized, and which dtype its figures are costed at

    @property
    def dtype(self) -> str:
        """The dtype the result is costed (and deployed) at: its graph's own (int8 once quantized)."""
        return self.target.cost(self.graph).dtype

    @property
    def dtype_before(self) -> str:
        return self.target.cost(self.original).dtype

    @property
    def fits(self) -> dict[str, bool]:
        """{"peak_sram_bytes": bool, "flash_bytes": bool} for the limits the target has."""
        return {k: self.after[k] <= v for k, v in self.limits.items()}

    def fits_line(self) -> str:
        if not self.limits:
            fit = f"{self.target.name} gives no SRAM / flash limit"
        else:
            fit = ", ".join(f"{k} {self.after[k]:,.0f} of {v:,.0f} B ({'fits' if self.fits[k] else 'DOES NOT FIT'})"
                            for k, v in self.limits.items())
        return f"costed dtype {self.dtype}; {fit}"

    @property
    def report(self) -> dict:
        return {"target": self.target.name, "dtype": self.dtype, "dtype_before": self.dtype_before,
                "dtype_note": self.dtype_note, "pipeline": self.pipeline, "why": self.why,
                "budget": self.budget, "limits": self.limits, "fits": self.fits, "before": self.before,
                "after": self.after, "accuracy": self.accuracy, "measured": self.measured, "warnings": self.warnings,
                "passes": self.passes, "seconds": self.seconds,
                "ratios": {k: (self.before[k] / self.after[k] if self.after.get(k) else None) for k in self.before}}

    def rows(self) -> list[tuple[str, ...]]:
        rows = [("resource", "before", "after", "budget / limit", "×")]
        for k in TABLE_ROWS:
            b, a = self.before[k], self.after[k]
            fmt = (lambda v: f"{v:.4g}") if isinstance(b, float) and b < 1e4 else (lambda v: f"{v:,.0f}")
            label = k
            if k == "energy_mj":
                label += " (dynamic + static)" if self.target.board_power_w else " (dynamic; no board_power_w)"
            limit = self.budget.get(k, self.limits.get(k))
            rows.append((label, fmt(b), fmt(a), fmt(limit) if limit is not None else "-", f"{b / a:.2f}" if a else "-"))
        for k, (b, a) in self.accuracy.items():
            rows.append((k, f"{b:.4f}", f"{a:.4f}", "-", "-"))
        for k, v in self.measured.items():
            rows.append((f"measured {k}", f"{v['before']:.3f}", f"{v['after']:.3f}", "-", f"{v['before'] / v['after']:.2f}"))
        before_fits = {k: self.before[k] <= v for k, v in self.limits.items()}
        word = lambda d: "yes" if all(d.values()) else "no (" + ", ".join(k for k, ok in d.items() if not ok) + ")"
        rows.append(("fits device", word(before_fits) if self.limits else "-", word(self.fits) if self.limits else "-",
                     "-", "-"))
        rows.append(("costed dtype", self.dtype_before, self.dtype, "-", "-"))
        return rows

    def table(self) -> str:
        rows = self.rows()
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines += [f"dtype: {self.dtype_note}"] if self.dtype_note else []
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def markdown(self, plots: list[str] = ()) -> str:
        rows = self.rows()
        md = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * 5] + ["| " + " | ".join(r) + " |" for r in rows[1:]]
        lines = [f"# hwopt report: {self.target.name}", "", f"Pipeline: `{self.pipeline}`", "", f"Why: {self.why}", "",
                 f"Fits: {self.fits_line()}.", "", *([f"Dtype: {self.dtype_note}.", ""] if self.dtype_note else []),
                 *md, ""]
        lines += [f"**Warning:** {w}" for w in self.warnings] + ([""] if self.warnings else [])
        lines += [f"![{Path(p).stem.replace('_', ' ')}]({p})" for p in plots] + ([""] if plots else [])
        return "\n".join(lines + [f"Took {self.seconds:.1f} s.", ""])

    def write_report(self, directory: str | os.PathLike) -> list[Path]:
        """report.md (linking the plots), report.json and the plots (latency by op kind, kept widths per
        layer) in `directory`."""
        d = check_output_dir(directory)
        d.mkdir(parents=True, exist_ok=True)
        plots = write_plots(self, d)
        atomic_write(d / "report.md", self.markdown([p.name for p in plots]))
        atomic_write(d / "report.json", json.dumps(self.report, indent=2, default=str))
        return [d / "report.md", d / "report.json", *plots]

    def export(self, path: str | os.PathLike, format: str = "torch") -> Path:
        """Write the optimized model: 'torch' (.pt2 of torch.export), 'onnx', 'tvm' (a library for the target), or
        'firmware' (Cortex-M targets: a C project in directory `path`, built into firmware.elf; hwopt.firmware)."""
        if format not in EXPORT_FORMATS:
            raise HwoptError(f"unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
        if format == "firmware":
            from .firmware import export_firmware
            path = Path(path)
            export_firmware(self.graph, self.target, path)
            return path
        path = check_output_file(path, "export path")
        path.parent.mkdir(parents=True, exist_ok=True)
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


def _atomic_file(path: Path, write: Callable[[str], Any]) -> None:
    with atomic_output(path) as tmp:
        write(tmp)


# --- plots -----------------------------------------------------------------------------------------


def kept_widths(before: Graph, after: Graph) -> list[tuple[str, int, int]]:
    """(layer, channels before, channels after) for every prunable group of `before`, named by its first
    producer; a group whose layer is gone counts as 0 channels kept."""
    now = {group_label(g): g.size * unit_channels(g) for g in channel_groups(after)}
    return [(group_label(g), g.size * unit_channels(g), now.get(group_label(g), 0))
            for g in channel_groups(before) if g.prunable]


def write_plots(result: Result, d: Path) -> list[Path]:
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
    ax.set_ylabel(f"predicted ms ({result.dtype})")
    ax.set_title(f"latency by op kind on {result.target.name}")
    ax.legend()
    fig.tight_layout()
    out.append(_save(fig, d / "latency_by_kind.png"))
    widths = kept_widths(result.original, result.graph)
    if widths:
        plot_widths({"before": {n: b for n, b, _ in widths}, "after": {n: a for n, _, a in widths}},
                    d / "widths.png", f"kept width per layer on {result.target.name}")
        out.append(d / "widths.png")
    plt.close("all")
    return out


def _save(fig, path: Path) -> Path:
    _atomic_file(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    return path


def plot_widths(stages: dict[str, dict[str, int]], path, title: str) -> None:
    """Horizontal bars per layer (input at the top) of each stage's width as a fraction of the first
    stage's, labelled with the layer name and the widths in channels; written atomically as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(stages)
    base = stages[names[0]]
    layers = list(base)
    fig, ax = plt.subplots(figsize=(7.5, max(3.0, 0.24 * len(layers) * max(1, len(names) - 1) + 1.2)))
    h = 0.8 / max(1, len(names) - 1)
    for i, name in enumerate(names[1:]):
        frac = [stages[name].get(k, 0) / base[k] if base[k] else 0.0 for k in layers]
        ax.barh([y + (i - (len(names) - 2) / 2) * h for y in range(len(layers))], frac, h, label=name)
    ax.axvline(1.0, color="#888", lw=0.8, ls="--")
    labels = [f"{k} ({'/'.join(str(stages[n].get(k, 0)) for n in reversed(names))})" for k in layers]
    ax.set_yticks(range(len(layers)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"fraction of {names[0]} width kept (channels {'/'.join(reversed(names))} in brackets)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    _save(fig, Path(path))
    plt.close(fig)
