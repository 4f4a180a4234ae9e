"""MorphNet with its default options vs a uniform width multiplier at equal predicted cortex-a72 latency,
on MNIST and on scikit-learn's digits (8x8), several seeds.

    OMP_WAIT_POLICY=PASSIVE python bench/morphnet.py            # both datasets, 3 seeds (see the log below)
    OMP_WAIT_POLICY=PASSIVE python bench/morphnet.py --smoke    # small subsets, 1 seed (~1 min)
    ... --datasets digits --seeds 5                             # one dataset, more seeds

Protocol (Gordon et al. 2018, sec. 5: MorphNet against the width-multiplier baseline at equal cost):
- baseline: the dataset's CNN at width multiplier W (MNIST: ``hwopt.models.mnist_cnn``; digits: the same
  three conv-BN layers sized for 8x8 inputs, `digits_cnn` below); the budget B is its predicted latency on
  cortex-a72.
- uniform: that network, fresh init, trained E epochs.
- morphnet: ``morphnet{resource=latency_ms,budget=B,epochs=S,retrain_epochs=E}``, every other option at its
  default (λ from the loss scale, the shrink stopped at half the budget by |γ| order, expand to B, retrain
  from scratch), started from the same fresh network: shrink-training S epochs, then the same E epochs
  of training as the uniform network gets (the S shrink epochs are the structure search, on top, as in
  the paper).
Both use hwopt's Trainer (SGD momentum 0.9, cosine lr, batch 128) and the seed of the run. Accuracy is
read on the test split, once per network; nothing in the protocol is chosen on it (the pass reads no
held-out data; the bench's W, S, E were set on the validation split, which is printed as well).
Prints accuracy mean ± std over seeds, the gap, the λ the pass chose, widths and latencies.

Measured (2026-12-01, the defaults of this commit, a loaded 2-core machine; test accuracy, 3 seeds):
    MNIST  (width 0.5 = [8, 16, 32], 263 us; 2 epochs on 20k)  uniform 97.40 ± 0.08 %, morphnet 98.01 ± 0.17 %:
           +0.62 pt (per seed +0.72 / +0.63 / +0.50), widths [4, 40, 88] / [4, 36, 124] / [4, 40, 88], λ 8.28;
           944 s.  The goal of issue 20, +1 pt, is not met. For scale: the uniform net at width 1.0, 2.15x the
           latency (566 us), reaches 98.18 % with the same training (seed 0): +1 pt, 98.40 %, would beat it.
    digits (width 0.5, 76.5 us; 30 epochs on 1,000)            uniform 98.00 ± 0.50 %, morphnet 98.08 ± 0.52 %:
           +0.08 pt (per seed 0.00 / -0.25 / +0.50; 400 test images, 1 image = 0.25 pt), λ 31.5; 221 s.
    Also tried on digits: width 0.25 (the first layer is already at cortex-a72's 4-channel step, so only
    layers 2 and 3 can trade): -0.17 pt; width 0.5 with 10 + 5 epochs: -0.08 pt (seed spread 1.2 pt).
    The latency model makes the first conv (full resolution) ~7x (MNIST) / ~6x (digits) as costly per
    channel as the second and ~100x the third: MorphNet cuts it to the 4-channel floor and widens the
    rest, which on MNIST wins 0.6 pt; on digits the uniform net already reaches 98.0 % and the
    reallocation's effect is within the seed noise.
Commands: `OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/morphnet.py --datasets mnist` and `... --datasets digits`.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import hwopt  # noqa: E402
from hwopt import data, models  # noqa: E402
from hwopt.lower import read_back  # noqa: E402
from hwopt.passes.morphnet import MorphNet, fresh_init, group_widths  # noqa: E402
from hwopt.passkit import resource_value  # noqa: E402
from hwopt.targets import load_target  # noqa: E402


def digits_cnn(width: float = 1.0, num_classes: int = 10) -> nn.Module:
    """mnist_cnn's three conv-BN-ReLU layers for 8x8 digits: two at 8x8, max-pool, one stride 2 (2x2 out)."""
    c1, c2, c3 = (max(1, round(c * width)) for c in (16, 32, 64))

    def cbr(cin, cout, stride=1):
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*cbr(1, c1), *cbr(c1, c2), nn.MaxPool2d(2), *cbr(c2, c3, 2), nn.Flatten(),
                         nn.Linear(c3 * 2 * 2, num_classes))


