"""MNIST: MorphNet vs a uniform width multiplier at equal predicted cortex-a72 latency, 3 seeds.

    OMP_WAIT_POLICY=PASSIVE python bench/morphnet.py            # 20k train, 10k val, 2 epochs, 3 seeds
    OMP_WAIT_POLICY=PASSIVE python bench/morphnet.py --smoke    # 5k train, 2k val, 1 epoch (~1-2 min)

Protocol (Gordon et al. 2018, sec. 5: MorphNet against the width-multiplier baseline at equal cost):
- baseline: ``hwopt.models.mnist_cnn(width=W)``; the budget B is its predicted latency on cortex-a72.
- uniform: that network, fresh init, trained ``--epochs`` epochs.
- morphnet: ``morphnet{resource=latency_ms,budget=B,epochs=S,retrain_epochs=E}`` started from the same
  network: shrink-training S epochs with the latency-weighted γ regulariser, expand to B (widths
  multiples of the target's channel multiple, latency <= B), then retrain from scratch E epochs — the
  same training budget as the uniform network gets (the S shrink epochs are the structure search, on
  top, as in the paper).
Both use the same Trainer (SGD momentum 0.9, cosine lr, batch 128) and the seed per run.
Prints accuracy mean ± std of both, per-layer widths and latencies.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import hwopt  # noqa: E402
from hwopt import data, models  # noqa: E402
from hwopt.lower import read_back  # noqa: E402
from hwopt.passes.morphnet import MorphNet, fresh_init, group_widths  # noqa: E402
from hwopt.passkit import resource_value  # noqa: E402
from hwopt.targets import load_target  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="small and quick (~1-2 min)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train", type=int, default=20000, help="training examples")
    ap.add_argument("--eval", type=int, default=10000, help="validation examples")
    ap.add_argument("--epochs", type=float, default=2.0, help="training epochs of both final networks")
    ap.add_argument("--shrink-epochs", type=float, default=1.0, help="MorphNet shrink-training epochs")
    ap.add_argument("--width", type=float, default=0.5, help="width multiplier of the baseline mnist_cnn")
    ap.add_argument("--strength", type=float, default=None,
                    help="λ × initial latency (the pass option strength is this / the budget); default 3, 10 with "
                         "--smoke (its shrink is 4x fewer steps: about the same total push on γ)")
    ap.add_argument("--threshold", type=float, default=0.05, help="|γ| under which a channel is removed")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--target", default="cortex-a72")
    args = ap.parse_args(argv)
    if args.smoke:
        args.train, args.eval, args.epochs, args.shrink_epochs = 5000, 2000, 1.0, 1.0
    if args.strength is None:
        args.strength = 10.0 if args.smoke else 3.0
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    T = load_target(args.target)
    x = torch.zeros(1, 1, 28, 28)
    base = hwopt.lift(models.mnist_cnn(width=args.width).eval(), x)
    budget = resource_value(base, "latency_ms", T)
    print(f"# MorphNet vs uniform width on MNIST ({args.train} train, {args.eval} val), target {T.name}, "
          f"budget = latency of mnist_cnn(width={args.width}) = {budget * 1e3:.2f} us; "
          f"epochs {args.epochs:g} (+{args.shrink_epochs:g} shrink for MorphNet, strength {args.strength:g}/budget, "
          f"threshold {args.threshold:g}), {args.seeds} seeds", flush=True)
    acc = {"uniform": [], "morphnet": []}
    lat = {"uniform": [], "morphnet": []}
    widths = {"uniform": group_widths(base), "morphnet": []}
    t0 = time.time()
    for seed in range(args.seeds):
        tr = data.mnist_trainer(args.train, eval_split="val", eval_limit=args.eval, lr=args.lr, seed=seed)
        # uniform width: the baseline from scratch
        torch.manual_seed(seed)
        module = hwopt.lower(fresh_init(base, torch.Generator().manual_seed(seed)))
        tr.train(module, epochs=args.epochs)
        acc["uniform"].append(tr.evaluate(module))
        lat["uniform"].append(budget)
        # morphnet from the same network
        torch.manual_seed(seed)
        start = read_back(base, hwopt.lower(fresh_init(base, torch.Generator().manual_seed(seed))))
        ctx = hwopt.PassContext(target=T, train=tr.train, evaluate=tr.evaluate, example_inputs=x, seed=seed)
        p = MorphNet(resource="latency_ms", budget=budget, epochs=args.shrink_epochs, retrain_epochs=args.epochs,
                     strength=args.strength / budget, threshold=args.threshold, iterations=1)
        out = hwopt.PassManager([p]).run(start, ctx)
        acc["morphnet"].append(tr.evaluate(hwopt.lower(out)))
        lat["morphnet"].append(resource_value(out, "latency_ms", T))
        rep = ctx.records[-1]["info"]
        widths["morphnet"].append((rep["after_shrink"], rep["after_expand"]))
        print(f"seed {seed}: uniform {acc['uniform'][-1]:.4f}  morphnet {acc['morphnet'][-1]:.4f}  "
              f"(shrunk {list(rep['after_shrink'].values())} -> expanded {list(rep['after_expand'].values())}, "
              f"latency {lat['morphnet'][-1] * 1e3:.2f} us <= {budget * 1e3:.2f} us)  [{time.time() - t0:.0f}s]", flush=True)

    def ms(v):
        return f"{statistics.mean(v) * 100:.2f} ± {(statistics.stdev(v) if len(v) > 1 else 0.0) * 100:.2f} %"
    print()
    print(f"{'':10s} {'accuracy (mean ± std)':>24s} {'latency us':>11s}  per-layer widths")
    print(f"{'uniform':10s} {ms(acc['uniform']):>24s} {statistics.mean(lat['uniform']) * 1e3:11.2f}  "
          f"{list(widths['uniform'].values())}")
    print(f"{'morphnet':10s} {ms(acc['morphnet']):>24s} {statistics.mean(lat['morphnet']) * 1e3:11.2f}  "
          f"{[list(w[1].values()) for w in widths['morphnet']]}")
    gap = statistics.mean(acc["morphnet"]) - statistics.mean(acc["uniform"])
    print(f"# morphnet - uniform: {gap * 100:+.2f} pts ({'ahead' if gap > 0 else 'behind'}); layers "
          f"{list(widths['uniform'])}; {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
