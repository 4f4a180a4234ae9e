"""Integer arithmetic of int8-quantized graphs, exactly as CMSIS-NN / TFLite Micro kernels compute it.

A quantized node has output dtype "int8" and `attrs["quant"] = {"scale": s, "zero_point": z}` (real value
= s * (q - z)). A quantized conv2d / linear holds int8 weights quantized symmetrically per output channel
(`quant["weight_scale"]`, one scale per channel, zero point 0) and an int32 bias in units of
s_in * s_w[c]; it computes

    acc[c] = sum((x_q - z_in) * w_q[c]) + bias_q[c]                           (int32)
    y_q[c] = clamp(requantize(acc[c], M[c], shift[c]) + z_out, act_min, act_max)

with (M, shift) = quantize_multiplier(s_in * s_w[c] / s_out) and `requantize` = CMSIS-NN's
arm_nn_requantize (doubling high multiply with rounding, then rounding right shift). Average pools
divide their int32 sums rounding half away from zero (CMSIS-NN arm_avgpool_s8). `quantize` rounds
x / s half away from zero; `dequantize` is s * (q - z) in float32.

Residual adds are arm_elementwise_add_s8: both operands brought to a common scale (`add_multipliers`),
summed in int32, requantized to the output (a difference of two tensors: the second operand negated).
A concat requantizes each input to the concat's own parameters (`rescale`; a copy where they already
agree). Products of two tensors (a squeeze-and-excite gate times its feature map, broadcast over H and W)
are arm_elementwise_mul_s8 / TFLite's int8 MUL: the int32 product of the operands less their zero points,
requantized by s1 * s2 / s_out (`int8_mul`). Smooth activations (sigmoid, tanh, SiLU, hard-swish,
hard-sigmoid, GELU) are 256-entry lookup tables (`lookup_table`), as TFLite Micro runs them:
exact for all 256 inputs, so no float island is needed in an int8 graph. Data movement (slice, channel
shuffle, constant pad) keeps its input's parameters.

`QuantizedModule(graph)` runs a quantized graph in these integers on the CPU (`hwopt.lower` returns it
for a quantized graph), so the accuracy measured on it is the device's; the firmware's TIR kernels
(hwopt.firmware) compute the same integers.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import IRError
from .ir import NODE_CHECKS, Graph, Node, OpsWhere, _pair

QMIN, QMAX = -128, 127
# unary activations computed by a 256-entry int8 lookup table (TFLite Micro's LUT kernels): the table is
# f(dequantize(q)) requantized to the output's parameters, exact for every one of the 256 inputs
LUT_OPS = OpsWhere(lambda d: d.int8 == "lut")
# ops with an int8 kernel below, read live from the op table's `int8` flag (hwopt.ir.OPS)
INT8_OPS = OpsWhere(lambda d: bool(d.int8))
VIEWS = OpsWhere(lambda d: d.int8 == "view")
ADD_LEFT_SHIFT = 20  # TFLite / CMSIS-NN int8 add: operands scaled up by 2^20 before requantization


def quantize_multiplier(real: float) -> tuple[int, int]:
    """(M, shift) with real = M * 2^(shift - 31), M an int32 in [2^30, 2^31) (TFLite QuantizeMultiplier)."""
    if real <= 0 or not math.isfinite(real):
        raise ValueError(f"requantization multiplier must be positive and finite, got {real}")
    mant, exp = math.frexp(real)
    q = int(round(mant * (1 << 31)))
    if q == 1 << 31:
        q //= 2
        exp += 1
    if exp < -31:  # too small to represent: the output is the zero point
        return 0, 0
    if exp > 31:  # CMSIS-NN shifts an int32 left by at most 31
        raise ValueError(f"requantization multiplier {real} is too large for an int32 left shift (>= 2^31)")
    return q, exp


def requantize(acc: torch.Tensor, mult: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """CMSIS-NN arm_nn_requantize on int64 tensors holding int32 values (broadcast over channels)."""
    # shifts are in [-31, 31] (quantize_multiplier); the upper bounds keep the clamps integer (TVM's
    # importer turns a missing bound into infinity, which no integer holds)
    left = torch.clamp(shift, 0, 31)
    right = torch.clamp(-shift, 0, 31)
    v = acc << left  # per-channel left shifts (shifts, not powers of 2: TVM has no integer power)
    v = ((v * mult + (1 << 30)) >> 31)  # doubling high multiply, no saturation (as arm_nn_doubling_high_mult_no_sat)
    mask = (torch.ones_like(right) << right) - 1
    rem = v & mask
    res = v >> right
    threshold = (mask >> 1) + (res < 0).to(v.dtype)
    return res + (rem > threshold).to(v.dtype)


def round_half_away(v: torch.Tensor) -> torch.Tensor:
    return torch.where(v >= 0, torch.floor(v + 0.5), torch.ceil(v - 0.5))


def qparams(node: Node) -> tuple[float, int]:
    q = node.attrs.get("quant")
    if q is None:
        raise IRError("int8 node has no quantization parameters (attrs['quant'])", node.name)
    return float(q["scale"]), int(q["zero_point"])


def layer_multipliers(g: Graph, n: Node) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel (M, shift) of a quantized conv2d / linear, as int32 arrays."""
    s_in, _ = qparams(g[n.inputs[0]])
    s_out, _ = qparams(n)
    pairs = [quantize_multiplier(s_in * float(sw) / s_out) for sw in n.attrs["quant"]["weight_scale"]]
    return np.array([p[0] for p in pairs], np.int32), np.array([p[1] for p in pairs], np.int32)


