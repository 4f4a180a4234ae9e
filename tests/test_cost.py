"""Cost model properties: monotone in channel counts, peak SRAM bounds, exact flash, sparse storage."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import hwopt
import hwopt.targets as T
from hwopt.sparse import relative_index_entries
from hwopt.targets.cost import DTYPE_BYTES

TARGETS = [T.load_target(n, runtime=rt) for n in T.available() for rt in T.load_target(n).runtimes]
# the same devices pricing a float32 graph as its int8 version (what a pipeline that quantizes plans with)
INT8_PRICED = [t.priced_as("int8") for t in TARGETS if t.deploy_dtype == "int8"]


# --------------------------------------------------------------------------------------------------
# Small random conv nets, built with torch and lifted

class SE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.act, self.fc2, self.gate = nn.Conv2d(c, max(1, c // 4), 1), nn.ReLU(), nn.Conv2d(max(1, c // 4), c, 1), nn.Sigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class Block(nn.Module):
    def __init__(self, kind, cin, w, k, s, bn):
        super().__init__()
        self.kind = kind
        norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
        if kind == "dwsep":
            self.body = nn.Sequential(nn.Conv2d(cin, cin, k, s, k // 2, groups=cin, bias=not bn), norm(cin), nn.ReLU6(),
                                      nn.Conv2d(cin, w, 1, bias=not bn), norm(w))
        else:
            self.body = nn.Sequential(nn.Conv2d(cin, w, k, s, k // 2, bias=not bn), norm(w), nn.ReLU())
        if kind == "residual":
            self.res = nn.Sequential(nn.Conv2d(w, w, k, 1, k // 2, bias=not bn), norm(w), nn.ReLU(),
                                     nn.Conv2d(w, w, 1, bias=not bn), norm(w))
        if kind == "se":
            self.se = SE(w)

    def forward(self, x):
        x = self.body(x)
        if self.kind == "residual":
            x = x + self.res(x)
        if self.kind == "se":
            x = self.se(x)
        return x


def make_net(stages, res, bn=True, head=10):
    layers, cin = [], 3
    for kind, w, k, s in stages:
        layers.append(Block(kind, cin, w, k, s, bn))
        cin = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, head)]
    return hwopt.lift(nn.Sequential(*layers).eval(), torch.randn(1, 3, res, res))


stage = st.tuples(st.sampled_from(["plain", "dwsep", "residual", "se"]), st.integers(2, 48),
                  st.sampled_from([1, 3, 5]), st.sampled_from([1, 2]))
nets = st.tuples(st.lists(stage, min_size=1, max_size=4), st.sampled_from([8, 16, 24, 32]), st.booleans())

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(nets, st.data())
def test_removing_channels_never_raises_cost(net, data):
    stages, res, bn = net
    i = data.draw(st.integers(0, len(stages) - 1))
    kind, w, k, s = stages[i]
    w2 = data.draw(st.integers(1, w - 1)) if w > 1 else w
    head2 = data.draw(st.integers(1, 10))
    smaller = list(stages)
    smaller[i] = (kind, w2, k, s)
    g1, g2 = make_net(stages, res, bn), make_net(smaller, res, bn, head=head2)
    for t in TARGETS + INT8_PRICED:
        c1, c2 = t.cost(g1), t.cost(g2)
        assert c2.latency_ms <= c1.latency_ms * (1 + 1e-12), (t, c1, c2)
        assert c2.flash_bytes <= c1.flash_bytes
        assert c2.peak_sram_bytes <= c1.peak_sram_bytes
        assert c2.energy_mj <= c1.energy_mj * (1 + 1e-12)
        assert c2.macs <= c1.macs


def _random_terms_target(seed: int):
    """host with a "terms" table of random non-negative coefficients (some exactly 0)."""
    from hwopt.targets.schema import KINDS, TERMS
    rng = np.random.default_rng(seed)
    scale = {"one": 10.0, "work": 1e-4, "out": 1e-3, "in": 1e-3, "weights": 1e-3, "work_per_cin": 1e-3,
             "work_per_cout": 1e-3, "spill_l2": 1e-3, "spill_llc": 1e-3}
    table = {k: v for k, v in T.load_target("host").calibration["torch-eager"].items() if k not in ("terms", "kinds")}
    table["form"] = "terms"
    table["terms"] = {k: {m: float(scale[m] * rng.exponential() * (rng.random() < 0.7)) for m in TERMS} for k in KINDS}
    t = T.load_target("host").with_coefficients(table, runtime="random-terms")
    if seed % 2:  # small caches, so that the spill steps are crossed by these small nets too
        import copy

        from hwopt.targets import _build
        from hwopt.targets.schema import validate
        doc = copy.deepcopy(t.doc)
        doc["memory"].update(l2_kib=4, l3_kib=16)
        validate(doc)
        t = _build(doc, None, "random-terms")
    return t


@SETTINGS
@given(nets, st.data(), st.integers(0, 2 ** 31))
def test_terms_form_is_monotone_for_any_nonnegative_coefficients(net, data, seed):
    """Monotone by construction, not by the fitted numbers: any non-negative "terms" table."""
    stages, res, bn = net
    i = data.draw(st.integers(0, len(stages) - 1))
    kind, w, k, s = stages[i]
    w2 = data.draw(st.integers(1, w - 1)) if w > 1 else w
    smaller = list(stages)
    smaller[i] = (kind, w2, k, s)
    t = _random_terms_target(seed)
    g1, g2 = make_net(stages, res, bn), make_net(smaller, res, bn, head=data.draw(st.integers(1, 10)))
    assert t.cost(g2).latency_ms <= t.cost(g1).latency_ms * (1 + 1e-12)


def test_depthwise_pruned_to_one_channel_is_not_slower():
    """groups == in_channels == 1 is what the IR calls a plain conv: costed as min(conv, depthwise)."""
    def g(c):
        return hwopt.lift(nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, groups=c)).eval(), torch.randn(1, c, 16, 16))
    for t in TARGETS + [_random_terms_target(s) for s in range(5)]:
        assert t.cost(g(1)).latency_ms <= t.cost(g(2)).latency_ms, t


def test_grouped_conv_pruned_to_depthwise_is_not_slower():
    def g(cin, groups):
        return hwopt.lift(nn.Sequential(nn.Conv2d(cin, cin, 3, 1, 1, groups=groups)).eval(), torch.randn(1, cin, 16, 16))
    grouped, depthwise = g(64, 32), g(32, 32)  # 2 channels per group -> 1 per group
    for t in TARGETS + [_random_terms_target(s) for s in range(5)]:
        assert t.cost(depthwise).latency_ms <= t.cost(grouped).latency_ms


@SETTINGS
@given(nets)
def test_peak_sram_at_least_largest_activation(net):
    g = make_net(*net)
    largest = max(n.spec.numel for n in g)
    total = sum(n.spec.numel for n in g if n.op not in ("output", "reshape", "flatten", "identity", "dropout"))
    for t in TARGETS + INT8_PRICED:
        c = t.cost(g)
        b = DTYPE_BYTES[c.dtype]  # a float32 graph: 4 B per element; priced as int8: 1
        assert b == (1 if t.price_float_as == "int8" else 4)
        # priced as int8, the float input and output are held beside their int8 copies while converted
        conversions = 4 * (g.inputs[0].spec.numel + g[g.output.inputs[0]].spec.numel) if b == 1 else 0
        assert largest * b <= c.peak_sram_bytes <= total * b + conversions


def test_peak_sram_exact_on_a_chain_and_a_residual():
    # chain: input(3x8x8) -> conv(8x8x8) -> relu -> ...: the peak is two adjacent buffers
    g = hwopt.lift(nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval(), torch.randn(1, 3, 8, 8))
    t = T.load_target("cortex-m7")  # a float32 graph: 4 B per element
    # the relu is fused into conv0 and writes its buffer in place; conv1 reads it (512) and writes 4x8x8 (256)
    assert t.cost(g).peak_sram_bytes == 4 * (8 * 64 + 4 * 64)
    # priced as its int8 version (1 B each): conv1's step (768) or the conversions: quantize holds the float
    # input (4 x 192) and its int8 copy (192); dequantize the int8 output (256) and its float copy (4 x 256)
    assert t.priced_as("int8").cost(g).peak_sram_bytes == max(8 * 64 + 4 * 64, 5 * 192, 5 * 256)

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return x + self.b(self.a(x))

    g = hwopt.lift(Res().eval(), torch.randn(1, 4, 4, 4))
    # at b: x (64) live for the add, a's out (64), b's out (64) -> 192 elements
    assert t.cost(g).peak_sram_bytes == 4 * 192
    assert t.priced_as("int8").cost(g).peak_sram_bytes == max(192, 5 * 64)  # the conversions: 5 B per element


@SETTINGS
@given(nets)
def test_flash_is_sum_of_dense_weight_bytes(net):
    stages, res, _ = net
    g = make_net(stages, res, bn=False)
    for t in TARGETS + INT8_PRICED:
        c = t.cost(g)
        wb = DTYPE_BYTES[c.dtype]
        weights = sum(n.params["weight"].numel() for n in g if n.op in ("conv2d", "linear"))
        biases = sum(n.params["bias"].numel() for n in g if "bias" in n.params)
        outs = sum(n.params["weight"].shape[0] for n in g if n.op in ("conv2d", "linear"))
        assert c.flash_breakdown["weights"] == weights * wb
        expected = weights * wb + 4 * biases + (8 * outs if c.dtype == "int8" else 0)
        assert c.flash_bytes == expected
    # with batch norms folded into convs, the weight bytes are unchanged
    gbn = make_net(stages, res, bn=True)
    for t in TARGETS + INT8_PRICED:
        wb = DTYPE_BYTES[t.cost(gbn).dtype]
        assert t.cost(gbn).flash_breakdown["weights"] == sum(
            n.params["weight"].numel() for n in gbn if n.op in ("conv2d", "linear")) * wb


def test_sparse_weights_stored_compressed():
    g = hwopt.lift(nn.Sequential(nn.Conv2d(16, 32, 3)).eval(), torch.randn(1, 16, 8, 8))
    conv = next(n for n in g if n.op == "conv2d")
    dense = conv.params["weight"].numel()
    mask = torch.zeros_like(conv.params["weight"])
    mask.view(-1)[::10] = 1  # 10 % dense, gaps of 10
    node = conv.copy()
    node.params["weight_mask"] = mask
    g2 = g.copy()
    g2.replace(node)
    nnz = int(mask.sum())
    for name, wb in (("cortex-m7", 1), ("cortex-m7", 4), ("pixel-1", 4)):
        t = T.load_target(name).priced_as("int8" if wb == 1 else None)
        c = t.cost(g2)
        # 4-bit relative index: gap 10 fits in 16 -> no fillers; first entry at 0 (gap 1)
        expect = math.ceil(nnz * (8 * wb + 4) / 8)
        assert c.flash_breakdown["weights"] == expect < dense * wb
        assert c.flash_breakdown["formats"][conv.name] == "csr-rel4"
    # a gap of 40 needs fillers with 4-bit indices (16): ceil(40/16)-1 = 2 each; 8-bit has none
    nz = np.zeros(4000, bool)
    nz[np.arange(100) * 40] = True  # first entry at 0, then gaps of 40
    assert relative_index_entries(nz, 4) == 100 + 2 * 99
    assert relative_index_entries(nz, 8) == 100
    # an all-ones mask stays dense
    node = conv.copy()
    node.params["weight_mask"] = torch.ones_like(conv.params["weight"])
    g3 = g.copy()
    g3.replace(node)
    assert T.load_target("pixel-1").cost(g3).flash_breakdown["weights"] == dense * 4


def test_cost_fields_and_breakdown():
    from hwopt import models
    g = hwopt.lift(models.get("mobilenet_v2"), models.example_input("mobilenet_v2"))
    for t in TARGETS:
        c = t.cost(g)
        assert c.latency_ms > 0 and c.energy_mj > 0
        assert math.isclose(sum(c.per_node.values()), c.latency_ms, rel_tol=1e-9)
        assert math.isclose(sum(c.by_kind.values()), c.latency_ms, rel_tol=1e-9)
        assert set(c.per_node) == set(g.nodes)
        assert c.macs == g.stats()["macs"]
        assert c.params >= g.stats()["params"] - 2 * sum(n.spec.channels for n in g if n.op == "batch_norm")
    m7 = T.load_target("cortex-m7").cost(g)
    assert m7.fits == {"flash": False, "sram": False}  # MobileNetV2 at 224 fits neither on an F746
    small = hwopt.lift(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)).eval(),
                       torch.randn(1, 3, 8, 8))
    assert T.load_target("cortex-m7").cost(small).fits == {"flash": True, "sram": True}


def test_graph_is_costed_at_its_own_dtypes():
    """A float32 graph on a Cortex-M is priced with float kernels (4 B per weight and activation, the float
    MAC rate), its quantized version with int8 kernels; `priced_as("int8")` prices the float graph as int8."""
    from hwopt import models
    g = hwopt.PassManager.parse("canonicalize").run(hwopt.lift(models.mnist_cnn().eval(), torch.randn(1, 1, 28, 28)))
    calib = [(torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(i)), None) for i in range(2)]
    q = hwopt.PassManager.parse("quantize").run(g, hwopt.PassContext(data=calib))
    for name in ("cortex-m4", "cortex-m7"):
        t = T.load_target(name)
        f, i, as8 = t.cost(g), t.cost(q), t.priced_as("int8").cost(g)
        assert (f.dtype, i.dtype, as8.dtype) == ("float32", "int8", "int8")
        assert "float32 graph" in f.dtype_note and "int8 graph" in i.dtype_note and "priced as" in as8.dtype_note
        weights = sum(n.params["weight"].numel() for n in g if n.op in ("conv2d", "linear"))
        assert f.flash_breakdown["weights"] == 4 * weights and i.flash_breakdown["weights"] == weights
        assert f.flash_bytes > 3 * i.flash_bytes
        # float kernels are slower (fewer MACs per cycle) and move 4x the bytes
        assert f.latency_ms > i.latency_ms and f.peak_sram_bytes > 3 * i.peak_sram_bytes
        # the quantized graph's float input buffer is 4 B per element: above the all-int8 pricing
        assert i.peak_sram_bytes >= as8.peak_sram_bytes
        assert t.cost(g, dtype="int8").latency_ms == as8.latency_ms
        # pricing as int8 is the quantized graph's cost, its input / output conversions included
        assert (as8.flash_bytes, as8.peak_sram_bytes) == (i.flash_bytes, i.peak_sram_bytes)
        assert as8.latency_ms == pytest.approx(i.latency_ms, rel=1e-12)
        assert as8.energy_mj == pytest.approx(i.energy_mj, rel=1e-12)
    with pytest.raises(hwopt.errors.TargetError, match="float16"):
        T.load_target("cortex-m7").cost(g, dtype="float16")


def test_static_energy_is_in_target_cost_and_every_report_agrees():
    """energy_mj = dynamic + board power x latency, summed once in Target.cost; the optimize figures
    and the report carry the same numbers."""
    from hwopt.figures import graph_figures
    g = make_net([("plain", 8, 3, 1)], 16, False)
    for t in TARGETS:
        c = t.cost(g)
        assert c.static_energy_mj == pytest.approx((t.board_power_w or 0.0) * c.latency_ms)
        assert c.energy_mj == pytest.approx(c.dynamic_energy_mj + c.static_energy_mj)
        fig = graph_figures(g, t)
        assert (fig["energy_mj"], fig["dynamic_energy_mj"], fig["static_energy_mj"]) == (
            c.energy_mj, c.dynamic_energy_mj, c.static_energy_mj)
    m7 = T.load_target("cortex-m7").cost(g)
    assert m7.static_energy_mj > 10 * m7.dynamic_energy_mj  # 0.3 W board: static power dominates


def test_cost_is_cached_per_graph_state_and_target():
    """No wall-clock bound here (a shared CI core made a 0.5 s bound flaky: loading the target took 0.6 s
    once); what is checked is that a repeated call does no work and a copy is costed afresh, the same."""
    from hwopt import models
    g = hwopt.lift(models.get("resnet50"), models.example_input("resnet50"))
    t = T.load_target("cortex-a72")
    c = t.cost(g)
    assert t.cost(g) is c  # cached per graph state and target
    c2 = T.load_target("cortex-a72").cost(g.copy())  # a pass's copy: features recomputed
    assert c2 is not c and c2.latency_ms == c.latency_ms and c2.peak_sram_bytes == c.peak_sram_bytes
