"""Torch-Pruning's column of bench/zoo.py: each model pruned in a worker process that a timeout and a memory
cap can stop, so one model that Torch-Pruning cannot finish costs that model's row, not the sweep.

What Torch-Pruning is asked to do (the same as hwopt's ChannelPrune(criterion="l1", ratio, round_to=1)):
`tp.pruner.MagnitudePruner(model, x, importance=MagnitudeImportance(p=1), pruning_ratio=ratio,
global_pruning=False, ignored_layers=<the layers producing the model's 100 logits>)`, one `step()`, on the
same model (zoo.build: seeded random weights, eval mode) and the same input. Its outcome is "pruned" when
the pruned model runs, its output keeps the original shape and is finite, and it has fewer parameters;
otherwise the first thing that went wrong, as its user sees it: the exception's class and first line, or
that it did not finish within the timeout / the memory cap (where it was when stopped is not knowable
from outside, so the row says only that).

Why ~40 s per model and 9.5 GB before (profiled here with py-spy, Torch-Pruning alone in a loop): on the first
18 timm CNNs its own time (pruner + step) was 0.4-3 s at 96x96 (in the sweep below, under load, mostly
1-10 s wall; densenet121 77-100 s, alexnet 38 s), and the in-process bench's repeated work (a second build and a deepcopy per model) and
per-model leak (RSS 415 -> 618 MB over 18 CNNs) were small. The time and memory went to a few models where
Torch-Pruning's dependency grouping (`DependencyGraph.get_all_groups` -> `get_pruning_group` ->
`_FlattenIndexMapping`, pure Python) expands every channel index through a flatten/reshape into one Python index
object per flattened element (stride = the flattened extent), for every group: timm's
mobilenetv4_hybrid_medium (feature maps reshaped to attention tokens) ran > 140 s of CPU and grew past
3.6 GB with no end in sight before it was stopped, and with no limit one such model holds the sweep for as
long as it runs. The rest is load: at nice 15 on 2 cores shared by 6 sessions, wall time is 3-6x CPU time.
The input size is the same for both tools (zoo.build: 96, 224 where a model's attention grid demands it).

So: a worker, restarted after a stop and whenever its memory after a model exceeds `restart_mb`, so the
sweep's time per model and memory are bounded; the timeout counts CPU time, so a starved worker is not
charged for waiting, with a wall-time backstop whose rows say both times.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import re
import time
import traceback
import warnings
from dataclasses import asdict, dataclass

PRUNED = "pruned"


@dataclass
class TPOutcome:
    result: str  # "pruned", "unchanged", "nonfinite", "output shape", "ModelError", an exception class,
    #              "timeout", "memory" or "crashed"
    detail: str = ""  # the exception's first line, or what stopped the worker
    seconds: float = math.nan  # Torch-Pruning's own time: pruner construction + step
    params: tuple[int, int] = (0, 0)

    @property
    def pruned(self) -> bool:
        return self.result == PRUNED

    def stopped_by_wall(self, timeout: float) -> bool:
        """Stopped by the wall-time backstop before it had `timeout` s of CPU time: the machine was starved,
        so the row says less than one measured again with more wall time."""
        found = re.search(r"after (\d+) s of CPU time", self.detail) if self.result == "timeout" else None
        return bool(found) and int(found.group(1)) < timeout

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TPOutcome":
        return cls(d["result"], d.get("detail", ""), d.get("seconds", math.nan), tuple(d.get("params", (0, 0))))


def version() -> str | None:
    """The installed torch-pruning distribution's version (its module's __version__ lags the wheel), or None."""
    try:
        from importlib.metadata import PackageNotFoundError, version as dist_version
        try:
            return dist_version("torch-pruning")
        except PackageNotFoundError:
            return None
    except ImportError:
        return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else ""


def prune_one(tp, name: str, ratio: float, size: int, started=lambda: None) -> TPOutcome:
    """Torch-Pruning on one zoo model, in this process (the worker calls it; `started()` marks the moment the
    model is built and Torch-Pruning starts, from which the timeout counts)."""
    import torch

    from hwopt.testing import zoo
    try:
        model, x = zoo.build(name, size)
        with torch.no_grad():
            ref = model(x)
        ref = ref[0] if isinstance(ref, (tuple, list)) else ref
    except Exception as e:  # noqa: BLE001 - the model does not build or run at this size: not TP's failure
        return TPOutcome("ModelError", f"{type(e).__name__}: {_first_line(e)}")
    classes = ref.shape[-1]
    # the classifier is kept, as a user asks: every layer whose outputs are the logits (timm's distilled
    # models have two such heads, averaged)
    heads = [m for m in model.modules()
             if (isinstance(m, torch.nn.Linear) and m.out_features == classes)
             or (isinstance(m, torch.nn.Conv2d) and m.out_channels == classes)]
    before = sum(p.numel() for p in model.parameters())
    started()
    t0 = time.perf_counter()
    try:
        pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                           pruning_ratio=ratio, ignored_layers=heads, global_pruning=False)
        pruner.step()
    except Exception as e:  # noqa: BLE001 - a peer's failure is a result here
        return TPOutcome(type(e).__name__, "prune: " + _first_line(e), time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    after = sum(p.numel() for p in model.parameters())
    try:
        with torch.no_grad():
            y = model(x)
    except Exception as e:  # noqa: BLE001
        return TPOutcome(type(e).__name__, "the pruned model's forward: " + _first_line(e), seconds, (before, after))
    y = y[0] if isinstance(y, (tuple, list)) else y
    if tuple(y.shape) != tuple(ref.shape):
        return TPOutcome("output shape", f"{tuple(ref.shape)} -> {tuple(y.shape)}", seconds, (before, after))
    if not bool(torch.isfinite(y).all()):
        return TPOutcome("nonfinite", "", seconds, (before, after))
    return TPOutcome(PRUNED if after < before else "unchanged", "", seconds, (before, after))


def _worker(conn, threads: int) -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    warnings.simplefilter("ignore")  # Torch-Pruning's per-model warnings would bury the table
    import torch
    torch.set_num_threads(threads)
    from hwopt.testing import zoo
    zoo.load()
    import torch_pruning as tp
    conn.send("ready")
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        name, ratio, size = job
        try:
            out = prune_one(tp, name, ratio, size, started=lambda: conn.send("started"))
        except BaseException as e:  # noqa: BLE001 - keep the worker answering; report what happened
            out = TPOutcome(type(e).__name__, _first_line(e) or traceback.format_exc(limit=-1).strip()[-200:])
        conn.send(out.to_dict())


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process: the timeout counts the work Torch-Pruning did, not how long it
    waited for a core on a shared machine."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return math.nan


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class TorchPruningColumn:
    """Runs Torch-Pruning on one model at a time in a worker process; a model that uses more than `timeout`
    seconds of CPU time (or, on a starved machine, `wall` seconds of wall time: 4x `timeout` by default) or
    `memory_mb` of resident memory is stopped (the worker is killed and restarted) and recorded as such."""

    def __init__(self, *, timeout: float = 60.0, memory_mb: float = 4096.0, restart_mb: float = 1500.0,
                 wall: float | None = None, threads: int = 2, poll: float = 0.25):
        self.timeout, self.memory_mb, self.restart_mb = timeout, memory_mb, restart_mb
        self.wall = 4 * timeout if wall is None else wall
        self.threads, self.poll = threads, poll
        self._ctx = multiprocessing.get_context("spawn")  # a clean interpreter: no state from hwopt's run
        self._proc = None
        self._conn = None

    def __enter__(self) -> "TorchPruningColumn":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_worker, args=(child, self.threads), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent
        if not parent.poll(600) or parent.recv() != "ready":
            self._kill()
            raise RuntimeError("the Torch-Pruning worker did not start (is torch_pruning importable?)")

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join()
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send(None)
                self._proc.join(10)
            except (OSError, BrokenPipeError):
                pass
        self._kill()

    def outcome(self, name: str, ratio: float, size: int) -> TPOutcome:
        if self._proc is None:
            self._start()
        self._conn.send((name, ratio, size))
        t0, peak, cpu0 = time.perf_counter(), 0.0, _cpu_seconds(self._proc.pid)
        while True:
            if self._conn.poll(self.poll):
                try:
                    msg = self._conn.recv()
                except EOFError:
                    code = self._proc.exitcode
                    self._kill()
                    return TPOutcome("crashed", f"the worker died (exit code {code})")
                if msg == "started":  # the model is built: Torch-Pruning's time starts here
                    t0, cpu0 = time.perf_counter(), _cpu_seconds(self._proc.pid)
                    continue
                out = TPOutcome.from_dict(msg)
                if _rss_mb(self._proc.pid) > self.restart_mb:
                    self.close()  # bounded memory: a fresh worker for the next model
                return out
            elapsed = time.perf_counter() - t0
            peak = max(peak, _rss_mb(self._proc.pid))
            if not self._proc.is_alive():
                code = self._proc.exitcode
                self._kill()
                return TPOutcome("crashed", f"the worker died (exit code {code})", elapsed)
            cpu = _cpu_seconds(self._proc.pid) - cpu0
            if cpu > self.timeout or elapsed > self.wall:
                self._kill()
                return TPOutcome("timeout", f"not finished after {cpu:.0f} s of CPU time, {elapsed:.0f} s wall "
                                 f"({peak:.0f} MB)", elapsed)
            if peak > self.memory_mb:
                self._kill()
                return TPOutcome("memory", f"past {self.memory_mb:.0f} MB after {elapsed:.0f} s", elapsed)
