"""The model zoo, measured: per model, does hwopt lift it exactly, prune it, and what does it cost -- beside
Torch-Pruning's outcome on the same model.

    OMP_WAIT_POLICY=PASSIVE python bench/zoo.py              # every model in hwopt.testing.zoo (117)
    OMP_WAIT_POLICY=PASSIVE python bench/zoo.py --smoke      # the fast subset
    OMP_WAIT_POLICY=PASSIVE python bench/zoo.py --only convnext,vit --no-tp
    # in chunks, then the whole table from the saved rows (rows already in the file are not measured again):
    OMP_WAIT_POLICY=PASSIVE python bench/zoo.py --results /tmp/zoo.json --only timm/mobilenet
    OMP_WAIT_POLICY=PASSIVE python bench/zoo.py --results /tmp/zoo.json

Per model: `lift` (lower(lift(m)) equals m, relative error <= 1e-4), `prune` (ChannelPrune(criterion="l1",
ratio=0.3, round_to=1) gives a smaller verified model that runs), the predicted cortex-a72 latency
before/after, and Torch-Pruning's outcome on the same model and input when it is installed (a bench-only
tool: `pip install --no-deps torch-pruning==1.6.1`). Torch-Pruning is asked for the same thing: L1
magnitude, per-layer (not global) ratio 0.3, the layers producing the logits kept, one step; its outcome
is "pruned" when the pruned model runs with a finite output of the original shape and fewer parameters,
else the exception class (first line of its message in the summary), or "timeout"/"memory" when it used
more than --tp-timeout s of CPU time (60 by default; it takes 0.1-7 s on the CNNs here) or --tp-memory MB (see bench/zoo_tp.py: it runs in a worker process,
restarted after a stop, so the sweep's time and memory stay bounded). Ends with the counts and the
failures grouped by cause. Needs the zoo extra (timm, torchvision); without it says so and exits 0.
Torch-Pruning gets no per-model hints (e.g. the num_heads map its docs ask for on ViTs): the same call on
every model, as hwopt gets none.

Measured 2026-12-01 (2 cores shared by 6 sessions, all under nice -n 15; rows in
bench/results/zoo/sweep-2026-12-01.json, table in .txt beside it), in two parallel chunks (34.5 and 48.8 min
wall), then the 8 Torch-Pruning rows the 240 s wall backstop had stopped measured again (2 parallel runs of
4, 52 min), then merged:
    S="vit,deit,levit,efficientformer,edgenext,hybrid,convnext"
    nice -n 15 python bench/zoo.py --only timm/ --exclude $S --results c1.json
    nice -n 15 python bench/zoo.py --only torchvision/,$S --results c2.json
    nice -n 15 python bench/zoo.py --results r1.json --merge c1.json,c2.json --retry-tp timeout --tp-wall 1200 \
        --only efficientnet_cc_b0_4e,timm/rexnet_100,mobilenetv4_hybrid_medium,efficientformerv2_s0   # r2: the other 4
    python bench/zoo.py --results sweep.json --merge c1.json,c2.json,r1.json,r2.json
  117 models: hwopt lifts 117/117 exactly (100 %), prunes 117/117 of those (100 %)
  Torch-Pruning 1.6.1 prunes 91/117 (78 %); both prune 91, only hwopt 26, only Torch-Pruning 0
  Torch-Pruning's failures: 9 timeout (8 at 60 s of CPU time, swin_t at the 240 s wall backstop), 8 IndexError,
  7 RuntimeError (in the pruned model's forward: MixNet's split sizes, ViT/DeiT/MobileViT head reshapes),
  2 ZeroDivisionError (ShuffleNetV2).
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys
import time
from dataclasses import asdict

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from hwopt.fileio import atomic_write  # noqa: E402
from hwopt.testing import zoo  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zoo_tp  # noqa: E402


def _outcome_from_dict(d: dict) -> zoo.Outcome:
    d = dict(d)
    d["params"], d["latency_ms"] = tuple(d["params"]), tuple(d["latency_ms"])
    d["unsupported"] = [tuple(u) for u in d["unsupported"]]
    return zoo.Outcome(**d)


class Results:
    """Rows measured in this run and, with --results FILE, in earlier runs of the same settings: a chunked
    sweep (--only ...) fills the file, and a run over all names prints the whole table."""

    def __init__(self, path: str | None, settings: dict, merge: list[str] = ()):
        self.path, self.settings, self.rows = path, settings, {}
        for source in [p for p in [*merge, path] if p]:  # the written file's rows win over merged ones
            if not os.path.exists(source):
                if source != path:
                    raise SystemExit(f"bench/zoo.py: --merge {source}: no such file")
                continue
            with open(source) as fh:
                saved = json.load(fh)
            if saved.get("settings") != settings:
                raise SystemExit(f"bench/zoo.py: {source} holds rows measured with {saved.get('settings')}, "
                                 f"not {settings}: name another file")
            for name, row in saved["rows"].items():  # a later file's row wins, unless it says less
                if not self._says_less(row, self.rows.get(name)):
                    self.rows[name] = row

    def _says_less(self, row: dict, than: dict | None) -> bool:
        """A Torch-Pruning stop by the wall-time backstop says less than a conclusive outcome (e.g. parallel
        retry chunks each carry the other's models as they were before the retry)."""
        if than is None or not than.get("tp") or not row.get("tp"):
            return than is not None and bool(than.get("tp")) and not row.get("tp")
        timeout = self.settings["tp_timeout"]
        return (zoo_tp.TPOutcome.from_dict(row["tp"]).stopped_by_wall(timeout)
                and not zoo_tp.TPOutcome.from_dict(than["tp"]).stopped_by_wall(timeout))

    def get(self, name: str):
        """(hwopt's outcome, its seconds, Torch-Pruning's outcome or None) saved for `name`, or None."""
        row = self.rows.get(name)
        if row is None:
            return None
        tp = zoo_tp.TPOutcome.from_dict(row["tp"]) if row.get("tp") else None
        return _outcome_from_dict(row["hwopt"]), row["hwopt_seconds"], tp

    def put(self, name: str, o: zoo.Outcome, seconds: float, tp: zoo_tp.TPOutcome | None) -> None:
        self.rows[name] = {"hwopt": asdict(o), "hwopt_seconds": seconds, "tp": tp.to_dict() if tp else None}
        self.save()

    def save(self) -> None:
        if self.path:
            atomic_write(self.path, json.dumps({"settings": self.settings, "rows": self.rows}, indent=1))


def _select(args) -> list[str]:
    names = list(zoo.FAST) if args.smoke else zoo.all_names()
    if args.only:
        keys = [k for k in args.only.split(",") if k]
        names = [n for n in names if any(k in n for k in keys)]
    if args.exclude:
        drop = [k for k in args.exclude.split(",") if k]
        names = [n for n in names if not any(k in n for k in drop)]
    return names


def _print_row(name: str, o: zoo.Outcome, tpo: zoo_tp.TPOutcome | None) -> None:
    params = f"{o.params[0]:,}->{o.params[1]:,}" if o.params[0] else ""
    lat = f"{o.latency_ms[0]:.2f}->{o.latency_ms[1]:.2f}" if o.pruned else ""
    tp_cell = f"{tpo.result[:16]:>16s} {tpo.seconds:6.2f}" if tpo else f"{'':16s} {'':6s}"
    tp_cell = tp_cell.replace("   nan", "     -")
    print(f"{name:42s} {'yes' if o.exact else 'NO':>5s} {o.rel_error:8.1e} {o.lift_seconds:6.3f} "
          f"{'yes' if o.pruned else ('-' if not o.exact else 'NO'):>5s} {params:>19s} {lat:>15s} {tp_cell}  "
          f"{(o.error_type + ': ' + o.error) if o.error else ''}", flush=True)


def _summary(rows, tp_version: str | None, wall: float, measured: int) -> None:
    n = len(rows)
    lifted = sum(o.exact for _, o, _, _ in rows)
    pruned = sum(o.pruned for _, o, _, _ in rows)
    hw_s = sum(s for _, _, s, _ in rows)
    print(f"\n{n} models ({measured} measured in this run's {wall:.0f} s; hwopt's checks took {hw_s:.0f} s in all): "
          f"hwopt lifts {lifted}/{n} exactly ({100 * lifted / max(n, 1):.0f} %), prunes {pruned}/{lifted} of "
          f"those ({100 * pruned / max(lifted, 1):.0f} %), {pruned}/{n} of all ({100 * pruned / max(n, 1):.0f} %)")
    tps = [(name, o, t) for name, o, _, t in rows if t is not None]
    if tps:
        tp_ok = sum(t.pruned for _, _, t in tps)
        finished = [t for _, _, t in tps if t.result not in ("timeout", "memory", "crashed")]
        tp_s = sum(t.seconds for t in finished if not math.isnan(t.seconds))
        both = sum(t.pruned and o.pruned for _, o, t in tps)
        print(f"Torch-Pruning {tp_version or ''} prunes {tp_ok}/{len(tps)} ({100 * tp_ok / len(tps):.0f} %) in "
              f"{tp_s:.0f} s of its own time on the {len(finished)} it finished; both prune {both}, only hwopt "
              f"{sum(o.pruned and not t.pruned for _, o, t in tps)}, only Torch-Pruning "
              f"{sum(t.pruned and not o.pruned for _, o, t in tps)}")
    causes = collections.Counter(f"{o.error_type}: {o.error[:110]}" for _, o, _, _ in rows if o.error)
    if causes:
        print("\nhwopt failures by error:")
        for cause, k in causes.most_common():
            print(f"  {k:3d}  {cause}")
    unclear = [name for name, o, _, _ in rows
               if o.error and o.error_type not in ("UnsupportedOpError", "ShapeError")]
    if unclear:
        print(f"\nnot a clear UnsupportedOpError/ShapeError: {', '.join(unclear)}")
    tp_fail = collections.defaultdict(list)
    for name, _, t in tps:
        if not t.pruned:
            tp_fail[t.result].append((name, t.detail))
    if tp_fail:
        print("\nTorch-Pruning failures by cause:")
        for cause, items in sorted(tp_fail.items(), key=lambda kv: -len(kv[1])):
            print(f"  {len(items):3d}  {cause}: {', '.join(n for n, _ in items)}")
            for detail, k in collections.Counter(d[:120] for _, d in items if d).most_common(3):
                print(f"         {k:3d}x {detail}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="only the fast subset")
    ap.add_argument("--only", default="", help="comma-separated substrings of model names")
    ap.add_argument("--exclude", default="", help="comma-separated substrings of model names to leave out")
    ap.add_argument("--no-tp", action="store_true", help="skip Torch-Pruning even when installed")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--results", default=None,
                    help="JSON file of rows: rows already there (same settings) are reused, new ones added")
    ap.add_argument("--merge", default="",
                    help="comma-separated --results files of other runs (e.g. parallel chunks) whose rows are reused")
    ap.add_argument("--tp-timeout", type=float, default=60.0,
                    help="CPU seconds Torch-Pruning gets per model before it is stopped (default 60)")
    ap.add_argument("--tp-wall", type=float, default=None,
                    help="wall seconds after which Torch-Pruning is stopped even below --tp-timeout of CPU time "
                         "(a starved machine; default 4x --tp-timeout; its rows say both times)")
    ap.add_argument("--retry-tp", default="",
                    help="comma-separated Torch-Pruning outcomes (e.g. timeout) whose saved rows are measured again")
    ap.add_argument("--tp-memory", type=float, default=4096.0,
                    help="MB of resident memory Torch-Pruning gets per model before it is stopped (default 4096)")
    args = ap.parse_args()
    if not zoo.available():
        print("bench/zoo.py: timm and torchvision are not installed (pip install -e '.[zoo]'); nothing to measure")
        return 0
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    names = _select(args)
    installed = zoo_tp.version()
    tp_version = None if args.no_tp else installed
    if not args.no_tp and installed is None:
        print("(Torch-Pruning not installed: its column is empty)")
    settings = {"ratio": args.ratio, "size": args.size, "torch_pruning": installed,
                "tp_timeout": args.tp_timeout, "tp_memory": args.tp_memory}
    results = Results(args.results, settings, [m for m in args.merge.split(",") if m])
    rows, measured, t_start = [], 0, time.perf_counter()
    print(f"{'model':42s} {'lift':>5s} {'rel.err':>8s} {'lift s':>6s} {'prune':>5s} {'params':>19s} "
          f"{'a72 ms':>15s} {'torch-pruning':>16s} {'tp s':>6s}  error")
    retry = {r for r in args.retry_tp.split(",") if r}
    with zoo_tp.TorchPruningColumn(timeout=args.tp_timeout, memory_mb=args.tp_memory, wall=args.tp_wall) as column:
        for name in names:
            saved, tpo = results.get(name), None
            if saved is None:
                t0 = time.perf_counter()
                o = zoo.check(name, ratio=args.ratio, size=args.size)
                seconds = time.perf_counter() - t0
            else:
                o, seconds, tpo = saved
                tpo = None if tpo is not None and tpo.result in retry else tpo
            if tp_version and tpo is None:
                tpo = column.outcome(name, args.ratio, args.size)
            if saved is None or saved[2] is not tpo:
                results.put(name, o, seconds, tpo)
                measured += 1
            rows.append((name, o, seconds, tpo if not args.no_tp else None))
            _print_row(name, o, rows[-1][3])
    results.save()  # with --merge: the merged rows, in one file
    _summary(rows, tp_version, time.perf_counter() - t_start, measured)
    return 0


if __name__ == "__main__":
    sys.exit(main())
