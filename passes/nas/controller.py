"""Search strategies behind one ask/tell interface: the REINFORCE LSTM controller (Zoph & Le 2017, as
used by MnasNet), random search, and regularized evolution (Real et al. 2019).

Every strategy draws its randomness from its own numpy Generator and consumes a *fixed* number of
draws per proposal, whatever the proposal is. That is what makes a killed search resumable exactly:
on resume the recorded proposals are replayed through `ask(..., replay=...)` (the draws are consumed,
the recorded tokens are used) and `tell` (the same updates), so the strategy ends in the same state
as if it had never stopped.
"""
from __future__ import annotations

from collections import deque
from typing import Sequence

import numpy as np
import torch
from torch import nn

Tokens = tuple[int, ...]


class Strategy:
    name = "?"

    def ask(self, n: int, replay: Sequence[Tokens | None] = ()) -> list[Tokens]:
        """n proposals; where replay[i] is given, the RNG is advanced as for a fresh proposal but
        the recorded tokens are returned (resume)."""
        raise NotImplementedError

    def tell(self, tokens: Sequence[Tokens], rewards: Sequence[float]) -> None:
        """Results of the last `ask`, in the same order."""


def _replayed(replay: Sequence[Tokens | None], i: int) -> Tokens | None:
    return tuple(replay[i]) if i < len(replay) and replay[i] is not None else None


class RandomSearch(Strategy):
    name = "random"

    def __init__(self, vocab: Sequence[int], seed: int = 0):
        self.vocab = tuple(vocab)
        self.rng = np.random.default_rng([seed, 1])

    def sample(self) -> Tokens:
        u = self.rng.random(len(self.vocab))
        return tuple(int(x * n) for x, n in zip(u, self.vocab))

    def ask(self, n, replay=()):
        out = []
        for i in range(n):
            t = self.sample()
            out.append(_replayed(replay, i) or t)
        return out


class RegularizedEvolution(Strategy):
    """Aging evolution: the first `population` proposals are random; afterwards each child is a
    one-decision mutation of the best of `sample` members drawn from the population, and the oldest
    member dies when a child joins."""
    name = "evolution"

    def __init__(self, vocab: Sequence[int], seed: int = 0, population: int = 16, sample: int = 4):
        if population < 2 or not 1 <= sample <= population:
            raise ValueError("evolution needs population >= 2 and 1 <= sample <= population")
        self.vocab = tuple(vocab)
        self.rng = np.random.default_rng([seed, 2])
        self.population_size, self.sample_size = population, sample
        self.population: deque[tuple[Tokens, float]] = deque()
        self.proposed = 0

    def _mutate(self, parent: Tokens) -> Tokens:
        pos_u, val_u = self.rng.random(2)
        pos = int(pos_u * len(self.vocab))
        n = self.vocab[pos]
        child = list(parent)
        if n > 1:  # a different value at that position
            child[pos] = (parent[pos] + 1 + int(val_u * (n - 1))) % n
        return tuple(child)

    def ask(self, n, replay=()):
        out = []
        for i in range(n):
            # fixed draws per proposal: len(vocab) for a random member, sample + 2 for a mutation
            if self.proposed < self.population_size or len(self.population) < self.sample_size:
                u = self.rng.random(len(self.vocab))
                t = tuple(int(x * k) for x, k in zip(u, self.vocab))
            else:
                idx = self.rng.choice(len(self.population), self.sample_size, replace=False)
                parent = max((self.population[j] for j in sorted(idx)), key=lambda m: m[1])[0]
                t = self._mutate(parent)
            self.proposed += 1
            out.append(_replayed(replay, i) or t)
        return out

    def tell(self, tokens, rewards):
        for t, r in zip(tokens, rewards):
            self.population.append((tuple(t), float(r)))
            if len(self.population) > self.population_size:
                self.population.popleft()


