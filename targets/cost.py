"""The cost model: latency (per-node model per op kind, fitted coefficients), flash, peak SRAM, energy.

Pure Python + numpy over the IR. Per-graph features (op kind, work, bytes, monomials per node;
liveness; weight storage) are computed once per graph state and dtype and kept in the graph's
analysis cache (`Graph.cached`), so a pass that asks for the cost of the same graph again pays only
the per-target arithmetic (vectorized over nodes).

Latency is the sum over the nodes of a per-node time whose form each calibration table picks:

form "terms" (what `hwopt calibrate` fits; host torch-eager / tvm-*): for a node of kind k,

    t = sum_j c[k, j] * m_j(node),   c[k, j] >= 0

over the monomials TERMS (schema.py; computed in `_term_row`): one, work, out (output elements),
in (input elements), weights, work_per_cin (= cout·k²·HW_out: per-output-tap cost that does not
shrink with the reduction length, e.g. cin=3 stems), work_per_cout (= (cin/g)·k²·HW_out: cost of
narrow outputs), spill_l2 / spill_llc (activation elements of nodes whose working set exceeds the
target's per-core L2 / last-level cache; `term_matrix`). It is a fitted efficiency surface: work / eff(shape) with
1/eff = a + b/cin + c/cout + d/(cin·cout·k²) + ..., i.e. efficiency that rises with channel counts,
reduction length and map size and saturates, plus per-call overhead and traffic. Fitted by
non-negative least squares on relative error (calibrate.fit_terms).

form "roofline" (pixel-1, Cortex-A/M tables fit to published figures, 3 coefficients per kind):

    t = overhead_k + (tc^p + tm^p)^(1/p)
    tc = work / (clock * cores * peak_macs_per_cycle[dtype] * compute_eff_k)
    tm = bytes / (bandwidth * memory_eff_k)

`work` is MACs for conv/linear, elementwise operations for the rest (see `OP_WORK`), `bytes` the
activations read and written plus the weights at the deploy dtype. p (soft_max_p) is fitted: large p
is the classic roofline max, p = 1 the sum.

Monotone by construction: in both forms every term is non-decreasing in every channel count with
non-negative coefficients (the schema rejects negative ones), and the op kind of a node does not
change when channels are removed, except at two boundaries that are costed so it cannot help: a
grouped conv costs the slower of its kind and depthwise (pruned down to depthwise it never gets
slower), and a conv with groups == in_channels == 1 (what a depthwise conv pruned to one channel
becomes) costs the faster of its kind and depthwise. Hence removing channels never raises the
predicted latency.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

import numpy as np

from hwopt.sparse import sparse_weight_bytes
from hwopt.ir import OPS, Graph, Node, OpsWhere, OpWork, _pair

from .schema import KINDS, TERMS

DTYPE_BYTES = {"float32": 4, "int8": 1}
KIND_INDEX = {k: i for i, k in enumerate(KINDS)}
VIEW = -1  # reshape/flatten/identity/dropout/input/output: no kernel, no buffer of their own

# Cost kinds are the op table's (hwopt.ir.OPS[op].cost, .work), read live. Elementwise work per output
# element is in "operations" (first principles: a compare or add is 1, a piecewise-linear activation a
# few, an exp-based activation ~16 with a vectorized polynomial exp; norms: mean and variance passes,
# then scale and shift ~6; int8 <-> float32: multiply, round, clamp).
OP_WORK = OpWork("elementwise")
ELEMENTWISE = OpsWhere(lambda d: d.cost == "elementwise")
VIEW_OPS = OpsWhere(lambda d: d.cost == "view")
POOL_OPS = OpsWhere(lambda d: d.cost == "pool")
DATA_OPS = OpsWhere(lambda d: d.cost == "data")
# Batched matrix products are GEMMs: the dense kernel's compute and memory efficiency per MAC. Attention
# is two GEMMs (q kᵀ, weights · v) plus a softmax over the scores, counted at OP_WORK["softmax"] per score.
MATMUL_OPS = OpsWhere(lambda d: d.cost == "matmul")
REDUCE_OPS = OpWork("reduce")  # per input element: add (sum); |x|^p, add (vector norm); square, add, divide (normalize)
# Ops a following elementwise op fuses into (TVM FuseOps: conv/dense are out-elementwise-fusable).
FUSABLE_PRODUCERS = {"conv2d", "linear"}
# conv1d and the transposed conv are costed like conv2d: the same kinds (pointwise / conv / depthwise, a
# grouped one as the slower of conv and depthwise), work = MACs, the same TERMS monomials.
CONV_LIKE = ("conv1d", "conv_transpose2d")
FUSABLE_PRODUCERS.update(CONV_LIKE)
# Upsampling reads `taps` inputs per output (nearest copies one; bilinear blends four: 4 multiply-adds +
# 3 index/weight ops), costed as data movement (nearest) or as a small-window reduction (bilinear). A
# vector norm is a reduction of (|x|^p, add) per input element, like mean.
INTERPOLATE_WORK = {"nearest": 1, "nearest-exact": 1, "bilinear": 11}


# --------------------------------------------------------------------------------------------------
# Per-graph features


@dataclass
class Features:
    names: list[str]
    kind: np.ndarray          # int index into KINDS, VIEW for no-kernel nodes
    grouped: np.ndarray       # bool: grouped (not depthwise) conv, costed as max(conv, depthwise)
    work: np.ndarray          # MACs / elementwise ops
    act_elems: np.ndarray     # activation elements read + written
    weight_elems: np.ndarray  # weight + bias elements (dense)
    macs: int
    params: int
    terms: np.ndarray | None = None  # (nodes x TERMS) monomials of the "terms" latency form
    ambiguous: np.ndarray | None = None  # bool: conv with groups == in_channels == 1 (conv or depthwise)
    int8: np.ndarray | None = None       # bool: the node computes in int8 (its output dtype; hwopt.quant)


def _kind(g: Graph, n: Node, fused: set[str]) -> tuple[int, bool]:
    """(kind index, grouped). A grouped conv (1 < groups < in_channels) is costed as the slower of conv
    and depthwise; a conv with groups == in_channels == 1 (a depthwise conv pruned to one channel, or
    a one-input-channel conv) is costed as the faster of its own kind and depthwise (see node_seconds)."""
    op = n.op
    if op in VIEW_OPS:
        return VIEW, False
    if op in ("conv2d", "cond_conv2d"):
        a = n.attrs
        if a["groups"] == 1:
            k = _pair(a["kernel_size"])
            return KIND_INDEX["pointwise" if k == (1, 1) else "conv"], False
        if a["groups"] == a["in_channels"]:
            return KIND_INDEX["depthwise"], False
        return KIND_INDEX["conv"], True
    if op in CONV_LIKE:
        a = n.attrs
        if a["groups"] == 1:
            return KIND_INDEX["pointwise" if _pair(a["kernel_size"]) == (1, 1) else "conv"], False
        return (KIND_INDEX["depthwise"], False) if a["groups"] == a["in_channels"] else (KIND_INDEX["conv"], True)
    if op == "interpolate":
        return KIND_INDEX["data" if n.attrs["mode"] != "bilinear" else "pooling"], False
    if op == "vector_norm":
        return KIND_INDEX["pooling"], False
    if op == "linear" or op in MATMUL_OPS:
        return KIND_INDEX["dense"], False
    if op in POOL_OPS or op in REDUCE_OPS:
        return KIND_INDEX["pooling"], False
    if op in DATA_OPS:
        return KIND_INDEX["data"], False
    if op in ELEMENTWISE:
        return KIND_INDEX["fused" if n.name in fused else "elementwise"], False
    raise ValueError(f"cost model has no rule for op {op!r}")


def _fused_nodes(g: Graph) -> set[str]:
    """Elementwise nodes that TVM's FuseOps (and any fusing runtime) folds into their producer's loop:
    an elementwise op reading a conv/linear (or an already fused elementwise op) that has no other user."""
    fused: set[str] = set()
    anchors = {n.name for n in g.nodes.values() if n.op in FUSABLE_PRODUCERS}
    for n in g:
        if n.op not in ELEMENTWISE or n.op in ("softmax", "log_softmax", "quantize", "dequantize"):
            continue
        for i in n.inputs:
            if (i in anchors or i in fused) and len(g.users(i)) == 1:
                fused.add(n.name)
                break
    return fused


def _work(g: Graph, n: Node, ins) -> float:
    op = n.op
    d = OPS[op]
    if op == "attention":
        q, k = ins[0], ins[1]
        scores = math.prod(q.shape[:-1]) * k.shape[-2]
        return float(d.macs(n, ins) + scores * OP_WORK["softmax"])
    if d.macs is not None:
        return float(d.macs(n, ins))
    if op in REDUCE_OPS:
        return float(ins[0].numel * REDUCE_OPS[op])
    out = n.spec.numel
    if op == "interpolate":
        return float(out * INTERPOLATE_WORK[n.attrs["mode"]])
    if op == "vector_norm":
        return float(2 * ins[0].numel)
    if op in ELEMENTWISE:
        return float(out * OP_WORK[op])
    if op in ("max_pool2d", "avg_pool2d"):
        kh, kw = _pair(n.attrs["kernel_size"])
        return float(out * kh * kw)
    if op in POOL_OPS:
        return float(ins[0].numel)
    return float(out)  # data movement: one op per element


def _term_row(n: Node, ins, k: int, work: float, act_in: float, weights: float) -> list[float]:
    """The TERMS monomials of one node; each is a product of sizes with non-negative exponents, so each
    is non-decreasing in every channel count.
    one: 1 (per-call overhead) | work: MACs / elementwise ops | out: output elements |
    in: input elements read | weights: weight + bias elements |
    work_per_cin: work / (input channels per group) = cout·k²·HW_out for conv, out_features for
    dense (per-output-tap cost that does not shrink with the reduction length: cin=3 stems) |
    work_per_cout: work / cout = (cin/g)·k²·HW_out for conv, in_features for dense (cost of
    padding cout up to the vector width: narrow layers).
    The last two TERMS (spill_l2, spill_llc) depend on the target's caches: see `term_matrix`."""
    if k == VIEW:
        return [0.0] * N_GRAPH_TERMS
    out = float(n.spec.numel)
    wpi = wpo = 0.0
    if n.op == "conv2d":
        a = n.attrs
        ci = a["in_channels"] // a["groups"]
        wpi = work / max(ci, 1)
        wpo = work / max(a["out_channels"], 1)
    elif n.op == "linear":
        wpi, wpo = float(n.attrs["out_features"]), float(n.attrs["in_features"])
    elif n.op in CONV_LIKE:
        a = n.attrs
        wpi = work / max(a["in_channels"] // a["groups"], 1)
        wpo = work / max(a["out_channels"], 1)
    return [1.0, work, out, act_in, weights, wpi, wpo]


N_GRAPH_TERMS = 7  # TERMS computed from the graph alone; the cache terms are appended per target


def term_matrix(f: Features, dtype_bytes: int, l2_bytes: float, llc_bytes: float) -> np.ndarray:
    """(nodes x TERMS): the graph's monomials plus spill_l2 / spill_llc, the activation elements
    (read + written) of nodes whose working set (activations + weights at the deploy dtype) exceeds
    the per-core L2 / the last-level cache: traffic that goes one level further out. Each is a
    non-decreasing step times a non-decreasing size, so still non-decreasing in every channel count.
    A cache of size 0 counts every node as spilling."""
    ws = (f.act_elems + f.weight_elems) * dtype_bytes
    act = np.where(f.kind >= 0, f.act_elems, 0.0)
    return np.column_stack([f.terms, act * (ws > l2_bytes), act * (ws > llc_bytes)])


def features(g: Graph) -> Features:
    def compute() -> Features:
        fused = _fused_nodes(g)
        names, kind, grouped, work, act, wel, rows, amb, int8 = [], [], [], [], [], [], [], [], []
        macs = params = 0
        for n in g:
            k, grp = _kind(g, n, fused)
            ins = g.input_specs(n)
            names.append(n.name)
            kind.append(k)
            grouped.append(grp)
            amb.append(n.op in ("conv2d", *CONV_LIKE) and n.attrs["groups"] == 1 and n.attrs["in_channels"] == 1)
            int8.append(n.spec is not None and n.spec.dtype == "int8")
            w = _work(g, n, ins) if k != VIEW else 0.0
            work.append(w)
            if n.op in ("conv2d", "linear", "matmul", "cond_conv2d", *CONV_LIKE):
                macs += int(w)
            elif n.op == "attention":  # its work also counts the softmax; the MACs are the two products
                macs += OPS[n.op].macs(n, ins)
            we = sum(n.params[p].numel() for p in ("weight", "bias") if p in n.params)
            params += we
            if n.op == "batch_norm":
                params += n.params["weight"].numel() * 2 if "weight" in n.params else 0
            if k == VIEW:
                act.append(0.0)
            elif k == KIND_INDEX["fused"]:
                # the producer's output is in registers: only the other operands and the output move
                act.append(float(n.spec.numel + sum(s.numel for i, s in zip(n.inputs, ins) if i not in fused
                                                    and g[i].op not in FUSABLE_PRODUCERS)))
            else:
                act.append(float(n.spec.numel + sum(s.numel for s in ins)))
            wel.append(float(we + (2 * n.spec.channels if n.op == "batch_norm" else 0)))
            rows.append(_term_row(n, ins, k, w, float(sum(s.numel for s in ins)), wel[-1]))
        return Features(names, np.array(kind), np.array(grouped, bool), np.array(work), np.array(act),
                        np.array(wel), macs, params, np.array(rows, float).reshape(len(rows), N_GRAPH_TERMS),
                        np.array(amb, bool), np.array(int8, bool))

    return g.cached("hwopt.targets.features", compute)


# --------------------------------------------------------------------------------------------------
# Memory: peak live activations, flash


def peak_sram_elems(g: Graph) -> tuple[int, dict]:
    """Peak live activation elements (see `peak_sram_bytes`) and the step where it is."""
    return _peak_live(g, "elems", lambda n: n.spec.numel)


def peak_sram_bytes(g: Graph, dtype: str | None = None) -> tuple[int, dict]:
    """Peak live activation bytes and the step where it is: every buffer at its node's own dtype
    (`dtype` None: a quantized graph's float input and int8 layers each at their size, as the firmware
    plan lays them out), or every buffer at `dtype` (a float graph priced as its int8 version)."""
    if dtype == "int8" and not features(g).int8.any():
        return _peak_live(g, "bytes:int8-version", lambda n: n.spec.numel * DTYPE_BYTES["int8"], conversions=True)
    return _peak_live(g, f"bytes:{dtype}", lambda n: n.spec.numel * DTYPE_BYTES[dtype or n.spec.dtype])


def conversion_features(g: Graph) -> tuple[Features, np.ndarray]:
    """The conversions the quantize pass adds to float graph `g` (a `quantize` of every input, computing
    in int8, and a `dequantize` of every output, in float32) as standalone elementwise nodes: their
    Features and whether each computes in int8. Their cost does not depend on channel counts."""
    convs = [("quantize", n.spec.numel, True) for n in g.inputs] + \
        [("dequantize", g[o].spec.numel, False) for o in g.output.inputs]
    work = np.array([float(e * OP_WORK[op]) for op, e, _ in convs])
    elems = np.array([float(e) for _, e, _ in convs])
    rows = np.array([[1.0, w, e, e, 0.0, 0.0, 0.0] for w, e in zip(work, elems)], float).reshape(len(convs), N_GRAPH_TERMS)
    k = np.full(len(convs), KIND_INDEX["elementwise"])
    f = Features([op for op, _, _ in convs], k, np.zeros(len(convs), bool), work, 2 * elems, np.zeros(len(convs)),
                 0, 0, rows, np.zeros(len(convs), bool), np.array([i for _, _, i in convs], bool))
    return f, f.int8


def _peak_live(g: Graph, unit: str, size_of, conversions: bool = False) -> tuple[int, dict]:
    """Peak of live activation sizes (`size_of(node)`) under the graph's topological order.
    `conversions`: as the int8 version of float graph `g` lays out memory: the float32 input (4 B per
    element) is live with its int8 copy while `quantize` runs, and the float32 output is written by a
    `dequantize` at the end while its int8 source is live.

    Every non-view node allocates its output before it runs and its inputs stay live through it; a
    buffer is freed after its last reader. View ops (reshape, flatten, identity, dropout) alias their
    input's buffer and extend its life, and so does an elementwise node fused into its producer's kernel
    (_fused_nodes: it is computed in that kernel's loop and written to its one output buffer, as the
    firmware hwopt.firmware generates does; the buffer is as large as the largest node fused into it).
    The output node holds the result to the end."""
    def compute():
        order = g.order()
        pos = {n: i for i, n in enumerate(order)}
        fused = _fused_nodes(g)
        root: dict[str, str] = {}
        size: dict[str, int] = {}
        last: dict[str, int] = {}
        for name in order:
            n = g[name]
            host = next((i for i in n.inputs if (g[i].op in FUSABLE_PRODUCERS or i in fused) and len(g.users(i)) == 1),
                        None) if name in fused else None
            if host is not None:
                root[name] = root[host]
                # the kernel writes its last node's output: larger than the anchor's when a fused op
                # broadcasts (a conv's [N, C, 1, 1] gate times a feature map, as squeeze-and-excite does)
                size[root[name]] = max(size[root[name]], size_of(n))
            elif n.op in VIEW_OPS and n.op not in ("input", "output", "const"):
                root[name] = root[n.inputs[0]]
            elif n.op in ("output", "const"):  # a const is a weight (flash), not an activation buffer
                root[name] = name
                size[name] = 0
            else:
                root[name] = name
                size[name] = size_of(n)
            last[root[name]] = max(last.get(root[name], -1), pos[name])
            for i in n.inputs:
                r = root[i]
                last[r] = max(last[r], pos[name])
        for o in [n for n in order if g[n].op == "output"]:
            for i in g[o].inputs:
                last[root[i]] = len(order) - 1
        delta = np.zeros(len(order) + 1, dtype=np.int64)
        for r, s in size.items():
            delta[pos[r]] += s
            delta[last[r] + 1] -= s
        if conversions:
            for n in g.inputs:  # the quantize step: float input + its int8 copy (the copy is the int8 buffer)
                delta[pos[n.name]] += 4 * n.spec.numel
                delta[pos[n.name] + 1] -= 4 * n.spec.numel
            end = len(order) - 1  # the dequantize step: the float outputs beside their int8 sources
            delta[end] += sum(4 * g[o].spec.numel for o in g.output.inputs)
        live = np.cumsum(delta)[:-1]
        i = int(np.argmax(live)) if len(live) else 0
        return int(live[i]) if len(live) else 0, {"at": order[i] if order else None}

    return g.cached(f"hwopt.targets.peak_sram:{unit}", compute)


_storage_cache: dict[tuple, tuple] = {}


def weight_storage(n: Node, wbytes: int) -> tuple[int, int, str]:
    """(dense bytes, stored bytes, format) of a conv/linear weight at `wbytes` per value: dense, or
    Deep Compression's relative-index CSR (hwopt.sparse) with 4- or 8-bit indices, whichever is
    smallest. Cached per (weight, mask) tensor pair: IR tensors are never modified in place."""
    w = n.params["weight"]
    dense = w.numel() * wbytes
    m = n.params.get("weight_mask")
    if m is None:
        return dense, dense, "dense"
    key = (id(w), id(m), wbytes)
    hit = _storage_cache.get(key)
    if hit is not None and hit[0]() is w and hit[1]() is m:
        return hit[2]
    best, fmt = dense, "dense"
    for bits in (4, 8):
        b = sparse_weight_bytes(w, m, value_bits=8 * wbytes, index_bits=bits, layout="csr")
        if b < best:
            best, fmt = b, f"csr-rel{bits}"
    val = (dense, best, fmt)
    drop = lambda _r, k=key: _storage_cache.pop(k, None)
    _storage_cache[key] = (weakref.ref(w, drop), weakref.ref(m, drop), val)
    return val


def flash(g: Graph, dtype: str | None = None) -> dict:
    """Bytes of everything the deployed model stores per node kind: weights (sparsity-aware), biases
    (int32 for int8 layers, float32 otherwise; a batch norm that follows a conv/linear with no
    other user is folded into it and costs a bias if the conv has none), per-channel requantization
    parameters of int8 layers (int32 multiplier + int32 shift per output channel, as CMSIS-NN / TFLM
    store them), and standalone batch norms (scale + shift, float32). Each layer at its own dtype
    (`dtype` None: 4 B per float32 weight, 1 B per int8 weight) or every layer at `dtype`."""
    def compute():
        out = {"weights": 0, "weights_dense": 0, "biases": 0, "quant": 0, "other": 0, "formats": {}}
        stored_once: set[int] = set()  # a module called twice lifts to nodes holding the same tensors: stored once
        for n in g:
            if n.params and n.op != "batch_norm":
                if id(next(iter(n.params.values()))) in stored_once:
                    continue
                stored_once.update(id(t) for t in n.params.values())
            if n.op in ("conv2d", "linear", *CONV_LIKE):
                layer_dtype = dtype or n.spec.dtype
                dense, stored, fmt = weight_storage(n, DTYPE_BYTES[layer_dtype])
                out["weights"] += stored
                out["weights_dense"] += dense
                out["formats"][n.name] = fmt
                cout = n.spec.channels if n.op in CONV_LIKE else n.params["weight"].shape[0]
                if "bias" in n.params:
                    out["biases"] += 4 * cout
                if layer_dtype == "int8":
                    out["quant"] += 8 * cout
            elif n.op == "batch_norm":
                src = g[n.inputs[0]]
                if src.op in ("conv2d", "linear") and len(g.users(src.name)) == 1:
                    if "bias" not in src.params:
                        out["biases"] += 4 * n.spec.channels
                else:
                    out["other"] += 8 * n.spec.channels
            elif n.op in ("const", "group_norm"):  # layer-scale vectors, group-norm scale and shift
                out["other"] += sum(t.numel() for t in n.params.values()) * 4
            elif "table" in (n.attrs.get("quant") or {}):  # an int8 activation's 256-entry lookup table
                out["quant"] += len(n.attrs["quant"]["table"])
        out["total"] = out["weights"] + out["biases"] + out["quant"] + out["other"]
        return out

    return g.cached(f"hwopt.targets.flash:{dtype}", compute)


# --------------------------------------------------------------------------------------------------
# The per-target evaluation


@dataclass(frozen=True)
class Coefficients:
    """One calibration runtime's latency model. form "roofline": arrays over KINDS plus the roofline
    exponent; form "terms": `terms`, a (KINDS x TERMS) array of non-negative seconds per unit of each
    monomial (the roofline arrays are then unused)."""
    compute_eff: np.ndarray
    memory_eff: np.ndarray
    overhead_us: np.ndarray
    p: float
    terms: np.ndarray | None = None

    @property
    def form(self) -> str:
        return "roofline" if self.terms is None else "terms"

    @classmethod
    def from_table(cls, table: dict) -> "Coefficients":
        if table.get("form", "roofline") == "terms":
            t = table["terms"]
            z = np.zeros(len(KINDS))
            return cls(z + 1.0, z + 1.0, z, 1.0,
                       np.array([[float(t[x].get(m, 0.0)) * 1e-6 for m in TERMS] for x in KINDS]))
        k = table["kinds"]
        return cls(np.array([float(k[x]["compute_eff"]) for x in KINDS]),
                   np.array([float(k[x]["memory_eff"]) for x in KINDS]),
                   np.array([float(k[x]["overhead_us"]) for x in KINDS]),
                   float(table["soft_max_p"]))


def node_seconds(kind: np.ndarray, work: np.ndarray, nbytes: np.ndarray, c: Coefficients,
                 peak_macs_s: float, bw_bytes_s: float, grouped: np.ndarray | None = None,
                 terms: np.ndarray | None = None, ambiguous: np.ndarray | None = None) -> np.ndarray:
    """Vectorized per-node latency in seconds (VIEW nodes cost 0). `terms` (nodes x TERMS) is needed
    for the "terms" form. Grouped convs cost max(own kind, depthwise); convs with groups ==
    in_channels == 1 cost min(own kind, depthwise), so a depthwise conv pruned to one channel (which
    the IR then calls a plain conv) is never slower than with two."""
    real = kind >= 0
    k = np.where(real, kind, 0)

    if c.terms is not None:
        if terms is None:
            raise ValueError("the terms latency form needs the per-node TERMS matrix (features(g).terms)")

        def t(kk):
            return np.einsum("ij,ij->i", terms, c.terms[kk])
    else:
        t = None

    def t_roof(kk):
        tc = work / (peak_macs_s * c.compute_eff[kk])
        tm = nbytes / (bw_bytes_s * c.memory_eff[kk])
        p = c.p
        m = np.maximum(tc, tm)
        with np.errstate(divide="ignore", invalid="ignore"):
            body = np.where(m > 0, m * ((tc / np.where(m > 0, m, 1)) ** p + (tm / np.where(m > 0, m, 1)) ** p) ** (1 / p), 0.0)
        return c.overhead_us[kk] * 1e-6 + body

    if t is None:
        t = t_roof
    sec = t(k)
    dw = None
    if grouped is not None and grouped.any():
        dw = t(np.full_like(k, KIND_INDEX["depthwise"]))
        sec = np.where(grouped, np.maximum(sec, dw), sec)
    if ambiguous is not None and ambiguous.any():
        dw = t(np.full_like(k, KIND_INDEX["depthwise"])) if dw is None else dw
        sec = np.where(ambiguous, np.minimum(sec, dw), sec)
    return np.where(real, sec, 0.0)


def energy_mj(f: Features, stored_weight_bytes: float, dtype_bytes, onchip_bytes: float, pj_per_mac,
              pj_per_byte_sram: float, pj_per_byte_dram: float) -> float:
    """Dynamic energy of one inference, mJ: MAC work x pJ/MAC; each node's activations from on-chip
    memory when they fit in it (`onchip_bytes`), else from DRAM; the stored weights streamed from DRAM /
    flash once. `dtype_bytes` and `pj_per_mac` are per node (arrays: each node at its dtype) or scalars.
    Circuit-level figures (Horowitz, ISSCC 2014): a lower bound, not whole-SoC energy (the board's
    static power is Target.cost's `static_energy_mj`)."""
    act = f.act_elems * dtype_bytes
    act_pj = np.where(act <= onchip_bytes, act * pj_per_byte_sram, act * pj_per_byte_dram).sum()
    mac_pj = (f.work * pj_per_mac)[f.kind >= 0].sum()
    return float(mac_pj + act_pj + stored_weight_bytes * pj_per_byte_dram) * 1e-9


@dataclass
class Cost:
    """What a graph costs on a target. Times in ms, memory in bytes, energy in mJ."""
    latency_ms: float
    per_node: dict[str, float]
    by_kind: dict[str, float]
    flash_bytes: int
    peak_sram_bytes: int
    energy_mj: float
    macs: int
    params: int
    target: str = ""
    runtime: str = ""
    flash_breakdown: dict = field(default_factory=dict)
    fits: dict = field(default_factory=dict)  # {"flash": bool, "sram": bool} where the target has limits
    dtype: str = "float32"         # the dtype the graph was costed at (its own, or the one asked for)
    dtype_note: str = ""           # how: "the graph's own dtypes" / "a float32 graph priced as int8"
    dynamic_energy_mj: float = 0.0  # MACs and memory traffic (energy_mj = dynamic + static)
    static_energy_mj: float = 0.0   # board power (energy.board_power_w) x latency; 0 without it

    def as_dict(self) -> dict:
        return {"latency_ms": self.latency_ms, "flash_bytes": self.flash_bytes,
                "peak_sram_bytes": self.peak_sram_bytes, "energy_mj": self.energy_mj,
                "dynamic_energy_mj": self.dynamic_energy_mj, "static_energy_mj": self.static_energy_mj,
                "macs": self.macs, "params": self.params, "target": self.target, "runtime": self.runtime,
                "dtype": self.dtype, "dtype_note": self.dtype_note}

    def __repr__(self) -> str:
        return (f"Cost({self.target}/{self.runtime}, {self.dtype}: {self.latency_ms:.3f} ms, flash {self.flash_bytes:,} B, "
                f"peak SRAM {self.peak_sram_bytes:,} B, {self.energy_mj:.4f} mJ, {self.macs:,} MACs)")
