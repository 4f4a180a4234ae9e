"""The firmware's kernels: each kernel of the plan as a Relax function built from the hwopt IR, legalized
and fused by TVM into one TIR function, scheduled so that no intermediate tensor is materialized (padding
and epilogues inlined, the reduction accumulator kept per output element), and compiled by TVM's LLVM
back end for the Cortex-M target into one ELF object. Each kernel is a TVM-FFI packed function
`__tvm_ffi_<name>(self, args, nargs, result)` whose arguments are DLTensors: activation inputs, then
weights, then the output.

Weights are read off the IR here (masks multiplied in, a batch norm that follows its conv/linear folded
into it in float64, linear weights stored transposed) and returned as numpy arrays for the C project.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import HwoptError
from ..ir import Graph, Node, _pair
from ..passes.fold_bn import bn_affine
from .plan import Kernel, Plan


class FirmwareError(HwoptError, RuntimeError):
    """The firmware cannot be generated, built or run; the message says which step and why."""


@dataclass
class Arg:
    """One argument of a kernel call: an activation buffer (by buffer name) or a weight (array)."""
    name: str
    shape: tuple[int, ...]
    dtype: str
    buffer: str | None = None        # activation buffer this argument is (None: a weight)
    data: np.ndarray | None = None   # weight values


@dataclass
class CompiledKernel:
    kernel: Kernel
    symbol: str
    args: list[Arg] = field(default_factory=list)  # in the PrimFunc's order; the last one is the output
    kind: str = ""                                 # cost-model kind of the anchor (conv, depthwise, ...)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


def _layer_weights(g: Graph, grp: list[str]) -> tuple[dict[str, np.ndarray], set[str]]:
    """Float64 weights of the group's anchor (mask baked, a directly following batch norm folded in) and
    the names of the nodes folded away."""
    anchor = g[grp[0]]
    p = anchor.params
    w = _np(p["weight"] * p["weight_mask"] if "weight_mask" in p else p["weight"])
    cout = w.shape[0]
    b = _np(p["bias"]) if "bias" in p else None
    folded: set[str] = set()
    if len(grp) > 1 and g[grp[1]].op == "batch_norm":
        bn = g[grp[1]]
        scale, shift = _bn_affine(bn)
        w = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
        b = (b if b is not None else np.zeros(cout)) * scale + shift
        folded.add(bn.name)
    out = {"weight": w}
    if b is not None:
        out["bias"] = b
    return out, folded


def _bn_affine(n: Node) -> tuple[np.ndarray, np.ndarray]:
    """fold-bn's per-channel (scale, shift) of a batch norm, in float64 for the C project's weights."""
    scale, shift = bn_affine(n, torch.float64)
    return scale.numpy(), shift.numpy()


def kernel_kind(n: Node) -> str:
    """The cost model's kernel kind of an anchor node (for per-kind instruction counts)."""
    if n.op == "conv2d":
        a = n.attrs
        if a["groups"] == 1:
            return "pointwise" if _pair(a["kernel_size"]) == (1, 1) else "conv"
        return "depthwise" if a["groups"] == a["in_channels"] else "conv"
    if n.op == "linear":
        return "dense"
    if n.op in ("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "mean"):
        return "pooling"
    if n.op in ("concat", "slice", "channel_shuffle"):
        return "data"
    return "elementwise"


class _Builder:
    """Emits one plan kernel as a Relax function (float32)."""

    def __init__(self, g: Graph, plan: Plan, kernel: Kernel):
        from tvm import relax
        self.relax = relax
        self.g, self.plan, self.kernel = g, plan, kernel
        self.weights: list[tuple[str, np.ndarray]] = []

    def spec(self, name: str):
        return self.g[name].spec

    def build(self):
        if any(self.g[m].spec.dtype == "int8" or self.g[m].op == "dequantize" for m in self.kernel.nodes):
            return self.build_int8()
        relax = self.relax
        g, grp = self.g, self.kernel.nodes
        members = set(grp)
        # weights first: a Relax function's parameters are fixed when it is opened
        plan_w: dict[str, dict[str, np.ndarray]] = {}
        folded: set[str] = set()
        anchor = g[grp[0]]
        if anchor.op in ("conv2d", "linear"):
            lw, folded = _layer_weights(g, grp)
            if anchor.op == "linear":
                lw["weight"] = lw["weight"].T.copy()
            plan_w[anchor.name] = lw
        for m in grp:
            n = g[m]
            if n.op == "batch_norm" and m not in folded:
                scale, shift = _bn_affine(n)
                bshape = (1, n.attrs["num_features"]) + (1,) * (len(n.spec.shape) - 2)
                plan_w[m] = {"scale": scale.reshape(bshape), "shift": shift.reshape(bshape)}
        params: list = []
        act_vars = self._act_params(params)
        wvars: dict[tuple[str, str], object] = {}
        for node_name, ws in plan_w.items():
            for k, arr in ws.items():
                if k == "bias" and g[node_name].op == "conv2d":
                    arr = arr.reshape(1, -1, 1, 1)
                arr = arr.astype(np.float32)
                v = relax.Var(f"w{len(self.weights)}", relax.TensorType(arr.shape, "float32"))
                self.weights.append((f"{node_name}.{k}", arr))
                wvars[(node_name, k)] = v
                params.append(v)
        bb = relax.BlockBuilder()
        with bb.function(self.kernel.name, params):
            with bb.dataflow():
                env = {}
                for m in grp:
                    n = g[m]
                    ins = []
                    for src in n.inputs:
                        if src in members:
                            ins.append(env[src])
                        else:
                            ins.append(act_vars[(self.plan.root[src], tuple(self.spec(src).shape))])
                    if m in folded:
                        env[m] = ins[0]
                        continue
                    w = {k: v for (nn, k), v in wvars.items() if nn == m}
                    env[m] = bb.emit(_emit(relax, n, ins, w))
                out = bb.emit_output(env[grp[-1]])
            bb.emit_func_output(out)
        return bb.get(), [p for p in params], act_vars

    def _act_params(self, params: list) -> dict:
        """One Relax parameter per (buffer, shape read) of the kernel's activation inputs: a view (flatten,
        reshape) of a buffer is the same memory described by another DLTensor shape, so it costs no kernel."""
        relax, g, members = self.relax, self.g, set(self.kernel.nodes)
        act_vars = {}
        for m in self.kernel.nodes:
            for src in g[m].inputs:
                if src in members:
                    continue
                key = (self.plan.root[src], tuple(self.spec(src).shape))
                if key not in act_vars:
                    s = self.spec(src)
                    v = relax.Var(f"in_{len(params)}", relax.TensorType(s.shape, s.dtype))
                    act_vars[key] = v
                    params.append(v)
        return act_vars

    def build_int8(self):
        """The kernel as one TE computation (integer arithmetic of hwopt.quant), hence one TIR function."""
        from . import int8 as I8
        relax, g, grp = self.relax, self.g, self.kernel.nodes
        members = set(grp)
        params: list = []
        act_vars = self._act_params(params)
        wkeys = []
        for m in grp:
            for k, arr in I8.weights(g, g[m]).items():
                v = relax.Var(f"w{len(self.weights)}", relax.TensorType(arr.shape, str(arr.dtype)))
                self.weights.append((f"{m}.{k}", arr))
                wkeys.append((m, k))
                params.append(v)
        n_act = len(act_vars)
        act_keys = list(act_vars)

        def group(*ts):
            acts = dict(zip(act_keys, ts[:n_act]))
            ws = dict(zip(wkeys, ts[n_act:]))
            env = {}
            for m in grp:
                n = g[m]
                ins = [env[src] if src in members else acts[(self.plan.root[src], tuple(self.spec(src).shape))]
                       for src in n.inputs]
                env[m] = I8.compute(g, n, ins, {k: t for (mm, k), t in ws.items() if mm == m})
            return env[grp[-1]]

        bb = relax.BlockBuilder()
        with bb.function(self.kernel.name, params):
            with bb.dataflow():
                out = bb.emit_output(bb.emit_te(group, *params, primfunc_name_hint=f"{self.kernel.name}_int8"))
            bb.emit_func_output(out)
        return bb.get(), params, act_vars


def _emit(relax, n: Node, ins: list, w: dict):
    op, a = n.op, n.attrs
    R = relax.op
    if op == "conv2d":
        pad = _pair(a["padding"])
        y = R.nn.conv2d(ins[0], w["weight"], strides=_pair(a["stride"]), padding=(pad[0], pad[1], pad[0], pad[1]),
                        dilation=_pair(a["dilation"]), groups=a["groups"])
        return R.add(y, w["bias"]) if "bias" in w else y
    if op == "linear":
        y = R.matmul(ins[0], w["weight"])
        return R.add(y, w["bias"]) if "bias" in w else y
    if op == "batch_norm":
        return R.add(R.multiply(ins[0], w["scale"]), w["shift"])
    if op == "relu":
        return R.nn.relu(ins[0])
    if op == "relu6":
        return R.clip(ins[0], 0.0, 6.0)
    if op == "sigmoid":
        return R.sigmoid(ins[0])
    if op == "tanh":
        return R.tanh(ins[0])
    if op == "leaky_relu":
        return R.nn.leakyrelu(ins[0], alpha=float(a["negative_slope"]))
    if op == "silu":
        return R.nn.silu(ins[0])
    if op == "gelu":
        return R.nn.gelu_tanh(ins[0]) if a.get("approximate") == "tanh" else R.nn.gelu(ins[0])
    if op in ("hardswish", "hardsigmoid"):
        x = ins[0]
        hs = R.divide(R.clip(R.add(x, relax.const(3.0, "float32")), 0.0, 6.0), relax.const(6.0, "float32"))
        return R.multiply(x, hs) if op == "hardswish" else hs
    if op in ("add", "sub", "mul", "div"):
        f = {"add": R.add, "sub": R.subtract, "mul": R.multiply, "div": R.divide}[op]
        if a.get("scalar") is None:
            return f(ins[0], ins[1])
        s = relax.const(float(a["scalar"]), "float32")
        return f(s, ins[0]) if a.get("reverse") else f(ins[0], s)
    if op in ("max_pool2d", "avg_pool2d"):
        pad = _pair(a["padding"])
        kw = dict(pool_size=_pair(a["kernel_size"]), strides=_pair(a["stride"] or a["kernel_size"]),
                  padding=(pad[0], pad[1], pad[0], pad[1]), ceil_mode=bool(a["ceil_mode"]))
        if op == "max_pool2d":
            return R.nn.max_pool2d(ins[0], dilation=_pair(a.get("dilation", 1)), **kw)
        return R.nn.avg_pool2d(ins[0], count_include_pad=bool(a["count_include_pad"]), **kw)
    if op == "adaptive_avg_pool2d":
        return R.nn.adaptive_avg_pool2d(ins[0], output_size=_pair(a["output_size"]))
    if op == "mean":
        return R.mean(ins[0], axis=list(a["dims"]), keepdims=bool(a["keepdim"]))
    if op == "concat":
        return R.concat(ins, axis=a["dim"])
    if op == "slice":
        return R.strided_slice(ins[0], axes=[a["dim"]], begin=[a["start"]], end=[a["end"]],
                               strides=[a.get("step", 1)])
    if op == "channel_shuffle":
        (b, c, h, wd), g = (int(d) for d in n.spec.shape), a["groups"]
        y = R.permute_dims(R.reshape(ins[0], (b, g, c // g, h, wd)), [0, 2, 1, 3, 4])
        return R.reshape(y, (b, c, h, wd))
    if op == "pad":
        pads, rank = a["pads"], len(n.spec.shape)
        width = [0] * (2 * rank)
        for k in range(len(pads) // 2):  # torch order (last dim first) to Relax's (before, after) per dim
            width[2 * (rank - 1 - k)], width[2 * (rank - 1 - k) + 1] = pads[2 * k], pads[2 * k + 1]
        return R.nn.pad(ins[0], width, pad_value=float(a.get("value", 0.0)))
    if op == "softmax":
        return R.nn.softmax(ins[0], axis=a["dim"])
    if op == "log_softmax":
        return R.nn.log_softmax(ins[0], axis=a["dim"])
    raise FirmwareError(f"node {n.name!r} ({n.source or 'no module path'}): op {op!r} has no firmware kernel")


def _inline_schedule(func):
    """Schedule a fused TIR function so it needs no scratch buffers: every injective producer (padding,
    bias add, activation ...) is inlined into its consumer, and the remaining elementwise epilogue is
    computed right after each output element's reduction (the accumulator shrinks to one element)."""
    import tvm
    from tvm import s_tir

    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    root = sch.get_sblock("root", func_name="main")
    changed = True
    while changed:
        changed = False
        blocks = sch.get_child_blocks(root)
        for b in blocks[:-1]:
            try:
                sch.compute_inline(b)
            except Exception:  # reductions and blocks with several consumers stay
                continue
            changed = True
            break
    blocks = sch.get_child_blocks(root)
    for b in blocks:
        producers = sch.get_producers(b)
        if len(producers) != 1:
            continue
        red = producers[0]
        ivs = sch.get(red).iter_vars
        n_spatial = sum(1 for v in ivs if int(v.iter_type) == 0)
        if n_spatial == len(ivs) or n_spatial == 0:
            continue
        loops = sch.get_loops(red)
        try:
            sch.reverse_compute_at(b, loops[n_spatial - 1])
        except Exception:  # loop nest not spatial-outer: keep the intermediate
            continue
    return sch.mod["main"]


def compile_kernels(g: Graph, plan: Plan, tvm_target: dict) -> tuple[list[CompiledKernel], bytes]:
    """Build every kernel of `plan`; returns their call descriptions and the ELF object (bytes)."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cg

    tgt = tvm.target.Target(tvm_target)
    funcs = {}
    compiled: list[CompiledKernel] = []
    for kernel in plan.kernels:
        b = _Builder(g, plan, kernel)
        try:
            mod, params, act_vars = b.build()
            with tgt, tvm.transform.PassContext(opt_level=3):
                mod = tvm.transform.Sequential(list(cg.legalize_passes(tgt)))(mod)
        except FirmwareError:
            raise
        except Exception as exc:
            raise FirmwareError(f"kernel {kernel.name} (nodes {', '.join(kernel.nodes)}): TVM legalize/fuse failed: "
                                f"{type(exc).__name__}: {exc}") from exc
        calls = _calls(mod, kernel.name)
        if len(calls) != 1:
            raise FirmwareError(f"kernel {kernel.name} (nodes {', '.join(kernel.nodes)}) did not fuse into one TIR "
                                f"function ({len(calls)} calls)")
        gv, call_args, out_shape, out_dtype = calls[0]
        var_role = {}
        for (buf, shape), v in act_vars.items():
            var_role[v] = Arg(buf, shape, g[buf].spec.dtype, buffer=buf)
        wi = 0
        for p in params:
            if p in var_role:
                continue
            wname, arr = b.weights[wi]
            wi += 1
            var_role[p] = Arg(wname, tuple(arr.shape), str(arr.dtype), data=arr)
        args = []
        for x in call_args:
            if x not in var_role:
                raise FirmwareError(f"kernel {kernel.name}: TVM call argument {x} is neither an input nor a weight")
            args.append(var_role[x])
        out_node = g[kernel.output]
        args.append(Arg(kernel.output, tuple(out_node.spec.shape), out_node.spec.dtype, buffer=kernel.output))
        if tuple(out_shape) != tuple(out_node.spec.shape):
            raise FirmwareError(f"kernel {kernel.name}: TVM output shape {out_shape} != IR shape {out_node.spec.shape}")
        func = mod[gv]
        try:
            func = _inline_schedule(func)
        except Exception as exc:
            raise FirmwareError(f"kernel {kernel.name}: scheduling failed: {type(exc).__name__}: {exc}") from exc
        funcs[kernel.name] = func.with_attr("global_symbol", kernel.name)
        compiled.append(CompiledKernel(kernel, kernel.name, args, kernel_kind(g[kernel.nodes[0]])))
    try:
        lib = tvm.tirx.build(tvm.IRModule(funcs), target=tgt)
    except Exception as exc:
        raise FirmwareError(f"TVM build for {tvm_target}: {type(exc).__name__}: {exc}") from exc
    import tempfile
    import os
    with tempfile.TemporaryDirectory(prefix="hwopt_fw_") as d:
        path = os.path.join(d, "kernels.o")
        lib.write_to_file(path)
        with open(path, "rb") as fh:
            obj = fh.read()
    return compiled, obj


def _calls(mod, name: str) -> list:
    """(global var, argument vars, output shape, output dtype) of each call_tir in Relax function `name`."""
    from tvm import relax
    out = []
    func = mod[name]
    call_tir = relax.op.get("relax.call_tir") if hasattr(relax.op, "get") else None
    for block in func.body.blocks:
        for binding in block.bindings:
            v = binding.value
            if isinstance(v, relax.Call) and getattr(v.op, "name", "") == "relax.call_tir":
                gv = v.args[0]
                args = list(v.args[1].fields)
                sinfo = v.ty_args[0]
                out.append((gv, args, tuple(int(s) for s in sinfo.shape), str(sinfo.dtype)))
    del call_tir
    return out
