"""Choosing the REINFORCE controller's defaults on a simulated reward (seconds per search, no training).

    python bench/nas_controller_sim.py                    # the grid below, 10 simulated seeds, 30 children
    python bench/nas_controller_sim.py --fit runs/*.jsonl # accuracy model fitted on measured children instead

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

Printed per configuration: the mean best (observed) reward over the simulated seeds, REINFORCE's paired
lead over random search with its standard error, and in how many seeds it leads.
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


def simulate(world: World, strategy: str, children: int, batch: int, seed: int, options: dict) -> tuple[float, int]:
    """The bench's equal-cost loop (bench/nas.py -> Search.run) with the world's rewards: (best observed
    reward, proposals made to reach `children` distinct children; capped at 20 x children as in Search)."""
    strat = make_strategy(strategy, world.space.vocab, seed, **options)
    seen, best, proposals = set(), 0.0, 0
    while len(seen) < children and proposals < 20 * children:
        n = min(batch, children - len(seen))
        toks = [tuple(int(x) for x in t) for t in strat.ask(n)]
        rewards = []
        for t in toks:
            acc, lat = world.evaluate(t)
            seen.add(world.space.canonical(t))
            rewards.append(reward(acc, lat, world.target_ms, 0.0, -1.0))
        strat.tell(toks, rewards)
        best = max(best, *rewards)
        proposals += n
    return best, proposals


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--children", type=int, default=30)
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
        ["old default (lr 0.02, raw x10)", 4, {"lr": 0.02, "normalize": False}],
        ["lr 0.05, raw x10", 4, {"lr": 0.05, "normalize": False}],
        ["lr 0.05, normalized (default)", 4, {}],
        ["lr 0.1, normalized", 4, {"lr": 0.1}],
    ]
    worlds = [World(space, lat_w, target_ms, 1000 + s, acc_w) for s in range(a.seeds)]
    rand = [simulate(w, "random", a.children, 4, w.seed, {})[0] for w in worlds]
    print(f"random search: best reward {statistics.mean(rand):.4f} (sd {statistics.stdev(rand):.4f}), "
          f"{a.seeds} simulated seeds, {a.children} children", flush=True)
    for name, batch, opts in grid:
        t1 = time.process_time()
        runs = [simulate(w, "reinforce", a.children, batch, w.seed, opts) for w in worlds]
        best = [b for b, _ in runs]
        d = [x - y for x, y in zip(best, rand)]
        se = statistics.stdev(d) / len(d) ** 0.5
        print(f"{name:28s}: best reward {statistics.mean(best):.4f}; lead over random {statistics.mean(d):+.4f} "
              f"(se {se:.4f}), leads in {sum(x > 0 for x in d)}/{len(d)}; {statistics.mean(p for _, p in runs):.0f} proposals "
              f"for {a.children} children  ({time.process_time() - t1:.0f} CPU-s)",
              flush=True)


if __name__ == "__main__":
    main()
