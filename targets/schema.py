"""The schema of a target TOML file, as data, and its validation.

Every field is listed in `SCHEMA` with its type, whether it is required, its constraints and whether
the value "auto" (found on this machine at load time) is allowed. `validate(doc, path)` walks the
parsed TOML and raises `TargetError(field="section.key", path=file)` on the first problem: a missing
required field, a wrong type, an out-of-range value, or an unknown key (typos must not be ignored).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from hwopt.errors import TargetError

DTYPES = ("float32", "int8")
# Op kinds the cost model tells apart (see cost.py); every calibration table gives coefficients for each.
KINDS = ("conv", "pointwise", "depthwise", "dense", "elementwise", "fused", "pooling", "data")
# Monomials of the "terms" latency form (see cost.py `_term_row`); every one is non-decreasing in
# every channel count, so non-negative coefficients keep the cost monotone.
TERMS = ("one", "work", "out", "in", "weights", "work_per_cin", "work_per_cout", "spill_l2", "spill_llc")
FORMS = ("roofline", "terms")
# Where a calibration table's numbers come from (`hwopt targets` shows it): timed on the device itself,
# fit to published measurements of the device, transferred from another device's fit, or first
# principles (datasheet peaks and efficiencies, at most a published figure or two).
PROVENANCES = ("measured", "published", "transferred", "first-principles")


@dataclass(frozen=True)
class F:
    """One field: `types` accepted, `required`, numeric bounds (`positive`, `nonneg`), the physically
    meaningful range `lo`..`hi` (inclusive; None: unbounded), `choices`, `auto`."""
    types: tuple
    required: bool = True
    positive: bool = False
    nonneg: bool = False
    lo: float | None = None
    hi: float | None = None
    choices: tuple | None = None
    auto: bool = False
    doc: str = ""

    @property
    def range_text(self) -> str:
        lo = "0 (exclusive)" if self.positive and self.lo is None else ("0" if self.nonneg and self.lo is None
                                                                      else f"{self.lo:g}" if self.lo is not None else "-inf")
        return f"[{lo}, {self.hi:g}]" if self.hi is not None else f"[{lo}, inf)"


NUM = (int, float)

# Physically meaningful ranges (issue 19: a clock of 1e-300 MHz or an overhead of 1e300 µs made every
# latency inf or 1e300 ms without a word). Wide enough for any device from a 1 MHz microcontroller
# to a server socket; narrow enough that a typo of a few orders of magnitude is caught.
CLOCK_MHZ = (1.0, 10_000.0)            # 1 MHz (slowest MCU) .. 10 GHz
BANDWIDTH_GBS = (1e-3, 10_000.0)       # 1 MB/s (a bit-banged SPI flash) .. 10 TB/s (HBM)
MACS_PER_CYCLE = (0.01, 65_536.0)      # a MAC every 100 cycles (soft multiply) .. a matrix engine
CACHE_KIB = (0.0, 1 << 21)             # .. 2 GiB
OVERHEAD_US = (0.0, 1e6)               # .. 1 s per operator
PJ = (0.0, 1e6)                        # energy per MAC / byte, pJ
EFFICIENCY = (1e-6, 100.0)             # fraction of peak (memory_eff > 1: traffic the byte count overstates)
SOFT_MAX_P = (0.5, 100.0)              # roofline exponent: 1 = sum, large = max; tiny p overflows
# "terms" coefficients, µs per unit of a monomial: per call <= 1 s; per MAC / element <= 1 ms.
TERM_US = {"one": 1e6}
TERM_US_DEFAULT = 1e3
DTYPE_TABLE = "dtype-table"  # marker: a table {float32 = x, int8 = y} of positive numbers

SCHEMA: dict[str, Any] = {
    "schema": F((int,), choices=(1,), doc="schema version of this file; 1"),
    "name": F((str,), doc="the target's name (what load_target takes); lowercase, [a-z0-9-]"),
    "description": F((str,), doc="one line: the device and what this file models"),
    "vendor": F((str,), doc="maker of the core / board"),
    "deploy_dtype": F((str,), choices=DTYPES, doc="dtype weights and activations have when deployed"),
    "batch": F((int,), positive=True, hi=1 << 20, required=False, doc="batch size the latency is for (default 1)"),
    "tvm": {
        "target": F((dict,), doc="TVM target in JSON-dict form, e.g. {kind=\"llvm\", mtriple=..., mcpu=...}"),
        "host": F((dict,), required=False, doc="TVM host target (JSON-dict form) when it differs from target"),
    },
    "compute": {
        "clock_mhz": F(NUM, positive=True, lo=CLOCK_MHZ[0], hi=CLOCK_MHZ[1], auto=True, doc="core clock the latency is for, MHz"),
        "cores_used": F((int,), positive=True, hi=4096, auto=True, doc="cores the deployed model runs on"),
        "simd_bits": F((int,), nonneg=True, hi=4096, auto=True, doc="SIMD register width in bits (0: none)"),
        "channel_multiple": F((int,), positive=True, hi=4096, auto=True, doc="channel count multiple the kernels favour"),
        "peak_macs_per_cycle": F((dict,), doc="per core, per dtype: {float32 = .., int8 = ..}"),
    },
    "memory": {
        "l1d_kib": F(NUM, nonneg=True, hi=CACHE_KIB[1], auto=True, doc="L1 data cache per core, KiB"),
        "l2_kib": F(NUM, nonneg=True, hi=CACHE_KIB[1], auto=True, doc="L2 cache, KiB (0: none)"),
        "l3_kib": F(NUM, nonneg=True, hi=CACHE_KIB[1], auto=True, doc="L3 / system cache, KiB (0: none)"),
        "bandwidth_gbs": F(NUM, positive=True, lo=BANDWIDTH_GBS[0], hi=BANDWIDTH_GBS[1], doc="sustained main-memory bandwidth, GB/s"),
        "sram_bytes": F((int,), positive=True, hi=1 << 50, required=False, doc="on-chip SRAM for activations (MCU)"),
        "flash_bytes": F((int,), positive=True, hi=1 << 50, required=False, doc="flash for code + weights (MCU)"),
    },
    "overhead": {
        "per_op_us": F(NUM, nonneg=True, hi=OVERHEAD_US[1], doc="fixed cost of launching one operator, µs (used where calibration gives none)"),
    },
    "energy": {
        "pj_per_mac": F((dict,), doc="energy of one MAC per dtype, pJ: {float32 = .., int8 = ..}"),
        "pj_per_byte_dram": F(NUM, nonneg=True, hi=PJ[1], doc="energy per byte moved to/from main memory (flash for MCUs), pJ"),
        "pj_per_byte_sram": F(NUM, nonneg=True, hi=PJ[1], doc="energy per byte moved to/from on-chip SRAM / cache, pJ"),
        "board_power_w": F(NUM, nonneg=True, required=False, hi=1e3,
                           doc="static power of the board while it runs, W (energy adds board_power_w x latency)"),
    },
    "calibration": "calibration",  # validated by _validate_calibration
}

CAL_META = {
    "source": F((str,), doc="who/what produced the coefficients"),
    "date": F((str,), doc="ISO date of the fit"),
    "method": F((str,), doc="fit method (e.g. least squares in log space over N samples)"),
    "schedules": F((str,), doc="which code the timings came from (TVM default schedules / MetaSchedule-tuned / torch eager / TFLite ...)"),
    "form": F((str,), required=False, choices=FORMS,
              doc='latency model form: "roofline" (default; needs soft_max_p and kinds) or "terms" (needs terms)'),
    "threads": F((int,), positive=True, required=False, doc="threads the timed runtime used (torch eager)"),
    "provenance": F((str,), required=False, choices=PROVENANCES,
                    doc="where the numbers come from: measured on the device, fit to published measurements, "
                        "transferred from another device's fit, or first principles"),
    "prior": F((str,), required=False, doc="TARGET:RUNTIME whose fit this one started from (few samples)"),
    "cpu": F((str,), required=False,
             doc="the CPU the timings were measured on (targets/probe.py cpu_id); loading the table on another "
                 "CPU warns, naming the command that re-calibrates"),
    "samples": F((int,), nonneg=True, hi=1 << 40, doc="number of timings fit"),
    "fit_error": F(NUM, nonneg=True, required=False, hi=1e6, doc="median |relative error| on the fit data"),
    "loo_error": F(NUM, nonneg=True, required=False, hi=1e6,
                   doc="held-out median |relative error| (leave-one-out <= 30 samples, else 5-fold)"),
    "rank_correlation": F(NUM, required=False, lo=-1.0, hi=1.0, doc="held-out Spearman rank correlation"),
    "test_samples": F((int,), nonneg=True, required=False, hi=1 << 40, doc="timings kept apart from the fit"),
    "test_error": F(NUM, nonneg=True, required=False, hi=1e6, doc="median |relative error| on the test samples"),
    "test_rank_correlation": F(NUM, required=False, lo=-1.0, hi=1.0, doc="Spearman rank correlation on the test samples"),
    "soft_max_p": F(NUM, positive=True, lo=SOFT_MAX_P[0], hi=SOFT_MAX_P[1], doc="roofline combination exponent: t = (tc^p + tm^p)^(1/p); large = max"),
}
ROOFLINE_ONLY = ("soft_max_p",)
KIND_FIELDS = {
    "compute_eff": F(NUM, positive=True, lo=EFFICIENCY[0], hi=EFFICIENCY[1], doc="fraction of peak MACs/s the kind reaches"),
    "memory_eff": F(NUM, positive=True, lo=EFFICIENCY[0], hi=EFFICIENCY[1], doc="fraction of bandwidth_gbs the kind reaches"),
    "overhead_us": F(NUM, nonneg=True, hi=OVERHEAD_US[1], doc="fixed time per operator of this kind, µs"),
}


def _type_name(types: tuple) -> str:
    names = {int: "integer", float: "number", str: "string", dict: "table", bool: "boolean"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def check_field(spec: F, value: Any, field: str, path: str | None) -> None:
    if spec.auto and value == "auto":
        return
    ok = isinstance(value, spec.types) and not (isinstance(value, bool) and bool not in spec.types)
    if not ok:
        extra = ' or "auto"' if spec.auto else ""
        raise TargetError(f"expected {_type_name(spec.types)}{extra}, got {type(value).__name__} {value!r}", field, path)
    if spec.choices is not None and value not in spec.choices:
        raise TargetError(f"must be one of {list(spec.choices)}, got {value!r}", field, path)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value or value in (float("inf"), float("-inf")):
            raise TargetError(f"must be finite, got {value!r}", field, path)
        if spec.positive and value <= 0:
            raise TargetError(f"must be > 0, got {value!r}", field, path)
        if spec.nonneg and value < 0:
            raise TargetError(f"must be >= 0, got {value!r}", field, path)
        if (spec.lo is not None and value < spec.lo) or (spec.hi is not None and value > spec.hi):
            raise TargetError(f"must be in the range {spec.range_text} ({spec.doc or 'physically meaningful values'}), "
                              f"got {value!r}", field, path)


def _dtype_table(value: dict, field: str, path: str | None) -> None:
    lo, hi = MACS_PER_CYCLE if field == "compute.peak_macs_per_cycle" else (None, PJ[1])
    doc = "MACs per cycle per core" if field == "compute.peak_macs_per_cycle" else "pJ per MAC"
    for k, v in value.items():
        if k not in DTYPES:
            raise TargetError(f"unknown dtype {k!r} (known: {list(DTYPES)})", f"{field}.{k}", path)
        check_field(F(NUM, positive=True, lo=lo, hi=hi, doc=doc), v, f"{field}.{k}", path)
    for k in DTYPES:
        if k not in value:
            raise TargetError(f"missing dtype {k!r}", f"{field}.{k}", path)


def _walk(schema: dict, doc: dict, prefix: str, path: str | None) -> None:
    for key in doc:
        if key not in schema:
            raise TargetError(f"unknown key (known here: {sorted(schema)})", prefix + key, path)
    for key, spec in schema.items():
        field = prefix + key
        if isinstance(spec, dict):
            if key not in doc:
                raise TargetError("missing required table", field, path)
            if not isinstance(doc[key], dict):
                raise TargetError(f"expected a table, got {type(doc[key]).__name__}", field, path)
            _walk(spec, doc[key], field + ".", path)
        elif spec == "calibration":
            if key not in doc:
                raise TargetError("missing required table", field, path)
            _validate_calibration(doc[key], path)
        else:
            if key not in doc:
                if spec.required:
                    raise TargetError("missing required field", field, path)
                continue
            check_field(spec, doc[key], field, path)
            if field in ("compute.peak_macs_per_cycle", "energy.pj_per_mac"):
                _dtype_table(doc[key], field, path)
            if field in ("tvm.target", "tvm.host"):
                kind = doc[key].get("kind")
                if not isinstance(kind, str) or not kind:
                    raise TargetError("needs a string 'kind' (e.g. \"llvm\" or \"c\")", field + ".kind", path)


def _validate_calibration(cal: Any, path: str | None) -> None:
    if not isinstance(cal, dict):
        raise TargetError(f"expected a table, got {type(cal).__name__}", "calibration", path)
    runtimes = {k: v for k, v in cal.items() if k != "default"}
    if "default" not in cal:
        raise TargetError("missing required field (the runtime whose coefficients cost() uses)", "calibration.default", path)
    check_field(F((str,)), cal["default"], "calibration.default", path)
    if not runtimes:
        raise TargetError("needs at least one runtime table, e.g. [calibration.tvm-default]", "calibration", path)
    if cal["default"] not in runtimes:
        raise TargetError(f"names runtime {cal['default']!r}, which has no table (have: {sorted(runtimes)})",
                          "calibration.default", path)
    for rt, table in runtimes.items():
        pre = f"calibration.{rt}"
        if not isinstance(table, dict):
            raise TargetError(f"expected a table, got {type(table).__name__}", pre, path)
        allowed = set(CAL_META) | {"kinds", "terms"}
        for k in table:
            if k not in allowed:
                raise TargetError(f"unknown key (known here: {sorted(allowed)})", f"{pre}.{k}", path)
        if "form" in table:
            check_field(CAL_META["form"], table["form"], f"{pre}.form", path)
        form = table.get("form", "roofline")
        for k, spec in CAL_META.items():
            if k not in table:
                if spec.required and not (form == "terms" and k in ROOFLINE_ONLY):
                    raise TargetError("missing required field", f"{pre}.{k}", path)
                continue
            check_field(spec, table[k], f"{pre}.{k}", path)
        if form == "terms":
            _validate_terms(table, pre, path)
            continue
        if "terms" in table:
            raise TargetError('a "terms" table needs form = "terms"', f"{pre}.terms", path)
        for kind, entry in _per_kind(table, "kinds", "missing required table of per-kind coefficients", pre, path):
            for k in entry:
                if k not in KIND_FIELDS:
                    raise TargetError(f"unknown key (known here: {sorted(KIND_FIELDS)})", f"{pre}.kinds.{kind}.{k}", path)
            for k, spec in KIND_FIELDS.items():
                if k not in entry:
                    raise TargetError("missing required field", f"{pre}.kinds.{kind}.{k}", path)
                check_field(spec, entry[k], f"{pre}.kinds.{kind}.{k}", path)


def _per_kind(table: dict, key: str, missing: str, pre: str, path: str | None):
    """(kind, entry) for every op kind of the table `key`, which must name exactly the known kinds."""
    tables = table.get(key)
    if not isinstance(tables, dict):
        raise TargetError(missing, f"{pre}.{key}", path)
    for k in tables:
        if k not in KINDS:
            raise TargetError(f"unknown op kind (known: {list(KINDS)})", f"{pre}.{key}.{k}", path)
    for kind in KINDS:
        if kind not in tables:
            raise TargetError("missing required table", f"{pre}.{key}.{kind}", path)
        entry = tables[kind]
        if not isinstance(entry, dict):
            raise TargetError(f"expected a table, got {type(entry).__name__}", f"{pre}.{key}.{kind}", path)
        yield kind, entry


def _validate_terms(table: dict, pre: str, path: str | None) -> None:
    if "kinds" in table:
        raise TargetError('form "terms" takes a terms table, not kinds', f"{pre}.kinds", path)
    for kind, entry in _per_kind(table, "terms", 'missing required table of per-kind term coefficients (form = "terms")',
                                 pre, path):
        for k in entry:
            if k not in TERMS:
                raise TargetError(f"unknown term (known: {list(TERMS)})", f"{pre}.terms.{kind}.{k}", path)
        for k in TERMS:  # absent terms are 0; present ones are >= 0 µs per unit (monotone cost)
            if k in entry:
                check_field(F(NUM, nonneg=True, hi=TERM_US.get(k, TERM_US_DEFAULT), doc=f"µs per unit of {k}"),
                            entry[k], f"{pre}.terms.{kind}.{k}", path)


def validate(doc: dict, path: str | None = None) -> None:
    """Raise TargetError naming the first bad field of a parsed target file."""
    _walk(SCHEMA, doc, "", path)
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", doc["name"]):
        raise TargetError(f"must be lowercase letters, digits, '-', '.', '_', got {doc['name']!r}", "name", path)
