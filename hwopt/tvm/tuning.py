"""MetaSchedule tuning into a persistent per-target JSON database: `TuningStore` says where the records live."""
from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import os
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from typing import Any

import tvm
import tvm_ffi

from ..fileio import atomic_write
from ..targets import probe
from .target import CompileError, _cross_cc, _is_bare_metal, _is_host_runnable, _short_target, \
    _target_slug, tvm_target

logger = logging.getLogger("hwopt.tvm")

TUNING_MANIFEST = "hwopt_tuning.json"
# Records tuned before block names were made canonical do not replay on canonical functions: a new layout
# gets a new directory under the target's.
DATABASE_LAYOUT = "canonical-blocks"
DEFAULT_ROOT = os.path.join(os.path.expanduser("~"), ".cache", "hwopt", "tvm_tuning")


@dataclass(frozen=True)
class TuningStore:
    """Where MetaSchedule tuning records live: one JSON database per target, under `root`
    (`root/<target-slug>/canonical-blocks/`), plus a manifest of the trials each task has had.

    `TuningStore()` is the shared store in ~/.cache/hwopt/tvm_tuning; `TuningStore(path)` another root;
    `TuningStore.at(directory)` one database directory used as is (for any target). MetaSchedule's
    database lookup ignores the target, hence one directory per target."""
    root: str = DEFAULT_ROOT
    exact: bool = False

    @classmethod
    def at(cls, directory: str | os.PathLike) -> "TuningStore":
        return cls(os.fspath(directory), exact=True)

    def directory(self, target: Any) -> str:
        """The database directory of `target` in this store."""
        if self.exact:
            return self.root
        return os.path.join(os.fspath(self.root), _target_slug(tvm_target(target)), DATABASE_LAYOUT)

    def exists(self, target: Any) -> bool:
        return os.path.isdir(self.directory(target))

    def open(self, target: Any):
        """The MetaSchedule database of `target` (created if missing), cached per process."""
        return _open_database(self.directory(target))


def database_dir(target: Any = "host", work_dir: str | os.PathLike | None = None) -> str:
    """``TuningStore(work_dir).directory(target)`` (the shared store when `work_dir` is None)."""
    return (TuningStore(os.fspath(work_dir)) if work_dir is not None else TuningStore()).directory(target)


# --------------------------------------------------------------------------------------------
# MetaSchedule
# --------------------------------------------------------------------------------------------


def _ensure_tensor_intrinsics() -> None:
    """Register the CPU tensor intrinsics without the ~30 s import of every intrinsic set.

    ``tvm.s_tir.tensor_intrin/__init__`` imports cuda, rocm, hexagon, metal, arm_cpu, x86 and
    riscv intrinsics; MetaSchedule's ``TuneContext`` imports the package. We pre-register the
    package object without running its ``__init__`` and import only the CPU intrinsics. The
    other submodules stay importable (``import tvm.s_tir.tensor_intrin.cuda``).
    """
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    import tvm.s_tir as s_tir

    if os.environ.get("HWOPT_TVM_FULL_TENSOR_INTRIN") == "1":
        importlib.import_module(name)
        return
    pkg_dir = os.path.join(os.path.dirname(s_tir.__file__), "tensor_intrin")
    pkg = types.ModuleType(name, "CPU-only tensor intrinsics (hwopt.tvm.tuning)")
    pkg.__path__ = [pkg_dir]
    pkg.__package__ = name
    pkg.__file__ = os.path.join(pkg_dir, "__init__.py")
    sys.modules[name] = pkg
    s_tir.tensor_intrin = pkg
    try:
        for sub in ("x86", "arm_cpu"):
            setattr(pkg, sub, importlib.import_module(f"{name}.{sub}"))
    except Exception:
        # fall back to the real package
        sys.modules.pop(name, None)
        for k in [k for k in sys.modules if k.startswith(name + ".")]:
            sys.modules.pop(k, None)
        importlib.import_module(name)


