"""The pass toolkit: what passes share, so that a pass file holds only its own idea.

- training a graph: `train_graph` (lower -> ctx.train -> read the trained weights back), `l2_penalty`;
- figures: `figure` / `graph_figures` (hwopt.figures: one vocabulary, params counted one way) and
  `node_costs`, a resource split over the nodes that carry it (what removing channels saves);
- channel widths: `channel_multiple` (a pass's round_to against the target), `unit_channels`,
  `unit_step` (units per allowed width step), `min_units` (the narrowest a group may get), `owns_its_layers`,
  `kept_levels`,
  `group_label` (a group named by its first producer).
"""
from __future__ import annotations

import math

import torch

from .channels import ChannelGroup
from .errors import PassError
from .figures import RESOURCES, graph_figures, resource_value  # noqa: F401 - the toolkit's figures
from .ir import Graph, node_macs
from .lower import lower, read_back

__all__ = ["train_graph", "l2_penalty", "graph_figures", "resource_value", "node_costs", "channel_multiple",
           "unit_channels", "unit_step", "min_units", "owns_its_layers", "kept_levels", "group_label", "RESOURCES"]


# --- training ------------------------------------------------------------------------------------


def train_graph(graph: Graph, ctx, epochs: float, *, penalty=None, who: str = "", **train_options) -> Graph:
    """A copy of `graph` trained by `ctx.train(module, epochs=..., penalty=...)` for `epochs` (0: `graph`
    itself). Masked weights stay masked; the structure never changes, only weights."""
    if epochs <= 0:
        return graph
    if ctx.train is None:
        raise PassError(f"pass {who!r} needs train in the PassContext to train for {epochs} epochs "
                        "(or set its epochs to 0)")
    module = lower(graph)
    ctx.train(module, epochs=epochs, penalty=penalty, **train_options)
    return read_back(graph, module)


def l2_penalty(strength: float):
    """A `penalty(module) -> tensor` for ctx.train: strength/2 · Σ‖W ⊙ mask‖² over conv/linear weights
    (None for strength 0)."""
    if strength <= 0:
        return None

    def penalty(module):
        total = 0.0
        for mod in module.modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
                mask = getattr(mod, "weight_mask", None)
                total = total + ((mod.weight if mask is None else mod.weight * mask) ** 2).sum()
        return 0.5 * strength * total
    return penalty


# --- figures -------------------------------------------------------------------------------------


def node_costs(graph: Graph, resource: str, target=None) -> dict[str, float]:
    """`resource` split over the nodes whose channels carry it: latency per node (the target's model),
    MACs per conv / linear (also the proxy for energy's dynamic part), parameters (and so flash) per
    layer, and for peak SRAM the output bytes of the buffers live at the peak."""
    if resource == "latency_ms":
        return dict(target.cost(graph).per_node)
    if resource in ("macs", "energy_mj"):
        return {n.name: float(node_macs(graph, n)) for n in graph
                if n.op in ("conv2d", "linear", "conv1d", "conv_transpose2d")}
    if resource in ("params", "flash_bytes"):
        return {n.name: float(sum(t.numel() for k, t in n.params.items() if k in ("weight", "bias")))
                for n in graph if n.params}
    if resource == "peak_sram_bytes":
        return {name: float(graph[name].spec.numel) for name in _live_at_peak(graph)}
    raise PassError(f"unknown resource {resource!r}; known: {', '.join(RESOURCES)}")


def _live_at_peak(graph: Graph) -> list[str]:
    from .targets.cost import peak_sram_elems
    at = peak_sram_elems(graph)[1]["at"]
    order = graph.order()
    pos = {n: i for i, n in enumerate(order)}
    i = pos.get(at, 0)
    live = []
    for name in order[:i + 1]:
        readers = [pos[u] for u in graph.users(name)]
        if name == at or (readers and max(readers) >= i):
            live.append(name)
    return live


