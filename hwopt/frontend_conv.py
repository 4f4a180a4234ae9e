"""The front end's handlers for Conv1d, transposed conv, upsampling and vector norms (ConvNeXt-V2's GRN).

`ConvOps` is mixed into hwopt.frontend's `_Lifter`: each `f_<name>` lifts the functional form named in
frontend_rules (`F.conv1d`, `F.conv_transpose2d`, `F.interpolate`, `Tensor.norm`, `torch.addcmul`, ...).
nn.Upsample and its two fixed-mode subclasses are not leaf modules: fx traces into their forward, whose
`F.interpolate` call lands here with the module's path.
"""
from __future__ import annotations

import math

from .ir import INTERPOLATE_MODES, _pair


def single(v) -> int:
    """An int from Conv1d's 1-tuples (or a plain int)."""
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


def same_padding_1d(padding, kernel: int, dilation: int) -> int:
    """Numeric padding for Conv1d's padding argument ('valid', symmetric 'same', or a number)."""
    if padding == "valid":
        return 0
    if padding == "same":
        if dilation * (kernel - 1) % 2:
            raise ValueError(f"padding='same' with kernel {kernel} and dilation {dilation} pads asymmetrically")
        return dilation * (kernel - 1) // 2
    return single(padding)


class ConvOps:
    def f_conv1d(self, n, a, v):
        p = self._const(n, v, "weight", "bias")
        w = p["weight"]
        if w.dim() != 3:
            raise self.unsupported(n, f"conv1d weight of shape {tuple(w.shape)}")
        k, d, groups = int(w.shape[2]), single(v["dilation"]), int(v["groups"])
        attrs = dict(in_channels=w.shape[1] * groups, out_channels=w.shape[0], kernel_size=k, stride=single(v["stride"]),
                     padding=same_padding_1d(v["padding"], k, d), dilation=d, groups=groups)
        return self.emit(n, "conv1d", [v["input"]], attrs, p)

    def f_conv_transpose2d(self, n, a, v):
        p = self._const(n, v, "weight", "bias")
        w = p["weight"]
        if w.dim() != 4:
            raise self.unsupported(n, f"conv_transpose2d weight of shape {tuple(w.shape)}")
        groups = int(v["groups"])
        attrs = dict(in_channels=w.shape[0], out_channels=w.shape[1] * groups, kernel_size=_pair(tuple(w.shape[2:])),
                     stride=_pair(v["stride"]), padding=_pair(v["padding"]), output_padding=_pair(v["output_padding"]),
                     dilation=_pair(v["dilation"]), groups=groups)
        return self.emit(n, "conv_transpose2d", [v["input"]], attrs, p)

    def f_interpolate(self, n, a, v):
        x, mode = v["input"], v["mode"]
        shape = self.spec(x).shape
        if len(shape) != 4:
            raise self.unsupported(n, f"interpolate of a {len(shape)}-D input (NCHW only)")
        if mode not in INTERPOLATE_MODES or v["antialias"]:
            raise self.unsupported(n, f"interpolate mode={mode!r}, antialias={v['antialias']} "
                                      f"(lifted: {', '.join(INTERPOLATE_MODES)}; no antialias)")
        if (v["size"] is None) == (v["scale_factor"] is None):
            raise self.unsupported(n, "interpolate needs exactly one of size and scale_factor")
        scale = None
        if v["size"] is not None:
            size = _pair(v["size"])
        else:
            sf = v["scale_factor"]
            sf = tuple(float(s) for s in sf) if isinstance(sf, (tuple, list)) else (float(sf),) * 2
            size = tuple(math.floor(shape[2 + i] * sf[i]) for i in range(2))
            scale = None if v["recompute_scale_factor"] else sf  # torch then maps positions by size alone
        align = v["align_corners"] if mode == "bilinear" else None
        attrs = {"size": size, "scale_factor": scale, "mode": mode, "align_corners": None if align is None else bool(align)}
        return self.emit(n, "interpolate", [x], attrs)

    def _vector_norm(self, n, x, ord_, dims, keepdim, dtype):
        rank = len(self.spec(x).shape)
        if dims is None or dtype is not None:
            raise self.unsupported(n, "a norm needs explicit dims (the batch dimension is kept) and no dtype")
        if ord_ == "fro":
            ord_ = 2.0
        if isinstance(ord_, str) or ord_ is None:
            raise self.unsupported(n, f"norm ord={ord_!r} (vector p-norms only)")
        dims = tuple(sorted(d % rank for d in ((dims,) if isinstance(dims, int) else dims)))
        if 0 in dims:
            raise self.unsupported(n, "a norm over the batch dimension")
        return self.emit(n, "vector_norm", [x], {"ord": float(ord_), "dims": dims, "keepdim": bool(keepdim)})

    def f_norm(self, n, a, v):
        return self._vector_norm(n, v["input"], v["p"], v["dim"], v["keepdim"], v["dtype"])

    def f_vector_norm(self, n, a, v):
        return self._vector_norm(n, v["input"], v["ord"], v["dim"], v["keepdim"], v["dtype"])

    def f_addcmul(self, n, a, v):
        """input + value · tensor1 · tensor2 (GRN's affine step): a mul, a scalar mul, an add, in torch's order."""
        prod = self._binary("mul", n, {"input": v["tensor1"], "other": v["tensor2"]})
        if v["value"] != 1:
            prod = self._binary("mul", n, {"input": prod, "other": v["value"]})
        return self._binary("add", n, {"input": v["input"], "other": prod})
