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
import functools
import itertools
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hwopt.errors import TargetError

from . import cost as _cost
from .cost import DTYPE_BYTES, Coefficients, Cost
from .schema import DTYPES, KINDS, validate

__all__ = ["Target", "Cost", "load_target", "available", "TARGET_DIR", "KINDS"]

TARGET_DIR = Path(__file__).resolve().parent
_TOKENS = itertools.count()


def available() -> list[str]:
    """Names of the targets shipped in this folder."""
    return sorted(p.stem for p in TARGET_DIR.glob("*.toml"))


# --------------------------------------------------------------------------------------------------
# "auto" fields: found on this machine at load time


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _auto_clock_mhz() -> float:
    for p in ("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq",):
        try:
            return int(Path(p).read_text()) / 1000.0
        except (OSError, ValueError):
            pass
    mhz = [float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", _cpuinfo())]
    return max(mhz) if mhz else 2000.0


def _auto_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _auto_simd_bits() -> int:
    m = re.search(r"^(flags|Features)\s*:(.*)$", _cpuinfo(), re.M)
    flags = set(m.group(2).split()) if m else set()
    if "avx512f" in flags:
        return 512
    if "avx2" in flags or "avx" in flags:
        return 256
    if flags & {"sse2", "asimd", "neon"}:
        return 128
    return 128


def _auto_cache_kib(level: int) -> float:
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for idx in sorted(base.glob("index*")) if base.exists() else []:
        try:
            if int((idx / "level").read_text()) == level and (idx / "type").read_text().strip() in ("Data", "Unified"):
                s = (idx / "size").read_text().strip()
                return float(s[:-1]) * (1024 if s.endswith("M") else 1) if s[-1] in "KM" else float(s) / 1024
        except (OSError, ValueError):
            continue
    return 0.0


def _resolve_auto(doc: dict) -> dict:
    doc = copy.deepcopy(doc)
    c, m = doc["compute"], doc["memory"]
    if c["clock_mhz"] == "auto":
        c["clock_mhz"] = _auto_clock_mhz()
    if c["cores_used"] == "auto":
        c["cores_used"] = _auto_cores()
    if c["simd_bits"] == "auto":
        c["simd_bits"] = _auto_simd_bits()
    if c["channel_multiple"] == "auto":
        c["channel_multiple"] = max(1, c["simd_bits"] // (8 * DTYPE_BYTES[doc["deploy_dtype"]]))
    for lvl, key in ((1, "l1d_kib"), (2, "l2_kib"), (3, "l3_kib")):
        if m[key] == "auto":
            m[key] = _auto_cache_kib(lvl)
    return doc


def _auto_mcpu() -> str:
    try:
        from hwopt.tvm.target import host_cpu  # slow import (TVM): only when a TVM target is asked for
        return host_cpu()
    except Exception:  # pragma: no cover - no TVM / no LLVM
        return "generic"


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
    doc: dict = field(default_factory=dict, repr=False)
    _token: int = field(default_factory=lambda: next(_TOKENS), repr=False)

    # -- derived figures --------------------------------------------------------------------------
    @property
    def peak_macs_per_s(self) -> float:
        return self.clock_mhz * 1e6 * self.cores_used * self.peak_macs_per_cycle[self.deploy_dtype]

    @property
    def bandwidth_bytes_s(self) -> float:
        return self.bandwidth_gbs * 1e9

    @property
    def cache_bytes(self) -> tuple[float, float]:
        """(per-core L2, last-level cache) in bytes: the thresholds of the spill_l2 / spill_llc terms."""
        l2 = self.l2_kib * 1024
        return l2, max(l2, self.l3_kib * 1024)

    @property
    def runtimes(self) -> list[str]:
        return sorted(k for k in self.calibration if k != "default")

    @property
    def calibration_info(self) -> dict:
        """Provenance of the coefficients in use (source, date, method, schedules, fit errors)."""
        return {k: v for k, v in self.calibration[self.runtime].items() if k != "kinds"}

    @functools.cached_property
    def coefficients(self) -> Coefficients:
        return Coefficients.from_table(self.calibration[self.runtime])

    def with_runtime(self, runtime: str) -> "Target":
        """The same device costed with another calibration table (e.g. "torch-eager" on the host)."""
        if runtime not in self.calibration or runtime == "default":
            raise TargetError(f"no calibration for runtime {runtime!r} (have: {self.runtimes})",
                              f"calibration.{runtime}", self.path)
        return _build(self.doc, self.path, runtime)

    def with_coefficients(self, table: dict, runtime: str | None = None) -> "Target":
        """A copy with a calibration table replaced (used by calibration; validated like a file)."""
        doc = copy.deepcopy(self.doc)
        rt = runtime or self.runtime
        doc["calibration"][rt] = table
        validate(doc, self.path)
        return _build(doc, self.path, rt)

    @property
    def tvm_target(self) -> dict:
        """TVM target in JSON-dict form (pass to tvm.target.Target); mcpu="auto" resolved on this machine."""
        t = dict(self.tvm_target_raw)
        if t.get("mcpu") == "auto":
            t["mcpu"] = _auto_mcpu()
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
    def cost(self, graph) -> Cost:
        """Latency (ms, per node), flash and peak SRAM (bytes), energy (mJ), MACs and params of `graph` here."""
        key = f"hwopt.targets.cost:{self._token}"
        return graph.cached(key, lambda: self._cost(graph))

    def latency_ms(self, graph) -> float:
        return self.cost(graph).latency_ms

    def _cost(self, g) -> Cost:
        f = _cost.features(g)
        ab = DTYPE_BYTES[self.deploy_dtype]
        nbytes = (f.act_elems + f.weight_elems) * ab
        c = self.coefficients
        terms = _cost.term_matrix(f, ab, *self.cache_bytes) if c.terms is not None else None
        sec = _cost.node_seconds(f.kind, f.work, nbytes, c, self.peak_macs_per_s,
                                 self.bandwidth_bytes_s, f.grouped, terms, f.ambiguous)
        ms = sec * 1e3
        by_kind = {k: float(ms[f.kind == i].sum()) for i, k in enumerate(KINDS)}
        peak_elems, _ = _cost.peak_sram_elems(g)
        fl = _cost.flash(g, self.deploy_dtype)
        # energy: MACs; activations from on-chip memory when a node's working set fits it, else DRAM;
        # weights streamed from DRAM / flash once per inference.
        onchip = (self.sram_bytes or 0) + (self.l2_kib + self.l3_kib) * 1024
        act = f.act_elems * ab
        act_pj = np.where(act <= onchip, act * self.pj_per_byte_sram, act * self.pj_per_byte_dram).sum()
        w_pj = fl["total"] * self.pj_per_byte_dram
        mac_pj = f.work[(f.kind >= 0)].sum() * self.pj_per_mac[self.deploy_dtype]
        energy_mj = float(mac_pj + act_pj + w_pj) * 1e-9
        peak = int(peak_elems * ab)
        fits = {}
        if self.flash_bytes:
            fits["flash"] = fl["total"] <= self.flash_bytes
        if self.sram_bytes:
            fits["sram"] = peak <= self.sram_bytes
        return Cost(latency_ms=float(ms.sum()), per_node=dict(zip(f.names, ms.tolist())), by_kind=by_kind,
                    flash_bytes=int(fl["total"]), peak_sram_bytes=peak, energy_mj=energy_mj, macs=f.macs,
                    params=f.params, target=self.name, runtime=self.runtime, flash_breakdown=dict(fl), fits=fits)

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
        calibration=copy.deepcopy(r["calibration"]), runtime=rt, path=path, doc=copy.deepcopy(doc))


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
    try:
        text = p.read_text()
    except OSError as e:
        raise TargetError(f"cannot read: {e}", path=str(p)) from None
    t = parse_target(text, str(p), runtime)
    if runtime is not None and runtime not in t.calibration:
        raise TargetError(f"no calibration for runtime {runtime!r} (have: {t.runtimes})", f"calibration.{runtime}", str(p))
    return t
