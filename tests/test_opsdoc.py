"""docs/ops.md is generated from the op table: it must match what `python -m hwopt.opsdoc` prints."""
from pathlib import Path

from hwopt.ir import OP_DOCS, OPS
from hwopt.opsdoc import markdown

DOC = Path(__file__).resolve().parent.parent / "docs" / "ops.md"


def test_ops_doc_is_generated_from_the_table():
    assert DOC.read_text(encoding="utf-8") == markdown(), "regenerate: python -m hwopt.opsdoc > docs/ops.md"


def test_every_op_is_documented_and_listed():
    assert set(OP_DOCS) == set(OPS)
    text = markdown()
    assert all(f"| `{op}` |" in text for op in OPS)


def test_the_worked_example_adds_an_op(monkeypatch):
    """docs/ARCHITECTURE.md "How to add an op", done at run time: hardtanh registered in exactly the places
    the doc names (its OPS entry, and the front end's recognition) lifts (module and functional forms),
    lowers exactly, prunes exactly, folds dead units, is costed on every target and gets its row in the
    generated op list. If adding an op ever needs one more place, this fails."""
    import numpy as np
    import torch
    from torch import nn
    from torch.nn import functional as F

    import hwopt
    from hwopt import frontend, frontend_rules, ir, op_lowering
    from hwopt.targets import available, cost, load_target

    assert "hardtanh" not in OPS  # the example must stay an example
    # 1. the op: one entry (semantics, coupling, lowering, cost, dead-unit folding)
    monkeypatch.setitem(ir.OPS, "hardtanh", ir.OpDef(
        (1, 1), ("min_val", "max_val"), channel_preserving=True, doc="clamp(x, min_val, max_val)",
        lower=op_lowering.module(lambda n: nn.Hardtanh(n.attrs["min_val"], n.attrs["max_val"])),
        cost="elementwise", work=2, constant=lambda a, v: v.clamp(a["min_val"], a["max_val"])))
    # 2. how the front end recognises it (the front end's own tables: hwopt/frontend_rules.py, frontend.py)
    monkeypatch.setitem(frontend_rules.MODULE_RULES, nn.Hardtanh,
                        lambda m: ("hardtanh", {"min_val": m.min_val, "max_val": m.max_val}, {}))
    monkeypatch.setitem(frontend_rules.FUNCTIONS, F.hardtanh, "hardtanh")
    monkeypatch.setitem(frontend_rules.SIGS, "hardtanh",
                        (("input", frontend_rules._REQ), ("min_val", -1.0), ("max_val", 1.0), ("inplace", False)))
    monkeypatch.setattr(frontend._Lifter, "f_hardtanh", lambda self, n, a, v: self.emit(
        n, "hardtanh", [v["input"]], {"min_val": float(v["min_val"]), "max_val": float(v["max_val"])}), raising=False)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.bn, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardtanh(-0.5, 2.0)
            self.c2, self.fc = nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 10)

        def forward(self, x):
            x = F.hardtanh(self.c2(self.act(self.bn(self.c1(x)))), -1.0, 0.5)
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    m, x = Net().eval(), torch.randn(2, 3, 16, 16)
    g = hwopt.lift(m, x)
    assert [n.op for n in g].count("hardtanh") == 2
    torch.testing.assert_close(hwopt.lower(g)(x), m(x), rtol=0, atol=0)
    groups = hwopt.channel_groups(g)
    gr = next(gr for gr in groups if gr.prunable and "act" in gr.members)
    zeroed = g.copy()  # zero unit 0 everywhere it is written, then remove it: the function must not change
    c1 = zeroed["c1"].copy()
    c1.params = {k: v.clone() for k, v in c1.params.items()}
    c1.params["weight"][gr.members["c1"][0]] = 0
    c1.params["bias"][gr.members["c1"][0]] = 0
    zeroed.replace(c1)
    bn = zeroed["bn"].copy()
    bn.params = {k: v.clone() for k, v in bn.params.items()}
    bn.params["bias"][gr.members["bn"][0]] = 0
    bn.params["running_mean"][gr.members["bn"][0]] = 0
    zeroed.replace(bn)
    pruned = hwopt.remove_channels(zeroed, {gr.id: np.array([0])})
    torch.testing.assert_close(hwopt.lower(pruned)(x), hwopt.lower(zeroed)(x), rtol=1e-5, atol=1e-6)
    for name in available():  # costed (an op the cost model does not know raises), as a kernel fused into c1
        assert load_target(name).cost(g).latency_ms > 0
    f = cost.features(g)
    assert f.kind[f.names.index("act")] == cost.KIND_INDEX["fused"] and f.work[f.names.index("act")] == 2 * g["act"].spec.numel
    row = next(line for line in markdown().splitlines() if line.startswith("| `hardtanh` |"))
    assert "`F.hardtanh`, `nn.Hardtanh`" in row and "channel i ↔ channel i" in row and "elementwise (2 ops/element)" in row
    assert "dead-unit folding" in row
    assert "hardtanh" in cost.ELEMENTWISE and cost.OP_WORK["hardtanh"] == 2  # the cost model reads the entry


