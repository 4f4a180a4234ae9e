"""The model zoo, measured: per model, does hwopt lift it exactly, prune it, and what does it cost.

    OMP_WAIT_POLICY=PASSIVE python bench/zoo.py              # every model in hwopt.testing.zoo (~120)
    OMP_WAIT_POLICY=PASSIVE python bench/zoo.py --smoke      # the fast subset
    OMP_WAIT_POLICY=PASSIVE python bench/zoo.py --only convnext,vit --no-tp

Per model: `lift` (lower(lift(m)) equals m, relative error <= 1e-4), `prune` (channel-prune ratio=0.3 gives a
smaller verified model that runs), the predicted cortex-a72 latency before/after, and Torch-Pruning
1.6.1's outcome on the same model (MagnitudePruner, same ratio, classifier kept) when it is installed
(a bench-only tool: `pip install --no-deps torch-pruning==1.6.1`). Ends with the counts and the failures
grouped by error. Needs the zoo extra (timm, torchvision); without it says so and exits 0.
"""
from __future__ import annotations

import argparse
import collections
import copy
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from hwopt.testing import zoo  # noqa: E402


def torch_pruning_outcome(tp, name: str, ratio: float, size: int) -> str:
    model, x = zoo.build(name, size)
    model = copy.deepcopy(model)
    before = sum(p.numel() for p in model.parameters())
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]
    try:
        pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                           pruning_ratio=ratio, ignored_layers=heads, global_pruning=False)
        pruner.step()
        with torch.no_grad():
            y = model(x)
        y = y[0] if isinstance(y, (tuple, list)) else y
        after = sum(p.numel() for p in model.parameters())
        if not bool(torch.isfinite(y).all()):
            return "nonfinite"
        return "pruned" if after < before else "unchanged"
    except Exception as e:  # noqa: BLE001 - a peer's failure is a result here
        return f"error:{type(e).__name__}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="only the fast subset")
    ap.add_argument("--only", default="", help="comma-separated substrings of model names")
    ap.add_argument("--exclude", default="", help="comma-separated substrings of model names to leave out")
    ap.add_argument("--no-tp", action="store_true", help="skip Torch-Pruning even when installed")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--size", type=int, default=96)
    args = ap.parse_args()
    if not zoo.available():
        print("bench/zoo.py: timm and torchvision are not installed (pip install -e '.[zoo]'); nothing to measure")
        return 0
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    names = list(zoo.FAST) if args.smoke else zoo.all_names()
    if args.only:
        keys = [k for k in args.only.split(",") if k]
        names = [n for n in names if any(k in n for k in keys)]
    if args.exclude:
        drop = [k for k in args.exclude.split(",") if k]
        names = [n for n in names if not any(k in n for k in drop)]
    tp = None
    if not args.no_tp:
        try:
            import torch_pruning as tp
        except ImportError:
            print("(Torch-Pruning not installed: its column is empty)")
    rows, t_start = [], time.perf_counter()
    print(f"{'model':42s} {'lift':>5s} {'rel.err':>8s} {'lift s':>6s} {'prune':>5s} {'params':>19s} "
          f"{'a72 ms':>15s} {'torch-pruning':>16s}  error")
    for name in names:
        o = zoo.check(name, ratio=args.ratio, size=args.size)
        tpo = torch_pruning_outcome(tp, name, args.ratio, args.size) if tp is not None else ""
        rows.append((o, tpo))
        params = f"{o.params[0]:,}->{o.params[1]:,}" if o.params[0] else ""
        lat = f"{o.latency_ms[0]:.2f}->{o.latency_ms[1]:.2f}" if o.pruned else ""
        print(f"{name:42s} {'yes' if o.exact else 'NO':>5s} {o.rel_error:8.1e} {o.lift_seconds:6.3f} "
              f"{'yes' if o.pruned else ('-' if not o.exact else 'NO'):>5s} {params:>19s} {lat:>15s} {tpo:>16s}  "
              f"{(o.error_type + ': ' + o.error) if o.error else ''}", flush=True)
    n = len(rows)
    lifted = sum(o.exact for o, _ in rows)
    pruned = sum(o.pruned for o, _ in rows)
    print(f"\n{n} models in {time.perf_counter() - t_start:.0f} s: hwopt lifts {lifted}/{n} exactly "
          f"({100 * lifted / max(n, 1):.0f} %), prunes {pruned}/{lifted} of those "
          f"({100 * pruned / max(lifted, 1):.0f} %)")
    if tp is not None:
        tp_ok = sum(t == "pruned" for _, t in rows)
        print(f"Torch-Pruning {tp.__version__ if hasattr(tp, '__version__') else ''} prunes {tp_ok}/{n} "
              f"({100 * tp_ok / max(n, 1):.0f} %)")
    causes = collections.Counter(f"{o.error_type}: {o.error[:110]}" for o, _ in rows if o.error)
    if causes:
        print("\nfailures by error:")
        for cause, k in causes.most_common():
            print(f"  {k:3d}  {cause}")
    unclear = [o.name for o, _ in rows if o.error and o.error_type not in ("UnsupportedOpError", "ShapeError")]
    if unclear:
        print(f"\nnot a clear UnsupportedOpError/ShapeError: {', '.join(unclear)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
