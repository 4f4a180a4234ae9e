"""Reproduce Han, Pool, Tran, Dally 2015 (Table 1) on MNIST with hwopt's magnitude-prune, and compare
Optimal Brain Damage (LeCun et al. 1989) with magnitude pruning at equal sparsity.

    OMP_WAIT_POLICY=PASSIVE python bench/han2015.py            # full: 50k train, 10k test (~20-25 min on 2 cores)
    OMP_WAIT_POLICY=PASSIVE python bench/han2015.py --quick    # shorter training (~5 min)
    OMP_WAIT_POLICY=PASSIVE python bench/han2015.py --smoke    # small subsets (~1 min), for CI

Protocol: train the unpruned net (SGD + momentum, cosine schedule, L2), then `magnitude-prune` with a
sparsity target: per-layer fractions come from a sensitivity scan on the *validation* split (the
paper's Figure 2, written as PNG), iterative prune → retrain with the masks fixed and the same L2, and
dead neurons removed. Test error is measured on the 10k test split, before and after; "weights" counts
every parameter (weights + biases) as the paper's Table 1 does, after = non-zero.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: 2-core machines train 3-4x slower without it

import argparse
import sys
import time

import torch

import hwopt
from hwopt import data, models
from hwopt import sparse as sp
from hwopt.passes.magnitude_prune import MagnitudePrune
from hwopt.passes.obd import OptimalBrainDamage

PAPER = {"lenet_300_100": dict(before=267_000, after=22_000, x=12, err0=1.64, err1=1.59),
         "lenet5": dict(before=431_000, after=36_000, x=12, err0=0.80, err1=0.77)}

# per mode: train examples, val examples (scan), test examples, and per model: (lr, baseline epochs,
# prune iterations, retrain epochs per iteration), OBD-comparison retrain (iterations, epochs)
MODES = {
    "smoke": dict(train=5000, val=1000, test=2000, obd_models=("lenet_300_100",), obd_sparsities=(0.9,),
                  lenet_300_100=(0.1, 3, 2, 1.0), lenet5=(0.01, 1, 2, 0.5), obd=(1, 0.5)),
    "quick": dict(train=None, val=5000, test=None, obd_models=("lenet_300_100",), obd_sparsities=(0.8, 0.9, 0.95),
                  lenet_300_100=(0.1, 10, 3, 2.0), lenet5=(0.01, 4, 3, 1.0), obd=(2, 1.0)),
    "full": dict(train=None, val=5000, test=None, obd_models=("lenet_300_100", "lenet5"), obd_sparsities=(0.8, 0.9, 0.95),
                 lenet_300_100=(0.1, 30, 4, 4.0), lenet5=(0.01, 15, 4, 3.0), obd=(2, 2.0)),
}
L2 = 1e-4


def sparsity_for(graph, names, target_nonzero: float) -> float:
    """Weight sparsity over `names` that leaves `target_nonzero` non-zero parameters in all (biases count)."""
    total = graph.stats()["params"]
    w = sum(graph[n].params["weight"].numel() for n in names)
    keep = target_nonzero - (total - w)
    return min(0.999, max(0.0, 1.0 - keep / w))


def run_model(name, cfg, args, xtest, ytest, out):
    lr, epochs, iters, retrain = cfg[name]
    iters = args.iterations or iters
    retrain = args.retrain_epochs or retrain
    tr = data.Trainer(*data.mnist("train", cfg["train"]), *data.mnist("val", cfg["val"]), lr=lr, seed=args.seed)
    tester = data.Trainer(xtest[:1], ytest[:1], xtest, ytest)
    torch.manual_seed(args.seed)
    model = models.get(name)
    t0 = time.perf_counter()
    tr.train(model, epochs=epochs, penalty=sp.l2_penalty(L2))
    t_train = time.perf_counter() - t0
    g = hwopt.lift(model, torch.zeros(1, 1, 28, 28))
    err0 = 1 - tester.evaluate(hwopt.lower(g))
    s0 = g.stats()
    print(f"\n[{name}] baseline: {epochs} epochs in {t_train:.0f}s, test error {100 * err0:.2f} %")
    retrain_lr = lr * args.retrain_lr_scale
    ctx = hwopt.PassContext(train=lambda m, *, epochs=1.0, penalty=None: tr.train(m, epochs=epochs, penalty=penalty, lr=retrain_lr),
                            evaluate=tr.evaluate, seed=args.seed,
                            data=[(tr.x_train[i:i + 256], tr.y_train[i:i + 256]) for i in range(0, 4096, 256)])
    gp, first = g, True
    # stage 1 reaches the first target from the dense net; later stages continue from the pruned one
    for comp in args.compression:
        names = sp.prunable_layers(gp)
        target = sparsity_for(gp, names, s0["params"] / comp)
        p = MagnitudePrune(sparsity=round(target, 5), iterations=iters if first else max(1, iters // 2),
                           retrain_epochs=retrain, l2=L2,
                           plot=os.path.join(args.out, f"sensitivity_{name}.png") if first else "")
        t0 = time.perf_counter()
        plan = p.plan(gp, ctx)
        before = gp
        gp = p.apply(gp, ctx, plan)
        t_prune = time.perf_counter() - t0
        err1 = 1 - tester.evaluate(hwopt.lower(gp))
        s1 = gp.stats()
        print(f"  stage -> {comp:g}x: {p}  ({t_prune:.0f}s)")
        print(f"  {'layer':8s} {'op':7s} {'weights':>9s} {'kept %':>7s}   (scan on val: acc@0 = {100 * (plan.baseline or 0):.2f} %)")
        for n in names:
            w = g[n].params["weight"].numel()
            kept = int(torch.count_nonzero(sp.effective_weight(gp[n])))
            print(f"  {n:8s} {g[n].op:7s} {w:9,d} {100 * kept / w:6.1f}%   shape now {tuple(gp[n].params['weight'].shape)}")
        fl0, fl1 = sp.flash_bytes(g, 32), sp.flash_bytes(gp, 32)
        fl8 = sp.flash_bytes(gp, 8)
        print(f"  flash fp32: {fl0:,} B dense -> {fl1:,} B relative-index sparse ({fl0 / fl1:.1f}x); int8 values: {fl8:,} B")
        print(f"  test error {100 * err0:.2f} % -> {100 * err1:.2f} %, {s0['params'] / s1['nonzero_params']:.1f}x")
        sys.stdout.flush()
        out.append(dict(model=name, before=s0["params"], after=s1["nonzero_params"], x=s0["params"] / s1["nonzero_params"],
                        err0=100 * err0, err1=100 * err1, g=g, tr=tr, tester=tester, first=first))
        first = False
    return out


def obd_vs_magnitude(res, cfg, args):
    from hwopt import sensitivity as sens
    from hwopt.passes.magnitude_prune import Plan
    g, tr, tester = res["g"], res["tr"], res["tester"]
    iters, ep = cfg["obd"]
    retrain_lr = tr.lr * args.retrain_lr_scale
    ctx = hwopt.PassContext(train=lambda m, *, epochs=1.0, penalty=None: tr.train(m, epochs=epochs, penalty=penalty, lr=retrain_lr),
                            evaluate=tr.evaluate, seed=args.seed,
                            data=[(tr.x_train[i:i + 256], tr.y_train[i:i + 256]) for i in range(0, 4096, 256)])
    names = sp.prunable_layers(g)
    sizes = {k: g[k].params["weight"].numel() for k in names}
    scan = MagnitudePrune(sparsity=0.9, retrain_epochs=0).plan(g, ctx).scan  # one scan serves every sparsity
    rows = []
    for s in cfg["obd_sparsities"]:
        row = {"s": s}
        plan = Plan(sens.allocate_sparsity(scan, sizes, s), scan)
        for r in (False, True):
            mp = MagnitudePrune(sparsity=s, iterations=iters if r else 1, retrain_epochs=ep if r else 0, l2=L2)
            gm = mp.apply(g, ctx, plan)
            row[("magnitude", r)] = 100 * (1 - tester.evaluate(hwopt.lower(gm)))
            ob = OptimalBrainDamage(sparsity=s, iterations=iters if r else 1, retrain_epochs=ep if r else 0, l2=L2)
            go = ob.run(g, ctx)
            row[("obd", r)] = 100 * (1 - tester.evaluate(hwopt.lower(go)))
            row[("nz", r)] = (gm.stats()["nonzero_params"], go.stats()["nonzero_params"])
        rows.append(row)
    print(f"\n[{res['model']}] OBD (Gauss-Newton diagonal, global ranking) vs magnitude (sensitivity-allocated), "
          f"test error %, baseline {res['err0']:.2f} %; retrained = {iters}x{ep} epochs; dead units removed in both")
    print(f"  {'sparsity':>8s} | {'mag one-shot':>12s} {'OBD one-shot':>12s} | {'mag retrained':>13s} {'OBD retrained':>13s}"
          f" | non-zero params mag / OBD")
    for row in rows:
        print(f"  {100 * row['s']:7.0f}% | {row[('magnitude', False)]:12.2f} {row[('obd', False)]:12.2f} | "
              f"{row[('magnitude', True)]:13.2f} {row[('obd', True)]:13.2f} | {row[('nz', True)][0]:,} / {row[('nz', True)][1]:,}")
        sys.stdout.flush()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="small subsets, ~1 min")
    mode.add_argument("--quick", action="store_true", help="full data, short training, ~5 min")
    ap.add_argument("--compression", type=float, nargs="+", default=[12.0, 15.0],
                    help="target compression(s) x = params / non-zero; each later one continues from the previous")
    ap.add_argument("--models", default="lenet_300_100,lenet5")
    ap.add_argument("--no-obd", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retrain-lr-scale", type=float, default=1.0,
                    help="retraining learning rate as a fraction of the training one")
    ap.add_argument("--iterations", type=int, help="prune -> retrain rounds (default: per mode and model)")
    ap.add_argument("--retrain-epochs", type=float, help="epochs per retraining round (default: per mode and model)")
    ap.add_argument("--out", default="/tmp/hwopt_han2015", help="where the sensitivity PNGs go")
    args = ap.parse_args(argv)
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    cfg = MODES[name]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t_start = time.perf_counter()
    print(f"han2015 bench, mode={name}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"targets {args.compression}x")
    xtest, ytest = data.mnist("test", cfg["test"])
    results = []
    for m in args.models.split(","):
        run_model(m, cfg, args, xtest, ytest, results)
        sys.stdout.flush()
    print(f"\nHan et al. 2015, Table 1 — ours (mode={name}, test split {len(xtest)} images) vs the paper")
    print(f"  {'network':15s} {'weights':>9s} {'after':>8s} {'compr.':>7s} {'err before':>10s} {'err after':>9s}"
          f" | {'paper':>25s}")
    for r in results:
        pp = PAPER[r["model"]]
        print(f"  {r['model']:15s} {r['before']:9,d} {r['after']:8,d} {r['x']:6.1f}x {r['err0']:9.2f}% {r['err1']:8.2f}%"
              f" | {pp['before'] // 1000}K->{pp['after'] // 1000}K {pp['x']}x {pp['err0']:.2f}%->{pp['err1']:.2f}%")
    if not args.no_obd:
        for r in results:
            if r["model"] in cfg["obd_models"] and r["first"]:
                obd_vs_magnitude(r, cfg, args)
    print(f"\nsensitivity curves: {args.out}/sensitivity_*.png")
    print(f"runtime: {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