def test_an_op_with_parameters_is_one_entry(monkeypatch):
    """An op with a parameter, a removal rule and a module of its own (a per-channel scale, y = x · s[c]),
    added as one OPS entry and built by hand: it lowers exactly, its channels couple through it (to the
    conv before and after), and removing channels resizes its parameter exactly."""
    import numpy as np
    import torch
    from torch import nn

    import hwopt
    from hwopt import ir, op_channels, op_lowering

    class Scale(nn.Module):
        def __init__(self, s):
            super().__init__()
            self.s = nn.Parameter(s.clone())

        def forward(self, x):
            return x * self.s.reshape(1, -1, 1, 1)

    def resize(m, n, keep_in, keep_out, removed_in, graph):
        if keep_out is not None:
            m.params = {"s": ir.selected(n.params["s"], 0, keep_out)}
            m.attrs = {**n.attrs, "channels": len(keep_out)}

    assert "toy_scale" not in OPS
    monkeypatch.setitem(ir.OPS, "toy_scale", ir.OpDef(
        (1, 1), ("channels",), params=lambda a: {"s": (a["channels"],)}, required_params=("s",), channel_preserving=True,
        nchw=True, doc="x · s[c]", couple=op_channels.nchw(op_channels.same), resize=resize,
        lower=op_lowering.module(lambda n: Scale(n.params["s"])), cost="elementwise", work=1))

    torch.manual_seed(0)
    g = ir.Graph()
    g.add("x", "input", spec=ir.TensorSpec((2, 3, 8, 8)))
    conv = dict(kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    g.add("c1", "conv2d", ["x"], dict(in_channels=3, out_channels=6, **conv),
          {"weight": torch.randn(6, 3, 3, 3), "bias": torch.randn(6)})
    scale = torch.tensor([1.0, 0.0, 2.0, 0.0, -1.0, 0.5])  # channels 1 and 3 scaled to zero: dead
    g.add("s", "toy_scale", ["c1"], {"channels": 6}, {"s": scale})
    g.add("c2", "conv2d", ["s"], dict(in_channels=6, out_channels=4, **conv), {"weight": torch.randn(4, 6, 3, 3)})
    g.add("out", "output", ["c2"])
    g.verify()
    x = torch.randn(2, 3, 8, 8)
    c1 = nn.functional.conv2d(x, g["c1"].params["weight"], g["c1"].params["bias"], padding=1)
    want = nn.functional.conv2d(c1 * scale.reshape(1, -1, 1, 1), g["c2"].params["weight"], padding=1)
    torch.testing.assert_close(hwopt.lower(g)(x), want)
    gr = next(gr for gr in hwopt.channel_groups(g) if "s" in gr.members)
    assert gr.prunable and set(gr.members) == {"c1", "s"} and gr.size == 6
    pruned = hwopt.remove_channels(g, {gr.id: np.array([1, 3])})
    assert pruned["s"].attrs["channels"] == 4 and pruned["c2"].params["weight"].shape[1] == 4
    torch.testing.assert_close(hwopt.lower(pruned)(x), want, rtol=1e-5, atol=1e-5)
