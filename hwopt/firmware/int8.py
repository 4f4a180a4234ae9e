"""int8 kernels as TVM tensor expressions: the integer arithmetic of hwopt.quant (CMSIS-NN / TFLite Micro),
written once more in TE so TVM compiles it for the core. Every step matches hwopt.quant bit for bit:
int32 accumulation of (x - z_in) * w, int32 bias, arm_nn_requantize in int64, clamp; average pools
rounding half away from zero; quantize with round() (llvm.round: half away from zero) of x * (1/s)
in float32; dequantize as float32(q - z) * s; residual adds (and differences) as arm_elementwise_add_s8, products as
arm_elementwise_mul_s8 (broadcast: a squeeze-and-excite gate over H and W); concats
requantizing each input to the output's parameters; smooth activations as 256-entry lookup tables;
slices, channel shuffles and constant pads as the index maps they are.
"""
from __future__ import annotations

import numpy as np

from .. import quant as Q
from ..ir import Graph, Node, _pair


def weights(g: Graph, n: Node) -> dict[str, np.ndarray]:
    """The arrays a node's int8 kernel reads from flash."""
    if n.op in Q.LUT_OPS and n.spec.dtype == "int8":
        return {"table": Q.lut(n).numpy().astype(np.int8)}
    if n.op not in ("conv2d", "linear") or n.spec.dtype != "int8":
        return {}
    p = n.params
    w = p["weight"].numpy().astype(np.int8)
    out = {"weight": w.T.copy() if n.op == "linear" else w}
    if "bias" in p:
        out["bias"] = p["bias"].numpy().astype(np.int32)
    m, s = Q.layer_multipliers(g, n)
    out["multiplier"], out["shift"] = m, s
    return out


def _requantize(tir, acc, mult, shift):
    """arm_nn_requantize(acc, mult, shift) on int32 values, in int64 (as hwopt.quant.requantize)."""
    i64 = "int64"
    left = tir.max(shift, 0).astype(i64)
    right = tir.max(-shift, 0).astype(i64)
    one = tir.const(1, i64)
    v = acc.astype(i64) * tir.shift_left(one, left)
    v = tir.shift_right(v * mult.astype(i64) + tir.const(1 << 30, i64), tir.const(31, i64))
    mask = tir.shift_left(one, right) - one
    rem = tir.bitwise_and(v, mask)
    res = tir.shift_right(v, right)
    threshold = tir.shift_right(mask, one) + tir.if_then_else(res < 0, one, tir.const(0, i64))
    return res + tir.if_then_else(rem > threshold, one, tir.const(0, i64))


def _clamp_int8(tir, v, lo, hi, dtype):
    return tir.min(tir.max(v, tir.const(lo, dtype)), tir.const(hi, dtype)).astype("int8")


def _const_requantize(tir, v, mult_shift):
    """arm_nn_requantize with a constant (M, shift), on an int64 value."""
    m, r = mult_shift
    return _requantize(tir, v, tir.const(m, "int64"), tir.const(r, "int64"))


def _rescaled(tir, v, q_in, q_out):
    """hwopt.quant.rescale of one int8 value: to the parameters q_out (an int8 value)."""
    if tuple(q_in) == tuple(q_out):
        return v
    y = _const_requantize(tir, v.astype("int64") - tir.const(q_in[1], "int64"), Q.quantize_multiplier(q_in[0] / q_out[0]))
    return _clamp_int8(tir, y + tir.const(q_out[1], "int64"), Q.QMIN, Q.QMAX, "int64")


def _broadcast_reader(t, out_shape):
    """Index function of tensor `t` read at an output index under torch's broadcasting (leading dims
    added, size-1 dims read at 0)."""
    shape = [int(d) for d in t.shape]
    lead = len(out_shape) - len(shape)

    def read(i):
        return t(*[0 if d == 1 and int(out_shape[lead + k]) != 1 else i[lead + k] for k, d in enumerate(shape)])
    return read


