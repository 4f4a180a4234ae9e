"""The search loop: propose, evaluate (cached, checkpointed), reward, update; resumable after a kill.

Reward (Tan et al. 2019, eq. 2): ACC(m) * (LAT(m) / T) ** w, w = alpha if LAT <= T else beta.
soft: alpha = beta = -0.07 (the paper's); hard: alpha = 0, beta = -1.

Checkpoint: an append-only JSONL file. Line 1 is a header with the search's configuration; every
further line is one evaluated child (index, tokens, accuracy, cost figures, reward, seed), written and
fsync'ed as soon as the child finishes. On resume the header must match, the recorded children are
replayed through the strategy (same RNG draws, same updates) and only the missing ones are evaluated,
so the resumed search ends with exactly the children of an uninterrupted run with the same seed.
A torn last line (killed mid-write) is dropped; a file that is not a checkpoint (no header, a line that is
not a child record) is refused before anything is written to it (checkpoint.py).
"""
from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError, drop_torn_tail, read_checkpoint
from .controller import make_strategy
from .execution import EvalSpec, cost_of, make_executor
from .space import SearchSpace

REWARD_PRESETS = {"soft": (-0.07, -0.07), "hard": (0.0, -1.0)}


def reward(accuracy: float, latency_ms: float, target_ms: float, alpha: float, beta: float) -> float:
    if latency_ms <= 0 or target_ms <= 0:
        return float(accuracy)
    w = alpha if latency_ms <= target_ms else beta
    return float(accuracy) * (latency_ms / target_ms) ** w


@dataclass
class SearchResult:
    strategy: str
    history: list[dict]             # one record per sample index, in order
    target_ms: float
    baseline: dict | None = None    # the MobileNetV2-style member of the space, evaluated the same way
    wall_seconds: float = 0.0
    evaluations: int = 0            # children actually trained in this run (not replayed or cached)
    config: dict = field(default_factory=dict)

    @property
    def best(self) -> dict:
        return max(self.history, key=lambda r: (r["reward"], -r["index"]))

    def evaluated(self) -> set[tuple[int, ...]]:
        return {tuple(r["tokens"]) for r in self.history}

    def pareto(self) -> list[dict]:
        """Children not dominated in (higher accuracy, lower latency), by latency."""
        pts = sorted({tuple(r["tokens"]): r for r in self.history if "error" not in r}.values(),
                     key=lambda r: (r["latency_ms"], -r["accuracy"]))
        front, best_acc = [], -1.0
        for r in pts:
            if r["accuracy"] > best_acc:
                front.append(r)
                best_acc = r["accuracy"]
        return front

    def dominating(self, ref: dict) -> list[dict]:
        """Children with higher accuracy than `ref` at no more than its latency."""
        return [r for r in self.history if "error" not in r and r["accuracy"] > ref["accuracy"]
                and r["latency_ms"] <= ref["latency_ms"]]

    def summary(self) -> dict:
        b = self.best
        return dict(strategy=self.strategy, samples=len(self.history), evaluations=self.evaluations,
                    best_reward=b["reward"], best_accuracy=b["accuracy"], best_latency_ms=b["latency_ms"],
                    best_arch=b["arch"], target_ms=self.target_ms, wall_seconds=self.wall_seconds)


