"""hwopt's NAS-Bench-201 network: cell strings, which edges run, and the network itself."""
from __future__ import annotations

import pytest
import torch

import hwopt
from hwopt.nasbench201 import NasBench201Error, canonical, computes_constant, live_edges, nasbench201, parse

CELL = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


def test_parse_reads_six_edges():
    e = parse(CELL)
    assert e == [("nor_conv_3x3", 0, 1), ("nor_conv_3x3", 0, 2), ("avg_pool_3x3", 1, 2),
                 ("skip_connect", 0, 3), ("nor_conv_3x3", 1, 3), ("skip_connect", 2, 3)]


@pytest.mark.parametrize("bad,what", [
    ("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|", "bad edge 'conv~0'"),
    ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "bad edge 'none~1'"),
    ("|none~0|+|none~0|+|none~0|none~1|none~2|", "node 2 must have 2 inputs"),
    ("|none~0|+|none~0|none~1|", "expected 3 nodes"),
])
def test_bad_cells_are_named(bad, what):
    with pytest.raises(NasBench201Error, match=what.replace("|", r"\|")):
        nasbench201(bad)


def test_dead_end_edges_are_dropped_zero_nodes_are_not():
    # node 2 feeds node 3 only through `none`: its edges never reach the output
    a = "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|none~2|"
    assert live_edges(a) == [("nor_conv_3x3", 0, 1), ("skip_connect", 0, 3), ("nor_conv_3x3", 1, 3)]
    # node 1 receives only `none` (zeros): the conv reading it still runs (the measurements say so)
    z = "|none~0|+|skip_connect~0|none~1|+|none~0|nor_conv_3x3~1|skip_connect~2|"
    assert ("nor_conv_3x3", 1, 3) in live_edges(z)
    # two cells differing only in dead-end edges are the same network
    b = "|nor_conv_3x3~0|+|skip_connect~0|none~1|+|skip_connect~0|nor_conv_3x3~1|none~2|"
    assert canonical(a) == canonical(b) != canonical(CELL)


def test_constant_cell_is_refused():
    a = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|none~0|none~1|none~2|"
    assert computes_constant(a) and live_edges(a) == [] and canonical(a) == ""
    with pytest.raises(NasBench201Error, match="constant"):
        nasbench201(a)


@pytest.mark.parametrize("cell", [CELL, "|none~0|+|skip_connect~0|none~1|+|none~0|nor_conv_3x3~1|skip_connect~2|",
                                  "|avg_pool_3x3~0|+|nor_conv_1x1~0|none~1|+|nor_conv_3x3~0|none~1|none~2|"])
def test_network_lifts_exactly(cell):
    m = nasbench201(cell)
    x = torch.randn(1, 3, 32, 32)
    g = hwopt.lift(m, x)
    with torch.no_grad():
        assert m(x).shape == (1, 10)
        torch.testing.assert_close(hwopt.lower(g)(x), m(x), rtol=1e-4, atol=1e-5)


def test_skeleton_sizes():
    """Stem 3->16, 15 cells at 16/32/64, two reduction blocks, head 64->10: counted from the paper's text."""
    g = hwopt.lift(nasbench201("|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|"),
                   torch.randn(1, 3, 32, 32))
    convs = [n for n in g if n.op == "conv2d"]
    # stem + 2 x (conv_a, conv_b, shortcut 1x1); the cells are all skips
    assert sorted((n.attrs["in_channels"], n.attrs["out_channels"], n.attrs["stride"][0] if isinstance(
        n.attrs["stride"], (tuple, list)) else n.attrs["stride"]) for n in convs) == sorted([
        (3, 16, 1), (16, 32, 2), (32, 32, 1), (16, 32, 1), (32, 64, 2), (64, 64, 1), (32, 64, 1)])
    assert sum(n.params["weight"].numel() for n in convs) == 3 * 16 * 9 + 16 * 32 * 9 + 32 * 32 * 9 + 16 * 32 \
        + 32 * 64 * 9 + 64 * 64 * 9 + 32 * 64


def _cells(n: int, seed: int) -> list[str]:
    import random
    from hwopt.nasbench201 import OPS
    rng, out = random.Random(seed), []
    while len(out) < n:
        a = "+".join("|" + "|".join(f"{rng.choice(OPS)}~{i}" for i in range(j)) + "|" for j in (1, 2, 3))
        if live_edges(a):
            out.append(a)
    return out


