"""Lower an hwopt Graph to a torch module made of standard, trainable nn layers (hwopt.lowered.HwoptModule:
its forward runs the recorded calls; `.graph` gives them as a torch.fx graph).

Parametric nodes become modules at their node's name used as a module path (so an unpruned lift/lower
keeps the user's state_dict keys); the rest become calls of torch functions. The batch dimension stays
dynamic. `bake_masks=True` multiplies masks into plain layers (for export and compilers); otherwise a
masked weight lowers to hwopt.nn.MaskedConv2d / MaskedLinear so retraining keeps pruned weights at zero.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from . import quant
from .errors import IRError
from .gcpause import pauses_collector
from .ir import OPS, Graph, shared_nodes, snapshot
from .lowered import HwoptModule, Program, new_module
from .op_lowering import stateless


class _Emit:
    """What a lowering rule of the op table (hwopt.op_lowering) sees: the program being recorded (it has
    fx.Graph's emitting methods), the values of the current node's inputs, the IR graph, and whether masks
    are baked."""
    __slots__ = ("out", "graph", "bake_masks", "ins")

    def __init__(self, out: Program, graph: Graph, bake_masks: bool):
        self.out, self.graph, self.bake_masks, self.ins = out, graph, bake_masks, []


_PLAIN_PATH = re.compile(r"\w+(\.\w+)*")  # a module path that needs no sanitising (the common case)


def _prefixes(path: str) -> list[str]:
    """"a", "a.b" for "a.b.c"."""
    out, i = [], path.find(".")
    while i != -1:
        out.append(path[:i])
        i = path.find(".", i + 1)
    return out


class _Paths:
    """Unique module paths; a path may not also be a prefix of another (a leaf module has no children)."""

    def __init__(self):
        self.leaves: set[str] = set()
        self.prefixes: set[str] = set()

    def take(self, name: str) -> str:
        base = name if _PLAIN_PATH.fullmatch(name) else ".".join(re.sub(r"\W", "_", p) or "_" for p in name.split("."))
        above = _prefixes(base)
        leaf = next((p for p in above if p in self.leaves), None)
        if leaf is not None:
            # under a leaf ("a.b" taken, "a.b.act" asked): no suffix on the last part can help, so the rest
            # hangs beside the leaf instead ("a.b_act")
            base = leaf + "_" + base[len(leaf) + 1:].replace(".", "_")
            above = _prefixes(base)
        path, k = base, 1
        while self._clash(path, above):
            path, k = f"{base}_{k}", k + 1
            above = _prefixes(path)
        self.leaves.add(path)
        self.prefixes.update(above)
        return path

    def _clash(self, path: str, above: list[str]) -> bool:
        leaves = self.leaves
        return path in leaves or path in self.prefixes or any(p in leaves for p in above)


def _container() -> nn.Module:
    m = stateless(("container",), nn.Module)
    m.__dict__["training"] = False
    return m


def _install(root: nn.Module, modules: dict[str, nn.Module]) -> None:
    """Put each module at its dotted path under `root`, creating plain containers on the way: what
    nn.Module's add_module would do, without nn.Module's __getattr__ / __setattr__ at every step (~4 ms
    on MobileNetV2). The paths come from _Paths, so none is both a leaf and a prefix. Everything ends up
    in eval mode (without nn.Module.train's recursive __setattr__ walk, ~1.5 ms)."""
    for path, module in modules.items():
        parent = root
        start = 0
        while True:
            dot = path.find(".", start)
            if dot == -1:
                break
            part = path[start:dot]
            child = parent._modules.get(part)
            if child is None:
                child = parent._modules[part] = _container()
            parent, start = child, dot + 1
        parent._modules[path[start:]] = module
        if type(module).train is nn.Module.train and not module._modules:
            module.__dict__["training"] = False
        else:
            module.train(False)
    root.__dict__["training"] = False  # an HwoptModule: nn.Module's train()


@pauses_collector
def lower(graph: Graph, *, bake_masks: bool = False) -> HwoptModule:
    """A torch module computing `graph`, in eval mode. The graph is only read. A quantized graph lowers to a
    hwopt.quant.QuantizedModule computing in the device's integers (not trainable)."""
    graph.verify_once()
    if quant.is_quantized(graph):
        return quant.QuantizedModule(graph)
    out = Program()
    modules: dict[str, nn.Module] = {}
    taken = _Paths()
    paths: dict[str, str] = {}
    # nodes holding the same tensors (and attributes) -> the first of them, whose module they share
    shared = {other: names[0] for names in shared_nodes(graph) for other in names[1:]}
    env: dict[str, object] = {}
    e = _Emit(out, graph, bake_masks)
    for node in graph:
        rule = OPS[node.op].lower
        if rule is None:
            raise IRError(f"no lowering for op {node.op!r}", node.name)
        e.ins = [env[i] for i in node.inputs]
        lowered = rule(node, e)
        if isinstance(lowered, nn.Module):
            if node.name in shared:  # one module of the user's, called again
                path = paths[node.name] = paths[shared[node.name]]
            else:
                path = paths[node.name] = taken.take(node.name)
                modules[path] = lowered
            env[node.name] = out.call_module(path, tuple(e.ins))
        elif lowered is not None:
            env[node.name] = lowered
    gm = new_module(out)
    _install(gm, modules)
    gm.hwopt_module_paths = paths  # node name -> submodule path (names can need sanitising)
    return gm



def submodules(graph: Graph, module: nn.Module) -> dict[str, nn.Module]:
    """The submodule `lower(graph)` made for each parametric node of `graph`, by node name."""
    paths = getattr(module, "hwopt_module_paths", None)
    if paths is None:
        raise IRError("this module was not made by hwopt.lower (it has no hwopt_module_paths)")
    return {n.name: module.get_submodule(paths[n.name]) for n in graph if n.params}


def read_back(graph: Graph, module: nn.Module) -> Graph:
    """A copy of `graph` holding the parameters of `module` = `lower(graph)` after training it.

    Masks are kept from the graph and multiplied in, so pruned weights are exact zeros."""
    new = graph.copy()
    copies: dict[int, torch.Tensor] = {}  # a shared module's tensors are read once, so its nodes stay shared
    for name, m in submodules(graph, module).items():
        node = new[name].copy()
        params = {}
        for k, old in node.params.items():
            t = getattr(m, k, None)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(old.shape):
                raise IRError(f"lowered module has no {k!r} of shape {tuple(old.shape)}", name)
            params[k] = copies[id(t)] if id(t) in copies else copies.setdefault(id(t), snapshot(t))
        if "weight_mask" in node.params:
            params["weight_mask"] = node.params["weight_mask"]
            key = ("masked", id(params["weight"]), id(params["weight_mask"]))
            params["weight"] = copies[key] if key in copies else copies.setdefault(key, params["weight"] * params["weight_mask"])
        node.params = params
        new.replace(node)
    return new.verify()
