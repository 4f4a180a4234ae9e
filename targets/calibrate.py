"""Calibration: time micro-benchmarks and whole models where the target runs, fit the cost model.

    hwopt calibrate --target T [--runtime tvm|torch] [--rpc HOST:PORT | --tracker HOST:PORT --key K]
                    [--tune TRIALS] [--size tiny|small|full|large] [--form auto|terms|roofline]
                    [--threads N] [--passes N] [--blocks N] [--nets N] [--small-nets N] [--tune-only]
                    [--cache PATH] [--out PATH] [--dry-run]

1. Workloads: a grid of micro-benchmarks (each op kind over shapes: conv k=3/5/7 with and without
   BN+activation, pointwise, depthwise, dense, standalone elementwise, pooling, concat; "large" adds
   stems, squeeze-excite convs, wide/expanded layers and random blocks: `wide_grid`), drawn with fixed
   seeds, plus whole models from `hwopt.models` at reduced resolution and ("large") random CNNs from
   `random_cnn` drawn from the calibration's own seed streams (`NET_SEED`; bench/cost_fidelity.py
   draws its test architectures from another seed).
2. Each workload is lifted (for its features) and timed by a *runner*: TVM (compiled through
   hwopt.tvm_backend for the target's TVM target, default schedules or MetaSchedule-tuned with --tune
   into the shared tuning database, run on this machine or over TVM RPC / an RPC tracker) or torch
   eager on this machine (one thread by default, timed by the thread's CPU time; see TorchRunner).
   With --tune every workload is tuned first (`TVMRunner.prepare`), then all are built and timed.
   `--passes N` times the whole grid N times round robin and keeps each workload's minimum.
3. The coefficients are fit and written back atomically into the target file's
   [calibration.<runtime>] table with the fit error and a cross-validated (5-fold, or leave-one-out
   for <= 30 samples) held-out error: form "terms" (`fit_terms`: non-negative least squares, nets
   weighted over isolated kernels, see SAMPLE_WEIGHTS) or "roofline" (`fit_coefficients`: per kind
   compute/memory efficiency and overhead and the roofline exponent, least squares on log latency);
   by default ("auto") both are fit and the one with the lower held-out error is written (terms for
   the host's 612 torch timings, roofline for its 94 TVM-default and 118 tuned ones). See cost.py.

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
from .schema import KINDS, TERMS

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
        act = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "silu": nn.SiLU, "sigmoid": nn.Sigmoid,
               "none": None}
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
        elif self.kind == "block":
            m, shape = _block(p), (1, p["cin"], p["hw"], p["hw"])
        elif self.kind == "net":  # the i-th random CNN of stream `seed` (never the bench's seed)
            m, x, _ = random_cnn(np.random.default_rng([p["seed"], p["i"]]), small=p.get("small", False))
            return m.eval(), x
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
            self.f = {"relu": nn.ReLU(), "sigmoid": nn.Sigmoid(), "hardswish": nn.Hardswish(), "silu": nn.SiLU(),
                      "relu6": nn.ReLU6()}.get(op)
            self.pool = nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            if self.op == "add":
                return x + x * 0.5
            if self.op == "mul_bcast":  # a squeeze-excite gate: x * (N, C, 1, 1)
                return x * self.pool(x)
            return self.f(x)

    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.ReLU()

        def forward(self, x):
            import torch
            return torch.cat([x, self.a(x)], dim=1)

    return Eltwise, Concat


def _net_modules():
    """SE, Block: the building blocks of random CNNs (calibration grid and bench/cost_fidelity.py)."""
    from torch import nn

    class SE(nn.Module):
        def __init__(self, c):
            super().__init__()
            r = max(4, c // 4)
            self.pool, self.fc1, self.act, self.fc2, self.gate = (nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, r, 1), nn.ReLU(),
                                                                  nn.Conv2d(r, c, 1), nn.Sigmoid())

        def forward(self, x):
            return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))

    class Block(nn.Module):
        def __init__(self, kind, cin, w, k, s, expand):
            super().__init__()
            self.kind, self.skip = kind, (s == 1 and cin == w)
            if kind in ("mbconv", "mbconv-se"):
                h = cin * expand
                layers = [nn.Conv2d(cin, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
                          nn.Conv2d(h, h, k, s, k // 2, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6()]
                if kind == "mbconv-se":
                    layers.append(SE(h))
                layers += [nn.Conv2d(h, w, 1, bias=False), nn.BatchNorm2d(w)]
                self.body = nn.Sequential(*layers)
            elif kind == "residual":
                self.body = nn.Sequential(nn.Conv2d(cin, w, k, s, k // 2, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                                          nn.Conv2d(w, w, k, 1, k // 2, bias=False), nn.BatchNorm2d(w))
                self.act = nn.ReLU()
            else:  # plain
                self.body = nn.Sequential(nn.Conv2d(cin, w, k, s, k // 2, bias=False), nn.BatchNorm2d(w), nn.ReLU())
                self.skip = False

        def forward(self, x):
            y = self.body(x)
            if self.skip:
                y = x + y
            if self.kind == "residual":
                y = self.act(y)
            return y

    return SE, Block


def _unit_bn(m):
    from torch import nn
    for mod in m.modules():  # non-trivial BN stats (they do not change timing, but avoid denormals)
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_var.fill_(1.0)
    return m.eval()


def _block(p: dict):
    """One network block (MBConv with/without squeeze-excite, residual basic block, plain conv-BN-ReLU)."""
    return _unit_bn(_net_modules()[1](p["block"], p["cin"], p["w"], p["k"], p["s"], p["e"]))


def random_cnn(rng: np.random.Generator, small: bool = False):
    """A random CNN (torch module in eval mode, example input, description): 2..5 stages of plain /
    residual / MBConv / MBConv-SE blocks, widths 8..160, kernels 3/5/7, strides, input 32..128 px.
    small: 32x32 input and widths <= 48. bench/cost_fidelity.py draws its test architectures with
    this function and its own seed; the calibration grid's "net" workloads use other seeds."""
    import torch
    from torch import nn
    Block = _net_modules()[1]
    res = 32 if small else int(rng.choice([32, 48, 64, 96, 128]))
    family = str(rng.choice(["mobile", "resnet", "mixed"]))
    n_stages = int(rng.integers(2, 6))
    stem = int(rng.choice([8, 16, 24, 32]))
    layers: list = [nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU()]
    cin, desc = stem, [f"r{res}", f"stem{stem}"]
    for i in range(n_stages):
        w = int(rng.choice([8, 16, 24, 32, 48] if small else [8, 16, 24, 32, 48, 64, 96, 128, 160]))
        k = int(rng.choice([3, 3, 5, 7]))
        depth = int(rng.integers(1, 4))
        kind = {"mobile": str(rng.choice(["mbconv", "mbconv-se"])), "resnet": "residual",
                "mixed": str(rng.choice(["mbconv", "mbconv-se", "residual", "plain"]))}[family]
        expand = int(rng.choice([1, 3, 4, 6]))
        s = 2 if (i > 0 and rng.random() < 0.6) else 1
        for d in range(depth):
            layers.append(Block(kind, cin, w, k, s if d == 0 else 1, expand))
            cin = w
        desc.append(f"{kind}:{w}k{k}s{s}x{depth}" + (f"e{expand}" if kind.startswith("mb") else ""))
    head = int(rng.choice([0, 128] if small else [0, 256, 512]))
    if head:
        layers += [nn.Conv2d(cin, head, 1, bias=False), nn.BatchNorm2d(head), nn.ReLU()]
        cin = head
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)]
    m = _unit_bn(nn.Sequential(*layers))
    return m, torch.randn(1, 3, res, res), " ".join(desc)