class Controller(nn.Module):
    """LSTM that emits an architecture's tokens one decision at a time.

    Input at step i is the embedding of the token chosen at step i-1 (a learned start vector at step
    0); each position has its own embedding table and its own softmax head sized to its choices.
    """

    def __init__(self, vocab: Sequence[int], hidden: int = 64, seed: int = 0):
        super().__init__()
        self.vocab = tuple(vocab)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.start = nn.Parameter(torch.zeros(1, hidden))
            self.cell = nn.LSTMCell(hidden, hidden)
            self.embed = nn.ModuleList(nn.Embedding(n, hidden) for n in self.vocab)
            self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in self.vocab)
            for h in self.heads:  # start near uniform: the first samples are a random search
                nn.init.uniform_(h.weight, -0.01, 0.01)
                nn.init.zeros_(h.bias)

    def _steps(self, tokens: Sequence[int] | None, uniforms: np.ndarray | None = None):
        """Walk the decisions; either follow `tokens` or sample with `uniforms` (inverse CDF).
        Returns (tokens, sum log-prob, sum entropy)."""
        x, state = self.start, None
        chosen, logp, ent = [], torch.zeros(()), torch.zeros(())
        for i, n in enumerate(self.vocab):
            h, c = self.cell(x, state)
            state = (h, c)
            logits = self.heads[i](h)[0]
            lp = torch.log_softmax(logits, -1)
            if tokens is not None:
                k = int(tokens[i])
            else:
                cdf = np.cumsum(lp.detach().exp().double().numpy())
                k = min(int(np.searchsorted(cdf, uniforms[i] * cdf[-1], side="right")), n - 1)
            chosen.append(k)
            logp = logp + lp[k]
            ent = ent - (lp.exp() * lp).sum()
            x = self.embed[i](torch.tensor([k]))
        return tuple(chosen), logp, ent

    @torch.no_grad()
    def sample(self, uniforms: np.ndarray) -> Tokens:
        return self._steps(None, uniforms)[0]

    def log_prob(self, tokens: Sequence[int]) -> torch.Tensor:
        return self._steps(tokens)[1]


