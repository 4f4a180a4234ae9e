"""Lifting while tracing: shape questions (`x.ndim`, `x.shape`, `x.size(d)`, `len(x)`) are answered by the
IR's shape rules on the ops lifted so far, without running the model; and every way that speculation can
go wrong (an unsafe in-place write seen only once the graph is complete, an unsupported op, inputs that
do not fit) gives the same result as lifting after tracing."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import hwopt
from hwopt.testing import assert_close_outputs


class Asking(nn.Module):
    """timm-style: every layer checks its input's rank and reads its shape before computing."""

    def __init__(self, ask: bool = True):
        super().__init__()
        self.ask = ask
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)

    def forward(self, x):
        x = self.conv(x)
        if self.ask:
            assert x.ndim == 4 and x.dim() == 4 and len(x) == x.shape[0]
            h, w = x.size(-2), x.size()[3]
            x = F.pad(x, (0, w % 2, 0, h % 2))
        x = F.relu(self.bn(x))
        x = self.conv2(x)
        n = x.numel() // x.shape[0] if self.ask else 8 * 4 * 4
        return x.reshape(x.shape[0] if self.ask else -1, n)


def _forward_calls(model: nn.Module) -> list[str]:
    calls: list[str] = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
            m.register_forward_hook(lambda mod, args, out, name=name: calls.append(name))
    return calls


def test_shape_questions_are_answered_without_running_the_model():
    torch.manual_seed(0)
    model = Asking().eval()
    calls = _forward_calls(model)
    x = torch.randn(2, 3, 9, 9)
    g = hwopt.lift(model, x)
    assert calls == []  # no layer ran: the IR's shape rules answered every question
    assert_close_outputs(model, hwopt.lower(g), x)


class InplaceOnShared(nn.Module):
    """The in-place relu_ writes a tensor that a later op also reads: only the finished graph shows it."""

    def __init__(self, ask: bool):
        super().__init__()
        self.ask = ask
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        if self.ask:
            assert y.ndim == 4
        z = F.relu(y, inplace=True)
        if self.ask:
            assert z.ndim == 4
        return self.conv2(z) + y


@pytest.mark.parametrize("ask", [False, True])
def test_unsafe_inplace_write_found_after_tracing_is_refused_as_without_speculation(ask):
    with pytest.raises(hwopt.UnsupportedOpError, match="in-place") as e:
        hwopt.lift(InplaceOnShared(ask).eval(), torch.randn(1, 3, 6, 6))
    with pytest.raises(hwopt.UnsupportedOpError) as plain:
        hwopt.lift(InplaceOnShared(False).eval(), torch.randn(1, 3, 6, 6))
    assert str(e.value) == str(plain.value)


class Unsupported(nn.Module):
    def __init__(self, ask: bool):
        super().__init__()
        self.ask = ask
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = torch.cumsum(self.conv(x), 1)
        if self.ask:
            assert y.ndim == 4
        return torch.flip(y, (2,)).flatten(1)


def test_unsupported_ops_are_all_reported_as_without_speculation():
    with pytest.raises(hwopt.UnsupportedOpError) as asked:
        hwopt.lift(Unsupported(True).eval(), torch.randn(1, 3, 6, 6))
    with pytest.raises(hwopt.UnsupportedOpError) as plain:
        hwopt.lift(Unsupported(False).eval(), torch.randn(1, 3, 6, 6))
    assert "cumsum" in str(asked.value) and "flip" in str(asked.value)
    assert str(asked.value) == str(plain.value)


def test_inputs_that_do_not_fit_are_a_shape_error_naming_the_module():
    with pytest.raises(hwopt.ShapeError, match="conv"):
        hwopt.lift(Asking().eval(), torch.randn(1, 4, 9, 9))


@pytest.mark.parametrize("where", ["bn.weight", "conv2.weight"])
def test_parameters_holding_nan_or_inf_are_refused_naming_the_node(where):
    model = Asking().eval()
    model.conv2 = nn.Conv2d(8, 1000, 3, stride=2, padding=1)  # 72,000 weights: checked alone, not batched
    with torch.no_grad():
        model.get_parameter(where).view(-1)[-1] = float("nan") if where.startswith("bn") else float("inf")
    with pytest.raises(hwopt.IRError, match=f"{where.split('.')[0]}.*holds NaN or inf"):
        hwopt.lift(model, torch.randn(1, 3, 9, 9))
