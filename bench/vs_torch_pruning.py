"""hwopt channel-prune vs Torch-Pruning 1.6.1: wall time, MACs, params, output sanity, same ratio and criterion.

    OMP_WAIT_POLICY=PASSIVE python bench/vs_torch_pruning.py            # ResNet-50 and MobileNetV2 at 224
    OMP_WAIT_POLICY=PASSIVE python bench/vs_torch_pruning.py --smoke    # one timed repeat each

Both tools start from the same torch model and end with a pruned torch module: 50 % of the channels of
every prunable layer removed (per-layer ranking), L1 magnitude over each coupled group, the classifier's
outputs kept. hwopt's time = lift + channel-prune + lower; Torch-Pruning's = building its dependency
graph and pruner + step(). Both are timed warm (one untimed run each first), interleaved, median of
--repeats. MACs of both results are counted the same way (hwopt's conv/linear MAC count of the lifted
result), plus Torch-Pruning's own count for reference. The goal: hwopt's time <= 0.5x Torch-Pruning's.

Torch-Pruning is a bench-only tool, not a dependency of hwopt: without it the script says so and exits 0
(``--install`` pip-installs torch-pruning==1.6.1 into the running interpreter first).
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import hwopt  # noqa: E402
from hwopt import models  # noqa: E402
from hwopt.passes.channel_prune import ChannelPrune, graph_macs  # noqa: E402

TP_VERSION = "1.6.1"
PHASES: list[tuple[float, float, float]] = []  # hwopt's lift / prune / lower seconds per run


def _import_tp(install: bool):
    try:
        import torch_pruning as tp
        return tp
    except ImportError:
        if not install:
            return None
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", f"torch-pruning=={TP_VERSION}"], check=False)
    try:
        import torch_pruning as tp
        return tp
    except ImportError:
        return None


def run_hwopt(model, x, ratio):
    t0 = time.perf_counter()
    g = hwopt.lift(model, x)
    t1 = time.perf_counter()
    pruned = ChannelPrune(criterion="l1", ratio=ratio, round_to=1).run(g, hwopt.PassContext())
    t2 = time.perf_counter()
    module = hwopt.lower(pruned)
    t3 = time.perf_counter()
    PHASES.append((t1 - t0, t2 - t1, t3 - t2))
    return t3 - t0, module


def _classifier(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]


def run_tp(tp, model, x, ratio):
    t0 = time.perf_counter()
    imp = tp.importance.MagnitudeImportance(p=1)  # L1 over the group, as hwopt's l1
    pruner = tp.pruner.MagnitudePruner(model, x, importance=imp, pruning_ratio=ratio,
                                       ignored_layers=_classifier(model), global_pruning=False)
    pruner.step()
    return time.perf_counter() - t0, model


def figures(module, x):
    with torch.no_grad():
        y = module(x)
    g = hwopt.lift(module, x)
    return {"macs": graph_macs(g), "params": sum(p.numel() for p in module.parameters()),
            "ok": bool(torch.isfinite(y).all()) and tuple(y.shape) == (x.shape[0], 1000)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="one timed repeat per tool and model")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--models", default="resnet50,mobilenet_v2")
    ap.add_argument("--install", action="store_true", help=f"pip install torch-pruning=={TP_VERSION} if missing")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    tp = _import_tp(args.install)
    if tp is None:
        print(f"Torch-Pruning is not installed: this bench compares against it. Install it for the bench only "
              f"(not a dependency of hwopt):\n    pip install torch-pruning=={TP_VERSION}\n"
              f"or run with --install. Skipping.")
        return 0
    repeats = 1 if args.smoke else args.repeats
    print(f"hwopt vs Torch-Pruning {getattr(tp, '__version__', '?')} (pip {TP_VERSION}); ratio {args.ratio} of channels "
          f"per layer, L1; input 1x3x224x224; {torch.get_num_threads()} threads; median of {repeats} warm run(s)")
    print(f"{'model':<14}{'tool':<15}{'time s':>8}{'MACs':>16}{'params':>13}{'MACs ratio':>12}  finite+shape")
    for name in args.models.split(","):
        torch.manual_seed(0)
        base = models.get(name).eval()
        x = models.example_input(name, generator=torch.Generator().manual_seed(1))
        base_macs = graph_macs(hwopt.lift(base, x))
        times = {"hwopt": [], "torch-pruning": []}
        PHASES.clear()
        results = {}
        for rep in range(repeats + 1):  # the first round warms both tools up and is not timed
            m = copy.deepcopy(base)
            dt, results["hwopt"] = run_hwopt(m, x, args.ratio)
            if rep:
                times["hwopt"].append(dt)
            m = copy.deepcopy(base)
            dt, results["torch-pruning"] = run_tp(tp, m, x, args.ratio)
            if rep:
                times["torch-pruning"].append(dt)
        med = {k: statistics.median(v) for k, v in times.items()}
        for tool in ("hwopt", "torch-pruning"):
            f = figures(results[tool], x)
            print(f"{name:<14}{tool:<15}{med[tool]:>8.3f}{f['macs']:>16,}{f['params']:>13,}"
                  f"{base_macs / f['macs']:>11.2f}x  {f['ok']}")
        try:
            tp_macs, tp_params = tp.utils.count_ops_and_params(results["torch-pruning"], x)
            print(f"{'':<14}(Torch-Pruning's own count of its result: {int(tp_macs):,} MACs, {int(tp_params):,} params)")
        except Exception as e:  # noqa: BLE001 - reference only
            print(f"{'':<14}(Torch-Pruning's own counter failed: {type(e).__name__})")
        ph = [statistics.median(p[i] for p in PHASES[1:]) for i in range(3)]
        print(f"{'':<14}(hwopt phases, median: lift {ph[0]:.3f} s, channel-prune {ph[1]:.3f} s, lower {ph[2]:.3f} s)")
        r = med["hwopt"] / med["torch-pruning"]
        print(f"{name:<14}time ratio hwopt / Torch-Pruning = {r:.2f}  (goal <= 0.50: {'met' if r <= 0.5 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
