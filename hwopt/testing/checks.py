"""Checks for pass tests: a graph's fingerprint (to prove a pass left its input untouched) and output closeness."""
from __future__ import annotations

import hashlib

import torch

from ..ir import Graph
from ..lower import lower


def fingerprint(graph: Graph) -> str:
    """A digest of the graph's structure, attributes, specs and every parameter's bytes."""
    h = hashlib.sha256()
    for name in graph.nodes:  # insertion order, so reordering counts as a change too
        n = graph.nodes[name]
        h.update(repr((n.name, n.op, n.inputs, sorted(n.attrs.items(), key=str), n.spec)).encode())
        for k in sorted(n.params):
            t = n.params[k].detach().contiguous()
            h.update(k.encode())
            h.update(repr((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.cpu().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def assert_close_outputs(a: Graph | torch.nn.Module, b: Graph | torch.nn.Module, inputs, atol: float = 1e-5, rtol: float = 1e-5) -> float:
    """Run both (graphs are lowered) on `inputs`; raise AssertionError past the tolerance; return max abs diff."""
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    ma = lower(a) if isinstance(a, Graph) else a.eval()
    mb = lower(b) if isinstance(b, Graph) else b.eval()
    ya, yb = ma(*inputs), mb(*inputs)
    ya, yb = (ya,) if isinstance(ya, torch.Tensor) else ya, (yb,) if isinstance(yb, torch.Tensor) else yb
    worst = 0.0
    for x, y in zip(ya, yb):
        if x.shape != y.shape:
            raise AssertionError(f"output shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
        diff = (x - y).abs()
        worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
        if not torch.allclose(x, y, atol=atol, rtol=rtol):
            raise AssertionError(f"outputs differ: max abs diff {float(diff.max()):.3g} (atol {atol}, rtol {rtol})")
    return worst
