"""Optimize MobileNetV2 for a Raspberry Pi 4 (Cortex-A72) to half its predicted latency, and export it.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python examples/optimize_for_raspberry_pi4.py [--out pi4-out]

Writes the report (Markdown, JSON, plots), an ONNX model, and — when the Debian cross compiler
`aarch64-linux-gnu-gcc` is installed — a TVM library to copy to the Pi and run with the TVM runtime.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import shutil  # noqa: E402

import torch  # noqa: E402

import hwopt  # noqa: E402
from hwopt import models  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="pi4-out")
    ap.add_argument("--resolution", type=int, default=224)
    args = ap.parse_args()

    model = models.mobilenet_v2().eval()  # load your trained weights here
    x = torch.randn(1, 3, args.resolution, args.resolution)
    target = hwopt.load_target("cortex-a72")
    start = target.cost(hwopt.lift(model, x))
    print(f"MobileNetV2 on {target.description}\n  before: {start}")

    result = hwopt.optimize(model, target, x, budget={"latency_ms": start.latency_ms / 2})
    print(f"  pipeline: {result.pipeline}\n")
    print(result.table())

    written = result.write_report(args.out)
    written.append(result.export(os.path.join(args.out, "mobilenet_v2-pi4.onnx"), format="onnx"))
    if shutil.which("aarch64-linux-gnu-gcc"):
        written.append(result.export(os.path.join(args.out, "mobilenet_v2-pi4.so"), format="tvm"))
    else:
        print("(install gcc-aarch64-linux-gnu for the TVM library for the Pi)")
    print("\nwrote", ", ".join(map(str, written)))


if __name__ == "__main__":
    main()
