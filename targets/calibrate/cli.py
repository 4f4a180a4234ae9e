"""`hwopt calibrate`: time micro-benchmarks and whole models where the target runs and fit the cost
model, or (--from-table) fit it to a table of measured models."""
from __future__ import annotations

import re

import numpy as np

from .run import RUNTIMES, calibrate
from .workloads import micro_grid, model_workloads, net_workloads, wide_grid

def _hostport(s: str | None, flag: str) -> tuple | None:
    if s is None:
        return None
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"hwopt calibrate: {flag} takes HOST:PORT, got {s!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    from hwopt.cli import Parser  # usage errors as one line, exit 1
    ap = Parser(prog="hwopt calibrate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True, help="target name or path of a target TOML file")
    ap.add_argument("--runtime", default=None,
                    help="what to time: tvm (default) or torch (eager, host only); with --from-table: the name of the "
                         "runtime the table's latencies were measured with (e.g. tflite), the [calibration.<name>] written")
    ft = ap.add_argument_group("fit to a table of measured models (no timing here)")
    ft.add_argument("--from-table", metavar="CSV", help="CSV of model, latency_ms[, input_shape, split]: see targets/README.md")
    ft.add_argument("--prior", metavar="TARGET:RUNTIME",
                    help="start from this related device's terms table (few rows: e.g. --prior cortex-a72:tflite)")
    ft.add_argument("--provenance", default="measured", choices=("measured", "published"),
                    help="measured on the device by you (default) or published measurements")
    ft.add_argument("--input-shape", help="input shape for rows without an input_shape column, e.g. 1,3,32,32")
    ft.add_argument("--make-default", action="store_true", help="make the fitted runtime the target's default")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--rpc", metavar="HOST:PORT", help="time on a TVM RPC server (e.g. a Raspberry Pi)")
    g.add_argument("--tracker", metavar="HOST:PORT", help="time on a device from a TVM RPC tracker (needs --key)")
    ap.add_argument("--key", help="device key at the RPC tracker")
    ap.add_argument("--tune", type=int, default=0, metavar="TRIALS", help="MetaSchedule trials per workload (0: default schedules)")
    ap.add_argument("--size", choices=("tiny", "small", "full", "large"), default=None,
                    help="size of the micro-benchmark grid (default: large for torch, full for tvm)")
    ap.add_argument("--form", choices=("auto", "terms", "roofline"), default="auto",
                    help="latency model form to fit (auto: both, keep the lower cross-validated error)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads to time with: torch eager intra-op threads (default 1; 0: torch's default), or TVM "
                         "runtime threads on this machine (default: one per physical core); recorded in the table")
    ap.add_argument("--passes", type=int, default=None,
                    help="time the grid this many times round robin, keeping minima (default: 3 for torch, 1 for tvm)")
    ap.add_argument("--no-models", action="store_true", help="micro-benchmarks only (no whole models)")
    ap.add_argument("--out", help="target file to write the coefficients into (default: the target's own file)")
    ap.add_argument("--cache", help="measurement cache file (default: <out>.measurements.json; for a shipped target targets/data/<name>.measurements.json)")
    ap.add_argument("--tune-only", action="store_true",
                    help="with --tune: tune every workload into the shared database and stop (no timing, no fit); "
                         "the same command without it then times and fits")
    ap.add_argument("--nets", type=int, default=0, metavar="N",
                    help="add the first N random CNNs of the calibration's own stream (NET_SEED; the large grid has 200)")
    ap.add_argument("--small-nets", type=int, default=0, metavar="N",
                    help="add the first N small random CNNs (32x32 input, widths <= 48) of the calibration's own stream "
                         "(NET_SEED; the large grid has 40): the regime of small deployable nets")
    ap.add_argument("--blocks", type=int, default=0, metavar="N",
                    help="add the first N random blocks (at most 16x16 maps) of the large grid (e.g. for a small tuned grid)")
    ap.add_argument("--dry-run", action="store_true", help="fit and report, write nothing")
    a = ap.parse_args(argv)
    if a.from_table:
        return _from_table(ap, a)
    if a.prior or a.input_shape or a.make_default:
        ap.error("--prior, --input-shape and --make-default go with --from-table")
    a.runtime = a.runtime or "tvm"
    if a.runtime not in RUNTIMES:
        ap.error(f"--runtime: choose from {', '.join(RUNTIMES)} (any name only with --from-table), got {a.runtime!r}")
    if a.tracker and not a.key:
        ap.error("--tracker needs --key")
    if a.runtime == "torch" and (a.rpc or a.tracker):
        ap.error("--runtime torch times this machine only")
    if a.tune_only and not (a.runtime == "tvm" and a.tune):
        ap.error("--tune-only needs --runtime tvm and --tune TRIALS")
    if a.runtime == "tvm" and a.threads and (a.rpc or a.tracker):
        ap.error("--threads sets TVM's threads on this machine; an RPC device runs with its own")
    for opt in ("nets", "small_nets", "blocks"):
        if getattr(a, opt) < 0:
            ap.error(f"--{opt.replace('_', '-')} must be >= 0, got {getattr(a, opt)}")
    size = a.size or ("large" if a.runtime == "torch" else "full")
    workloads = None
    if a.blocks or a.nets or a.small_nets:
        workloads = (micro_grid(size) + [w for w in wide_grid() if w.kind == "block" and w.p["hw"] <= 16][:a.blocks]
                     + (model_workloads(size) if not a.no_models else []))
        workloads += [w for w in net_workloads(a.nets) + net_workloads(a.small_nets, small=True) if w not in workloads]
    rep = calibrate(a.target, a.runtime, rpc=_hostport(a.rpc, "--rpc"), tracker=_hostport(a.tracker, "--tracker"),
                    key=a.key, tune=a.tune, out=a.out, size=size, cache=a.cache, workloads=workloads,
                    write=not a.dry_run, models=not a.no_models, form=a.form, threads=a.threads,
                    passes=a.passes or (3 if a.runtime == "torch" else 1), tune_only=a.tune_only)
    if a.tune_only:
        print(f"{rep['runtime']}: {rep['workloads']} workloads tuned (or already tuned) in {rep['seconds']:.0f} s; "
              "run the same command without --tune-only to time them and fit")
        return 0
    fe, ce = rep["fit_error"], rep["cv_error"]
    print(f"{rep['runtime']}: {len(fe)} timings in {rep['seconds']:.0f} s; fit median |err| {np.median(fe):.1%}, "
          f"within 10%: {np.mean(fe <= 0.1):.0%}, 20%: {np.mean(fe <= 0.2):.0%}"
          + (f"; held-out median |err| {np.median(ce):.1%}, within 20%: {np.mean(ce <= 0.2):.0%}" if ce is not None else ""))
    nets = np.array(['"kind": "net"' in k for k, _ in rep["measurements"]])
    if ce is not None and nets.any():
        cn = ce[nets]
        print(f"  held out, the {nets.sum()} random nets only: median |err| {np.median(cn):.1%}, "
              f"within 10%: {np.mean(cn <= 0.1):.0%}, 20%: {np.mean(cn <= 0.2):.0%}")
    print(("wrote " if not a.dry_run else "would write ") + f"[calibration.{rep['runtime']}] to {rep['out']}")
    return 0




def _from_table(ap, a) -> int:
    from hwopt.cli import parse_shape

    from .table import calibrate_from_table
    timing = [o for o in ("rpc", "tracker", "key", "tune", "size", "threads", "passes", "cache", "nets", "small_nets",
                          "blocks", "no_models", "tune_only") if getattr(a, o) not in (None, 0, False)]
    if timing:
        ap.error(f"--from-table fits measured latencies; it times nothing (drop --{timing[0].replace('_', '-')})")
    if a.form not in ("auto", "terms"):
        ap.error("--from-table fits the terms form")
    if not a.runtime:
        ap.error("--from-table needs --runtime NAME (the runtime the latencies were measured with, e.g. tflite)")
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", a.runtime) or a.runtime == "default":
        ap.error(f"--runtime {a.runtime!r}: use lowercase letters, digits, '-', '.', '_'")
    rep = calibrate_from_table(a.target, a.from_table, a.runtime, out=a.out, prior=a.prior, provenance=a.provenance,
                               input_shape=parse_shape(a.input_shape) if a.input_shape else None,
                               write=not a.dry_run, make_default=a.make_default)
    fe, ce = rep["fit_error"], rep["cv_error"]
    how = "leave-one-out" if rep["fit_rows"] <= 30 else "5-fold"
    print(f"{rep['runtime']}: {rep['fit_rows']} fit rows; fit median |err| {np.median(fe):.1%}; held out ({how}): "
          f"median |err| {np.median(ce):.1%}, within 10%: {np.mean(ce <= 0.1):.0%}, Spearman {rep['cv_rank']:.3f}")
    if rep["test_rows"]:
        te = rep["test_error"]
        print(f"  {rep['test_rows']} test rows (never fit): median |err| {np.median(te):.1%}, "
              f"within 10%: {np.mean(te <= 0.1):.0%}, Spearman {rep['test_rank']:.3f}")
    print(("wrote " if not a.dry_run else "would write ") + f"[calibration.{rep['runtime']}] to {rep['out']}")
    return 0
