"""The quantize pass and hwopt.quant: int8 graphs whose lower() computes CMSIS-NN's integers."""
import random

import pytest
import torch
from torch import nn

import hwopt
from hwopt import models, quant as Q
from hwopt.errors import IRError, PassError


def _cmsis_requantize(val: int, mult: int, shift: int) -> int:
    """arm_nn_requantize written from the CMSIS-NN source with Python integers (an independent reference)."""
    left, right = max(shift, 0), max(-shift, 0)
    v = (val * (1 << left) * mult + (1 << 30)) >> 31
    mask = (1 << right) - 1
    rem, res = v & mask, v >> right
    threshold = (mask >> 1) + (1 if res < 0 else 0)
    return res + (1 if rem > threshold else 0)


def test_requantize_matches_cmsis_reference():
    rng = random.Random(0)
    for _ in range(2000):
        real = rng.uniform(1e-5, 0.9)
        m, s = Q.quantize_multiplier(real)
        assert abs(m * 2.0 ** (s - 31) - real) <= real * 2 ** -30
        acc = rng.randint(-2**24, 2**24)
        got = int(Q.requantize(torch.tensor([acc]), torch.tensor([m]), torch.tensor([s]))[0])
        assert got == _cmsis_requantize(acc, m, s)
        assert abs(got - acc * real) <= 1  # a rounding of the real product


def _quantized(model, shape, n=4, seed=0):
    torch.manual_seed(seed)
    g = hwopt.lift(model.eval(), torch.randn(shape))
    calib = [(torch.randn((32,) + shape[1:]), None) for _ in range(n)]
    return g, hwopt.PassManager.parse("quantize").run(g, hwopt.PassContext(data=calib))


