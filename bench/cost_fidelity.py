"""How well does the host cost model predict real latency? Random architectures, never calibrated on.

    OMP_WAIT_POLICY=PASSIVE python bench/cost_fidelity.py [--n 40] [--smoke] [--small] [--tune TRIALS]
                                                           [--no-tvm] [--no-torch] [--passes 3] [--budget-min M]
                                                           [--tune-only] [-v]

Draws `--n` random CNNs (hwopt.targets.calibrate.random_cnn: varied depth, widths, kernels 3/5/7,
strides, input resolution, plain / MBConv / MBConv-SE / residual blocks) with a seed the calibration
does not use (calibration draws its random nets from the streams [calibrate.NET_SEED, i]; the bench
draws all of its architectures from one stream seeded --seed), lifts each, predicts its latency with
`hwopt.targets.load_target("host")` (calibration runtime "tvm-default", or "tvm-tuned" with --tune)
and times it (1) compiled with TVM through hwopt.tvm, the deploy path (default schedules
unless --tune: then MetaSchedule with the backend's shared per-target tuning database; every
architecture is tuned first, then all are built and timed), and (2) in torch eager (runtime
"torch-eager"), with the thread count recorded in that calibration table and the same clock (one
thread: the thread's CPU time). Both runtimes time all architectures --passes times round robin,
keeping each one's minimum, as calibration does (TVM builds each architecture once). Prints, per
runtime, the share of architectures predicted within ±10 % and ±20 %, the median |error|, the
Spearman rank correlation, and the script's own runtime. --budget-min stops tuning new architectures after that many minutes and
reports over the architectures tuned.

Measured (2026-11-24, host, quiet machine; `--n 40 --small --tune 8 --passes 2 -v`, 1255 s: the 40
architectures tuned beforehand with `--tune-only`, ~65-90 s each idle, ~3 min at load 5):
    tvm-tuned    n=40  within ±10 % 22.5 %  within ±20 % 47.5 %  median |err| 22.0 %  Spearman 0.943
    torch-eager  n=40  within ±10 % 65.0 %  within ±20 % 90.0 %  median |err|  8.0 %  Spearman 0.948
Re-run with each architecture built once for both passes (`--no-torch`, 756 s, of which 304 s
re-checking the 40 against the database and 449 s building and timing; the TVM part took 1241 s
when every pass rebuilt): 20.0 % / 45.0 %, median 21.6 %, Spearman 0.943 (timing noise moves an
architecture or two across the ±10 % line).
(tvm-tuned table: 118 timings incl. 20 small random nets of the calibration's own stream; with the
earlier table of 98 timings and no small nets, 32 of these architectures: 15.6 % / 34.4 %, median
31.2 %, mostly over-predicted.) What limits the tuned figure is the measured latency itself: at 8
trials per task an architecture tuned again from scratch runs up to 2x faster or slower
(bench/tuning_noise.py: one tuning run predicts another within ±10 % in 33 % of cases), so no
deterministic cost model can reach ±10 % on most architectures against a single 8-trial tuning.

Measured (2026-12-01, another host: Zen 3, `AuthenticAMD family 25 model 1`, znver3; six helpers' jobs
on its 2 vCPUs, load average 12-16). The tables above were fit on the Zen 4 of 2026-11-24; on this CPU
the same command (--passes 2, quiet moment) gave 0.0 % within ±10 %, median |err| 40.6 %, every
architecture predicted 30-50 % too fast: a table is another CPU's. Tables now record their CPU
(`cpu`) and loading one on another CPU warns with the command that re-times it. Re-calibrated here
(`hwopt calibrate --target host --runtime torch --small-nets 200 --passes 2`: 788 timings, held-out
nets median 10.4 %, 48 % within ±10 %):
    --passes 2: torch-eager within ±10 % 45.0 %, ±20 % 67.5 %, median |err| 10.8 %, Spearman 0.927;
                timing noise floor (pass 1 vs pass 2) within ±10 % 15.0 %, median |diff| 30.6 % (load 14.3)
    --passes 8: torch-eager within ±10 % 47.5 %, ±20 % 82.5 %, median |err| 10.7 %, Spearman 0.941;
                timing noise floor (passes 1-4 vs 5-8) within ±10 % 35.0 %, median |diff| 16.0 % (load 14.2)
The model predicts a timing better than a second timing of the same architecture does, i.e. at this
load the figure measures the machine, not the model: ≥ 90 % within ±10 % needs a timing that repeats
within a few %, which this shared machine does not give. Thread CPU time does not help enough: the
vCPU itself runs slower while the other one is busy (a pure-Python loop's thread time varied from 16
to 31 ms, median +10 %, with no change in the code), in phases of seconds, so even the minimum of 60
single runs of one net varied 33-85 % between repetitions seconds apart; normalising each window by
a reference kernel timed beside it halved the spread but left it at ±10 % (50 % of pairs within).
The "timing noise floor" line is printed by every run with --passes >= 2: read the figures against it.

Measured (2026-12-01 19:41 UTC, the same Zen 3, idle: load average 0.8, nothing else running;
`--n 40 --small --no-tvm --passes 8 -v`, 52 s), with the table re-calibrated at load 14 above:
    torch-eager  within ±10 % 0.0 %, ±20 % 10.0 %, median |err| 36.0 %, Spearman 0.970;
                 timing noise floor (passes 1-4 vs 5-8) within ±10 % 45.0 %, median |diff| 14.7 %
Every architecture predicted 13-50 % too slow: a table timed while the vCPU was shared is another
machine's table when it is not, so there is no one table for this host. The ranking holds (0.970), the
level does not. Even idle, a second timing of the same net agrees with the first within ±10 % for
45 % of the nets, and fixed work (bench/machine_noise.py) varies p90/p10 1.39 (numpy matmul) to 1.89
(Python loop) over 20 s in phases of seconds: issue 17's ≥ 90 % within ±10 % on the host is not
measurable on this machine.

OMP_WAIT_POLICY must be set before Python starts for torch's OpenMP pool to honour it on this
2-core machine; the script sets it with os.environ.setdefault before importing torch as a fallback.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402,F401


def random_arch(rng: np.random.Generator, small: bool = False) -> tuple[nn.Module, torch.Tensor, str]:
    """small: 32x32 input and widths <= 48 (untuned TVM runs a 2-GMAC random net for minutes).
    The generator is hwopt.targets.calibrate.random_cnn; calibration draws its "net" workloads from
    it with other seeds (calibrate.NET_SEED), so none of these architectures is fit data."""
    from hwopt.targets.calibrate import random_cnn
    return random_cnn(rng, small=small)


def figures(pred: np.ndarray, meas: np.ndarray) -> dict:
    from scipy.stats import spearmanr
    err = np.abs(pred / meas - 1)
    return {"n": len(meas), "within10": float(np.mean(err <= 0.10)), "within20": float(np.mean(err <= 0.20)),
            "median_err": float(np.median(err)), "spearman": float(spearmanr(pred, meas).statistic) if len(meas) > 2 else float("nan")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=20240611,
                    help="architecture seed (calibration's grid uses seeds 0/1, its random nets the streams [7, i])")
    ap.add_argument("--smoke", action="store_true", help="5 small architectures: a CI-sized run")
    ap.add_argument("--small", action="store_true", help="small architectures (32x32 input, widths <= 48)")
    ap.add_argument("--tune", type=int, default=0, help="MetaSchedule trials (0: TVM default schedules)")
    ap.add_argument("--no-tvm", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--passes", type=int, default=3,
                    help="time all architectures this many times round robin, keep each one's minimum "
                         "(as calibration does; load on a shared machine comes in bursts)")
    ap.add_argument("--budget-min", type=float, default=0,
                    help="TVM with --tune: stop tuning new architectures after this many minutes and report the "
                         "figures over those tuned, saying how many (0: no limit)")
    ap.add_argument("--tune-only", action="store_true",
                    help="with --tune: tune every architecture into the shared database and stop (time later, on a "
                         "quiet machine, with the same command without --tune-only)")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per architecture")
    a = ap.parse_args(argv)
    if a.tune_only and (not a.tune or a.no_tvm):
        ap.error("--tune-only needs --tune TRIALS (and TVM)")
    t_start = time.time()

    import hwopt
    from hwopt.targets import load_target
    from hwopt.targets.calibrate import TorchRunner, TVMRunner

    n = 5 if a.smoke else a.n
    rng = np.random.default_rng(a.seed)
    archs = [random_arch(rng, small=a.smoke or a.small) for _ in range(n)]
    runtimes = []
    if not a.no_tvm:
        host = load_target("host")
        rt = "tvm-tuned" if a.tune else "tvm-default"
        if rt not in host.calibration:
            print(f"host.toml has no [calibration.{rt}]: run hwopt calibrate --target host" + (f" --tune {a.tune}" if a.tune else ""))
            return 2
        tvm_model = load_target("host", runtime=rt)
        # time TVM with the thread count the calibration was fit to, if it recorded one
        runtimes.append((rt, tvm_model, TVMRunner(host.tvm_target, tune_trials=a.tune,
                                                  threads=tvm_model.calibration_info.get("threads"))))
    if not a.no_torch and not a.tune_only:
        te = load_target("host", runtime="torch-eager")
        # time torch with the thread count the calibration was fit to (recorded in the table)
        runtimes.append(("torch-eager", te, TorchRunner(te.calibration_info.get("threads"))))
    graphs = [hwopt.lift(m, x) for m, x, _ in archs]
    print(f"cost_fidelity: {n} random architectures (seed {a.seed}), host "
          f"{load_target('host').tvm_target.get('mcpu')} x{load_target('host').cores_used}; "
          f"MACs {min(g.stats()['macs'] for g in graphs) / 1e6:.1f}..{max(g.stats()['macs'] for g in graphs) / 1e6:.1f} M")
    for name, target, runner in runtimes:
        t0 = time.time()
        pred = [target.cost(g).latency_ms for g in graphs]
        meas: list = [np.inf] * n
        stopped = None
        if hasattr(runner, "prepare") and a.tune:
            for i, (m, x, desc) in enumerate(archs):
                if a.budget_min and time.time() - t0 > 60 * a.budget_min:
                    stopped = i
                    meas[i:] = [None] * (n - i)
                    break
                if a.verbose:
                    print(f"  [{name}] tuning {i + 1}/{n} {desc} ({time.time() - t0:.0f} s)", flush=True)
                try:
                    runner.prepare(m, x)
                except Exception as e:  # report, do not hide: a failed tuning is a finding
                    print(f"  [{name}] FAILED to tune {desc}: {type(e).__name__}: {str(e)[:160]}")
                    meas[i] = None
            t_tune = time.time() - t0
            print(f"  [{name}] tuned {n if stopped is None else stopped} architectures in {t_tune:.0f} s")
            if a.tune_only:
                continue
        built: dict = {}  # TVM: build each architecture once, time it every pass
        passes = max(1, a.passes)
        halves = [[np.inf] * n, [np.inf] * n]  # minima of the first and the second half of the passes
        for pas in range(passes):
            for i, (m, x, desc) in enumerate(archs):
                if meas[i] is None:
                    continue
                try:
                    if hasattr(runner, "time_built"):
                        if i not in built:
                            built[i] = runner.build(m, x)
                        ms = runner.time_built(built[i], x)
                    else:
                        ms = runner.measure(m, x)
                    meas[i] = min(meas[i], ms)
                    h = halves[int(pas >= (passes + 1) // 2)]
                    h[i] = min(h[i], ms)
                except Exception as e:  # report, do not hide: a failed compile is a finding
                    print(f"  [{name}] FAILED {desc}: {type(e).__name__}: {str(e)[:160]}")
                    meas[i] = None
        ok = [i for i in range(n) if meas[i] is not None and np.isfinite(meas[i])]
        if stopped is not None:
            print(f"  [{name}] tuning budget of {a.budget_min:g} min reached: {len(ok)} of {n} architectures timed")
        if a.verbose:
            for i in ok:
                print(f"  [{name}] measured {meas[i]:9.3f} ms  predicted {pred[i]:9.3f} ms  ({pred[i] / meas[i] - 1:+6.1%})  {archs[i][2]}")
        f = figures(np.array([pred[i] for i in ok]), np.array([meas[i] for i in ok]))
        sched = runner.schedules if hasattr(runner, "schedules") else ""
        print(f"{name:<12} n={f['n']:<3} within ±10%: {f['within10']:5.1%}  within ±20%: {f['within20']:5.1%}  "
              f"median |err| {f['median_err']:5.1%}  Spearman {f['spearman']:.3f}  ({time.time() - t0:.0f} s; "
              f"{a.passes} pass(es); {sched})")
        if passes >= 2 and ok:
            # the timing's own reproducibility: the same architectures timed by the first and by the second
            # half of the passes. A model that knew each latency exactly would score about this against one
            # timing, so it is the ceiling of the figures above on this machine at this load.
            nf = figures(np.array([halves[0][i] for i in ok]), np.array([halves[1][i] for i in ok]))
            print(f"{'':12} timing noise floor: passes 1..{(passes + 1) // 2} vs {(passes + 1) // 2 + 1}..{passes} "
                  f"(each half's minimum) agree within ±10%: {nf['within10']:5.1%}  within ±20%: {nf['within20']:5.1%}  "
                  f"median |diff| {nf['median_err']:5.1%}  (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print(f"total runtime {time.time() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
