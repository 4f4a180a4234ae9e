"""hwopt.tvm: compile torch ``nn.Module`` s (e.g. the output of ``hwopt.lower``) with Apache TVM 0.27.

Modules: ``target`` (target specs, host CPU probing, cross compilers), ``relax`` (torch -> Relax, pass
pipelines), ``tuning`` (MetaSchedule, ``TuningStore``), ``runtime`` (``CompiledModel``, RPC), ``compile``
(``compile_module`` / ``tune_module``: the one entrance optimize, export, measurement, NAS and calibration
use). Cortex-M firmware that runs a whole network is ``hwopt.firmware``. An int8 graph's module
(``hwopt.lower`` of a quantized graph: integer arithmetic in int64 tensors) compiles too, to the same
integers (``relax`` maps torch's shifts, which TVM 0.27's importer does not).

Flow::

    torch.export.export  ->  tvm.relax.frontend.torch.from_exported_program
        (weights bound as constants)  ->  relax.transform.DecomposeOpsForInference
    ->  [MetaSchedule tuning into a persistent JSON database]
    ->  tvm.compile (Relax VM executable)  ->  run / benchmark / export / RPC

Public API
----------
``tvm_target(spec)``                -> ``tvm.target.Target`` ("host"/"llvm", JSON dict or string)
``to_relax(module, example_inputs)`` -> ``tvm.IRModule``
``compile_module(module, example_inputs, target, *, tune_trials=0, store=None, tracker=None)``
-> ``CompiledModel``
``tune_module(module, example_inputs, target, *, tune_trials, ...)`` -> new trials (tunes, no build)
``TuningStore(root=~/.cache/hwopt/tvm_tuning)`` -> where tuning records live (``.directory(target)``;
``TuningStore.at(dir)``: one database directory as is); ``store=`` of ``compile_module``/``tune_module``
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
  C++ TVM runtime: TVM alone runs no whole model on a microcontroller (``hwopt.firmware`` does). So for
  bare-metal targets ``export(path)`` writes a tar with ``lib0.o`` (kernels), ``devc.o`` (the packed
  VM executable blob, for reference), ``vm_bytecode.txt`` (the call sequence a hand-written driver
  would follow) and ``README.txt``; ``run``/``benchmark`` raise ``NotImplementedError``.
* ``{"kind": "c"}``: runs on the host (the C source is compiled with the host compiler when the
  VM is created); ``export("x.tar")`` writes the C sources, any other suffix a host shared library.

Schedules: untuned builds use TVM's default lowering (unscheduled loop nests, ~40x slower than
tuned for convolutions). With ``tune_trials > 0`` each fused TIR function is tuned with
MetaSchedule into a JSON database under ``store.root/<target-slug>/canonical-blocks/``; tasks that already have
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

from .compile import as_store, compile_module, tune_module
from .relax import _SBLOCK_NAME, _canonical_block_names, _prepare, to_relax
from .runtime import CompiledModel, RemoteSession, load_exported, remote_session
from .target import CompileError, _host_spec, host_cpu, tvm_target
from .tuning import TuningStore, _open_database, database_dir

__all__ = [
    "CompileError",
    "CompiledModel",
    "RemoteSession",
    "TuningStore",
    "as_store",
    "compile_module",
    "database_dir",
    "host_cpu",
    "load_exported",
    "remote_session",
    "to_relax",
    "tune_module",
    "tvm_target",
]