def _Eltwise(op):
    return _torch_modules()[0](op)


def _Concat():
    return _torch_modules()[1]()


def _w(kind: str, **p) -> Workload:
    return Workload(kind, tuple(sorted(p.items())))


def micro_grid(size: str = "full", seed: int = 0) -> list[Workload]:
    """Micro-benchmarks over shapes, drawn with a fixed seed. size: "tiny" (tests), "small", "full",
    "large" (full + `wide_grid()`: the shapes random mobile/residual CNNs at 32..128 px are made of)."""
    if size == "large":
        return list(dict.fromkeys(micro_grid("full", seed) + wide_grid(seed + 1)))
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


def wide_grid(seed: int = 1) -> list[Workload]:
    """Wider shape ranges than the full grid, drawn with a fixed seed: cin=3 stems at 32..128 px, 1x1
    convs at 1x1 spatial size (squeeze-excite), pointwise/depthwise up to 960 channels (expanded
    MBConv), full convs k=3/5/7 down to 2x2 maps, broadcast multiplies, and whole blocks (MBConv with
    and without SE, residual, plain) with random shapes."""
    rng = np.random.default_rng(seed)
    out: list[Workload] = []

    def pick(xs):
        return xs[int(rng.integers(len(xs)))]

    ch = [8, 16, 24, 32, 48, 64, 96, 128, 160]
    wide = ch + [192, 288, 384, 480, 576, 640, 960]
    hws = [2, 4, 8, 12, 16, 24, 32, 48, 64]
    for _ in range(12):  # stems
        out.append(_w("conv", cin=3, cout=pick([8, 16, 24, 32]), k=pick([3, 3, 5]), s=pick([1, 2, 2]),
                      hw=pick([32, 48, 64, 96, 128]), g=1, bn=True, act="relu"))
    for _ in range(14):  # squeeze-excite 1x1 convs on 1x1 maps (with bias)
        c = pick(wide)
        r = max(4, c // 4)
        cin, cout = (c, r) if rng.random() < 0.5 else (r, c)
        out.append(_w("conv", cin=cin, cout=cout, k=1, s=1, hw=1, g=1, bn=False, act=pick(["relu", "sigmoid", "none"])))
    for _ in range(36):  # pointwise (expand / project / head)
        hw = pick(hws)
        big = 960 if hw <= 16 else 384 if hw <= 32 else 160
        cin, cout = pick([c for c in wide if c <= big]), pick([c for c in wide + [256, 512] if c <= max(big, 512 if hw <= 8 else 0)])
        out.append(_w("conv", cin=cin, cout=cout, k=1, s=1, hw=hw, g=1, bn=True, act=pick(["none", "relu", "relu6"])))
    for _ in range(30):  # depthwise
        hw = pick(hws)
        c = pick([c for c in wide if c <= (960 if hw <= 16 else 576 if hw <= 32 else 288)])
        out.append(_w("conv", cin=c, cout=c, k=pick([3, 5, 7]), s=pick([1, 1, 2]), hw=hw, g=c, bn=True,
                      act=pick(["relu6", "none"])))
    for _ in range(34):  # full convs (residual / plain blocks)
        hw = pick(hws)
        k = pick([3, 3, 5, 7])
        lim = 160 if hw <= 16 else 96 if hw <= 32 else 48
        out.append(_w("conv", cin=pick([c for c in ch if c <= lim]), cout=pick([c for c in ch if c <= lim]), k=k,
                      s=pick([1, 1, 2]), hw=hw, g=1, bn=True, act=pick(["none", "relu"])))
    for _ in range(6):
        out.append(_w("dense", fin=pick([8, 16, 32, 48, 64, 96, 128, 160, 256, 512]), fout=1000, act="none"))
    for _ in range(14):
        out.append(_w("eltwise", op=pick(["relu", "relu6", "add", "sigmoid", "mul_bcast"]), c=pick(wide), hw=pick(hws)))
    for _ in range(6):
        out.append(_w("pool", op="gap", c=pick(wide), hw=pick(hws), k=3, s=2))
    for _ in range(80):  # whole blocks
        blk = pick(["mbconv", "mbconv-se", "residual", "plain"])
        hw = pick([4, 8, 16, 24, 32, 48, 64])
        lim = 160 if hw <= 16 else 64 if hw <= 32 else 32
        out.append(_w("block", block=blk, cin=pick([c for c in ch if c <= lim]), w=pick([c for c in ch if c <= lim]),
                      k=pick([3, 3, 5, 7]), s=pick([1, 1, 2]), e=pick([1, 3, 4, 6]) if blk.startswith("mb") else 1, hw=hw))
    # large activations (expanded MBConv at 32..64 px: 2..32 MB working sets, beyond L2 and near the
    # last-level cache), which identify the spill terms
    for _ in range(12):
        out.append(_w("conv", cin=pick([96, 128, 144, 160, 192]), cout=pick([384, 576, 768, 960]), k=1, s=1,
                      hw=pick([32, 48, 64]), g=1, bn=True, act=pick(["relu6", "none"])))
        out.append(_w("conv", cin=pick([384, 576, 768, 960]), cout=pick([96, 128, 160]), k=1, s=1,
                      hw=pick([32, 48, 64]), g=1, bn=True, act="none"))
    for _ in range(12):
        c = pick([384, 576, 768, 960])
        out.append(_w("conv", cin=c, cout=c, k=pick([3, 5, 7]), s=pick([1, 1, 2]), hw=pick([32, 48, 64]), g=c, bn=True,
                      act="relu6"))
    for _ in range(8):
        out.append(_w("eltwise", op=pick(["relu6", "add", "mul_bcast"]), c=pick([384, 576, 960]), hw=pick([48, 64])))
    for _ in range(10):
        out.append(_w("block", block=pick(["mbconv", "mbconv-se"]), cin=pick([96, 128, 160]), w=pick([96, 128, 160]),
                      k=pick([3, 5, 7]), s=pick([1, 2]), e=pick([4, 6]), hw=pick([32, 48, 64])))
    return list(dict.fromkeys(out))


NET_SEED = 7  # the calibration's random-CNN stream; bench/cost_fidelity.py uses 20240611 (one stream)


def net_workloads(n: int = 60, small: bool = False) -> list[Workload]:
    """Random CNNs (`random_cnn`) drawn from the calibration's own seed stream: whole-network timings,
    which isolated micro-benchmarks do not give (an op inside a network runs slower than alone:
    caches and allocations are shared with its neighbours)."""
    return [_w("net", seed=NET_SEED, i=i, **({"small": True} if small else {})) for i in range(n)]


def model_workloads(size: str = "full") -> list[Workload]:
    """Whole models (from hwopt.models) at reduced resolution: fit data alongside the micro grid."""
    ms = [_w("model", name="mobilenet_v2", width_mult=0.5, hw=96), _w("model", name="resnet18", hw=64)]
    if size in ("full", "large"):
        ms += [_w("model", name="mobilenet_v2", width_mult=1.0, hw=128), _w("model", name="mnasnet_a1", hw=96),
               _w("model", name="shufflenet_v2_x0_5", hw=128), _w("model", name="squeezenet1_1", hw=96)]
    if size == "large":
        ms += [_w("model", name="mobilenet_v3_small", hw=96), _w("model", name="efficientnet_b0", hw=64),
               _w("model", name="regnetx_200mf", hw=64)] + net_workloads(200) + net_workloads(40, small=True)
    if size == "tiny":
        ms = ms[:1]
    return ms


# --------------------------------------------------------------------------------------------------
# Runners: time a torch module on a runtime


class TorchRunner:
    """torch eager on this machine with `threads` intra-op threads (None: torch's default), no_grad,
    minimum of 7 repeats of >= 20 ms.

    The default is one thread: on a small shared machine (2 cores, OMP_WAIT_POLICY=PASSIVE, another
    job on one core) every parallel region of a 2-thread run waits for the second thread to be woken
    and scheduled, which costs 20..300 µs per operator at random (an 8->8 channel 3x3 conv on 8x8:
    13 µs with one thread, 34..136 µs with two): such timings measure the machine's load, not the
    network."""
    runtime = "torch-eager"

    def __init__(self, threads: int | None = 1):
        self.threads = threads

    @property
    def schedules(self) -> str:
        n = self._threads()
        return (f"torch eager (ATen/oneDNN kernels), no_grad, {n} thread(s), this machine, "
                + ("thread CPU time" if n == 1 else "wall clock"))

    def _threads(self) -> int:
        import torch
        return int(self.threads or torch.get_num_threads())

    def ident(self) -> str:
        import torch
        n = self._threads()
        return f"torch-{torch.__version__}-threads{n}" + ("-cputime" if n == 1 else "")

    def measure(self, module, example) -> float:
        import torch
        before = torch.get_num_threads()
        torch.set_num_threads(self._threads())
        try:
            return self._measure(module, example)
        finally:
            torch.set_num_threads(before)

    @property
    def clock(self):
        """One thread: the thread's CPU time (time.thread_time), which is what the wall clock shows
        on an idle machine but does not count time the thread waits for a core that another process
        holds; several threads: the wall clock."""
        return time.thread_time if self._threads() == 1 else time.perf_counter

    def _measure(self, module, example) -> float:
        import torch
        clock = self.clock
        with torch.no_grad():
            for _ in range(2):
                module(example)
            t0 = clock()
            module(example)
            one = clock() - t0
            number = max(1, min(200, int(0.02 / max(one, 1e-6))))
            times = []
            for _ in range(7):
                t0 = clock()
                for _ in range(number):
                    module(example)
                times.append((clock() - t0) / number)
        return float(np.min(times) * 1e3)  # the minimum: robust to other load on the machine


def set_tvm_threads(threads: int) -> None:
    """TVM runtime threads on this machine: TVM_NUM_THREADS (inherited by MetaSchedule's measuring
    subprocesses) and the thread pool of this process."""
    import tvm
    os.environ["TVM_NUM_THREADS"] = str(int(threads))
    tvm.get_global_func("runtime.config_threadpool")(1, int(threads))


class TVMRunner:
    """TVM Relax: torch.export -> from_exported_program -> relax.build (default schedules, or
    MetaSchedule-tuned with `tune_trials`) for `target_dict`; timed by the VM's time_evaluator on this
    machine or over TVM RPC (`rpc=(host, port)` or `tracker=(host, port)` + `key`)."""

    def __init__(self, target_dict: dict, rpc: tuple | None = None, tracker: tuple | None = None, key: str | None = None,
                 tune_trials: int = 0, work_dir: str | None = None, threads: int | None = None):
        """threads: TVM runtime threads on this machine (None: TVM's default, one per physical core).
        Set through TVM_NUM_THREADS, which MetaSchedule's measuring subprocesses inherit too, and the
        runtime's thread pool of this process."""
        self.target_dict, self.rpc, self.tracker, self.key = dict(target_dict), rpc, tracker, key
        self.threads = int(threads) if threads else None
        if self.threads:
            if self.rpc or self.tracker:
                raise ValueError("TVMRunner: threads applies to this machine, not to an RPC device")
            set_tvm_threads(self.threads)
        self.tune_trials = int(tune_trials)
        self.work_dir = work_dir
        self.runtime = "tvm-tuned" if self.tune_trials else "tvm-default"
        self.schedules = (f"TVM 0.27 Relax, MetaSchedule-tuned ({self.tune_trials} trials per workload)" if self.tune_trials
                          else "TVM 0.27 Relax default schedules (LegalizeOps TIR, no tuning: single-threaded loop nests)")
        self._session = None
        self._database = None  # the tuning database directory, once prepare() has tuned into it

    def ident(self) -> str:
        import tvm
        return (f"tvm-{tvm.__version__}-{json.dumps(self.target_dict, sort_keys=True)}-tune{self.tune_trials}"
                + (f"-threads{self.threads}" if self.threads else ""))

    def build(self, module, example):
        """Compile with hwopt.tvm_backend when it is there (the deploy path), else the same flow inline."""
        backend = _backend()
        if backend is not None:
            if self._database is not None:
                # tuned by prepare(): build with the records as they are. With tune_trials the backend
                # would re-extract the tasks and check each against the manifest, ~5 s per model, on
                # every timing pass.
                return backend.compile_module(module, (example,), self.target_dict, database=self._database)
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

    def prepare(self, module, example) -> None:
        """Tune `module` into the shared database (no timing): with --tune, calibration tunes every
        workload first and times them all afterwards, so tuning can share the machine and the
        timing passes run back to back."""
        backend = _backend()
        if self.tune_trials and backend is not None:
            tracker = (self.tracker[0], int(self.tracker[1]), self.key) if self.tracker else None
            backend.tune_module(module, (example,), self.target_dict, tune_trials=self.tune_trials,
                                work_dir=self.work_dir, tracker=tracker)
            self._database = backend.database_dir(self.target_dict, self.work_dir)

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
        return self.time_built(self.build(module, example), example)

    def time_built(self, ex, example) -> float:
        """Time what `build` returned (a caller timing one model several times builds it once: LLVM
        code generation takes seconds per model, timing it tens of milliseconds)."""
        import tvm
        from tvm import relax
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
        from hwopt import tvm as tvm_backend  # written by another engineer; used when present
        return tvm_backend if hasattr(tvm_backend, "compile_module") else None
    except ImportError:
        return None


# --------------------------------------------------------------------------------------------------
# Measuring with a resumable cache


def measure_all(workloads: list[Workload], runner, cache_path: str | os.PathLike | None, progress: bool = True,
                on_error: str = "skip", passes: int = 1, tune_only: bool = False) -> list[tuple[Workload, float]]:
    """Time every workload (cached ones are not timed again). passes > 1: then time the whole list
    again passes - 1 times, round robin, keeping each workload's minimum: load from other processes
    on a shared machine comes in bursts of seconds, and a later pass catches a quieter moment.
    A runner with a `prepare` step (tuning) prepares every untimed workload first; tune_only: stop
    there and time nothing (returns [])."""
    cache: dict[str, float] = {}
    cp = Path(cache_path) if cache_path else None
    if cp and cp.exists():
        try:
            cache = json.loads(cp.read_text())
        except (OSError, ValueError):
            cache = {}
    ident = runner.ident()
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    failed: set = set()

    def skip(w, e):
        if on_error == "raise":
            raise e
        print(f"hwopt calibrate: skipped {w.key}: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
        failed.add(w)

    if hasattr(runner, "prepare"):
        todo = [w for w in workloads if f"{ident}|{w.key}" not in cache]
        it = tqdm(todo, desc=f"prepare {runner.runtime}", unit="wl", disable=not progress or not todo,
                  file=sys.stderr) if tqdm is not None else todo
        for w in it:
            try:
                runner.prepare(*w.build())
            except Exception as e:
                skip(w, e)
    if tune_only:
        return []
    for pas in range(max(1, passes)):
        it = workloads
        if tqdm is not None:
            it = tqdm(workloads, desc=f"calibrate {runner.runtime}" + (f" pass {pas + 1}/{passes}" if passes > 1 else ""),
                      unit="wl", disable=not progress, file=sys.stderr)
        for w in it:
            k = f"{ident}|{w.key}"
            if w in failed:
                continue
            if pas == 0 and k in cache:
                continue
            if pas > 0 and int(cache.get(f"{k}|passes", 1)) > pas:
                continue  # this pass was already made (resume)
            try:
                m, x = w.build()
                ms = runner.measure(m, x)
            except Exception as e:  # a workload the runtime cannot build is reported, not fatal
                skip(w, e)
                continue
            cache[k] = min(ms, cache.get(k, math.inf))
            if pas > 0:
                cache[f"{k}|passes"] = pas + 1
            if cp:
                atomic_write(cp, json.dumps(cache, indent=0, sort_keys=True))
    return [(w, float(cache[f"{ident}|{w.key}"])) for w in workloads if f"{ident}|{w.key}" in cache]


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
    terms: np.ndarray | None = None      # (nodes x TERMS)
    ambiguous: np.ndarray | None = None

    @classmethod
    def from_graphs(cls, graphs: list, dtype_bytes: int, cache_bytes: tuple[float, float] = (1 << 20, 32 << 20)) -> "Design":
        """cache_bytes: the target's (L2, last-level cache) bytes (Target.cache_bytes), for the spill terms."""
        ks, gs, ws, bs, ss, ts, am = [], [], [], [], [], [], []
        for i, g in enumerate(graphs):
            f = _cost.features(g)
            ks.append(f.kind)
            gs.append(f.grouped)
            ws.append(f.work)
            bs.append((f.act_elems + f.weight_elems) * dtype_bytes)
            ss.append(np.full(len(f.kind), i))
            ts.append(_cost.term_matrix(f, dtype_bytes, *cache_bytes))
            am.append(f.ambiguous)
        return cls(np.concatenate(ks), np.concatenate(gs), np.concatenate(ws), np.concatenate(bs), np.concatenate(ss),
                   len(graphs), np.concatenate(ts), np.concatenate(am))

    def subset(self, idx: np.ndarray) -> "Design":
        keep = np.isin(self.sample, idx)
        remap = np.full(self.n, -1)
        remap[np.asarray(idx, int)] = np.arange(len(idx))
        return Design(self.kind[keep], self.grouped[keep], self.work[keep], self.nbytes[keep],
                      remap[self.sample[keep]], len(idx), self.terms[keep], self.ambiguous[keep])

    def predict_s(self, c: _cost.Coefficients, peak: float, bw: float) -> np.ndarray:
        sec = _cost.node_seconds(self.kind, self.work, self.nbytes, c, peak, bw, self.grouped, self.terms, self.ambiguous)
        return np.bincount(self.sample, weights=sec, minlength=self.n)

    def term_matrix(self) -> np.ndarray:
        """(samples x KINDS*TERMS): per sample, the sum over its nodes of each kind of each monomial
        (grouped / ambiguous convs counted under their own kind): the terms form is linear in it."""
        real = self.kind >= 0
        nt = len(TERMS)
        a = np.zeros((self.n, len(KINDS) * nt))
        for j in range(nt):
            np.add.at(a, (self.sample[real], self.kind[real] * nt + j), self.terms[real, j])
        return a


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


def fit_terms(design: Design, measured_ms: np.ndarray, refine: bool = True, ridge: float = 1e-3,
              weights: np.ndarray | None = None) -> _cost.Coefficients:
    """Fit the "terms" form: per kind, non-negative seconds per unit of each TERMS monomial.

    1. Linear: sample time = term_matrix @ c, so minimizing the squared *relative* error
       sum_i ((A c)_i / y_i - 1)^2 over c >= 0 is a bounded linear least-squares problem
       (scipy lsq_linear, columns scaled to unit norm; a small ridge pulls unidentified terms to 0).
    2. Refine on log latency (scipy least_squares, c >= 0) through the full prediction (max/min rules
       for grouped / one-channel convs included), started from the linear solution.
    Non-negative coefficients on non-decreasing monomials: the fitted cost is monotone in channels."""
    from scipy.optimize import least_squares, lsq_linear

    y = np.asarray(measured_ms, float) * 1e-3
    sw = np.sqrt(np.ones(len(y)) if weights is None else np.asarray(weights, float))
    a = design.term_matrix() / y[:, None] * sw[:, None]
    used = np.flatnonzero(a.any(axis=0))
    scale = np.linalg.norm(a[:, used], axis=0)
    a_s = a[:, used] / scale
    lam = math.sqrt(ridge)
    a_aug = np.vstack([a_s, lam * np.eye(len(used))])
    b_aug = np.concatenate([sw, np.zeros(len(used))])
    r = lsq_linear(a_aug, b_aug, bounds=(0, np.inf), method="bvls")
    theta = np.maximum(r.x, 0.0)

    def unpack(th):
        full = np.zeros(len(KINDS) * len(TERMS))
        full[used] = np.maximum(th, 0.0) / scale
        z = np.zeros(len(KINDS))
        return _cost.Coefficients(z + 1.0, z + 1.0, z, 1.0, full.reshape(len(KINDS), len(TERMS)))

    if refine:
        ly = np.log(y)

        def resid(th):
            pred = design.predict_s(unpack(th), 1.0, 1.0)
            return np.concatenate([sw * (np.log(np.maximum(pred, 1e-12)) - ly), lam * th])

        r2 = least_squares(resid, theta + 1e-9, bounds=(0, np.inf), method="trf", max_nfev=200)
        theta = r2.x
    # terms that contribute < 0.01 % of every sample's predicted time are not identified: set them to 0
    contrib = design.term_matrix()[:, used] * (np.maximum(theta, 0.0) / scale)
    total = contrib.sum(axis=1, keepdims=True)
    theta = np.where((contrib / np.maximum(total, 1e-300)).max(axis=0) < 1e-4, 0.0, theta)
    return unpack(theta)


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
    form = kw.pop("form", "roofline")
    sw = kw.pop("weights", None)
    for test in groups:
        train = np.setdiff1d(idx, test)
        if form == "terms":
            c = fit_terms(design.subset(train), measured_ms[train], weights=None if sw is None else sw[train])
        else:
            c = fit_coefficients(design.subset(train), measured_ms[train], peak, bw, base=base,
                                 restarts=0 if base is not None else 3, **kw)
        pred = design.subset(np.sort(test)).predict_s(c, peak, bw) * 1e3
        err[np.sort(test)] = rel_errors(pred, measured_ms[np.sort(test)])
    return err


def coefficients_table(c: _cost.Coefficients, meta: dict) -> dict:
    t = dict(meta)
    if c.terms is not None:
        t["form"] = "terms"
        t.pop("soft_max_p", None)
        t["terms"] = {k: {m: float(c.terms[i, j] * 1e6) for j, m in enumerate(TERMS) if c.terms[i, j] > 0}
                      for i, k in enumerate(KINDS)}
        return t
    t["soft_max_p"] = round(float(c.p), 4)
    t["kinds"] = {k: {"compute_eff": float(c.compute_eff[i]), "memory_eff": float(c.memory_eff[i]),
                      "overhead_us": float(c.overhead_us[i])} for i, k in enumerate(KINDS)}
    return t


# --------------------------------------------------------------------------------------------------
# The whole calibration


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

    from .cost import DTYPE_BYTES
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
    from . import load_target
    from .tomlio import update_runtime

    t = load_target(target)
    out = Path(out or t.path)
    if runtime == "torch":
        runner = TorchRunner(1 if threads is None else (threads or None))
    elif runtime == "tvm":
        # tuned: the deploy path's shared per-target tuning database (hwopt.tvm_backend's default,
        # $HWOPT_TVM_TUNING_DIR or ~/.cache/hwopt/tvm_tuning), so deploy builds reuse the schedules
        runner = TVMRunner(t.tvm_target, rpc=rpc, tracker=tracker, key=key, tune_trials=tune, threads=threads or None)
    else:
        raise TargetError(f"unknown runtime {runtime!r} (known: {list(RUNTIMES)})", "runtime")
    if workloads is None:
        workloads = micro_grid(size) + (model_workloads(size) if models else [])
    cache_path = Path(cache) if cache else out.with_name(out.stem + ".measurements.json")
    t0 = time.time()
    if tune_only:
        if not tune or not hasattr(runner, "prepare"):
            raise TargetError("tune_only needs TVM with tune > 0", "tune")
        measure_all(workloads, runner, cache_path, progress, tune_only=True)
        return {"runtime": runner.runtime, "tune_only": True, "workloads": len(workloads), "seconds": time.time() - t0}
    meas = measure_all(workloads, runner, cache_path, progress, passes=passes)
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
        "samples": len(meas),
        "fit_error": round(float(np.median(fit_err)), 4),
    }
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
    ap.add_argument("--size", choices=("tiny", "small", "full", "large"), default=None,
                    help="size of the micro-benchmark grid (default: large for torch, full for tvm)")
    ap.add_argument("--form", choices=("auto", "terms", "roofline"), default="auto",
                    help="latency model form to fit (auto: both, keep the lower cross-validated error)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads to time with: torch eager intra-op threads (default 1; 0: torch's default), or TVM "
                         "runtime threads on this machine (default: one per physical core); recorded in the table")
    ap.add_argument("--passes", type=int, default=None,
                    help="time the grid this many times round robin, keeping minima (default: 3 for torch, 1 for tvm)")
    ap.add_argument("--no-models", action="store_true", help="micro-benchmarks only (no whole models)")
    ap.add_argument("--out", help="target file to write the coefficients into (default: the target's own file)")
    ap.add_argument("--cache", help="measurement cache file (default: <out>.measurements.json)")
    ap.add_argument("--tune-only", action="store_true",
                    help="with --tune: tune every workload into the shared database and stop (no timing, no fit); "
                         "the same command without it then times and fits")
    ap.add_argument("--nets", type=int, default=0, metavar="N",
                    help="add the first N random CNNs of the calibration's own stream (NET_SEED; the large grid has 200)")
    ap.add_argument("--small-nets", type=int, default=0, metavar="N",
                    help="add the first N small random CNNs (32x32 input, widths <= 48) of the calibration's own stream "
                         "(NET_SEED; the large grid has 40): the regime of small deployable nets")
    ap.add_argument("--blocks", type=int, default=0, metavar="N",
                    help="add the first N random blocks (at most 16x16 maps) of the large grid (e.g. for a small tuned grid)")
    ap.add_argument("--dry-run", action="store_true", help="fit and report, write nothing")
    a = ap.parse_args(argv)
    if a.tracker and not a.key:
        ap.error("--tracker needs --key")
    if a.runtime == "torch" and (a.rpc or a.tracker):
        ap.error("--runtime torch times this machine only")
    if a.tune_only and not (a.runtime == "tvm" and a.tune):
        ap.error("--tune-only needs --runtime tvm and --tune TRIALS")
    if a.runtime == "tvm" and a.threads and (a.rpc or a.tracker):
        ap.error("--threads sets TVM's threads on this machine; an RPC device runs with its own")
    for opt in ("nets", "small_nets", "blocks"):
        if getattr(a, opt) < 0:
            ap.error(f"--{opt.replace('_', '-')} must be >= 0, got {getattr(a, opt)}")
    size = a.size or ("large" if a.runtime == "torch" else "full")
    workloads = None
    if a.blocks or a.nets or a.small_nets:
        workloads = (micro_grid(size) + [w for w in wide_grid() if w.kind == "block" and w.p["hw"] <= 16][:a.blocks]
                     + (model_workloads(size) if not a.no_models else []))
        workloads += [w for w in net_workloads(a.nets) + net_workloads(a.small_nets, small=True) if w not in workloads]
    rep = calibrate(a.target, a.runtime, rpc=_hostport(a.rpc, "--rpc"), tracker=_hostport(a.tracker, "--tracker"),
                    key=a.key, tune=a.tune, out=a.out, size=size, cache=a.cache, workloads=workloads,
                    write=not a.dry_run, models=not a.no_models, form=a.form, threads=a.threads,
                    passes=a.passes or (3 if a.runtime == "torch" else 1), tune_only=a.tune_only)
    if a.tune_only:
        print(f"{rep['runtime']}: {rep['workloads']} workloads tuned (or already tuned) in {rep['seconds']:.0f} s; "
              "run the same command without --tune-only to time them and fit")
        return 0
    fe, ce = rep["fit_error"], rep["cv_error"]
    print(f"{rep['runtime']}: {len(fe)} timings in {rep['seconds']:.0f} s; fit median |err| {np.median(fe):.1%}, "
          f"within 10%: {np.mean(fe <= 0.1):.0%}, 20%: {np.mean(fe <= 0.2):.0%}"
          + (f"; held-out median |err| {np.median(ce):.1%}, within 20%: {np.mean(ce <= 0.2):.0%}" if ce is not None else ""))
    nets = np.array(['"kind": "net"' in k for k, _ in rep["measurements"]])
    if ce is not None and nets.any():
        cn = ce[nets]
        print(f"  held out, the {nets.sum()} random nets only: median |err| {np.median(cn):.1%}, "
              f"within 10%: {np.mean(cn <= 0.1):.0%}, 20%: {np.mean(cn <= 0.2):.0%}")
    print(("wrote " if not a.dry_run else "would write ") + f"[calibration.{rep['runtime']}] to {rep['out']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
