"""Lift + lower wall time on ResNet-50 and MobileNetV2 at 224x224, against torch.export alone, in one run.

Run: OMP_WAIT_POLICY=PASSIVE python bench/lift_lower.py [--repeat 5] [--smoke]
Prints the median of `repeat` runs for each and the ratio hwopt / torch.export (lower is better).
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

import hwopt  # noqa: E402
from hwopt import models  # noqa: E402


def median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="one repeat, MobileNetV2 only")
    args = ap.parse_args()
    names = ["mobilenet_v2"] if args.smoke else ["resnet50", "mobilenet_v2"]
    repeat = 1 if args.smoke else args.repeat
    print(f"{'model':14s} {'lift':>8s} {'lower':>8s} {'lift+lower':>11s} {'fx trace':>9s} {'torch.export':>13s} {'ratio':>7s}")
    for name in names:
        m = models.get(name).eval()
        x = models.example_input(name)
        hwopt.lower(hwopt.lift(m, x))  # warm-up: first-call imports and caches
        g = hwopt.lift(m, x)
        lift_s = median_seconds(lambda: hwopt.lift(m, x), repeat)
        lower_s = median_seconds(lambda: hwopt.lower(g), repeat)
        both_s = median_seconds(lambda: hwopt.lower(hwopt.lift(m, x)), repeat)
        fx_s = median_seconds(lambda: torch.fx.symbolic_trace(m), repeat)
        export_s = median_seconds(lambda: torch.export.export(m, (x,)), max(1, min(repeat, 3)))
        print(f"{name:14s} {lift_s:8.3f} {lower_s:8.3f} {both_s:11.3f} {fx_s:9.3f} {export_s:13.3f} {both_s / export_s:7.2f}")


if __name__ == "__main__":
    main()
