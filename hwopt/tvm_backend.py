"""Compile torch ``nn.Module`` s (e.g. the output of ``hwopt.lower``) with Apache TVM 0.27.

Flow::

    torch.export.export  ->  tvm.relax.frontend.torch.from_exported_program
        (weights bound as constants)  ->  relax.transform.DecomposeOpsForInference
    ->  [MetaSchedule tuning into a persistent JSON database]
    ->  tvm.compile (Relax VM executable)  ->  run / benchmark / export / RPC

Public API
----------
``tvm_target(spec)``                -> ``tvm.target.Target`` ("host"/"llvm", JSON dict or string)
``to_relax(module, example_inputs)`` -> ``tvm.IRModule``
``compile_module(module, example_inputs, target, *, tune_trials=0, work_dir=None,
database=None, tracker=None)`` -> ``CompiledModel``
``tune_module(module, example_inputs, target, *, tune_trials, ...)`` -> new trials (tunes, no build)
``database_dir(target, work_dir=None)`` -> the target's tuning-database directory (``database=`` of
``compile_module``: build with its records, no tuning check)
``CompiledModel.run(*inputs, remote=None)`` / ``.benchmark(*inputs, repeat, number,
min_repeat_ms, remote=None)`` / ``.export(path, cc=None)``
``load_exported(path)`` -> ``CompiledModel`` (host libraries only)
``remote_session(host, port, key=None)`` -> ``RemoteSession`` (direct RPC server, or an RPC
tracker when ``key`` is given); pass it as ``remote=`` to ``run``/``benchmark``.
``CompileError`` (a ``RuntimeError``) carries ``.stage`` (target/export/import/tune/build/
export-lib/rpc) and ``.target``.

What the targets get (checked with TVM 0.27.0.post1)
----------------------------------------------------
* Host x86 (``"host"``): full path; ``-mcpu`` is detected with
  ``tvm.target.codegen.llvm_get_system_cpu()``. Runs, benchmarks, exports a ``.so`` that loads back
  with ``tvm.runtime.load_module`` + ``relax.VirtualMachine``.
* Cortex-A53/A72/A76 and the Pixel-1 CPU (``{"kind": "llvm", "mtriple": "aarch64-linux-gnu",
  "mcpu": "cortex-a72"}``, ``"aarch64-linux-android"`` / ``"kryo"`` for the phone): cross-compiles
  fine. ``export`` links a shared library with ``aarch64-linux-gnu-gcc`` (Android: the NDK clang,
  found through ``$HWOPT_ANDROID_CC`` or ``aarch64-linux-android*-clang`` on ``PATH``) and needs the
  TVM runtime on the board; ``run``/``benchmark`` go through RPC (``remote=``), and tuning needs
  ``tracker=(host, port, key)`` so MetaSchedule can measure on the board.
* Cortex-M4/M7 (``{"kind": "llvm", "mtriple": "thumbv7em-none-eabi", "mcpu": "cortex-m7"}``):
  TVM 0.27 has no microTVM, no AOT executor, and no C runtime (CRT). What it *can* do: LLVM emits a
  32-bit ARM ELF relocatable object (Thumb-2, ``Tag_CPU_name`` = mcpu, FPU instructions for the
  mcpu; add ``"mfloat-abi": "hard"`` for the hard-float calling convention) holding the operator
  kernels as TVM-FFI packed functions (``__tvm_ffi_<name>(void*, TVMFFIAny* args, int32_t,
  TVMFFIAny*)``); undefined symbols: ``TVMFFIErrorSetRaisedFromCStrParts``, ``memset``,
  ``__aeabi_unwind_cpp_pr0`` (libgcc), plus the weak ``__TVMBackendAllocWorkspace`` /
  ``__TVMBackendFreeWorkspace`` function-pointer hooks to fill in. The ``{"kind": "c"}`` target
  emits the same kernels as C source that compiles with ``arm-none-eabi-gcc -mcpu=cortex-m7``
  given the TVM/TVM-FFI include dirs (undefined: ``TVMBackendAllocWorkspace``,
  ``TVMBackendFreeWorkspace``, ``TVMFFIErrorSetRaisedFromCStrParts``). The *graph* (call order,
  memory plan) and the *weights* live only in the Relax VM bytecode/constant pool, which needs the
  C++ TVM runtime: there is nothing that runs a whole model on a microcontroller. So for
  bare-metal targets ``export(path)`` writes a tar with ``lib0.o`` (kernels), ``devc.o`` (the packed
  VM executable blob, for reference), ``vm_bytecode.txt`` (the call sequence a hand-written driver
  would follow) and ``README.txt``; ``run``/``benchmark`` raise ``NotImplementedError``.
* ``{"kind": "c"}``: runs on the host (the C source is compiled with the host compiler when the
  VM is created); ``export("x.tar")`` writes the C sources, any other suffix a host shared library.

Schedules: untuned builds use TVM's default lowering (unscheduled loop nests, ~40x slower than
tuned for convolutions). With ``tune_trials > 0`` each fused TIR function is tuned with
MetaSchedule into a JSON database under ``work_dir/<target-slug>/canonical-blocks/``; tasks that already have
``tune_trials`` trials recorded (``hwopt_tuning.json`` bookkeeping, or as many records in the
database) are not tuned again. ``CompiledModel.schedules`` says, per fused function, whether the
tuned or the default schedule was used; ``.tuned`` is True when at least one tuned schedule was
applied and ``.tuning_trials`` counts trials measured by this call. MetaSchedule's database
lookup ignores the target, hence one directory per target; JSONDatabase appends without locking,
so only one process should tune into a directory at a time. Tuning a board through
``tracker=`` (``RPCRunner`` + cross-linked builder output) is implemented but untested here.

Tuning speed notes: ``import tvm.s_tir.tensor_intrin`` takes ~30 s (mostly CUDA/ROCm/Hexagon
intrinsics); MetaSchedule's ``TuneContext`` and the default ``LocalBuilder`` build function import
it. We import only the CPU (x86, arm_cpu) intrinsic modules (set ``HWOPT_TVM_FULL_TENSOR_INTRIN=1``
to import everything) and give the builder our own build function (no such import in the workers)
with a 120 s timeout. ``LocalBuilder`` also starts a new process pool for every batch and the
default evolutionary search (population 512, 4 genetic rounds) is sized for ~1000 trials per task; at
a few trials per task both dominated (~12 s per conv task here). hwopt keeps the builder's pool
alive (``_persistent_builder``) and sizes the search to the budget (``_search_strategy``): ~2 s per
task. ``tune_module`` tunes without building, so a caller can tune many models first and time
them later, when the machine is quiet.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import io
import json
import logging
import os
import platform
import re
import shutil
import sys
import tarfile
import tempfile
import time
import types
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import tvm
import tvm_ffi
from tvm import relax

from .errors import HwoptError
from .fileio import atomic_output, atomic_write

__all__ = [
    "CompileError",
    "CompiledModel",
    "RemoteSession",
    "compile_module",
    "database_dir",
    "host_cpu",
    "load_exported",
    "remote_session",
    "to_relax",
    "tune_module",
    "tvm_target",
]

logger = logging.getLogger(__name__)

TUNING_MANIFEST = "hwopt_tuning.json"
# Records tuned before block names were made canonical do not replay on canonical functions: a new layout
# gets a new directory under the target's.
DATABASE_LAYOUT = "canonical-blocks"


class CompileError(HwoptError, RuntimeError):
    """A TVM compilation step failed.

    ``stage`` is one of ``target``, ``export`` (torch.export), ``import`` (torch -> Relax),
    ``tune``, ``build``, ``export-lib`` (writing the deployable library), ``rpc``.
    """

    def __init__(self, stage: str, target: Any, message: str):
        self.stage = stage
        self.target = _short_target(target)
        super().__init__(f"TVM {stage} stage failed for target {self.target}: {message}")


def _short_target(target: Any) -> str:
    """kind/mtriple/mcpu of a target (the full JSON lists dozens of feature flags)."""
    if target is None:
        return "<none>"
    if isinstance(target, tvm.target.Target):
        d = {"kind": target.kind.name}
        for k in ("mtriple", "mcpu", "num-cores"):
            v = target.attrs.get(k, None) if hasattr(target.attrs, "get") else None
            if v is not None:
                d[k] = v if isinstance(v, int) else str(v)
        return json.dumps(d)
    if isinstance(target, dict):
        return json.dumps(target, default=str)
    return str(target)


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------


def host_cpu() -> str:
    """LLVM name of the host CPU (e.g. ``znver4``, ``skylake-avx512``)."""
    return str(tvm.target.codegen.llvm_get_system_cpu())


def _host_arch() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def _physical_cores() -> int:
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
        if n:
            return int(n)
    except Exception:  # pragma: no cover - psutil missing/broken
        pass
    return os.cpu_count() or 1


def _host_spec() -> dict:
    return {"kind": "llvm", "mcpu": host_cpu(), "num-cores": _physical_cores()}


def tvm_target(spec: dict | str | tvm.target.Target) -> tvm.target.Target:
    """Make a ``tvm.target.Target``.

    * ``"host"``, ``"llvm"``, ``"native"`` or ``{"kind": "llvm"}`` (no ``mtriple``/``mcpu``): the
      host CPU, with ``mcpu`` detected and ``num-cores`` set to the physical core count.
    * a dict in TVM 0.27's JSON form, e.g. ``{"kind": "llvm", "mtriple": "aarch64-linux-gnu",
      "mcpu": "cortex-a72"}`` (a JSON string of it is accepted too).
    * any other string is passed to ``tvm.target.Target`` (e.g. ``"c"`` or a target tag).
    """
    if isinstance(spec, tvm.target.Target):
        return spec
    try:
        if isinstance(spec, str):
            s = spec.strip()
            if s in ("host", "llvm", "native"):
                return tvm.target.Target(_host_spec())
            if s.startswith("{"):
                spec = json.loads(s)
            else:
                return tvm.target.Target(s)
        if isinstance(spec, dict):
            d = dict(spec)
            if d.get("kind") == "llvm" and "mtriple" not in d and "mcpu" not in d:
                host = _host_spec()
                for k, v in host.items():
                    d.setdefault(k, v)
            return tvm.target.Target(d)
    except CompileError:
        raise
    except Exception as exc:  # TVMError, ValueError, JSONDecodeError
        raise CompileError("target", spec, f"invalid target spec: {exc}") from exc
    raise CompileError("target", spec, f"unsupported target spec type {type(spec).__name__}")


def _attr(target: tvm.target.Target, key: str, default=None):
    try:
        v = target.attrs.get(key, None)
    except Exception:
        v = None
    return default if v is None else v


def _triple(target: tvm.target.Target) -> str:
    t = _attr(target, "mtriple", "")
    return str(t) if t else ""


def _is_bare_metal(target: tvm.target.Target) -> bool:
    """Microcontroller targets: no OS, so no dynamic loader and no TVM runtime."""
    if target.kind.name != "llvm":
        return False
    t = _triple(target)
    return t.startswith(("thumb", "armv6m", "armv7m", "armv7em", "armv8m")) or "-none" in t


def _is_host_runnable(target: tvm.target.Target) -> bool:
    kind = target.kind.name
    if kind == "c":
        return True
    if kind != "llvm":
        return False
    t = _triple(target)
    if not t:
        return True
    if _is_bare_metal(target):
        return False
    arch = t.split("-")[0]
    return arch == _host_arch() and "android" not in t


def _target_slug(target: tvm.target.Target) -> str:
    """Stable directory name for a target's tuning database."""
    parts = [target.kind.name, _triple(target), str(_attr(target, "mcpu", "") or "")]
    text = "-".join(p for p in parts if p)
    text = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
    h = hashlib.sha1(str(target).encode()).hexdigest()[:8]
    return f"{text}-{h}"


