"""Runners: time a torch module on a runtime. `TorchRunner` (torch eager on this machine, one thread,
thread CPU time) and `TVMRunner` (compiled through hwopt.tvm, the deploy path: default
schedules or MetaSchedule-tuned, on this machine or over TVM RPC / an RPC tracker)."""
from __future__ import annotations

import json
import os
import time

import numpy as np

class TorchRunner:
    """torch eager on this machine with `threads` intra-op threads (None: torch's default), no_grad,
    minimum of 7 repeats of >= 20 ms.

    The default is one thread: on a small shared machine (2 cores, OMP_WAIT_POLICY=PASSIVE, another
    job on one core) every parallel region of a 2-thread run waits for the second thread to be woken
    and scheduled, which costs 20..300 µs per operator at random (an 8->8 channel 3x3 conv on 8x8:
    13 µs with one thread, 34..136 µs with two): such timings measure the machine's load, not the
    network."""
    runtime = "torch-eager"

    def __init__(self, threads: int | None = 1):
        self.threads = threads

    @property
    def schedules(self) -> str:
        n = self._threads()
        return (f"torch eager (ATen/oneDNN kernels), no_grad, {n} thread(s), this machine, "
                + ("thread CPU time" if n == 1 else "wall clock"))

    def _threads(self) -> int:
        import torch
        return int(self.threads or torch.get_num_threads())

    def ident(self) -> str:
        """The measurement cache's key prefix: torch version, threads, clock and the CPU (a timing from
        another CPU is not this machine's; probe.cpu_id)."""
        import torch

        from ..probe import cpu_id
        n = self._threads()
        return f"torch-{torch.__version__}-threads{n}" + ("-cputime" if n == 1 else "") + f"-cpu[{cpu_id()}]"

    def measure(self, module, example) -> float:
        import torch
        before = torch.get_num_threads()
        torch.set_num_threads(self._threads())
        try:
            return self._measure(module, example)
        finally:
            torch.set_num_threads(before)

    @property
    def clock(self):
        """One thread: the thread's CPU time (time.thread_time), which is what the wall clock shows
        on an idle machine but does not count time the thread waits for a core that another process
        holds; several threads: the wall clock."""
        return time.thread_time if self._threads() == 1 else time.perf_counter

    def _measure(self, module, example) -> float:
        import torch
        clock = self.clock
        with torch.no_grad():
            for _ in range(2):
                module(example)
            t0 = clock()
            module(example)
            one = clock() - t0
            number = max(1, min(200, int(0.02 / max(one, 1e-6))))
            times = []
            for _ in range(7):
                t0 = clock()
                for _ in range(number):
                    module(example)
                times.append((clock() - t0) / number)
        return float(np.min(times) * 1e3)  # the minimum: robust to other load on the machine


def set_tvm_threads(threads: int) -> None:
    """TVM runtime threads on this machine: TVM_NUM_THREADS (inherited by MetaSchedule's measuring
    subprocesses) and the thread pool of this process."""
    import tvm
    os.environ["TVM_NUM_THREADS"] = str(int(threads))
    tvm.get_global_func("runtime.config_threadpool")(1, int(threads))


