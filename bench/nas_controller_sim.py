"""Choosing the REINFORCE controller's defaults on a simulated reward (seconds per search, no training).

    python bench/nas_controller_sim.py                    # the grid in main(), 10 simulated seeds, 30 children
    python bench/nas_controller_sim.py --fit runs/*.jsonl --children 30,60,100 --evolution --seeds 16
                                                          # accuracy fitted on measured children; 3 budgets

Why a simulation: a real search of bench/nas.py costs minutes of CPU per seed, so the controller's options
(learning rate, batch, PPO epochs, reward normalisation) cannot be swept on real children. Here every
strategy runs through the real ask/tell code (hwopt.passes.nas.controller) and the real equal-cost loop
(distinct children counted, duplicates free), while a child's reward comes from a model:

- latency: a ridge fit (one-hot tokens plus within-block op x filters / op x kernel / op x layers / filters x
  layers products) of the cortex-a72 cost model's prediction on 300 random members of the bench's space
  (the real cost model, once), and T = the MobileNetV2-style member's real predicted latency;
- accuracy: either synthetic (per simulated seed: additive token effects plus within-block pair effects,
  scaled to the measured between-architecture sd 0.134 around 0.45, and trainer noise sd 0.059, the figures
  in bench/nas.py's log) or, with --fit, a ridge fit on measured children (their tokens and accuracies)
  plus the same noise;
- reward: MnasNet's hard preset (ACC, times T/LAT above T), as in the bench.

Printed per configuration and budget (distinct children): the mean best (observed) reward over the simulated
seeds, the paired lead over random search (and evolution) with its standard error, mean / sd of the paired
differences (with 5 real seeds, "lead > 2 se" needs mean / sd > 2 / sqrt(5) = 0.89) and in how many seeds
it leads, and the proposals made (a collapsed controller makes up to 20 x N for N children).

Results (2026-12-01 late evening; accuracy fitted on the 160 random children of /tmp/tech20/nas, seeds 0-3,
fitted sd 0.069, in-sample r^2 0.54, + noise sd 0.059; simulated seeds 1000+; cap 4 x N in the screen):
- random search, 16 seeds: best reward 0.540 / 0.560 / 0.577 at N = 30 / 60 / 100 (the 6 seeds below:
  0.536 / 0.562 / 0.577).
- regularized evolution (population 16, sample 4), 16 seeds: 0.557 / 0.585 / 0.630; lead over random
  +0.017 / +0.025 / +0.053 (se 0.014 / 0.012 / 0.016).
- REINFORCE lr 0.05 (the previous default's), entropy 0.03, cumulative RMS (6 seeds): collapsed on 5 of 6
  seeds before 60 distinct children (400 proposals, the screen's cap, for < 60 children), on the sixth before
  100: 0.576 / 0.610 / 0.610. Entropy 0.1 at lr 0.05: collapsed on 1 of 2 seeds.
- lr 0.02, entropy 0.01, moving RMS (6 seeds): 0.573 / 0.666 / 0.711; one seed collapsed between 60 and 100.
- lr 0.02, entropy 0.03, cumulative RMS (6 seeds): 0.577 / 0.669 / 0.705, 100-140 proposals for 100 children:
  adopted as the default. (lr 0.02, entropy 0.1: 0.593 / 0.654 / 0.705 on 3 seeds.)
- The adopted default on 16 seeds, cap 20 (the real loop), 93 CPU-s for the 16 searches:
    N =  30: 0.568; lead over random +0.028 (se 0.015, mean/sd 0.47, 12/16), over evolution +0.011 (se 0.017)
    N =  60: 0.647; lead over random +0.087 (se 0.014, mean/sd 1.50, 15/16), over evolution +0.061 (se 0.017,
             mean/sd 0.91, 12/16); 61 proposals for 60 children
    N = 100: 0.698; lead over random +0.121 (se 0.018, mean/sd 1.63, 14/16), over evolution +0.068 (se 0.016,
             mean/sd 1.04, 15/16); 151 proposals
  Of the 4,368 ways to pick 5 of the 16 simulated seeds, the paired lead over random exceeds 2 se in 19 % at
  N = 30, 88 % at N = 60 and 92 % at N = 100 (over evolution: 11 / 52 / 67 %). Hence bench/nas.py's default
  of 60 children: the smallest budget at which the 5-seed claim is likely if the simulation is right.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hwopt.passes.nas import SearchSpace, cost_of, make_strategy, reward  # noqa: E402
from hwopt.passes.nas.space import PER_BLOCK  # noqa: E402
from hwopt.fileio import atomic_write  # noqa: E402
from hwopt.targets import load_target  # noqa: E402


def features(space: SearchSpace, tokens) -> np.ndarray:
    """One-hot tokens plus within-block products of (op, filters), (op, kernel), (op, layers), (filters, layers)."""
    t = space.canonical(tokens)
    out = []
    for b in range(space.blocks):
        op, k, se, skip, f, n = t[b * PER_BLOCK:(b + 1) * PER_BLOCK]
        for v, m in ((op, 4), (k, 2), (se, 2), (skip, 2), (f, 3), (n, 3)):
            out += [float(v == i) for i in range(m)]
        for (a, ma), (c, mc) in (((op, 4), (f, 3)), ((op, 4), (k, 2)), ((op, 4), (n, 3)), ((f, 3), (n, 3))):
            out += [float(a == i and c == j) for i in range(ma) for j in range(mc)]
    return np.array(out)


def ridge(X: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    X1 = np.hstack([X, np.ones((len(X), 1))])
    reg = lam * np.eye(X1.shape[1])
    reg[-1, -1] = 0.0
    return np.linalg.solve(X1.T @ X1 + reg, X1.T @ y)


def predict(w: np.ndarray, x: np.ndarray) -> float:
    return float(x @ w[:-1] + w[-1])


class World:
    """One simulated seed: a fixed accuracy landscape and a fixed noise draw per architecture."""

    def __init__(self, space, lat_w, target_ms, seed, acc_w=None, between=0.134, noise=0.059, mean=0.45):
        self.space, self.lat_w, self.target_ms, self.noise = space, lat_w, target_ms, noise
        self.rng = np.random.default_rng([seed, 99])
        self.seed = seed
        nf = len(lat_w) - 1
        if acc_w is None:  # synthetic: half main effects, half pair effects, scaled on random members
            w = self.rng.normal(0, 1, nf)
            X = np.stack([features(space, tuple(int(self.rng.integers(n)) for n in space.vocab)) for _ in range(400)])
            s = X @ w
            w = w * between / s.std()
            acc_w = np.append(w, mean - float((X @ w).mean()))
        self.acc_w = acc_w
        self.memo: dict = {}

    def evaluate(self, tokens) -> tuple[float, float]:
        key = self.space.canonical(tokens)
        if key not in self.memo:
            x = features(self.space, key)
            h = hash((self.seed, key)) & 0xFFFFFFFF
            eps = np.random.default_rng(h).normal(0, self.noise)
            acc = float(np.clip(predict(self.acc_w, x) + eps, 0.05, 0.99))
            self.memo[key] = (acc, max(1e-3, predict(self.lat_w, x)))
        return self.memo[key]


def simulate(world: World, strategy: str, children: int | list[int], batch: int, seed: int,
             options: dict, cap: int = 20) -> list[tuple[float, int]]:
    """The bench's equal-cost loop (bench/nas.py -> Search.run) with the world's rewards. For each budget in
    `children` (ascending): (best observed reward once that many distinct children were evaluated, proposals
    made by then); proposals are capped at `cap` x the largest budget (20 in Search; smaller makes a
    collapsed controller cheaper to screen). A search cut by the cap reports its best and proposals at the
    cap for the budgets it did not reach."""
    budgets = sorted([children] if isinstance(children, int) else children)
    top = budgets[-1]
    strat = make_strategy(strategy, world.space.vocab, seed, **options)
    seen, best, proposals, out = set(), 0.0, 0, []
    while len(seen) < top and proposals < cap * top:
        n = min(batch, top - len(seen))
        toks = [tuple(int(x) for x in t) for t in strat.ask(n)]
        rewards = []
        for t in toks:
            acc, lat = world.evaluate(t)
            seen.add(world.space.canonical(t))
            rewards.append(reward(acc, lat, world.target_ms, 0.0, -1.0))
        strat.tell(toks, rewards)
        best = max(best, *rewards)
        proposals += n
        while len(out) < len(budgets) and len(seen) >= budgets[len(out)]:
            out.append((best, proposals))
    while len(out) < len(budgets):
        out.append((best, proposals))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--children", default="30", help="budgets, comma-separated (one run per seed, read at each)")
    ap.add_argument("--cap", type=int, default=20,
                    help="proposal cap per search, x the largest budget (Search: 20; 4 screens collapse cheaply)")
    ap.add_argument("--evolution", action="store_true", help="also regularized evolution")
    ap.add_argument("--json", default=None, help="write every run's (best, proposals) per budget here")
    ap.add_argument("--fit", nargs="*", default=None, help="checkpoint JSONL files of measured children")
    ap.add_argument("--grid", default=None, help="JSON list of [name, batch, options] to compare")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    space = SearchSpace(blocks=4, in_channels=1, num_classes=10, resolution=28, width=0.5, head=128)
    target = load_target("cortex-a72")
    rng = np.random.default_rng(0)
    t0 = time.process_time()
    members = [tuple(int(rng.integers(n)) for n in space.vocab) for _ in range(300)]
    X = np.stack([features(space, t) for t in members])
    lat = np.array([cost_of(space, t, target)[1]["latency_ms"] for t in members])
    lat_w = ridge(X[:240], lat[:240], 1.0)
    held = np.array([predict(lat_w, x) for x in X[240:]])
    r2 = 1 - ((held - lat[240:]) ** 2).sum() / ((lat[240:] - lat[240:].mean()) ** 2).sum()
    target_ms = cost_of(space, space.baseline(), target)[1]["latency_ms"]
    print(f"latency model: held-out r^2 {r2:.3f} on 60 members; T = {target_ms:.3f} ms; "
          f"{(lat <= target_ms).mean():.0%} of random members at <= T ({time.process_time() - t0:.0f} CPU-s)")
    lat_w = ridge(X, lat, 1.0)
    acc_w = None
    if a.fit:
        recs = [json.loads(line) for f in a.fit for line in open(f) if '"tokens"' in line]
        recs = [r for r in recs if "error" not in r and not r.get("cached")]
        # main effects only (few measured children): the pair-product weights stay 0
        main = np.array([i % 57 < 16 for i in range(X.shape[1])])
        Xa = np.stack([features(space, r["tokens"]) for r in recs])[:, main]
        ya = np.array([r["accuracy"] for r in recs])
        w = ridge(Xa, ya, 1.0)
        acc_w = np.zeros(X.shape[1] + 1)
        acc_w[:-1][main], acc_w[-1] = w[:-1], w[-1]
        fit = np.array([predict(acc_w, x) for x in np.stack([features(space, r["tokens"]) for r in recs])])
        print(f"accuracy model: ridge on {len(recs)} measured children (sd {ya.std():.3f}, fitted sd "
              f"{fit.std():.3f}, in-sample r^2 {1 - ((fit - ya) ** 2).sum() / ((ya - ya.mean()) ** 2).sum():.2f})")
    grid = json.loads(a.grid) if a.grid else [
        ["previous default (lr .05, ent .001, moving)", 4, {"lr": 0.05, "entropy": 0.001, "spread": "moving"}],
        ["lr .05, ent .03", 4, {"lr": 0.05}],
        ["lr .02, ent .01, moving", 4, {"entropy": 0.01, "spread": "moving"}],
        ["default (lr .02, ent .03, cumulative)", 4, {}],
    ]
    worlds = [World(space, lat_w, target_ms, 1000 + s, acc_w) for s in range(a.seeds)]
    budgets = sorted(int(x) for x in str(a.children).split(","))
    results = {}
    for name, strategy, batch, opts in [["random search", "random", 4, {}]] + (
            [["regularized evolution (16, 4)", "evolution", 4, {}]] if a.evolution else []) + [
            [n, "reinforce", b, o] for n, b, o in grid]:
        t1 = time.process_time()
        results[name] = [simulate(w, strategy, budgets, batch, w.seed, opts, a.cap) for w in worlds]
        cpu = time.process_time() - t1
        for k, budget in enumerate(budgets):
            best = [r[k][0] for r in results[name]]
            line = f"{name:34s} N={budget:4d}: best reward {statistics.mean(best):.4f} (sd {statistics.stdev(best):.4f})"
            if strategy == "reinforce" or name != "random search":
                for other in ("random search",) + (("regularized evolution (16, 4)",) if a.evolution and strategy == "reinforce" else ()):
                    d = [x - r[k][0] for x, r in zip(best, results[other])]
                    se = statistics.stdev(d) / len(d) ** 0.5
                    # with 5 real seeds the paired test needs mean > 2 sd / sqrt(5): report the ratio mean / sd
                    line += (f"; vs {other.split()[0]} {statistics.mean(d):+.4f} (se {se:.4f}, mean/sd "
                             f"{statistics.mean(d) / max(statistics.stdev(d), 1e-9):.2f}, leads {sum(x > 0 for x in d)}/{len(d)})")
            line += f"; {statistics.mean(r[k][1] for r in results[name]):.0f} proposals"
            print(line + (f"  ({cpu:.0f} CPU-s)" if k == len(budgets) - 1 else ""), flush=True)
    if a.json:
        atomic_write(a.json, json.dumps(dict(budgets=budgets, seeds=a.seeds, results=results)))

if __name__ == "__main__":
    main()
