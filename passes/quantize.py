"""quantize: int8 post-training quantization as CMSIS-NN and TFLite Micro run it (Jacob et al. 2018,
"Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference"; TFLite's
int8 quantization spec).

1. Identities are dropped (drop-identity: also x + 0, x · 1) and batch norms folded into their
   conv/linear first (fold-bn); one with no layer of its own to fold
   into (a pre-activation BN) becomes the depthwise 1x1 conv it equals, as does a per-channel product with
   a constant (layer scale: FastViT, EfficientFormerV2, MobileNetV4-hybrid) or a scalar.
2. Calibration: the float graph runs on `batches` batches of ctx.data (or the `data` given to the pass);
   every node's output range [min, max] (widened to hold 0) is recorded.
3. Conversion: activations per tensor, asymmetric (scale = (max - min) / 255, zero point so that 0 is
   exact); conv/linear weights per output channel, symmetric in [-127, 127]; biases int32 in units of
   s_in * s_w[c]; a ReLU/ReLU6 that is its layer's only reader lends the layer its output range (the
   layer's clamp is the activation, as TFLite fuses them). Pools, flatten/reshape and ReLUs keep their
   input's parameters. A residual add and a concat get their own calibrated parameters and requantize
   their operands to them (CMSIS-NN arm_elementwise_add_s8; TFLite's concat with scaling), as does a
   product of two tensors, broadcast (a squeeze-and-excite gate: arm_elementwise_mul_s8); sigmoid, tanh,
   SiLU, hard-swish, hard-sigmoid and GELU become 256-entry int8 lookup tables (TFLite Micro's LUT
   kernels) - exact over all 256 inputs, so no float island is needed. A `quantize` node converts the
   float input before the first layer, a `dequantize` node converts back before the output (and before
   a softmax).
4. Optional quantization-aware training (`qat_epochs` > 0, needs ctx.train): the float model is trained
   with fake-quantized weights (per channel) and activations (the calibrated ranges) through a
   straight-through estimator, then calibrated and converted again.

The result computes in integers (hwopt.quant) both in `lower()` and in the firmware.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch

from hwopt.errors import PassError
from hwopt.ir import Graph
from hwopt.lower import lower, read_back
from hwopt.passmanager import Pass, PassContext, register_pass
from hwopt import quant as Q

from .canonicalize import DropIdentity
from .fold_bn import FoldBatchNorm, bn_affine

_FLOAT_TAIL = {"softmax", "log_softmax"}
_MOVES = {"pad", "slice", "channel_shuffle"}  # ops that only move values: exact in int8


@register_pass("quantize")
class Quantize(Pass):
    batches: int = 8          # calibration batches taken from ctx.data
    qat_epochs: float = 0.0   # > 0: quantization-aware fine-tuning through ctx.train before converting

    def validate(self) -> None:
        if not (isinstance(self.batches, int) and self.batches >= 1):
            raise PassError(f"option 'batches' of pass 'quantize' must be an integer >= 1, got {self.batches!r}")
        if not self.qat_epochs >= 0:
            raise PassError(f"option 'qat_epochs' of pass 'quantize' must be >= 0, got {self.qat_epochs}")

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        if Q.is_quantized(graph):
            return graph
        if ctx.data is None:
            raise PassError("pass 'quantize' needs calibration data: PassContext(data=...) batches of (x, y)")
        if self.qat_epochs > 0 and ctx.train is None:
            raise PassError("pass 'quantize' with qat_epochs > 0 needs PassContext(train=...)")
        g = _prepared(graph, ctx)
        _check_supported(g)
        batches = [b[0] if isinstance(b, (tuple, list)) else b for b in itertools.islice(iter(ctx.data), self.batches)]
        if not batches:
            raise PassError("pass 'quantize': ctx.data yielded no batches")
        ranges = calibrate(g, batches)
        if self.qat_epochs > 0:
            g = _qat(g, ranges, ctx, self.qat_epochs)
            ranges = calibrate(g, batches)
        return convert(g, ranges)


    def check_supported(self, graph: Graph) -> None:
        """PassError naming the first node without an int8 kernel (after batch norms are folded)."""
        _check_supported(_prepared(graph, PassContext()))


def _prepared(graph: Graph, ctx: PassContext) -> Graph:
    """The float graph the conversion reads: identities dropped, batch norms folded, stand-alone ones as convs."""
    return _channel_scales_as_conv(_standalone_bn_as_conv(FoldBatchNorm().run(DropIdentity().run(graph, ctx), ctx)))


def _depthwise_1x1(node, c: int, weight: torch.Tensor, bias: torch.Tensor):
    """`node` (a copy) turned into the depthwise 1x1 conv x -> x · weight[c] + bias[c] of its first input."""
    conv = node.copy()
    conv.op = "conv2d"
    conv.inputs = node.inputs[:1]
    conv.attrs = {"in_channels": c, "out_channels": c, "kernel_size": (1, 1), "stride": (1, 1),
                  "padding": (0, 0), "dilation": (1, 1), "groups": c}
    conv.params = {"weight": weight.detach().reshape(c, 1, 1, 1).clone(), "bias": bias.detach().clone()}
    return conv


def _standalone_bn_as_conv(g: Graph) -> Graph:
    """Each batch norm fold-bn left (one that reads no conv/linear of its own: a pre-activation BN, as in
    DenseNet, or a second BN on a layer's output, as RepGhost's fusion BN) as the per-channel affine map it
    is in inference: a depthwise 1x1 conv with weight γ / sqrt(var + eps) and bias β − mean · that, which
    the int8 conv kernel runs (TFLite converts such a BN to a multiply and an add)."""
    bns = [n for n in g if n.op == "batch_norm" and len(n.spec.shape) == 4]
    if not bns:
        return g
    g = g.copy()
    for bn in bns:
        g.replace(_depthwise_1x1(bn, bn.spec.shape[1], *bn_affine(bn)))
    return g.verify()


def _channel_scales_as_conv(g: Graph) -> Graph:
    """Each product of an NCHW tensor with a per-channel constant (timm's LayerScale2d, a (1, C, 1, 1)
    parameter) or with a scalar, as the depthwise 1x1 conv it equals (weight the constant, bias 0): the
    int8 conv kernel then runs it with the constant quantized per channel, where an int8 product of two
    tensors would quantize the constant as an activation. The constant goes when nothing else reads it."""
    def rewrite(n):
        if n.op != "mul" or n.spec is None or len(n.spec.shape) != 4 or n.spec.axis != 1:
            return None
        x = g[n.inputs[0]]
        if x.spec is None or tuple(x.spec.shape) != tuple(n.spec.shape):
            return None
        c = n.spec.shape[1]
        if len(n.inputs) == 1 and n.attrs.get("scalar") is not None:
            w = torch.full((c,), float(n.attrs["scalar"]))
        elif len(n.inputs) == 2 and g[n.inputs[1]].op == "const" and \
                tuple(g[n.inputs[1]].params["value"].shape) in ((1, c, 1, 1), (c, 1, 1)):
            w = g[n.inputs[1]].params["value"].reshape(c).to(torch.float32)
        else:
            return None
        return _depthwise_1x1(n, c, w, torch.zeros(c))
    convs = [conv for conv in map(rewrite, g) if conv is not None]
    if not convs:
        return g
    g = g.copy()
    for conv in convs:
        dropped = g[conv.name].inputs[1:]
        g.replace(conv)
        for name in dropped:
            if not g.users(name):
                g.remove(name)
    return g.verify()


def _check_supported(g: Graph) -> None:
    after_dequant = False
    for name in g.order():
        n = g[name]
        if n.op in ("input", "output"):
            continue
        if n.op in _FLOAT_TAIL:
            after_dequant = True
            continue
        if n.op not in Q.INT8_OPS:
            raise PassError(f"pass 'quantize': node {name!r} ({n.source or 'no module path'}): op {n.op!r} has no int8 "
                            f"kernel (int8 ops: {', '.join(sorted(Q.INT8_OPS))}; a softmax may end the network)")
        if after_dequant and n.op not in Q.VIEWS:
            raise PassError(f"pass 'quantize': node {name!r}: int8 op {n.op!r} after a float softmax")
        if n.op in ("add", "sub") and (n.attrs.get("scalar") is not None
                                       or len({tuple(g[i].spec.shape) for i in n.inputs}) != 1):
            raise PassError(f"pass 'quantize': node {name!r} ({n.source or 'no module path'}): int8 {n.op} needs two "
                            "tensors of one shape (no scalar, no broadcasting)")
        if n.op == "mul" and (n.attrs.get("scalar") is not None or len(n.inputs) != 2):
            raise PassError(f"pass 'quantize': node {name!r} ({n.source or 'no module path'}): int8 mul needs two "
                            "tensors (a product with a scalar has no int8 kernel)")
        if n.op in ("avg_pool2d", "adaptive_avg_pool2d", "mean"):
            try:
                Q.avg_windows(n, tuple(g[n.inputs[0]].spec.shape))
            except Exception as e:
                raise PassError(f"pass 'quantize': {e}") from None


def calibrate(g: Graph, batches: list[torch.Tensor]) -> dict[str, tuple[float, float]]:
    """Min and max of every node's float output over `batches` (one lowered run per batch)."""
    probe = g.copy()
    out = probe.output
    names = [n for n in probe.order() if probe[n].op != "output"]
    node = out.copy()
    node.inputs = tuple(names)
    probe.replace(node)
    module = lower(probe.verify(infer_shapes=True))
    lo = {n: float("inf") for n in names}
    hi = {n: float("-inf") for n in names}
    with torch.no_grad():
        for x in batches:
            vals = module(x)
            for n, v in zip(names, vals):
                lo[n] = min(lo[n], float(v.min()))
                hi[n] = max(hi[n], float(v.max()))
    return {n: (lo[n], hi[n]) for n in names}


