"""Realized speed-up: MobileNetV2 pruned to half the MACs, compiled with TVM on the host, measured.

    OMP_WAIT_POLICY=PASSIVE python bench/realized_speedup.py                   # 224x224, default schedules
    OMP_WAIT_POLICY=PASSIVE python bench/realized_speedup.py --tune-trials 64  # MetaSchedule-tuned (slow)
    OMP_WAIT_POLICY=PASSIVE python bench/realized_speedup.py --smoke           # 112x112, fewer variants

Variants, all from the same random-init MobileNetV2 (L1 criterion):
  baseline;
  macs_fraction=0.5, round_to=1              (widths left wherever the ranking puts them);
  macs_fraction=0.5, round_to=target         (kept widths multiples of the host target's channel_multiple);
  latency_ms=0.5*predicted, round_to=target  (the cost model as the objective, not MACs).
Each is lowered, compiled with hwopt.tvm for the host, and timed with TVM's time_evaluator
(median of the repeats). Prints MAC ratio vs measured latency speed-up (goal: >= 1.9x at 2x fewer MACs),
and says whether the schedules were tuned. Degrades to a clear message if the TVM backend or the
host target is not available.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import hwopt  # noqa: E402
from hwopt import models  # noqa: E402
from hwopt.passes.channel_prune import ChannelPrune, graph_macs  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="112x112 input, two variants, few repeats")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--tune-trials", type=int, default=0, help="MetaSchedule trials per fused op (0: default schedules)")
    ap.add_argument("--work-dir", default=None, help="tuning database root")
    ap.add_argument("--repeat", type=int, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    try:
        from hwopt import tvm as tvm_backend
    except ImportError as e:
        print(f"hwopt.tvm is not available ({e}); this bench needs it to compile and time on the host. Skipping.")
        return 0
    try:
        from hwopt.targets import load_target
        target = load_target("host")
    except Exception as e:  # noqa: BLE001
        print(f"the host target could not be loaded ({type(e).__name__}: {e}); round_to=target and latency budgets "
              "need it. Skipping.")
        return 0

    size = args.size or (112 if args.smoke else 224)
    repeat = args.repeat or (5 if args.smoke else 20)
    torch.manual_seed(0)
    model = models.mobilenet_v2().eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    g = hwopt.lift(model, x)
    ctx = hwopt.PassContext(target=target)
    pred0 = target.cost(g).latency_ms
    variants = [("baseline", None),
                ("macs=0.5 round_to=1", ChannelPrune(criterion="l1", macs_fraction=0.5, round_to=1)),
                (f"macs=0.5 round_to=target({target.channel_multiple})", ChannelPrune(criterion="l1", macs_fraction=0.5, round_to="target"))]
    if not args.smoke:
        variants.append((f"latency_ms=0.5x pred, round_to=target", ChannelPrune(criterion="l1", latency_ms=0.5 * pred0,
                                                                                 round_to="target")))
    tuned_note = f"MetaSchedule-tuned, {args.tune_trials} trials/op" if args.tune_trials else "TVM default schedules (untuned)"
    print(f"MobileNetV2 1x3x{size}x{size} on the host via TVM ({tuned_note}); target channel_multiple="
          f"{target.channel_multiple}; {repeat} repeats, median")
    print(f"{'variant':<42}{'MACs':>14}{'MAC ratio':>10}{'pred ms':>9}{'measured ms':>13}{'speed-up':>10}  tuned  compile s")
    base_ms = base_macs = None
    for label, p in variants:
        gp = g if p is None else p.run(g, ctx)
        macs = graph_macs(gp)
        pred = target.cost(gp).latency_ms
        module = hwopt.lower(gp)
        t0 = time.perf_counter()
        try:
            cm = tvm_backend.compile_module(module, (x,), "host", tune_trials=args.tune_trials, store=args.work_dir)
            ref = module(x).detach().numpy()
            out = cm.run(x)
            out = out[0] if isinstance(out, (list, tuple)) else out
            import numpy as np
            err = float(np.abs(np.asarray(out) - ref).max())
            bench = cm.benchmark(x, repeat=repeat)
        except Exception as e:  # noqa: BLE001 - report and continue with the other variants
            print(f"{label:<42}{macs:>14,}  compile/run failed: {type(e).__name__}: {e}")
            continue
        ct = time.perf_counter() - t0
        ms = bench["median_ms"]
        if base_ms is None:
            base_ms, base_macs = ms, macs
        print(f"{label:<42}{macs:>14,}{base_macs / macs:>9.2f}x{pred:>9.2f}{ms:>13.2f}{base_ms / ms:>9.2f}x  "
              f"{str(bench.get('tuned', False)):<6} {ct:6.0f}   (max |tvm - torch| {err:.1e})")
    if base_ms is not None:
        print("goal: measured speed-up >= 1.9x where the MAC ratio is ~2x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
