"""Target files: every shipped target loads; malformed files fail with an error naming the field."""
from __future__ import annotations

import copy
import os
import tomllib
from pathlib import Path

import numpy as np
import pytest

import hwopt
import hwopt.targets as T
from hwopt.errors import TargetError
from hwopt.targets.schema import CAL_META, KIND_FIELDS, KINDS, SCHEMA, TERMS, F
from hwopt.targets.tomlio import format_calibration, replace_calibration_text, update_runtime

NAMES = ["cortex-a53", "cortex-a72", "cortex-a76", "cortex-m4", "cortex-m7", "host", "pixel-1", "pixel-3"]


def test_available_lists_every_target():
    assert T.available() == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_every_target_loads_and_is_complete(name):
    t = T.load_target(name)
    assert t.name == name
    assert t.clock_mhz > 0 and t.cores_used >= 1 and t.peak_macs_per_s > 0 and t.bandwidth_bytes_s > 0
    assert t.deploy_dtype in ("float32", "int8")
    assert t.tvm_target["kind"] in ("llvm", "c")
    info = t.calibration_info
    for k in ("source", "date", "method", "schedules"):
        assert info[k], k
    assert info["method"] != "none", "shipped targets carry fitted / derived coefficients, not the bootstrap table"
    for p in t.provenance():  # every table says where its numbers come from (issue 17)
        assert p["provenance"] in ("measured", "published", "transferred", "first-principles"), (name, p["runtime"])
    if name.startswith("cortex-m"):
        assert t.sram_bytes and t.flash_bytes and t.deploy_dtype == "int8"


def test_load_by_path_and_target_passthrough():
    t = T.load_target(str(T.TARGET_DIR / "cortex-m7.toml"))
    assert t.name == "cortex-m7"
    assert T.load_target(t) is t


def test_unknown_name_lists_known_targets():
    with pytest.raises(TargetError) as e:
        T.load_target("cortex-z99")
    for n in NAMES:
        assert n in str(e.value)


def test_missing_file():
    with pytest.raises(TargetError, match="no such target file"):
        T.load_target("/nonexistent/dir/x.toml")


def test_tvm_accepts_every_target():
    tvm = pytest.importorskip("tvm")
    for n in NAMES:
        tvm.target.Target(T.load_target(n).tvm_target)


def test_host_auto_fields_resolved():
    t = T.load_target("host")
    assert isinstance(t.clock_mhz, float) and t.clock_mhz > 100
    assert t.cores_used == len(os.sched_getaffinity(0))
    assert t.simd_bits in (128, 256, 512)
    assert t.channel_multiple == t.simd_bits // 32
    assert t.tvm_target.get("mcpu") != "auto"


# --------------------------------------------------------------------------------------------------
# Malformed files: every required field, missing and mistyped; unknown keys; bad values


def _base_doc() -> dict:
    return tomllib.loads((T.TARGET_DIR / "cortex-m7.toml").read_text())


def _dumps(doc: dict) -> str:
    """Minimal TOML writer for the test documents (tables, inline tables, scalars, lists)."""
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f'"{k}" = {val(x)}' for k, x in v.items()) + "}"
        raise TypeError(v)

    lines, tables = [], []

    def emit(prefix, d):
        scal = {k: v for k, v in d.items() if not (isinstance(v, dict) and _is_table(prefix, k))}
        subs = {k: v for k, v in d.items() if k not in scal}
        if prefix:
            lines.append(f"[{prefix}]")
        for k, v in scal.items():
            lines.append(f'"{k}" = {val(v)}')
        for k, v in subs.items():
            emit(f"{prefix}.{k}" if prefix else f'"{k}"' if "." in k else k, v)

    emit("", doc)
    return "\n".join(lines + tables) + "\n"


def _is_table(prefix: str, key: str) -> bool:
    # sections and calibration runtime tables are tables; everything else (dtype tables, tvm target,
    # kind entries) is written inline
    if prefix == "":
        return key in ("tvm", "compute", "memory", "overhead", "energy", "calibration")
    if prefix == "calibration":
        return True
    if prefix.startswith("calibration.") and prefix.count(".") == 1:
        return key == "kinds"
    return False


def _err(doc) -> TargetError:
    with pytest.raises(TargetError) as e:
        T.parse_target(_dumps(doc), "bad.toml")
    assert "bad.toml" in str(e.value)
    return e.value


def test_test_writer_round_trips():
    doc = _base_doc()
    assert tomllib.loads(_dumps(doc)) == doc
    T.parse_target(_dumps(doc), "ok.toml")


