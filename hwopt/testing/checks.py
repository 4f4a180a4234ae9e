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


def zero_readers(graph: Graph, group, units) -> Graph:
    """`graph` with every conv/linear that reads the chosen units of channel group `group` ignoring them
    (their weight columns set to zero): removing those units is then exact."""
    g = graph.copy()
    for name in group.consumers:
        n = g[name].copy()
        cols = torch.from_numpy(group.members[n.inputs[0]][units].ravel())
        w = n.params["weight"].clone()
        w[:, cols] = 0
        n.params["weight"] = w
        g.replace(n)
    return g


def assert_removing_unread_channels_is_exact(graph: Graph, inputs, seed: int = 0, atol: float = 1e-5) -> tuple[Graph, dict]:
    """Remove about a third of the units of every prunable group (channels, attention heads) after zeroing
    their readers, and check the outputs do not change; returns the pruned graph and the removal made. Groups that feed a
    LayerNorm over their channels are left out: removing a channel changes the others' statistics."""
    import numpy as np

    from ..channels import channel_groups, remove_channels
    rng = np.random.default_rng(seed)
    zeroed, removal = graph, {}
    for gr in channel_groups(graph):
        feeds_norm = any(graph[m].op == "layer_norm" for m in gr.members)
        if gr.prunable and gr.size > 1 and gr.consumers and not feeds_norm:
            units = np.sort(rng.choice(gr.size, size=max(1, gr.size // 3), replace=False))
            removal[gr.id] = units
            zeroed = zero_readers(zeroed, gr, units)
    pruned = remove_channels(zeroed, removal, groups=channel_groups(zeroed))
    assert_close_outputs(zeroed, pruned, inputs, atol=atol, rtol=atol)
    return pruned, removal