def _cross_cc(target: tvm.target.Target) -> str | None:
    """Compiler/linker for the target's shared library; None means the host default."""
    if target.kind.name == "c" or _is_host_runnable(target):
        return None
    t = _triple(target)
    if "android" in t:
        cc = os.environ.get("HWOPT_ANDROID_CC")
        if cc:
            if shutil.which(cc):
                return cc
            raise CompileError("export-lib", target, f"$HWOPT_ANDROID_CC={cc!r} not found")
        for api in range(35, 20, -1):
            cand = f"{t.split('-')[0]}-linux-android{api}-clang"
            if shutil.which(cand):
                return cand
        raise CompileError(
            "export-lib",
            target,
            "no Android NDK compiler found (looked for $HWOPT_ANDROID_CC and "
            "aarch64-linux-android<API>-clang on PATH); install the NDK or pass cc=",
        )
    arch = t.split("-")[0]
    if arch in ("aarch64", "arm64"):
        cc = "aarch64-linux-gnu-gcc"
        pkg = "gcc-aarch64-linux-gnu"
    elif arch.startswith("arm"):
        cc = "arm-linux-gnueabihf-gcc"
        pkg = "gcc-arm-linux-gnueabihf"
    else:
        cc = f"{arch}-linux-gnu-gcc"
        pkg = f"gcc-{arch.replace('_', '-')}-linux-gnu"
    if shutil.which(cc) is None:
        raise CompileError(
            "export-lib",
            target,
            f"cross compiler {cc!r} not found on PATH (apt-get install {pkg}, or pass cc=)",
        )
    return cc