def _fields(schema=SCHEMA, prefix=""):
    for k, spec in schema.items():
        if isinstance(spec, dict):
            yield from _fields(spec, prefix + k + ".")
        elif isinstance(spec, F):
            yield prefix + k, spec


FIELDS = list(_fields())
REQUIRED = [f for f, s in FIELDS if s.required]
RT = "cmsis-nn"


def _get(doc, dotted):
    parts = dotted.split(".")
    for p in parts[:-1]:
        doc = doc[p]
    return doc, parts[-1]


@pytest.mark.parametrize("field", REQUIRED + ["tvm", "compute", "memory", "overhead", "energy", "calibration"])
def test_missing_required_field_is_named(field):
    doc = _base_doc()
    parent, key = _get(doc, field)
    del parent[key]
    e = _err(doc)
    assert e.field == field and field in str(e)


_WRONG = {str: 12, int: "twelve", float: "x", dict: 3}


@pytest.mark.parametrize("field,spec", FIELDS, ids=[f for f, _ in FIELDS])
def test_mistyped_field_is_named(field, spec):
    doc = _base_doc()
    parent, key = _get(doc, field)
    parent[key] = [1, 2] if spec.types[0] in (int, float) else _WRONG[spec.types[0]]
    e = _err(doc)
    assert e.field == field


@pytest.mark.parametrize("field", ["compute.clock_mhz", "compute.cores_used", "memory.bandwidth_gbs"])
@pytest.mark.parametrize("value", [-1, 0])
def test_nonpositive_values_rejected(field, value):
    e = _set_and_err(field, value)
    assert e.field == field and "> 0" in str(e)


def _set_and_err(field: str, value, doc: dict | None = None) -> TargetError:
    doc = doc or _base_doc()
    parent, key = _get(doc, field)
    parent[key] = value
    return _err(doc)


def test_negative_clock_message():
    doc = _base_doc()
    doc["compute"]["clock_mhz"] = -216
    e = _err(doc)
    assert e.field == "compute.clock_mhz" and e.path == "bad.toml"


@pytest.mark.parametrize("where,key", [("", "clok_mhz"), ("compute", "clok_mhz"), ("memory", "sram"),
                                       ("energy", "pj_per_op"), ("tvm", "targt")])
def test_unknown_key_is_named(where, key):
    doc = _base_doc()
    (doc[where] if where else doc)[key] = 1
    e = _err(doc)
    assert e.field == (f"{where}.{key}" if where else key) and "unknown key" in str(e)


def test_bad_choices_and_tables():
    doc = _base_doc()
    doc["deploy_dtype"] = "float16"
    assert _err(doc).field == "deploy_dtype"
    doc = _base_doc()
    del doc["compute"]["peak_macs_per_cycle"]["int8"]
    assert _err(doc).field == "compute.peak_macs_per_cycle.int8"
    doc = _base_doc()
    doc["energy"]["pj_per_mac"]["bf16"] = 1.0
    assert _err(doc).field == "energy.pj_per_mac.bf16"
    doc = _base_doc()
    doc["tvm"]["target"] = {"mcpu": "cortex-m7"}
    assert _err(doc).field == "tvm.target.kind"
    doc = _base_doc()
    doc["name"] = "Bad Name"
    assert _err(doc).field == "name"
    doc = _base_doc()
    doc["memory"]["bandwidth_gbs"] = float("nan")
    assert _err(doc).field == "memory.bandwidth_gbs"
    doc = _base_doc()
    doc["compute"]["cores_used"] = True
    assert _err(doc).field == "compute.cores_used"
    doc = _base_doc()
    doc["compute"]["clock_mhz"] = "auto"  # auto is allowed here
    T.parse_target(_dumps(doc))
    doc = _base_doc()
    doc["memory"]["bandwidth_gbs"] = "auto"  # but not here
    assert _err(doc).field == "memory.bandwidth_gbs"


@pytest.mark.parametrize("field", [f"calibration.{RT}.{k}" for k, s in CAL_META.items() if s.required]
                         + [f"calibration.{RT}.kinds.{k}" for k in KINDS]
                         + [f"calibration.{RT}.kinds.conv.{k}" for k in KIND_FIELDS] + ["calibration.default"])
def test_calibration_fields_missing(field):
    doc = _base_doc()
    parent, key = _get(doc, field)
    del parent[key]
    assert _err(doc).field == field


