"""Calibration: time micro-benchmarks and whole models where the target runs, fit the cost model.

    hwopt calibrate --target T [--runtime tvm|torch] [--rpc HOST:PORT | --tracker HOST:PORT --key K]
                    [--tune TRIALS] [--size small|full] [--out PATH]

1. Workloads: a grid of micro-benchmarks (each op kind over shapes: conv k=3/5/7 with and without
   BN+activation, pointwise, depthwise, dense, standalone elementwise, pooling, concat), drawn with a
   fixed seed, plus a few whole models from `hwopt.models` at reduced resolution.
2. Each workload is lifted (for its features) and timed by a *runner*: TVM (compiled for the target's
   TVM target, default schedules or MetaSchedule-tuned with --tune, run on this machine or over TVM
   RPC / an RPC tracker) or torch eager on this machine.
3. The coefficients (per kind compute/memory efficiency and overhead, and the roofline exponent) are
   fit by least squares on log latency (scipy.optimize.least_squares), with a K-fold cross-validated
   error, and written back atomically into the target file's [calibration.<runtime>] table.

Measurements are cached in `<out>.measurements.json` keyed by runtime, TVM target and workload, so an
interrupted run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hwopt.errors import TargetError
from hwopt.fileio import atomic_write

from . import cost as _cost
from .schema import KINDS

RUNTIMES = ("tvm", "torch")


# --------------------------------------------------------------------------------------------------
# Workloads


@dataclass(frozen=True)
class Workload:
    kind: str          # micro kind or "model"
    params: tuple      # sorted (key, value) pairs

    @property
    def key(self) -> str:
        return json.dumps({"kind": self.kind, **dict(self.params)}, sort_keys=True)

    @property
    def p(self) -> dict:
        return dict(self.params)

    def build(self):
        """(torch module in eval mode, example input)."""
        import torch
        from torch import nn
        p = self.p
        torch.manual_seed(0)
        act = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "silu": nn.SiLU, "none": None}
        if self.kind == "conv":
            layers = [nn.Conv2d(p["cin"], p["cout"], p["k"], p["s"], p["k"] // 2, groups=p["g"], bias=not p["bn"])]
            if p["bn"]:
                layers.append(nn.BatchNorm2d(p["cout"]))
            if act[p["act"]]:
                layers.append(act[p["act"]]())
            m, shape = nn.Sequential(*layers), (1, p["cin"], p["hw"], p["hw"])
        elif self.kind == "dense":
            layers = [nn.Linear(p["fin"], p["fout"])] + ([nn.ReLU()] if p["act"] == "relu" else [])
            m, shape = nn.Sequential(*layers), (1, p["fin"])
        elif self.kind == "eltwise":
            m, shape = _Eltwise(p["op"]), (1, p["c"], p["hw"], p["hw"])
        elif self.kind == "pool":
            if p["op"] == "gap":
                m = nn.Sequential(nn.AdaptiveAvgPool2d(1))
            elif p["op"] == "max":
                m = nn.Sequential(nn.MaxPool2d(p["k"], p["s"], p["k"] // 2))
            else:
                m = nn.Sequential(nn.AvgPool2d(p["k"], p["s"], p["k"] // 2))
            shape = (1, p["c"], p["hw"], p["hw"])
        elif self.kind == "concat":
            m, shape = _Concat(), (1, p["c"], p["hw"], p["hw"])
        elif self.kind == "model":
            from hwopt import models
            kw = {k: v for k, v in p.items() if k not in ("name", "hw")}
            m = models.get(p["name"], **kw)
            shape = (1, models.MODELS[p["name"]][1][-3], p["hw"], p["hw"])
        else:
            raise ValueError(self.kind)
        return m.eval(), torch.randn(shape, generator=torch.Generator().manual_seed(1))


def _torch_modules():
    from torch import nn

    class Eltwise(nn.Module):
        def __init__(self, op):
            super().__init__()
            self.op = op
            self.f = {"relu": nn.ReLU(), "sigmoid": nn.Sigmoid(), "hardswish": nn.Hardswish(), "silu": nn.SiLU()}.get(op)

        def forward(self, x):
            if self.op == "add":
                return x + x * 0.5
            return self.f(x)

    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.ReLU()

        def forward(self, x):
            import torch
            return torch.cat([x, self.a(x)], dim=1)

    return Eltwise, Concat


def _Eltwise(op):
    return _torch_modules()[0](op)


def _Concat():
    return _torch_modules()[1]()


def _w(kind: str, **p) -> Workload:
    return Workload(kind, tuple(sorted(p.items())))


def micro_grid(size: str = "full", seed: int = 0) -> list[Workload]:
    """Micro-benchmarks over shapes, drawn with a fixed seed. size: "tiny" (tests), "small", "full"."""
    rng = np.random.default_rng(seed)
    n = {"tiny": 1, "small": 3, "full": 8}[size]
    out: list[Workload] = []
    ch = [8, 16, 24, 32, 48, 64, 96, 128, 192, 256]
    hws = [7, 14, 28, 56]

    def pick(xs):
        return xs[int(rng.integers(len(xs)))]

    for _ in range(3 * n):  # full conv k>1, with/without BN + activation
        k = pick([3, 3, 3, 5, 7])
        hw = pick(hws + [112])
        cin = pick([3] + ch[:7]) if hw >= 56 else pick(ch[:8])
        out.append(_w("conv", cin=cin, cout=pick(ch[:8]), k=k, s=pick([1, 1, 2]), hw=hw, g=1,
                      bn=bool(rng.integers(2)), act=pick(["none", "relu", "relu6", "hardswish"])))
    for _ in range(3 * n):  # pointwise
        hw = pick(hws)
        out.append(_w("conv", cin=pick(ch), cout=pick(ch), k=1, s=1, hw=hw, g=1,
                      bn=bool(rng.integers(2)), act=pick(["none", "relu", "relu6"])))
    for _ in range(2 * n):  # depthwise
        c = pick(ch)
        out.append(_w("conv", cin=c, cout=c, k=pick([3, 3, 5, 7]), s=pick([1, 1, 2]), hw=pick(hws + [112]) if c <= 32 else pick(hws),
                      g=c, bn=bool(rng.integers(2)), act=pick(["none", "relu", "relu6"])))
    for _ in range(max(1, n // 2)):  # grouped
        c = pick([32, 64, 128])
        out.append(_w("conv", cin=c, cout=c, k=3, s=1, hw=pick([14, 28]), g=pick([2, 4, 8]), bn=True, act="relu"))
    for _ in range(n):
        out.append(_w("dense", fin=pick([128, 256, 512, 1024, 1280, 2048]), fout=pick([10, 100, 256, 1000]),
                      act=pick(["none", "relu"])))
    for _ in range(n):
        out.append(_w("eltwise", op=pick(["relu", "add", "sigmoid", "hardswish", "silu"]), c=pick(ch), hw=pick(hws)))
    for _ in range(max(1, n // 2) + 1):
        out.append(_w("pool", op=pick(["max", "avg", "gap"]), c=pick(ch), hw=pick(hws), k=3, s=2))
    for _ in range(max(1, n // 4)):
        out.append(_w("concat", c=pick(ch), hw=pick(hws)))
    return list(dict.fromkeys(out))


def model_workloads(size: str = "full") -> list[Workload]:
    """Whole models (from hwopt.models) at reduced resolution: fit data alongside the micro grid."""
    ms = [_w("model", name="mobilenet_v2", width_mult=0.5, hw=96), _w("model", name="resnet18", hw=64)]
    if size == "full":
        ms += [_w("model", name="mobilenet_v2", width_mult=1.0, hw=128), _w("model", name="mnasnet_a1", hw=96),
               _w("model", name="shufflenet_v2_x0_5", hw=128), _w("model", name="squeezenet1_1", hw=96)]
    if size == "tiny":
        ms = ms[:1]
    return ms


# --------------------------------------------------------------------------------------------------
# Runners: time a torch module on a runtime


class TorchRunner:
    """torch eager on this machine (its default thread count), no_grad, minimum of 7 repeats of >= 20 ms."""
    runtime = "torch-eager"
    schedules = "torch eager (ATen/oneDNN kernels), no_grad, this machine"

    def ident(self) -> str:
        import torch
        return f"torch-{torch.__version__}-threads{torch.get_num_threads()}"

    def measure(self, module, example) -> float:
        import torch
        with torch.no_grad():
            for _ in range(2):
                module(example)
            t0 = time.perf_counter()
            module(example)
            one = time.perf_counter() - t0
            number = max(1, min(200, int(0.02 / max(one, 1e-6))))
            times = []
            for _ in range(7):
                t0 = time.perf_counter()
                for _ in range(number):
                    module(example)
                times.append((time.perf_counter() - t0) / number)
        return float(np.min(times) * 1e3)  # the minimum: robust to other load on the machine


class TVMRunner:
    """TVM Relax: torch.export -> from_exported_program -> relax.build (default schedules, or
    MetaSchedule-tuned with `tune_trials`) for `target_dict`; timed by the VM's time_evaluator on this
    machine or over TVM RPC (`rpc=(host, port)` or `tracker=(host, port)` + `key`)."""

    def __init__(self, target_dict: dict, rpc: tuple | None = None, tracker: tuple | None = None, key: str | None = None,
                 tune_trials: int = 0, work_dir: str | None = None):
        self.target_dict, self.rpc, self.tracker, self.key = dict(target_dict), rpc, tracker, key
        self.tune_trials = int(tune_trials)
        self.work_dir = work_dir
        self.runtime = "tvm-tuned" if self.tune_trials else "tvm-default"
        self.schedules = (f"TVM 0.27 Relax, MetaSchedule-tuned ({self.tune_trials} trials per workload)" if self.tune_trials
                          else "TVM 0.27 Relax default schedules (LegalizeOps TIR, no tuning: single-threaded loop nests)")
        self._session = None

    def ident(self) -> str:
        import tvm
        return f"tvm-{tvm.__version__}-{json.dumps(self.target_dict, sort_keys=True)}-tune{self.tune_trials}"

    def build(self, module, example):
        """Compile with hwopt.tvm_backend when it is there (the deploy path), else the same flow inline."""
        backend = _backend()
        if backend is not None:
            tracker = (self.tracker[0], int(self.tracker[1]), self.key) if (self.tracker and self.tune_trials) else None
            return backend.compile_module(module, (example,), self.target_dict, tune_trials=self.tune_trials,
                                          work_dir=self.work_dir, tracker=tracker)
        import torch
        import tvm
        from tvm import relax
        from tvm.relax.frontend.torch import from_exported_program
        with torch.no_grad():
            ep = torch.export.export(module, (example,))
        mod = from_exported_program(ep, keep_params_as_input=False)
        target = tvm.target.Target(self.target_dict)
        if self.tune_trials:
            from tvm.s_tir import meta_schedule as ms
            wd = self.work_dir or tempfile.mkdtemp(prefix="hwopt-ms-")
            db = ms.relax_integration.tune_relax(mod, {}, target, wd, max_trials_global=self.tune_trials)
            return ms.relax_integration.compile_relax(db, mod, target, None)
        return relax.build(mod, target=target)

    def _remote(self):
        if self._session is None:
            backend = _backend()
            if backend is not None:
                host, port = self.tracker or self.rpc
                self._session = backend.remote_session(host, int(port), self.key if self.tracker else None,
                                                       session_timeout=0)
            else:
                from tvm import rpc
                if self.tracker:
                    tr = rpc.connect_tracker(self.tracker[0], int(self.tracker[1]))
                    self._session = tr.request(self.key, priority=1, session_timeout=0)
                else:
                    self._session = rpc.connect(self.rpc[0], int(self.rpc[1]), session_timeout=0)
        return self._session

    def measure(self, module, example) -> float:
        import tvm
        from tvm import relax
        ex = self.build(module, example)
        remote = self._remote() if (self.rpc or self.tracker) else None
        if hasattr(ex, "benchmark"):  # hwopt.tvm_backend.CompiledModel
            r = ex.benchmark(example.numpy(), repeat=7, number=1, min_repeat_ms=20, remote=remote)
            return float(r["min_ms"])
        x = example.numpy()
        if remote is not None:
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "lib.so")
                ex.export_library(path, **_export_kwargs(self.target_dict))
                remote.upload(path)
                lib = remote.load_module("lib.so")
            dev = remote.cpu()
            vm = relax.VirtualMachine(lib, dev)
        else:
            dev = tvm.cpu()
            vm = relax.VirtualMachine(ex, dev)
        vm.set_input("main", tvm.runtime.tensor(x, dev))
        # one warm-up run, then repeats of >= 20 ms each; the minimum (robust to other load on the machine)
        te = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=7, min_repeat_ms=20)
        res = te("main")
        return float(np.min(np.array(res.results)) * 1e3)


def _export_kwargs(target_dict: dict) -> dict:
    triple = str(target_dict.get("mtriple", ""))
    if triple.startswith("aarch64"):
        from tvm.contrib import cc
        return {"fcompile": cc.cross_compiler("aarch64-linux-gnu-g++")}
    return {}


def _backend():
    try:
        from hwopt import tvm_backend  # written by another engineer; used when present
        return tvm_backend if hasattr(tvm_backend, "compile_module") else None
    except ImportError:
        return None


# --------------------------------------------------------------------------------------------------
# Measuring with a resumable cache


def measure_all(workloads: list[Workload], runner, cache_path: str | os.PathLike | None, progress: bool = True,
                on_error: str = "skip") -> list[tuple[Workload, float]]:
    cache: dict[str, float] = {}
    cp = Path(cache_path) if cache_path else None
    if cp and cp.exists():
        try:
            cache = json.loads(cp.read_text())
        except (OSError, ValueError):
            cache = {}
    ident = runner.ident()
    out = []
    try:
        from tqdm import tqdm
        it = tqdm(workloads, desc=f"calibrate {runner.runtime}", unit="wl", disable=not progress, file=sys.stderr)
    except ImportError:  # pragma: no cover
        it = workloads
    for w in it:
        k = f"{ident}|{w.key}"
        if k not in cache:
            try:
                m, x = w.build()
                cache[k] = runner.measure(m, x)
            except Exception as e:  # a workload the runtime cannot build is reported, not fatal
                if on_error == "raise":
                    raise
                print(f"hwopt calibrate: skipped {w.key}: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
                continue
            if cp:
                atomic_write(cp, json.dumps(cache, indent=0, sort_keys=True))
        out.append((w, float(cache[k])))
    return out


# --------------------------------------------------------------------------------------------------
# Fitting


@dataclass
class Design:
    """Node features of many samples, concatenated, with the sample each node belongs to."""
    kind: np.ndarray
    grouped: np.ndarray
    work: np.ndarray
    nbytes: np.ndarray
    sample: np.ndarray
    n: int

    @classmethod
    def from_graphs(cls, graphs: list, dtype_bytes: int) -> "Design":
        ks, gs, ws, bs, ss = [], [], [], [], []
        for i, g in enumerate(graphs):
            f = _cost.features(g)
            ks.append(f.kind)
            gs.append(f.grouped)
            ws.append(f.work)
            bs.append((f.act_elems + f.weight_elems) * dtype_bytes)
            ss.append(np.full(len(f.kind), i))
        return cls(np.concatenate(ks), np.concatenate(gs), np.concatenate(ws), np.concatenate(bs), np.concatenate(ss), len(graphs))

    def subset(self, idx: np.ndarray) -> "Design":
        keep = np.isin(self.sample, idx)
        remap = {int(s): j for j, s in enumerate(idx)}
        return Design(self.kind[keep], self.grouped[keep], self.work[keep], self.nbytes[keep],
                      np.array([remap[int(s)] for s in self.sample[keep]]), len(idx))

    def predict_s(self, c: _cost.Coefficients, peak: float, bw: float) -> np.ndarray:
        sec = _cost.node_seconds(self.kind, self.work, self.nbytes, c, peak, bw, self.grouped)
        return np.bincount(self.sample, weights=sec, minlength=self.n)


P_BOUNDS = (1.0, 8.0)


PARAMS = ("compute_eff", "memory_eff", "overhead_us")


def _unpack(theta: np.ndarray, free: list[str], base: _cost.Coefficients,
            params: tuple = PARAMS) -> _cost.Coefficients:
    arrs = {"compute_eff": base.compute_eff.copy(), "memory_eff": base.memory_eff.copy(),
            "overhead_us": base.overhead_us.copy()}
    p = base.p
    i = 0
    for kind in free:
        j = KINDS.index(kind)
        for name in params:
            arrs[name][j] = np.exp(theta[i])
            i += 1
    if i < len(theta):
        p = float(theta[i])
    return _cost.Coefficients(arrs["compute_eff"], arrs["memory_eff"], arrs["overhead_us"], p)


def fit_coefficients(design: Design, measured_ms: np.ndarray, peak: float, bw: float,
                     base: _cost.Coefficients | None = None, free_kinds: list[str] | None = None,
                     fit_p: bool = True, restarts: int = 3, params: tuple = PARAMS) -> _cost.Coefficients:
    """Least squares on log latency over the free kinds' (log compute_eff, log memory_eff, log overhead)
    and the roofline exponent p. Kinds without any node in the design keep `base`'s values."""
    from scipy.optimize import least_squares

    if base is None:
        base = _cost.Coefficients(np.full(len(KINDS), 0.1), np.full(len(KINDS), 0.5), np.full(len(KINDS), 1.0), 2.0)
    present = {KINDS[k] for k in np.unique(design.kind) if k >= 0}
    if design.grouped.any():
        present |= {"conv", "depthwise"}
    free = [k for k in (free_kinds or KINDS) if k in present]
    theta0, lo, hi = [], [], []
    bounds = {"compute_eff": (1e-5, 4.0), "memory_eff": (1e-4, 20.0), "overhead_us": (1e-3, 5e4)}
    for kind in free:
        j = KINDS.index(kind)
        for name in params:
            theta0.append(math.log(max(float(getattr(base, name)[j]), 1e-3)))
            lo.append(math.log(bounds[name][0]))
            hi.append(math.log(bounds[name][1]))
    if fit_p:
        theta0.append(min(max(base.p, P_BOUNDS[0]), P_BOUNDS[1]))
        lo.append(P_BOUNDS[0])
        hi.append(P_BOUNDS[1])
    theta0 = np.clip(np.array(theta0, float), np.array(lo) + 1e-9, np.array(hi) - 1e-9)
    y = np.log(np.asarray(measured_ms, float) * 1e-3)

    def resid(theta):
        pred = design.predict_s(_unpack(theta, free, base, params), peak, bw)
        return np.log(np.maximum(pred, 1e-12)) - y

    best = None
    starts = [theta0]
    rng = np.random.default_rng(0)
    for _ in range(restarts):  # a few restarts: the max/soft-max makes the problem mildly non-convex
        starts.append(np.clip(theta0 + rng.normal(0, 1.0, len(theta0)), np.array(lo) + 1e-9, np.array(hi) - 1e-9))
    for t0 in starts:
        r = least_squares(resid, t0, bounds=(lo, hi), method="trf", x_scale=1.0, max_nfev=400)
        if best is None or r.cost < best.cost:
            best = r
    return _unpack(best.x, free, base, params)


