"""hwopt.models: every reference model builds, runs, traces with torch.fx, and has the published size."""

import inspect
import operator

import pytest
import torch
import torch.fx
from torch import nn

from hwopt import models

# Published parameter counts at 1000 classes (torchvision model cards / the papers). mnasnet_a1 is
# checked against the paper's 3.9M for MnasNet-A1 (Tan et al. 2019, Table 1); ours has 3.887M.
PUBLISHED_PARAMS = {
    "resnet18": 11.69e6, "resnet50": 25.56e6, "resnext50_32x4d": 25.03e6, "mobilenet_v2": 3.50e6,
    "mobilenet_v3_small": 2.54e6, "mobilenet_v3_large": 5.48e6, "efficientnet_b0": 5.29e6,
    "mnasnet_a1": 3.9e6,
}

# Anything outside the lift front end's closed op set must not appear in a model.
ALLOWED_MODULES = (
    nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d, nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid,
    nn.Sigmoid, nn.SiLU, nn.Tanh, nn.Identity, nn.Dropout, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d, nn.Flatten, nn.ChannelShuffle)

ALLOWED_FUNCTIONS = {operator.add, operator.mul, torch.cat, torch.flatten, operator.getitem}


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", list(models.MODELS))
def test_build_run_trace(name):
    torch.manual_seed(0)
    model = models.get(name).eval()
    x = models.example_input(name, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x)
    num_classes = inspect.signature(models.MODELS[name][0]).parameters["num_classes"].default
    assert y.shape == (1, num_classes)
    assert torch.isfinite(y).all() and y.std() > 1e-3  # random-init outputs must not be degenerate

    gm = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert (gm(x) - y).abs().max().item() <= 1e-5

    for node in gm.graph.nodes:  # functional ops: the closed set the lift front end handles
        if node.op == "call_function":
            assert node.target in ALLOWED_FUNCTIONS, f"{name}: {node.target}"
            if node.target is torch.cat:
                assert node.kwargs == {"dim": 1} or node.args[1:] == (1,), f"{name}: cat must be on channels"
            if node.target is torch.flatten:
                assert node.args[1:] == (1,), f"{name}: flatten must keep the batch dim"
            if node.target is operator.getitem:  # only to unpack x.chunk(2, dim=1)
                assert node.args[0].op == "call_method" and node.args[0].target == "chunk"
        elif node.op == "call_method":
            assert node.target == "chunk" and node.args[1:] == (2,) and node.kwargs == {"dim": 1}, name

    for m in model.modules():
        assert not getattr(m, "inplace", False), f"{name}: in-place {type(m).__name__}"
        if not list(m.children()):  # leaves only; containers are ours or nn.Sequential
            assert isinstance(m, ALLOWED_MODULES), f"{name}: {type(m).__name__} is outside the op set"


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMS))
def test_param_count(name):
    n = _n_params(models.get(name))
    assert abs(n - PUBLISHED_PARAMS[name]) / PUBLISHED_PARAMS[name] <= 0.02, f"{name}: {n:,}"


def test_small_model_exact_sizes():
    # Han et al. 2015, Table 1/2 sizes for the classic pruning baselines.
    assert _n_params(models.lenet_300_100()) == 266_610
    assert _n_params(models.lenet5()) == 431_080


def test_factory_kwargs():
    assert models.get("resnet18", num_classes=10, in_channels=1)(torch.randn(1, 1, 64, 64)).shape == (1, 10)
    assert models.get("mnist_cnn", width=0.5)[0][0].out_channels == 8
    # width/depth multipliers keep channels multiples of 8
    for m in (models.mobilenet_v2(width_mult=0.35), models.mnasnet_a1(depth_multiplier=0.5)):
        assert all(c.out_channels % 8 == 0 for c in m.modules() if isinstance(c, nn.Conv2d) and c.groups > 1)
    assert _n_params(models.mnasnet_a1(depth_multiplier=0.5)) < _n_params(models.mnasnet_a1())
    dn = models.densenet_tiny(num_classes=7, growth_rate=8, block_layers=(2, 2))
    assert dn(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_example_input_and_registry_errors():
    assert models.example_input("resnet18", batch=3).shape == (3, 3, 224, 224)
    assert models.example_input("lenet5").shape == (1, 1, 28, 28)
    assert models.example_input("densenet_tiny").shape == (1, 3, 32, 32)
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert torch.equal(models.example_input("lenet5", generator=g()), models.example_input("lenet5", generator=g()))
    with pytest.raises(KeyError, match="resnet18"):
        models.get("no_such_net")
    with pytest.raises(KeyError, match="mobilenet_v2"):
        models.example_input("no_such_net")


def test_build_is_rng_neutral_beyond_init():
    # BN calibration uses its own generator: same seed -> identical weights and BN stats.
    torch.manual_seed(0)
    a = models.mnist_cnn().state_dict()
    torch.manual_seed(0)
    b = models.mnist_cnn().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.allclose(a["0.1.running_var"], torch.ones_like(a["0.1.running_var"]))  # calibrated
