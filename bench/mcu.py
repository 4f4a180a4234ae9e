"""Cortex-M: the cost model's predictions against firmware that runs (hwopt.firmware, QEMU).

For the MNIST CNN and the DS-CNN keyword-spotting net, float32 and int8 (the quantize pass), on the
Cortex-M4 (QEMU mps2-an386) and Cortex-M7 (mps2-an500) targets, it builds the firmware, runs it under
`-icount shift=0` and prints:

* predicted flash (weights, biases, requantization parameters) against the ELF's weight arrays and its
  whole flash image (code included); predicted peak SRAM against the ELF's activation arena and its
  whole RAM (arena + stack + runtime); both against the target's limits;
* predicted latency (the target's default calibration) against the measured instruction count. QEMU's
  instruction counts are not cycles: a Cortex-M7 dual-issues, a Cortex-M4 takes several cycles for loads
  and branches, and flash wait states are not modelled. The "instr/cycle-pred" column divides
  instructions by the predicted cycles (latency x clock).
* instructions per kernel kind, and per kind the MACs (or elements) per instruction.

`--calibration` prints a [calibration.qemu-icount] table per target fitted to the int8 runs (compute
efficiency per kind = work / (instructions x peak int8 MACs per cycle), as if one instruction took one
cycle); `--write` adds it to targets/cortex-m4.toml and cortex-m7.toml (replacing an older one).

Needs arm-none-eabi-gcc, newlib and qemu-system-arm (apt-get install gcc-arm-none-eabi
libnewlib-arm-none-eabi qemu-system-arm). About two minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import tomllib
from collections import defaultdict

import torch

import hwopt
import hwopt.passes  # noqa: F401 - registers the quantize pass
from hwopt import models
from hwopt.firmware import export_firmware, toolchain_missing
from hwopt.firmware.project import INSTRUCTIONS_PER_TICK
from hwopt.targets import cost as _cost
from hwopt.targets.schema import KINDS

MODELS = {"mnist_cnn": (1, 1, 28, 28), "ds_cnn": (1, 1, 49, 10)}
TARGETS = ("cortex-m4", "cortex-m7")


def graphs(name: str) -> dict:
    torch.manual_seed(0)
    shape = MODELS[name]
    g = hwopt.lift(models.get(name).eval(), torch.randn(shape))
    calib = [(torch.randn((32,) + shape[1:]), None) for _ in range(4)]
    qg = hwopt.PassManager.parse("quantize").run(g, hwopt.PassContext(data=calib))
    return {"float32": g, "int8": qg}


def predicted(target, g, dtype: str) -> dict:
    """Flash, peak SRAM and latency as the target costs the graph: at its own dtypes (a float32 graph with
    float kernels and 4-byte values, an int8 graph with int8 kernels)."""
    c = target.cost(g)
    assert c.dtype == dtype, (c.dtype, dtype)
    return {"flash": c.flash_bytes, "sram": c.peak_sram_bytes, "ms": c.latency_ms}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calibration", action="store_true", help="print [calibration.qemu-icount] tables")
    ap.add_argument("--write", action="store_true", help="write the tables into targets/cortex-m*.toml")
    args = ap.parse_args(argv)
    why = toolchain_missing()
    if why:
        print(f"bench/mcu.py: skipped: {why}")
        return 0
    graphs_cache = {}
    rows, per_kind = [], defaultdict(lambda: defaultdict(lambda: [0.0, 0.0]))  # target -> kind -> [work, instr]
    with tempfile.TemporaryDirectory(prefix="hwopt_bench_mcu_") as work:
        for name in MODELS:
            gs = graphs(name)
            graphs_cache[name] = gs["int8"]
            for dtype, g in gs.items():
                feats = _cost.features(g)
                work_of = dict(zip(feats.names, feats.work.tolist()))
                for tname in TARGETS:
                    t = hwopt.load_target(tname)
                    fw = export_firmware(g, t, os.path.join(work, f"{name}-{dtype}-{tname}"))
                    run = fw.run(torch.randn(MODELS[name]))
                    p = predicted(t, g, dtype)
                    kinds = defaultdict(float)
                    for k, ticks in zip(fw.kernels, run.kernel_ticks):
                        instr = ticks * INSTRUCTIONS_PER_TICK
                        kinds[k.kind] += instr
                        if dtype == "int8":
                            acc = per_kind[tname][k.kind]
                            acc[0] += work_of.get(k.kernel.nodes[0], 0.0)
                            acc[1] += instr
                    rows.append((name, dtype, tname, t, fw, run, p, dict(kinds)))
    print("Cortex-M firmware in QEMU (icount shift=0) against the cost model's predictions")
    print("flash: predicted = weights + biases + requant params; ELF weights = its const weight arrays; ELF flash = whole image")
    print("SRAM: predicted = peak live activations; arena = the ELF's activation arena; ELF RAM = arena + stack + runtime")
    hdr = (f"{'model':10s} {'dtype':7s} {'target':9s} {'flash pred':>10s} {'ELF wts':>8s} {'ratio':>6s} {'ELF flash':>9s} "
           f"{'SRAM pred':>9s} {'arena':>7s} {'ratio':>6s} {'ELF RAM':>8s} {'fits':>5s} {'pred ms':>8s} "
           f"{'instr':>11s} {'instr/cycle-pred':>16s}")
    print(hdr)
    for name, dtype, tname, t, fw, run, p, _ in rows:
        s = fw.sizes
        fits = s["flash_bytes"] <= t.flash_bytes and s["ram_bytes"] <= t.sram_bytes
        cyc = p["ms"] * 1e-3 * t.clock_mhz * 1e6
        ratio = f"{run.instructions / cyc:16.2f}" if cyc == cyc else f"{'-':>16s}"
        print(f"{name:10s} {dtype:7s} {tname:9s} {p['flash']:10,d} {s['weights_bytes']:8,d} {s['weights_bytes'] / p['flash']:6.3f} "
              f"{s['flash_bytes']:9,d} {p['sram']:9,d} {s['arena_bytes']:7,d} {s['arena_bytes'] / p['sram']:6.3f} "
              f"{s['ram_bytes']:8,d} {'yes' if fits else 'NO':>5s} {p['ms']:8.3f} {run.instructions:11,.0f} {ratio}")
    print("\ninstructions per kernel kind (QEMU icount; instruction counts, not cycles)")
    kinds_seen = sorted({k for r in rows for k in r[7]})
    print(f"{'model':10s} {'dtype':7s} {'target':9s} " + " ".join(f"{k:>12s}" for k in kinds_seen))
    for name, dtype, tname, *_rest, kinds in rows:
        print(f"{name:10s} {dtype:7s} {tname:9s} " + " ".join(f"{kinds.get(k, 0):12,.0f}" for k in kinds_seen))
    print("\nint8 work (MACs or elements) per instruction, per kind")
    for tname, table in per_kind.items():
        print(f"{tname}: " + ", ".join(f"{k} {w / i:.3f}" for k, (w, i) in sorted(table.items()) if i))
    if args.calibration or args.write:
        print("\nqemu-icount calibration (fitted on these int8 runs; instructions read as cycles at the target clock)")
        for tname in TARGETS:
            t = hwopt.load_target(tname)
            text = calibration_table(t, per_kind[tname], 0.0)
            errs = []
            fitted = t.with_coefficients(tomllib.loads(text)["calibration"]["qemu-icount"], "qemu-icount")
            for name, dtype, tn, _t, _fw, run, _p, _k in rows:
                if tn == tname and dtype == "int8":
                    pred = fitted.cost(graphs_cache[name]).latency_ms
                    meas = run.instructions / (t.clock_mhz * 1e3)
                    errs.append(abs(pred - meas) / meas)
                    print(f"  {tname} {name}: predicted {pred:.3f} ms, instructions / clock {meas:.3f} ms")
            text = calibration_table(t, per_kind[tname], max(errs))
            print(f"\n# {tname}\n{text}")
            if args.write:
                write_table(tname, text)
    return 0


def calibration_table(t, table: dict, fit_error: float) -> str:
    base = t.calibration["cmsis-nn"]["kinds"]
    peak = t.peak_macs_per_cycle["int8"]
    lines = ["[calibration.qemu-icount]",
             'source = "bench/mcu.py: hwopt firmware (TVM-compiled int8 kernels) of the MNIST CNN and the DS-CNN run in '
             f'QEMU {"mps2-an386" if t.name == "cortex-m4" else "mps2-an500"} under -icount shift=0"',
             f'date = "{datetime.date.today().isoformat()}"',
             '"method" = "compute_eff per kind = work / (QEMU instructions x peak int8 MACs per cycle): INSTRUCTION COUNTS, '
             'NOT CYCLES (one instruction taken as one cycle); kinds with no kernel measured copy the cmsis-nn value; '
             'overhead 0 (call overhead is inside the counts)"',
             'schedules = "TVM 0.27 default lowering of hwopt.firmware int8 kernels (inlined padding and epilogues), no tuning"',
             # measured: instruction counts of hwopt's own firmware in QEMU, not cycles on a board
             'provenance = "measured"',
             f"samples = {len(MODELS)}",
             f"fit_error = {fit_error:.4f}",
             "soft_max_p = 4.0",
             "[calibration.qemu-icount.kinds]"]
    for k in KINDS:
        w, i = table.get(k, (0.0, 0.0))
        eff = w / (i * peak) if i and w else base[k]["compute_eff"]
        lines.append(f"{k:<11s} = {{ compute_eff = {eff:.6g}, memory_eff = 1.0, overhead_us = 0.0 }}")
    return "\n".join(lines).replace('"method"', "method") + "\n"


def write_table(tname: str, text: str) -> None:
    """Add (or replace) the table in the target's file; tomlio validates it and writes atomically."""
    from hwopt.targets.tomlio import update_runtime
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "targets", f"{tname}.toml")
    update_runtime(path, "qemu-icount", tomllib.loads(text)["calibration"]["qemu-icount"])


if __name__ == "__main__":
    sys.exit(main())
