"""hwopt.firmware: the memory plan, and firmware built with arm-none-eabi-gcc and run in QEMU (Cortex-M4/M7)
whose outputs match lower(graph)."""
import numpy as np
import pytest
import torch
from torch import nn

import hwopt
from hwopt import models
from hwopt.firmware import FirmwareError, export_firmware, plan, toolchain_missing
from hwopt.targets import cost as _cost

NEEDS_TOOLCHAIN = pytest.mark.skipif(toolchain_missing() is not None,
                                     reason=f"firmware toolchain: {toolchain_missing()}")


class _Residual(nn.Module):
    """Residual add fused into a conv with the other operand computed after it, a concat, an avg pool."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.c = nn.Conv2d(16, 8, 3, stride=2, padding=1, groups=8)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        y = torch.relu(self.bn(self.a(x)) + self.b(x))
        z = torch.cat([y, torch.sigmoid(y)], 1)
        return self.fc(torch.flatten(self.pool(self.c(z)), 1))


class _SqueezeExcite(nn.Module):
    """A depthwise conv scaled per channel by a squeeze-and-excite gate (a broadcast mul), as MobileNetV3."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.reduce, self.expand = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = nn.functional.hardswish(self.dw(torch.relu(self.a(x))))
        gate = torch.sigmoid(self.expand(torch.relu(self.reduce(y.mean((2, 3), keepdim=True)))))
        return self.fc((y * gate).mean((2, 3)))


class _DataMovement(nn.Module):
    """TF "same" padding (an explicit F.pad before a strided conv), GhostNet's channel slice,
    ShuffleNet's channel shuffle, a leaky ReLU (CSPNet) and a difference of two tensors (FastViT)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, stride=2)
        self.b = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(6 * 8 * 8, 5)

    def forward(self, x):
        y = nn.functional.leaky_relu(self.a(nn.functional.pad(x, (0, 1, 0, 1))), 0.1)
        y = nn.functional.channel_shuffle(torch.cat([y, self.b(y) - y], 1), 4)[:, :6]
        return self.fc(torch.flatten(y, 1))


def _graph(model, shape, seed=0):
    torch.manual_seed(seed)
    model = model.eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return hwopt.lift(model, torch.randn(shape))


CASES = {"mnist_cnn": (models.mnist_cnn, (1, 1, 28, 28)), "ds_cnn": (models.ds_cnn, (1, 1, 49, 10)),
         "residual": (_Residual, (1, 3, 16, 16)), "squeeze_excite": (_SqueezeExcite, (1, 3, 12, 12)),
         "data_movement": (_DataMovement, (1, 3, 16, 16))}


@pytest.mark.parametrize("name", sorted(CASES))
def test_arena_layout_is_valid_and_equals_predicted_peak(name):
    factory, shape = CASES[name]
    g = _graph(factory(), shape)
    p = plan(g)
    bufs = list(p.buffers.values())
    for i, a in enumerate(bufs):  # buffers alive at the same time never overlap
        for b in bufs[i + 1:]:
            if a.first <= b.last and b.first <= a.last:
                assert a.offset + a.nbytes <= b.offset or b.offset + b.nbytes <= a.offset, (a, b)
    assert p.arena_bytes >= p.peak_live_bytes
    predicted = _cost.peak_sram_elems(g)[0] * 4
    assert p.peak_live_bytes == predicted
    assert p.arena_bytes <= 1.05 * predicted


def test_non_cortex_m_target_is_refused(tmp_path):
    g = _graph(models.mnist_cnn(), (1, 1, 28, 28))
    with pytest.raises(FirmwareError, match="Cortex-M4/M7"):
        export_firmware(g, hwopt.load_target("cortex-a72"), tmp_path)


def test_op_without_kernel_names_node(tmp_path):
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveMaxPool2d(2), nn.Flatten(), nn.Linear(16, 2))
    g = _graph(m, (1, 1, 8, 8))
    with pytest.raises(FirmwareError, match="adaptive_max_pool2d"):
        export_firmware(g, hwopt.load_target("cortex-m4"), tmp_path, build=False)


BOTH_BOARDS = [(name, t) for name in ("mnist_cnn", "ds_cnn") for t in ("cortex-m4", "cortex-m7")]


@NEEDS_TOOLCHAIN
@pytest.mark.parametrize("name,target", BOTH_BOARDS + [("residual", "cortex-m7"), ("squeeze_excite", "cortex-m7"),
                                                    ("data_movement", "cortex-m4")])
def test_float32_firmware_in_qemu_matches_lower(name, target, tmp_path):
    factory, shape = CASES[name]
    g = _graph(factory(), shape)
    tgt = hwopt.load_target(target)
    fw = export_firmware(g, tgt, tmp_path / "fw")
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    run = fw.run(x)
    with torch.no_grad():
        ref = hwopt.lower(g)(x).numpy()
    assert np.abs(run.outputs[0] - ref).max() <= 1e-5
    assert len(run.kernel_ticks) == len(fw.plan.kernels) and run.total_ticks >= sum(run.kernel_ticks) > 0
    # the ELF holds exactly the predicted weights and the arena; both fit the target
    assert fw.sizes["arena_bytes"] == fw.plan.arena_bytes
    assert fw.sizes["weights_bytes"] == _cost.flash(g, "float32")["total"]
    assert fw.sizes["flash_bytes"] <= tgt.flash_bytes and fw.sizes["ram_bytes"] <= tgt.sram_bytes
    for f in ("Makefile", "link.ld", "model.c", "weights.c", "kernels.o", "README.md"):
        assert (tmp_path / "fw" / f).exists()


@NEEDS_TOOLCHAIN
@pytest.mark.parametrize("name,target", BOTH_BOARDS + [("residual", "cortex-m7"), ("squeeze_excite", "cortex-m4"),
                                                    ("data_movement", "cortex-m7")])
def test_int8_firmware_in_qemu_is_bit_exact_with_lower(name, target, tmp_path):
    """int8 add (residual), concat and a sigmoid lookup table included (the "residual" case); a broadcast
    int8 mul by a squeeze-and-excite gate (the "squeeze_excite" case); pad, slice, channel shuffle, leaky
    ReLU and sub ("data_movement")."""
    factory, shape = CASES[name]
    g = _graph(factory(), shape)
    gen = torch.Generator().manual_seed(5)
    calib = [(torch.randn((16,) + shape[1:], generator=gen), None) for _ in range(2)]
    qg = hwopt.PassManager.parse("quantize").run(g, hwopt.PassContext(data=calib))
    tgt = hwopt.load_target(target)
    fw = export_firmware(qg, tgt, tmp_path / "fw")
    x = torch.randn((3,) + shape[1:], generator=torch.Generator().manual_seed(7))  # 3 samples, one QEMU session
    run = fw.run(x)
    with torch.no_grad():
        ref = hwopt.lower(qg)(x).numpy()
    assert run.outputs[0].shape == ref.shape and np.array_equal(run.outputs[0], ref)
    cost = tgt.cost(qg)
    assert fw.sizes["weights_bytes"] == cost.flash_bytes
    assert fw.sizes["arena_bytes"] == fw.plan.arena_bytes <= 1.05 * cost.peak_sram_bytes
