"""How well the cost model predicts real devices: NAS-Bench-201 on a Raspberry Pi 4 and a Pixel 3.

    python bench/device_fidelity.py                 # fit 100 / 20 rows, test on 5,000 others, both devices
    python bench/device_fidelity.py --smoke         # 300 test rows (a few minutes)
    python bench/device_fidelity.py --write-tables  # (re)write targets/data/nasbench201_*.csv (the shipped fits' data)

Data: bench/data/nasbench201_cifar10_latency_ms.csv (all 15,625 NAS-Bench-201 cells measured end to end
with TFLite by HW-NAS-Bench, redistributed by HELP; MIT). Each cell is built with hwopt.nasbench201 (its IR:
`nasbench201_graph`, node for node what lifting the module gives; a few are lifted too and compared),
and costed by the "terms" form fitted to a random sample of rows (`hwopt.targets.calibrate.table`, the
code `hwopt calibrate --from-table` runs); every figure is on rows never fit. No scaling after the fit.

Printed per device: Spearman rho and share within ±10 % for a fit on 100 rows, on 20 rows (from scratch,
and starting from the other device's 100-row fit, HELP's transfer), the rho of counting MACs, and what
the measurements allow. Published reference (Pi 4): FLOPs 0.846, BRP-NAS (900 samples) 0.847, HELP (10
samples) 0.890 (HELP README, Table 3).

What the measurements allow. Cells that run the same network (`hwopt.nasbench201.canonical`: the same
executed program) were each measured, so the table holds repeated measurements of ~950 networks:
- the loose upper bound: the share of test rows that ANY predictor giving identical networks one
  prediction can put within ±10 % (per group the best single prediction, `best_prediction`). A network
  measured once among the test rows counts as a hit, and 78 % of the 5,000 test rows are such networks,
  so it says little.
- reference predictors (`reference_predictors`), from the ~10,000 rows that are neither fit nor test rows:
  each test row predicted by the value that puts the most of its group within ±10 %, for (1) the same
  network measured again (measurement noise alone), (2) networks whose cells run the same op counts
  (the best any model of the ops can do, wiring aside, with 100x the data and the ±10 % criterion as
  its loss). Neither is a bound; both show where the data's noise sits.
The noise is not small. On the Pi 4 the runs of one network are bimodal at random: identical networks
land in a fast or a ~45 % slower mode (small networks with no 3x3 conv in the cell: 37-56 % of runs slow,
independent of which cell string was measured, of the index, and unpredictable from the cell: a boosted
classifier on the edges does worse than always guessing "fast"). On the Pixel 3 runs come in phases
(residuals autocorrelated along the table's index, lag-1 0.79) where whole stretches measure 10-20 %
faster. Hence the fit's loss is chosen per fit by held-out share within ±10 % among least squares and a
robust (Cauchy) loss (`targets/calibrate/table.py` LOSSES): the robust one follows the fast mode of the
Pi 4 instead of landing between the modes (Pi 4 66 % -> 74 % within ±10 %); least squares stays for the
Pixel 3. The 90 % goal of issue 17 is above what these measurements allow: the best reference predictor
(10,164 rows, the ±10 % criterion as its loss) reaches 80.2 % (Pi 4) / 82.7 % (Pixel 3) of the test rows.

How the network is built matters as much as the cost model: `hwopt.nasbench201.program` is the cell as
the TFLite converter leaves it (which dead ops it still runs), read off rows that are never test rows
of this bench (seed 0): with it the 100-row fit ranks the Pi 4 test rows 0.983 (0.964 with "live edges only").

Results (`OMP_WAIT_POLICY=PASSIVE nice -n 15 python bench/device_fidelity.py`, seed 0, 5,000 test rows):

    Raspberry Pi 4 (cortex-a72): test rows 5000, 2.5..87.5 ms
      model                                                 Spearman   ±10%   ±20% median|err|
      fit 100 rows (terms form, shipped; 'cauchy' loss)        0.983  76.4%  89.5%        4.4%
        same rows, roofline form (for comparison)              0.983  65.5%  82.6%        5.5%
      fit 20 rows, from scratch                                0.982  70.0%  86.0%        5.4%
      fit 20 rows from the Pixel 3 fit                         0.982  65.5%  89.2%        7.4%
      MACs (rank only)                                         0.951
      loose upper bound 97.1 % (78 % of test rows count as hits); oracle Spearman 0.998
      the same network's other measurements       940 test rows: 70.2 % (the 100-row fit: 76.0 %)
      other networks running the same ops        4891 test rows: 80.2 % (the 100-row fit: 76.8 %)
    Pixel 3 (pixel-3): test rows 5000, 1.1..36.8 ms
      fit 100 rows (terms form, shipped; 'linear' loss)        0.982  80.7%  90.6%        5.9%
        same rows, roofline form (for comparison)              0.982  80.8%  90.7%        5.9%
      fit 20 rows, from scratch                                0.982  75.3%  85.3%        2.1%
      fit 20 rows from the Raspberry Pi 4 fit                  0.982  75.5%  88.3%        3.5%
      MACs (rank only)                                         0.916
      loose upper bound 97.3 %; oracle Spearman 0.999
      the same network's other measurements       940 test rows: 78.0 % (the 100-row fit: 79.6 %)
      other networks running the same ops        4891 test rows: 82.7 % (the 100-row fit: 80.8 %)
Before this loss choice and TABLE_TERMS (least squares, all monomials): Pi 4 0.983 / 66.0 %, Pixel 3
0.982 / 80.5 %. Runtime 2493 s of wall time at load 13 (nice 15).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT / "bench" / "data" / "nasbench201_cifar10_latency_ms.csv"  # published measurements (bench/data/README.md)
DEVICES = {"raspi4_ms": ("Raspberry Pi 4 (cortex-a72)", "cortex-a72"), "pixel3_ms": ("Pixel 3 (pixel-3)", "pixel-3")}
TABLE_SEED = 2026       # the shipped tables' sample (targets/data); the bench's own splits use --seed


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def best_prediction(y: np.ndarray, tol: float = 0.1) -> tuple[int, float]:
    """(count, p): the most of the latencies `y` one prediction p can put within ±tol, and such a p.
    p is within of y_i when |p / y_i - 1| <= tol, i.e. p in [(1 - tol) y_i, (1 + tol) y_i]; the count
    is the largest number of these intervals that overlap (a sweep over their ends; an interval's start
    before an end at the same point, since both bounds are inclusive), p the start of that overlap."""
    ev = sorted([((1 - tol) * v, 0) for v in y] + [((1 + tol) * v, 1) for v in y])
    best, cur, at = 0, 0, float("nan")
    for x, end in ev:
        cur += -1 if end else 1
        if cur > best:
            best, at = cur, x
    return best, at


def best_share_within(y: np.ndarray, tol: float = 0.1) -> int:
    """The most of the latencies `y` one prediction can put within ±tol (`best_prediction`)."""
    return best_prediction(y, tol)[0]


CELL_OPS = ("nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3", "add", "mul0", "zero")


def op_counts(arch: str) -> tuple[int, ...]:
    """How many of each op one cell runs (`program`; "add": binary additions): networks with the same
    counts differ only in how the cell is wired."""
    from hwopt.nasbench201 import program
    steps, _ = program(arch)
    return tuple(sum(len(ins) - 1 if op == "add" else 1 for _, op, ins in steps if op == k) for k in CELL_OPS)


def reference_predictors(test: list[dict], other: list[dict], col: str, pred: np.ndarray, min_rows: int = 3) -> list[tuple]:
    """What predictors that know many more measurements reach on the test rows, beside the model on the
    same rows: (label, rows covered, their share within ±10 %, the model's share on those rows).
    `other` are rows that are neither fit nor test rows. Each predictor gives a test row the prediction
    that puts the most of its group's `other` measurements within ±10 % (`best_prediction`), for groups
    of >= `min_rows`: (1) the same network measured again (canonical cell): the measurement noise
    alone; (2) the same op counts per cell (`op_counts`): any model of the network's ops, wiring aside."""
    from hwopt.nasbench201 import canonical
    y = np.array([float(r[col]) for r in test])
    out = []
    for label, key in (("the same network's other measurements", lambda r: canonical(r["arch_str"])),
                       ("other networks running the same ops", lambda r: op_counts(r["arch_str"]))):
        groups = defaultdict(list)
        for r in other:
            groups[key(r)].append(float(r[col]))
        center = {k: best_prediction(np.array(v))[1] for k, v in groups.items() if len(v) >= min_rows}
        ids = [i for i, r in enumerate(test) if key(r) in center]
        if not ids:
            continue
        p = np.array([center[key(test[i])] for i in ids])
        hit = lambda q: float(np.mean(np.abs(q / y[ids] - 1) <= 0.1))  # noqa: E731
        out.append((label, len(ids), hit(p), hit(pred[ids])))
    return out


def same_network_groups(rows: list[dict]) -> dict[str, list[int]]:
    """Row indices grouped by canonical cell: cells whose live edges are the same compute the same
    network (dead-end edges are eliminated by the runtime: hwopt.nasbench201.live_edges)."""
    from hwopt.nasbench201 import canonical
    groups = defaultdict(list)
    for i, r in enumerate(rows):
        groups[canonical(r["arch_str"])].append(i)
    return groups


def noise_ceiling(rows: list[dict], col: str) -> dict:
    """What the measurements allow on `rows` (the test rows) for ANY predictor that gives identical
    networks the same prediction (every cost model does: it sees the network, not the cell string):
    `w10_max`, the largest achievable share within ±10 %, is the sum over groups of identical networks
    of the most rows one prediction can put within ±10 % (`best_share_within`; a network measured once
    counts as achievable), over all rows: a true upper bound. `rho_oracle`: Spearman of the oracle that
    predicts every network by the mean of its own test rows (not a proven bound, a reference point).
    `spread`: median |y / group median - 1| over rows in groups of >= 2; `grouped`: those rows."""
    from hwopt.targets.calibrate.table import spearman
    y = np.array([float(r[col]) for r in rows])
    groups = same_network_groups(rows)
    reach, dev, oracle = 0, [], np.zeros(len(y))
    for ids in groups.values():
        v = y[ids]
        reach += best_share_within(v)
        oracle[ids] = v.mean()
        if len(v) > 1:
            dev += list(np.abs(v / np.median(v) - 1))
    return {"w10_max": reach / len(y), "rho_oracle": spearman(oracle, y), "spread": float(np.median(dev)) if dev else 0.0,
            "grouped": len(dev), "networks": len(groups)}


class Designs:
    """Per-row features of the network, computed once per distinct network (canonical cell). The IR is
    built from the cell description (`nasbench201_graph`: node for node what `hwopt.lift` traces from
    `nasbench201(arch)`, tests/test_nasbench201.py; ~8x faster than building and lifting the module, which took most of the
    5,000-row run); `check_lift(n)` re-lifts n networks through torch and compares their costs."""

    def __init__(self, target):
        self.t = target
        self.cache: dict[str, tuple] = {}

    def __call__(self, rows: list[dict]):
        from hwopt.nasbench201 import canonical, nasbench201_graph
        from hwopt.targets.calibrate import Design
        from hwopt.targets.cost import DTYPE_BYTES
        out = []
        for r in rows:
            k = canonical(r["arch_str"])
            if k not in self.cache:
                g = nasbench201_graph(r["arch_str"])
                d = Design.from_graphs([g], DTYPE_BYTES[self.t.deploy_dtype], self.t.cache_bytes)
                self.cache[k] = (d, g.stats()["macs"], r["arch_str"])
            out.append(self.cache[k][:2])
        return out

    def check_lift(self, n: int, seed: int = 0) -> int:
        """Lift n of the cached networks from their torch modules; raise if any costs differently."""
        import torch

        import hwopt
        from hwopt.nasbench201 import nasbench201
        from hwopt.targets.calibrate import Design
        from hwopt.targets.cost import DTYPE_BYTES
        keys = sorted(self.cache)
        pick = np.random.default_rng(seed).choice(len(keys), size=min(n, len(keys)), replace=False)
        for i in pick:
            d, macs, arch = self.cache[keys[i]]
            g = hwopt.lift(nasbench201(arch), torch.randn(1, 3, 32, 32))
            dl = Design.from_graphs([g], DTYPE_BYTES[self.t.deploy_dtype], self.t.cache_bytes)
            if g.stats()["macs"] != macs or not np.array_equal(dl.term_matrix(), d.term_matrix()):
                raise AssertionError(f"nasbench201_graph({arch!r}) costs differently from the lifted module")
        return len(pick)


def concat(parts) -> "Design":
    from hwopt.targets.calibrate import Design
    ds = [p[0] for p in parts]
    off = np.concatenate([[0], np.cumsum([d.n for d in ds])])
    cat = lambda name: np.concatenate([getattr(d, name) for d in ds])  # noqa: E731
    return Design(cat("kind"), cat("grouped"), cat("work"), cat("nbytes"),
                  np.concatenate([d.sample + o for d, o in zip(ds, off[:-1])]), int(off[-1]), cat("terms"), cat("ambiguous"))


def scores(pred: np.ndarray, meas: np.ndarray) -> dict:
    from hwopt.targets.calibrate.table import spearman
    e = np.abs(pred / meas - 1)
    return {"rho": spearman(pred, meas), "w10": float(np.mean(e <= 0.1)), "w20": float(np.mean(e <= 0.2)),
            "med": float(np.median(e))}


def write_tables(rows: list[dict]) -> None:
    """targets/data/: the rows the shipped tables are fit to and a few hundred test rows (MIT, HW-NAS-Bench/HELP)."""
    from hwopt.fileio import atomic_write
    from hwopt.nasbench201 import live_edges
    live = [r for r in rows if live_edges(r["arch_str"])]
    idx = np.random.default_rng(TABLE_SEED).permutation(len(live))
    pi4_fit, px3_fit, test = idx[:100], idx[100:120], idx[120:420]
    d = ROOT / "targets" / "data"

    def table(col, fit, name):
        lines = ["model,latency_ms,input_shape,split"]
        for split, ids in (("fit", fit), ("test", test)):
            for i in ids:
                r = live[i]
                lines.append(f'"hwopt.nasbench201:nasbench201(\'{r["arch_str"]}\')",{float(r[col]):.6g},"1,3,32,32",{split}')
        atomic_write(d / name, "\n".join(lines) + "\n")

    table("raspi4_ms", pi4_fit, "nasbench201_raspi4.csv")
    table("pixel3_ms", px3_fit, "nasbench201_pixel3.csv")
    print(f"wrote {d}/nasbench201_raspi4.csv (100 fit + 300 test rows), nasbench201_pixel3.csv (20 fit + 300 test)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csv", default=str(DATA))
    ap.add_argument("--fit", type=int, default=100)
    ap.add_argument("--few", type=int, default=20)
    ap.add_argument("--test", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="300 test rows")
    ap.add_argument("--write-tables", action="store_true")
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch
    torch.set_num_threads(1)
    import hwopt.targets as T
    from hwopt.nasbench201 import live_edges
    from hwopt.targets.calibrate.table import fit_table

    t0 = time.time()
    path = Path(a.csv)
    if not path.is_file():
        print(f"no data at {path} (bench/data/README.md says what it is)", file=sys.stderr)
        return 1
    rows = read_rows(path)
    if a.write_tables:
        write_tables(rows)
        return 0
    live = [r for r in rows if live_edges(r["arch_str"])]
    n_test = 300 if a.smoke else a.test
    rng = np.random.default_rng(a.seed)
    idx = rng.permutation(len(live))
    fit_i, few_i, test_i = idx[:a.fit], idx[a.fit:a.fit + a.few], idx[a.fit + a.few:a.fit + a.few + n_test]
    print(f"NAS-Bench-201, {len(rows)} cells, {len(rows) - len(live)} compute a constant (no path to the output; "
          f"measured 0.01..22 ms, left out); split seed {a.seed}: fit {len(fit_i)}, few-shot {len(few_i)}, "
          f"test {len(test_i)} (never fit)")
    designs = Designs(T.load_target("cortex-a72"))
    sel = lambda ids: [live[i] for i in ids]  # noqa: E731
    d_fit, d_few, d_test = (concat(designs(sel(i))) for i in (fit_i, few_i, test_i))
    macs_test = np.array([m for _, m in designs(sel(test_i))], float)
    print(f"built {len(designs.cache)} distinct networks in {time.time() - t0:.0f} s; "
          f"{designs.check_lift(3 if a.smoke else 20)} of them lifted from torch modules too: same costs")
    other_i = idx[a.fit + a.few + n_test:]  # neither fit nor test rows: only the reference predictors read them
    fits, how = {}, {}
    for col in DEVICES:
        y = lambda ids: np.array([float(live[i][col]) for i in ids])  # noqa: E731
        fits[col], _, how[col] = fit_table(d_fit, y(fit_i))
    for col, (label, _) in DEVICES.items():
        y = lambda ids: np.array([float(live[i][col]) for i in ids])  # noqa: E731
        yt = y(test_i)
        other = next(c for c in DEVICES if c != col)
        lines = []
        p100 = d_test.predict_s(fits[col], 1, 1) * 1e3
        loss = how[col].split("with the ")[1].split(" loss")[0] if "with the " in how[col] else "?"
        lines.append((f"fit {len(fit_i)} rows (terms form, shipped; {loss} loss)", scores(p100, yt)))
        from hwopt.targets.calibrate import fit_coefficients
        t = designs.t
        roof = fit_coefficients(d_fit, y(fit_i), t.peak_macs_per_s, t.bandwidth_bytes_s)
        lines.append(("  same rows, roofline form (for comparison)",
                      scores(d_test.predict_s(roof, t.peak_macs_per_s, t.bandwidth_bytes_s) * 1e3, yt)))
        c20 = fit_table(d_few, y(few_i))[0]
        lines.append((f"fit {len(few_i)} rows, from scratch", scores(d_test.predict_s(c20, 1, 1) * 1e3, yt)))
        c20p = fit_table(d_few, y(few_i), fits[other].terms)[0]
        lines.append((f"fit {len(few_i)} rows from the {DEVICES[other][0].split(' (')[0]} fit",
                      scores(d_test.predict_s(c20p, 1, 1) * 1e3, yt)))
        from hwopt.targets.calibrate.table import spearman
        ceil = noise_ceiling(sel(test_i), col)
        print(f"\n{label}: test rows {len(yt)}, {yt.min():.1f}..{yt.max():.1f} ms")
        print(f"  {'model':44s} {'Spearman':>8s} {'±10%':>6s} {'±20%':>6s} {'median|err|':>11s}")
        for name, s in lines:
            print(f"  {name:44s} {s['rho']:8.3f} {s['w10']:6.1%} {s['w20']:6.1%} {s['med']:11.1%}")
        print(f"  {'MACs (rank only)':44s} {spearman(macs_test, yt):8.3f}")
        print(f"  measurement noise: the {len(yt)} test rows are {ceil['networks']} distinct networks; "
              f"{ceil['grouped']} rows share theirs with other test rows, spread median {ceil['spread']:.1%}")
        once = 1 - ceil["grouped"] / len(yt)
        print(f"  loose upper bound for ±10 % (identical networks get one prediction; the {once:.0%} of test rows whose "
              f"network is measured once among them count as hits): {ceil['w10_max']:.1%}; oracle Spearman (each "
              f"network predicted by its rows' mean): {ceil['rho_oracle']:.3f}")
        print(f"  reference predictors from the {len(other_i)} rows that are neither fit nor test rows "
              f"(per group of >= 3 of them, the prediction putting most of the group within ±10 %):")
        for label, n, hit, model in reference_predictors(sel(test_i), sel(other_i), col, p100):
            print(f"    {label:40s} {n:5d} test rows: {hit:6.1%} within ±10 % (the 100-row fit: {model:.1%})")
    print(f"\ngoal (issue 17): 100 rows rho >= 0.97 and >= 90 % within ±10 %; 20 rows rho >= 0.93 (HELP: 0.890 from 10)")
    print(f"runtime {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
