"""Storage of unstructured-sparse weights: Deep Compression's relative-index format, and flash bytes.

Han, Mao, Dally, "Deep Compression" (ICLR 2016), sec. 2: a pruned weight is stored as its non-zero
values plus, for each, the *difference* of its position from the previous non-zero's position in
`index_bits` bits (CSR/CSC order over the flattened tensor; the decoder advances one flat counter, so
no row-pointer array is needed). A gap that does not fit in `index_bits` bits is bridged by filler
entries (a stored zero value that advances the position by 2^index_bits). Han et al. used 8 bits for
conv layers and 5 for fully connected ones. Each layer is stored dense or sparse, whichever is smaller.

`sparse_weight_bytes` and `flash_bytes` are monotone in the masks: clearing one more mask entry never
raises either of them (two gaps merge; the merged gap needs at most one filler more than the entry it
replaces), and removing neurons or channels only removes entries. At import this module needs only
torch and numpy; the mask helpers import hwopt.errors and hwopt.channels where they are used.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch

from .ir import OPS

INDEX_BITS_CHOICES = (4, 5, 8)


def _gaps(nz: np.ndarray) -> np.ndarray:
    """Distances between consecutive non-zero flat positions (the first measured from position -1)."""
    pos = np.flatnonzero(nz)
    return np.diff(np.concatenate([[-1], pos])) if len(pos) else np.zeros(0, np.int64)


def relative_index_entries(nz: np.ndarray, index_bits: int) -> int:
    """Stored entries (non-zeros + fillers) of a flat boolean non-zero pattern at `index_bits` per index."""
    gaps = _gaps(np.asarray(nz, bool).ravel())
    span = 1 << index_bits
    fillers = int(np.sum((gaps - 1) // span)) if len(gaps) else 0
    return len(gaps) + fillers


def _nonzero(weight: torch.Tensor, mask: torch.Tensor | None) -> np.ndarray:
    w = weight.detach()
    if mask is not None:
        w = w * mask.detach()
    return (w != 0).cpu().numpy()


def sparse_weight_bytes(weight: torch.Tensor, mask: torch.Tensor | None = None, value_bits: int = 32,
                        index_bits: int | Iterable[int] | None = None, layout: str = "best") -> int:
    """Bytes of `weight` (times `mask`) in Deep Compression's relative-index sparse format.

    value_bits: bits per stored value (32 for float32, 8 for int8, 4/5 for codebook indices).
    index_bits: bits per relative index; an int, an iterable of candidates, or None for the best of
        (4, 5, 8). layout: 'csr' (row-major over [out, in·kh·kw]), 'csc' (column-major) or 'best'.
    Does not compare with dense storage; see `weight_bytes` for min(dense, sparse).
    """
    nz = _nonzero(weight, mask)
    mat = nz.reshape(nz.shape[0], -1) if nz.ndim > 1 else nz.reshape(1, -1)
    orders = {"csr": [mat.ravel()], "csc": [mat.T.ravel()], "best": [mat.ravel(), mat.T.ravel()]}[layout]
    bits = INDEX_BITS_CHOICES if index_bits is None else ((index_bits,) if isinstance(index_bits, int) else tuple(index_bits))
    best = None
    for flat in orders:
        for b in bits:
            nbytes = math.ceil(relative_index_entries(flat, b) * (value_bits + b) / 8)
            best = nbytes if best is None else min(best, nbytes)
    return int(best)


def weight_bytes(weight: torch.Tensor, mask: torch.Tensor | None = None, value_bits: int = 32,
                 index_bits: int | Iterable[int] | None = None) -> tuple[int, str]:
    """(bytes, 'dense' | 'sparse'): a weight stored dense or sparse, whichever is smaller.

    An unmasked weight is stored dense (its zeros are not known to be structural)."""
    dense = math.ceil(weight.numel() * value_bits / 8)
    if mask is None:
        return dense, "dense"
    sparse = sparse_weight_bytes(weight, mask, value_bits, index_bits)
    return (sparse, "sparse") if sparse < dense else (dense, "dense")


def flash_bytes(graph, value_bits: int = 32, index_bits: int | Iterable[int] | None = None,
                bias_bits: int = 32, detail: bool = False):
    """Bytes a deployed `graph` stores: Σ over conv/linear of min(dense, sparse) weight bytes, plus
    biases at `bias_bits` (int32 accumulators for int8 deployment; float32 otherwise) and standalone
    batch norms as a scale and a shift per channel at `bias_bits`. With detail=True returns
    (total, {node: bytes}).
    """
    total, per = 0, {}
    for n in graph:
        b = 0
        if n.op in ("conv2d", "linear"):
            b, _ = weight_bytes(n.params["weight"], n.params.get("weight_mask"), value_bits, index_bits)
            if "bias" in n.params:
                b += math.ceil(n.params["bias"].numel() * bias_bits / 8)
        elif n.op == "batch_norm":
            b = math.ceil(2 * n.attrs["num_features"] * bias_bits / 8)
        if b:
            per[n.name] = b
            total += b
    return (total, per) if detail else total


# ---------------------------------------------------------------------------------------------------
# Masks: the helpers unstructured passes share (magnitude-prune, obd). Graphs are never mutated.

def _chain_op(op: str) -> bool:
    """Dead units fold through `op`: the op table gives the constant a unit holds after it
    (hwopt.ir.OPS[op].constant: the channel-preserving unary ops, activations, pooling, flatten)."""
    from .ir import OPS
    d = OPS.get(op)
    return d is not None and d.constant is not None


def prunable_layers(graph, layers: Iterable[str] = (), protect: Iterable[str] = ()) -> list[str]:
    """conv2d / linear node names in topological order, restricted to `layers` (if any), minus `protect`.

    Raises PassError naming any name in `layers` / `protect` that is not a conv2d or linear node."""
    from .errors import PassError
    all_layers = [n.name for n in graph if n.op in ("conv2d", "linear")]
    for opt, names in (("layers", layers), ("protect", protect)):
        bad = [x for x in names if x not in all_layers]
        if bad:
            raise PassError(f"option {opt!r}: {bad} are not conv2d/linear nodes (those are {all_layers})")
    keep = set(layers) if layers else set(all_layers)
    return [n for n in all_layers if n in keep and n not in set(protect)]


def effective_weight(node) -> torch.Tensor:
    """weight × weight_mask (or the weight if unmasked)."""
    w = node.params["weight"]
    m = node.params.get("weight_mask")
    return w if m is None else w * m


def current_mask(node) -> torch.Tensor:
    m = node.params.get("weight_mask")
    return torch.ones_like(node.params["weight"]) if m is None else m


def sparsity(graph, names: Iterable[str] | None = None) -> float:
    """Fraction of masked-off weights over the given conv/linear nodes (all of them by default)."""
    names = list(names) if names is not None else [n.name for n in graph if n.op in ("conv2d", "linear")]
    tot = sum(graph[n].params["weight"].numel() for n in names)
    kept = sum(int(current_mask(graph[n]).sum()) for n in names)
    return 1.0 - kept / tot if tot else 0.0


def prune_lowest(score: torch.Tensor, mask: torch.Tensor, fraction: float) -> torch.Tensor:
    """A new 0/1 mask ⊆ `mask` with round(fraction·numel) entries off in total: the already-off ones
    plus the lowest-`score` kept ones. Never revives a pruned weight (masks only shrink)."""
    n = score.numel()
    k = int(round(min(max(fraction, 0.0), 1.0) * n))
    already = n - int(mask.sum())
    if k <= already:
        return mask
    s = score.detach().reshape(-1).to(torch.float64).clone()
    s[mask.reshape(-1) == 0] = -float("inf")
    idx = torch.topk(s, k, largest=False).indices
    new = torch.ones(n, dtype=mask.dtype)
    new[idx] = 0
    return new.reshape(mask.shape)


def with_masks(graph, masks: dict[str, torch.Tensor]):
    """A copy of `graph` whose nodes carry the given masks; weights are multiplied by them so pruned
    entries hold exact zeros."""
    g = graph.copy()
    for name, mask in masks.items():
        m = g[name].copy()
        m.params["weight_mask"] = mask.to(m.params["weight"].dtype)
        m.params["weight"] = m.params["weight"] * m.params["weight_mask"]
        g.replace(m)
    return g


def remove_dead_units(graph) -> tuple["object", dict[str, int]]:
    """Remove neurons / channels left with no live inputs or no live outputs (Han et al. 2015, sec. 3.3).

    A unit of a conv/linear producer is dead when (a) every consumer's weights reading it are masked
    to zero (its output is never used), or (b) its whole weight row is masked to zero: it then outputs
    the constant act(bias), which is folded exactly into each consumer's bias (linear consumers, and
    conv consumers without padding), and the unit is removed. Only groups whose path from producer to
    consumers is made of channel-preserving unary ops (activations, dropout, pooling, flatten) are
    touched. Returns (new graph, {producer: units removed}); the graph is returned unchanged if none.
    """
    from .channels import channel_groups, remove_channels
    groups = channel_groups(graph)
    removal: dict[int, np.ndarray] = {}
    bias_add: dict[str, torch.Tensor] = {}
    report: dict[str, int] = {}
    for gr in groups:
        if not gr.prunable or len(gr.producers) != 1 or not gr.consumers:
            continue
        prod = graph[gr.producers[0]]
        if prod.op not in ("conv2d", "linear") or (prod.op == "conv2d" and prod.attrs["groups"] != 1):
            continue
        if any(graph[m].spec.axis != 1 for m in gr.members):
            continue  # channels-last / token tensors: the bias folding below assumes NCHW or [N, features]
        members = set(gr.members)
        if any(not _chain_op(graph[m].op) for m in members if m != prod.name):
            continue
        if any(u not in members and u not in gr.consumers for m in members for u in graph.users(m)):
            continue
        if any(graph[c].inputs[0] not in members for c in gr.consumers):
            continue
        if any(graph[c].op not in ("conv2d", "linear") for c in gr.consumers):
            continue  # the folding below reads conv2d / linear weight layouts
        units = gr.size
        w = effective_weight(prod).reshape(prod.params["weight"].shape[0], -1)
        prod_idx = gr.members[prod.name][:, 0]
        in_dead = (w[torch.as_tensor(prod_idx)] == 0).all(1)
        out_dead = torch.ones(units, dtype=torch.bool)
        for c in gr.consumers:
            cn = graph[c]
            wc = effective_weight(cn)
            idx = torch.as_tensor(gr.members[cn.inputs[0]])  # (units, k) input channels / features
            cols = wc[:, idx.reshape(-1)].reshape(wc.shape[0], units, idx.shape[1], -1)
            out_dead &= (cols == 0).all(dim=(0, 2, 3))
        # constant value of each unit at every member, for units whose rows are dead (NaN: unknown)
        b = prod.params.get("bias")
        val = {prod.name: (b[torch.as_tensor(prod_idx)] if b is not None else torch.zeros(units)).detach().clone()}
        for name in graph.order():
            if name in members and name != prod.name:
                n = graph[name]
                val[name] = OPS[n.op].constant(n.attrs, val[n.inputs[0]])
        foldable = in_dead & ~out_dead
        for c in gr.consumers:
            cn = graph[c]
            v = val[cn.inputs[0]]
            nonzero = foldable & (v != 0)
            if cn.op == "conv2d" and any(p > 0 for p in cn.attrs["padding"]):
                foldable &= ~nonzero  # zero padding breaks a constant input: keep those units
            foldable &= ~torch.isnan(v)
        dead = out_dead | foldable
        if int(dead.sum()) >= units:  # keep one unit so the tensor is not empty
            dead[int(torch.nonzero(dead)[0])] = False
            foldable &= dead
        if not dead.any():
            continue
        for c in gr.consumers:
            cn = graph[c]
            v = val[cn.inputs[0]]
            fold = foldable & (v != 0)
            if not fold.any():
                continue
            wc = effective_weight(cn)
            idx = torch.as_tensor(gr.members[cn.inputs[0]])
            cols = wc[:, idx.reshape(-1)].reshape(wc.shape[0], units, idx.shape[1], -1).sum(dim=(2, 3))  # (out, units)
            add = cols[:, fold] @ v[fold].to(cols.dtype)
            prev = bias_add.get(c)
            bias_add[c] = add if prev is None else prev + add
        removal[gr.id] = np.flatnonzero(dead.numpy())
        report[prod.name] = int(dead.sum())
    if not removal:
        return graph, {}
    g = graph
    if bias_add:
        g = graph.copy()
        for c, add in bias_add.items():
            m = g[c].copy()
            b = m.params.get("bias")
            m.params["bias"] = add.detach().clone() if b is None else b + add
            g.replace(m)
    return remove_channels(g, removal), report


def adjust_dropout(before, after):
    """Han et al. 2015, eq. 2: D_r = D_o·sqrt(C_ir / C_io) for each dropout whose output feeds a
    conv/linear layer (through channel-preserving ops), C = that layer's live connections before /
    after pruning. Returns `after` itself when nothing changes."""
    out = None
    for n in after:
        if n.op != "dropout" or n.attrs["p"] <= 0 or n.name not in before:
            continue
        cur, layer = n.name, None
        while True:
            users = after.users(cur)
            if len(users) != 1:
                break
            u = after[users[0]]
            if u.op in ("conv2d", "linear"):
                layer = u.name
                break
            if not _chain_op(u.op):
                break
            cur = u.name
        if layer is None or layer not in before:
            continue
        c_o = int(torch.count_nonzero(effective_weight(before[layer])))
        c_r = int(torch.count_nonzero(effective_weight(after[layer])))
        if c_o == 0 or c_r == c_o:
            continue
        out = out if out is not None else after.copy()
        d = out[n.name].copy()
        d.attrs["p"] = float(before[n.name].attrs["p"] * math.sqrt(c_r / c_o))
        out.replace(d)
    return after if out is None else out


def finish(before, after, *, adjust_dropout_rate: bool, remove_dead: bool, log=None, who: str = ""):
    """The common end of an unstructured-pruning pass: the dropout rule, then dead-unit removal."""
    g = adjust_dropout(before, after) if adjust_dropout_rate else after
    if remove_dead:
        g, removed = remove_dead_units(g)
        if removed and log is not None:
            log.info("%s removed dead units: %s", who, removed)
    return g
