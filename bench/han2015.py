"""Reproduce Han, Pool, Tran, Dally 2015 (Table 1) on MNIST with hwopt's magnitude-prune, and compare
Optimal Brain Damage (LeCun et al. 1989) with magnitude pruning at equal sparsity.

    OMP_WAIT_POLICY=PASSIVE python bench/han2015.py            # full: 50k train, 10k test (~47 min, 1 thread)
    OMP_WAIT_POLICY=PASSIVE python bench/han2015.py --quick    # shorter training (522 s on 2 threads, OBD and KD included)
    OMP_WAIT_POLICY=PASSIVE python bench/han2015.py --smoke    # small subsets (~1 min), for CI
    ... --seeds 0,1,2                                           # one run per seed, then a seed-mean summary
    ... --seed 2 --save s2.json; ... --summarize s01.json s2.json  # seeds run in separate processes, merged
    ... --models lenet_300_100 --no-han --no-obd --seed 2 --save a2.json  # the allocation table only

Protocol, the same for both networks (no per-network tuning; choices made on the validation split or by
the paper; the comparisons read off the test split before the selection split was printed are listed in
the results log):
- unpruned net: SGD, momentum 0.9, batch 128, one cosine schedule to 0, L2 5e-4 (the weight decay of
  Caffe's LeNet solvers, which the paper used); LeNet-300-100 lr 0.1 for 30 epochs, LeNet-5 lr 0.01
  for 15.
- `magnitude-prune` with the sparsity that gives the compression target (all parameters counted):
  per-layer fractions from a sensitivity scan on the *validation* split (the paper's Figure 2, written
  as PNG; it runs only for the OBD and allocation comparisons now), turned into fractions by the pass's
  default `allocation=auto`: with retraining, as here, one global magnitude threshold (until 2026-12-01
  the bench used min-drop: the rows in bench/results/han2015/ before then are min-drop's); then
  4 prune → retrain rounds, masks fixed, the same L2; every round retrains at the training lr with a
  cosine to 0 and a *fresh* minibatch order, and the last round 4x longer than the others (16 epochs
  for LeNet-300-100, 12 for LeNet-5: the paper retrains to convergence after the final pruning step),
  whose last step is kept (--keep-best: the epoch with the best validation accuracy instead,
  --final-cycles: the round as cosine cycles with warm restarts, --final-average: ending on their mean,
  --schedule cubic: Zhu & Gupta's pruning schedule; all measured, none kept); dead neurons removed.
  The 15x stage continues from the 12x net with as many rounds as the first (4: 4 + 4 + 4 + 16 epochs;
  until 2026-12-01 half as many, 2), each pruning the same share of the 12x survivors (the pass's
  geometric schedule from the incoming sparsity; until 2026-12-01 its first round pruned nothing and its
  last the whole 12x -> 15x step, one-shot); --later-iterations sets the rounds. Both chosen on the
  validation split, 2 seeds (results README, "15x"). --cache DIR keeps the unpruned nets and the
  stages, so that a variant of the 15x stage reruns that stage only.
- "Han+KD" rows (extra, not the paper's method; --no-kd skips them): the same, the retraining loss
  distilled from the unpruned net (T = 4, 0.9 soft).
- allocation table (issue 20; --no-allocations skips it), LeNet-300-100: from the same unpruned net, test
  error at 80 / 90 / 95 % sparsity, one-shot and after the OBD comparison's short retraining, of one global
  magnitude threshold (torch.nn.utils.prune.global_unstructured's rule), equal-drop, min-drop and the
  default (auto); the goal is the default <= the global threshold in every column. --no-han skips the
  pruning stages (Table 1 rows) and runs the comparisons on the unpruned nets only.
Test error is measured on the 10k test split, before and after; "weights" counts every parameter
(weights + biases) as the paper's Table 1 does, after = non-zero. A single run's test error moves by
±0.1 pt (~10 images) from seed to seed and even with the thread count (run with --seed).

Every measurement behind the protocol and the results, with the saved rows (`--summarize` them) and
the commands: bench/results/han2015/README.md. In short (12x, 2026-11-24; Δ = misclassified test
images after minus before, mean over seeds; the goal is Δ <= 0):
    LeNet-300-100  Han     12 seeds  1.445 % -> 1.448 %  mean +0.3  (5/12 seeds <= 0)   paper 1.64 -> 1.59 %
    LeNet-5        Han      9 seeds  0.924 % -> 0.923 %  mean -0.1  (4/9 seeds <= 0)     paper 0.80 -> 0.77 %
                   Han+KD   9 seeds  0.924 % -> 0.909 %  mean -1.6  (6/9)
15x (2026-12-02, the global allocation, 4 rounds from the 12x net, each a quarter of the step):
    LeNet-300-100  Han     12 seeds  1.466 % -> 1.453 %  mean -1.2  (8/12 seeds <= 0, s.e. 2.9; val +1.3, s.e. 2.5)
    LeNet-5        Han      6 seeds  0.905 % -> 0.895 %  mean -1.0  (3/6, s.e. 2.9; val -7.5, s.e. 3.1)
    (12x with the same protocol, same runs: LeNet-300-100 -4.1, LeNet-5 -1.5 images.)
On the validation split (10k) LeNet-300-100's mean Δ is -2.7 images: at 12x both nets are at their
unpruned error; a seed's Δ spreads by ~7 images (s.e. of a 12-seed mean: 2.1).
The protocol choices are made on the selection split (val[5000:], "Δ sel"), which nothing trains,
scans or picks checkpoints on, or on the whole validation split ("Δ val") for variants that differ only
after the scan; the test split only reports.
Allocation table (LeNet-300-100, seeds 0-5, test error % at 80 / 90 / 95 %): one-shot, global threshold
2.27 / 3.52 / 13.26, default 2.26 / 3.42 / 12.91 (never worse on any seed); retrained 2x2 epochs, both
1.45 / 1.49 / 1.61 (the default is the global threshold when retraining follows).
OBD vs magnitude (seed 0), test error % after 2x2 retraining epochs at 80 / 90 / 95 % sparsity: LeNet-300-100
magnitude 1.53 / 1.62 / 1.65, OBD 1.51 / 1.66 / 2.17; LeNet-5 magnitude 0.97 / 0.98 / 1.08, OBD 1.03 / 1.04 /
1.38 (one-shot, no retraining, OBD is far worse: 10.6 % vs 3.8 % at 90 % on LeNet-300-100).
Runtime (1 thread, two processes at once on the 2-core machine): LeNet-300-100 75-95 s per seed at 12x
(--no-kd --no-obd); LeNet-5 ~1,370 s per seed with the Han+KD rows (baseline 325 s); the full default run,
both networks, 12x and 15x, OBD included, took 2,790 s on a loaded machine (seed 0).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: 2-core machines train 3-4x slower without it

import argparse
import copy
import dataclasses
import json
import sys
import time

import torch

import hwopt
from hwopt import data, models
from hwopt.fileio import atomic_write
from hwopt import sparse as sp
from hwopt.passkit import l2_penalty  # noqa: E402
from hwopt.passes.magnitude_prune import MagnitudePrune
from hwopt.passes.obd import OptimalBrainDamage

PAPER = {"lenet_300_100": dict(before=267_000, after=22_000, x=12, err0=1.64, err1=1.59),
         "lenet5": dict(before=431_000, after=36_000, x=12, err0=0.80, err1=0.77)}

L2 = 5e-4  # Caffe's LeNet solvers (the paper's); for training and retraining alike
FINAL_300, FINAL_5 = 16.0, 12.0  # last retraining round: 4x a regular one
ALLOCATION = "auto"  # the pass default: with retraining, one global threshold; one-shot, the best of three on val
SCHEDULE, FINAL_AVERAGE = "geometric", False
FINAL_CYCLES, KEEP_BEST, FINAL_EVAL_EVERY = 1, False, 1.0  # last round: one cosine, its last step (--keep-best: best epoch on val)
KD_T, KD_ALPHA = 4.0, 0.9  # distillation temperature and weight of the soft targets (Hinton et al. 2015's usual)

# per mode: train examples, val examples (scan), test examples, and per model: (lr, baseline epochs,
# prune iterations, retrain epochs per iteration, retrain epochs of the last round), OBD-comparison
# retrain (iterations, epochs)
MODES = {
    "smoke": dict(train=5000, val=1000, test=2000, obd_models=("lenet_300_100",), obd_sparsities=(0.9,),
                  lenet_300_100=(0.1, 3, 2, 1.0, 2.0), lenet5=(0.01, 1, 2, 0.5, 1.0), obd=(1, 0.5)),
    "quick": dict(train=None, val=5000, test=None, obd_models=("lenet_300_100",), obd_sparsities=(0.8, 0.9, 0.95),
                  lenet_300_100=(0.1, 10, 3, 2.0, 8.0), lenet5=(0.01, 4, 3, 1.0, 4.0), obd=(2, 1.0)),
    "full": dict(train=None, val=5000, test=None, obd_models=("lenet_300_100", "lenet5"), obd_sparsities=(0.8, 0.9, 0.95),
                 lenet_300_100=(0.1, 30, 4, 4.0, FINAL_300), lenet5=(0.01, 15, 4, 3.0, FINAL_5), obd=(2, 2.0)),
}


def sparsity_for(graph, names, target_nonzero: float) -> float:
    """Weight sparsity over `names` that leaves `target_nonzero` non-zero parameters in all (biases count)."""
    total = graph.stats()["params"]
    w = sum(graph[n].params["weight"].numel() for n in names)
    keep = target_nonzero - (total - w)
    return min(0.999, max(0.0, 1.0 - keep / w))


def retrainer(tr, lr, seed, loss=None):
    """ctx.train for the retraining rounds: the trainer at `lr` (cosine to 0 within each round), with a
    fresh minibatch order on every call (a fixed seed would replay one order every round). Options the
    pass adds for its last round (cycles, keep_best, eval_every) go through to Trainer.train.
    `train.calls` counts the calls so far (a stage read from --cache moves it on as its run did)."""
    def train(m, *, epochs=1.0, penalty=None, **final):
        train.calls += 1
        tr.train(m, epochs=epochs, penalty=penalty, lr=lr, seed=seed + 1000 * train.calls, loss=loss, **final)
    train.calls = 0
    return train


class Cache:
    """--cache DIR: the unpruned net and each pruning stage's graph, keyed by everything that made them
    (mode, network, seed, training and every earlier stage's protocol), so that a variant of a later stage
    reuses the earlier ones. Runs are deterministic per seed and thread count: a cached stage is the one
    the run would compute (the thread count is part of the key)."""

    def __init__(self, root):
        self.root = root

    def path(self, key: str) -> str:
        import hashlib
        return os.path.join(self.root, hashlib.sha1(key.encode()).hexdigest()[:20] + ".pt")

    def load(self, key: str):
        if not self.root or not os.path.exists(self.path(key)):
            return None
        saved = torch.load(self.path(key), weights_only=False)
        if saved["key"] != key:
            raise RuntimeError(f"--cache {self.root}: {self.path(key)} holds another run ({saved['key']!r})")
        return self.materialized(saved["value"])

    def save(self, key: str, value) -> None:
        if self.root:
            import io
            os.makedirs(self.root, exist_ok=True)
            buf = io.BytesIO()
            torch.save({"key": key, "value": self.materialized(value)}, buf)
            atomic_write(self.path(key), buf.getvalue())

    @staticmethod
    def materialized(value):
        """`value` with fresh tensor copies, on saving and on loading: lower() shares tensors copy-on-write
        (hwopt.tensors.snapshot), and SGD's in-place update of one shared with a tensor torch.load made
        crashed (segmentation fault, torch 2.13)."""
        if isinstance(value, tuple):
            return tuple(Cache.materialized(v) for v in value)
        if isinstance(value, dict):
            return {k: v.clone() for k, v in value.items()}
        if isinstance(value, hwopt.ir.Graph):
            g = value.copy()
            for name in list(g.nodes):
                n = g[name].copy()
                n.params = {k: v.clone() for k, v in n.params.items()}
                g.replace(n)
            return g
        return value


def distillation(teacher, temperature=KD_T, alpha=KD_ALPHA):
    """Hinton et al. 2015 knowledge distillation from the unpruned net: alpha·T²·KL(soft teacher ‖ soft
    student) + (1 − alpha)·cross entropy on the labels, as a Trainer.train loss."""
    F = torch.nn.functional

    def loss(out, y, x):
        with torch.no_grad():
            t = teacher(x)
        soft = F.kl_div(F.log_softmax(out / temperature, 1), F.softmax(t / temperature, 1), reduction="batchmean")
        return alpha * temperature ** 2 * soft + (1 - alpha) * F.cross_entropy(out, y)
    return loss


def pruning_pass(args, sparsity, iterations, retrain, final, plot="") -> MagnitudePrune:
    """The magnitude-prune stage the bench's options describe."""
    return MagnitudePrune(sparsity=sparsity, iterations=iterations, retrain_epochs=retrain, final_retrain_epochs=final,
                          l2=L2 if args.retrain_l2 is None else args.retrain_l2, allocation=args.allocation,
                          schedule=args.schedule, final_cycles=args.final_cycles, final_keep_best=args.keep_best,
                          final_average=args.final_average,
                          final_eval_every=args.final_eval_every if args.keep_best else None, plot=plot)


def protocol(p, args, label) -> str:
    """The run's protocol as text, to tell saved rows of different protocols apart: the pass in its
    pipeline form without the per-seed sparsity, plus the bench's own retraining knobs."""
    text = str(dataclasses.replace(p, sparsity=None, plot=""))
    if args.retrain_lr_scale != 1.0:
        text += f" retrain_lr_scale={args.retrain_lr_scale:g}"
    return text + (f" kd(T={KD_T:g},alpha={args.kd_alpha:g})" if label == "Han+KD" else "")


def selection_split(cfg):
    """The half of the validation split nothing trains, scans or picks checkpoints on (the trainer
    evaluates on val[:cfg["val"]]): protocol choices are read off this split, never off the test split."""
    x, y = data.mnist("val", 2 * cfg["val"])
    return x[cfg["val"]:], y[cfg["val"]:]


def run_model(name, cfg, args, xtest, ytest, xsel, ysel, out):
    lr, epochs, iters, retrain, final = cfg[name]
    iters = args.iterations or iters
    retrain = args.retrain_epochs or retrain
    final = args.final_epochs or final
    tr = data.Trainer(*data.mnist("train", cfg["train"]), *data.mnist("val", cfg["val"]), lr=lr, seed=args.seed)
    tester = data.Trainer(xtest[:1], ytest[:1], xtest, ytest)
    selector = data.Trainer(xsel[:1], ysel[:1], xsel, ysel)
    torch.manual_seed(args.seed)
    model = models.get(name)
    cache = Cache(args.cache)
    key = f"{name} train={cfg['train']} val={cfg['val']} seed={args.seed} lr={lr:g} epochs={epochs:g} l2={L2:g} " \
          f"threads={torch.get_num_threads()}"
    t0 = time.perf_counter()
    state = cache.load(key)
    if state is None:
        tr.train(model, epochs=epochs, penalty=l2_penalty(L2))
        cache.save(key, model.state_dict())
    else:
        model.load_state_dict(state)
    t_train = time.perf_counter() - t0
    g = hwopt.lift(model, torch.zeros(1, 1, 28, 28))
    teacher = hwopt.lower(g).eval()
    err0 = 1 - tester.evaluate(teacher)
    sel0 = 1 - selector.evaluate(teacher)
    scan0 = 1 - tr.evaluate(teacher)
    s0 = g.stats()
    print(f"\n[{name}] baseline: {epochs} epochs in {t_train:.0f}s, test error {100 * err0:.2f} %")
    if not args.han:  # the unpruned net only, for the OBD and allocation comparisons (no Table 1 row)
        out.append(dict(model=name, kind="baseline", err0=100 * err0, g=g, tr=tr, tester=tester, first=True))
        return out
    retrain_lr = lr * args.retrain_lr_scale
    batches = [(tr.x_train[i:i + 256], tr.y_train[i:i + 256]) for i in range(0, 4096, 256)]
    variants = [("Han", None)] + ([("Han+KD", distillation(teacher, alpha=args.kd_alpha))] if args.kd else [])
    plans = {}  # the sensitivity scan of each stage's input is the same for both variants at stage 1
    for label, loss in variants:
        train = retrainer(tr, retrain_lr, args.seed, loss)
        ctx = hwopt.PassContext(train=train, evaluate=tr.evaluate, seed=args.seed, data=batches)
        gp, first = g, True
        chain = f"{key} {label} kd_alpha={args.kd_alpha:g}" if loss is not None else f"{key} {label}"
        # stage 1 reaches the first target from the dense net; later stages continue from the pruned one
        for comp in args.compression if label == "Han" else args.compression[:1]:  # KD: the first target only
            names = sp.prunable_layers(gp)
            target = sparsity_for(gp, names, s0["params"] / comp)
            # later stages: as many rounds as the first unless --later-iterations (measured on validation:
            # bench/results/han2015/README.md, "15x")
            p = pruning_pass(args, round(target, 5), iters if first else args.later_iterations or iters, retrain, final,
                             plot=os.path.join(args.out, f"sensitivity_{name}.png") if first and not plans else "")
            chain += f" -> {comp:g}x {protocol(p, args, label)} sparsity={p.sparsity}"
            t0 = time.perf_counter()
            plan = plans[comp] if first and comp in plans else p.plan(gp, ctx)
            if first:
                plans[comp] = plan
            cached = cache.load(chain)
            if cached is None:
                gp = p.apply(gp, ctx, plan)
                cache.save(chain, (gp, train.calls))
            else:
                gp, train.calls = cached
            t_prune = time.perf_counter() - t0
            pruned = hwopt.lower(gp)
            err1, sel1, scan1 = 1 - tester.evaluate(pruned), 1 - selector.evaluate(pruned), 1 - tr.evaluate(pruned)
            s1 = gp.stats()
            print(f"  [{label}] stage -> {comp:g}x: {p}  ({t_prune:.0f}s); allocation {plan.allocation}"
                  + (" (one-shot val accuracy " + ", ".join(f"{k} {100 * v:.2f} %" for k, v in plan.candidates.items())
                     + ")" if plan.candidates else ""))
            print(f"  {'layer':8s} {'op':7s} {'weights':>9s} {'kept %':>7s}   " + (f"(scan on val: acc@0 = {100 * plan.baseline:.2f} %)" if plan.baseline is not None else "(no scan)"))
            for n in names:
                w = g[n].params["weight"].numel()
                kept = int(torch.count_nonzero(sp.effective_weight(gp[n])))
                print(f"  {n:8s} {g[n].op:7s} {w:9,d} {100 * kept / w:6.1f}%   shape now {tuple(gp[n].params['weight'].shape)}")
            fl0, fl1 = sp.flash_bytes(g, 32), sp.flash_bytes(gp, 32)
            fl8 = sp.flash_bytes(gp, 8)
            print(f"  flash fp32: {fl0:,} B dense -> {fl1:,} B relative-index sparse ({fl0 / fl1:.1f}x); int8 values: {fl8:,} B")
            print(f"  test error {100 * err0:.2f} % -> {100 * err1:.2f} %, selection split {100 * sel0:.2f} % -> "
                  f"{100 * sel1:.2f} %, {s0['params'] / s1['nonzero_params']:.1f}x")
            sys.stdout.flush()
            out.append(dict(model=name, label=label, before=s0["params"], after=s1["nonzero_params"],
                            x=s0["params"] / s1["nonzero_params"], err0=100 * err0, err1=100 * err1, g=g, tr=tr,
                            sel0=100 * sel0, sel1=100 * sel1, nsel=len(xsel), protocol=protocol(p, args, label),
                            # the scan's half of val: a fair second selection half when no checkpoint is picked on it
                            scan0=100 * scan0, scan1=100 * scan1, nscan=len(tr.x_eval),
                            tester=tester, first=first and label == "Han", seconds=t_prune, seed=args.seed,
                            stage=comp))
            first = False
    return out


def obd_vs_magnitude(res, cfg, args):
    g, tr, tester = res["g"], res["tr"], res["tester"]
    iters, ep = cfg["obd"]
    retrain_lr = tr.lr * args.retrain_lr_scale
    ctx = hwopt.PassContext(train=retrainer(tr, retrain_lr, args.seed), evaluate=tr.evaluate, seed=args.seed,
                            data=[(tr.x_train[i:i + 256], tr.y_train[i:i + 256]) for i in range(0, 4096, 256)])
    rows = []
    for s in cfg["obd_sparsities"]:
        row = {"s": s}
        for r in (False, True):  # magnitude: the bench's allocation (default auto), planned per column
            mp = MagnitudePrune(sparsity=s, iterations=iters if r else 1, retrain_epochs=ep if r else 0, l2=L2,
                                allocation=args.allocation)
            gm = mp.run(g, ctx)
            row[("magnitude", r)] = 100 * (1 - tester.evaluate(hwopt.lower(gm)))
            ob = OptimalBrainDamage(sparsity=s, iterations=iters if r else 1, retrain_epochs=ep if r else 0, l2=L2)
            go = ob.run(g, ctx)
            row[("obd", r)] = 100 * (1 - tester.evaluate(hwopt.lower(go)))
            row[("nz", r)] = (gm.stats()["nonzero_params"], go.stats()["nonzero_params"])
        rows.append(row)
    print(f"\n[{res['model']}] OBD (Gauss-Newton diagonal, global ranking) vs magnitude (allocation {args.allocation}), "
          f"test error %, baseline {res['err0']:.2f} %; retrained = {iters}x{ep} epochs; dead units removed in both")
    print(f"  {'sparsity':>8s} | {'mag one-shot':>12s} {'OBD one-shot':>12s} | {'mag retrained':>13s} {'OBD retrained':>13s}"
          f" | non-zero params mag / OBD")
    for row in rows:
        print(f"  {100 * row['s']:7.0f}% | {row[('magnitude', False)]:12.2f} {row[('obd', False)]:12.2f} | "
              f"{row[('magnitude', True)]:13.2f} {row[('obd', True)]:13.2f} | {row[('nz', True)][0]:,} / {row[('nz', True)][1]:,}")
        sys.stdout.flush()


ALLOCATION_ROWS = ("global", "equal-drop", "min-drop", "default")
ALLOCATION_SPARSITIES, ALLOCATION_MODELS = (0.8, 0.9, 0.95), ("lenet_300_100",)


def allocation_table(res, cfg, args) -> list[dict]:
    """Issue 20: test error of each allocation at 80 / 90 / 95 % sparsity, one-shot and retrained (the
    OBD comparison's short retraining), from the same unpruned net. "global" is one magnitude threshold
    over all layers (torch.nn.utils.prune.global_unstructured's rule), "default" what
    `magnitude-prune{sparsity=s}` picks (allocation=auto: one-shot, the best of the three on the scan's
    validation half; with retraining, the global threshold; the test split only reports). Rows whose
    per-layer fractions are the same plan are one run, printed under each name."""
    from hwopt import sensitivity as sens
    from hwopt.passes.magnitude_prune import Plan, global_fractions
    g, tr, tester = res["g"], res["tr"], res["tester"]
    iters, ep = cfg["obd"]
    ctx = hwopt.PassContext(train=retrainer(tr, tr.lr * args.retrain_lr_scale, args.seed), evaluate=tr.evaluate,
                            seed=args.seed)
    names = sp.prunable_layers(g)
    sizes = {k: g[k].params["weight"].numel() for k in names}
    rows = []
    for s in ALLOCATION_SPARSITIES:
        passes = {r: MagnitudePrune(sparsity=s, iterations=iters if r else 1, retrain_epochs=ep if r else 0, l2=L2,
                                    plot="" if r else os.path.join(args.out, f"sensitivity_{res['model']}.png"))
                  for r in (False, True)}
        # the pass's own choice, one-shot and with the retraining to follow (auto decides on both)
        default = {r: passes[r].plan(g, ctx) for r in (False, True)}
        scan = default[False].scan
        base = {"global": Plan(global_fractions(g, names, s))}
        for a in ("equal-drop", "min-drop"):
            base[a] = Plan(sens.ALLOCATIONS[a](scan, sizes, s), scan)
        done = {}
        for a in ALLOCATION_ROWS:
            err = {}
            for r in (False, True):
                plan = default[r] if a == "default" else base[a]
                key = (r, tuple(round(plan.fractions[k], 9) for k in names))
                if key not in done:
                    done[key] = 100 * (1 - tester.evaluate(hwopt.lower(passes[r].apply(g, ctx, plan))))
                err[r] = done[key]
            rows.append(dict(kind="allocation", model=res["model"], seed=args.seed, s=s, allocation=a,
                             one_shot=err[False], retrained=err[True], err0=res["err0"],
                             picked=f"{default[False].allocation}/{default[True].allocation}",
                             protocol=f"{iters}x{ep:g} epochs, l2 {L2:g}"))
    print_allocation_rows(rows, f"[{res['model']}] allocation at equal sparsity, test error %, seed {args.seed}, "
                                f"unpruned {res['err0']:.2f} %; retrained = {iters}x{ep:g} epochs")
    return rows


def print_allocation_rows(rows, title):
    """One line per allocation: test error at each sparsity, one-shot | retrained; mean over the rows' seeds."""
    seeds = sorted({r["seed"] for r in rows})
    sparsities = sorted({r["s"] for r in rows})
    mean = lambda a, s, k: sum(r[k] for r in rows if r["allocation"] == a and r["s"] == s) / len(
        [r for r in rows if r["allocation"] == a and r["s"] == s])
    print(f"\n{title}" + (f" (mean over seeds {','.join(map(str, seeds))})" if len(seeds) > 1 else ""))
    head = " ".join(f"{100 * s:5.0f}%" for s in sparsities)
    print(f"  {'allocation':12s} | one-shot {head} | retrained {head}")
    for a in ALLOCATION_ROWS:
        print(f"  {a:12s} |          " + " ".join(f"{mean(a, s, 'one_shot'):6.2f}" for s in sparsities)
              + " |           " + " ".join(f"{mean(a, s, 'retrained'):6.2f}" for s in sparsities))
    ok = all(mean("default", s, k) <= mean("global", s, k) + 1e-9 for s in sparsities for k in ("one_shot", "retrained"))
    picks = {s: [r["picked"] for r in rows if r["s"] == s and r["allocation"] == "default"] for s in sparsities}
    counted = lambda p: " + ".join(f"{k}" + (f" x{p.count(k)}" if len(seeds) > 1 else "") for k in sorted(set(p)))
    print(f"  default's pick (one-shot/retrained) per sparsity: " + ", ".join(f"{100 * s:.0f}%: {counted(p)}" for s, p in picks.items())
          + f"; default <= global in every column: {'yes' if ok else 'NO'}")
    sys.stdout.flush()


def print_table(results, name, ntest, title):
    print(f"\n{title}")
    print(f"  {'network':15s} {'protocol':8s} {'weights':>9s} {'after':>8s} {'compr.':>7s} {'err before':>10s} {'err after':>9s}"
          f" {'Δ images':>8s} {'Δ sel':>6s} | {'paper':>25s}")
    for r in results:
        pp = PAPER[r["model"]]
        print(f"  {r['model']:15s} {r['label']:8s} {r['before']:9,d} {r['after']:8,d} {r['x']:6.1f}x {r['err0']:9.2f}% "
              f"{r['err1']:8.2f}% {delta_images(r, ntest):+8d} {delta_selection(r):>6s} | {pp['before'] // 1000}K->{pp['after'] // 1000}K {pp['x']}x "
              f"{pp['err0']:.2f}%->{pp['err1']:.2f}%")
    print("  (Δ images: misclassified test images after minus before; Δ sel: the same on the selection split, "
          "val[5000:] in full mode, which protocol choices are made on; 'Han+KD' = the same protocol with the "
          "retraining loss distilled from the unpruned net — not the paper's method)")


def delta_images(r, ntest):
    return round((r["err1"] - r["err0"]) * ntest / 100)


def delta_selection(r) -> str:
    """Δ misclassified images on the selection split; rows saved before it existed have none."""
    return f"{round((r['sel1'] - r['sel0']) * r['nsel'] / 100):+d}" if "sel1" in r else "-"


def delta_validation(r) -> str:
    """Δ misclassified images on the whole validation split (the selection half plus the scan's half): the
    larger sample for comparing protocols that pick no checkpoint on the scan's half (no --keep-best)."""
    if "scan1" not in r or "sel1" not in r:
        return "-"
    return f"{round((r['sel1'] - r['sel0']) * r['nsel'] / 100 + (r['scan1'] - r['scan0']) * r['nscan'] / 100):+d}"


def seed_summary(results, ntest):
    """One row per network / protocol / compression stage, averaged over seeds: the goal is an error no
    worse than the seed's own unpruned net, judged on the mean Δ and counted per seed."""
    groups = {}
    for r in results:
        groups.setdefault((r["model"], r["label"], r["stage"], r.get("protocol", "")), []).append(r)
    seeds = sorted({r["seed"] for r in results})
    print(f"\nseed mean over seeds {','.join(map(str, seeds))} (test split {ntest} images; goal: Δ images <= 0)")
    print(f"  {'network':15s} {'protocol':8s} {'compr.':>7s} {'err before':>10s} {'err after':>9s} {'mean Δ':>7s}"
          f" {'per seed Δ':>16s} {'goal on mean':>12s} {'seeds ok':>8s} | {'sel mean Δ':>10s} {'per seed Δ sel':>16s}"
          f" | {'val mean Δ':>10s}")
    rows = []
    protocols = sorted({key[3] for key in groups})
    for (model, label, stage, proto), rs in groups.items():
        ds = [delta_images(r, ntest) for r in rs]
        mean = lambda k: sum(r[k] for r in rs) / len(rs)
        md = sum(ds) / len(ds)
        sel = [delta_selection(r) for r in rs]
        val = [delta_validation(r) for r in rs]
        msel, mval = (f"{sum(int(d) for d in ds_) / len(ds_):+10.1f}" if "-" not in ds_ else f"{'-':>10s}"
                      for ds_ in (sel, val))
        row = dict(model=model, label=label, stage=stage, x=mean("x"), err0=mean("err0"), err1=mean("err1"),
                   delta=md, deltas=ds, goal=md <= 0, ok=sum(d <= 0 for d in ds), n=len(ds), sel_deltas=sel, val_deltas=val)
        rows.append(row)
        print(f"  {model:15s} {label:8s} {row['x']:6.1f}x {row['err0']:9.3f}% {row['err1']:8.3f}% {md:+7.1f}"
              f" {'/'.join(f'{d:+d}' for d in ds):>16s} {'yes' if row['goal'] else 'no':>12s} {row['ok']:>4d}/{len(ds)}"
              f" | {msel} {'/'.join(sel):>16s} | {mval}")
        if len(protocols) > 1:
            print(f"    protocol: {proto or '(not recorded)'}")
    return rows


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="small subsets, ~1 min")
    mode.add_argument("--quick", action="store_true", help="full data, short training, ~5 min")
    ap.add_argument("--compression", type=float, nargs="+", default=[12.0, 15.0],
                    help="target compression(s) x = params / non-zero; each later one continues from the previous")
    ap.add_argument("--models", default="lenet_300_100,lenet5")
    ap.add_argument("--no-obd", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", help="comma-separated seeds (e.g. 0,1,2): one full run per seed, then a "
                                    "seed-averaged summary; overrides --seed")
    ap.add_argument("--retrain-lr-scale", type=float, default=1.0,
                    help="retraining learning rate as a fraction of the training one")
    ap.add_argument("--iterations", type=int, help="prune -> retrain rounds (default: per mode and model)")
    ap.add_argument("--later-iterations", type=int,
                    help="prune -> retrain rounds of the stages after the first (default: the first's)")
    ap.add_argument("--retrain-epochs", type=float, help="epochs per retraining round (default: per mode and model)")
    ap.add_argument("--retrain-l2", type=float, help=f"L2 of the pruning rounds' retraining (default: {L2:g}, as in training)")
    ap.add_argument("--final-epochs", type=float, help="epochs of the last retraining round (default: per mode and model)")
    ap.add_argument("--final-cycles", type=int, default=FINAL_CYCLES,
                    help="the last retraining round as this many cosine cycles with warm restarts")
    ap.add_argument("--keep-best", action=argparse.BooleanOptionalAction, default=KEEP_BEST,
                    help="the last round keeps its best checkpoint on the validation split (cycle ends, and "
                         "every --final-eval-every epochs)")
    ap.add_argument("--final-eval-every", type=float, default=FINAL_EVAL_EVERY,
                    help="with --keep-best: also evaluate every this many epochs (0: at cycle ends only)")
    ap.add_argument("--schedule", default=SCHEDULE, choices=["geometric", "cubic"],
                    help="per-round pruned fractions: the same share of survivors each round, or Zhu & Gupta's cubic")
    ap.add_argument("--final-average", action=argparse.BooleanOptionalAction, default=FINAL_AVERAGE,
                    help="the last round ends on the mean of its cycle-end weights (SWA; needs --final-cycles >= 2)")
    ap.add_argument("--allocations", action=argparse.BooleanOptionalAction, default=True,
                    help="the allocation table: global threshold, equal-drop, min-drop and the default at the OBD "
                         "comparison's sparsities, one-shot and retrained (--no-allocations skips it)")
    ap.add_argument("--allocation", default=ALLOCATION, choices=["auto", "global", "equal-drop", "min-drop"],
                    help="how the sensitivity scan turns the sparsity target into per-layer fractions")
    ap.add_argument("--no-han", dest="han", action="store_false",
                    help="no pruning stages (Table 1 rows): the unpruned nets and the comparisons only (e.g. the "
                         "allocation table: --no-han --no-obd)")
    ap.add_argument("--no-kd", dest="kd", action="store_false",
                    help="skip the extra 'Han+KD' rows (retraining distilled from the unpruned net)")
    ap.add_argument("--kd-alpha", type=float, default=KD_ALPHA,
                    help="Han+KD: weight of the soft (teacher) targets in the retraining loss, the rest on the labels")
    ap.add_argument("--out", default="/tmp/hwopt_han2015", help="where the sensitivity PNGs go")
    ap.add_argument("--cache", metavar="DIR", default="",
                    help="keep the unpruned nets and each stage's pruned graph here, and reuse them when the same "
                         "run (mode, network, seed, threads, every earlier stage's protocol) comes again; the key "
                         "is the protocol text, not the code: clear DIR after changing the pass or the trainer")
    ap.add_argument("--save", metavar="JSON", help="write the result rows (all seeds) to this file")
    ap.add_argument("--summarize", metavar="JSON", nargs="+",
                    help="no runs: print the seed-averaged summary of rows saved by --save (e.g. seeds run in "
                         "separate processes)")
    return ap