def digits_splits():
    """scikit-learn's digits (1,797 8x8 images, bundled with the package: offline), standardised, split
    once by a fixed permutation: 1,000 train, 397 validation, 400 test."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise SystemExit(f"bench/morphnet.py --datasets digits needs scikit-learn (the dev extra: pip install -e '.[dev]'): {e}")
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - x[:1000].mean()) / x[:1000].std()
    y = torch.tensor(d.target, dtype=torch.long)
    p = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[p], y[p]
    return (x[:1000], y[:1000]), (x[1000:1397], y[1000:1397]), (x[1397:], y[1397:])


DATASETS = {
    # name: (model(width), input shape, default width, epochs, shrink epochs, lr)
    "mnist": (models.mnist_cnn, (1, 28, 28), 0.5, 2.0, 1.0, 0.05),
    "digits": (digits_cnn, (1, 8, 8), 0.5, 30.0, 15.0, 0.05),
}


def splits(name: str, args):
    if name == "digits":
        return digits_splits()
    return (data.mnist("train", args.train), data.mnist("val", args.eval), data.mnist("test", args.test))


def run_dataset(name: str, args, T) -> dict:
    make, shape, width, epochs, shrink_epochs, lr = DATASETS[name]
    width = args.width or width
    epochs = args.epochs or epochs
    shrink_epochs = args.shrink_epochs or shrink_epochs
    if args.smoke:
        epochs, shrink_epochs = max(1.0, epochs / 4), max(1.0, shrink_epochs / 4)
    (xt, yt), (xv, yv), (xs, ys) = splits(name, args)
    x = torch.zeros(1, *shape)
    base = hwopt.lift(make(width=width).eval(), x)
    budget = resource_value(base, "latency_ms", T)
    print(f"\n# {name}: {len(yt)} train, {len(yv)} val, {len(ys)} test; budget = latency of the width-{width:g} "
          f"net on {T.name} = {budget * 1e3:.2f} us; {epochs:g} epochs (+{shrink_epochs:g} shrink for MorphNet), "
          f"{args.seeds} seeds", flush=True)
    res = {k: {"test": [], "val": [], "lat": []} for k in ("uniform", "morphnet")}
    lams, expanded = [], []
    tester = data.Trainer(xs[:1], ys[:1], xs, ys)
    t0 = time.time()
    for seed in range(args.seeds):
        tr = data.Trainer(xt, yt, xv, yv, lr=lr, seed=seed)
        torch.manual_seed(seed)
        uniform = hwopt.lower(fresh_init(base, torch.Generator().manual_seed(seed)))
        tr.train(uniform, epochs=epochs)
        torch.manual_seed(seed)
        start = read_back(base, hwopt.lower(fresh_init(base, torch.Generator().manual_seed(seed))))
        ctx = hwopt.PassContext(target=T, train=tr.train, example_inputs=x, seed=seed)
        p = MorphNet(resource="latency_ms", budget=budget, epochs=shrink_epochs, retrain_epochs=epochs)
        out = hwopt.PassManager([p]).run(start, ctx)
        rep = ctx.records[-1]["info"]
        morph = hwopt.lower(out)
        for k, m, lat in (("uniform", uniform, budget), ("morphnet", morph, resource_value(out, "latency_ms", T))):
            res[k]["test"].append(tester.evaluate(m))
            res[k]["val"].append(tr.evaluate(m))
            res[k]["lat"].append(lat)
        lams.append(rep["strength"][-1])
        expanded.append(list(rep["after_expand"].values()))
        print(f"seed {seed}: test uniform {res['uniform']['test'][-1]:.4f} morphnet {res['morphnet']['test'][-1]:.4f} "
              f"(val {res['uniform']['val'][-1]:.4f} / {res['morphnet']['val'][-1]:.4f}); λ {lams[-1]:.4g}; "
              f"shrunk {list(rep['after_shrink'].values())} -> {expanded[-1]}, latency "
              f"{res['morphnet']['lat'][-1] * 1e3:.2f} <= {budget * 1e3:.2f} us  [{time.time() - t0:.0f}s]", flush=True)

    def ms(v):
        return f"{statistics.mean(v) * 100:.2f} ± {(statistics.stdev(v) if len(v) > 1 else 0.0) * 100:.2f}"
    gaps = [m - u for m, u in zip(res["morphnet"]["test"], res["uniform"]["test"])]
    print(f"{'':10s} {'test acc % (mean ± std)':>24s} {'val acc %':>16s} {'latency us':>11s}  widths")
    print(f"{'uniform':10s} {ms(res['uniform']['test']):>24s} {ms(res['uniform']['val']):>16s} "
          f"{budget * 1e3:11.2f}  {list(group_widths(base).values())}")
    print(f"{'morphnet':10s} {ms(res['morphnet']['test']):>24s} {ms(res['morphnet']['val']):>16s} "
          f"{statistics.mean(res['morphnet']['lat']) * 1e3:11.2f}  {expanded}")
    gap = statistics.mean(gaps)
    spread = statistics.stdev(gaps) if len(gaps) > 1 else 0.0
    print(f"# {name}: morphnet - uniform (test): {gap * 100:+.2f} pts (per seed "
          f"{' / '.join(f'{100 * d:+.2f}' for d in gaps)}, std {100 * spread:.2f}); goal +1 pt: "
          f"{'met' if gap >= 0.01 else 'NOT met'}; λ chosen {', '.join(f'{v:.3g}' for v in lams)}; "
          f"{time.time() - t0:.0f}s", flush=True)
    return {"gap": gap, "spread": spread}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="small subsets, 1 seed, a quarter of the epochs")
    ap.add_argument("--datasets", default="mnist,digits")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train", type=int, default=20000, help="MNIST training examples")
    ap.add_argument("--eval", type=int, default=10000, help="MNIST validation examples")
    ap.add_argument("--test", type=int, default=10000, help="MNIST test examples")
    ap.add_argument("--epochs", type=float, help="training epochs of both final networks (default per dataset)")
    ap.add_argument("--shrink-epochs", type=float, help="MorphNet shrink-training epochs (default per dataset)")
    ap.add_argument("--width", type=float, help="width multiplier of the baseline net (default per dataset)")
    ap.add_argument("--target", default="cortex-a72")
    args = ap.parse_args(argv)
    if args.smoke:
        args.train, args.eval, args.test, args.seeds = 5000, 2000, 2000, 1
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    T = load_target(args.target)
    for name in args.datasets.split(","):
        if name not in DATASETS:
            ap.error(f"--datasets: unknown {name!r} (known: {', '.join(DATASETS)})")
        run_dataset(name, args, T)
    return 0


if __name__ == "__main__":
    sys.exit(main())
