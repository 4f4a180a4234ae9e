"""Calibration workloads: a fixed-seed grid of micro-benchmarks (each op kind over shapes; `wide_grid`
for the large size), random blocks and CNNs from the calibration's own seed streams (`NET_SEED`;
bench/cost_fidelity.py draws its test architectures from another seed), and whole models from
`hwopt.models` at reduced resolution. A `Workload` is data (kind + sorted parameters, its cache key);
`build()` makes the torch module and example input."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

@dataclass(frozen=True)
class Workload:
    kind: str          # micro kind or "model"
    params: tuple      # sorted (key, value) pairs

    @property
    def key(self) -> str:
        return json.dumps({"kind": self.kind, **dict(self.params)}, sort_keys=True)

    @property
    def p(self) -> dict:
        return dict(self.params)

    def build(self):
        """(torch module in eval mode, example input)."""
        import torch
        from torch import nn
        p = self.p
        torch.manual_seed(0)
        act = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "silu": nn.SiLU, "sigmoid": nn.Sigmoid,
               "none": None}
        if self.kind == "conv":
            layers = [nn.Conv2d(p["cin"], p["cout"], p["k"], p["s"], p["k"] // 2, groups=p["g"], bias=not p["bn"])]
            if p["bn"]:
                layers.append(nn.BatchNorm2d(p["cout"]))
            if act[p["act"]]:
                layers.append(act[p["act"]]())
            m, shape = nn.Sequential(*layers), (1, p["cin"], p["hw"], p["hw"])
        elif self.kind == "dense":
            layers = [nn.Linear(p["fin"], p["fout"])] + ([nn.ReLU()] if p["act"] == "relu" else [])
            m, shape = nn.Sequential(*layers), (1, p["fin"])
        elif self.kind == "eltwise":
            m, shape = _Eltwise(p["op"]), (1, p["c"], p["hw"], p["hw"])
        elif self.kind == "pool":
            if p["op"] == "gap":
                m = nn.Sequential(nn.AdaptiveAvgPool2d(1))
            elif p["op"] == "max":
                m = nn.Sequential(nn.MaxPool2d(p["k"], p["s"], p["k"] // 2))
            else:
                m = nn.Sequential(nn.AvgPool2d(p["k"], p["s"], p["k"] // 2))
            shape = (1, p["c"], p["hw"], p["hw"])
        elif self.kind == "concat":
            m, shape = _Concat(), (1, p["c"], p["hw"], p["hw"])
        elif self.kind == "block":
            m, shape = _block(p), (1, p["cin"], p["hw"], p["hw"])
        elif self.kind == "net":  # the i-th random CNN of stream `seed` (never the bench's seed)
            m, x, _ = random_cnn(np.random.default_rng([p["seed"], p["i"]]), small=p.get("small", False))
            return m.eval(), x
        elif self.kind == "conv1d":  # temporal conv (keyword spotting), costed as conv / pointwise / depthwise
            layers = [nn.Conv1d(p["cin"], p["cout"], p["k"], p["s"], p["k"] // 2, groups=p["g"], bias=False),
                      nn.BatchNorm1d(p["cout"]), nn.ReLU()]
            m, shape = nn.Sequential(*layers), (1, p["cin"], p["length"])
        elif self.kind == "deconv":  # decoder upsampling by a learned transposed conv
            m = nn.Sequential(nn.ConvTranspose2d(p["cin"], p["cout"], p["k"], p["s"], groups=p["g"]), nn.ReLU())
            shape = (1, p["cin"], p["hw"], p["hw"])
        elif self.kind == "upsample":
            m = nn.Sequential(nn.Upsample(scale_factor=2, mode=p["mode"], align_corners=False if p["mode"] == "bilinear" else None))
            shape = (1, p["c"], p["hw"], p["hw"])
        elif self.kind == "model":
            from hwopt import models
            kw = {k: v for k, v in p.items() if k not in ("name", "hw")}
            m = models.get(p["name"], **kw)
            shape = (1, models.MODELS[p["name"]][1][-3], p["hw"], p["hw"])
        else:
            raise ValueError(self.kind)
        return m.eval(), torch.randn(shape, generator=torch.Generator().manual_seed(1))


def _torch_modules():
    from torch import nn

    class Eltwise(nn.Module):
        def __init__(self, op):
            super().__init__()
            self.op = op
            self.f = {"relu": nn.ReLU(), "sigmoid": nn.Sigmoid(), "hardswish": nn.Hardswish(), "silu": nn.SiLU(),
                      "relu6": nn.ReLU6()}.get(op)
            self.pool = nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            if self.op == "add":
                return x + x * 0.5
            if self.op == "mul_bcast":  # a squeeze-excite gate: x * (N, C, 1, 1)
                return x * self.pool(x)
            return self.f(x)

    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.ReLU()

        def forward(self, x):
            import torch
            return torch.cat([x, self.a(x)], dim=1)

    return Eltwise, Concat


def _net_modules():
    """SE, Block: the building blocks of random CNNs (calibration grid and bench/cost_fidelity.py)."""
    from torch import nn

    class SE(nn.Module):
        def __init__(self, c):
            super().__init__()
            r = max(4, c // 4)
            self.pool, self.fc1, self.act, self.fc2, self.gate = (nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, r, 1), nn.ReLU(),
                                                                  nn.Conv2d(r, c, 1), nn.Sigmoid())

        def forward(self, x):
            return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))

    class Block(nn.Module):
        def __init__(self, kind, cin, w, k, s, expand):
            super().__init__()
            self.kind, self.skip = kind, (s == 1 and cin == w)
            if kind in ("mbconv", "mbconv-se"):
                h = cin * expand
                layers = [nn.Conv2d(cin, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
                          nn.Conv2d(h, h, k, s, k // 2, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6()]
                if kind == "mbconv-se":
                    layers.append(SE(h))
                layers += [nn.Conv2d(h, w, 1, bias=False), nn.BatchNorm2d(w)]
                self.body = nn.Sequential(*layers)
            elif kind == "residual":
                self.body = nn.Sequential(nn.Conv2d(cin, w, k, s, k // 2, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                                          nn.Conv2d(w, w, k, 1, k // 2, bias=False), nn.BatchNorm2d(w))
                self.act = nn.ReLU()
            else:  # plain
                self.body = nn.Sequential(nn.Conv2d(cin, w, k, s, k // 2, bias=False), nn.BatchNorm2d(w), nn.ReLU())
                self.skip = False

        def forward(self, x):
            y = self.body(x)
            if self.skip:
                y = x + y
            if self.kind == "residual":
                y = self.act(y)
            return y

    return SE, Block


def _unit_bn(m):
    from torch import nn
    for mod in m.modules():  # non-trivial BN stats (they do not change timing, but avoid denormals)
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_var.fill_(1.0)
    return m.eval()


def _block(p: dict):
    """One network block (MBConv with/without squeeze-excite, residual basic block, plain conv-BN-ReLU)."""
    return _unit_bn(_net_modules()[1](p["block"], p["cin"], p["w"], p["k"], p["s"], p["e"]))


def random_cnn(rng: np.random.Generator, small: bool = False):
    """A random CNN (torch module in eval mode, example input, description): 2..5 stages of plain /
    residual / MBConv / MBConv-SE blocks, widths 8..160, kernels 3/5/7, strides, input 32..128 px.
    small: 32x32 input and widths <= 48. bench/cost_fidelity.py draws its test architectures with
    this function and its own seed; the calibration grid's "net" workloads use other seeds."""
    import torch
    from torch import nn
    Block = _net_modules()[1]
    res = 32 if small else int(rng.choice([32, 48, 64, 96, 128]))
    family = str(rng.choice(["mobile", "resnet", "mixed"]))
    n_stages = int(rng.integers(2, 6))
    stem = int(rng.choice([8, 16, 24, 32]))
    layers: list = [nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU()]
    cin, desc = stem, [f"r{res}", f"stem{stem}"]
    for i in range(n_stages):
        w = int(rng.choice([8, 16, 24, 32, 48] if small else [8, 16, 24, 32, 48, 64, 96, 128, 160]))
        k = int(rng.choice([3, 3, 5, 7]))
        depth = int(rng.integers(1, 4))
        kind = {"mobile": str(rng.choice(["mbconv", "mbconv-se"])), "resnet": "residual",
                "mixed": str(rng.choice(["mbconv", "mbconv-se", "residual", "plain"]))}[family]
        expand = int(rng.choice([1, 3, 4, 6]))
        s = 2 if (i > 0 and rng.random() < 0.6) else 1
        for d in range(depth):
            layers.append(Block(kind, cin, w, k, s if d == 0 else 1, expand))
            cin = w
        desc.append(f"{kind}:{w}k{k}s{s}x{depth}" + (f"e{expand}" if kind.startswith("mb") else ""))
    head = int(rng.choice([0, 128] if small else [0, 256, 512]))
    if head:
        layers += [nn.Conv2d(cin, head, 1, bias=False), nn.BatchNorm2d(head), nn.ReLU()]
        cin = head
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)]
    m = _unit_bn(nn.Sequential(*layers))
    return m, torch.randn(1, 3, res, res), " ".join(desc)