def main(argv=None):
    ap = parser()
    args = ap.parse_args(argv)
    if args.summarize:
        # one row per network / label / stage / protocol / seed: a seed saved twice counts once (the later file)
        saved = [r for f in args.summarize for r in json.load(open(f))]
        alloc = list({(r["model"], r["s"], r["allocation"], r["protocol"], r["seed"]): r
                      for r in saved if r.get("kind") == "allocation"}.values())
        rows = list({(r["model"], r["label"], r["stage"], r.get("protocol", ""), r["seed"]): r
                     for r in saved if r.get("kind") != "allocation"}.values())
        for m in sorted({r["model"] for r in alloc}):
            print_allocation_rows([r for r in alloc if r["model"] == m], f"[{m}] allocation at equal sparsity, test error %")
        if not rows:
            return
        ntest = {r["ntest"] for r in rows}
        if len(ntest) != 1:
            ap.error(f"--summarize: the files mix test split sizes {sorted(ntest)}")
        seed_summary(rows, ntest.pop())
        return
    if not 0.0 <= args.kd_alpha <= 1.0:
        ap.error(f"--kd-alpha must be within [0, 1], got {args.kd_alpha}")
    if args.final_average and (args.final_cycles < 2 or args.keep_best):
        ap.error("--final-average averages the last round's cycle ends: it needs --final-cycles >= 2 and no --keep-best")
    if args.final_eval_every is not None and args.final_eval_every <= 0:
        args.final_eval_every = None
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    cfg = MODES[name]
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t_start = time.perf_counter()
    print(f"han2015 bench, mode={name}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"targets {args.compression}x, seeds {seeds}; last round: {args.final_cycles} cosine cycle(s), "
          f"keep best on val: {args.keep_best}" + (f" (every {args.final_eval_every:g} epochs)"
                                                   if args.keep_best and args.final_eval_every else "")
          + f", average: {args.final_average}; schedule {args.schedule}, allocation {args.allocation}")
    xtest, ytest = data.mnist("test", cfg["test"])
    xsel, ysel = selection_split(cfg)
    every, alloc = [], []
    for seed in seeds:
        sargs = copy.copy(args)
        sargs.seed = seed
        t_seed = time.perf_counter()
        results = []
        for m in args.models.split(","):
            run_model(m, cfg, sargs, xtest, ytest, xsel, ysel, results)
            sys.stdout.flush()
        table = [r for r in results if r.get("kind") != "baseline"]  # --no-han: none
        if table:
            print_table(table, name, len(xtest),
                        f"Han et al. 2015, Table 1 — ours (mode={name}, seed {seed}, test split {len(xtest)} images) vs the paper")
        if not args.no_obd:
            for r in results:
                if r["model"] in cfg["obd_models"] and r["first"]:
                    obd_vs_magnitude(r, cfg, sargs)
        if args.allocations:
            for r in results:
                if r["first"] and r["model"] in ALLOCATION_MODELS:
                    alloc += allocation_table(r, cfg, sargs)
        print(f"seed {seed} runtime: {time.perf_counter() - t_seed:.0f} s")
        sys.stdout.flush()
        for r in results:  # the graphs and trainers are not needed for the summary
            for k in ("g", "tr", "tester"):
                r.pop(k, None)
        every += table
    if args.save:
        atomic_write(args.save, json.dumps([dict(r, ntest=len(xtest)) for r in every + alloc], indent=1))
    if len(seeds) > 1:
        if every:
            seed_summary(every, len(xtest))
        for m in sorted({r["model"] for r in alloc}):
            print_allocation_rows([r for r in alloc if r["model"] == m], f"[{m}] allocation at equal sparsity, test error %")
    print(f"\nsensitivity curves: {args.out}/sensitivity_*.png")
    print(f"runtime: {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