# --- channel widths ------------------------------------------------------------------------------


def channel_multiple(round_to, ctx, who: str = "") -> int:
    """The width multiple a pass rounds to: an int, "target" (the target's `channel_multiple`; needs a
    target) or None (the target's multiple when there is a target, else 1)."""
    if round_to == "target":
        if ctx.target is None:
            raise PassError(f"option 'round_to' of pass {who!r}: round_to=target needs ctx.target")
        return max(1, int(ctx.target.channel_multiple))
    if round_to is None:
        return max(1, int(getattr(ctx.target, "channel_multiple", 1) or 1)) if ctx.target is not None else 1
    return int(round_to)


def unit_channels(gr: ChannelGroup) -> int:
    """Channels per removable unit of `gr` (1, or more for grouped convs)."""
    key = gr.producers[0] if gr.producers else next(iter(gr.members))
    return int(gr.members[key].shape[1])


def unit_step(multiple: int, channels_per_unit: int) -> int:
    """Units per width step so that a width is a multiple of `multiple` channels."""
    return max(1, multiple // math.gcd(multiple, channels_per_unit)) if multiple > 1 else 1


def min_units(graph: Graph, gr: ChannelGroup, min_channels: int = 1) -> int:
    """The narrowest `gr` may get, in units: every tensor it spans keeps `min_channels`, the group's share
    of them in proportion to the channels it holds there (all of them where it owns the tensor, a conv's
    output; a part where other groups hold the rest, as the orbits of a ShuffleNet stage do), and 2 where a
    grouped / depthwise conv reads the group (a 1-channel depthwise conv is a plain 1->1 conv: the coupling
    analysis would split its input and output and growing them would make it dense)."""
    uc = unit_channels(gr)
    low = 1
    # the width floor is for layers (the weight rows the group removes); a tensor whose channel axis is
    # something else -- the heads of an attention's scores -- would otherwise keep every head
    for name in _layers(graph, gr):
        low = max(low, -(-min_channels * gr.size // graph[name].spec.channels))
    for name in gr.members:
        for user in graph.users(name):
            u = graph[user]
            if u.op in ("conv2d", "conv1d", "conv_transpose2d") and u.attrs["groups"] > 1 and gr.size * uc >= 2:
                low = max(low, 2)
    return low


def owns_its_layers(graph: Graph, gr: ChannelGroup) -> bool:
    """Whether every conv / linear output the group's units are rows of is the group's alone: the usual
    case (a norm after a concat, as in DenseNet, reads several groups and does not count). A ShuffleNet
    stage's chunk / concat / shuffle chain spreads each conv's output channels over several orbit groups;
    no one of them can round that conv's width."""
    return all(gr.members[n].size == graph[n].spec.channels for n in _layers(graph, gr))


_WEIGHT_LAYERS = ("conv2d", "conv1d", "conv_transpose2d", "linear")


def _layers(graph: Graph, gr: ChannelGroup) -> list[str]:
    """The conv / linear outputs the group's units are rows of; all its tensors when it has none."""
    return [n for n in gr.producers if graph[n].op in _WEIGHT_LAYERS] or list(gr.members)


def kept_levels(size: int, multiple: int, unit_channels: int = 1, min_keep: int = 1) -> list[int]:
    """Allowed kept unit counts for a group of `size` units, largest first: `size` itself, then every
    count whose channel width is a multiple of `multiple`, down to one multiple and not below `min_keep`
    (never 0)."""
    mu = unit_step(multiple, unit_channels)
    floor = mu * max(1, -(-min_keep // mu))
    levels = [size]
    k = (size - 1) // mu * mu  # largest multiple below size
    while k >= floor:
        levels.append(k)
        k -= mu
    return levels


def group_label(gr: ChannelGroup) -> str:
    """A group's name in reports: its first producer (a layer name), else its first member."""
    return gr.producers[0] if gr.producers else next(iter(gr.members))
