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
    the doc names lifts (module and functional forms), lowers exactly, prunes exactly, is costed on every
    target and gets its row in the generated op list. If adding an op ever needs one more place, this fails."""
    import numpy as np
    import torch
    from torch import nn
    from torch.nn import functional as F

    import hwopt
    from hwopt import frontend, frontend_rules, ir
    from hwopt.targets import available, cost, load_target
    from hwopt.testing import strategies
    lower_module = __import__("hwopt.lower", fromlist=["MODULES"])

    assert "hardtanh" not in OPS  # the example must stay an example
    monkeypatch.setitem(ir.OPS, "hardtanh", ir.OpDef((1, 1), ("min_val", "max_val"), channel_preserving=True))
    monkeypatch.setitem(ir.OP_DOCS, "hardtanh", "clamp(x, min_val, max_val)")
    monkeypatch.setitem(frontend_rules.MODULE_RULES, nn.Hardtanh,
                        lambda m: ("hardtanh", {"min_val": m.min_val, "max_val": m.max_val}, {}))
    monkeypatch.setitem(frontend_rules.FUNCTIONS, F.hardtanh, "hardtanh")
    monkeypatch.setitem(frontend_rules.SIGS, "hardtanh",
                        (("input", frontend_rules._REQ), ("min_val", -1.0), ("max_val", 1.0), ("inplace", False)))
    monkeypatch.setattr(frontend._Lifter, "f_hardtanh", lambda self, n, a, v: self.emit(
        n, "hardtanh", [v["input"]], {"min_val": float(v["min_val"]), "max_val": float(v["max_val"])}), raising=False)
    monkeypatch.setitem(lower_module.MODULES, "hardtanh", lambda n: nn.Hardtanh(n.attrs["min_val"], n.attrs["max_val"]))
    monkeypatch.setitem(cost.OP_WORK, "hardtanh", 2)
    monkeypatch.setattr(cost, "ELEMENTWISE", cost.ELEMENTWISE | {"hardtanh"})
    monkeypatch.setitem(strategies.ACTIVATIONS, "hardtanh", nn.Hardtanh)

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
