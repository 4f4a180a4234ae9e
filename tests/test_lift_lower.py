"""Lift/lower is exact; bad models and inputs give errors that name what and where."""
import copy

import pytest
import torch
from hypothesis import given, settings
from torch import nn

import hwopt
from hwopt import models
from hwopt.lower import read_back
from hwopt.testing import assert_close_outputs, fingerprint
from hwopt.testing.strategies import modules

SMALL_INPUT = {name: (shape if shape[-1] <= 32 else (*shape[:2], 64, 64)) for name, (_, shape) in models.MODELS.items()}


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_reference_models_round_trip_exactly(name):
    m = models.get(name).eval()
    x = torch.randn(2, *SMALL_INPUT[name][1:])
    before = copy.deepcopy(m.state_dict())
    g = hwopt.lift(m, x)
    assert_close_outputs(m, hwopt.lower(g), x, atol=1e-5, rtol=0)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items()), "lift mutated the model"
    # a lowered module lifts again to the same graph
    g2 = hwopt.lift(hwopt.lower(g), x)
    assert [n.op for n in g] == [n.op for n in g2]
    assert g.stats()["params"] == g2.stats()["params"] == sum(p.numel() for p in m.parameters())


def test_graph_model_and_lowered_module_do_not_share_writes():
    """Lift, lower and read_back copy tensors (copy-on-write): training either side never reaches the other."""
    m = models.get("lenet5")
    x = torch.randn(8, 1, 28, 28)
    g = hwopt.lift(m, x)
    fp = fingerprint(g)
    user_before = copy.deepcopy(m.state_dict())
    low = hwopt.lower(g)
    for module in (m, low):  # one SGD step on the user's model, then on the lowered module
        opt = torch.optim.SGD(module.parameters(), lr=1.0)
        module.train()
        module(x).square().sum().backward()
        opt.step()
    assert fingerprint(g) == fp, "training the user's model or the lowered module changed the graph"
    assert not all(torch.equal(user_before[k], v) for k, v in m.state_dict().items())  # the step did change m
    back = read_back(g, low)
    snap = {n.name: {k: t.clone() for k, t in n.params.items()} for n in back}
    with torch.no_grad():
        for p in low.parameters():
            p.add_(1.0)
    assert all(torch.equal(back[n].params[k], t) for n, ps in snap.items() for k, t in ps.items()), \
        "read_back aliases the module it read"
    # lowered modules of one graph are independent
    a, b = hwopt.lower(g), hwopt.lower(g)
    with torch.no_grad():
        next(a.parameters()).mul_(0)
    assert next(b.parameters()).abs().sum() > 0


def test_resnet50_round_trip_at_224():
    m = models.get("resnet50").eval()
    x = models.example_input("resnet50")
    assert_close_outputs(m, hwopt.lower(hwopt.lift(m, x)), x, atol=1e-5, rtol=0)


@settings(max_examples=200)
@given(modules())
def test_drawn_modules_round_trip_exactly(mx):
    m, x = mx
    assert_close_outputs(m, hwopt.lower(hwopt.lift(m, x)), x, atol=1e-5, rtol=0)


def test_lowered_module_batch_is_dynamic_and_state_dict_keys_kept():
    m = models.get("mnist_cnn").eval()
    lowered = hwopt.lower(hwopt.lift(m, torch.randn(1, 1, 28, 28)))
    x = torch.randn(5, 1, 28, 28)
    assert_close_outputs(m, lowered, x)
    assert set(lowered.state_dict()) == set(m.state_dict())


def test_lift_does_not_change_training_mode():
    m = models.get("mnist_cnn").train()
    hwopt.lift(m, torch.randn(2, 1, 28, 28))
    assert m.training