class Reinforce(Strategy):
    """REINFORCE with an exponential-moving-average baseline (Zoph & Le 2017), optionally with PPO's
    clipped surrogate for several Adam steps per batch (Schulman et al. 2017, as MnasNet's controller).

    Per `tell` (one batch of children), advantages A_i = (R_i - b) / s, where b is the moving average of
    the batch-mean reward and s the root-mean-square of R - b over every reward told so far
    (`normalize`, spread="cumulative"; spread="moving": its moving average; without `normalize`, s = 1 /
    advantage_scale). Then `epochs` Adam steps on
        loss = -mean_i min(rho_i A_i, clip(rho_i, 1 - clip, 1 + clip) A_i) - entropy * mean_i H_i,
    rho_i = p(a_i) / p_old(a_i). With epochs = 1, rho = 1 and this is REINFORCE's gradient exactly. After
    the update b <- decay * b + (1 - decay) * mean(R) (and a moving s likewise); the first batch initialises both.
    """
    name = "reinforce"

    # Defaults (bench/nas_controller_sim.py, bench/nas.py's log): lr 0.02, entropy bonus 0.03, advantages
    # normalised by the cumulative RMS of R - b. At lr 0.05 (the previous default) the controller collapsed onto
    # one architecture within 30-60 distinct children in simulation (6 of 6 simulated seeds at entropy 0.03, 1
    # of 2 at 0.1) and on one of the bench's real seeds; at 0.02 with entropy 0.01-0.1 it kept proposing new
    # children up to 100 and led random search in simulation. The moving RMS (spread="moving") shrinks as the
    # controller converges, which inflates the advantages of near-equal rewards and speeds the collapse; the
    # cumulative RMS is the reward scale of everything seen so far. Normalising makes the step independent of
    # the reward's scale (accuracy in [0, 1] or in %). One epoch: PPO's clip bounds the whole 24-decision
    # sequence's probability ratio, i.e. < 1 % per decision per batch.
    def __init__(self, vocab: Sequence[int], seed: int = 0, lr: float = 0.02, hidden: int = 64,
                 baseline_decay: float = 0.8, entropy: float = 0.03, advantage_scale: float = 10.0,
                 normalize: bool = True, epochs: int = 1, clip: float = 0.2, spread: str = "cumulative"):
        if spread not in ("moving", "cumulative"):
            raise ValueError(f"reinforce: spread must be 'moving' or 'cumulative', got {spread!r}")
        if lr <= 0 or epochs < 1 or not 0 < clip < 1 or not 0 <= baseline_decay < 1:
            raise ValueError(f"reinforce: need lr > 0, epochs >= 1, 0 < clip < 1, 0 <= baseline_decay < 1 "
                             f"(got lr={lr}, epochs={epochs}, clip={clip}, baseline_decay={baseline_decay})")
        self.vocab = tuple(vocab)
        self.rng = np.random.default_rng([seed, 3])
        self.controller = Controller(self.vocab, hidden, seed)
        self.opt = torch.optim.Adam(self.controller.parameters(), lr=lr)
        self.decay, self.entropy, self.scale = baseline_decay, entropy, advantage_scale
        self.normalize, self.epochs, self.clip = normalize, epochs, clip
        self.baseline: float | None = None
        self.spread: float | None = None  # moving RMS of R - b (normalize)
        self.spread_kind = spread
        self._sq, self._n = 0.0, 0  # cumulative sum of (R - b)^2 and count (spread="cumulative")
        self.updates = 0

    def ask(self, n, replay=()):
        out = []
        for i in range(n):
            u = self.rng.random(len(self.vocab))
            r = _replayed(replay, i)
            out.append(r if r is not None else self.controller.sample(u))
        return out

    def _advantages(self, rewards: list[float]) -> list[float]:
        mean_r = float(np.mean(rewards))
        b = mean_r if self.baseline is None else self.baseline
        dev = [r - b for r in rewards]
        if not self.normalize:
            return [self.scale * d for d in dev]
        rms = float(np.sqrt(np.mean(np.square(dev))))
        s = rms if self.spread is None else self.spread
        if self.spread is None and s == 0.0:  # a first batch of equal rewards: no signal yet
            return [0.0] * len(dev)
        return [d / max(s, 1e-8) for d in dev]

    def tell(self, tokens, rewards):
        if not tokens:
            return
        rewards = [float(r) for r in rewards]
        adv = self._advantages(rewards)
        old = None
        for _ in range(self.epochs):
            loss = torch.zeros(())
            logps = []
            for t, a in zip(tokens, adv):
                _, logp, ent = self.controller._steps(t)
                logps.append(logp.detach())
                if old is None:  # first epoch: ratio 1, REINFORCE's gradient
                    loss = loss - a * logp - self.entropy * ent
                else:
                    ratio = torch.exp(logp - old[len(logps) - 1])
                    clipped = torch.clamp(ratio, 1 - self.clip, 1 + self.clip)
                    loss = loss - torch.minimum(ratio * a, clipped * a) - self.entropy * ent
            if old is None:
                old = logps
            loss = loss / len(tokens)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        mean_r = float(np.mean(rewards))
        prev_b = mean_r if self.baseline is None else self.baseline
        rms = float(np.sqrt(np.mean([(r - prev_b) ** 2 for r in rewards])))
        self.baseline = mean_r if self.baseline is None else self.decay * self.baseline + (1 - self.decay) * mean_r
        if self.normalize and self.spread_kind == "cumulative":
            self._sq += float(np.sum([(r - prev_b) ** 2 for r in rewards]))
            self._n += len(rewards)
            if self._sq > 0:
                self.spread = float(np.sqrt(self._sq / self._n))
        elif self.normalize and rms > 0:
            self.spread = rms if self.spread is None else self.decay * self.spread + (1 - self.decay) * rms
        self.updates += 1


def make_strategy(name: str, vocab: Sequence[int], seed: int = 0, **kw) -> Strategy:
    if name == "reinforce":
        return Reinforce(vocab, seed, **kw)
    if name == "random":
        return RandomSearch(vocab, seed)
    if name == "evolution":
        return RegularizedEvolution(vocab, seed, **kw)
    raise ValueError(f"unknown strategy {name!r} (reinforce, random, evolution)")