# --------------------------------------------------------------------------------------------
# torch -> Relax
# --------------------------------------------------------------------------------------------


def _as_tuple(example_inputs) -> tuple:
    if isinstance(example_inputs, (list, tuple)):
        return tuple(example_inputs)
    return (example_inputs,)


def to_relax(module, example_inputs, *, target: Any = None) -> tvm.IRModule:
    """Lift a torch module (eval mode) into a Relax ``IRModule`` with weights as constants.

    ``target`` is only used for error messages.
    """
    import torch

    inputs = tuple(
        torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x
        for x in _as_tuple(example_inputs)
    )
    was_training = bool(getattr(module, "training", False))
    module.eval()
    try:
        try:
            with torch.no_grad():
                ep = torch.export.export(module, inputs)
        except Exception as exc:
            raise CompileError("export", target, f"torch.export.export failed: {exc}") from exc
        try:
            from tvm.relax.frontend.torch import from_exported_program

            mod = from_exported_program(
                ep, keep_params_as_input=False, unwrap_unit_return_tuple=True
            )
            mod = relax.transform.DecomposeOpsForInference()(mod)
            mod = relax.transform.CanonicalizeBindings()(mod)
        except Exception as exc:
            raise CompileError(
                "import", target, f"from_exported_program failed: {type(exc).__name__}: {exc}"
            ) from exc
    finally:
        if was_training:
            module.train()
    return mod


