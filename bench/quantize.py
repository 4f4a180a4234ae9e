"""int8 quantization (the quantize pass) against float32: test accuracy of the MNIST CNN and the DS-CNN.

Each model is trained in float32, then quantized post-training (per-channel symmetric weights,
per-tensor activations calibrated on `--calib-batches` training batches, BN folded, CMSIS-NN
requantization) and, beside it, with quantization-aware fine-tuning (`--qat-epochs` of training through
fake quantization, then the same conversion). Accuracy of the int8 graphs is measured with
`hwopt.lower(int8 graph)`, which computes the device's integers (the firmware is bit-exact with it,
tests/test_firmware.py). Goal: PTQ loses <= 0.5 points.

No keyword-spotting data set is available offline (Speech Commands is a download), so the DS-CNN is
trained and tested on MNIST digits resampled to its 49x10 MFCC input shape: the architecture's
quantization loss is measured on a real trained network, not on keyword audio.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/quantize.py            # ~12 min on 2 busy cores: MNIST CNN 98.75 -> 98.76 (PTQ), DS-CNN 96.55 -> 96.51
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/quantize.py --smoke    # ~2 min, small data
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

import hwopt
import hwopt.passes  # noqa: F401 - registers the quantize pass
from hwopt import data, models


def _resample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=(49, 10), mode="bilinear", align_corners=False)


def run(name: str, trainer: data.Trainer, epochs: float, calib_batches: int, qat_epochs: float, seed: int) -> dict:
    torch.manual_seed(seed)
    model = models.get(name, num_classes=10)
    t0 = time.perf_counter()
    trainer.train(model, epochs=epochs)
    model.eval()
    shape = (1,) + tuple(trainer.x_train.shape[1:])
    g = hwopt.lift(model, torch.zeros(shape))
    float_acc = trainer.evaluate(hwopt.lower(g))
    bs = trainer.batch_size
    calib = [(trainer.x_train[i * bs:(i + 1) * bs], None) for i in range(calib_batches)]
    ptq = hwopt.PassManager.parse(f"quantize{{batches={calib_batches}}}").run(g, hwopt.PassContext(data=calib))
    ptq_acc = trainer.evaluate(hwopt.lower(ptq))
    qat_acc = float("nan")
    if qat_epochs > 0:
        ctx = hwopt.PassContext(data=calib, train=lambda m, epochs=1.0, **kw: trainer.train(m, epochs=epochs, lr=trainer.lr / 10))
        qat = hwopt.PassManager.parse(f"quantize{{batches={calib_batches},qat_epochs={qat_epochs}}}").run(g, ctx)
        qat_acc = trainer.evaluate(hwopt.lower(qat))
    return {"model": name, "float": float_acc, "ptq": ptq_acc, "qat": qat_acc, "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="5k training images, 2k test images")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--calib-batches", type=int, default=8)
    ap.add_argument("--qat-epochs", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    train_limit, test_limit = (5000, 2000) if a.smoke else (None, None)
    epochs = 1.0 if a.smoke else a.epochs
    mnist_tr = data.mnist_trainer(train_limit, "test", test_limit, seed=a.seed, lr=0.05, batch_size=64)
    kws_tr = data.Trainer(_resample(mnist_tr.x_train), mnist_tr.y_train, _resample(mnist_tr.x_eval), mnist_tr.y_eval,
                          seed=a.seed, lr=0.05, batch_size=64)
    rows = [run("mnist_cnn", mnist_tr, epochs, a.calib_batches, a.qat_epochs, a.seed),
            run("ds_cnn", kws_tr, epochs, a.calib_batches, a.qat_epochs, a.seed)]
    n_test = len(mnist_tr.x_eval)
    print(f"int8 quantization vs float32: test accuracy (%) on {n_test} MNIST test images "
          f"(DS-CNN: digits resampled to 49x10), {epochs:g} float epochs, {a.calib_batches} calibration batches, "
          f"QAT {a.qat_epochs:g} epochs")
    print(f"{'model':10s} {'float32':>8s} {'int8 PTQ':>9s} {'PTQ-float':>10s} {'int8 QAT':>9s} {'QAT-float':>10s} {'<=0.5pt':>8s}")
    ok = True
    for r in rows:
        d_ptq, d_qat = 100 * (r["ptq"] - r["float"]), 100 * (r["qat"] - r["float"])
        ok &= d_ptq >= -0.5
        print(f"{r['model']:10s} {100 * r['float']:8.2f} {100 * r['ptq']:9.2f} {d_ptq:+10.2f} {100 * r['qat']:9.2f} "
              f"{d_qat:+10.2f} {'yes' if d_ptq >= -0.5 else 'NO':>8s}")
    print("int8 accuracy is hwopt.lower(int8 graph)'s: the device's integer arithmetic (CMSIS-NN requantization)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