def test_masks_survive_lift_and_lower():
    m = nn.Sequential(hwopt.nn.MaskedConv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), hwopt.nn.MaskedLinear(4 * 6 * 6, 3)).eval()
    with torch.no_grad():
        m[0].weight_mask.bernoulli_(0.5)
        m[3].weight_mask.bernoulli_(0.5)
    x = torch.randn(2, 1, 8, 8)
    g = hwopt.lift(m, x)
    assert torch.equal(g["0"].params["weight_mask"], m[0].weight_mask)
    assert g.stats()["nonzero_params"] < g.stats()["params"]
    assert_close_outputs(m, hwopt.lower(g), x)
    assert_close_outputs(m, hwopt.lower(g, bake_masks=True), x)
    assert isinstance(hwopt.lower(g).get_submodule("0"), hwopt.nn.MaskedConv2d)


# --- bad input -------------------------------------------------------------------------------------

class _Sorts(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3))
        self.inner = _SortInner()

    def forward(self, x):
        return self.inner(self.body(x))


class _SortInner(nn.Module):
    def forward(self, x):
        return torch.sort(x, dim=1).values


def test_unsupported_function_names_op_and_module_path():
    with pytest.raises(hwopt.UnsupportedOpError) as e:
        hwopt.lift(_Sorts(), torch.randn(1, 3, 8, 8))
    assert "sort" in str(e.value) and "'inner'" in str(e.value)
    assert e.value.module_path == "inner"


def test_unsupported_module_names_type_and_path():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.PixelShuffle(2)))
    with pytest.raises(hwopt.UnsupportedOpError, match=r"PixelShuffle.*'1\.0'"):
        hwopt.lift(m, torch.randn(1, 3, 8, 8))


def test_data_dependent_control_flow_is_a_clear_error():
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x
    with pytest.raises(hwopt.UnsupportedOpError, match="control flow"):
        hwopt.lift(Branchy(), torch.randn(1, 3, 4, 4))


def test_inplace_on_shared_tensor_is_refused():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.relu = nn.Conv2d(3, 3, 1), nn.ReLU(inplace=True)

        def forward(self, x):
            y = self.conv(x)
            return self.relu(y) + y
    with pytest.raises(hwopt.UnsupportedOpError, match="in-place"):
        hwopt.lift(Shared(), torch.randn(1, 3, 4, 4))


@pytest.mark.parametrize("shape, match", [
    ((1, 3, 28, 28), r"conv2d expects input \[N, 1, H, W\]"),  # wrong channels
    ((1, 1, 16, 16), r"linear expects input \[N, 800\]"),  # wrong spatial size reaches the classifier
    ((784,), "batch dimension"),
])
def test_wrong_example_input_shape(shape, match):
    with pytest.raises(hwopt.ShapeError, match=match):
        hwopt.lift(models.get("lenet5"), torch.randn(*shape))


def test_wrong_number_of_example_inputs():
    with pytest.raises(hwopt.ShapeError, match="takes 1 input"):
        hwopt.lift(models.get("lenet5"), (torch.randn(1, 1, 28, 28), torch.randn(1, 1, 28, 28)))


def test_lower_leaves_graph_untouched():
    g = hwopt.lift(models.get("mnist_cnn"), torch.randn(1, 1, 28, 28))
    fp = fingerprint(g)
    m = hwopt.lower(g)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    assert fingerprint(g) == fp


def test_module_paths_under_a_taken_leaf_hang_beside_it():
    # a node named like a child of another node's module ("a.b" then "a.b.act") cannot be its child (a
    # leaf module has no children) nor be fixed by suffixing its last part: it is placed beside the leaf
    from hwopt.lower import _Paths

    paths = _Paths()
    assert paths.take("a.b") == "a.b"
    assert paths.take("a.b.act") == "a.b_act"
    assert paths.take("a.b.act") == "a.b_act_1"
    assert paths.take("a.b.c.d") == "a.b_c_d"
    assert paths.take("a") == "a_1"  # "a" is a container of the leaves above
    assert paths.take("x.y-z") == "x.y_z"
