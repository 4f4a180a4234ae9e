"""Lift + lower wall time on ResNet-50, MobileNetV2 and timm's MobileNetV3 at 224x224, against torch.export
alone, in one run.

Run: OMP_WAIT_POLICY=PASSIVE python bench/lift_lower.py [--repeat 5] [--smoke] [--models a,b]
Prints the median of `repeat` runs for each (lift also in CPU time of this thread, the figure other load on
a shared machine disturbs least) and the ratio hwopt / torch.export (lower is better). Zoo names
("timm/...", "torchvision/...") need the optional zoo extra and are skipped without it.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

import hwopt  # noqa: E402
from hwopt import models  # noqa: E402


def median_seconds(fn, repeat: int, clock=time.perf_counter) -> float:
    times = []
    for _ in range(repeat):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


def build(name: str):
    """(model in eval mode, 224x224 input), or None for a zoo model without the zoo extra."""
    if "/" in name:
        from hwopt.testing import zoo
        return zoo.build(name, 224) if zoo.available() else None
    return models.get(name).eval(), models.example_input(name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="one repeat, MobileNetV2 only")
    ap.add_argument("--models", default="resnet50,mobilenet_v2,timm/mobilenetv3_large_100",
                    help="comma-separated hwopt.models names or zoo names (timm/..., torchvision/...)")
    args = ap.parse_args()
    names = ["mobilenet_v2"] if args.smoke else args.models.split(",")
    repeat = 1 if args.smoke else args.repeat
    print(f"{'model':28s} {'lift':>8s} {'lift CPU':>9s} {'lower':>8s} {'lift+lower':>11s} {'fx trace':>9s} "
          f"{'torch.export':>13s} {'ratio':>7s}")
    for name in names:
        built = build(name)
        if built is None:
            print(f"{name:28s} skipped: the zoo extra (timm, torchvision) is not installed")
            continue
        m, x = built
        hwopt.lower(hwopt.lift(m, x))  # warm-up: first-call imports and caches
        g = hwopt.lift(m, x)
        lift_s = median_seconds(lambda: hwopt.lift(m, x), repeat)
        lift_cpu = median_seconds(lambda: hwopt.lift(m, x), repeat, time.thread_time)
        lower_s = median_seconds(lambda: hwopt.lower(g), repeat)
        both_s = median_seconds(lambda: hwopt.lower(hwopt.lift(m, x)), repeat)
        try:
            fx_s = f"{median_seconds(lambda: torch.fx.symbolic_trace(m), repeat):9.3f}"
        except Exception:  # noqa: BLE001 - timm's norm+act layers are not symbolically traceable by plain fx
            fx_s = f"{'fails':>9s}"
        export_s = median_seconds(lambda: torch.export.export(m, (x,)), max(1, min(repeat, 3)))
        print(f"{name:28s} {lift_s:8.3f} {lift_cpu:9.3f} {lower_s:8.3f} {both_s:11.3f} {fx_s} {export_s:13.3f} "
              f"{both_s / export_s:7.2f}")


if __name__ == "__main__":
    main()