# --------------------------------------------------------------------------------------------
# Pass pipelines
# --------------------------------------------------------------------------------------------


def _cpu_backend():
    from tvm.relax.backend.cpu_generic import pipeline

    return pipeline


def _fuse_passes(target: tvm.target.Target) -> list:
    """Legalize + fuse: the same preparation for task extraction and for the final build, so
    that the MetaSchedule database keys match."""
    cg = _cpu_backend()
    return list(cg.library_dispatch_passes(target)) + list(cg.legalize_passes(target))


def _prepare(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    with target, tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential(_fuse_passes(target))(mod)


_SBLOCK_NAME = re.compile(r'T\.sblock\("([^"]+)"\)')


def _canonical_block_names(mod: tvm.IRModule) -> tvm.IRModule:
    """Every PrimFunc's blocks renamed b0, b1, ... in program order ("root" kept).

    MetaSchedule finds a workload in its database by structural equality, which ignores block names,
    but replays the stored trace by block name, and LegalizeOps names some blocks after Relax variables
    (a mean's reduction block is "lv32_red"). So a record tuned in one model matched the same workload
    in another and then failed to replay (ScheduleError). TVM 0.27 exposes no TIR mutator to Python,
    hence the round trip through TVMScript, checked structurally equal (~70 ms per function)."""
    import tvm.script

    out = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            out[gv] = func
            continue
        names: dict[str, str] = {}

        def rename(m: re.Match) -> str:
            old = m.group(1)
            if old == "root":
                return m.group(0)
            return f'T.sblock("{names.setdefault(old, f"b{len(names)}")}")'

        text = func.script()
        renamed = _SBLOCK_NAME.sub(rename, text)
        if renamed == text:
            out[gv] = func
            continue
        new = tvm.script.from_source(renamed)
        tvm.ir.assert_structural_equal(func, new)
        out[gv] = new.with_attrs(dict(func.attrs)) if func.attrs is not None else new
    return tvm.IRModule(out, attrs=mod.attrs)


def _lower_pipeline(target: tvm.target.Target):
    """The Relax VM lowering after ``_prepare`` (and after MetaScheduleApplyDatabase)."""
    cg = _cpu_backend()
    lower = list(cg.dataflow_lower_passes(target)) + list(cg.finalize_passes(target))

    @tvm.transform.module_pass(opt_level=0, name="hwopt_relax_lower")
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            return tvm.transform.Sequential(lower)(mod)

    return _pipeline


def _tir_func_names(mod: tvm.IRModule) -> list[str]:
    return [gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]


def _scheduled_names(mod: tvm.IRModule) -> set[str]:
    out = set()
    for gv, f in mod.functions.items():
        if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None:
            if any("is_scheduled" in str(k) and bool(f.attrs[k]) for k in f.attrs.keys()):
                out.add(gv.name_hint)
    return out


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
    pkg = types.ModuleType(name, "CPU-only tensor intrinsics (hwopt.tvm_backend)")
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


def ms_export_shared(mod, cc=None):
    # a shared library (cross-linked with cc) instead of the default tar, for RPC runners
    import os
    import tempfile

    path = os.path.join(tempfile.mkdtemp(prefix="hwopt_ms_"), "tvm_tmp_mod.so")
    if cc:
        mod.export_library(path, cc=cc)
    else:
        mod.export_library(path)
    return path
"""
_ms_worker_ns: dict = {"__name__": "_hwopt_tvm_ms_worker"}
exec(compile(_MS_WORKER_SRC, "<hwopt.tvm_backend ms worker>", "exec"), _ms_worker_ns)
_ms_build = _ms_worker_ns["ms_build"]
_ms_export_shared = _ms_worker_ns["ms_export_shared"]


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
        f_export = functools.partial(_ms_export_shared, cc=_cross_cc(target))
    else:
        runner = ms.runner.LocalRunner(
            timeout_sec=timeout_sec,
            evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50),
        )
        f_export = None  # default: tar of the object, linked by the local runner
    builder = _persistent_builder(_physical_cores(), max(timeout_sec, 120.0), _ms_build, f_export)
    log_dir = db_dir or tempfile.mkdtemp(prefix="hwopt_ms_logs_")
    before = sum(_n_records(db, t.dispatched[0]) for group in pending.values() for t, _ in group)
    try:
        for budget, group in sorted(pending.items()):
            with _foreign_log_handlers_detached():
                contexts, weights = ri.extracted_tasks_to_tune_contexts(
                    [t for t, _ in group], work_dir=log_dir, num_threads=_physical_cores(),
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
        if db_dir:
            _remember_database(db_dir, db)
    if db_dir:
        _write_manifest(db_dir, manifest)
    after = sum(_n_records(db, t.dispatched[0]) for group in pending.values() for t, _ in group)
    return max(0, after - before)


# --------------------------------------------------------------------------------------------
# Compiled model
# --------------------------------------------------------------------------------------------


def _to_numpy_tree(value):
    if isinstance(value, (tuple, list)) or type(value).__name__ == "Array":
        return tuple(_to_numpy_tree(v) for v in value)
    if hasattr(value, "numpy"):
        return value.numpy()
    return value


def _input_arrays(inputs: Sequence) -> list[np.ndarray]:
    out = []
    for x in inputs:
        if hasattr(x, "detach"):  # torch.Tensor
            x = x.detach().cpu().contiguous().numpy()
        out.append(np.ascontiguousarray(x))
    return out


@dataclass
class CompiledModel:
    """A Relax VM executable for one target, plus how it was made."""

    target: tvm.target.Target
    executable: Any  # tvm.relax.VMExecutable (None when loaded from a library)
    tuned: bool = False
    schedules: dict = field(default_factory=dict)  # fused TIR function -> "tuned" | "default"
    tuning_trials: int = 0
    database_dir: str | None = None
    input_info: list = field(default_factory=list)  # [(shape, dtype)]
    timings: dict = field(default_factory=dict)  # stage -> seconds
    _runtime_module: Any = field(default=None, repr=False)
    _vm: Any = field(default=None, repr=False)

    # ---- properties
    @property
    def host_runnable(self) -> bool:
        return _is_host_runnable(self.target)

    @property
    def bare_metal(self) -> bool:
        return _is_bare_metal(self.target)

    # ---- local execution
    def _check_local(self) -> None:
        if self.bare_metal:
            raise NotImplementedError(
                f"target {self.target} is a bare-metal microcontroller: TVM 0.27 has no runtime "
                "for it (no microTVM/AOT/CRT); use export() to get the kernel object"
            )
        if not self.host_runnable:
            raise CompileError(
                "rpc", self.target,
                "this model was compiled for another machine; pass remote=remote_session(...)",
            )

    def _local_vm(self):
        self._check_local()
        if self._vm is None:
            if self._runtime_module is None:
                if self.target.kind.name == "c":  # C source: compiled by the host cc here
                    self._runtime_module = self.executable.jit(options=["-O2"])
                else:
                    self._runtime_module = self.executable.jit()
            self._vm = relax.VirtualMachine(self._runtime_module, tvm.cpu(0))
        return self._vm, tvm.cpu(0)

    def _vm_and_device(self, remote):
        if remote is None:
            return self._local_vm()
        return remote._vm_for(self)

    def _default_inputs(self) -> list[np.ndarray]:
        if not self.input_info:
            raise ValueError("no inputs given and no example input shapes recorded")
        rng = np.random.default_rng(0)
        return [rng.standard_normal(shape).astype(dtype) for shape, dtype in self.input_info]

    def _set_input(self, vm, dev, inputs):
        arrays = _input_arrays(inputs) if inputs else self._default_inputs()
        args = [tvm.runtime.tensor(a, dev) for a in arrays]
        vm.set_input("main", *args)
        return args

    def run(self, *inputs, remote: "RemoteSession | None" = None):
        """Run the model; returns a numpy array (or a tuple for several outputs)."""
        vm, dev = self._vm_and_device(remote)
        self._set_input(vm, dev, inputs)
        vm.invoke_stateful("main")
        out = _to_numpy_tree(vm.get_outputs("main"))
        if isinstance(out, tuple) and len(out) == 1:
            return out[0]
        return out

    __call__ = run

    def benchmark(
        self,
        *inputs,
        repeat: int = 10,
        number: int = 1,
        min_repeat_ms: int = 50,
        remote: "RemoteSession | None" = None,
    ) -> dict:
        """Time ``main`` with the VM's ``time_evaluator`` (locally or over RPC).

        ``number`` runs are averaged per repeat (raised automatically until a repeat lasts
        ``min_repeat_ms``); statistics are over the ``repeat`` averages, in milliseconds.
        Inputs default to random data of the example-input shapes."""
        vm, dev = self._vm_and_device(remote)
        self._set_input(vm, dev, inputs)
        ftimer = vm.time_evaluator(
            "invoke_stateful", dev, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms
        )
        res = ftimer("main")
        results_ms = [float(r) * 1e3 for r in res.results]
        return {
            "median_ms": float(np.median(results_ms)),
            "mean_ms": float(np.mean(results_ms)),
            "std_ms": float(np.std(results_ms)),
            "min_ms": float(np.min(results_ms)),
            "max_ms": float(np.max(results_ms)),
            "repeat": repeat,
            "number": number,
            "results_ms": results_ms,
            "remote": remote is not None,
            "target": str(self.target),
            "tuned": self.tuned,
        }

    # ---- export
    def export(self, path: str | os.PathLike, *, cc: str | None = None) -> str:
        """Write the deployable artifact atomically (temp file in the same dir + ``os.replace``).

        * host / aarch64 Linux / Android: a shared library for ``tvm.runtime.load_module``
          (cross-linked with ``cc``, default ``aarch64-linux-gnu-gcc`` / the NDK clang).
        * bare-metal (Cortex-M): a tar with the kernel object, see the module docstring.
        * ``{"kind": "c"}``: ``*.tar`` -> C sources; otherwise a host shared library.
        """
        if self.executable is None:
            raise CompileError("export-lib", self.target, "model was loaded from a library")
        path = os.fspath(path)
        d = os.path.dirname(os.path.abspath(path)) or "."
        os.makedirs(d, exist_ok=True)
        base = os.path.basename(path)
        suffix = ".tar" if base.endswith(".tar") else os.path.splitext(base)[1] or ".so"
        try:
            with atomic_output(path, suffix=suffix) as tmp:
                if self.bare_metal:
                    self._export_bare_metal(tmp)
                elif self.target.kind.name == "c" and suffix == ".tar":
                    self.executable.export_library(tmp)  # tar fcompile: C sources
                else:
                    if cc is None:
                        cc = _cross_cc(self.target)
                    if cc is not None and shutil.which(cc) is None:
                        raise CompileError("export-lib", self.target, f"compiler {cc!r} not found")
                    kwargs = {"cc": cc} if cc else {}
                    if self.target.kind.name == "c":
                        kwargs["options"] = ["-O2"]
                    self.executable.export_library(tmp, **kwargs)
        except CompileError:
            raise
        except Exception as exc:
            raise CompileError("export-lib", self.target, f"{type(exc).__name__}: {exc}") from exc
        return path

    def _export_bare_metal(self, tar_path: str) -> None:
        with tempfile.TemporaryDirectory(prefix="hwopt_mcu_") as work:
            objs = os.path.join(work, "objs.tar")
            self.executable.export_library(objs)  # tvm.support.tar: lib0.o + devc.o
            with tarfile.open(objs) as src, tarfile.open(tar_path, "w") as dst:
                for member in src.getmembers():
                    f = src.extractfile(member)
                    dst.addfile(member, f)
                texts = {
                    "vm_bytecode.txt": self.executable.as_text(),
                    "README.txt": _MCU_README.format(target=self.target),
                }
                for name, text in texts.items():
                    data = text.encode()
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    info.mtime = int(time.time())
                    info.mode = 0o644
                    dst.addfile(info, io.BytesIO(data))


_MCU_README = """\
Target: {target}
Produced by hwopt.tvm_backend with Apache TVM 0.27 (no microTVM, no AOT executor, no C runtime).

lib0.o  ELF relocatable with the operator kernels, one TVM-FFI packed function per fused
        operator: int32_t __tvm_ffi_<name>(void* self, TVMFFIAny* args, int32_t nargs,
        TVMFFIAny* result); the arguments are DLTensor pointers (inputs then outputs).
        Undefined symbols to provide: TVMFFIErrorSetRaisedFromCStrParts, memset,
        __aeabi_unwind_cpp_pr0 (libgcc); set the weak __TVMBackendAllocWorkspace /
        __TVMBackendFreeWorkspace function pointers if a kernel needs workspace.
devc.o  the Relax VM executable (bytecode + constant pool holding the weights) packed as a
        blob; only the C++ TVM runtime can read it, so it is here for reference.
vm_bytecode.txt  the call sequence (allocations and kernel calls) of main(); a hand-written
        driver must follow it and provide the weights itself.
Nothing here runs a whole model on a microcontroller by itself.
"""


def load_exported(path: str | os.PathLike, target: Any = "host") -> CompiledModel:
    """Load a host shared library written by ``CompiledModel.export``."""
    tgt = tvm_target(target)
    try:
        lib = tvm.runtime.load_module(os.fspath(path))
    except Exception as exc:
        raise CompileError("export-lib", tgt, f"cannot load {path}: {exc}") from exc
    return CompiledModel(target=tgt, executable=None, _runtime_module=lib)


# --------------------------------------------------------------------------------------------
# RPC
# --------------------------------------------------------------------------------------------


class RemoteSession:
    """An RPC session (direct server or via tracker) on which CompiledModels can run."""

    def __init__(self, session, description: str = ""):
        self.session = session
        self.description = description
        self.device = session.cpu(0)
        self._vms: dict[int, Any] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="hwopt_rpc_")
        self._counter = 0

    def load(self, model: CompiledModel):
        """Export ``model`` for its target, upload it, load it remotely; returns the module."""
        if model.executable is None:
            raise CompileError("rpc", model.target, "model has no executable to upload")
        if model.bare_metal:
            raise NotImplementedError(f"bare-metal target {model.target} cannot run over RPC")
        self._counter += 1
        name = f"hwopt_model_{os.getpid()}_{self._counter}.so"
        local = model.export(os.path.join(self._tmp.name, name))
        try:
            self.session.upload(local)
            return self.session.load_module(name)
        except Exception as exc:
            raise CompileError("rpc", model.target, f"upload/load on {self.description}: {exc}") from exc

    def _vm_for(self, model: CompiledModel):
        key = id(model)
        if key not in self._vms:
            rlib = self.load(model)
            try:
                self._vms[key] = (model, relax.VirtualMachine(rlib, self.device))
            except Exception as exc:
                raise CompileError("rpc", model.target, f"remote VM creation: {exc}") from exc
        return self._vms[key][1], self.device

    def close(self) -> None:
        self._vms.clear()
        self.session = None
        self._tmp.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def remote_session(
    host: str,
    port: int,
    key: str | None = None,
    *,
    session_timeout: int = 0,
    priority: int = 1,
) -> RemoteSession:
    """Connect to an RPC server (``key=None``) or request a device ``key`` from an RPC tracker."""
    from tvm import rpc

    try:
        if key is None:
            sess = rpc.connect(host, int(port), session_timeout=session_timeout)
            desc = f"rpc://{host}:{port}"
        else:
            tracker = rpc.connect_tracker(host, int(port))
            sess = tracker.request(key, priority=priority, session_timeout=session_timeout)
            desc = f"tracker://{host}:{port}/{key}"
    except Exception as exc:
        raise CompileError("rpc", None, f"cannot connect to {host}:{port} ({key=}): {exc}") from exc
    return RemoteSession(sess, desc)


# --------------------------------------------------------------------------------------------
# compile_module
# --------------------------------------------------------------------------------------------


def _default_work_dir() -> str:
    return os.environ.get(
        "HWOPT_TVM_TUNING_DIR", os.path.join(os.path.expanduser("~"), ".cache", "hwopt", "tvm_tuning")
    )


def database_dir(target: dict | str | tvm.target.Target = "host", work_dir: str | os.PathLike | None = None) -> str:
    """The directory of ``target``'s shared tuning database under ``work_dir`` (default: as for
    :func:`compile_module`). Pass it as ``database=`` to build with the records already there and
    without the tuning check (re-extracting the tasks and comparing them with the manifest)."""
    root = os.fspath(work_dir) if work_dir is not None else _default_work_dir()
    return os.path.join(root, _target_slug(tvm_target(target)), DATABASE_LAYOUT)


def _tuned(
    module,
    inputs: tuple,
    tgt: tvm.target.Target,
    *,
    tune_trials: int,
    work_dir,
    database,
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

    db = None
    db_dir = None
    if database is not None:
        if isinstance(database, (str, os.PathLike)):
            db_dir = os.fspath(database)
            db = _open_database(db_dir)
        else:
            db = database
    elif work_dir is not None or tune_trials > 0:
        db_dir = database_dir(tgt, work_dir)
        if tune_trials > 0 or os.path.isdir(db_dir):
            db = _open_database(db_dir)

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


def tune_module(
    module,
    example_inputs,
    target: dict | str | tvm.target.Target = "host",
    *,
    tune_trials: int,
    work_dir: str | os.PathLike | None = None,
    database: Any = None,
    tracker: tuple[str, int, str] | None = None,
    tune_timeout_sec: float = 60.0,
) -> int:
    """Tune ``module``'s fused operators into the shared database without building it.

    Lets a caller tune many models first (where load on the machine does not matter) and time them
    afterwards. Arguments as for :func:`compile_module`; returns the number of new trials."""
    if tune_trials <= 0:
        raise ValueError(f"tune_module: tune_trials must be positive, got {tune_trials}")
    tgt = tvm_target(target)
    _, _, _, new_trials = _tuned(
        module, _as_tuple(example_inputs), tgt, tune_trials=tune_trials, work_dir=work_dir,
        database=database, tracker=tracker, tune_timeout_sec=tune_timeout_sec, timings={},
    )
    return new_trials


def compile_module(
    module,
    example_inputs,
    target: dict | str | tvm.target.Target = "host",
    *,
    tune_trials: int = 0,
    work_dir: str | os.PathLike | None = None,
    database: Any = None,
    tracker: tuple[str, int, str] | None = None,
    tune_timeout_sec: float = 60.0,
) -> CompiledModel:
    """Compile ``module`` (a torch ``nn.Module``, or an already-imported Relax ``IRModule``).

    tune_trials: MetaSchedule trials per fused operator (0 = no tuning). Tasks that already have
        that many trials in the database are not tuned again.
    work_dir: root of the tuning databases; the JSON database for this target lives in
        ``work_dir/<target-slug>/``. Defaults to ``$HWOPT_TVM_TUNING_DIR`` or
        ``~/.cache/hwopt/tvm_tuning`` when tuning. When given without tuning, existing records
        are applied.
    database: a MetaSchedule ``Database`` or a database directory to use as is (instead of
        ``work_dir``).
    tracker: ``(host, port, key)`` of an RPC tracker, needed to tune non-host targets.
    """
    tgt = tvm_target(target)
    timings: dict[str, float] = {}
    inputs = _as_tuple(example_inputs)
    prepared, db, db_dir, new_trials = _tuned(
        module, inputs, tgt, tune_trials=tune_trials, work_dir=work_dir, database=database,
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
