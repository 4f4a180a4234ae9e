"""magnitude-prune: Han, Pool, Tran, Dally, "Learning both Weights and Connections for Efficient Neural
Networks" (NIPS 2015).

Unstructured pruning: weights below a per-layer threshold are masked off (a `weight_mask` parameter
beside the weight), the network is retrained with the masks held fixed, and this is iterated.

How the per-layer amounts are chosen (never hand-set):
- `sparsity=s`, `allocation="auto"` (default). With retraining to follow (retrain epochs > 0 and
  ctx.train): one global magnitude threshold, no scan. Without: a sensitivity scan (sec. 3.4, Fig. 2:
  each layer pruned alone at increasing fractions, accuracy measured with ctx.evaluate, no retraining)
  gives each layer's accuracy-vs-fraction curve; three candidate allocations reach s: one global
  threshold over all layers, `equal-drop` and `min-drop` (below). Each is measured once, one-shot, with
  ctx.evaluate (the held-out split the scan used) and the most accurate wins; a tie goes to the global
  threshold. Why measure rather than trust the curves: the curves prune one layer at a time, and the
  loss of several layers pruned together is not the sum of theirs; on LeNet-300-100 at 90 % the
  equal-drop allocation alone kept 71 % accuracy where one global threshold kept 82 %. Why not after
  retraining: a better one-shot start does not carry through it (bench/han2015.py, LeNet-300-100, seeds
  0 and 3, 2x2 retraining epochs: min-drop picked one-shot at 95 % ended 1.70 % vs the global
  threshold's 1.61 % test error; across 80-95 % the retrained allocations are within ~0.1 pt, the seed
  noise). The plan records the allocation and every candidate's accuracy (`ctx.note`).
- `allocation="global"`: one threshold over all layers' |w| (`hwopt.sensitivity.allocate_global_threshold`);
  no scan. Without ctx.evaluate, `sparsity=` uses it too, and the pass notes that no scan ran.
- `allocation="equal-drop"`: every layer is pruned up to the point where its own curve loses the same
  δ, with δ the smallest drop that reaches s overall (`hwopt.sensitivity.allocate_sparsity`).
  Sensitive layers (conv) get less. `allocation="min-drop"`: the fractions that reach s with the least
  summed loss read off the curves (`allocate_sparsity_min_drop`): a small layer's weights are cheap to
  keep, so it is spared (the paper keeps 26 % of LeNet-300-100's last layer, 8 % of its first).
- no `sparsity`, no `quality`: each layer is pruned as far as its curve stays within
  `max_accuracy_drop` of the unpruned accuracy (`hwopt.sensitivity.fractions_for_drop`).
- `quality=q`: the paper's rule, threshold = q × std of the layer's weights (no scan); the resulting
  fraction per layer is measured once on the incoming weights and then treated like the above.

Then `iterations` rounds of prune → retrain: round i prunes each layer to its round-i fraction, by
magnitude of the current (retrained) weights; masks only shrink. `schedule="geometric"` (default):
1 − (1 − f₀)·((1 − f)/(1 − f₀))^(i/iterations) from the layer's incoming sparsity f₀, the same share of the
survivors each round (from a dense net, 1 − (1 − f)^(i/iterations)). Until 2026-12-01 it ignored f₀: a
second pass continuing from a pruned net (bench/han2015.py's 15x stage from its 12x net) then pruned
nothing until its last round and all of the step there, one-shot. `schedule="cubic"` (Zhu & Gupta
2017, "To prune, or not to prune", eq. 1): f + (f₀ − f)(1 − i/iterations)³ from the layer's incoming
sparsity f₀: most of the pruning early, while the net has weights to spare, and a small last step, so
the long last round starts close to where it ends.
Retraining goes through ctx.train for `retrain_epochs` per round, the last round for
`final_retrain_epochs` if set ("retrain to convergence" after the final pruning step). `final_cycles`
makes the last round cosine cycles with warm restarts; `final_keep_best` (with `final_eval_every`) keeps
the checkpoint that scores best on the held-out split ctx.train evaluates on; `final_average` ends on
the mean of the cycle-end weights instead (stochastic weight averaging, Izmailov et al. 2018); see
`hwopt.data.Trainer.train`. An L2 penalty of strength `l2` acts on the surviving weights (sec. 3.1: L2
retrains better than L1). Dropout feeding a pruned layer is rescaled by the paper's rule
D_r = D_o·sqrt(C_ir/C_io) (sec. 3.1, `adjust_dropout`). Last,
neurons and channels left with no live inputs or no live outputs are removed exactly (sec. 3.3,
`hwopt.sparse.remove_dead_units`: e.g. hidden units of LeNet-300-100).

Latency, honestly: masked weights lower to dense kernels (torch: MaskedLinear multiplies the mask in;
`lower(g, bake_masks=True)` bakes zeros in), and a dense kernel over zeros is not faster. What TVM 0.27
offers for sparse CPU kernels (checked in the installed apache-tvm 0.27.0.post1): nothing usable. Relax
has no sparse tensor type — its PyTorch frontend (`relax/frontend/torch/exported_program_translator.py`,
`_to_sparse`: "Relax does not support sparse tensors yet") densifies sparse tensors and lowers
`_sparse_mm` / `_sparse_addmm` to a dense `matmul`; TOPI keeps only `sparse_reshape` / `sparse_to_dense`.
The sparse operators that existed (`nn.sparse_dense`, `sparse_conv2d` with BSR weights, the
`DenseToSparse` / `Conv2dToSparse` rewrites and their x86 schedules) were Relay's, and Relay is gone
from 0.27 (no `tvm.relay`). A sparse kernel would have to be written by hand in TensorIR (a CSR loop
nest) and scheduled; Relay's BSR path was built for *block* sparsity (e.g. 16×1 blocks), whereas
Han-style unstructured masks (8–10 % non-zeros, no blocks) mean irregular gathers, and at LeNet's sizes
we do not expect (and have not measured) a win over a dense GEMM. So the honest latency of a masked
graph is its dense latency.
The win is storage:
`hwopt.sparse.flash_bytes` (Deep Compression's relative-index format), which the target cost model uses
for flash; its latency figure for a masked graph is that of the dense graph.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass, field
from typing import Optional

import torch

from hwopt.errors import PassError
from hwopt.ir import Graph
from hwopt.lower import lower
from hwopt.passkit import l2_penalty, train_graph
from hwopt.passmanager import Pass, PassContext, option, register_pass
from hwopt import sensitivity as sens
from hwopt import sparse as sp

log = logging.getLogger(__name__)


def prune_layer_by_magnitude(graph: Graph, name: str, fraction: float) -> Graph:
    """A copy of `graph` with `fraction` of node `name`'s weights (counting already-pruned ones) masked
    off, smallest |w| first."""
    n = graph[name]
    mask = sp.prune_lowest(sp.effective_weight(n).abs(), sp.current_mask(n), fraction)
    return sp.with_masks(graph, {name: mask})


def magnitude_masks(graph: Graph, fractions: dict[str, float]) -> dict[str, torch.Tensor]:
    return {k: sp.prune_lowest(sp.effective_weight(graph[k]).abs(), sp.current_mask(graph[k]), f)
            for k, f in fractions.items()}


def geometric_fraction(start: float, final: float, t: float) -> float:
    """Pruned fraction at progress t ∈ (0, 1]: the same share of the incoming survivors (1 − start) pruned
    in each round, so that every round of a pass continuing from a pruned net prunes too."""
    if start >= final:
        return start
    return 1.0 - (1.0 - start) * ((1.0 - final) / (1.0 - start)) ** t


def cubic_fraction(start: float, final: float, t: float) -> float:
    """Zhu & Gupta 2017, eq. 1: s_t = s_f + (s_i − s_f)(1 − t)³ from the incoming sparsity s_i."""
    return final + (start - final) * (1.0 - t) ** 3


SCHEDULES = {"geometric": geometric_fraction, "cubic": cubic_fraction}
ALLOCATION_CHOICES = ("auto", "global") + tuple(sens.ALLOCATIONS)


def global_fractions(graph: Graph, names: list[str], sparsity: float) -> dict[str, float]:
    """Per-layer fractions of one magnitude threshold over all `names` (masked weights count as pruned)."""
    return sens.allocate_global_threshold({k: sp.effective_weight(graph[k]).abs() for k in names}, sparsity)


@dataclass
class Plan:
    """What a magnitude-prune run decided: per-layer final fractions, the scan behind them."""
    fractions: dict[str, float]
    scan: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    baseline: Optional[float] = None
    allocation: str = ""                      # the allocation that produced `fractions`
    candidates: dict[str, float] = field(default_factory=dict)  # auto: one-shot accuracy of each candidate
    note: str = ""                            # what the report should say (e.g. that no scan ran)

    def describe(self) -> str:
        return ", ".join(f"{k}: {100 * f:.1f}%" for k, f in self.fractions.items())


@register_pass("magnitude-prune")
@dataclass(frozen=True)
class MagnitudePrune(Pass):
    sparsity: Optional[float] = option(None, gt=0.0, lt=1.0)  # overall target fraction of the pruned layers' weights
    quality: Optional[float] = option(None, gt=0.0)  # threshold = quality × std(weights) per layer (paper's rule)
    max_accuracy_drop: float = option(0.01, ge=0.0, le=1.0)  # per-layer budget when no sparsity / quality is given
    allocation: str = option("auto", choices=ALLOCATION_CHOICES)  # sparsity → per layer (see the module doc)
    iterations: int = option(3, ge=1)         # prune → retrain rounds
    schedule: str = option("geometric", choices=tuple(SCHEDULES))  # per-round fractions (cubic: Zhu & Gupta 2017)
    retrain_epochs: float = option(1.0, ge=0.0)  # epochs of ctx.train per round (0: no retraining)
    final_retrain_epochs: Optional[float] = option(None, ge=0.0)  # the last round's epochs (default: retrain_epochs)
    final_cycles: int = option(1, ge=1)       # the last round as this many cosine cycles (warm restarts)
    final_keep_best: bool = False             # the last round keeps its best checkpoint on ctx's eval split
    final_eval_every: Optional[float] = option(None, gt=0.0)  # ... evaluated also every this many epochs
    final_average: bool = False               # the last round ends on the mean of its cycle-end weights (SWA)
    l2: float = option(0.0, ge=0.0)           # L2 penalty strength while retraining
    adjust_dropout: bool = True               # D_r = D_o·sqrt(C_ir/C_io)
    remove_dead: bool = True                  # remove neurons with no live inputs or outputs
    layers: tuple[str, ...] = ()              # only these conv/linear nodes (default: all)
    protect: tuple[str, ...] = ()             # never prune these
    scan_fractions: tuple[float, ...] = sens.DEFAULT_FRACTIONS
    plot: str = ""                            # write the sensitivity curves (PNG) here

    def validate(self) -> None:
        if self.sparsity is not None and self.quality is not None:
            self.invalid("sparsity", "excludes 'quality': set one of them")
        if self.final_eval_every is not None and not self.final_keep_best:
            self.invalid("final_eval_every", "needs final_keep_best=true")
        if self.final_average and self.final_cycles < 2:
            self.invalid("final_average", "averages the last round's cycle ends: it needs final_cycles >= 2, "
                                          f"got {self.final_cycles}")
        if self.final_average and self.final_keep_best:
            self.invalid("final_average", "excludes 'final_keep_best': set one of them")
        if not self.scan_fractions or any(not 0.0 < f < 1.0 for f in self.scan_fractions):
            self.invalid("scan_fractions", f"needs values in (0, 1), got {self.scan_fractions}")

    def needs_scan(self) -> bool:
        """A sensitivity scan (and so ctx.evaluate) is needed: max_accuracy_drop mode, or an explicit
        scan-based allocation. `auto` scans when it can and falls back to the global threshold."""
        if self.quality is not None:
            return False
        return self.sparsity is None or self.allocation in sens.ALLOCATIONS

    def requirements(self) -> tuple[str, ...]:
        return (("evaluate",) if self.needs_scan() else ()) + \
            (("train",) if max(self.round_epochs(i) for i in range(1, self.iterations + 1)) > 0 else ())

    # -- planning -------------------------------------------------------------------------------------
    def plan(self, graph: Graph, ctx: PassContext) -> Plan:
        names = sp.prunable_layers(graph, self.layers, self.protect)
        if not names:
            return Plan({})
        if self.quality is not None:
            fr = {}
            for k in names:
                w = graph[k].params["weight"]
                thr = self.quality * float(w.std())
                fr[k] = float((sp.effective_weight(graph[k]).abs() < thr).float().mean())
            return self._noted(ctx, Plan(fr, allocation="quality"))
        if ctx.evaluate is None and self.needs_scan():
            raise PassError(f"pass {self.name!r} needs evaluate in the PassContext for its sensitivity scan "
                            f"(allocation={self.allocation!r}, sparsity={self.sparsity}); set sparsity with "
                            "allocation 'global' or 'auto', or 'quality', to prune without one")
        retrains = any(self.round_epochs(i) > 0 for i in range(1, self.iterations + 1)) and ctx.train is not None
        if self.sparsity is not None and (self.allocation == "global" or ctx.evaluate is None
                                          or (self.allocation == "auto" and retrains)):
            note = ("no sensitivity scan ran (no evaluate callback): one global magnitude threshold"
                    if ctx.evaluate is None and self.allocation != "global" else
                    "no sensitivity scan ran: retraining follows, where one global threshold is the measured "
                    "safe choice (bench/han2015.py)" if self.allocation == "auto" else "")
            if note:
                log.info("magnitude-prune: %s", note)
            return self._noted(ctx, Plan(global_fractions(graph, names, self.sparsity), allocation="global", note=note))
        scan = sens.sensitivity_scan(graph, names, prune_layer_by_magnitude, ctx.evaluate, self.scan_fractions,
                                     progress=ctx.progress)
        if self.plot:
            sens.plot_sensitivity(scan, self.plot, title="magnitude-prune sensitivity",
                                  labels={k: f"{k} ({graph[k].op})" for k in names})
        base = scan[names[0]][0][1]
        if self.sparsity is None:
            return self._noted(ctx, self._kept(graph, Plan(sens.fractions_for_drop(scan, self.max_accuracy_drop),
                                                           scan, base, "max-drop")))
        sizes = {k: graph[k].params["weight"].numel() for k in names}
        if self.allocation != "auto":
            fr = sens.ALLOCATIONS[self.allocation](scan, sizes, self.sparsity)
            return self._noted(ctx, self._kept(graph, Plan(fr, scan, base, self.allocation)))
        # auto: measure each candidate once, one-shot, on the evaluate split; ties keep the global threshold
        cands = {"global": global_fractions(graph, names, self.sparsity)}
        cands.update({k: fn(scan, sizes, self.sparsity) for k, fn in sens.ALLOCATIONS.items()})
        acc = {}
        for k, fr in cands.items():
            fr = self._kept(graph, Plan(fr)).fractions
            acc[k] = float(ctx.evaluate(lower(sp.with_masks(graph, magnitude_masks(graph, fr)))))
        best = max(acc, key=lambda k: (acc[k], k == "global"))
        return self._noted(ctx, self._kept(graph, Plan(cands[best], scan, base, best, acc)))

    @staticmethod
    def _kept(graph: Graph, plan: Plan) -> Plan:
        """Existing masks are kept: a layer never ends less pruned than it came in."""
        plan.fractions = {k: max(f, 1.0 - float(sp.current_mask(graph[k]).mean())) for k, f in plan.fractions.items()}
        return plan

    def _noted(self, ctx: PassContext, plan: Plan) -> Plan:
        info = {"allocation": plan.allocation, "fractions": dict(plan.fractions), "scan": bool(plan.scan)}
        if plan.candidates:
            info["candidates_one_shot_accuracy"] = dict(plan.candidates)
        if plan.note:
            info["note"] = plan.note
        ctx.note(**info)
        return plan

    # -- pruning --------------------------------------------------------------------------------------
    def round_epochs(self, i: int) -> float:
        """Retraining epochs after pruning round i (1-based): the last round may retrain longer, as Han
        et al. retrain to convergence after the final pruning step."""
        if i == self.iterations and self.final_retrain_epochs is not None:
            return self.final_retrain_epochs
        return self.retrain_epochs

    def final_train_options(self) -> dict:
        """Keyword arguments for ctx.train in the last round (`hwopt.data.Trainer.train` takes them); only
        the non-default ones, so a ctx.train that knows nothing of them still works without them."""
        kw = {}
        if self.final_cycles > 1:
            kw["cycles"] = self.final_cycles
        if self.final_average:
            kw["average"] = True
        if self.final_keep_best:
            kw["keep_best"] = True
            if self.final_eval_every is not None:
                kw["eval_every"] = self.final_eval_every
        return kw

    def apply(self, graph: Graph, ctx: PassContext, plan: Plan) -> Graph:
        if not plan.fractions or all(f <= 0 for f in plan.fractions.values()):
            return graph
        final = self.final_train_options()
        final_ctx = (dataclasses.replace(ctx, train=functools.partial(ctx.train, **final))
                     if final and ctx.train is not None else ctx)
        g = graph
        start = {k: 1.0 - float(sp.current_mask(graph[k]).mean()) for k in plan.fractions}
        for i in range(1, self.iterations + 1):
            step = {k: SCHEDULES[self.schedule](start[k], f, i / self.iterations) for k, f in plan.fractions.items()}
            g = sp.with_masks(g, magnitude_masks(g, step))
            rctx = final_ctx if i == self.iterations else ctx
            g = train_graph(g, rctx, self.round_epochs(i), penalty=l2_penalty(self.l2), who=self.name)
            if ctx.progress:
                acc = ctx.evaluate(lower(g)) if ctx.evaluate is not None else float("nan")
                log.info("magnitude-prune round %d/%d: sparsity %.3f, accuracy %.4f", i, self.iterations,
                         sp.sparsity(g, list(plan.fractions)), acc)
        return sp.finish(graph, g, adjust_dropout_rate=self.adjust_dropout, remove_dead=self.remove_dead,
                         log=log, who="magnitude-prune")

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        return self.apply(graph, ctx, self.plan(graph, ctx))
