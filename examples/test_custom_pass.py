"""Property-test your own pass with hwopt's hypothesis strategies.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m pytest examples/test_custom_pass.py -q

The pass below merges two consecutive idempotent activations (relu(relu(x)) == relu(x)), a rewrite that must keep the
function exactly, never modify its input, and leave a verified graph. `graphs_with_input()` draws random
CNNs with residuals, concat, depthwise/grouped convs, squeeze-excite and channel splits to check that.
"""
from dataclasses import dataclass

from hypothesis import given

import hwopt
from hwopt.testing import assert_close_outputs, fingerprint
from hwopt.testing.strategies import graphs_with_input, torch_settings

IDEMPOTENT = {"relu", "relu6", "identity"}


@hwopt.register_pass("merge-idempotent")
@dataclass(frozen=True)
class MergeIdempotent(hwopt.Pass):
    """f(f(x)) == f(x) for idempotent activations: drop the outer one."""

    def run(self, graph, ctx):
        out = None
        for node in graph:
            if node.op not in IDEMPOTENT:
                continue
            g = out if out is not None else graph
            (src,) = g[node.name].inputs
            if g[src].op == node.op:
                out = out if out is not None else graph.copy()
                out.replace_uses(node.name, src)
                out.remove(node.name)
        return graph if out is None else out


@torch_settings
@given(graphs_with_input())
def test_merge_idempotent_is_exact_and_pure(graph_and_input):
    graph, x = graph_and_input
    before = fingerprint(graph)
    out = hwopt.PassManager.parse("canonicalize,merge-idempotent").run(graph)
    assert fingerprint(graph) == before
    assert_close_outputs(graph, out, x, atol=1e-5, rtol=1e-4)
    assert not any(n.op == "relu" and out[n.inputs[0]].op == "relu" for n in out)


def test_pipeline_text_round_trips():
    pm = hwopt.PassManager.parse("fold-bn,merge-idempotent,dce")
    assert str(pm) == "fold-bn,merge-idempotent,dce"


def test_merge_fires_on_a_double_relu():
    import torch
    from torch import nn
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).eval()
    x = torch.randn(2, 1, 6, 6)
    g = hwopt.lift(m, x)
    out = hwopt.PassManager.parse("merge-idempotent").run(g)
    assert sum(n.op == "relu" for n in out) == 1
    assert_close_outputs(g, out, x)