# MetaSchedule's builder runs these in fresh worker processes. They are defined in a module that is
# not importable, so cloudpickle sends them by value and a worker imports only tvm (not hwopt and,
# through hwopt/__init__, torch and the rest).
_MS_WORKER_SRC = """
def ms_build(mod, target, _params=None):
    # like meta_schedule.builder.default_build minus its ~30 s tvm.s_tir.tensor_intrin import
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.tirx.build(mod, target=target)


def ms_export_shared(mod, cc=None, root=None):
    # a shared library (cross-linked with cc) instead of the default tar, for RPC runners
    import os
    import tempfile

    path = os.path.join(tempfile.mkdtemp(prefix="hwopt_ms_", dir=root), "tvm_tmp_mod.so")
    if cc:
        mod.export_library(path, cc=cc)
    else:
        mod.export_library(path)
    return path


def ms_export_tar(mod, root=None):
    # MetaSchedule's default_export (a tar the local runner links), but inside `root`: the default
    # writes to a fresh system temp dir that nothing removes (the runner leaves the .tar and its .so)
    import os
    import tempfile
    from tvm.support.tar import tar

    path = os.path.join(tempfile.mkdtemp(prefix="hwopt_ms_", dir=root), "tvm_tmp_mod." + tar.output_format)
    mod.export_library(path, fcompile=tar)
    return path
"""
_ms_worker_ns: dict = {"__name__": "_hwopt_tvm_ms_worker"}
exec(compile(_MS_WORKER_SRC, "<hwopt.tvm.tuning ms worker>", "exec"), _ms_worker_ns)
_ms_build = _ms_worker_ns["ms_build"]
_ms_export_shared = _ms_worker_ns["ms_export_shared"]
_ms_export_tar = _ms_worker_ns["ms_export_tar"]


