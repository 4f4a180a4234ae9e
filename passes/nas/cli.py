"""`hwopt search`: neural architecture search (MnasNet space, REINFORCE controller) from the command line.

    hwopt search --target cortex-a72 --samples 40 --executor ray --workers 2 --plot pareto.png
    hwopt search --target cortex-m7 --input-shape 1,1,28,28 --classes 10 --reward hard --checkpoint s.jsonl

Without user callbacks the built-in proxy trainer scores children, so the input must be MNIST-shaped
(1x1x28x28, 10 classes); a killed search resumes from --checkpoint.

--save writes the best model as a file that loads without running pickled code:
    FILE.pt2 (torch.export):  torch.export.load("FILE.pt2").module()
    any other name (a state dict, e.g. FILE.pt):
        from hwopt.passes.nas import SearchSpace
        module = hwopt.lower(SearchSpace(**out["space"]).graph(out["search"]["best_tokens"]))
        module.load_state_dict(torch.load("FILE.pt", weights_only=True))
where `out` is the JSON this command prints. Both are written atomically.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="cortex-a72", help="target name or .toml path")
    p.add_argument("--input-shape", default="1,1,28,28", help="N,C,H,W of the input")
    p.add_argument("--classes", type=int, default=10, help="output classes of the searched networks")
    p.add_argument("--strategy", choices=("reinforce", "random", "evolution"), default="reinforce",
                   help="REINFORCE controller (MnasNet), random search, or regularized evolution")
    p.add_argument("--samples", type=int, default=32, help="children proposed (duplicates are not retrained)")
    p.add_argument("--children", type=int, default=None,
                   help="stop after this many distinct children were trained (--samples then caps the proposals)")
    p.add_argument("--batch", type=int, default=4, help="children sampled per controller update")
    p.add_argument("--blocks", type=int, default=7, help="blocks of the factorized hierarchical space")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier of the space's channel counts")
    p.add_argument("--head", type=int, default=1280, help="channels of the last 1x1 conv before the classifier")
    p.add_argument("--reward", choices=("soft", "hard"), default="soft",
                   help="MnasNet reward ACC*(LAT/T)^w: w=-0.07 on both sides of T (soft), or w=0 at or under T and -1 above (hard)")
    p.add_argument("--target-ms", type=float, default=None, help="T in the reward (default: the MobileNetV2-style member's latency)")
    p.add_argument("--latency", choices=("model", "tvm"), default="model",
                   help="latency from the target's cost model, or compiled with TVM and timed on this host")
    p.add_argument("--proxy-steps", type=int, default=48, help="training steps of the proxy that scores each child")
    p.add_argument("--executor", choices=("serial", "process", "ray"), default="serial",
                   help="where children train: in this process, a process pool, or Ray")
    p.add_argument("--workers", type=int, default=2, help="parallel workers for --executor process/ray")
    p.add_argument("--checkpoint", default=None, help="JSONL file every trained child is appended to; resumes a killed search")
    p.add_argument("--baselines", default="", help="comma-separated: random,evolution")
    p.add_argument("--plot", default=None, help="Pareto plot PNG")
    p.add_argument("--save", default=None, help="save the best model: FILE.pt2 (torch.export program) or any other name "
                                                "(state dict, loads with torch.load(weights_only=True)); see above")
    p.add_argument("--seed", type=int, default=0, help="seed of the controller and the proxy training")
    p.add_argument("--checkpoint-dir", default=None, help="directory for the default checkpoint and plot")
    p.add_argument("--workdir", dest="workdir", default=None, help=argparse.SUPPRESS)  # old name of --checkpoint-dir
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_args(args) -> tuple[int, int, int, int]:
    """Everything the command line can get wrong, checked before any work: the (N, C, H, W) input shape."""
    from hwopt.cli import parse_shape
    from hwopt.errors import HwoptError
    from hwopt.fileio import check_output_file

    shape = parse_shape(args.input_shape, dims=4)
    if args.classes < 2:
        raise HwoptError(f"--classes must be >= 2, got {args.classes}")
    for flag in ("save", "plot", "checkpoint"):
        if getattr(args, flag):
            check_output_file(getattr(args, flag), f"--{flag}")
    if args.checkpoint:
        from .checkpoint import read_checkpoint
        read_checkpoint(args.checkpoint)  # a file that is not a checkpoint is refused now, untouched
    if args.workdir:
        if args.checkpoint_dir:
            raise HwoptError("give --checkpoint-dir only (--workdir is its old name)")
        print("hwopt search: --workdir is deprecated, use --checkpoint-dir", file=sys.stderr)
        args.checkpoint_dir = args.workdir
    if args.checkpoint_dir and Path(args.checkpoint_dir).exists() and not Path(args.checkpoint_dir).is_dir():
        raise HwoptError(f"--checkpoint-dir {args.checkpoint_dir}: exists and is not a directory")
    return shape


def save_model(module, example, path: str) -> None:
    """The best model at `path`, atomically: a torch.export program (.pt2) or a state dict (anything else)."""
    import torch

    from hwopt.fileio import atomic_output

    module = module.eval()
    with atomic_output(path) as tmp:
        if Path(path).suffix == ".pt2":
            torch.export.save(torch.export.export(module, (example,)), tmp)
        else:
            torch.save(module.state_dict(), tmp)


def run(args) -> int:
    import torch

    import hwopt
    from hwopt.passmanager import PassContext, make_pass
    from hwopt.targets import load_target

    shape = check_args(args)
    n, c, h, w = shape
    target = load_target(args.target)
    # The pass reads only the input shape and the class count from its input graph.
    stub = torch.nn.Sequential(torch.nn.Conv2d(c, 1, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(1, args.classes))
    graph = hwopt.lift(stub, torch.zeros(shape))
    nas = make_pass("nas", strategy=args.strategy, samples=args.samples, children=args.children, batch=args.batch, blocks=args.blocks,
                    width=args.width, head=args.head, reward=args.reward, target_ms=args.target_ms,
                    latency=args.latency, proxy_steps=args.proxy_steps, executor=args.executor,
                    workers=args.workers, checkpoint=args.checkpoint, plot=args.plot,
                    baselines=tuple(b for b in args.baselines.split(",") if b))
    ctx = PassContext(target=target, seed=args.seed, progress=not args.no_progress,
                      checkpoint_dir=args.checkpoint_dir)
    best = nas.run(graph, ctx)
    rec = next(r for r in ctx.records if r.get("pass") == "nas.search")
    if args.save:
        save_model(hwopt.lower(best), torch.zeros(shape), args.save)
    print(json.dumps({"pipeline": str(nas), "space": rec["space"], "search": {**rec["search"], "best_tokens": rec["best"]["tokens"]},
                      "baseline": {k: rec["baseline"][k] for k in ("arch", "accuracy", "latency_ms", "reward")}
                      if rec["baseline"] else None,
                      "baselines": rec["baselines"], "pareto": rec["pareto"], "plot": rec["plot"],
                      "saved": args.save}, indent=2, default=str))
    return 0


def main(argv=None) -> int:
    from hwopt.cli import Parser
    p = Parser(prog="hwopt search", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