def rel_errors(pred_ms: np.ndarray, meas_ms: np.ndarray) -> np.ndarray:
    return np.abs(np.asarray(pred_ms) / np.asarray(meas_ms) - 1.0)


def cross_validate(design: Design, measured_ms: np.ndarray, peak: float, bw: float, folds: int = 5,
                   base: _cost.Coefficients | None = None, **kw) -> np.ndarray:
    """Held-out |relative error| of every sample: leave-one-out when n <= 30, else `folds`-fold."""
    n = design.n
    idx = np.arange(n)
    rng = np.random.default_rng(0)
    groups = [np.array([i]) for i in idx] if n <= 30 else np.array_split(rng.permutation(idx), folds)
    err = np.zeros(n)
    for test in groups:
        train = np.setdiff1d(idx, test)
        c = fit_coefficients(design.subset(train), measured_ms[train], peak, bw, base=base,
                             restarts=0 if base is not None else 3, **kw)
        pred = design.subset(np.sort(test)).predict_s(c, peak, bw) * 1e3
        err[np.sort(test)] = rel_errors(pred, measured_ms[np.sort(test)])
    return err


def coefficients_table(c: _cost.Coefficients, meta: dict) -> dict:
    t = dict(meta)
    t["soft_max_p"] = round(float(c.p), 4)
    t["kinds"] = {k: {"compute_eff": float(c.compute_eff[i]), "memory_eff": float(c.memory_eff[i]),
                      "overhead_us": float(c.overhead_us[i])} for i, k in enumerate(KINDS)}
    return t