def test_calibration_bad_values():
    doc = _base_doc()
    doc["calibration"][RT]["kinds"]["conv"]["compute_eff"] = -0.1
    assert _err(doc).field == f"calibration.{RT}.kinds.conv.compute_eff"
    doc = _base_doc()
    doc["calibration"][RT]["kinds"]["winograd"] = doc["calibration"][RT]["kinds"]["conv"]
    assert _err(doc).field == f"calibration.{RT}.kinds.winograd"
    doc = _base_doc()
    doc["calibration"]["default"] = "nope"
    assert _err(doc).field == "calibration.default"
    doc = _base_doc()
    doc["calibration"][RT]["sauce"] = "x"
    assert _err(doc).field == f"calibration.{RT}.sauce"


def _terms_doc() -> dict:
    """cortex-m7 with a second runtime in the "terms" form."""
    doc = _base_doc()
    t = {k: v for k, v in doc["calibration"][RT].items() if k not in ("kinds", "soft_max_p")}
    t["form"] = "terms"
    t["threads"] = 1
    t["terms"] = {k: {"one": 2.0, "work": 1e-4, "out": 3e-4} for k in KINDS}
    doc["calibration"]["lin"] = t
    return doc


def test_terms_form_loads_and_costs():
    doc = _terms_doc()
    t = T.parse_target(_dumps(doc), "ok.toml", runtime="lin")
    assert t.coefficients.form == "terms" and t.calibration_info["threads"] == 1
    import torch
    from torch import nn
    g = hwopt.lift(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).eval(), torch.randn(1, 3, 8, 8))
    c = t.cost(g)
    # conv: 2 µs + 1e-4 µs * MACs + 3e-4 µs * outputs; relu (fused into the conv): 2 µs + 1e-4 * 288 + 3e-4 * 288
    macs, out = 8 * 3 * 9 * 36, 8 * 36
    expect = (2 + 1e-4 * macs + 3e-4 * out) + (2 + 1e-4 * out + 3e-4 * out)
    assert c.latency_ms == pytest.approx(expect * 1e-3, rel=1e-9)


@pytest.mark.parametrize("mutate,field", [
    (lambda t: t.pop("terms"), "terms"),
    (lambda t: t["terms"].pop("pooling"), "terms.pooling"),
    (lambda t: t["terms"]["conv"].update(work=-1e-4), "terms.conv.work"),
    (lambda t: t["terms"]["conv"].update(work="fast"), "terms.conv.work"),
    (lambda t: t["terms"]["conv"].update(flops=1.0), "terms.conv.flops"),
    (lambda t: t["terms"].update(winograd={}), "terms.winograd"),
    (lambda t: t["terms"].update(conv=3.0), "terms.conv"),
    (lambda t: t.update(form="spline"), "form"),
    (lambda t: t.update(threads=0), "threads"),
    (lambda t: t.update(kinds={}), "kinds"),
], ids=["no-terms", "no-kind", "negative", "mistyped", "unknown-term", "unknown-kind", "not-a-table", "bad-form",
        "zero-threads", "kinds-with-terms"])
def test_terms_form_bad_fields_are_named(mutate, field):
    doc = _terms_doc()
    mutate(doc["calibration"]["lin"])
    assert _err(doc).field == f"calibration.lin.{field}"


def test_roofline_table_rejects_terms():
    doc = _base_doc()
    doc["calibration"][RT]["terms"] = {k: {"one": 1.0} for k in KINDS}
    assert _err(doc).field == f"calibration.{RT}.terms"


def test_terms_table_writes_back(tmp_path):
    doc = _terms_doc()
    text = replace_calibration_text("x = 1\n", doc["calibration"])
    back = tomllib.loads(text)["calibration"]
    assert back["lin"]["terms"] == doc["calibration"]["lin"]["terms"] and back["lin"]["form"] == "terms"
    assert set(TERMS) >= set(back["lin"]["terms"]["conv"])


def test_invalid_toml():
    with pytest.raises(TargetError, match="not valid TOML"):
        T.parse_target("name = ", "x.toml")


# --------------------------------------------------------------------------------------------------
# Runtimes and write-back


def test_host_cpu_is_probed_in_one_place():
    from hwopt.targets import probe
    cid = probe.cpu_id()
    assert cid and "MHz" not in cid  # which CPU, not its clock
    if Path("/proc/cpuinfo").exists() and "vendor_id" in Path("/proc/cpuinfo").read_text():
        assert "family" in cid and "model" in cid
    tvm = pytest.importorskip("tvm")  # noqa: F841
    from hwopt.tvm import target as tt
    assert tt.host_cpu() == probe.llvm_cpu()
    assert tt._host_spec() == {"kind": "llvm", "mcpu": probe.llvm_cpu(), "num-cores": probe.physical_cores()}