class TVMRunner:
    """TVM through hwopt.tvm (default schedules, or MetaSchedule-tuned with `tune_trials` into
    the deploy path's shared database) for `target_dict`; timed by the VM's time_evaluator on this
    machine or over TVM RPC (`rpc=(host, port)` or `tracker=(host, port)` + `key`)."""

    def __init__(self, target_dict: dict, rpc: tuple | None = None, tracker: tuple | None = None, key: str | None = None,
                 tune_trials: int = 0, store=None, threads: int | None = None, work_dir: str | None = None):
        """store: the tuning store (a hwopt.tvm.TuningStore or its root directory; None: the shared one);
        `work_dir` is its old, deprecated name.
        threads: TVM runtime threads on this machine (None: TVM's default, one per physical core).
        Set through TVM_NUM_THREADS, which MetaSchedule's measuring subprocesses inherit too, and the
        runtime's thread pool of this process."""
        self.target_dict, self.rpc, self.tracker, self.key = dict(target_dict), rpc, tracker, key
        self.threads = int(threads) if threads else None
        if self.threads:
            if self.rpc or self.tracker:
                raise ValueError("TVMRunner: threads applies to this machine, not to an RPC device")
            set_tvm_threads(self.threads)
        self.tune_trials = int(tune_trials)
        if work_dir is not None:
            import warnings
            if store is not None:
                raise ValueError("TVMRunner: give store= only (work_dir= is its old name)")
            warnings.warn("TVMRunner(work_dir=) is deprecated: use store=", DeprecationWarning, stacklevel=2)
            store = work_dir
        self._store = store  # resolved on first use: importing TVM takes seconds
        self.runtime = "tvm-tuned" if self.tune_trials else "tvm-default"
        self.schedules = (f"TVM 0.27 Relax, MetaSchedule-tuned ({self.tune_trials} trials per workload)" if self.tune_trials
                          else "TVM 0.27 Relax default schedules (LegalizeOps TIR, no tuning: single-threaded loop nests)")
        self._session = None
        self._database = None  # the tuning database directory, once prepare() has tuned into it

    @property
    def store(self):
        """The tuning store (hwopt.tvm.TuningStore) this runner tunes into and builds from."""
        b = _backend()
        return b.as_store(self._store) if self._store is not None else b.TuningStore()

    def ident(self) -> str:
        import tvm
        return (f"tvm-{tvm.__version__}-{json.dumps(self.target_dict, sort_keys=True)}-tune{self.tune_trials}"
                + (f"-threads{self.threads}" if self.threads else ""))

    def build(self, module, example):
        """Compile through hwopt.tvm (the deploy path, so deploy builds reuse tuned schedules)."""
        backend = _backend()
        if self._database is not None:
            # tuned by prepare(): build with the records as they are. With tune_trials the backend
            # would re-extract the tasks and check each against the manifest, ~5 s per model, on
            # every timing pass.
            return backend.compile_module(module, (example,), self.target_dict,
                                          store=backend.TuningStore.at(self._database))
        tracker = (self.tracker[0], int(self.tracker[1]), self.key) if (self.tracker and self.tune_trials) else None
        return backend.compile_module(module, (example,), self.target_dict, tune_trials=self.tune_trials,
                                      store=self.store, tracker=tracker)

    def prepare(self, module, example) -> None:
        """Tune `module` into the shared database (no timing): with --tune, calibration tunes every
        workload first and times them all afterwards, so tuning can share the machine and the
        timing passes run back to back."""
        if self.tune_trials:
            backend = _backend()
            tracker = (self.tracker[0], int(self.tracker[1]), self.key) if self.tracker else None
            backend.tune_module(module, (example,), self.target_dict, tune_trials=self.tune_trials,
                                store=self.store, tracker=tracker)
            self._database = self.store.directory(self.target_dict)

    def _remote(self):
        if self._session is None:
            host, port = self.tracker or self.rpc
            self._session = _backend().remote_session(host, int(port), self.key if self.tracker else None,
                                                      session_timeout=0)
        return self._session

    def measure(self, module, example) -> float:
        return self.time_built(self.build(module, example), example)

    def time_built(self, ex, example) -> float:
        """Time what `build` returned (a hwopt.tvm.CompiledModel; a caller timing one model
        several times builds it once: LLVM code generation takes seconds per model, timing it tens of
        milliseconds). Minimum of 7 repeats of >= 20 ms after a warm-up (robust to other load)."""
        remote = self._remote() if (self.rpc or self.tracker) else None
        r = ex.benchmark(example.numpy(), repeat=7, number=1, min_repeat_ms=20, remote=remote)
        return float(r["min_ms"])


def _backend():
    """hwopt's TVM backend (imported on first use: TVM takes seconds to import). Names used:
    compile_module, tune_module, as_store, TuningStore, remote_session, CompiledModel.benchmark."""
    from hwopt import tvm
    return tvm


