"""The whole calibration of a target on a runtime: workloads -> measurements -> fit -> the target file."""
from __future__ import annotations

import datetime as _dt
import os
import time
from pathlib import Path

import numpy as np

from hwopt.errors import TargetError

from .fit import Design, coefficients_table, cross_validate, fit_coefficients, fit_terms, rel_errors
from .measure import measure_all
from .runners import TorchRunner, TVMRunner
from .workloads import Workload, micro_grid, model_workloads

RUNTIMES = ("tvm", "torch")


# Sample weights of the "terms" fit by workload kind: networks are what the model is for, and an op
# inside a network runs slower than alone, so whole networks count most and isolated kernels least
# (they still pin down shapes the networks rarely have). Chosen by 5-fold CV on the calibration's own
# random nets (held-out within ±10 %: 57 % with equal weights, 67 % with these).
SAMPLE_WEIGHTS = {"net": 3.0, "model": 1.0, "block": 1.0}
MICRO_WEIGHT = 0.3


def sample_weights(workloads: list[Workload]) -> np.ndarray | None:
    w = np.array([SAMPLE_WEIGHTS.get(x.kind, MICRO_WEIGHT) for x in workloads])
    return None if np.all(w == w[0]) else w


def fit_measurements(t, meas: list[tuple[Workload, float]], fit_kw: dict | None = None, cv: bool = True,
                     form: str = "terms"):
    """Fit target `t`'s coefficients to (workload, ms) pairs: (Coefficients, fit |err|, held-out |err| or None).
    form "terms" (fit_terms) or "roofline" (fit_coefficients with `fit_kw`)."""
    from hwopt import lift

    from ..cost import DTYPE_BYTES
    fit_kw = dict(fit_kw or {})
    graphs = [lift(*w.build()) for w, _ in meas]
    ms = np.array([m for _, m in meas])
    design = Design.from_graphs(graphs, DTYPE_BYTES[t.deploy_dtype], t.cache_bytes)
    peak, bw = t.peak_macs_per_s, t.bandwidth_bytes_s
    if form == "terms":
        sw = sample_weights([w for w, _ in meas])
        c = fit_terms(design, ms, weights=sw)
        fit_err = rel_errors(design.predict_s(c, peak, bw) * 1e3, ms)
        cv_err = cross_validate(design, ms, peak, bw, form="terms", weights=sw) if cv else None
        return c, fit_err, cv_err
    c = fit_coefficients(design, ms, peak, bw, **fit_kw)
    fit_err = rel_errors(design.predict_s(c, peak, bw) * 1e3, ms)
    cv_err = cross_validate(design, ms, peak, bw, base=c, **{k: v for k, v in fit_kw.items() if k != "base"}) if cv else None
    return c, fit_err, cv_err


