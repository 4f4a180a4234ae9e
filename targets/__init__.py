"""Targets: one TOML file per device (this folder) and the cost model that says what a graph costs there.

    >>> import hwopt, hwopt.targets as T
    >>> t = T.load_target("cortex-m7")          # or a path to a .toml file
    >>> c = t.cost(hwopt.lift(model, x))        # latency_ms, per_node, flash_bytes, peak_sram_bytes, energy_mj
    >>> T.available()
    ['cortex-a53', 'cortex-a72', ...]

See README.md in this folder for every field of a target file and how to add a device.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import os
import re
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hwopt.errors import TargetError

from . import cost as _cost
from . import probe
from .cost import DTYPE_BYTES, Coefficients, Cost
from .schema import DTYPES, KINDS, validate

__all__ = ["Target", "Cost", "load_target", "available", "TARGET_DIR", "KINDS", "CalibrationCPUWarning"]

TARGET_DIR = Path(__file__).resolve().parent
_TOKENS = itertools.count()


def available() -> list[str]:
    """Names of the targets shipped in this folder."""
    return sorted(p.stem for p in TARGET_DIR.glob("*.toml"))


# --------------------------------------------------------------------------------------------------
# "auto" fields: found on this machine at load time (targets/probe.py)


def _resolve_auto(doc: dict) -> dict:
    doc = copy.deepcopy(doc)
    c, m = doc["compute"], doc["memory"]
    if c["clock_mhz"] == "auto":
        c["clock_mhz"] = probe.clock_mhz()
    if c["cores_used"] == "auto":
        c["cores_used"] = probe.cores()
    if c["simd_bits"] == "auto":
        c["simd_bits"] = probe.simd_bits()
    if c["channel_multiple"] == "auto":
        c["channel_multiple"] = max(1, c["simd_bits"] // (8 * DTYPE_BYTES[doc["deploy_dtype"]]))
    for lvl, key in ((1, "l1d_kib"), (2, "l2_kib"), (3, "l3_kib")):
        if m[key] == "auto":
            m[key] = probe.cache_kib(lvl)
    return doc


# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Target:
    """A validated device description. Read-only; `cost(graph)` predicts what a graph costs there."""
    name: str
    description: str
    vendor: str
    deploy_dtype: str
    batch: int
    tvm_target_raw: dict
    tvm_host_raw: dict | None
    clock_mhz: float
    cores_used: int
    simd_bits: int
    channel_multiple: int
    peak_macs_per_cycle: dict
    l1d_kib: float
    l2_kib: float
    l3_kib: float
    bandwidth_gbs: float
    sram_bytes: int | None
    flash_bytes: int | None
    per_op_us: float
    pj_per_mac: dict
    pj_per_byte_dram: float
    pj_per_byte_sram: float
    calibration: dict
    runtime: str
    path: str | None = None
    board_power_w: float | None = None  # static power while running (energy.board_power_w), W
    price_float_as: str | None = None   # a float32 graph is costed as if at this dtype (see `priced_as`)
    doc: dict = field(default_factory=dict, repr=False)
    _token: int = field(default_factory=lambda: next(_TOKENS), repr=False)

    # -- derived figures --------------------------------------------------------------------------
    @property
    def peak_macs_per_s(self) -> float:
        """Peak MACs per second at the deploy dtype (`peak_macs_per_s_at` for another)."""
        return self.peak_macs_per_s_at(self.deploy_dtype)

    def peak_macs_per_s_at(self, dtype: str) -> float:
        return self.clock_mhz * 1e6 * self.cores_used * self.peak_macs_per_cycle[dtype]

    @property
    def bandwidth_bytes_s(self) -> float:
        return self.bandwidth_gbs * 1e9

    @property
    def cache_bytes(self) -> tuple[float, float]:
        """(per-core L2, last-level cache) in bytes: the thresholds of the spill_l2 / spill_llc terms."""
        l2 = self.l2_kib * 1024
        return l2, max(l2, self.l3_kib * 1024)

    @property
    def onchip_bytes(self) -> float:
        """On-chip memory activations can live in (MCU SRAM + L2 + L3): the energy model's SRAM/DRAM split."""
        return (self.sram_bytes or 0) + (self.l2_kib + self.l3_kib) * 1024

    @property
    def runtimes(self) -> list[str]:
        return sorted(k for k in self.calibration if k != "default")

    @property
    def calibration_info(self) -> dict:
        """Provenance of the coefficients in use (source, date, method, schedules, fit errors)."""
        return {k: v for k, v in self.calibration[self.runtime].items() if k != "kinds"}

    def foreign_cpu(self, runtime: str | None = None) -> str | None:
        """None when calibration table `runtime` (default: the one in use) was measured on this CPU or
        records no CPU (published / transferred tables describe another device by design); else a
        message naming both CPUs and the command that re-calibrates the table here."""
        rt = runtime or self.runtime
        tb = self.calibration.get(rt, {})
        here = probe.cpu_id()
        if "cpu" not in tb or tb["cpu"] == here:
            return None
        src = str(tb.get("source", ""))
        cmd = src.split(":", 1)[0] if src.startswith("hwopt calibrate") else f"hwopt calibrate --target {self.name}"
        return (f"{Path(self.path).name if self.path else self.name} [calibration.{rt}] was measured on "
                f"CPU {tb['cpu']!r}, this machine is {here!r}: its latencies are another CPU's (tens of % off); "
                f"re-calibrate here with: {cmd}")

    def provenance(self) -> list[dict]:
        """Per calibration table: runtime, provenance (measured / published / transferred /
        first-principles; "unstated" when the file does not say), samples, held-out error, rank
        correlation, and the test figures when the fit kept rows apart."""
        out = []
        for rt in self.runtimes:
            tb = self.calibration[rt]
            out.append({"runtime": rt, "provenance": tb.get("provenance", "unstated"), "samples": int(tb["samples"]),
                        "heldout_error": tb.get("loo_error"), "rank_correlation": tb.get("rank_correlation"),
                        "test_samples": tb.get("test_samples"), "test_error": tb.get("test_error"),
                        "test_rank_correlation": tb.get("test_rank_correlation"), "source": tb["source"],
                        "cpu": tb.get("cpu"), "foreign_cpu": self.foreign_cpu(rt)})
        return out

    @functools.cached_property
    def coefficients(self) -> Coefficients:
        return Coefficients.from_table(self.calibration[self.runtime])

    def with_runtime(self, runtime: str) -> "Target":
        """The same device costed with another calibration table (e.g. "torch-eager" on the host)."""
        if runtime not in self.calibration or runtime == "default":
            raise TargetError(f"no calibration for runtime {runtime!r} (have: {self.runtimes})",
                              f"calibration.{runtime}", self.path)
        return _build(self.doc, self.path, runtime).priced_as(self.price_float_as)

    def with_coefficients(self, table: dict, runtime: str | None = None) -> "Target":
        """A copy with a calibration table replaced (used by calibration; validated like a file)."""
        doc = copy.deepcopy(self.doc)
        rt = runtime or self.runtime
        doc["calibration"][rt] = table
        validate(doc, self.path)
        return _build(doc, self.path, rt).priced_as(self.price_float_as)

    @property
    def tvm_target(self) -> dict:
        """TVM target in JSON-dict form (pass to tvm.target.Target); mcpu="auto" resolved on this machine."""
        t = dict(self.tvm_target_raw)
        if t.get("mcpu") == "auto":
            t["mcpu"] = probe.llvm_cpu()
        if t.get("num-cores") == "auto":
            t["num-cores"] = self.cores_used
        if self.tvm_host_raw:
            t["host"] = dict(self.tvm_host_raw)
        return t

    @property
    def spec(self) -> dict:
        """The whole validated description as a plain dict (what the TVM backend takes)."""
        d = copy.deepcopy(self.doc)
        d["tvm"]["target"] = self.tvm_target
        return d

    # -- cost -------------------------------------------------------------------------------------
    def priced_as(self, dtype: str | None) -> "Target":
        """The same device, costing a float32 graph as its `dtype` version (None: at its own dtypes).
        What a pipeline that quantizes last plans with: pruning decisions see int8 figures."""
        if dtype is not None and dtype not in DTYPE_BYTES:
            raise TargetError(f"unknown dtype {dtype!r} (known: {', '.join(DTYPE_BYTES)})", "price_float_as", self.path)
        if dtype == self.price_float_as:
            return self
        return dataclasses.replace(self, price_float_as=dtype, _token=next(_TOKENS))

    def cost(self, graph, dtype: str | None = None) -> Cost:
        """Latency (ms, per node), flash and peak SRAM (bytes), energy (mJ: dynamic + the board's static
        power over the latency), MACs and params of `graph` here.

        The graph is costed at its own dtypes: a float32 graph with float kernels (4 B per weight and
        activation, the float32 MAC rate and energy), a quantized graph's int8 nodes with int8 kernels
        and its float nodes (input, quantize, dequantize, a float tail) with float ones. `dtype` (or
        `priced_as`) prices every node of a float graph at that dtype instead. `Cost.dtype` says which."""
        if dtype is not None and dtype not in DTYPE_BYTES:
            raise TargetError(f"unknown dtype {dtype!r} (known: {', '.join(DTYPE_BYTES)})", "cost(dtype=)", self.path)
        as_dtype = dtype or (None if _cost.features(graph).int8.any() else self.price_float_as)
        key = f"hwopt.targets.cost:{self._token}:{as_dtype}"
        return graph.cached(key, lambda: self._cost(graph, as_dtype))

    def latency_ms(self, graph) -> float:
        return self.cost(graph).latency_ms

    def static_energy_mj(self, latency_ms: float) -> float:
        """Board power (W, energy.board_power_w) over an inference of `latency_ms`: W x ms = mJ; 0 without it."""
        return float(self.board_power_w or 0.0) * latency_ms

    def _pj_per_mac(self, int8: np.ndarray) -> np.ndarray:
        return np.where(int8, self.pj_per_mac["int8"], self.pj_per_mac["float32"])

    def _node_seconds(self, f, int8: np.ndarray) -> np.ndarray:
        """Per-node seconds, each node at its dtype (bytes per element and MAC rate)."""
        ab = np.where(int8, DTYPE_BYTES["int8"], DTYPE_BYTES["float32"])
        c = self.coefficients
        terms = _cost.term_matrix(f, ab, *self.cache_bytes) if c.terms is not None else None
        peak_macs = np.where(int8, self.peak_macs_per_s_at("int8"), self.peak_macs_per_s_at("float32"))
        return _cost.node_seconds(f.kind, f.work, (f.act_elems + f.weight_elems) * ab, c, peak_macs,
                                  self.bandwidth_bytes_s, f.grouped, terms, f.ambiguous)

    def _conversions(self, g) -> tuple[float, float]:
        """(ms, dynamic mJ) of the quantize / dequantize nodes the int8 version of float graph `g` adds."""
        f, int8 = _cost.conversion_features(g)
        ab = np.where(int8, DTYPE_BYTES["int8"], DTYPE_BYTES["float32"])
        mj = _cost.energy_mj(f, 0.0, ab, self.onchip_bytes, self._pj_per_mac(int8), self.pj_per_byte_sram,
                             self.pj_per_byte_dram)
        return float(self._node_seconds(f, int8).sum() * 1e3), mj

    def _cost(self, g, as_dtype: str | None) -> Cost:
        f = _cost.features(g)
        int8 = np.ones(len(f.names), bool) if as_dtype == "int8" else (
            np.zeros(len(f.names), bool) if as_dtype == "float32" else f.int8)
        ab = np.where(int8, DTYPE_BYTES["int8"], DTYPE_BYTES["float32"])
        ms = self._node_seconds(f, int8) * 1e3
        by_kind = {k: float(ms[f.kind == i].sum()) for i, k in enumerate(KINDS)}
        peak, _ = _cost.peak_sram_bytes(g, as_dtype)
        fl = _cost.flash(g, as_dtype)
        dynamic = _cost.energy_mj(f, fl["total"], ab, self.onchip_bytes, self._pj_per_mac(int8),
                                  self.pj_per_byte_sram, self.pj_per_byte_dram)
        latency = float(ms.sum())
        if as_dtype == "int8" and not f.int8.any():  # the int8 version also converts its inputs and outputs
            extra_ms, extra_mj = self._conversions(g)
            latency += extra_ms
            by_kind["elementwise"] += extra_ms
            dynamic += extra_mj
        static = self.static_energy_mj(latency)
        fits = {}
        if self.flash_bytes:
            fits["flash"] = fl["total"] <= self.flash_bytes
        if self.sram_bytes:
            fits["sram"] = peak <= self.sram_bytes
        computes_int8 = bool(int8.any())
        if as_dtype is None:
            note = ("int8 graph: int8 kernels (its float input / output conversions in float32)" if computes_int8
                    else "float32 graph: float32 kernels")
        elif as_dtype == "int8" and not f.int8.any():
            note = "float32 graph priced as its int8 version (int8 kernels, quantize / dequantize at its inputs / outputs)"
        else:
            note = f"every node priced at {as_dtype}"
        return Cost(latency_ms=latency, per_node=dict(zip(f.names, ms.tolist())), by_kind=by_kind,
                    flash_bytes=int(fl["total"]), peak_sram_bytes=int(peak), energy_mj=dynamic + static, macs=f.macs,
                    params=f.params, target=self.name, runtime=self.runtime, flash_breakdown=dict(fl), fits=fits,
                    dtype="int8" if computes_int8 else "float32", dtype_note=note,
                    dynamic_energy_mj=dynamic, static_energy_mj=static)

    def __repr__(self) -> str:
        return (f"Target({self.name!r}: {self.clock_mhz:g} MHz x{self.cores_used}, {self.deploy_dtype}, "
                f"runtime {self.runtime!r})")