def add_multipliers(s1: float, s2: float, s_out: float) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """((M1, shift1), (M2, shift2), (M_out, shift_out)) of an int8 add, as TFLite's PrepareGeneralSubOp /
    CMSIS-NN arm_elementwise_add_s8 set them: both operands are brought to the common scale
    2 * max(s1, s2) / 2^20, summed in int32, and the sum requantized to the output's scale."""
    twice_max = 2.0 * max(s1, s2)
    return (quantize_multiplier(s1 / twice_max), quantize_multiplier(s2 / twice_max),
            quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * s_out)))


def int8_add(x1: torch.Tensor, x2: torch.Tensor, q1: tuple[float, int], q2: tuple[float, int],
             q_out: tuple[float, int], lo: int = QMIN, hi: int = QMAX, subtract: bool = False) -> torch.Tensor:
    """arm_elementwise_add_s8 on int8 tensors: each operand (q - z) << 20 requantized to the common scale,
    the int32 sum requantized to the output, plus its zero point, clamped. `subtract`: TFLite's int8 SUB,
    the same with the second operand negated before its requantization."""
    (m1, r1), (m2, r2), (mo, ro) = add_multipliers(q1[0], q2[0], q_out[0])
    t = lambda v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    a1 = requantize((x1.to(torch.int64) - q1[1]) * (1 << ADD_LEFT_SHIFT), t(m1), t(r1))
    a2 = requantize((x2.to(torch.int64) - q2[1]) * ((-1 if subtract else 1) << ADD_LEFT_SHIFT), t(m2), t(r2))
    y = requantize(a1 + a2, t(mo), t(ro)) + q_out[1]
    return torch.clamp(y, lo, hi).to(torch.int8)


def int8_mul(x1: torch.Tensor, x2: torch.Tensor, q1: tuple[float, int], q2: tuple[float, int],
             q_out: tuple[float, int], lo: int = QMIN, hi: int = QMAX) -> torch.Tensor:
    """arm_elementwise_mul_s8 (TFLite's int8 MUL) on int8 tensors, broadcasting as torch does:
    (q1 - z1) * (q2 - z2) in int32 (|.| <= 255^2), requantized by s1 * s2 / s_out, plus z_out, clamped."""
    m, r = quantize_multiplier(q1[0] * q2[0] / q_out[0])
    acc = (x1.to(torch.int64) - q1[1]) * (x2.to(torch.int64) - q2[1])
    y = requantize(acc, torch.tensor(m, dtype=torch.int64), torch.tensor(r, dtype=torch.int64)) + q_out[1]
    return torch.clamp(y, lo, hi).to(torch.int8)


def rescale(x: torch.Tensor, q_in: tuple[float, int], q_out: tuple[float, int]) -> torch.Tensor:
    """An int8 tensor brought to other quantization parameters: requantize(q - z_in, M, shift) + z_out
    with (M, shift) of s_in / s_out (a concat's inputs to the concat's common scale), clamped."""
    if q_in == q_out:
        return x
    m, r = quantize_multiplier(q_in[0] / q_out[0])
    y = requantize(x.to(torch.int64) - q_in[1], torch.tensor(m, dtype=torch.int64), torch.tensor(r, dtype=torch.int64))
    return torch.clamp(y + q_out[1], QMIN, QMAX).to(torch.int8)


