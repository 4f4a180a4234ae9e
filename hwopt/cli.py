"""The `hwopt` command line. Exit codes: 0 ok, 1 hwopt error (bad model, target, budget...), 2 usage."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path

from .errors import HwoptError


def load_factory(spec: str):
    """'package.module:factory' or 'path/to/file.py:factory' -> the callable."""
    if ":" not in spec:
        raise HwoptError(f"expected MODULE:FACTORY (e.g. hwopt.models:resnet18), got {spec!r}")
    mod_name, attr = spec.rsplit(":", 1)
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        if not path.is_file():
            raise HwoptError(f"no such file: {mod_name}")
        s = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(s)
        s.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(mod_name)
        except ImportError as e:
            raise HwoptError(f"cannot import {mod_name!r}: {e}") from None
    if not hasattr(module, attr):
        raise HwoptError(f"{mod_name!r} has no attribute {attr!r}")
    return getattr(module, attr)


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(","))
    except ValueError:
        raise HwoptError(f"--input-shape must be comma-separated integers like 1,3,224,224, got {text!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise HwoptError(f"--input-shape must be positive integers, got {text!r}")
    return shape


def inspect_summary(graph) -> dict:
    from .channels import channel_groups
    s = graph.stats()
    groups = channel_groups(graph)
    return {
        "nodes": s["nodes"], "params": s["params"], "nonzero_params": s["nonzero_params"], "macs": s["macs"],
        "ops": dict(sorted(s["ops"].items())),
        "inputs": {n.name: list(n.spec.shape) for n in graph.inputs},
        "output": list(graph.output.spec.shape),
        "channel_groups": [{"id": g.id, "units": g.size, "prunable": g.prunable, "producers": g.producers,
                            "consumers": g.consumers} for g in groups],
    }


def cmd_inspect(args) -> int:
    import torch

    from .frontend import lift
    factory = load_factory(args.model)
    model = factory()
    shape = parse_shape(args.input_shape)
    graph = lift(model.eval(), torch.randn(*shape))
    info = inspect_summary(graph)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.model}  input {list(shape)} -> output {info['output']}")
    print(f"  nodes {info['nodes']}   params {info['params']:,}   MACs {info['macs']:,}")
    print("  ops: " + ", ".join(f"{k}×{v}" for k, v in info["ops"].items()))
    prunable = [g for g in info["channel_groups"] if g["prunable"]]
    print(f"  channel groups: {len(info['channel_groups'])} ({len(prunable)} prunable, "
          f"{sum(g['units'] for g in prunable):,} prunable units)")
    for g in info["channel_groups"][: args.groups]:
        kind = "prunable" if g["prunable"] else "pinned  "
        producers = ", ".join(g["producers"][:4]) + (" …" if len(g["producers"]) > 4 else "")
        print(f"    #{g['id']:<3} {kind} {g['units']:>5} units  producers: {producers or '-'}")
    if len(info["channel_groups"]) > args.groups:
        print(f"    … {len(info['channel_groups']) - args.groups} more (--groups N to show more)")
    if args.graph:
        print(graph.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hwopt", description="Hardware-aware optimizer for PyTorch models on embedded targets")
    sub = p.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("inspect", help="lift a model and print its graph summary (ops, params, MACs, channel groups)")
    ins.add_argument("model", help="MODULE:FACTORY, e.g. hwopt.models:resnet18 or ./my_model.py:build")
    ins.add_argument("--input-shape", required=True, help="example input shape, e.g. 1,3,224,224")
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    ins.add_argument("--groups", type=int, default=12, help="how many channel groups to list")
    ins.add_argument("--graph", action="store_true", help="also print every node")
    ins.set_defaults(func=cmd_inspect)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except HwoptError as e:
        print(f"hwopt {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
