"""Coefficients for targets with no device at hand: fits to published latencies and first principles.

- `fit_pixel1()`: fits pixel-1 to the published Pixel 1 latencies in `data/pixel1_latency.csv`
  (MobileNetV2 float TFLite from the TF-slim README; MobileNetV1 from the MnasNet paper). Few points,
  so few parameters: one compute efficiency for the GEMM-like kinds (conv, pointwise, dense), one for
  depthwise, one memory efficiency and one per-op overhead shared by all kernels; TFLite folds batch
  norm and fuses activations into the conv, so "fused" nodes cost nothing. Reports the fit error and
  the leave-one-out error (refit without each point, predict it).
- `fit_cortex_m()`: Cortex-M7 conv efficiency fit to the one public measurement we cite (CMSIS-NN,
  Lai et al. 2018: CIFAR-10 CNN on an STM32F746 at 216 MHz); the other kinds from the CMSIS-NN inner
  loops (first principles); Cortex-M4 from M7 scaled by the ratio of Arm's CoreMark/MHz figures.
- `transfer_cortex_a()`: the Cortex-A targets get pixel-1's efficiencies (same class of NEON kernels)
  relative to their own peak and bandwidth. Not measured on those boards: `hwopt calibrate --rpc`
  replaces them.

    python -m hwopt.targets.published [--write]      # refit and print; --write updates the TOML files
"""
from __future__ import annotations

import csv
import datetime as _dt
import math
import sys
from pathlib import Path

import numpy as np

from . import TARGET_DIR, load_target
from . import cost as _cost
from .calibrate import Design, coefficients_table, rel_errors
from .schema import KINDS

DATA = TARGET_DIR / "data" / "pixel1_latency.csv"


# --------------------------------------------------------------------------------------------------
# Models the published figures are for


def mobilenet_v1(width_mult: float = 1.0, num_classes: int = 1000):
    """MobileNetV1 (Howard et al. 2017): 3x3 conv stem + 13 depthwise-separable blocks, 4.2M params."""
    from torch import nn

    def c(x):
        return max(8, int(x * width_mult))

    def cbr(cin, cout, k, s, g=1):
        return [nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()]

    cfg = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    layers, cin = cbr(3, c(32), 3, 2), c(32)
    for cout, s in cfg:
        layers += cbr(cin, cin, 3, s, g=cin) + cbr(cin, c(cout), 1, 1)
        cin = c(cout)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)).eval()


def cmsis_nn_cifar10():
    """The CIFAR-10 CNN of the CMSIS-NN paper (Caffe cifar10 'quick': 3x conv5x5 + pool, fc), 32x32x3."""
    from torch import nn
    return nn.Sequential(
        nn.Conv2d(3, 32, 5, 1, 2), nn.MaxPool2d(3, 2, 1), nn.ReLU(),
        nn.Conv2d(32, 32, 5, 1, 2), nn.ReLU(), nn.AvgPool2d(3, 2, 1),
        nn.Conv2d(32, 64, 5, 1, 2), nn.ReLU(), nn.AvgPool2d(3, 2, 1),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 10)).eval()


def pixel1_data() -> list[dict]:
    rows = [r for r in csv.DictReader(line for line in DATA.read_text().splitlines() if not line.startswith("#"))]
    for r in rows:
        r["width_mult"], r["resolution"], r["latency_ms"] = float(r["width_mult"]), int(r["resolution"]), float(r["latency_ms"])
    return rows


def _graph(model_name: str, width: float, res: int):
    import torch

    import hwopt
    from hwopt import models
    m = models.mobilenet_v2(width_mult=width).eval() if model_name == "mobilenet_v2" else mobilenet_v1(width)
    return hwopt.lift(m, torch.randn(1, 3, res, res))


# --------------------------------------------------------------------------------------------------
# A fit with tied parameters


GEMM = ("conv", "pointwise", "dense")


def _coeffs(theta, p: float, fused_free: bool = True) -> _cost.Coefficients:
    ce_gemm, ce_dw, meff, ovh = np.exp(theta[:4])
    ce = np.array([ce_gemm if k in GEMM else ce_dw if k == "depthwise" else 1.0 for k in KINDS])
    me = np.full(len(KINDS), meff)
    ov = np.full(len(KINDS), ovh)
    if fused_free:  # TFLite: BN folded into the conv, activation fused: no extra pass
        j = KINDS.index("fused")
        ce[j], me[j], ov[j] = 4.0, 20.0, 0.0
    return _cost.Coefficients(ce, me, ov, p)


