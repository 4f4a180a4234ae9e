"""Evaluating children: build, lift, cost, train, score; serially, in a local process pool, or on Ray.

A child's evaluation needs only picklable things (the space, the target, an accuracy callable, the
seed), bundled in `EvalSpec`. Executors yield results as they complete, so the search can checkpoint
each one the moment it exists. Ray is imported only when the Ray executor is used.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from .space import SearchSpace

Accuracy = Callable[[nn.Module], float]  # trains the module (in place) if it wants to, returns accuracy


# ------------------------------------------------------------------------------------------------
# accuracy sources


_MNIST_CACHE: dict = {}


@torch.no_grad()
def recalibrate_bn(module: nn.Module, x: torch.Tensor) -> None:
    """Set BN running statistics to those of the trained weights on `x` (one cumulative pass).

    After a few large steps the running averages describe weights that no longer exist; an
    eval-mode proxy score is then noise. Recalibrating makes short-training accuracy meaningful."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    module.train()
    module(x)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    module.eval()


@dataclass(frozen=True)
class ProxyTrainer:
    """The built-in proxy: Adam for `steps` mini-batches on the first `train_limit` MNIST training
    images, BN statistics recalibrated, accuracy on the first `eval_limit` validation images. Seeded, so
    a child's score repeats."""
    train_limit: int = 1024
    eval_limit: int = 1000
    steps: int = 64
    batch_size: int = 32
    lr: float = 5e-3
    seed: int = 0
    bn_batch: int = 256
    # evaluation chunk: the same logits bit for bit at any size (eval mode, per-image convs), but 500-image
    # chunks took twice the CPU time of 100-image ones on the bench's children (activations out of cache)
    eval_batch: int = 100
    # channels-last (NHWC) tensors: PyTorch's CPU depthwise-conv backward, ~half of a child's training time in
    # NCHW, runs ~1.7x faster on the bench's children (measured on MBConv k5 children, 1 thread); same network,
    # float rounding differs
    channels_last: bool = True

    def _data(self):
        key = (self.train_limit, self.eval_limit)
        if key not in _MNIST_CACHE:
            from hwopt.data import mnist
            _MNIST_CACHE[key] = (mnist("train", self.train_limit), mnist("val", self.eval_limit))
        return _MNIST_CACHE[key]

    def __post_init__(self):
        for name in ("train_limit", "eval_limit", "steps", "batch_size", "bn_batch", "eval_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"ProxyTrainer: {name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"ProxyTrainer: lr must be > 0, got {self.lr}")

    def _schedule(self, opt):
        """One-cycle (warm-up over the first quarter) where it is defined: torch's OneCycleLR needs a
        warm-up phase longer than one step (steps >= 5 at pct_start 0.25); shorter runs keep a constant lr."""
        if self.steps * 0.25 > 1:
            return torch.optim.lr_scheduler.OneCycleLR(opt, self.lr, total_steps=self.steps, pct_start=0.25)
        return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)

    def __call__(self, module: nn.Module) -> float:
        (xt, yt), (xe, ye) = self._data()
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)  # in place, like the training below
            xt, xe = (x.contiguous(memory_format=torch.channels_last) for x in (xt, xe))
        gen = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=self.lr)
        sched = self._schedule(opt)
        module.train()
        perm, pos = torch.randperm(len(xt), generator=gen), 0
        for _ in range(self.steps):
            if pos + self.batch_size > len(xt):
                perm, pos = torch.randperm(len(xt), generator=gen), 0
            idx = perm[pos:pos + self.batch_size]
            pos += self.batch_size
            loss = nn.functional.cross_entropy(module(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        recalibrate_bn(module, xt[:self.bn_batch])
        with torch.no_grad():
            b = self.eval_batch
            correct = sum(int((module(xe[i:i + b]).argmax(1) == ye[i:i + b]).sum()) for i in range(0, len(xe), b))
        if self.channels_last:  # the caller may lift or save the trained module: give it back in the usual layout
            module.to(memory_format=torch.contiguous_format)
        return correct / len(xe)


@dataclass(frozen=True)
class CallbackAccuracy:
    """The user's callbacks: `train(module, epochs=...)` then `evaluate(module)`."""
    train: Callable | None
    evaluate: Callable
    epochs: float = 1.0

    def __call__(self, module: nn.Module) -> float:
        if self.train is not None and self.epochs > 0:
            self.train(module, epochs=self.epochs)
        return float(self.evaluate(module))


# ------------------------------------------------------------------------------------------------
# one child


@dataclass(frozen=True)
class EvalSpec:
    space: SearchSpace
    target: Any
    accuracy: Accuracy
    seed: int = 0
    latency: str = "model"  # "model": the target's cost model; "tvm": compiled and timed through TVM
    threads: int = 0        # torch threads in a worker (0: leave as is)


def cost_of(space: SearchSpace, tokens: Sequence[int], target: Any, seed: int = 0, latency: str = "model"):
    """(graph, figures) of an architecture, before any training."""
    g = space.graph(tokens, seed)
    s = g.stats()
    c = target.cost(g)
    fig = dict(latency_ms=float(c.latency_ms), predicted_latency_ms=float(c.latency_ms), flash_bytes=int(c.flash_bytes),
               peak_sram_bytes=int(c.peak_sram_bytes), energy_mj=float(c.energy_mj), macs=int(s["macs"]),
               params=int(s["params"]))
    if latency == "tvm":
        from hwopt import lower
        from hwopt.tvm import compile_module
        compiled = compile_module(lower(g, bake_masks=True), space.example_input(), target.tvm_target)
        fig["latency_ms"] = float(compiled.benchmark()["median_ms"])
    elif latency != "model":
        raise ValueError(f"latency must be 'model' or 'tvm', got {latency!r}")
    return g, fig


def evaluate_child(spec: EvalSpec, tokens: Sequence[int]) -> dict:
    """Cost and accuracy of one child; failures are returned (accuracy 0), not raised."""
    from hwopt import lower
    if spec.threads:
        torch.set_num_threads(spec.threads)
    t0 = time.perf_counter()
    try:
        g, fig = cost_of(spec.space, tokens, spec.target, spec.seed, spec.latency)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            acc = float(spec.accuracy(lower(g)))
        if acc != acc:  # NaN
            acc = 0.0
        return dict(accuracy=acc, **fig, seconds=time.perf_counter() - t0)
    except Exception as e:  # a child that cannot be built or trained scores 0 and is recorded as such
        return dict(accuracy=0.0, error=f"{type(e).__name__}: {e}", seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------
# executors: run(tasks) yields (key, result) as each completes


class SerialExecutor:
    kind = "serial"

    def __init__(self, spec: EvalSpec):
        self.spec = spec

    def run(self, tasks: Iterable[tuple[Any, Sequence[int]]]) -> Iterator[tuple[Any, dict]]:
        for key, tokens in tasks:
            yield key, evaluate_child(self.spec, tokens)

    def close(self) -> None: ...


_WORKER_SPEC: EvalSpec | None = None


def _pool_init(spec: EvalSpec) -> None:
    global _WORKER_SPEC
    _WORKER_SPEC = spec
    torch.set_num_threads(max(1, spec.threads))


def _pool_eval(tokens) -> dict:
    return evaluate_child(_WORKER_SPEC, tokens)


class ProcessExecutor:
    """A local process pool (fork: the user's callbacks need not be picklable); one torch thread each."""
    kind = "process"

    def __init__(self, spec: EvalSpec, workers: int = 2):
        import concurrent.futures as cf
        import multiprocessing as mp
        self.spec = spec
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self.pool = cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_pool_init,
                                           initargs=(EvalSpec(**{**spec.__dict__, "threads": spec.threads or 1}),))

    def run(self, tasks):
        import concurrent.futures as cf
        futures = {self.pool.submit(_pool_eval, tuple(t)): key for key, t in tasks}
        for f in cf.as_completed(futures):
            yield futures[f], f.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """Evaluations as Ray tasks (one CPU each). Connects to `address` (or $RAY_ADDRESS) or starts a
    local instance with `workers` CPUs if Ray is not initialised yet."""
    kind = "ray"

    def __init__(self, spec: EvalSpec, workers: int = 2, address: str | None = None):
        try:
            import ray
        except ImportError as e:
            raise ImportError("the Ray executor needs ray: pip install 'hwopt[ray]'") from e
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS")
            if address:
                ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
            else:
                ray.init(num_cpus=workers, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
                         runtime_env={"env_vars": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}})
                self.started = True
        self.spec_ref = ray.put(EvalSpec(**{**spec.__dict__, "threads": spec.threads or 1}))
        self.remote = ray.remote(num_cpus=1)(evaluate_child)

    def run(self, tasks):
        ray = self.ray
        refs = {self.remote.remote(self.spec_ref, tuple(t)): key for key, t in tasks}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for r in ready:
                yield refs[r], ray.get(r)

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def make_executor(kind: str, spec: EvalSpec, workers: int = 2, address: str | None = None):
    if kind == "serial":
        return SerialExecutor(spec)
    if kind == "process":
        return ProcessExecutor(spec, workers)
    if kind == "ray":
        return RayExecutor(spec, workers, address)
    raise ValueError(f"executor must be serial, process or ray, got {kind!r}")
