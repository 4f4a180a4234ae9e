"""A compiled model and where it runs: the local Relax VM, an RPC session, or (bare metal) an exported tar."""
from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import tvm
from tvm import relax

from ..fileio import atomic_output
from .target import CompileError, _cross_cc, _is_bare_metal, _is_host_runnable, tvm_target

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
Produced by hwopt.tvm with Apache TVM 0.27 (no microTVM, no AOT executor, no C runtime). For an image that
runs the whole network on the board, export format="firmware" (hwopt.firmware).

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