def _Eltwise(op):
    return _torch_modules()[0](op)


def _Concat():
    return _torch_modules()[1]()


def _w(kind: str, **p) -> Workload:
    return Workload(kind, tuple(sorted(p.items())))


def micro_grid(size: str = "full", seed: int = 0) -> list[Workload]:
    """Micro-benchmarks over shapes, drawn with a fixed seed. size: "tiny" (tests), "small", "full",
    "large" (full + `wide_grid()`: the shapes random mobile/residual CNNs at 32..128 px are made of)."""
    if size == "large":
        return list(dict.fromkeys(micro_grid("full", seed) + wide_grid(seed + 1)))
    rng = np.random.default_rng(seed)
    n = {"tiny": 1, "small": 3, "full": 8}[size]
    out: list[Workload] = []
    ch = [8, 16, 24, 32, 48, 64, 96, 128, 192, 256]
    hws = [7, 14, 28, 56]

    def pick(xs):
        return xs[int(rng.integers(len(xs)))]

    for _ in range(3 * n):  # full conv k>1, with/without BN + activation
        k = pick([3, 3, 3, 5, 7])
        hw = pick(hws + [112])
        cin = pick([3] + ch[:7]) if hw >= 56 else pick(ch[:8])
        out.append(_w("conv", cin=cin, cout=pick(ch[:8]), k=k, s=pick([1, 1, 2]), hw=hw, g=1,
                      bn=bool(rng.integers(2)), act=pick(["none", "relu", "relu6", "hardswish"])))
    for _ in range(3 * n):  # pointwise
        hw = pick(hws)
        out.append(_w("conv", cin=pick(ch), cout=pick(ch), k=1, s=1, hw=hw, g=1,
                      bn=bool(rng.integers(2)), act=pick(["none", "relu", "relu6"])))
    for _ in range(2 * n):  # depthwise
        c = pick(ch)
        out.append(_w("conv", cin=c, cout=c, k=pick([3, 3, 5, 7]), s=pick([1, 1, 2]), hw=pick(hws + [112]) if c <= 32 else pick(hws),
                      g=c, bn=bool(rng.integers(2)), act=pick(["none", "relu", "relu6"])))
    for _ in range(max(1, n // 2)):  # grouped
        c = pick([32, 64, 128])
        out.append(_w("conv", cin=c, cout=c, k=3, s=1, hw=pick([14, 28]), g=pick([2, 4, 8]), bn=True, act="relu"))
    for _ in range(n):
        out.append(_w("dense", fin=pick([128, 256, 512, 1024, 1280, 2048]), fout=pick([10, 100, 256, 1000]),
                      act=pick(["none", "relu"])))
    for _ in range(n):
        out.append(_w("eltwise", op=pick(["relu", "add", "sigmoid", "hardswish", "silu"]), c=pick(ch), hw=pick(hws)))
    for _ in range(max(1, n // 2) + 1):
        out.append(_w("pool", op=pick(["max", "avg", "gap"]), c=pick(ch), hw=pick(hws), k=3, s=2))
    for _ in range(max(1, n // 4)):
        out.append(_w("concat", c=pick(ch), hw=pick(hws)))
    # drawn after the 2-D grid, so adding them left its shapes as they were
    for _ in range(n):  # Conv1d over MFCC-like [1, C, T]: plain k>1, pointwise, depthwise
        c, k = pick(ch[:7]), pick([1, 3, 9])
        depthwise = k > 1 and bool(rng.integers(2))
        out.append(_w("conv1d", cin=c, cout=c if depthwise else pick(ch[:7]), k=k, s=pick([1, 2]), length=pick([49, 101, 250]),
                      g=c if depthwise else 1))
    for _ in range(max(1, n // 2)):
        out.append(_w("deconv", cin=pick(ch[:7]), cout=pick(ch[:7]), k=pick([2, 3]), s=2, hw=pick(hws[:3]), g=1))
        out.append(_w("upsample", c=pick(ch[:7]), hw=pick(hws[:3]), mode=pick(["nearest", "bilinear"])))
    return list(dict.fromkeys(out))


def wide_grid(seed: int = 1) -> list[Workload]:
    """Wider shape ranges than the full grid, drawn with a fixed seed: cin=3 stems at 32..128 px, 1x1
    convs at 1x1 spatial size (squeeze-excite), pointwise/depthwise up to 960 channels (expanded
    MBConv), full convs k=3/5/7 down to 2x2 maps, broadcast multiplies, and whole blocks (MBConv with
    and without SE, residual, plain) with random shapes."""
    rng = np.random.default_rng(seed)
    out: list[Workload] = []

    def pick(xs):
        return xs[int(rng.integers(len(xs)))]

    ch = [8, 16, 24, 32, 48, 64, 96, 128, 160]
    wide = ch + [192, 288, 384, 480, 576, 640, 960]
    hws = [2, 4, 8, 12, 16, 24, 32, 48, 64]
    for _ in range(12):  # stems
        out.append(_w("conv", cin=3, cout=pick([8, 16, 24, 32]), k=pick([3, 3, 5]), s=pick([1, 2, 2]),
                      hw=pick([32, 48, 64, 96, 128]), g=1, bn=True, act="relu"))
    for _ in range(14):  # squeeze-excite 1x1 convs on 1x1 maps (with bias)
        c = pick(wide)
        r = max(4, c // 4)
        cin, cout = (c, r) if rng.random() < 0.5 else (r, c)
        out.append(_w("conv", cin=cin, cout=cout, k=1, s=1, hw=1, g=1, bn=False, act=pick(["relu", "sigmoid", "none"])))
    for _ in range(36):  # pointwise (expand / project / head)
        hw = pick(hws)
        big = 960 if hw <= 16 else 384 if hw <= 32 else 160
        cin, cout = pick([c for c in wide if c <= big]), pick([c for c in wide + [256, 512] if c <= max(big, 512 if hw <= 8 else 0)])
        out.append(_w("conv", cin=cin, cout=cout, k=1, s=1, hw=hw, g=1, bn=True, act=pick(["none", "relu", "relu6"])))
    for _ in range(30):  # depthwise
        hw = pick(hws)
        c = pick([c for c in wide if c <= (960 if hw <= 16 else 576 if hw <= 32 else 288)])
        out.append(_w("conv", cin=c, cout=c, k=pick([3, 5, 7]), s=pick([1, 1, 2]), hw=hw, g=c, bn=True,
                      act=pick(["relu6", "none"])))
    for _ in range(34):  # full convs (residual / plain blocks)
        hw = pick(hws)
        k = pick([3, 3, 5, 7])
        lim = 160 if hw <= 16 else 96 if hw <= 32 else 48
        out.append(_w("conv", cin=pick([c for c in ch if c <= lim]), cout=pick([c for c in ch if c <= lim]), k=k,
                      s=pick([1, 1, 2]), hw=hw, g=1, bn=True, act=pick(["none", "relu"])))
    for _ in range(6):
        out.append(_w("dense", fin=pick([8, 16, 32, 48, 64, 96, 128, 160, 256, 512]), fout=1000, act="none"))
    for _ in range(14):
        out.append(_w("eltwise", op=pick(["relu", "relu6", "add", "sigmoid", "mul_bcast"]), c=pick(wide), hw=pick(hws)))
    for _ in range(6):
        out.append(_w("pool", op="gap", c=pick(wide), hw=pick(hws), k=3, s=2))
    for _ in range(80):  # whole blocks
        blk = pick(["mbconv", "mbconv-se", "residual", "plain"])
        hw = pick([4, 8, 16, 24, 32, 48, 64])
        lim = 160 if hw <= 16 else 64 if hw <= 32 else 32
        out.append(_w("block", block=blk, cin=pick([c for c in ch if c <= lim]), w=pick([c for c in ch if c <= lim]),
                      k=pick([3, 3, 5, 7]), s=pick([1, 1, 2]), e=pick([1, 3, 4, 6]) if blk.startswith("mb") else 1, hw=hw))
    # large activations (expanded MBConv at 32..64 px: 2..32 MB working sets, beyond L2 and near the
    # last-level cache), which identify the spill terms
    for _ in range(12):
        out.append(_w("conv", cin=pick([96, 128, 144, 160, 192]), cout=pick([384, 576, 768, 960]), k=1, s=1,
                      hw=pick([32, 48, 64]), g=1, bn=True, act=pick(["relu6", "none"])))
        out.append(_w("conv", cin=pick([384, 576, 768, 960]), cout=pick([96, 128, 160]), k=1, s=1,
                      hw=pick([32, 48, 64]), g=1, bn=True, act="none"))
    for _ in range(12):
        c = pick([384, 576, 768, 960])
        out.append(_w("conv", cin=c, cout=c, k=pick([3, 5, 7]), s=pick([1, 1, 2]), hw=pick([32, 48, 64]), g=c, bn=True,
                      act="relu6"))
    for _ in range(8):
        out.append(_w("eltwise", op=pick(["relu6", "add", "mul_bcast"]), c=pick([384, 576, 960]), hw=pick([48, 64])))
    for _ in range(10):
        out.append(_w("block", block=pick(["mbconv", "mbconv-se"]), cin=pick([96, 128, 160]), w=pick([96, 128, 160]),
                      k=pick([3, 5, 7]), s=pick([1, 2]), e=pick([4, 6]), hw=pick([32, 48, 64])))
    return list(dict.fromkeys(out))


NET_SEED = 7  # the calibration's random-CNN stream; bench/cost_fidelity.py uses 20240611 (one stream)


def net_workloads(n: int = 60, small: bool = False) -> list[Workload]:
    """Random CNNs (`random_cnn`) drawn from the calibration's own seed stream: whole-network timings,
    which isolated micro-benchmarks do not give (an op inside a network runs slower than alone:
    caches and allocations are shared with its neighbours)."""
    return [_w("net", seed=NET_SEED, i=i, **({"small": True} if small else {})) for i in range(n)]


def model_workloads(size: str = "full") -> list[Workload]:
    """Whole models (from hwopt.models) at reduced resolution: fit data alongside the micro grid."""
    ms = [_w("model", name="mobilenet_v2", width_mult=0.5, hw=96), _w("model", name="resnet18", hw=64)]
    if size in ("full", "large"):
        ms += [_w("model", name="mobilenet_v2", width_mult=1.0, hw=128), _w("model", name="mnasnet_a1", hw=96),
               _w("model", name="shufflenet_v2_x0_5", hw=128), _w("model", name="squeezenet1_1", hw=96)]
    if size == "large":
        ms += [_w("model", name="mobilenet_v3_small", hw=96), _w("model", name="efficientnet_b0", hw=64),
               _w("model", name="regnetx_200mf", hw=64)] + net_workloads(200) + net_workloads(40, small=True)
    if size == "tiny":
        ms = ms[:1]
    return ms


