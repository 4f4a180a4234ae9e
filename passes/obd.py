"""obd: Optimal Brain Damage — LeCun, Denker, Solla, NIPS 1989.

Each weight's saliency is the second-order estimate of the loss increase if it is deleted,
s_k = h_kk · w_k² / 2, with h_kk the diagonal of the Hessian of the training loss (the gradient term
vanishes at a minimum and off-diagonal terms are neglected). The lowest-saliency weights are masked off,
the network is retrained with the masks fixed, and this is iterated (the paper's procedure, steps 2–6).

The Hessian diagonal (option `hessian`):
- `gauss-newton` (default): the diagonal of the generalised Gauss-Newton matrix, estimated by Monte
  Carlo — for cross-entropy, GGN = Fisher = E_x E_{y~p(y|x)} [g_y g_yᵀ], so its diagonal is the mean of
  squared *per-example* gradients with labels sampled from the model's own softmax (torch.func vmap).
  Positive semi-definite, like the Levenberg-Marquardt approximation LeCun et al. used (they dropped
  the f'' terms of their second-order backprop for the same reason).
- `hutchinson`: unbiased for the true Hessian diagonal, diag(H) ≈ mean_z z ⊙ (H z) with Rademacher z,
  H z by double backprop over the batch. Can be negative away from a minimum; negatives are clamped to 0
  (their second-order cost of deletion is ≤ 0).

Data: the estimate needs training examples. The pass takes them from `ctx.data` (an iterable of (x, y)
batches) when the context has that field, else from the Trainer behind `ctx.train` (a bound method of
`hwopt.data.Trainer`: its x_train / y_train), else it raises a PassError. `hessian_samples` examples
are used (a seeded random subset).

Scope: `global` (default, as in OBD: one saliency ranking across all pruned layers) or `layer`
(each layer to the same fraction).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from hwopt.errors import PassError
from hwopt.ir import Graph
from hwopt.lower import lower
from hwopt.passkit import l2_penalty, train_graph
from hwopt.passmanager import Pass, PassContext, option, register_pass
from hwopt import sparse as sp

log = logging.getLogger(__name__)


def training_batches(ctx: PassContext, samples: int, seed: int = 0, batch: int = 256):
    """Up to `samples` training examples as (x, y) batches, from ctx.data or the Trainer of ctx.train."""
    data = getattr(ctx, "data", None)
    if data is not None:
        out, n = [], 0
        for x, y in (data() if callable(data) else data):
            out.append((x, y))
            n += len(x)
            if n >= samples:
                break
        return out
    owner = getattr(ctx.train, "__self__", None)
    if owner is not None and hasattr(owner, "x_train") and hasattr(owner, "y_train"):
        x, y = owner.x_train, owner.y_train
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:samples]
        return [(x[idx[i:i + batch]], y[idx[i:i + batch]]) for i in range(0, len(idx), batch)]
    raise PassError("pass 'obd' needs training data for its Hessian estimate: set ctx.data (an iterable of "
                    "(x, y) batches) or pass a hwopt.data.Trainer's train method as ctx.train")


def hessian_diagonal(graph: Graph, names: list[str], batches, method: str = "gauss-newton", probes: int = 8,
                     seed: int = 0, chunk: int = 64) -> dict[str, torch.Tensor]:
    """Estimate diag(H) of the mean cross-entropy loss w.r.t. the weights of nodes `names`."""
    module = lower(graph)
    module.eval()
    # map node names to module paths via the order of parametric layers (lower keeps topological order)
    paths = [n.target for n in module.graph.nodes if n.op == "call_module"
             and hasattr(module.get_submodule(n.target), "weight")]
    layer_nodes = [n.name for n in graph if n.op in ("conv2d", "linear", "batch_norm")]
    path_of = dict(zip(layer_nodes, paths))
    keys = {path_of[n] + ".weight": n for n in names}
    params = {k: v.detach() for k, v in module.named_parameters()}
    buffers = {k: v.detach() for k, v in module.named_buffers()}
    diag = {n: torch.zeros_like(params[k]) for k, n in keys.items()}
    gen = torch.Generator().manual_seed(seed)
    total = sum(len(x) for x, _ in batches)
    if method == "gauss-newton":
        from torch.func import functional_call, grad, vmap
        wanted = {k: params[k] for k in keys}
        rest = {k: v for k, v in params.items() if k not in keys}

        def loss_one(w, x, y):
            out = functional_call(module, ({**rest, **w}, buffers), (x.unsqueeze(0),))
            return F.cross_entropy(out, y.unsqueeze(0))

        per_example = vmap(grad(loss_one), in_dims=(None, 0, 0))
        for x, _ in batches:
            with torch.no_grad():
                probs = F.softmax(module(x), dim=1)
            y_s = torch.multinomial(probs, 1, generator=gen).squeeze(1)  # labels from the model: GGN, not empirical Fisher
            for i in range(0, len(x), chunk):
                g = per_example(wanted, x[i:i + chunk], y_s[i:i + chunk])
                for k, n in keys.items():
                    diag[n] += (g[k] ** 2).sum(0)
        return {n: d / total for n, d in diag.items()}
    if method == "hutchinson":
        ws = [dict(module.named_parameters())[k] for k in keys]
        for x, y in batches:
            loss = F.cross_entropy(module(x), y)
            gs = torch.autograd.grad(loss, ws, create_graph=True)
            for p in range(probes):
                zs = [torch.randint(0, 2, w.shape, generator=gen).to(w.dtype) * 2 - 1 for w in ws]
                hz = torch.autograd.grad(gs, ws, grad_outputs=zs, retain_graph=p < probes - 1)
                for (k, n), z, h in zip(keys.items(), zs, hz):
                    diag[n] += (z * h).detach() * len(x) / probes
        return {n: (d / total).clamp_min(0) for n, d in diag.items()}
    raise PassError(f"option 'hessian' of pass 'obd': unknown method {method!r}")


def saliencies(graph: Graph, names: list[str], hdiag: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """s_k = h_kk · w_k² / 2 for the effective (masked) weights."""
    return {n: hdiag[n] * sp.effective_weight(graph[n]) ** 2 / 2 for n in names}


def masks_from_saliency(graph: Graph, sal: dict[str, torch.Tensor], fraction: float, scope: str) -> dict[str, torch.Tensor]:
    """Masks that prune `fraction` of the weights of `sal`'s layers, lowest saliency first (globally or per layer)."""
    names = list(sal)
    if scope == "layer":
        return {n: sp.prune_lowest(sal[n], sp.current_mask(graph[n]), fraction) for n in names}
    flat_s = torch.cat([sal[n].reshape(-1).to(torch.float64) for n in names])
    flat_m = torch.cat([sp.current_mask(graph[n]).reshape(-1) for n in names])
    new = sp.prune_lowest(flat_s, flat_m, fraction)
    out, pos = {}, 0
    for n in names:
        k = sal[n].numel()
        out[n] = new[pos:pos + k].reshape(sal[n].shape)
        pos += k
    return out