class Search:
    """One search over `space` against `target`. See the module docstring for reward and checkpoint.

    accuracy: callable(module) -> accuracy; it may train the module in place (ProxyTrainer,
        CallbackAccuracy or your own). Must be picklable for the Ray executor.
    strategy: reinforce | random | evolution; strategy_options go to its constructor.
    samples: children to propose (duplicates count, but are not trained again).
    children: if set, stop once this many distinct architectures have been evaluated (trained), so that
        strategies are compared at equal cost: a converging controller proposes duplicates, which are
        free. `samples` then caps the proposals (default 20 x children).
    batch: children proposed per controller update (and evaluated concurrently).
    target_ms: T in the reward; None: the latency (predicted, or measured with latency="tvm") of the
        space's MobileNetV2-style member.
    checkpoint: JSONL path; an existing file with the same configuration is resumed.
    """

    def __init__(self, space: SearchSpace, target: Any, accuracy, *, strategy: str = "reinforce",
                 samples: int | None = 64, batch: int = 4, seed: int = 0, target_ms: float | None = None,
                 children: int | None = None,
                 reward: str = "soft", alpha: float | None = None, beta: float | None = None,
                 latency: str = "model", executor: str = "serial", workers: int = 2, ray_address: str | None = None,
                 checkpoint: str | os.PathLike | None = None, progress: bool = False,
                 strategy_options: dict | None = None, evaluate_baseline: bool = False):
        if reward not in REWARD_PRESETS:
            raise ValueError(f"reward must be one of {list(REWARD_PRESETS)}, got {reward!r}")
        if children is not None and children < 1:
            raise ValueError(f"children must be >= 1, got {children}")
        if samples is None:
            if children is None:
                raise ValueError("give samples (proposals) or children (evaluations)")
            samples = 20 * children
        if samples < 1 or batch < 1:
            raise ValueError("samples and batch must be >= 1")
        self.children = children
        a, b = REWARD_PRESETS[reward]
        self.alpha = a if alpha is None else alpha
        self.beta = b if beta is None else beta
        self.space, self.target, self.accuracy = space, target, accuracy
        self.strategy_name, self.samples, self.batch, self.seed = strategy, samples, batch, seed
        self.latency, self.executor_kind, self.workers, self.ray_address = latency, executor, workers, ray_address
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.progress = progress
        self.strategy_options = dict(strategy_options or {})
        self.evaluate_baseline = evaluate_baseline
        self._target_ms = target_ms

    @property
    def target_ms(self) -> float:
        if self._target_ms is None:
            self._target_ms = cost_of(self.space, self.space.baseline(), self.target, self.seed,
                                      self.latency)[1]["latency_ms"]
        return self._target_ms

    def config(self) -> dict:
        return dict(space=self.space.__dict__, target=getattr(self.target, "name", repr(self.target)),
                    strategy=self.strategy_name, strategy_options=self.strategy_options, seed=self.seed,
                    batch=self.batch, alpha=self.alpha, beta=self.beta, target_ms=self.target_ms,
                    latency=self.latency)

    def run(self) -> SearchResult:
        t0 = time.perf_counter()
        space, config = self.space, self.config()
        # read and check the whole checkpoint before writing anything to it
        header, old, torn = read_checkpoint(self.checkpoint, space.vocab) if self.checkpoint else (None, [], 0)
        if header is not None:
            diff = [k for k in config if json.dumps(config[k], sort_keys=True, default=str)
                    != json.dumps(header.get(k), sort_keys=True, default=str)]
            if diff:
                raise CheckpointError(f"checkpoint {self.checkpoint} was written by a different search "
                                 f"(differs in: {', '.join(diff)}); use another checkpoint path")
        done = {r["index"]: r for r in old}
        cache: dict[tuple, dict] = {}
        for r in old:
            if "error" not in r and not r.get("cached"):
                cache.setdefault(space.canonical(r["tokens"]), r)

        fh = None
        if self.checkpoint:
            try:
                self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
                drop_torn_tail(self.checkpoint, torn)
                fh = open(self.checkpoint, "a")
            except OSError as e:
                raise CheckpointError(f"checkpoint {self.checkpoint}: cannot write: {e.strerror or e}") from None
            if header is None:
                self._write(fh, {"header": config})

        strategy = make_strategy(self.strategy_name, space.vocab, self.seed, **self.strategy_options)
        spec = EvalSpec(space, self.target, self.accuracy, self.seed, self.latency)
        executor = None
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=self.samples, desc=f"nas[{self.strategy_name}]", unit="child", leave=False)
        history: list[dict] = []
        best: dict | None = None
        evaluations = 0
        try:
            i = 0
            evaluated = 0  # distinct architectures trained, replayed ones included (the stop rule repeats on resume)
            while i < self.samples and (self.children is None or evaluated < self.children):
                n = min(self.batch, self.samples - i)
                if self.children is not None:  # each proposal trains at most one new child: never overshoot
                    n = min(n, self.children - evaluated)
                replay = [done[i + j]["tokens"] if i + j in done else None for j in range(n)]
                proposals = [tuple(int(x) for x in t) for t in strategy.ask(n, replay)]
                results: dict[int, dict] = {}
                todo, dup = [], {}
                for j, t in enumerate(proposals):
                    key = space.canonical(t)
                    if i + j in done:
                        results[j] = done[i + j]
                    elif key in cache:
                        results[j] = self._record(i + j, t, cache[key], cached=True)
                        self._write(fh, results[j])
                    elif key in dup:
                        pass
                    else:
                        dup[key] = j
                        todo.append((j, t))
                if todo:
                    if executor is None:
                        executor = make_executor(self.executor_kind, spec, self.workers, self.ray_address)
                    for j, res in executor.run(todo):
                        rec = self._record(i + j, proposals[j], res)
                        evaluations += 1
                        results[j] = rec
                        if "error" not in rec:
                            cache[space.canonical(proposals[j])] = rec
                        self._write(fh, rec)
                for j, t in enumerate(proposals):  # duplicates within the batch
                    if j not in results:
                        results[j] = self._record(i + j, t, results[dup[space.canonical(t)]], cached=True)
                        self._write(fh, results[j])
                batch = [results[j] for j in range(n)]
                evaluated += sum(not r.get("cached") for r in batch)
                strategy.tell(proposals, [r["reward"] for r in batch])
                history += batch
                for r in batch:
                    if best is None or r["reward"] > best["reward"]:
                        best = r
                if bar is not None:
                    bar.update(n)
                    bar.set_postfix_str(f"best {best['reward']:.4f} acc {best['accuracy']:.3f} "
                                        f"{best['latency_ms']:.3f}ms {best['arch']}")
                i += n
            baseline = None
            if self.evaluate_baseline:
                baseline = self._baseline(done, cache, fh, executor, spec)
        finally:
            if bar is not None:
                bar.close()
            if executor is not None:
                executor.close()
            if fh is not None:
                fh.close()
        return SearchResult(self.strategy_name, history, self.target_ms, baseline, time.perf_counter() - t0,
                            evaluations, config)

    def _baseline(self, done, cache, fh, executor, spec) -> dict:
        for r in done.values():
            if r["index"] == -1:
                return r
        t = self.space.baseline()
        key = self.space.canonical(t)
        if key in cache:
            rec = self._record(-1, t, cache[key], cached=True)
        else:
            from .execution import evaluate_child
            rec = self._record(-1, t, evaluate_child(spec, t))
        self._write(fh, rec)
        return rec

    def _record(self, index: int, tokens, res: dict, cached: bool = False) -> dict:
        keys = ("accuracy", "latency_ms", "predicted_latency_ms", "flash_bytes", "peak_sram_bytes", "energy_mj",
                "macs", "params", "error")
        rec = dict(index=index, tokens=list(tokens), arch=self.space.describe(tokens),
                   **{k: res[k] for k in keys if k in res})
        rec.setdefault("latency_ms", float("inf"))
        rec["reward"] = 0.0 if "error" in rec else reward(rec["accuracy"], rec["latency_ms"], self.target_ms,
                                                          self.alpha, self.beta)
        rec["seed"] = self.seed
        rec["cached"] = cached
        rec["seconds"] = 0.0 if cached else float(res.get("seconds", 0.0))
        return rec

    @staticmethod
    def _write(fh, rec: dict) -> None:
        if fh is None:
            return
        fh.write(json.dumps(rec, default=float) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def pareto_plot(results: dict[str, SearchResult], path: str | os.PathLike, *, baseline: dict | None = None,
                target_ms: float | None = None, title: str = "NAS: accuracy vs predicted latency") -> None:
    """Accuracy vs latency of every child of each search, with each search's Pareto front, written
    atomically as PNG."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from hwopt.passmanager import atomic_write

    fig = Figure(figsize=(7, 4.5), dpi=110)
    ax = fig.add_subplot(111)
    colors = {"reinforce": "tab:blue", "random": "tab:gray", "evolution": "tab:green"}
    for name, res in results.items():
        pts = [r for r in res.history if "error" not in r]
        c = colors.get(res.strategy, None)
        ax.scatter([r["latency_ms"] for r in pts], [r["accuracy"] for r in pts], s=12, alpha=0.45, color=c,
                   label=f"{name} ({len(res.evaluated())} archs)")
        front = res.pareto()
        ax.step([r["latency_ms"] for r in front], [r["accuracy"] for r in front], where="post", color=c, lw=1.2)
    if baseline is not None:
        ax.scatter([baseline["latency_ms"]], [baseline["accuracy"]], marker="*", s=160, color="tab:red",
                   label="MobileNetV2-style baseline", zorder=5)
    if target_ms:
        ax.axvline(target_ms, color="k", ls=":", lw=1, label=f"T = {target_ms:.3g} ms")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    # outside the axes: inside, the legend covered the baseline star and the low-latency front
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    atomic_write(path, buf.getvalue())