# --------------------------------------------------------------------------------------------------
# The whole calibration


def fit_measurements(t, meas: list[tuple[Workload, float]], fit_kw: dict | None = None, cv: bool = True):
    """Fit target `t`'s coefficients to (workload, ms) pairs: (Coefficients, fit |err|, held-out |err| or None)."""
    from hwopt import lift

    from .cost import DTYPE_BYTES
    fit_kw = dict(fit_kw or {})
    graphs = [lift(*w.build()) for w, _ in meas]
    ms = np.array([m for _, m in meas])
    design = Design.from_graphs(graphs, DTYPE_BYTES[t.deploy_dtype])
    peak, bw = t.peak_macs_per_s, t.bandwidth_bytes_s
    c = fit_coefficients(design, ms, peak, bw, **fit_kw)
    fit_err = rel_errors(design.predict_s(c, peak, bw) * 1e3, ms)
    cv_err = cross_validate(design, ms, peak, bw, base=c, **{k: v for k, v in fit_kw.items() if k != "base"}) if cv else None
    return c, fit_err, cv_err


def calibrate(target, runtime: str = "tvm", rpc: tuple | None = None, tracker: tuple | None = None,
              key: str | None = None, tune: int = 0, out: str | os.PathLike | None = None, size: str = "full",
              write: bool = True, progress: bool = True, cache: str | os.PathLike | None = None,
              models: bool = True, cv: bool = True, workloads: list[Workload] | None = None,
              fit_kw: dict | None = None) -> dict:
    """Measure, fit and (if `write`) write the coefficients into `out` (default: the target's file).
    Returns a report: the table, fit and cross-validated errors, sample counts, the measurements."""
    from . import load_target
    from .tomlio import update_runtime

    t = load_target(target)
    out = Path(out or t.path)
    if runtime == "torch":
        runner = TorchRunner()
    elif runtime == "tvm":
        runner = TVMRunner(t.tvm_target, rpc=rpc, tracker=tracker, key=key, tune_trials=tune,
                           work_dir=str(out.parent / f".{t.name}-metaschedule") if tune else None)
    else:
        raise TargetError(f"unknown runtime {runtime!r} (known: {list(RUNTIMES)})", "runtime")
    if workloads is None:
        workloads = micro_grid(size) + (model_workloads(size) if models else [])
    cache_path = Path(cache) if cache else out.with_name(out.stem + ".measurements.json")
    t0 = time.time()
    meas = measure_all(workloads, runner, cache_path, progress)
    if len(meas) < 4:
        raise TargetError(f"only {len(meas)} workloads could be measured; cannot fit", f"calibration.{runner.runtime}", str(out))
    fit_kw = dict(fit_kw or {})
    c, fit_err, cv_err = fit_measurements(t, meas, fit_kw, cv)
    where = f"RPC tracker {tracker[0]}:{tracker[1]} key {key}" if tracker else (f"RPC {rpc[0]}:{rpc[1]}" if rpc else "this machine")
    meta = {
        "source": f"hwopt calibrate --target {t.name} --runtime {runtime}" + (f" --tune {tune}" if tune else "")
                  + f": {len(meas)} timings ({sum(w.kind != 'model' for w, _ in meas)} micro-benchmarks, "
                  f"{sum(w.kind == 'model' for w, _ in meas)} whole models) on {where} ({_machine()})",
        "date": _dt.date.today().isoformat(),
        "method": "least squares on log latency (scipy least_squares, 4 starts); "
                  + ("cv: leave-one-out" if len(meas) <= 30 else "cv: 5-fold") + " held-out error in loo_error",
        "schedules": runner.schedules,
        "samples": len(meas),
        "fit_error": round(float(np.median(fit_err)), 4),
    }
    if cv_err is not None:
        meta["loo_error"] = round(float(np.median(cv_err)), 4)
    table = coefficients_table(c, meta)
    if write:
        # the fit replaces a bootstrap default (method "none"); otherwise the file's default stays
        boot = t.calibration[t.calibration["default"]].get("method") == "none"
        update_runtime(out, runner.runtime, table, make_default=boot)
    return {"runtime": runner.runtime, "table": table, "fit_error": fit_err, "cv_error": cv_err,
            "measurements": [(w.key, m) for w, m in meas], "seconds": time.time() - t0, "out": str(out)}


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


