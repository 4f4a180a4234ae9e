"""The one entrance: `compile_module` (import, tune what the store lacks, build) and `tune_module`."""
from __future__ import annotations

import os
import time
from typing import Any

import tvm
from tvm import relax

from .relax import _as_tuple, _canonical_block_names, _lower_pipeline, _prepare, _scheduled_names, _tir_func_names, \
    to_relax
from .runtime import CompiledModel
from .target import CompileError, tvm_target
from .tuning import TuningStore, _ensure_tensor_intrinsics, _tune

def _tuned(
    module,
    inputs: tuple,
    tgt: tvm.target.Target,
    *,
    tune_trials: int,
    store,
    tracker,
    tune_timeout_sec: float,
    timings: dict,
):
    """Import, legalize and fuse ``module``; open the tuning database and tune what it lacks.

    Returns ``(prepared module, database or None, database dir or None, new trials)``."""
    t0 = time.perf_counter()
    if isinstance(module, tvm.IRModule):
        mod = module
    else:
        mod = to_relax(module, inputs, target=tgt)
    timings["import_s"] = time.perf_counter() - t0

    try:
        t0 = time.perf_counter()
        prepared = _prepare(mod, tgt)
        timings["prepare_s"] = time.perf_counter() - t0
    except Exception as exc:
        raise CompileError("build", tgt, f"legalize/fuse: {type(exc).__name__}: {exc}") from exc

    db = db_dir = None
    if store is None and tune_trials > 0:
        store = TuningStore()
    if store is not None and not isinstance(store, TuningStore):  # a MetaSchedule Database object, as is
        db = store
    elif store is not None:
        db_dir = store.directory(tgt)
        if tune_trials > 0 or store.exists(tgt):
            db = store.open(tgt)

    if db is not None:
        try:
            prepared = _canonical_block_names(prepared)
        except Exception as exc:
            raise CompileError("build", tgt, f"canonical block names: {type(exc).__name__}: {exc}") from exc

    new_trials = 0
    if tune_trials > 0:
        t0 = time.perf_counter()
        try:
            new_trials = _tune(prepared, tgt, db, db_dir, int(tune_trials), tracker, tune_timeout_sec)
        except (CompileError, NotImplementedError):
            raise
        except Exception as exc:
            raise CompileError("tune", tgt, f"{type(exc).__name__}: {exc}") from exc
        timings["tune_s"] = time.perf_counter() - t0
    return prepared, db, db_dir, new_trials


def _input_info(inputs: tuple) -> list[tuple[tuple[int, ...], str]]:
    return [(tuple(int(s) for s in x.shape), str(x.dtype).replace("torch.", "")) for x in inputs]


def as_store(store: Any = None, work_dir: str | os.PathLike | None = None, database: Any = None):
    """The one tuning store of a call: `store` (a TuningStore, or a MetaSchedule Database used as is);
    `work_dir` (a store root) and `database` (one database directory or object, used as is) are the older
    spellings of the same thing and map onto it."""
    given = [x for x in (store, work_dir, database) if x is not None]
    if len(given) > 1:
        raise ValueError("give one of store=, work_dir=, database= (they name the same tuning store)")
    for old, value in (("work_dir", work_dir), ("database", database)):
        if value is not None:
            import warnings
            warnings.warn(f"{old}= is deprecated: give store= (a TuningStore, its root directory, or "
                          f"TuningStore.at(database_dir))", DeprecationWarning, stacklevel=3)
    if store is not None:
        if isinstance(store, (str, os.PathLike)):
            return TuningStore(os.fspath(store))
        return store
    if work_dir is not None:
        return TuningStore(os.fspath(work_dir))
    if database is not None:
        return TuningStore.at(database) if isinstance(database, (str, os.PathLike)) else database
    return None


def tune_module(
    module,
    example_inputs,
    target: dict | str | tvm.target.Target = "host",
    *,
    tune_trials: int,
    store: TuningStore | None = None,
    tracker: tuple[str, int, str] | None = None,
    tune_timeout_sec: float = 60.0,
    work_dir: str | os.PathLike | None = None,
    database: Any = None,
) -> int:
    """Tune ``module``'s fused operators into the tuning store without building it.

    Lets a caller tune many models first (where load on the machine does not matter) and time them
    afterwards. Arguments as for :func:`compile_module`; returns the number of new trials."""
    if tune_trials <= 0:
        raise ValueError(f"tune_module: tune_trials must be positive, got {tune_trials}")
    tgt = tvm_target(target)
    _, _, _, new_trials = _tuned(
        module, _as_tuple(example_inputs), tgt, tune_trials=tune_trials, store=as_store(store, work_dir, database),
        tracker=tracker, tune_timeout_sec=tune_timeout_sec, timings={},
    )
    return new_trials


def compile_module(
    module,
    example_inputs,
    target: dict | str | tvm.target.Target = "host",
    *,
    tune_trials: int = 0,
    store: TuningStore | None = None,
    tracker: tuple[str, int, str] | None = None,
    tune_timeout_sec: float = 60.0,
    work_dir: str | os.PathLike | None = None,
    database: Any = None,
) -> CompiledModel:
    """Compile ``module`` (a torch ``nn.Module``, or an already-imported Relax ``IRModule``): the one entrance
    optimize, export, measurement, NAS and calibration use.

    tune_trials: MetaSchedule trials per fused operator (0 = no tuning). Tasks that already have
        that many trials in the store are not tuned again.
    store: the TuningStore whose records are applied (and, when tuning, extended). Default: none without
        tuning; the shared ``TuningStore()`` (~/.cache/hwopt/tvm_tuning) when tuning. A path is a store root.
        ``work_dir=`` (a store root) and ``database=`` (one database directory or MetaSchedule Database,
        as is) are deprecated spellings of the same thing (DeprecationWarning).
    tracker: ``(host, port, key)`` of an RPC tracker, needed to tune non-host targets.
    """
    tgt = tvm_target(target)
    timings: dict[str, float] = {}
    inputs = _as_tuple(example_inputs)
    prepared, db, db_dir, new_trials = _tuned(
        module, inputs, tgt, tune_trials=tune_trials, store=as_store(store, work_dir, database),
        tracker=tracker, tune_timeout_sec=tune_timeout_sec, timings=timings,
    )
    # ---- build
    t0 = time.perf_counter()
    all_funcs = _tir_func_names(prepared)
    tuned_funcs: set[str] = set()
    try:
        if db is not None:
            _ensure_tensor_intrinsics()
            with tgt, db, tvm.transform.PassContext(opt_level=3):
                applied = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(prepared)
            tuned_funcs = _scheduled_names(applied) - _scheduled_names(prepared)
            to_build = applied
        else:
            to_build = prepared
        with tgt, tvm.transform.PassContext(opt_level=3):
            ex = tvm.compile(to_build, tgt, relax_pipeline=_lower_pipeline(tgt))
    except Exception as exc:
        raise CompileError("build", tgt, f"{type(exc).__name__}: {exc}") from exc
    timings["build_s"] = time.perf_counter() - t0

    schedules = {name: ("tuned" if name in tuned_funcs else "default") for name in all_funcs}
    return CompiledModel(
        target=tgt,
        executable=ex,
        tuned=bool(tuned_funcs),
        schedules=schedules,
        tuning_trials=new_trials,
        database_dir=db_dir,
        input_info=_input_info(inputs),
        timings=timings,
    )