@pytest.mark.parametrize("name,shape", [("mnist_cnn", (1, 1, 28, 28)), ("ds_cnn", (1, 1, 49, 10))])
def test_ptq_graph_is_int8_and_close_to_float(name, shape):
    g, qg = _quantized(models.get(name), shape)
    ops = [n.op for n in qg]
    assert ops.count("quantize") == 1 and ops.count("dequantize") == 1 and "batch_norm" not in ops
    for n in qg:
        if n.op in ("conv2d", "linear"):
            assert n.spec.dtype == "int8" and n.params["weight"].dtype == torch.int8
    x = torch.randn((64,) + shape[1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = hwopt.lower(g)(x), hwopt.lower(qg)(x)
    err = (got - ref).abs().max() / ref.abs().max()
    assert err < 0.1
    assert (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.8
    assert g.verify() is g  # the user's graph is untouched


def test_verify_rejects_bad_quant_params():
    _, qg = _quantized(models.mnist_cnn(), (1, 1, 28, 28), n=1)
    bad = qg.copy()
    n = bad["0.0"].copy()
    n.attrs = {**n.attrs, "quant": {**n.attrs["quant"], "zero_point": 300}}
    bad.replace(n)
    with pytest.raises(IRError, match="zero point 300"):
        bad.verify()
    bad = qg.copy()
    n = bad["2.0"].copy()
    n.params = {**n.params, "weight": n.params["weight"].float()}
    bad.replace(n)
    with pytest.raises(IRError, match="torch.int8"):
        bad.verify()


def test_quantize_needs_data_and_names_unsupported_ops():
    g = hwopt.lift(models.mnist_cnn().eval(), torch.randn(1, 1, 28, 28))
    with pytest.raises(PassError, match="calibration data"):
        hwopt.PassManager.parse("quantize").run(g, hwopt.PassContext())

    class Halved(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return self.c(x) / 2.0
    g = hwopt.lift(Halved().eval(), torch.randn(1, 1, 6, 6))
    with pytest.raises(PassError, match=r"node 'truediv' \(no module path\): op 'div' has no int8 kernel"):
        hwopt.PassManager.parse("quantize").run(g, hwopt.PassContext(data=[(torch.randn(2, 1, 6, 6), None)]))

    class Scaled(nn.Module):  # a scalar product of a vector: no depthwise conv equals it
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(36, 2)

        def forward(self, x):
            return self.fc(x.flatten(1)) * 0.5
    g = hwopt.lift(Scaled().eval(), torch.randn(1, 1, 6, 6))
    with pytest.raises(PassError, match="int8 mul needs two tensors"):
        hwopt.PassManager.parse("quantize").run(g, hwopt.PassContext(data=[(torch.randn(2, 1, 6, 6), None)]))


def _int8_add_reference(q1, q2, p1, p2, po, sign=1):
    """arm_elementwise_add_s8 with Python integers, from the CMSIS-NN source (an independent reference);
    sign -1: TFLite's int8 SUB (the second operand negated)."""
    (m1, r1), (m2, r2), (mo, ro) = Q.add_multipliers(p1[0], p2[0], po[0])
    a1 = _cmsis_requantize((q1 - p1[1]) << 20, m1, r1)
    a2 = _cmsis_requantize(sign * (q2 - p2[1]) << 20, m2, r2)
    return max(-128, min(127, _cmsis_requantize(a1 + a2, mo, ro) + po[1]))


def test_int8_add_and_sub_match_cmsis_reference_and_the_real_result():
    rng = random.Random(1)
    for _ in range(300):
        p1, p2, po = [(rng.uniform(0.002, 0.2), rng.randint(-128, 127)) for _ in range(3)]
        q1, q2 = rng.randint(-128, 127), rng.randint(-128, 127)
        got = int(Q.int8_add(torch.tensor([q1], dtype=torch.int8), torch.tensor([q2], dtype=torch.int8), p1, p2, po)[0])
        assert got == _int8_add_reference(q1, q2, p1, p2, po)
        real = p1[0] * (q1 - p1[1]) + p2[0] * (q2 - p2[1])
        if -128 < round(real / po[0]) + po[1] < 127:  # not clamped: a rounding of the real sum
            assert abs(po[0] * (got - po[1]) - real) <= po[0] * 0.5 + 1e-6 + 2 ** -18 * max(p1[0], p2[0])
        diff = int(Q.int8_add(torch.tensor([q1], dtype=torch.int8), torch.tensor([q2], dtype=torch.int8), p1, p2, po,
                              subtract=True)[0])
        assert diff == _int8_add_reference(q1, q2, p1, p2, po, sign=-1)
        real = p1[0] * (q1 - p1[1]) - p2[0] * (q2 - p2[1])
        if -128 < round(real / po[0]) + po[1] < 127:
            assert abs(po[0] * (diff - po[1]) - real) <= po[0] * 0.5 + 1e-6 + 2 ** -18 * max(p1[0], p2[0])


def test_int8_mul_matches_cmsis_reference_and_the_real_product():
    """arm_elementwise_mul_s8 with Python integers (an independent reference), and within one output step
    of the real product where it is not clamped (arm_nn_requantize rounds twice: after the high multiply
    and after the right shift, so up to 0.5 + 0.5 / 2^shift steps)."""
    rng = random.Random(2)
    for _ in range(300):
        p1, p2, po = [(rng.uniform(0.002, 0.2), rng.randint(-128, 127)) for _ in range(3)]
        q1, q2 = rng.randint(-128, 127), rng.randint(-128, 127)
        got = int(Q.int8_mul(torch.tensor([q1], dtype=torch.int8), torch.tensor([q2], dtype=torch.int8), p1, p2, po)[0])
        m, r = Q.quantize_multiplier(p1[0] * p2[0] / po[0])
        assert got == max(-128, min(127, _cmsis_requantize((q1 - p1[1]) * (q2 - p2[1]), m, r) + po[1]))
        real = p1[0] * (q1 - p1[1]) * p2[0] * (q2 - p2[1])
        if -128 < round(real / po[0]) + po[1] < 127:
            assert abs(po[0] * (got - po[1]) - real) <= po[0] * (0.5 + 0.5 / 2 ** max(-r, 0) + 1e-6)


class _SqueezeExcite(nn.Module):
    """MobileNetV3's block: a hard-swish depthwise conv scaled per channel by a squeeze-and-excite gate."""

    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c), nn.Hardswish())
        self.reduce, self.expand = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)
        self.head = nn.Linear(c, 5)

    def forward(self, x):
        y = self.dw(self.stem(x))
        gate = nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(y.mean((2, 3), keepdim=True)))))
        return self.head((y * gate).mean((2, 3)))  # the gate [N, C, 1, 1] broadcast over H and W