def _hostport(s: str | None, flag: str) -> tuple | None:
    if s is None:
        return None
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"hwopt calibrate: {flag} takes HOST:PORT, got {s!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hwopt calibrate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True, help="target name or path of a target TOML file")
    ap.add_argument("--runtime", choices=RUNTIMES, default="tvm", help="what to time: TVM (default) or torch eager (host only)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--rpc", metavar="HOST:PORT", help="time on a TVM RPC server (e.g. a Raspberry Pi)")
    g.add_argument("--tracker", metavar="HOST:PORT", help="time on a device from a TVM RPC tracker (needs --key)")
    ap.add_argument("--key", help="device key at the RPC tracker")
    ap.add_argument("--tune", type=int, default=0, metavar="TRIALS", help="MetaSchedule trials per workload (0: default schedules)")
    ap.add_argument("--size", choices=("tiny", "small", "full"), default="full", help="size of the micro-benchmark grid")
    ap.add_argument("--no-models", action="store_true", help="micro-benchmarks only (no whole models)")
    ap.add_argument("--out", help="target file to write the coefficients into (default: the target's own file)")
    ap.add_argument("--dry-run", action="store_true", help="fit and report, write nothing")
    a = ap.parse_args(argv)
    if a.tracker and not a.key:
        ap.error("--tracker needs --key")
    if a.runtime == "torch" and (a.rpc or a.tracker):
        ap.error("--runtime torch times this machine only")
    rep = calibrate(a.target, a.runtime, rpc=_hostport(a.rpc, "--rpc"), tracker=_hostport(a.tracker, "--tracker"),
                    key=a.key, tune=a.tune, out=a.out, size=a.size, write=not a.dry_run, models=not a.no_models)
    fe, ce = rep["fit_error"], rep["cv_error"]
    print(f"{rep['runtime']}: {len(fe)} timings in {rep['seconds']:.0f} s; fit median |err| {np.median(fe):.1%}, "
          f"within 10%: {np.mean(fe <= 0.1):.0%}, 20%: {np.mean(fe <= 0.2):.0%}"
          + (f"; held-out median |err| {np.median(ce):.1%}, within 20%: {np.mean(ce <= 0.2):.0%}" if ce is not None else ""))
    print(("wrote " if not a.dry_run else "would write ") + f"[calibration.{rep['runtime']}] to {rep['out']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
