"""Calibration: time micro-benchmarks and whole models where the target runs, fit the cost model.

    hwopt calibrate --target T [--runtime tvm|torch] [--rpc HOST:PORT | --tracker HOST:PORT --key K]
                    [--tune TRIALS] [--size tiny|small|full|large] [--form auto|terms|roofline]
                    [--threads N] [--passes N] [--blocks N] [--nets N] [--small-nets N] [--tune-only]
                    [--cache PATH] [--out PATH] [--dry-run]

1. Workloads: a grid of micro-benchmarks (each op kind over shapes: conv k=3/5/7 with and without
   BN+activation, pointwise, depthwise, dense, standalone elementwise, pooling, concat; "large" adds
   stems, squeeze-excite convs, wide/expanded layers and random blocks: `wide_grid`), drawn with fixed
   seeds, plus whole models from `hwopt.models` at reduced resolution and ("large") random CNNs from
   `random_cnn` drawn from the calibration's own seed streams (`NET_SEED`; bench/cost_fidelity.py
   draws its test architectures from another seed).
2. Each workload is lifted (for its features) and timed by a *runner*: TVM (compiled through
   hwopt.tvm for the target's TVM target, default schedules or MetaSchedule-tuned with --tune
   into the shared tuning database, run on this machine or over TVM RPC / an RPC tracker) or torch
   eager on this machine (one thread by default, timed by the thread's CPU time; see TorchRunner).
   With --tune every workload is tuned first (`TVMRunner.prepare`), then all are built and timed.
   `--passes N` times the whole grid N times round robin and keeps each workload's minimum.
3. The coefficients are fit and written back atomically into the target file's
   [calibration.<runtime>] table with the fit error and a cross-validated (5-fold, or leave-one-out
   for <= 30 samples) held-out error: form "terms" (`fit_terms`: non-negative least squares, nets
   weighted over isolated kernels, see SAMPLE_WEIGHTS) or "roofline" (`fit_coefficients`: per kind
   compute/memory efficiency and overhead and the roofline exponent, least squares on log latency);
   by default ("auto") both are fit and the one with the lower held-out error is written (terms for
   the host's 612 torch timings, roofline for its 94 TVM-default and 118 tuned ones). See cost.py.

Measurements are cached in `<out>.measurements.json` keyed by runtime, TVM target and workload, so an
interrupted run resumes where it stopped (a cache that is not one is an error, never overwritten;
--dry-run writes nothing).

`hwopt calibrate --target T --from-table FILE` fits instead to a table of measured models (a user's own
board or published figures): see `table.py`.

One file per concern: workloads.py (what is timed), runners.py (how: torch eager, TVM),
measure.py (the resumable cache), fit.py (the fits and cross-validation), run.py (the whole
calibration), table.py (--from-table), cli.py (the command line).
"""

from .cli import main
from .fit import (Design, coefficients_table, cross_validate, fit_coefficients, fit_terms, rel_errors)
from .measure import measure_all, read_cache
from .run import RUNTIMES, SAMPLE_WEIGHTS, calibrate, fit_measurements, sample_weights
from .runners import TorchRunner, TVMRunner, set_tvm_threads
from .table import calibrate_from_table, read_table
from .workloads import (NET_SEED, Workload, _w, micro_grid, model_workloads, net_workloads, random_cnn,
                        wide_grid)

__all__ = ["main", "Design", "coefficients_table", "cross_validate", "fit_coefficients", "fit_terms", "rel_errors",
           "measure_all", "read_cache", "RUNTIMES", "SAMPLE_WEIGHTS", "calibrate", "fit_measurements",
           "sample_weights", "TorchRunner", "TVMRunner", "set_tvm_threads", "calibrate_from_table", "read_table",
           "NET_SEED", "Workload", "micro_grid", "model_workloads", "net_workloads", "random_cnn", "wide_grid"]