def test_squeeze_excite_quantizes_with_a_broadcast_int8_mul():
    g, qg = _quantized(_SqueezeExcite(), (1, 3, 12, 12), n=4)
    mul = next(n for n in qg if n.op == "mul")
    assert mul.spec.dtype == "int8" and [tuple(qg[i].spec.shape) for i in mul.inputs] == [(1, 8, 12, 12), (1, 8, 1, 1)]
    x = torch.randn((64, 3, 12, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = hwopt.lower(g)(x), hwopt.lower(qg)(x)
    assert (got - ref).abs().max() / ref.abs().max() < 0.1
    assert (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.8
    bad = qg.copy()
    n = bad[mul.name].copy()
    n.inputs, n.attrs = n.inputs[:1], {**n.attrs, "scalar": 2.0}
    bad.replace(n)
    with pytest.raises(IRError, match="int8 mul needs two tensor operands"):
        bad.verify()


class _PreActivation(nn.Module):
    """DenseNet's layer: BN -> ReLU -> conv, the BN reading a concat (no conv of its own to fold into)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.norm, self.conv = nn.BatchNorm2d(16), nn.Conv2d(16, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        y = self.stem(x)
        z = self.conv(torch.relu(self.norm(torch.cat([y, torch.relu(y)], 1))))
        return self.head(z.mean((2, 3)))


def test_a_bn_without_a_layer_to_fold_into_quantizes_as_a_depthwise_conv():
    model = _PreActivation().eval()
    with torch.no_grad():
        model.norm.running_mean.uniform_(-0.5, 0.5)
        model.norm.running_var.uniform_(0.5, 2.0)
        model.norm.weight.uniform_(0.5, 1.5)
    g, qg = _quantized(model, (1, 3, 10, 10))
    assert "batch_norm" not in {n.op for n in qg}
    norm = qg["norm"]
    assert norm.op == "conv2d" and norm.attrs["groups"] == 16 and norm.spec.dtype == "int8"
    x = torch.randn((64, 3, 10, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = hwopt.lower(g)(x), hwopt.lower(qg)(x)
    assert (got - ref).abs().max() / ref.abs().max() < 0.1
    assert g["norm"].op == "batch_norm"  # the user's graph is untouched


class _LayerScaled(nn.Module):
    """timm's LayerScale2d (x · γ, γ a (1, C, 1, 1) parameter) on a residual branch, and a scalar product."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.gamma = nn.Parameter(torch.linspace(0.05, 1.5, 8).reshape(1, 8, 1, 1))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        y = self.stem(x)
        y = y + self.conv(torch.relu(y)) * self.gamma
        return self.head((torch.relu(y) * 0.5).mean((2, 3)))


def test_layer_scale_and_scalar_products_quantize_as_depthwise_convs():
    g, qg = _quantized(_LayerScaled().eval(), (1, 3, 10, 10))
    assert [n for n in g if n.op == "const"] and not [n for n in qg if n.op in ("const", "mul")]
    scales = [n for n in qg if n.op == "conv2d" and n.attrs["groups"] == 8]
    assert len(scales) == 2 and all(n.spec.dtype == "int8" for n in scales)
    x = torch.randn((64, 3, 10, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = hwopt.lower(g)(x), hwopt.lower(qg)(x)
    assert (got - ref).abs().max() / ref.abs().max() < 0.1
    assert {n.op for n in g} >= {"const", "mul"}  # the user's graph is untouched


def test_data_movement_in_int8_is_exact():
    """pad (TF "same"), a channel slice and a channel shuffle move int8 values: dequantizing their output
    gives exactly the float op applied to the dequantized input."""
    class Moves(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 8, 3, stride=2)

        def forward(self, x):
            y = torch.relu(self.c(nn.functional.pad(x, (0, 1, 0, 1))))
            return nn.functional.channel_shuffle(y, 2)[:, 1:7:2]
    g, qg = _quantized(Moves(), (1, 3, 9, 9))
    assert {qg[k].spec.dtype for k in ("pad", "channel_shuffle", "getitem")} == {"int8"}, list(qg.nodes)
    x = torch.randn((4, 3, 9, 9), generator=torch.Generator().manual_seed(1))
    m = Q.QuantizedModule(qg)
    assert qg["pad"].inputs == ("x.quantize",)  # the image is quantized first, then padded in int8
    xq = Q.quantize_tensor(x, *Q.qparams(qg["x.quantize"]))
    padded = m._node(qg["pad"], [xq])
    assert torch.equal(Q.dequantize_tensor(padded, *Q.qparams(qg["pad"])),
                       nn.functional.pad(Q.dequantize_tensor(xq, *Q.qparams(qg["x.quantize"])), (0, 1, 0, 1)))
    y = torch.randint(-128, 128, (4, 8, 5, 5), dtype=torch.int8)
    shuffled = m._node(qg["channel_shuffle"], [y])
    assert torch.equal(shuffled, nn.functional.channel_shuffle(y.float(), 2).to(torch.int8))
    assert torch.equal(m._node(qg["getitem"], [shuffled]), shuffled[:, 1:7:2])


@pytest.mark.parametrize("size,fits", [(8, True), (7, False)])
def test_ceil_mode_avg_pool_quantizes_where_every_window_fits(size, fits):
    """ResNet-D's downsampling AvgPool2d(2, 2, ceil_mode=True): on even sizes ceil_mode changes nothing."""
    model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False),
                          nn.Flatten(), nn.Linear(4 * ((size + 1) // 2) ** 2, 3))
    if not fits:
        with pytest.raises(PassError, match="ceil_mode only where every window fits"):
            _quantized(model, (1, 1, size, size))
        return
    g, qg = _quantized(model, (1, 1, size, size))
    x = torch.randn((16, 1, size, size), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = hwopt.lower(g)(x), hwopt.lower(qg)(x)
    assert (got - ref).abs().max() / ref.abs().max() < 0.1


class _InvertedResidual(nn.Module):
    """MobileNetV2-style block with a residual add, a concat of two branches and smooth activations."""

    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU6())
        self.expand = nn.Sequential(nn.Conv2d(c, 4 * c, 1), nn.BatchNorm2d(4 * c), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(4 * c, 4 * c, 3, padding=1, groups=4 * c), nn.BatchNorm2d(4 * c), nn.Hardswish())
        self.project = nn.Sequential(nn.Conv2d(4 * c, c, 1), nn.BatchNorm2d(c))
        self.side = nn.Sequential(nn.Conv2d(c, c, 1), nn.GELU())
        self.head = nn.Linear(2 * c, 5)

    def forward(self, x):
        x = self.stem(x)
        y = x + self.project(self.dw(self.expand(x)))       # residual add
        z = torch.cat([y, torch.sigmoid(self.side(y))], 1)   # concat of two scales, LUT activations
        return self.head(z.mean((2, 3)))


def test_residual_concat_and_smooth_activations_quantize():
    """issue 18: int8 add / concat (requantized to a common scale) and LUT activations instead of refusals."""
    g, qg = _quantized(_InvertedResidual(), (1, 3, 12, 12), n=4)
    ops = {n.op: n.spec.dtype for n in qg if n.op not in ("input", "output", "dequantize")}
    assert all(ops[k] == "int8" for k in ("add", "concat", "gelu", "sigmoid", "hardswish")), ops
    x = torch.randn((64, 3, 12, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = hwopt.lower(g)(x), hwopt.lower(qg)(x)
    assert (got - ref).abs().max() / ref.abs().max() < 0.1
    assert (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.8
    # a lookup table is f at every one of the 256 inputs, rounded once
    lut = next(n for n in qg if n.op == "sigmoid")
    (s_in, z_in), (s_out, z_out) = Q.qparams(qg[lut.inputs[0]]), Q.qparams(lut)
    q = torch.arange(-128, 128)
    exact = torch.sigmoid((q - z_in).double() * s_in) / s_out + z_out
    assert ((Q.lut(lut).double() - exact.clamp(-128, 127)).abs() <= 0.5 + 1e-9).all()
    bad = qg.copy()
    n = bad[lut.name].copy()
    n.attrs = {**n.attrs, "quant": {**n.attrs["quant"], "table": (0,) * 10}}
    bad.replace(n)
    with pytest.raises(IRError, match="lookup table"):
        bad.verify()


def test_qat_trains_through_fake_quantization():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    g = hwopt.lift(model, torch.randn(1, 1, 8, 8))
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
    calls = []

    def train(module, *, epochs=1.0, **_):
        opt = torch.optim.SGD(module.parameters(), lr=0.05)
        module.train()
        for _ in range(5):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(module(x), y)
            loss.backward()
            opt.step()
        calls.append(loss.item())

    ctx = hwopt.PassContext(data=[(x, y)], train=train)
    qg = hwopt.PassManager.parse("quantize{qat_epochs=1.0}").run(g, ctx)
    assert calls and Q.is_quantized(qg)
    assert not torch.equal(qg["0"].params["weight"].float(),
                           hwopt.PassManager.parse("quantize").run(g, hwopt.PassContext(data=[(x, y)]))["0"].params["weight"].float())
