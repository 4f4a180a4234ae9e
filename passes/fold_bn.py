"""fold-bn: fold an inference-mode batch norm into the conv or linear layer that feeds it.

Compiler practice (e.g. Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", sec. 3.2). With s = γ / sqrt(var + eps) per channel:
W' = W · s (rows), b' = (b − mean) · s + β; the BN node is removed and its users read the layer.
Folds only when the BN is the layer's sole user, so no other reader sees the rescaled output, and not
into a layer whose weights another call shares (one module of the user's called twice): folding would
give that call its own weights, and the "optimized" model would grow by a copy of the layer.
"""
from __future__ import annotations

import torch

from hwopt.ir import Graph, shared_nodes
from hwopt.passmanager import Pass, PassContext, register_pass


def bn_affine(bn, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, t) of an inference-mode batch norm node: BN(x) = x · s + t per channel, s = γ / sqrt(var + eps),
    t = β − mean · s; in `dtype` if given (the firmware folds in float64), else in the parameters' own."""
    p = {k: v if dtype is None else v.detach().to(dtype) for k, v in bn.params.items()}
    scale = p.get("weight", torch.ones_like(p["running_var"])) / torch.sqrt(p["running_var"] + bn.attrs["eps"])
    return scale, p.get("bias", torch.zeros_like(p["running_mean"])) - p["running_mean"] * scale


@register_pass("fold-bn")
class FoldBatchNorm(Pass):
    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        out = None
        shared = {name for names in shared_nodes(graph) for name in names}
        for name in [n.name for n in graph if n.op == "batch_norm"]:
            g = out if out is not None else graph
            bn = g[name]  # as the folds so far left it: a BN reading a folded BN now reads that BN's layer
            src_name = bn.inputs[0]
            src = g[src_name]
            if src.op not in ("conv2d", "linear") or len(g.users(src_name)) != 1 or src_name in shared:
                continue
            if out is None:
                out = graph.copy()
            layer = out[src_name].copy()
            scale, shift = bn_affine(bn)
            w = layer.params["weight"]
            layer.params["weight"] = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
            bias = layer.params.get("bias")
            layer.params["bias"] = shift if bias is None else bias * scale + shift
            out.replace(layer)
            out.replace_uses(bn.name, src_name)
            out.remove(bn.name)
        return graph if out is None else out