def _build(doc: dict, path: str | None, runtime: str | None = None) -> Target:
    r = _resolve_auto(doc)
    c, m, e = r["compute"], r["memory"], r["energy"]
    rt = runtime or r["calibration"]["default"]
    return Target(
        name=r["name"], description=r["description"], vendor=r["vendor"], deploy_dtype=r["deploy_dtype"],
        batch=int(r.get("batch", 1)), tvm_target_raw=dict(r["tvm"]["target"]), tvm_host_raw=r["tvm"].get("host"),
        clock_mhz=float(c["clock_mhz"]), cores_used=int(c["cores_used"]), simd_bits=int(c["simd_bits"]),
        channel_multiple=int(c["channel_multiple"]),
        peak_macs_per_cycle={k: float(v) for k, v in c["peak_macs_per_cycle"].items()},
        l1d_kib=float(m["l1d_kib"]), l2_kib=float(m["l2_kib"]), l3_kib=float(m["l3_kib"]),
        bandwidth_gbs=float(m["bandwidth_gbs"]), sram_bytes=m.get("sram_bytes"), flash_bytes=m.get("flash_bytes"),
        per_op_us=float(r["overhead"]["per_op_us"]),
        pj_per_mac={k: float(v) for k, v in e["pj_per_mac"].items()},
        pj_per_byte_dram=float(e["pj_per_byte_dram"]), pj_per_byte_sram=float(e["pj_per_byte_sram"]),
        calibration=copy.deepcopy(r["calibration"]), runtime=rt, path=path, doc=copy.deepcopy(doc),
        board_power_w=float(e["board_power_w"]) if e.get("board_power_w") is not None else None)


