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

    class Gelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.a = nn.Conv2d(1, 2, 3), nn.GELU()

        def forward(self, x):
            return self.a(self.c(x))
    g = hwopt.lift(Gelu().eval(), torch.randn(1, 1, 6, 6))
    with pytest.raises(PassError, match="gelu"):
        hwopt.PassManager.parse("quantize").run(g, hwopt.PassContext(data=[(torch.randn(2, 1, 6, 6), None)]))


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