def test_table_from_another_cpu_warns_with_the_fix(tmp_path):
    from hwopt.targets import probe
    doc = tomllib.loads((T.TARGET_DIR / "host.toml").read_text())
    rt = "torch-eager"
    doc["calibration"]["default"] = rt
    doc["calibration"][rt]["cpu"] = "GenuineIntel family 6 model 85: some other CPU"
    doc["calibration"][rt]["source"] = "hwopt calibrate --target host --runtime torch: 3 timings"
    p = tmp_path / "other.toml"
    p.write_text(_dumps(doc))
    with pytest.warns(T.CalibrationCPUWarning, match="some other CPU.*hwopt calibrate --target host --runtime torch"):
        t = T.load_target(p)
    assert "re-calibrate" in t.foreign_cpu() and t.provenance()[[c["runtime"] for c in t.provenance()].index(rt)]["foreign_cpu"]
    doc["calibration"][rt]["cpu"] = probe.cpu_id()  # measured here: no warning
    p.write_text(_dumps(doc))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", T.CalibrationCPUWarning)
        assert T.load_target(p).foreign_cpu() is None


def test_host_runtimes():
    t = T.load_target("host")
    assert t.runtime == t.calibration["default"]
    for rt in t.runtimes:
        assert T.load_target("host", runtime=rt).runtime == rt
    with pytest.raises(TargetError) as e:
        t.with_runtime("nope")
    assert e.value.field == "calibration.nope"


def test_calibration_write_back_is_atomic_and_keeps_the_rest(tmp_path):
    src = (T.TARGET_DIR / "cortex-m7.toml").read_text()
    p = tmp_path / "m7.toml"
    p.write_text(src)
    doc = tomllib.loads(src)
    table = copy.deepcopy(doc["calibration"][RT])
    table["kinds"]["conv"]["compute_eff"] = 0.5
    table["source"] = 'a "quoted" source'
    update_runtime(p, "other", table)
    new = p.read_text()
    assert new.split("[calibration]")[0] == src.split("[calibration]")[0]  # comments and fields untouched
    t = T.load_target(p)
    assert t.runtime == RT and set(t.runtimes) == set(T.load_target("cortex-m7").runtimes) | {"other"}
    assert t.with_runtime("other").calibration["other"]["kinds"]["conv"]["compute_eff"] == 0.5
    assert [f.name for f in tmp_path.iterdir()] == ["m7.toml"]  # no temp files left
    # an invalid table never reaches the file
    bad = copy.deepcopy(table)
    bad["kinds"]["conv"]["compute_eff"] = -1.0
    with pytest.raises(TargetError):
        update_runtime(p, "other", bad)
    assert p.read_text() == new


def test_format_calibration_round_trips():
    doc = _base_doc()
    text = replace_calibration_text("x = 1\n", doc["calibration"])
    assert tomllib.loads(text)["calibration"] == doc["calibration"]


# --------------------------------------------------------------------------------------------------
# pixel-1 reproduces its fit data


def test_pixel1_reproduces_published_latencies():
    from hwopt.targets.published import _graph, pixel1_data
    t = T.load_target("pixel-1")
    for r in pixel1_data():
        pred = t.cost(_graph(r["model"], r["width_mult"], r["resolution"])).latency_ms
        assert abs(pred / r["latency_ms"] - 1) <= 0.10, (r, pred)
    assert t.calibration_info["loo_error"] < 0.10


def test_cortex_m7_reproduces_cmsis_nn_figure():
    import torch

    from hwopt.targets.published import CMSIS_NN_MS, cmsis_nn_cifar10
    g = hwopt.lift(cmsis_nn_cifar10(), torch.randn(1, 3, 32, 32))
    # the published figure is of CMSIS-NN's int8 kernels: the float graph priced as its int8 version
    c7, c4 = (T.load_target(n).priced_as("int8").cost(g) for n in ("cortex-m7", "cortex-m4"))
    assert abs(c7.latency_ms / CMSIS_NN_MS - 1) < 0.01
    assert T.load_target("cortex-m7").cost(g).latency_ms > 1.5 * c7.latency_ms  # float32 kernels: 1 MAC/cycle
    assert c4.latency_ms > c7.latency_ms
    assert np.isclose(c7.flash_bytes, c4.flash_bytes)