def _persistent_builder(max_workers: int, timeout_sec: float, f_build, f_export, recycle_after: int = 64):
    """A MetaSchedule builder that keeps its worker pool between batches.

    ``LocalBuilder`` starts a fresh process pool for every batch (a guard against a slow leak in
    long-lived workers). With a few trials per task each batch is one task's handful of candidates, so
    the ~2 s pool start-up was a third of the tuning time here; this pool is recycled every
    ``recycle_after`` batches instead."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder import local_builder
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    @derived_object
    class PersistentPoolBuilder(PyBuilder):
        def __init__(self):
            super().__init__()
            self._pool = None
            self._batches = 0

        def _get_pool(self):
            if self._pool is None or self._batches >= recycle_after:
                if self._pool is not None:
                    self._pool.shutdown()
                self._pool = PopenPoolExecutor(max_workers=max_workers, timeout=timeout_sec)
                self._batches = 0
            self._batches += 1
            return self._pool

        def build(self, build_inputs):
            pool = self._get_pool()
            work = [
                (f_build, f_export, b.mod, b.target, local_builder._serialize_params(b.params))
                for b in build_inputs
            ]
            results = []
            for r in pool.map_with_error_catching(lambda x: local_builder._worker_func(*x), work):
                if r.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(r.value, None))
                elif r.status == StatusKind.TIMEOUT:
                    results.append(BuilderResult(None, f"hwopt builder: timeout after {timeout_sec} s"))
                    self._batches = recycle_after  # a killed worker: start clean next batch
                else:
                    results.append(BuilderResult(None, f"hwopt builder: exception\n{r.value}"))
            return results

        def close(self):
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None

    return PersistentPoolBuilder()


@contextlib.contextmanager
def _foreign_log_handlers_detached():
    """MetaSchedule rebuilds its logging with ``logging.config.dictConfig``, naming the handlers
    already on its logger; a handler someone else attached (pytest's capture handlers, a user's
    unnamed handler) has no name and crashes it ('NoneType' has no attribute 'format'). Detach
    those while it configures, put them back after."""
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    foreign = [h for h in ms_logger.handlers if not (h.get_name() or "").startswith("tvm.")]
    for h in foreign:
        ms_logger.removeHandler(h)
    try:
        yield
    finally:
        for h in foreign:
            ms_logger.addHandler(h)


def _search_strategy(trials: int):
    """Evolutionary search sized to the trial budget.

    MetaSchedule's defaults (population 512, 50 fresh samples, 4 genetic rounds, all scored by the
    XGBoost model) are made for ~1000 trials per task; at a handful of trials the search around the
    measured samples cost ~10 s per conv task here while building and timing cost ~3 s."""
    from tvm.s_tir.meta_schedule.search_strategy import EvolutionarySearch

    population = int(min(512, max(32, 16 * trials)))
    return EvolutionarySearch(
        population_size=population,
        init_min_unmeasured=int(min(50, max(8, 2 * trials))),
        genetic_num_iters=4 if trials >= 32 else 2,
    )


def _workload_key(task_mod: tvm.IRModule, target: tvm.target.Target) -> str:
    return f"{tvm_ffi.structural_hash(task_mod) & 0xFFFFFFFFFFFFFFFF:016x}:{_target_slug(target)}"


_DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")
_open_databases: dict[str, tuple[tuple, Any]] = {}


def _database_signature(db_dir: str) -> tuple:
    sig = []
    for name in _DATABASE_FILES:
        try:
            st = os.stat(os.path.join(db_dir, name))
            sig.append((st.st_size, st.st_mtime_ns))
        except OSError:
            sig.append(None)
    return tuple(sig)


def _open_database(db_dir: str):
    """The JSON database of ``db_dir``, opened once per process while its files are unchanged.

    JSONDatabase parses every workload when it opens (a few thousand tuned workloads: a 50 MB file,
    ~20 s), and every compile with a database opened it again. Records this process adds go through
    the cached object (see ``_remember_database``); a change by another process reopens it."""
    from tvm.s_tir import meta_schedule as ms

    db_dir = os.path.abspath(db_dir)
    sig = _database_signature(db_dir)
    hit = _open_databases.get(db_dir)
    if hit is not None and hit[0] == sig:
        return hit[1]
    os.makedirs(db_dir, exist_ok=True)
    db = ms.database.JSONDatabase(work_dir=db_dir, module_equality="structural")
    _remember_database(db_dir, db)  # opening may create the files: sign them after
    return db


def _remember_database(db_dir: str, db) -> None:
    """``db`` is current for ``db_dir``'s files as they are now (after opening it, or after this process
    wrote records through it)."""
    db_dir = os.path.abspath(db_dir)
    _open_databases[db_dir] = (_database_signature(db_dir), db)


def _n_records(db, task_mod: tvm.IRModule) -> int:
    try:
        if not db.has_workload(task_mod):
            return 0
        return len(db.get_top_k(db.commit_workload(task_mod), 1 << 30))
    except Exception:
        return 0


def _read_manifest(db_dir: str) -> dict:
    try:
        with open(os.path.join(db_dir, TUNING_MANIFEST)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _write_manifest(db_dir: str, data: dict) -> None:
    atomic_write(os.path.join(db_dir, TUNING_MANIFEST), json.dumps(data, indent=1, sort_keys=True))


def _tune(
    prepared: tvm.IRModule,
    target: tvm.target.Target,
    db,
    db_dir: str | None,
    trials: int,
    tracker: tuple[str, int, str] | None,
    timeout_sec: float,
) -> int:
    """Tune the tasks of ``prepared`` that have fewer than ``trials`` trials recorded.

    Returns the number of new tuning records (measured trials)."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule import relax_integration as ri

    tasks = ri.extract_tasks(prepared, target)
    manifest = _read_manifest(db_dir) if db_dir else {}
    pending: dict[int, list] = {}
    for task in tasks:
        tmod = task.dispatched[0]
        key = _workload_key(tmod, target)
        done = max(int(manifest.get(key, {}).get("trials", 0)), _n_records(db, tmod))
        if done < trials:
            pending.setdefault(trials - done, []).append((task, key))
    n_pending = sum(len(g) for g in pending.values())
    logger.info(
        "tvm tune %s: %d task(s), %d already have %d trials in %s, tuning %d",
        _short_target(target), len(tasks), len(tasks) - n_pending, trials, db_dir, n_pending,
    )
    if not pending:
        return 0

    if not _is_host_runnable(target) or target.kind.name != "llvm":
        if target.kind.name != "llvm":
            raise CompileError("tune", target, "tuning is supported for llvm targets only")
        if _is_bare_metal(target):
            raise CompileError(
                "tune", target, "bare-metal targets cannot be measured (no TVM runtime/RPC)"
            )
        if tracker is None:
            raise CompileError(
                "tune",
                target,
                "tuning a non-host target needs measurements on the device: pass "
                "tracker=(tracker_host, tracker_port, device_key)",
            )
    _ensure_tensor_intrinsics()
    # every candidate the builder exports lands here, removed after tuning (MetaSchedule leaves them)
    artifacts = tempfile.TemporaryDirectory(prefix="hwopt_ms_build_")
    if tracker is not None:
        host, port, key = tracker
        runner = ms.runner.RPCRunner(
            rpc_config=ms.runner.RPCConfig(
                tracker_host=host, tracker_port=int(port), tracker_key=key,
                session_timeout_sec=int(timeout_sec),
            ),
            evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50),
            max_workers=1,
        )
        f_export = functools.partial(_ms_export_shared, cc=_cross_cc(target), root=artifacts.name)
    else:
        runner = ms.runner.LocalRunner(
            timeout_sec=timeout_sec,
            evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50),
        )
        f_export = functools.partial(_ms_export_tar, root=artifacts.name)  # a tar the local runner links
    builder = _persistent_builder(probe.physical_cores(), max(timeout_sec, 120.0), _ms_build, f_export)
    scratch = tempfile.TemporaryDirectory(prefix="hwopt_ms_logs_") if not db_dir else None  # removed below
    log_dir = db_dir or scratch.name
    before = sum(_n_records(db, t.dispatched[0]) for group in pending.values() for t, _ in group)
    # builder and runner workers start during tuning and inherit TMPDIR: whatever temp files they make
    # (TVM's export scratch in a worker killed at pool shutdown never runs its cleanup) land in `artifacts`
    tempfile.gettempdir()  # this process keeps its own temp dir (cached before TMPDIR changes)
    old_tmpdir = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = artifacts.name
    try:
        for budget, group in sorted(pending.items()):
            with _foreign_log_handlers_detached():
                contexts, weights = ri.extracted_tasks_to_tune_contexts(
                    [t for t, _ in group], work_dir=log_dir, num_threads=probe.physical_cores(),
                    strategy=_search_strategy(budget),
                )
            if not contexts:
                continue
            ms.tune.tune_tasks(
                tasks=contexts,
                task_weights=weights,
                work_dir=log_dir,
                max_trials_global=budget * len(contexts),
                max_trials_per_task=budget,
                num_trials_per_iter=min(64, budget),
                builder=builder,
                runner=runner,
                database=db,
            )
            for _, key in group:
                manifest[key] = {"trials": trials, "target": str(target), "time": time.time()}
    finally:
        builder.close()
        if old_tmpdir is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_tmpdir
        artifacts.cleanup()
        if scratch is not None:
            scratch.cleanup()
        if db_dir:
            _remember_database(db_dir, db)
    if db_dir:
        _write_manifest(db_dir, manifest)
    after = sum(_n_records(db, t.dispatched[0]) for group in pending.values() for t, _ in group)
    return max(0, after - before)
