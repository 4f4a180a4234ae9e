"""nas: MnasNet's factorized hierarchical search with a REINFORCE controller, against target costs.

Zoph & Le 2017 (RNN controller trained with REINFORCE and a moving-average baseline), Tan et al. 2019
(MnasNet: factorized hierarchical space, reward ACC(m) * [LAT(m)/T]^w). Baselines in the same harness:
random search and regularized evolution (Real et al. 2019).

The pass ignores its input graph's layers: it reads the input shape and the number of classes from
it, searches the space for the context's target, and returns the best child as a Graph, trained with
the context's callbacks (or the built-in MNIST proxy trainer when the input is 1x28x28 with 10
classes and no callbacks are given). Module layout: space.py (space, decode to torch), controller.py
(REINFORCE LSTM, random, evolution), execution.py (evaluation; serial / process pool / Ray),
search.py (loop, reward, resume, Pareto plot), checkpoint.py (the checkpoint file, validated before any write). Ray is imported only when used.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional

from hwopt.errors import PassError
from hwopt.ir import Graph
from hwopt.passmanager import Pass, PassContext, register_pass

from .checkpoint import CheckpointError, read_checkpoint
from .controller import Controller, RandomSearch, RegularizedEvolution, Reinforce, make_strategy
from .execution import CallbackAccuracy, EvalSpec, ProxyTrainer, cost_of, evaluate_child, recalibrate_bn
from .search import REWARD_PRESETS, Search, SearchResult, pareto_plot, reward
from .space import DECISIONS, BlockChoice, SearchSpace

__all__ = ["NAS", "SearchSpace", "BlockChoice", "DECISIONS", "Search", "SearchResult", "reward", "REWARD_PRESETS",
           "pareto_plot", "Controller", "Reinforce", "RandomSearch", "RegularizedEvolution", "make_strategy",
           "ProxyTrainer", "CallbackAccuracy", "EvalSpec", "evaluate_child", "cost_of", "recalibrate_bn",
           "space_for", "CheckpointError", "read_checkpoint"]


def space_for(graph: Graph, **kw) -> SearchSpace:
    """A SearchSpace whose input shape and classes are those of `graph` (N, C, H, W) -> (N, classes)."""
    ins = graph.inputs
    if len(ins) != 1 or len(ins[0].spec.shape) != 4:
        raise PassError("nas needs a graph with one image input (N, C, H, W)")
    _, c, h, w = ins[0].spec.shape
    out = graph[graph.output.inputs[0]].spec.shape
    if len(out) != 2:
        raise PassError(f"nas needs a classifier output (N, classes), got shape {tuple(out)}")
    return SearchSpace(in_channels=int(c), num_classes=int(out[1]), resolution=int(min(h, w)), **kw)


@register_pass("nas")
class NAS(Pass):
    """Search the MnasNet space for the context's target; return the best child's graph.

    strategy: reinforce | random | evolution.  samples: children proposed; children: if set, stop after
    this many distinct children were trained (equal cost across strategies; the proposals are then
    capped at max(samples, 20 x children)); batch: per controller update (evaluated concurrently).  reward: soft (alpha = beta = -0.07) or hard (0, -1); alpha/beta
    override.  target_ms: T (default: predicted latency of the space's MobileNetV2-style member).
    latency: model (the target's cost model) or tvm (compiled and timed).  epochs: training of each
    child with ctx.train; final_epochs: extra training of the winner.  executor: serial | process | ray
    with `workers`.  checkpoint: JSONL path (default: ctx.checkpoint_dir/nas-<strategy>-<seed>.jsonl).
    baselines: other strategies run with the same budget for the plot (e.g. [random,evolution]).
    plot: PNG path (default: ctx.checkpoint_dir/nas-pareto.png when a checkpoint_dir is set).
    """
    needs = ("target",)

    strategy: Literal["reinforce", "random", "evolution"] = "reinforce"
    samples: int = 32
    children: Optional[int] = None
    batch: int = 4
    blocks: int = 7
    skeleton: Literal["auto", "mnasnet", "small"] = "auto"
    width: float = 1.0
    head: int = 1280
    divisor: int = 8
    reward: Literal["soft", "hard"] = "soft"
    alpha: Optional[float] = None
    beta: Optional[float] = None
    target_ms: Optional[float] = None
    latency: Literal["model", "tvm"] = "model"
    epochs: float = 1.0
    final_epochs: float = 0.0
    proxy_steps: int = 48
    proxy_train: int = 1024
    proxy_eval: int = 1000
    executor: Literal["serial", "process", "ray"] = "serial"
    workers: int = 2
    checkpoint: Optional[str] = None
    baselines: tuple[str, ...] = ()
    plot: Optional[str] = None

    def validate(self) -> None:
        for name in ("samples", "batch", "blocks", "head", "divisor", "workers", "proxy_steps", "proxy_train",
                     "proxy_eval"):
            if getattr(self, name) < 1:
                raise PassError(f"nas: option {name!r} must be >= 1, got {getattr(self, name)}")
        if self.children is not None and self.children < 1:
            raise PassError(f"nas: option 'children' must be >= 1, got {self.children}")
        if self.width <= 0:
            raise PassError(f"nas: option 'width' must be > 0, got {self.width}")
        if self.target_ms is not None and self.target_ms <= 0:
            raise PassError(f"nas: option 'target_ms' must be > 0, got {self.target_ms}")
        if self.epochs < 0 or self.final_epochs < 0:
            raise PassError("nas: options 'epochs' and 'final_epochs' must be >= 0")
        for b in self.baselines:
            if b not in ("random", "evolution", "reinforce"):
                raise PassError(f"nas: option 'baselines' has unknown strategy {b!r} (random, evolution)")

    def _accuracy(self, space: SearchSpace, ctx: PassContext):
        if ctx.evaluate is not None:
            return CallbackAccuracy(ctx.train, ctx.evaluate, self.epochs)
        if (space.in_channels, space.resolution, space.num_classes) == (1, 28, 10):
            return ProxyTrainer(self.proxy_train, self.proxy_eval, self.proxy_steps, seed=ctx.seed)
        raise PassError("nas needs ctx.evaluate (and ctx.train) to score children; the built-in proxy "
                        "trainer only covers MNIST-shaped inputs (1x28x28, 10 classes)")

    def _search(self, strategy: str, space, acc, ctx: PassContext) -> SearchResult:
        ckpt = self.checkpoint
        if ckpt and strategy != self.strategy:
            p = Path(ckpt)
            ckpt = str(p.with_name(f"{p.stem}-{strategy}{p.suffix}"))
        elif not ckpt and ctx.checkpoint_dir:
            ckpt = os.path.join(ctx.checkpoint_dir, f"nas-{strategy}-{ctx.seed}.jsonl")
        try:
            samples = self.samples if self.children is None else max(self.samples, 20 * self.children)
            return Search(space, ctx.target, acc, strategy=strategy, samples=samples, children=self.children,
                          batch=self.batch,
                          seed=ctx.seed, target_ms=self.target_ms, reward=self.reward, alpha=self.alpha,
                          beta=self.beta, latency=self.latency, executor=self.executor, workers=self.workers,
                          checkpoint=ckpt, progress=ctx.progress,
                          evaluate_baseline=strategy == self.strategy).run()
        except ValueError as e:  # e.g. a checkpoint written by a different search
            raise PassError(f"nas: {e}") from e

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        ctx.require(self)
        try:
            space = space_for(graph, blocks=self.blocks, skeleton=self.skeleton, width=self.width, head=self.head,
                              divisor=self.divisor)
        except ValueError as e:
            raise PassError(f"nas: {e}") from None
        acc = self._accuracy(space, ctx)
        main = self._search(self.strategy, space, acc, ctx)
        others = {b: self._search(b, space, acc, ctx) for b in self.baselines if b != self.strategy}
        best = main.best
        # The winner, rebuilt from its seed and trained exactly as in the search (so its accuracy repeats).
        from hwopt import lift, lower
        module = lower(space.graph(best["tokens"], ctx.seed))
        import torch
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            final_acc = float(acc(module))
            if self.final_epochs > 0 and ctx.train is not None:
                ctx.train(module, epochs=self.final_epochs)
                final_acc = float(ctx.evaluate(module)) if ctx.evaluate is not None else final_acc
        out = lift(module.eval(), space.example_input())
        plot = self.plot or (os.path.join(ctx.checkpoint_dir, "nas-pareto.png") if ctx.checkpoint_dir else None)
        if plot:
            pareto_plot({self.strategy: main, **others}, plot, baseline=main.baseline, target_ms=main.target_ms,
                        title=f"NAS for {ctx.target.name}: accuracy vs predicted latency")
        ctx.records.append({"pass": "nas.search", "space": space.__dict__, "target_ms": main.target_ms,
                            "search": main.summary(), "baseline": main.baseline,
                            "baselines": {k: v.summary() for k, v in others.items()},
                            "pareto": [{k: r[k] for k in ("arch", "accuracy", "latency_ms", "reward")}
                                       for r in main.pareto()],
                            "best": {**best, "final_accuracy": final_acc}, "plot": plot,
                            "history": main.history})
        return out