# --------------------------------------------------------------------------------------------------
# Physically meaningful ranges (issue 19 item 3): values that made every latency inf or 1e300 ms


BOUNDED = [(f, s) for f, s in FIELDS if s.lo is not None or s.hi is not None]


def test_every_numeric_device_field_is_bounded():
    # a device number without an upper bound is how 1e300 µs overheads got through
    unbounded = [f for f, s in FIELDS if set(s.types) & {int, float} and s.hi is None and s.choices is None]
    assert unbounded == [], unbounded


@pytest.mark.parametrize("field,spec", BOUNDED, ids=[f for f, _ in BOUNDED])
def test_out_of_range_value_names_field_and_range(field, spec):
    for bad in ([spec.hi * 10 if spec.hi else None, 1e300]
                + ([spec.lo / 10] if spec.lo else [])):
        if bad is None:
            continue
        doc = _base_doc()
        parent, key = _get(doc, field)
        if float not in spec.types:  # integer fields: an integer out of range (a float is a type error)
            bad = int(min(bad, 2 ** 62))
            if spec.lo is not None and bad >= spec.lo and bad <= (spec.hi or bad):
                continue
        parent[key] = bad
        e = _err(doc)
        assert e.field == field and "range" in str(e) and spec.range_text in str(e), str(e)


_ISSUE_19_CASES = [  # (field, value): issue 19's reproducers
    (f"calibration.{RT}.soft_max_p", 1e-300),
    ("memory.bandwidth_gbs", 1e-300),
    ("compute.clock_mhz", 1e-300),
    (f"calibration.{RT}.kinds.conv.compute_eff", 1e-300),
    (f"calibration.{RT}.kinds.conv.memory_eff", 1e-300),
    (f"calibration.{RT}.kinds.conv.overhead_us", 1e300),
    ("overhead.per_op_us", 1e300),
    ("compute.peak_macs_per_cycle.float32", 1e-300),
    ("energy.pj_per_mac.int8", 1e300),
    ("energy.pj_per_byte_dram", 1e300),
]


@pytest.mark.parametrize("field,value", _ISSUE_19_CASES, ids=[f for f, _ in _ISSUE_19_CASES])
def test_issue19_absurd_values_rejected(field, value):
    e = _set_and_err(field, value)
    assert e.field == field and "range" in str(e)


def test_absurd_terms_coefficient_rejected():
    doc = _terms_doc()
    doc["calibration"]["lin"]["terms"]["conv"]["one"] = 1e300
    e = _err(doc)
    assert e.field == "calibration.lin.terms.conv.one" and "range" in str(e)


def test_latency_finite_at_the_range_limits():
    """Every device field at the end of its range that makes latency largest still gives a finite figure."""
    import torch
    from torch import nn
    doc = _base_doc()
    s = SCHEMA
    doc["compute"]["clock_mhz"] = s["compute"]["clock_mhz"].lo
    doc["memory"]["bandwidth_gbs"] = s["memory"]["bandwidth_gbs"].lo
    doc["compute"]["peak_macs_per_cycle"] = {"float32": 0.01, "int8": 0.01}
    for e in doc["calibration"][RT]["kinds"].values():
        e.update(compute_eff=KIND_FIELDS["compute_eff"].lo, memory_eff=KIND_FIELDS["memory_eff"].lo,
                 overhead_us=KIND_FIELDS["overhead_us"].hi)
    doc["calibration"][RT]["soft_max_p"] = CAL_META["soft_max_p"].lo
    t = T.parse_target(_dumps(doc), "limits.toml")
    g = hwopt.lift(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).eval(), torch.randn(1, 3, 8, 8))
    assert np.isfinite(t.cost(g).latency_ms) and np.isfinite(t.cost(g).energy_mj)


def test_hwopt_targets_shows_provenance_and_heldout_error(capsys):
    from hwopt.cli import main
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    rows = {tuple(line.split()[:3]) for line in out.splitlines()[out.splitlines().index(
        next(x for x in out.splitlines() if x.startswith("target") and "provenance" in x)) + 1:]}
    assert ("cortex-a72", "tflite", "*") in rows and ("pixel-3", "tflite", "*") in rows
    line = next(x for x in out.splitlines() if x.startswith("pixel-3") and "tflite" in x)
    assert "published" in line and "20" in line.split() and "300 rows" in line
    assert any(x.startswith("cortex-a53") and "transferred" in x for x in out.splitlines())