def _resolve_path(name_or_path: str | os.PathLike) -> Path:
    s = str(name_or_path)
    p = Path(s)
    if s.endswith(".toml") or os.sep in s or "/" in s:
        if not p.is_file():
            raise TargetError("no such target file", path=str(p))
        return p
    cand = TARGET_DIR / f"{s}.toml"
    if cand.is_file():
        return cand
    raise TargetError(f"unknown target {s!r}; known targets: {', '.join(available())} "
                      "(or pass the path of a .toml file)")


def parse_target(text: str, path: str | None = None, runtime: str | None = None) -> Target:
    """Validate and build a Target from TOML text (`path` is only used in messages)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise TargetError(f"not valid TOML: {e}", path=path) from None
    validate(doc, path)
    return _build(doc, path, runtime)


def load_target(name_or_path: str | os.PathLike | Target, runtime: str | None = None) -> Target:
    """Load and validate a target by name (one of `available()`) or by path to a TOML file.

    `runtime` picks a calibration table other than the file's default (e.g. "torch-eager" on host).
    Raises TargetError naming the file and the bad field."""
    if isinstance(name_or_path, Target):
        return name_or_path if runtime is None else name_or_path.with_runtime(runtime)
    p = _resolve_path(name_or_path)
    from .tomlio import read_target_text
    text = read_target_text(p)
    t = parse_target(text, str(p), runtime)
    if runtime is not None and runtime not in t.calibration:
        raise TargetError(f"no calibration for runtime {runtime!r} (have: {t.runtimes})", f"calibration.{runtime}", str(p))
    msg = t.foreign_cpu()
    if msg and (str(p), t.runtime) not in _WARNED_CPU:  # once per file and table: costs are still given
        _WARNED_CPU.add((str(p), t.runtime))
        warnings.warn(msg, CalibrationCPUWarning, stacklevel=2)
    return t


class CalibrationCPUWarning(UserWarning):
    """A calibration table in use was measured on another CPU than this machine's (Target.foreign_cpu)."""


_WARNED_CPU: set = set()