def pad_value(n: Node) -> int:
    """The int8 value an int8 `pad` writes: its float value in the node's parameters (the input's), rounded
    half away from zero and clamped; TF "same" padding pads 0, which is the zero point exactly."""
    s, z = qparams(n)
    return int(min(QMAX, max(QMIN, z + round_half_away(torch.tensor(float(n.attrs.get("value", 0.0)) / s)).item())))


def lut_function(n: Node):
    """The float function of a LUT op (float64 in, float64 out)."""
    op = n.op
    if op == "gelu":
        return lambda v: F.gelu(v, approximate=n.attrs.get("approximate") or "none")
    if op == "leaky_relu":
        return lambda v: F.leaky_relu(v, n.attrs["negative_slope"])
    return {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "silu": F.silu, "hardswish": F.hardswish,
            "hardsigmoid": F.hardsigmoid}[op]


def lookup_table(n: Node, q_in: tuple[float, int], q_out: tuple[float, int]) -> torch.Tensor:
    """The 256 int8 outputs of LUT op `n` for inputs -128..127: f(s_in (q - z_in)) quantized to q_out
    (rounded half away from zero, clamped), computed once in float64."""
    q = torch.arange(QMIN, QMAX + 1, dtype=torch.float64)
    y = lut_function(n)((q - q_in[1]) * q_in[0])
    return torch.clamp(round_half_away(y / q_out[0]) + q_out[1], QMIN, QMAX).to(torch.int8)


def lut(n: Node) -> torch.Tensor:
    """The lookup table of an int8 LUT op (attrs["quant"]["table"]: outputs for inputs -128..127)."""
    return torch.tensor(n.attrs["quant"]["table"], dtype=torch.int8)


def act_range(n: Node) -> tuple[int, int]:
    q = n.attrs["quant"]
    return int(q.get("act_min", QMIN)), int(q.get("act_max", QMAX))