def calibrate(target, runtime: str = "tvm", rpc: tuple | None = None, tracker: tuple | None = None,
              key: str | None = None, tune: int = 0, out: str | os.PathLike | None = None, size: str = "full",
              write: bool = True, progress: bool = True, cache: str | os.PathLike | None = None,
              models: bool = True, cv: bool = True, workloads: list[Workload] | None = None,
              fit_kw: dict | None = None, form: str = "auto", threads: int | None = None, passes: int = 1,
              tune_only: bool = False) -> dict:
    """Measure, fit and (if `write`) write the coefficients into `out` (default: the target's file).
    form: latency model form to fit: "terms", "roofline", or "auto" (both, keep the one with the lower
    cross-validated error); threads: torch eager intra-op threads (None: 1; 0: torch's default), or
    TVM runtime threads on this machine (None or 0: one per physical core); tune_only: tune every
    workload into the shared database, time and fit nothing (time them later, e.g. on a quiet machine).
    Returns a report: the table, fit and cross-validated errors, sample counts, the measurements."""
    from .. import load_target
    from ..tomlio import update_runtime

    t = load_target(target)
    out = Path(out or t.path)
    if runtime == "torch":
        runner = TorchRunner(1 if threads is None else (threads or None))
    elif runtime == "tvm":
        # tuned: the deploy path's shared per-target tuning database (hwopt.tvm's default,
        # $HWOPT_TVM_TUNING_DIR or ~/.cache/hwopt/tvm_tuning), so deploy builds reuse the schedules
        runner = TVMRunner(t.tvm_target, rpc=rpc, tracker=tracker, key=key, tune_trials=tune, threads=threads or None)
    else:
        raise TargetError(f"unknown runtime {runtime!r} (known: {list(RUNTIMES)})", "runtime")
    if workloads is None:
        workloads = micro_grid(size) + (model_workloads(size) if models else [])
    cache_path = Path(cache) if cache else default_cache_path(out)
    t0 = time.time()
    if tune_only:
        if not tune or not hasattr(runner, "prepare"):
            raise TargetError("tune_only needs TVM with tune > 0", "tune")
        measure_all(workloads, runner, cache_path, progress, tune_only=True)
        return {"runtime": runner.runtime, "tune_only": True, "workloads": len(workloads), "seconds": time.time() - t0}
    meas = measure_all(workloads, runner, cache_path, progress, passes=passes, write_cache=write)
    if len(meas) < 4:
        raise TargetError(f"only {len(meas)} workloads could be measured; cannot fit", f"calibration.{runner.runtime}", str(out))
    fit_kw = dict(fit_kw or {})
    chosen = ""
    if form == "auto":  # the form with the lower cross-validated error (without cv: terms from 100 samples)
        if cv:
            fits = {f: fit_measurements(t, meas, fit_kw, True, form=f) for f in ("terms", "roofline")}
            form = min(fits, key=lambda f: float(np.median(fits[f][2])))
            c, fit_err, cv_err = fits[form]
            other = "roofline" if form == "terms" else "terms"
            chosen = (f"form {form} chosen by held-out error ({np.median(cv_err):.1%} vs {other} "
                      f"{np.median(fits[other][2]):.1%}); ")
        else:
            form = "terms" if len(meas) >= 100 else "roofline"
    if not chosen:
        c, fit_err, cv_err = fit_measurements(t, meas, fit_kw, cv, form=form)
    where = f"RPC tracker {tracker[0]}:{tracker[1]} key {key}" if tracker else (f"RPC {rpc[0]}:{rpc[1]}" if rpc else "this machine")
    meta = {
        "source": f"hwopt calibrate --target {t.name} --runtime {runtime}" + (f" --tune {tune}" if tune else "")
                  + f": {len(meas)} timings ({sum(w.kind not in ('model', 'net', 'block') for w, _ in meas)} micro-benchmarks, "
                  f"{sum(w.kind == 'block' for w, _ in meas)} blocks, {sum(w.kind == 'net' for w, _ in meas)} random nets, "
                  f"{sum(w.kind == 'model' for w, _ in meas)} whole models) on {where} ({_machine()})",
        "date": _dt.date.today().isoformat(),
        "method": chosen + ("non-negative least squares on relative error (scipy lsq_linear) refined on log latency "
                   "(scipy least_squares, c >= 0), weights nets 3 / models, blocks 1 / kernels 0.3; "
                   if form == "terms" else
                   "least squares on log latency (scipy least_squares, 4 starts); ")
                  + ("cv: leave-one-out" if len(meas) <= 30 else "cv: 5-fold") + " held-out error in loo_error",
        "schedules": runner.schedules,
        "provenance": "measured",
        "samples": len(meas),
        "fit_error": round(float(np.median(fit_err)), 4),
    }
    if not (rpc or tracker):  # timed here: record which CPU, so loading the table on another one warns
        from ..probe import cpu_id
        meta["cpu"] = cpu_id()
    if isinstance(runner, TorchRunner):
        meta["threads"] = runner._threads()
    elif runner.threads:
        meta["threads"] = runner.threads
    if cv_err is not None:
        meta["loo_error"] = round(float(np.median(cv_err)), 4)
    table = coefficients_table(c, meta)
    if write:
        # the fit replaces a bootstrap default (method "none"); otherwise the file's default stays
        boot = t.calibration[t.calibration["default"]].get("method") == "none"
        update_runtime(out, runner.runtime, table, make_default=boot)
    return {"runtime": runner.runtime, "table": table, "fit_error": fit_err, "cv_error": cv_err,
            "measurements": [(w.key, m) for w, m in meas], "seconds": time.time() - t0, "out": str(out)}


def default_cache_path(target_file: Path) -> Path:
    """Where a target file's measurement cache lives: targets/data/<name>.measurements.json for the
    shipped targets (data beside data), else next to the file."""
    from .. import TARGET_DIR
    p = Path(target_file)
    if p.resolve().parent == TARGET_DIR:
        return TARGET_DIR / "data" / (p.stem + ".measurements.json")
    return p.with_name(p.stem + ".measurements.json")


def _machine() -> str:
    import platform
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu or platform.processor()} x{os.cpu_count()}, {platform.system()}"

