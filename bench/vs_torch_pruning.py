"""hwopt channel-prune vs Torch-Pruning 1.6.1: wall time, MACs, params, output sanity, same ratio and criterion.

    OMP_WAIT_POLICY=PASSIVE python bench/vs_torch_pruning.py            # ResNet-50, MobileNetV2, timm MobileNetV3
    OMP_WAIT_POLICY=PASSIVE python bench/vs_torch_pruning.py --smoke    # one timed repeat each

Models are hwopt.models names or zoo names ("timm/mobilenetv3_large_100", "torchvision/resnet18": the
optional zoo extra, hwopt.testing.zoo), all at 224x224.

Both tools start from the same torch model and end with a pruned torch module: 50 % of the channels of
every prunable layer removed (per-layer ranking), L1 magnitude over each coupled group, the classifier's
outputs kept. hwopt's time = lift + channel-prune + lower; Torch-Pruning's = building its dependency
graph and pruner + step(). Both are timed warm (one untimed run each first), interleaved, median of
--repeats (wall and CPU time; on a loaded machine the CPU time and the median of the per-round ratios
are the steadier figures). MACs of both results are counted the same way (hwopt's conv/linear MAC count of the lifted
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


def _clocks() -> tuple[float, float]:
    """(wall, CPU) seconds: CPU time (all threads of this process) is what the other load on a shared
    machine disturbs least."""
    return time.perf_counter(), time.process_time()


def run_hwopt(model, x, ratio):
    w0, c0 = _clocks()
    g = hwopt.lift(model, x)
    t1 = time.perf_counter()
    pruned = ChannelPrune(criterion="l1", ratio=ratio, round_to=1).run(g, hwopt.PassContext())
    t2 = time.perf_counter()
    module = hwopt.lower(pruned)
    w3, c3 = _clocks()
    PHASES.append((t1 - w0, t2 - t1, w3 - t2))
    return (w3 - w0, c3 - c0), module


def _classifier(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]


def run_tp(tp, model, x, ratio):
    w0, c0 = _clocks()
    imp = tp.importance.MagnitudeImportance(p=1)  # L1 over the group, as hwopt's l1
    pruner = tp.pruner.MagnitudePruner(model, x, importance=imp, pruning_ratio=ratio,
                                       ignored_layers=_classifier(model), global_pruning=False)
    pruner.step()
    w1, c1 = _clocks()
    return (w1 - w0, c1 - c0), model


def figures(module, x, classes):
    with torch.no_grad():
        y = module(x)
    g = hwopt.lift(module, x)
    return {"macs": graph_macs(g), "params": sum(p.numel() for p in module.parameters()),
            "ok": bool(torch.isfinite(y).all()) and tuple(y.shape) == (x.shape[0], classes)}


def build(name: str):
    """(model in eval mode, input, number of classes): an hwopt.models name or a zoo name (timm/..., torchvision/...)."""
    if "/" in name:
        from hwopt.testing import zoo
        if not zoo.available():
            return None
        model, x = zoo.build(name, 224)
    else:
        torch.manual_seed(0)
        model = models.get(name).eval()
        x = models.example_input(name, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        classes = model(x).shape[-1]
    return model, x, classes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="one timed repeat per tool and model")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--models", default="resnet50,mobilenet_v2,timm/mobilenetv3_large_100",
                    help="comma-separated hwopt.models names or zoo names (timm/..., torchvision/...)")
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
    print(f"{'model':<28}{'tool':<15}{'time s':>8}{'CPU s':>8}{'MACs':>16}{'params':>13}{'MACs ratio':>12}  finite+shape")
    for name in args.models.split(","):
        built = build(name)
        if built is None:
            print(f"{name:<28}skipped: the zoo extra (timm, torchvision) is not installed")
            continue
        base, x, classes = built
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
        med = {k: statistics.median(t[0] for t in v) for k, v in times.items()}
        cpu = {k: statistics.median(t[1] for t in v) for k, v in times.items()}
        for tool in ("hwopt", "torch-pruning"):
            f = figures(results[tool], x, classes)
            print(f"{name:<28}{tool:<15}{med[tool]:>8.3f}{cpu[tool]:>8.3f}{f['macs']:>16,}{f['params']:>13,}"
                  f"{base_macs / f['macs']:>11.2f}x  {f['ok']}")
        try:
            tp_macs, tp_params = tp.utils.count_ops_and_params(results["torch-pruning"], x)
            print(f"{'':<28}(Torch-Pruning's own count of its result: {int(tp_macs):,} MACs, {int(tp_params):,} params)")
        except Exception as e:  # noqa: BLE001 - reference only
            print(f"{'':<28}(Torch-Pruning's own counter failed: {type(e).__name__})")
        ph = [statistics.median(p[i] for p in PHASES[1:]) for i in range(3)]
        print(f"{'':<28}(hwopt phases, median: lift {ph[0]:.3f} s, channel-prune {ph[1]:.3f} s, lower {ph[2]:.3f} s)")
        r = med["hwopt"] / med["torch-pruning"]
        # each round runs both tools back to back: the median of the rounds' ratios is steadier under load
        paired = statistics.median(h[0] / t[0] for h, t in zip(times["hwopt"], times["torch-pruning"]))
        rc = cpu["hwopt"] / cpu["torch-pruning"]
        print(f"{name:<28}time ratio hwopt / Torch-Pruning = {r:.2f} (median of the rounds' ratios {paired:.2f}; "
              f"CPU time {rc:.2f})  (goal <= 0.50: {'met' if r <= 0.5 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