@register_pass("obd")
@dataclass(frozen=True)
class OptimalBrainDamage(Pass):
    sparsity: float = option(0.9, gt=0.0, lt=1.0)  # overall fraction of the pruned layers' weights removed
    iterations: int = option(3, ge=1)          # prune → retrain rounds (each removes the same share of survivors)
    retrain_epochs: float = option(1.0, ge=0.0)  # ctx.train epochs per round (0: no retraining)
    l2: float = option(0.0, ge=0.0)            # L2 penalty while retraining
    hessian: Literal["gauss-newton", "hutchinson"] = "gauss-newton"
    hessian_samples: int = option(1024, ge=1)  # training examples for the Hessian estimate
    probes: int = option(8, ge=1)              # Rademacher probes per batch (hutchinson)
    scope: Literal["global", "layer"] = "global"
    adjust_dropout: bool = True
    remove_dead: bool = True
    layers: tuple[str, ...] = ()
    protect: tuple[str, ...] = ()

    def requirements(self) -> tuple[str, ...]:
        return ("train",) if self.retrain_epochs > 0 else ()

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        names = sp.prunable_layers(graph, self.layers, self.protect)
        if not names:
            return graph
        batches = training_batches(ctx, self.hessian_samples, ctx.seed)
        g = graph
        for i in range(1, self.iterations + 1):
            target = 1.0 - (1.0 - self.sparsity) ** (i / self.iterations)
            h = hessian_diagonal(g, names, batches, self.hessian, self.probes, seed=ctx.seed + i)
            g = sp.with_masks(g, masks_from_saliency(g, saliencies(g, names, h), target, self.scope))
            g = train_graph(g, ctx, self.retrain_epochs, penalty=l2_penalty(self.l2), who=self.name)
            if ctx.progress:
                log.info("obd round %d/%d: sparsity %.3f", i, self.iterations, sp.sparsity(g, names))
        return sp.finish(graph, g, adjust_dropout_rate=self.adjust_dropout, remove_dead=self.remove_dead,
                         log=log, who="obd")