def compute(g: Graph, n: Node, ins: list, w: dict):
    import tvm
    from tvm import te
    tir = tvm.tirx
    op, a = n.op, n.attrs
    x = ins[0]
    if op == "quantize":
        s, z = Q.qparams(n)
        inv = tir.const(float(np.float32(1.0 / s)), "float32")
        return te.compute(x.shape, lambda *i: _clamp_int8(tir, tir.round(x(*i) * inv) + tir.const(float(z), "float32"),
                                                           Q.QMIN, Q.QMAX, "float32"), name="quantize")
    if op == "dequantize":
        s, z = Q.qparams(g[n.inputs[0]])
        scale = tir.const(float(np.float32(s)), "float32")
        return te.compute(x.shape, lambda *i: (x(*i).astype("int32") - z).astype("float32") * scale, name="dequantize")
    if op in ("add", "sub"):
        q1, q2, qo = Q.qparams(g[n.inputs[0]]), Q.qparams(g[n.inputs[1]]), Q.qparams(n)
        m1, m2, mo = Q.add_multipliers(q1[0], q2[0], qo[0])
        lo, hi = Q.act_range(n)
        y = ins[1]
        big = tir.const(1 << Q.ADD_LEFT_SHIFT, "int64")
        big2 = tir.const((-1 if op == "sub" else 1) << Q.ADD_LEFT_SHIFT, "int64")

        def add(*i):
            a1 = _const_requantize(tir, (x(*i).astype("int64") - tir.const(q1[1], "int64")) * big, m1)
            a2 = _const_requantize(tir, (y(*i).astype("int64") - tir.const(q2[1], "int64")) * big2, m2)
            return _clamp_int8(tir, _const_requantize(tir, a1 + a2, mo) + tir.const(qo[1], "int64"), lo, hi, "int64")
        return te.compute(n.spec.shape, add, name=op)
    if op == "mul":
        q1, q2, qo = Q.qparams(g[n.inputs[0]]), Q.qparams(g[n.inputs[1]]), Q.qparams(n)
        mult = Q.quantize_multiplier(q1[0] * q2[0] / qo[0])
        lo, hi = Q.act_range(n)
        a_, b_ = _broadcast_reader(x, n.spec.shape), _broadcast_reader(ins[1], n.spec.shape)

        def mul(*i):
            prod = (a_(i).astype("int64") - tir.const(q1[1], "int64")) * (b_(i).astype("int64") - tir.const(q2[1], "int64"))
            return _clamp_int8(tir, _const_requantize(tir, prod, mult) + tir.const(qo[1], "int64"), lo, hi, "int64")
        return te.compute(n.spec.shape, mul, name="mul")
    if op == "slice":
        dim, start, step = a["dim"], a["start"], a.get("step", 1)
        return te.compute(n.spec.shape, lambda *i: x(*[start + v * step if d == dim else v for d, v in enumerate(i)]),
                          name="slice")
    if op == "channel_shuffle":
        groups, per = a["groups"], int(x.shape[1]) // a["groups"]
        # torch's ChannelShuffle: output channel c reads input channel (c mod groups) * per + c div groups
        return te.compute(n.spec.shape, lambda b, c, i, j: x[b, tir.floormod(c, groups) * per + tir.floordiv(c, groups), i, j],
                          name="channel_shuffle")
    if op == "pad":
        pads, rank = a["pads"], len(n.spec.shape)
        before = {rank - 1 - k: pads[2 * k] for k in range(len(pads) // 2)}  # torch order: last dim first
        fill = tir.const(Q.pad_value(n), "int8")

        def padded(*i):
            src = [v - before.get(d, 0) for d, v in enumerate(i)]
            inside = tir.all(*[tir.all(src[d] >= 0, src[d] < int(x.shape[d])) for d in before]) if before else True
            return tir.if_then_else(inside, x(*src), fill) if before else x(*src)
        return te.compute(n.spec.shape, padded, name="pad")
    if op == "concat":
        qo = Q.qparams(n)
        dim = n.attrs["dim"] % len(n.spec.shape)
        parts = [(t, Q.qparams(g[src]), int(g[src].spec.shape[dim])) for t, src in zip(ins, n.inputs)]

        def cat(*i):
            # the last input first, then each earlier one wraps it in a select on the concat axis
            offsets = np.cumsum([0] + [p[2] for p in parts])
            val = None
            for k in range(len(parts) - 1, -1, -1):
                t, q_in, _ = parts[k]
                idx = list(i)
                idx[dim] = i[dim] - int(offsets[k])
                v = _rescaled(tir, t(*idx), q_in, qo)
                val = v if val is None else tir.if_then_else(i[dim] < int(offsets[k + 1]), v, val)
            return val
        return te.compute(n.spec.shape, cat, name="concat")
    if op in Q.LUT_OPS:
        table = w["table"]
        return te.compute(x.shape, lambda *i: table[x(*i).astype("int32") - Q.QMIN], name=f"{op}_lut")
    if op in ("relu", "relu6"):
        s, z = Q.qparams(n)
        hi = Q.QMAX if op == "relu" else int(min(Q.QMAX, round(6.0 / s) + z))
        return te.compute(x.shape, lambda *i: _clamp_int8(tir, x(*i).astype("int32"), z, hi, "int32"), name=op)
    if op in ("conv2d", "linear"):
        _, z_in = Q.qparams(g[n.inputs[0]])
        _, z_out = Q.qparams(n)
        lo, hi = Q.act_range(n)
        wt, mult, shift = w["weight"], w["multiplier"], w["shift"]
        bias = w.get("bias")
        if op == "linear":
            k = te.reduce_axis((0, x.shape[1]), "k")
            acc = te.compute(n.spec.shape, lambda b, o: te.sum(
                (x[b, k].astype("int32") - z_in) * wt[k, o].astype("int32"), axis=k), name="acc")
            chan = 1
        else:
            N, C, H, W = (int(d) for d in x.shape)
            groups = a["groups"]
            cg, og = C // groups, a["out_channels"] // groups
            (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (_pair(a[k]) for k in ("kernel_size", "stride", "padding", "dilation"))
            rc, ry, rx = te.reduce_axis((0, cg), "rc"), te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")

            def body(b, o, i, j):
                hh, ww = i * sh + ry * dh - ph, j * sw + rx * dw - pw
                inside = tir.all(hh >= 0, hh < H, ww >= 0, ww < W)
                xv = tir.if_then_else(inside, x[b, (o // og) * cg + rc, hh, ww].astype("int32") - z_in, tir.const(0, "int32"))
                return te.sum(xv * wt[o, rc, ry, rx].astype("int32"), axis=[rc, ry, rx])
            acc = te.compute(n.spec.shape, body, name="acc")
            chan = 1

        def epilogue(*i):
            c = i[chan]
            v = acc(*i) + (bias[c] if bias is not None else tir.const(0, "int32"))
            y = _requantize(tir, v, mult[c], shift[c]) + tir.const(z_out, "int64")
            return _clamp_int8(tir, y, lo, hi, "int64")
        return te.compute(n.spec.shape, epilogue, name="requantize")
    if op == "max_pool2d":
        N, C, H, W = (int(d) for d in x.shape)
        (kh, kw), (ph, pw), (dh, dw) = (_pair(a[k]) for k in ("kernel_size", "padding", "dilation"))
        sh, sw = _pair(a["stride"] or a["kernel_size"])
        ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")

        def mp(b, c, i, j):
            hh, ww = i * sh + ry * dh - ph, j * sw + rx * dw - pw
            inside = tir.all(hh >= 0, hh < H, ww >= 0, ww < W)
            return te.max(tir.if_then_else(inside, x[b, c, hh, ww], tir.const(Q.QMIN, "int8")), axis=[ry, rx])
        return te.compute(n.spec.shape, mp, name="max_pool")
    if op in ("avg_pool2d", "adaptive_avg_pool2d", "mean"):
        (kh, kw), (sh, sw) = Q.avg_windows(n, tuple(int(d) for d in x.shape))
        cnt = kh * kw
        ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
        oh, ow = (int(x.shape[2]) - kh) // sh + 1, (int(x.shape[3]) - kw) // sw + 1
        total = te.compute((x.shape[0], x.shape[1], oh, ow), lambda b, c, i, j: te.sum(
            x[b, c, i * sh + ry, j * sw + rx].astype("int32"), axis=[ry, rx]), name="sum")
        half = tir.const(cnt // 2, "int32")

        def avg(*i):
            # keepdim=False mean / shapes differ only by unit dims: index the 4-D sum
            b, c = i[0], i[1]
            hi_ = i[2] if len(i) == 4 else 0
            wi_ = i[3] if len(i) == 4 else 0
            t = total[b, c, hi_, wi_]
            num = tir.if_then_else(t > 0, t + half, t - half)
            return tir.truncdiv(num, tir.const(cnt, "int32")).astype("int8")
        return te.compute(n.spec.shape, avg, name="avg")
    raise ValueError(f"node {n.name!r}: no int8 firmware kernel for op {op!r}")