def _fit_tied(design: Design, ms: np.ndarray, peak: float, bw: float, p: float) -> _cost.Coefficients:
    from scipy.optimize import least_squares
    y = np.log(ms * 1e-3)

    def resid(th):
        return np.log(design.predict_s(_coeffs(th, p), peak, bw)) - y

    lo, hi = [math.log(1e-3)] * 3 + [math.log(1e-2)], [math.log(2.0), math.log(2.0), math.log(20.0), math.log(1e4)]
    best = None
    for start in ([math.log(0.3), math.log(0.1), math.log(0.5), math.log(10.0)],
                  [math.log(0.1), math.log(0.3), math.log(0.2), math.log(1.0)]):
        r = least_squares(resid, start, bounds=(lo, hi))
        if best is None or r.cost < best.cost:
            best = r
    return _coeffs(best.x, p)


def fit_pixel1(p: float = 2.0) -> dict:
    t = load_target("pixel-1")
    rows = pixel1_data()
    graphs = [_graph(r["model"], r["width_mult"], r["resolution"]) for r in rows]
    design = Design.from_graphs(graphs, 4)
    ms = np.array([r["latency_ms"] for r in rows])
    peak, bw = t.peak_macs_per_s, t.bandwidth_bytes_s
    c = _fit_tied(design, ms, peak, bw, p)
    pred = design.predict_s(c, peak, bw) * 1e3
    fit_err = rel_errors(pred, ms)
    loo = np.zeros(len(rows))
    loo_pred = np.zeros(len(rows))
    for i in range(len(rows)):
        train = np.array([j for j in range(len(rows)) if j != i])
        ci = _fit_tied(design.subset(train), ms[train], peak, bw, p)
        loo_pred[i] = design.subset(np.array([i])).predict_s(ci, peak, bw)[0] * 1e3
        loo[i] = abs(loo_pred[i] / ms[i] - 1)
    meta = {
        "source": "fit to published Pixel 1 latencies, targets/data/pixel1_latency.csv (MobileNetV2 x7: TF-slim "
                  "README; MobileNetV1: MnasNet paper Table 1)",
        "date": _dt.date.today().isoformat(),
        "method": "least squares on log latency, 4 tied parameters (GEMM-kind and depthwise compute efficiency, "
                  f"shared memory efficiency and per-op overhead), p = {p:g} fixed; BN/activations fused (free); "
                  "loo_error = leave-one-out (8 refits)",
        "schedules": "TFLite float32 kernels, 1 thread (as published); not TVM",
        "provenance": "published",
        "samples": len(rows),
        "fit_error": round(float(np.median(fit_err)), 4),
        "loo_error": round(float(np.median(loo)), 4),
    }
    return {"table": coefficients_table(c, meta), "rows": rows, "pred": pred, "fit_error": fit_err,
            "loo_pred": loo_pred, "loo_error": loo, "coefficients": c}


# --------------------------------------------------------------------------------------------------
# Cortex-M: first principles + the CMSIS-NN measurement

CMSIS_NN_MS = 99.1  # Lai, Suda, Chandra, "CMSIS-NN", arXiv:1801.06601 (2018): CIFAR-10 CNN, STM32F746 @ 216 MHz
COREMARK_PER_MHZ = {"cortex-m4": 3.40, "cortex-m7": 5.01}  # Arm's published CoreMark/MHz (product pages)


def _m_coeffs(conv_eff: float, scale: float = 1.0) -> _cost.Coefficients:
    """CMSIS-NN kernels, per kind, as a fraction of the 2 int8 MAC/cycle SMLAD peak:
    conv/pointwise/dense (im2col + 2x2 output-blocked SMLAD GEMM): `conv_eff` (fitted on M7);
    depthwise (arm_depthwise_conv_s8_opt: no reuse across output channels, ~2x the loads per MAC): half;
    elementwise / fused requantize+activation: ~4 cycles per element -> 1/8 of 2 ops/cycle;
    pooling: ~2 cycles per window element -> 1/4; data movement (memcpy): 1 byte/cycle -> 1/2.
    Activations sit in SRAM at one 32-bit word per cycle (memory_eff 1 of bandwidth_gbs)."""
    ce = {"conv": conv_eff, "pointwise": conv_eff, "dense": conv_eff, "depthwise": conv_eff / 2,
          "elementwise": 1 / 8, "fused": 1 / 8, "pooling": 1 / 4, "data": 1 / 2}
    ov = {k: 0.0 if k == "fused" else 5.0 for k in KINDS}  # arm_*_s8 call setup, ~1000 cycles
    return _cost.Coefficients(np.array([ce[k] * scale for k in KINDS]), np.ones(len(KINDS)),
                              np.array([ov[k] for k in KINDS]), 4.0)


