"""The `hwopt` command line.

Exit codes: 0 ok; 1 a user error (a bad option, model factory, input shape, target, budget or file), reported
as one line on stderr that names what is wrong; anything else is a bug in hwopt and shows its traceback.
HWOPT_TRACEBACK=1 shows the traceback of user errors too (e.g. to debug a model factory).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import sys
from pathlib import Path

from .errors import HwoptError
from .fileio import check_output_dir


class Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line (exit 1, like every user error) instead of usage text + exit 2."""

    def error(self, message: str):
        self.exit(1, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def load_factory(spec: str):
    """'package.module:factory' or 'path/to/file.py:factory' -> the callable."""
    if ":" not in spec:
        raise HwoptError(f"expected MODULE:FACTORY (e.g. hwopt.models:resnet18), got {spec!r}")
    mod_name, attr = spec.rsplit(":", 1)
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise HwoptError(f"no such file: {mod_name}")
            s = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(s)
            s.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except HwoptError:
        raise
    except ImportError as e:
        raise HwoptError(f"cannot import {mod_name!r}: {e}") from e
    except Exception as e:  # the user's module failed while being imported (SyntaxError, its own errors)
        raise HwoptError(f"importing {mod_name!r} raised {type(e).__name__}: {e}") from e
    if not hasattr(module, attr):
        raise HwoptError(f"{mod_name!r} has no attribute {attr!r}")
    factory = getattr(module, attr)
    if not callable(factory):
        raise HwoptError(f"{spec}: {attr!r} is a {type(factory).__name__}, not a callable factory")
    return factory


def build_model(spec: str):
    """Call the MODULE:FACTORY `spec` with no arguments; the torch module it returns, or a HwoptError naming it."""
    import torch
    factory = load_factory(spec)
    try:
        model = factory()
    except Exception as e:
        raise HwoptError(f"model factory {spec} raised {type(e).__name__}: {e}") from e
    if not isinstance(model, torch.nn.Module):
        raise HwoptError(f"model factory {spec} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def parse_shape(text: str, dims: int | None = None, flag: str = "--input-shape") -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(","))
    except ValueError:
        raise HwoptError(f"{flag} must be comma-separated integers like 1,3,224,224, got {text!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise HwoptError(f"{flag} must be positive integers, got {text!r}")
    if dims is not None and len(shape) != dims:
        raise HwoptError(f"{flag} must have {dims} dimensions (N,C,H,W), got {len(shape)}: {text!r}")
    return shape


def _physical_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def example_input(shape: tuple[int, ...], flag: str = "--input-shape"):
    """A random float32 tensor of `shape`, refused (before allocating) when it alone would fill a quarter of
    this machine's memory: the model's activations need several times more."""
    import torch
    nbytes = 4 * math.prod(shape)
    memory = _physical_memory_bytes()
    text = ",".join(map(str, shape))
    if nbytes > memory // 4:
        raise HwoptError(f"{flag} {text}: the input alone is {nbytes / 2**30:,.1f} GiB of float32; this machine has "
                         f"{memory / 2**30:,.1f} GiB of memory")
    try:
        return torch.randn(*shape)
    except (RuntimeError, MemoryError) as e:
        raise HwoptError(f"{flag} {text}: cannot allocate the input ({nbytes / 2**30:,.1f} GiB): {e}") from None


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
    from .frontend import lift
    model = build_model(args.model)
    shape = parse_shape(args.input_shape)
    graph = lift(model.eval(), example_input(shape))
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


def parse_budget(text: str | None) -> dict:
    if not text:
        return {}
    out = {}
    for item in text.split(","):
        if "=" not in item:
            raise HwoptError(f"--budget items must be resource=value, got {item!r}")
        k, v = (part.strip() for part in item.split("=", 1))
        if k in out:
            raise HwoptError(f"--budget gives {k!r} twice ({out[k]:g} and {v}); give each resource once")
        try:
            out[k] = float(v)
        except ValueError:
            raise HwoptError(f"--budget {k!r} must be a number, got {v!r}") from None
    return out


def cmd_targets(args) -> int:
    from .targets import available, load_target
    rows = []
    for name in available():
        t = load_target(name)
        rows.append({"name": t.name, "description": t.description, "clock_mhz": t.clock_mhz, "cores": t.cores_used,
                     "simd_bits": t.simd_bits, "channel_multiple": t.channel_multiple, "dtype": t.deploy_dtype,
                     "peak_gmacs": t.peak_macs_per_s / 1e9, "peak_gmacs_float32": t.peak_macs_per_s_at("float32") / 1e9, "sram_bytes": t.sram_bytes, "flash_bytes": t.flash_bytes,
                     "runtime": t.runtime, "calibrations": t.provenance()})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("ch-mult: layer widths the target runs at full SIMD speed are multiples of this (pruning rounds to it)")
    print("deploy: the dtype the device runs (optimize() with data= quantizes to int8 where it is int8); a graph is "
          "costed at its own dtype (a float32 graph with float kernels), GMAC/s is the peak at the deploy dtype")
    print(f"{'target':12s} {'clock':>6s} {'cores':>5s} {'SIMD':>5s} {'ch-mult':>7s} {'deploy':>7s} {'GMAC/s':>7s} "
          f"{'SRAM':>8s} {'flash':>9s}  description")
    for r in rows:
        mem = lambda b: f"{b // 1024:,}K" if b else "-"
        print(f"{r['name']:12s} {r['clock_mhz']:6.0f} {r['cores']:5d} {r['simd_bits']:5d} {r['channel_multiple']:7d} "
              f"{r['dtype']:>7s} {r['peak_gmacs']:7.2f} {mem(r['sram_bytes']):>8s} {mem(r['flash_bytes']):>9s}  {r['description']}")
    print("\nlatency tables: where each comes from and how well it predicts held-out measurements (* = default)")
    print(f"{'target':12s} {'runtime':22s} {'provenance':16s} {'samples':>7s} {'held-out |err|':>14s} {'Spearman':>8s}  test")
    for r in rows:
        for c in r["calibrations"]:
            err = f"{c['heldout_error']:.1%}" if c["heldout_error"] is not None else "-"
            rho = f"{c['rank_correlation']:.3f}" if c["rank_correlation"] is not None else "-"
            test = (f"{c['test_samples']} rows: {c['test_error']:.1%}, Spearman {c['test_rank_correlation']:.3f}"
                    if c.get("test_samples") else "-")
            rt = c["runtime"] + (" *" if c["runtime"] == r["runtime"] else "")
            print(f"{r['name']:12s} {rt:22s} {c['provenance']:16s} {c['samples']:7d} {err:>14s} {rho:>8s}  {test}")
            if c.get("foreign_cpu"):
                print(f"{'':12s}   ! {c['foreign_cpu']}")
    if any(c["runtime"] == "qemu-icount" for r in rows for c in r["calibrations"]):
        print("qemu-icount: instructions executed by hwopt's firmware in QEMU, read as cycles; not cycles on a board")
    return 0


def load_data(spec: str | None, option: str = "--data"):
    """MODULE:FACTORY whose call returns (x, y) batches (or a callable giving them)."""
    if not spec:
        return None
    factory = load_factory(spec)
    if not callable(factory):
        raise HwoptError(f"{option} {spec!r} is not callable")
    return factory()


def cmd_optimize(args) -> int:
    from .optimizer import optimize
    from .report import EXPORT_FORMATS, EXPORT_SUFFIX
    formats = [f for f in (args.export or "").split(",") if f]
    for f in formats:
        if f not in EXPORT_FORMATS:
            raise HwoptError(f"--export {f!r}: choose from {', '.join(EXPORT_FORMATS)}")
    if formats and not args.out:
        raise HwoptError(f"--export {args.export} needs --out DIR to write the model into")
    if args.out:
        check_output_dir(args.out, "--out")  # before the work, not after it
    budget = parse_budget(args.budget)
    model = build_model(args.model)
    x = example_input(parse_shape(args.input_shape))
    evaluate = load_factory(args.evaluate) if args.evaluate else None
    result = optimize(model.eval(), args.target, x, budget=budget, pipeline=args.pipeline, seed=args.seed,
                      measure=args.measure, data=load_data(args.data), evaluate=evaluate,
                      fit_device=not args.ignore_device_limits, min_channels=args.min_channels,
                      protect=tuple(p for p in (args.protect or "").split(",") if p),
                      quantize=False if args.no_quantize else None)
    if args.out:
        out = Path(args.out)
        result.write_report(out)
        for f in formats:
            result.export(out / f"model{EXPORT_SUFFIX[f]}", f)
    if args.json:
        print(json.dumps(result.report, indent=2, default=str))
    else:
        print(f"pipeline: {result.pipeline}\nwhy: {result.why}\n")
        print(result.table())
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    from .targets import load_target
    if args.train_limit < 1:
        raise HwoptError(f"--train-limit must be >= 1, got {args.train_limit}")
    if args.eval_limit is not None and args.eval_limit < 1:
        raise HwoptError(f"--eval-limit must be >= 1, got {args.eval_limit}")
    if not args.epochs > 0 or not math.isfinite(args.epochs):
        raise HwoptError(f"--epochs must be a positive number, got {args.epochs}")
    load_target(args.target)  # a bad target fails now, not after training
    check_output_dir(args.out, "--out")
    logs = []
    info = run_demo(args.target, args.out, train_limit=args.train_limit, epochs=args.epochs,
                    eval_limit=args.eval_limit, tvm_export=not args.no_tvm,
                    log=(logs.append if args.json else print))
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    return 0


def cmd_calibrate(args) -> int:
    from .targets import calibrate
    return calibrate.main(args.rest)


def cmd_search(args) -> int:
    try:
        from .passes.nas import cli as nas_cli
    except ImportError as e:
        raise HwoptError(f"the NAS search is not available: {e}") from None
    return nas_cli.main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="hwopt", description="Hardware-aware optimizer for PyTorch models on embedded targets")
    sub = p.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("inspect", help="lift a model and print its graph summary (ops, params, MACs, channel groups)")
    ins.add_argument("model", help="MODULE:FACTORY, e.g. hwopt.models:resnet18 or ./my_model.py:build")
    ins.add_argument("--input-shape", required=True, help="example input shape, e.g. 1,3,224,224")
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    ins.add_argument("--groups", type=int, default=12, help="how many channel groups to list")
    ins.add_argument("--graph", action="store_true", help="also print every node")
    ins.set_defaults(func=cmd_inspect)

    tg = sub.add_parser("targets", help="list the bundled target descriptions with their key figures")
    tg.add_argument("--json", action="store_true")
    tg.set_defaults(func=cmd_targets)

    op = sub.add_parser("optimize", help="optimize a model for a target within a budget")
    op.add_argument("model", help="MODULE:FACTORY")
    op.add_argument("--target", required=True, help="target name (see `hwopt targets`) or path to a target file")
    op.add_argument("--input-shape", required=True, help="example input shape, e.g. 1,3,224,224")
    op.add_argument("--budget", help="absolute limits, e.g. latency_ms=2.5,params=500000 (resources: latency_ms, "
                                     "peak_sram_bytes, flash_bytes, energy_mj, macs, params); the target's SRAM "
                                     "and flash are limits too unless --ignore-device-limits")
    op.add_argument("--pipeline", help="pass pipeline text; default: chosen from the target and budget")
    op.add_argument("--data", metavar="MODULE:FACTORY", help="a factory returning (x, y) training batches: "
                    "fine-tuning after pruning (default SGD trainer), Taylor and OBD importance, int8 calibration "
                    "(int8 targets are quantized by default when it is given)")
    op.add_argument("--evaluate", metavar="MODULE:FUNCTION", help="a function evaluate(module) -> accuracy in [0, 1]")
    op.add_argument("--min-channels", type=int, help="narrowest a pruned layer may get (default: the target's "
                                                     "channel multiple)")
    op.add_argument("--protect", help="comma-separated layer names or module-path prefixes never pruned")
    op.add_argument("--no-quantize", action="store_true",
                    help="keep float32 on targets that deploy int8 (by default they are quantized when --data is given)")
    op.add_argument("--ignore-device-limits", action="store_true",
                    help="report the target's SRAM / flash limits but do not enforce them")
    op.add_argument("--out", help="directory for report.md/json, plots and exports (checked before the work)")
    op.add_argument("--export", help="comma-separated formats: torch,onnx,tvm (needs --out)")
    op.add_argument("--measure", action="store_true", help="compile with TVM and time before/after (host target)")
    op.add_argument("--seed", type=int, default=0, help="seed for everything random (pruning ties, training)")
    op.add_argument("--json", action="store_true", help="print the report as JSON")
    op.set_defaults(func=cmd_optimize)

    dm = sub.add_parser("demo", help="train the MNIST CNN, optimize it for a target, report and export")
    dm.add_argument("--target", default="cortex-m7")
    dm.add_argument("--out", default="hwopt-demo")
    dm.add_argument("--train-limit", type=int, default=20000, help="MNIST training images")
    dm.add_argument("--eval-limit", type=int, default=None, help="MNIST test images (default all 10k)")
    dm.add_argument("--epochs", type=float, default=1.0)
    dm.add_argument("--no-tvm", action="store_true", help="skip the TVM library export")
    dm.add_argument("--json", action="store_true")
    dm.set_defaults(func=cmd_demo)

    for name, func, text in (("calibrate", cmd_calibrate, "fit a target's cost model to TVM measurements"),
                             ("search", cmd_search, "MnasNet-style architecture search against a target")):
        sp = sub.add_parser(name, help=text, add_help=False)
        sp.add_argument("rest", nargs=argparse.REMAINDER)
        sp.set_defaults(func=func)
    return p


PASS_THROUGH = {"calibrate": cmd_calibrate, "search": cmd_search}  # these parse their own options
SUBCOMMANDS = ("inspect", "targets", "optimize", "demo", "calibrate", "search")


def _user_error(e: BaseException) -> str | None:
    """The one-line message for an exception that is the user's to fix, None for a bug (traceback)."""
    if isinstance(e, HwoptError):
        text = str(e)
    elif isinstance(e, OSError) and e.filename is not None:  # a path the user gave: missing, denied, a directory
        text = f"{e.filename}: {e.strerror or e}"
    elif isinstance(e, MemoryError):
        text = f"out of memory ({e or 'the model or input is too large for this machine'})"
    else:
        return None
    return "; ".join(line.strip() for line in text.splitlines() if line.strip()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    try:
        if command in PASS_THROUGH:
            return PASS_THROUGH[command](argparse.Namespace(rest=argv[1:])) or 0
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra:  # argparse would report these from the top-level parser; name the subcommand instead
            raise HwoptError(f"unrecognized arguments: {' '.join(extra)} (see hwopt {args.command} --help)")
        return args.func(args) or 0
    except SystemExit as e:
        if not isinstance(e.code, str):
            raise
        # a subcommand's own SystemExit("message") (e.g. calibrate's HOST:PORT check): the same one line
        message = e.code.removeprefix(f"hwopt {command}: ").removeprefix("error: ")
        print(f"hwopt{' ' + command if command else ''}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"hwopt{' ' + command if command else ''}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        message = _user_error(e)
        if message is None or os.environ.get("HWOPT_TRACEBACK"):
            raise
        print(f"hwopt{' ' + command if command else ''}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