@pytest.mark.parametrize("cell", [CELL, "|none~0|+|skip_connect~0|none~1|+|none~0|nor_conv_3x3~1|skip_connect~2|",
                                  "|none~0|+|none~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|skip_connect~2|",
                                  "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|none~2|",
                                  *_cells(6, 0)])
def test_graph_built_from_the_cell_is_the_lifted_graph(cell):
    """nasbench201_graph (no module, no tracing) builds node for node what lift traces: names, ops,
    inputs, attributes, shapes, sources, parameter shapes; hence the same cost on every target."""
    import hwopt.targets as T
    from hwopt.nasbench201 import nasbench201_graph
    lifted = hwopt.lift(nasbench201(cell), torch.randn(1, 3, 32, 32))
    built = nasbench201_graph(cell)
    assert list(built.nodes) == list(lifted.nodes) and built.order() == lifted.order()
    for name in lifted.nodes:
        a, b = lifted[name], built[name]
        assert (b.op, b.inputs, b.attrs, b.spec, b.source) == (a.op, a.inputs, a.attrs, a.spec, a.source), name
        assert {k: tuple(v.shape) for k, v in b.params.items()} == {k: tuple(v.shape) for k, v in a.params.items()}, name
    for name in ("cortex-a72", "pixel-3"):
        t = T.load_target(name)
        assert t.cost(built).latency_ms == t.cost(lifted).latency_ms
        assert t.cost(built).flash_bytes == t.cost(lifted).flash_bytes


def test_graph_of_a_constant_cell_is_refused():
    from hwopt.nasbench201 import nasbench201_graph
    with pytest.raises(NasBench201Error, match="constant"):
        nasbench201_graph("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|none~0|none~1|none~2|")


def test_program_runs_dead_convs_whose_zero_multiply_folds_into_them():
    """The deployed program (module docstring): `conv(x) * 0` folds into a conv with no other use, which
    keeps running; `x * 0` of anything else is a constant zero and what only reaches it is dead."""
    from hwopt.nasbench201 import program
    # node 1 = conv(x) is used only by `none` edges: node 2 = conv * 0 is a conv too, and node 3 keeps both
    steps, out = program("|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|")
    assert [op for _, op, _ in steps] == ["nor_conv_3x3", "mul0", "mul0", "mul0", "add"]
    # the same cell with a skip into node 1: nothing but the skip is left
    assert program("|skip_connect~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|") == ([], "x")
    # node 2 = conv(x) + conv(x) is a sum, not a conv: times 0 it is a zero constant, all dead
    assert program("|nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|skip_connect~0|none~1|none~2|") == ([], "x")
    # an op reading a node whose every term is zero reads a zero tensor and runs
    steps, out = program("|none~0|+|skip_connect~0|none~1|+|none~0|nor_conv_3x3~1|skip_connect~2|")
    assert [op for _, op, _ in steps] == ["zero", "nor_conv_3x3", "add"]
    assert canonical("|none~0|+|skip_connect~0|none~1|+|none~0|nor_conv_3x3~1|skip_connect~2|") != \
        canonical("|none~0|+|skip_connect~0|none~1|+|none~0|skip_connect~1|skip_connect~2|")


def test_ceiling_is_the_best_one_prediction_can_do():
    """bench/device_fidelity.py's ±10 % ceiling per group of identical networks: the most rows one
    prediction puts within ±10 %, checked against trying every candidate prediction on a fine grid."""
    import importlib.util
    from pathlib import Path

    import numpy as np
    path = Path(__file__).resolve().parents[1] / "bench" / "device_fidelity.py"
    spec = importlib.util.spec_from_file_location("device_fidelity", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(0)
    for _ in range(200):
        y = rng.lognormal(1.0, rng.uniform(0.01, 0.4), rng.integers(1, 9))
        grid = np.concatenate([0.9 * y, 1.1 * y, np.linspace(0.8 * y.min(), 1.2 * y.max(), 2000)])
        brute = max(int(np.sum(np.abs(p / y - 1) <= 0.1 + 1e-12)) for p in grid)
        assert mod.best_share_within(y) == brute
        n, p = mod.best_prediction(y)  # the prediction it names reaches that count
        assert n == brute and int(np.sum(np.abs(p / y - 1) <= 0.1 + 1e-12)) == brute
    assert mod.best_share_within(np.array([10.0, 12.2, 30.0])) == 2   # 11 is within 10 % of both 10 and 12.2