def fit_cortex_m() -> dict:
    from scipy.optimize import brentq

    import torch

    import hwopt
    t7 = load_target("cortex-m7")
    g = hwopt.lift(cmsis_nn_cifar10(), torch.randn(1, 3, 32, 32))
    design = Design.from_graphs([g], 1)

    def f(log_eff):
        return design.predict_s(_m_coeffs(math.exp(log_eff)), t7.peak_macs_per_s, t7.bandwidth_bytes_s)[0] * 1e3 - CMSIS_NN_MS

    eff = math.exp(brentq(f, math.log(1e-3), math.log(4.0)))
    out = {}
    for name in ("cortex-m7", "cortex-m4"):
        t = load_target(name)
        scale = COREMARK_PER_MHZ[name] / COREMARK_PER_MHZ["cortex-m7"]
        c = _m_coeffs(eff, scale)
        meta = {
            "source": "first principles from the CMSIS-NN inner loops (see hwopt.targets.published._m_coeffs); "
                      f"conv efficiency fit to CMSIS-NN (Lai et al. 2018, arXiv:1801.06601): CIFAR-10 CNN "
                      f"({g.stats()['macs'] / 1e6:.1f} M MACs) in {CMSIS_NN_MS} ms on STM32F746 @ 216 MHz"
                      + ("" if name == "cortex-m7" else f"; scaled to M4 by Arm CoreMark/MHz {COREMARK_PER_MHZ['cortex-m4']} / "
                         f"{COREMARK_PER_MHZ['cortex-m7']}"),
            "date": _dt.date.today().isoformat(),
            "method": "one-parameter fit (brentq) of the conv compute efficiency to one published latency; "
                      "other kinds first principles; not validated on a board",
            "schedules": "CMSIS-NN int8 kernels (TFLite Micro / hand-written C)",
            "provenance": "first-principles" if name == "cortex-m7" else "transferred",
            "samples": 1,
            "fit_error": 0.0,
        }
        out[name] = {"table": coefficients_table(c, meta), "conv_eff": eff * scale,
                     "pred_ms": design.predict_s(c, t.peak_macs_per_s, t.bandwidth_bytes_s)[0] * 1e3}
    return out


def transfer_cortex_a(pixel_table: dict) -> dict:
    out = {}
    for name in ("cortex-a53", "cortex-a72", "cortex-a76"):
        t = dict(pixel_table)
        t = {**{k: v for k, v in pixel_table.items() if k != "kinds"}, "kinds": pixel_table["kinds"]}
        t["source"] = ("transferred from the pixel-1 fit (TFLite-class NEON kernels): same efficiencies relative to "
                       f"this target's peak ({name}: clock x cores x MACs/cycle) and bandwidth; assumes linear scaling "
                       "over cores_used. Not measured on this device: run hwopt calibrate --target "
                       f"{name} --rpc HOST:PORT on a board to replace it")
        t["method"] = "transfer of fitted efficiencies (no fit on this device)"
        t.pop("loo_error", None)
        t["fit_error"] = 0.0
        t["samples"] = 0
        t["provenance"] = "transferred"
        out[name] = t
    return out


def main(argv: list[str] | None = None) -> int:
    from .tomlio import update_runtime
    argv = list(sys.argv[1:] if argv is None else argv)
    write = "--write" in argv
    px = fit_pixel1()
    print("pixel-1 fit to published latencies (ms):")
    for r, p, lp in zip(px["rows"], px["pred"], px["loo_pred"]):
        print(f"  {r['model']:<13} {r['width_mult']:<5} {r['resolution']:<4} published {r['latency_ms']:7.1f}  "
              f"fit {p:7.1f} ({p / r['latency_ms'] - 1:+.1%})  leave-one-out {lp:7.1f} ({lp / r['latency_ms'] - 1:+.1%})")
    print(f"  fit |err| median {np.median(px['fit_error']):.1%} max {np.max(px['fit_error']):.1%}; "
          f"LOO |err| median {np.median(px['loo_error']):.1%} max {np.max(px['loo_error']):.1%}")
    m = fit_cortex_m()
    for name, r in m.items():
        print(f"{name}: conv efficiency {r['conv_eff']:.3f} of peak; CMSIS-NN CIFAR-10 CNN predicted {r['pred_ms']:.1f} ms")
    if write:
        update_runtime(TARGET_DIR / "pixel-1.toml", "tflite-published", px["table"], make_default=True)
        for name, r in m.items():
            update_runtime(TARGET_DIR / f"{name}.toml", "cmsis-nn", r["table"], make_default=True)
        for name, table in transfer_cortex_a(px["table"]).items():
            update_runtime(TARGET_DIR / f"{name}.toml", "transferred-pixel-1", table, make_default=True)
        print("wrote pixel-1, cortex-m4, cortex-m7, cortex-a53, cortex-a72, cortex-a76")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