def quantize_tensor(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    inv = torch.tensor(np.float32(1.0 / scale))
    v = round_half_away(x.to(torch.float32) * inv) + zero_point
    return torch.clamp(v, QMIN, QMAX).to(torch.int8)


def dequantize_tensor(q: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    return (q.to(torch.int32) - zero_point).to(torch.float32) * torch.tensor(np.float32(scale))


def avg_divide(total: torch.Tensor, count: int) -> torch.Tensor:
    """int32 sum / count rounded half away from zero (arm_avgpool_s8), on int64 tensors."""
    half = count // 2
    num = torch.where(total > 0, total + half, total - half)
    # C division truncates toward zero; the divisor a tensor of the sum's dtype, which TVM's importer keeps
    # (a Python int becomes an int32 constant beside int64 sums)
    return torch.sign(num) * (num.abs() // torch.tensor(count, dtype=num.dtype))


def is_quantized(g: Graph) -> bool:
    return any(n.spec is not None and n.spec.dtype == "int8" for n in g.nodes.values())


class QuantizedModule(nn.Module):
    """Runs a quantized hwopt graph in the device's integer arithmetic (eval only, not trainable)."""

    def __init__(self, graph: Graph):
        super().__init__()
        graph.verify_once()
        self.graph = graph
        self.order = graph.order()
        self._mults = {n.name: tuple(torch.from_numpy(a.astype(np.int64)) for a in layer_multipliers(graph, n))
                       for n in graph if n.op in ("conv2d", "linear") and n.spec.dtype == "int8"}

    def forward(self, *inputs):
        g = self.graph
        env: dict[str, torch.Tensor] = {}
        ins = iter(inputs)
        for name in self.order:
            n = g[name]
            if n.op == "input":
                env[name] = next(ins)
                continue
            if n.op == "output":
                outs = [env[i] for i in n.inputs]
                return outs[0] if len(outs) == 1 else tuple(outs)
            env[name] = self._node(n, [env[i] for i in n.inputs])
        raise IRError("graph has no output node")

    def _node(self, n: Node, xs: list[torch.Tensor]) -> torch.Tensor:
        g, op, a = self.graph, n.op, n.attrs
        if op == "quantize":
            return quantize_tensor(xs[0], *qparams(n))
        if op == "dequantize":
            return dequantize_tensor(xs[0], *qparams(g[n.inputs[0]]))
        if n.spec.dtype != "int8":  # float nodes after the dequantize at the tail
            return _float_op(n, xs)
        x = xs[0]
        if op in VIEWS:
            return x.reshape(x.shape[0], *n.spec.shape[1:])
        if op in ("conv2d", "linear"):
            _, z_in = qparams(g[n.inputs[0]])
            _, z_out = qparams(n)
            xd = x.to(torch.float64) - z_in   # exact: products and sums of these integers stay below 2^53
            w = n.params["weight"].to(torch.float64)
            if op == "conv2d":
                p = _pair(a["padding"])
                acc = F.conv2d(xd, w, None, _pair(a["stride"]), p, _pair(a["dilation"]), a["groups"])
                shape = (1, -1, 1, 1)
            else:
                acc = F.linear(xd, w)
                shape = (1, -1)
            acc = acc.round().to(torch.int64)
            if "bias" in n.params:
                acc = acc + n.params["bias"].to(torch.int64).reshape(shape)
            m, s = self._mults[n.name]
            y = requantize(acc, m.reshape(shape), s.reshape(shape)) + z_out
            lo, hi = act_range(n)
            return torch.clamp(y, lo, hi).to(torch.int8)
        if op == "max_pool2d":
            y = F.max_pool2d(x.to(torch.float32), _pair(a["kernel_size"]), _pair(a["stride"] or a["kernel_size"]),
                             _pair(a["padding"]), _pair(a.get("dilation", 1)), a["ceil_mode"])
            return y.to(torch.int8)
        if op in ("avg_pool2d", "adaptive_avg_pool2d", "mean"):
            return _int_avg(n, x, g)
        if op in ("relu", "relu6"):
            _, z = qparams(n)
            lo = z
            hi = QMAX if op == "relu" else int(min(QMAX, round(6.0 / qparams(n)[0]) + z))
            return torch.clamp(x.to(torch.int32), lo, hi).to(torch.int8)
        if op in ("add", "sub"):
            return int8_add(xs[0], xs[1], qparams(g[n.inputs[0]]), qparams(g[n.inputs[1]]), qparams(n), *act_range(n),
                            subtract=op == "sub")
        if op == "mul":
            return int8_mul(xs[0], xs[1], qparams(g[n.inputs[0]]), qparams(g[n.inputs[1]]), qparams(n), *act_range(n))
        if op == "slice":
            index = (slice(None),) * a["dim"] + (slice(a["start"], a["end"], a.get("step", 1)),)
            return x[index]
        if op == "channel_shuffle":
            b, c = x.shape[:2]
            return x.reshape(b, a["groups"], c // a["groups"], *x.shape[2:]).transpose(1, 2).reshape(x.shape)
        if op == "pad":  # padded with the pad value in the input's parameters (0 is the zero point, exactly)
            return F.pad(x.to(torch.int32), tuple(a["pads"]), value=pad_value(n)).to(torch.int8)
        if op == "concat":
            q = qparams(n)
            return torch.cat([rescale(v, qparams(g[i]), q) for v, i in zip(xs, n.inputs)], a["dim"])
        if op in LUT_OPS:
            return lut(n)[x.to(torch.int64) - QMIN]
        raise IRError(f"no integer kernel for op {op!r}", n.name)


def avg_windows(n: Node, in_shape: tuple[int, ...]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(kernel, stride) of an average over windows without padding: avg_pool2d (padding 0),
    adaptive_avg_pool2d with an output size dividing the input, mean over H and W."""
    a = n.attrs
    h, w = in_shape[2], in_shape[3]
    if n.op == "avg_pool2d":
        k, s = _pair(a["kernel_size"]), _pair(a["stride"] or a["kernel_size"])
        # ceil_mode only matters where a last window would hang over the edge (ResNet-D's downsampling
        # pool sets it; on even sizes every window fits)
        hangs = a["ceil_mode"] and ((h - k[0]) % s[0] or (w - k[1]) % s[1])
        if _pair(a["padding"]) != (0, 0) or hangs:
            raise IRError("int8 avg_pool2d supports padding 0, and ceil_mode only where every window fits", n.name)
        return k, s
    if n.op == "adaptive_avg_pool2d":
        oh, ow = _pair(a["output_size"])
        if h % oh or w % ow:
            raise IRError(f"int8 adaptive_avg_pool2d needs output {oh}x{ow} to divide input {h}x{w}", n.name)
        return (h // oh, w // ow), (h // oh, w // ow)
    if sorted(d % 4 for d in a["dims"]) != [2, 3]:
        raise IRError("int8 mean supports the mean over H and W only", n.name)
    return (h, w), (h, w)


def _int_avg(n: Node, x: torch.Tensor, g: Graph) -> torch.Tensor:
    k, s = avg_windows(n, tuple(g[n.inputs[0]].spec.shape))
    total = F.avg_pool2d(x.to(torch.float64), k, s) * (k[0] * k[1])  # exact integer sums
    y = avg_divide(total.round().to(torch.int64), k[0] * k[1])
    return y.reshape(x.shape[0], *n.spec.shape[1:]).to(torch.int8)


def _float_op(n: Node, xs: list[torch.Tensor]) -> torch.Tensor:
    if n.op == "softmax":
        return torch.softmax(xs[0], n.attrs["dim"])
    if n.op == "log_softmax":
        return torch.log_softmax(xs[0], n.attrs["dim"])
    if n.op in VIEWS:
        return xs[0].reshape(xs[0].shape[0], *n.spec.shape[1:])
    raise IRError(f"op {n.op!r} after the dequantize of a quantized graph has no CPU kernel here", n.name)


def check_node(g: Graph, n: Node) -> None:
    """verify()'s checks of a node's dtypes and quantization parameters (IRError naming the node)."""
    dt = n.spec.dtype if n.spec is not None else None
    if n.op == "quantize" or dt == "int8":
        q = n.attrs.get("quant")
        if not isinstance(q, dict) or "scale" not in q or "zero_point" not in q:
            raise IRError("int8 output needs attrs['quant'] with 'scale' and 'zero_point'", n.name)
        if not (float(q["scale"]) > 0 and math.isfinite(float(q["scale"]))):
            raise IRError(f"quantization scale must be positive and finite, got {q['scale']}", n.name)
        if not QMIN <= int(q["zero_point"]) <= QMAX:
            raise IRError(f"int8 zero point {q['zero_point']} outside [{QMIN}, {QMAX}]", n.name)
    in_dtypes = [g[i].spec.dtype for i in n.inputs]
    if n.op == "quantize" and in_dtypes != ["float32"]:
        raise IRError(f"quantize reads a float32 tensor, got {in_dtypes}", n.name)
    if n.op == "dequantize" and in_dtypes != ["int8"]:
        raise IRError(f"dequantize reads an int8 tensor, got {in_dtypes}", n.name)
    if dt == "int8" and n.op not in ("quantize",):
        if n.op not in INT8_OPS:
            raise IRError(f"op {n.op!r} has no int8 kernel", n.name)
        if any(d != "int8" for d in in_dtypes):
            raise IRError(f"int8 {n.op} reads non-int8 input(s) {in_dtypes}", n.name)
    if dt == "int8" and n.op in ("conv2d", "linear"):
        w, b = n.params["weight"], n.params.get("bias")
        if w.dtype != torch.int8 or int(w.min()) < -127:
            raise IRError("int8 layer weights must be torch.int8 in [-127, 127] (symmetric)", n.name)
        if b is not None and b.dtype != torch.int32:
            raise IRError(f"int8 layer bias must be int32, got {b.dtype}", n.name)
        ws = n.attrs["quant"].get("weight_scale")
        if ws is None or len(ws) != w.shape[0] or not all(float(v) > 0 for v in ws):
            raise IRError(f"int8 layer needs {w.shape[0]} positive per-channel weight scales", n.name)
    if dt == "int8" and n.op in LUT_OPS:
        t = n.attrs["quant"].get("table")
        if t is None or len(t) != QMAX - QMIN + 1 or not all(QMIN <= int(v) <= QMAX for v in t):
            raise IRError(f"int8 {n.op} needs attrs['quant']['table']: 256 int8 outputs (a lookup table)", n.name)
    if dt == "int8" and n.op in ("add", "sub") and len({tuple(g[i].spec.shape) for i in n.inputs}) != 1:
        raise IRError(f"int8 {n.op} needs two operands of one shape (no broadcasting)", n.name)
    if dt == "int8" and n.op == "mul" and (len(n.inputs) != 2 or n.attrs.get("scalar") is not None):
        raise IRError("int8 mul needs two tensor operands (no scalar)", n.name)
    if dt == "float32" and n.op in ("conv2d", "linear") and not n.params["weight"].is_floating_point():
        raise IRError("float32 layer holds integer weights", n.name)


NODE_CHECKS.append(check_node)