def activation_qparams(lo: float, hi: float) -> tuple[float, int]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / (Q.QMAX - Q.QMIN)
    if not scale > 0:
        scale = 1.0 / 255  # a constant-zero tensor: any scale represents it
    zp = int(np.clip(round(Q.QMIN - lo / scale), Q.QMIN, Q.QMAX))
    return float(scale), zp


def _weight_quant(w: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    w64 = w.detach().to(torch.float64)
    amax = w64.reshape(w64.shape[0], -1).abs().amax(1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    shape = (-1,) + (1,) * (w.dim() - 1)
    q = torch.clamp(Q.round_half_away(w64 / scale.reshape(shape)), -127, 127).to(torch.int8)
    return q, scale.numpy()


def convert(g: Graph, ranges: dict[str, tuple[float, float]]) -> Graph:
    """The int8 graph of float graph `g` (batch norms already folded) given calibrated ranges."""
    qp = {n: activation_qparams(*r) for n, r in ranges.items()}
    new = Graph()
    names: dict[str, str] = {}   # old node -> the new node holding its value
    int8: set[str] = set()       # old nodes whose value is int8 in the new graph
    quantized_input: dict[str, str] = {}
    dequantized: dict[str, str] = {}

    def as_int8(src: str) -> str:
        if src in int8:
            return names[src]
        if src not in quantized_input:
            s, z = qp[src]
            name = new.unique_name(f"{src}.quantize")
            new.add(name, "quantize", [names[src]], {"quant": {"scale": s, "zero_point": z}})
            quantized_input[src] = name
        return quantized_input[src]

    def as_float(src: str) -> str:
        if src not in int8:
            return names[src]
        if src not in dequantized:
            name = new.unique_name(f"{src}.dequantize")
            new.add(name, "dequantize", [names[src]])
            dequantized[src] = name
        return dequantized[src]

    for name in g.order():
        n = g[name]
        if n.op == "input":
            new.add(name, "input", spec=n.spec, source=n.source)
            names[name] = name
            continue
        if n.op == "output":
            new.add(name, "output", [as_float(i) for i in n.inputs])
            continue
        src = n.inputs[0]
        if n.op in ("conv2d", "linear"):
            x = as_int8(src)
            s_in = new[x].attrs["quant"]["scale"]
            users = g.users(name)
            act = g[users[0]] if len(users) == 1 and g[users[0]].op in ("relu", "relu6") else None
            s_out, z_out = qp[act.name if act is not None else name]
            p = n.params
            w = p["weight"] * p["weight_mask"] if "weight_mask" in p else p["weight"]
            wq, ws = _weight_quant(w)
            params = {"weight": wq}
            if "weight_mask" in p:
                params["weight_mask"] = p["weight_mask"]
            if "bias" in p:
                b = p["bias"].detach().to(torch.float64).numpy() / (s_in * ws)
                params["bias"] = torch.from_numpy(np.clip(np.round(b), -2**31, 2**31 - 1).astype(np.int32))
            qa = {"scale": s_out, "zero_point": z_out, "weight_scale": tuple(float(v) for v in ws)}
            if act is not None:
                qa["act_min"] = z_out
                if act.op == "relu6":
                    qa["act_max"] = int(min(Q.QMAX, round(6.0 / s_out) + z_out))
            new.add(name, n.op, [x], {**n.attrs, "quant": qa}, params, source=n.source)
            int8.add(name)
        elif n.op in ("add", "sub", "mul", "concat"):
            # every operand int8; the output has its own calibrated parameters (the op requantizes)
            xs = [as_int8(i) for i in n.inputs]
            s, z = qp[name]
            new.add(name, n.op, xs, {**n.attrs, "quant": {"scale": s, "zero_point": z}}, source=n.source)
            int8.add(name)
        elif n.op in Q.LUT_OPS:
            x = as_int8(src)
            q_in = Q.qparams(new[x])
            q_out = qp[name]
            table = tuple(int(v) for v in Q.lookup_table(n, q_in, q_out))
            new.add(name, n.op, [x], {**n.attrs, "quant": {"scale": q_out[0], "zero_point": q_out[1], "table": table}},
                    source=n.source)
            int8.add(name)
        elif n.op in Q.INT8_OPS and (src in int8 or n.op in _MOVES):
            # keeps its input's parameters; data movement on the float input (TF "same" padding of the
            # image) moves the quantized input instead, a quarter of the bytes
            x = as_int8(src)
            s, z = new[x].attrs["quant"]["scale"], new[x].attrs["quant"]["zero_point"]
            new.add(name, n.op, [x], {**n.attrs, "quant": {"scale": s, "zero_point": z}}, source=n.source)
            int8.add(name)
        else:
            new.add(name, n.op, [as_float(i) for i in n.inputs], dict(n.attrs), dict(n.params), source=n.source)
        names[name] = name
    return new.verify()


def _qat(g: Graph, ranges: dict, ctx: PassContext, epochs: float) -> Graph:
    """Train the float graph with fake-quantized weights (per channel, a parametrization) and layer outputs
    (the calibrated ranges), gradients passing straight through the rounding; read the float weights back."""
    from torch.nn.utils import parametrize

    module = lower(g)
    qp = {n: activation_qparams(*r) for n, r in ranges.items()}
    handles, layers = [], []
    for name, path in module.hwopt_module_paths.items():
        if g[name].op not in ("conv2d", "linear"):
            continue
        sub = module.get_submodule(path)
        parametrize.register_parametrization(sub, "weight", _FakeQuantWeight())
        layers.append(sub)
        users = g.users(name)
        key = users[0] if len(users) == 1 and g[users[0]].op in ("relu", "relu6") else name
        handles.append(sub.register_forward_hook(_fake_act_hook(*qp[key])))
    try:
        ctx.train(module, epochs=epochs)
    finally:
        for h in handles:
            h.remove()
        for sub in layers:
            parametrize.remove_parametrizations(sub, "weight", leave_parametrized=False)
    return read_back(g, module)


class _FakeQuantWeight(torch.nn.Module):
    def forward(self, w):
        amax = w.detach().reshape(w.shape[0], -1).abs().amax(1).clamp_min(1e-12)
        scale = (amax / 127.0).to(torch.float32)
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -127, 127)


def _fake_act_hook(scale: float, zero_point: int):
    def hook(_mod, _inputs, out):
        return torch.fake_quantize_per_tensor_affine(out, scale, zero_point, Q.QMIN, Q.QMAX)
    return hook
