"""nas: the MnasNet space decodes to verified graphs, REINFORCE learns, a killed search resumes exactly."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hwopt
from hwopt.passes.nas import (NAS, ProxyTrainer, RandomSearch, RegularizedEvolution, Reinforce, Search, SearchSpace,
                              reward)
from hwopt.passes.nas.space import DECISION_NAMES, PER_BLOCK
from hwopt.passmanager import PassContext, PassManager, make_pass

try:
    from hwopt.targets import load_target
    TARGET = load_target("cortex-a72")
except Exception:  # targets not importable yet: a stand-in whose latency is MAC-proportional
    class _Cost:
        def __init__(self, g):
            s = g.stats()
            self.latency_ms = s["macs"] / 1e6
            self.flash_bytes = 4 * s["params"]
            self.peak_sram_bytes = 0
            self.energy_mj = s["macs"] * 1e-9

    class _FakeTarget:
        name = "fake"

        def cost(self, g):
            return _Cost(g)
    TARGET = _FakeTarget()

# Small members of the space so every test lifts in well under a second.
MNIST_SPACE = SearchSpace(in_channels=1, num_classes=10, resolution=28, width=0.25, head=32, divisor=4)
TINY = SearchSpace(blocks=3, in_channels=1, num_classes=10, resolution=28, width=0.25, head=32, divisor=4)
IMAGENET_LIKE = SearchSpace(blocks=4, in_channels=3, num_classes=7, resolution=64, skeleton="mnasnet",
                            width=0.25, head=64, divisor=4)


def fake_accuracy(module: torch.nn.Module) -> float:
    """Deterministic, instant stand-in for training: bigger models score higher, saturating."""
    n = sum(p.numel() for p in module.parameters())
    return 0.5 + 0.45 * (1 - math.exp(-n / 30000))


def tokens_of(space: SearchSpace):
    return st.tuples(*(st.integers(0, n - 1) for n in space.vocab))


# ----------------------------------------------------------------------------- space


@pytest.mark.parametrize("space", [MNIST_SPACE, IMAGENET_LIKE], ids=["mnist-small-skeleton", "mnasnet-skeleton"])
@settings(max_examples=8)
@given(data=st.data())
def test_every_token_sequence_decodes_to_a_verified_graph_that_runs(space, data):
    tokens = data.draw(tokens_of(space))
    model = space.build(tokens, seed=1).eval()
    g = space.graph(tokens, seed=1)          # lift verifies
    g.verify()
    lowered = hwopt.lower(g).eval()
    x = torch.randn(2, space.in_channels, space.resolution, space.resolution)
    with torch.no_grad():
        y, y_ref = lowered(x), model(x)
    assert y.shape == (2, space.num_classes)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    # the structure is the one the tokens say
    plan = space.plan(tokens)
    assert len([n for n in g if n.op == "add"]) == sum(p["skip"] for p in plan)
    assert len([n for n in g if n.op == "mul"]) == sum(bool(p["se"]) for p in plan)
    assert space.decode(tokens) == space.decode(space.encode(space.decode(tokens)))


def test_cost_is_available_before_training():
    g = MNIST_SPACE.graph(MNIST_SPACE.baseline())   # untrained: built, lifted, costed
    c = TARGET.cost(g)
    assert c.latency_ms > 0 and c.flash_bytes > 0
    # bigger multipliers, more layers, bigger kernels never cost less
    small = MNIST_SPACE.encode([b.__class__(b.op, 3, 0.0, "none", 0.75, -1) for b in MNIST_SPACE.decode(MNIST_SPACE.baseline())])
    big = MNIST_SPACE.encode([b.__class__(b.op, 5, 0.0, "none", 1.25, 1) for b in MNIST_SPACE.decode(MNIST_SPACE.baseline())])
    lat = [TARGET.cost(MNIST_SPACE.graph(t)).latency_ms for t in (small, MNIST_SPACE.baseline(), big)]
    assert lat[0] < lat[1] < lat[2]


def test_skeleton_and_baseline():
    s = SearchSpace(in_channels=1, num_classes=10, resolution=28)
    assert s.small and s.length == 42 and s.size == 288 ** 7
    plan = s.plan(s.baseline())
    assert [p["op"] for p in plan] == ["mbconv6"] * 16           # base layers 1+2+3+4+2+3+1
    assert sum(p["stride"] == 2 for p in plan) == 2              # 28 -> 14 (stem) -> 7 -> 4
    # identity skips only where stride 1 and in == out; never on a block's first, reshaping layer
    assert all(p["skip"] == (p["stride"] == 1 and p["cin"] == p["cout"]) for p in plan)
    full = SearchSpace()
    assert not full.small and sum(p["stride"] == 2 for p in full.plan(full.baseline())) == 4
    # MnasNet-A1's choices are in the space
    a1 = full.plan(full.mnasnet_a1())
    assert a1[0]["op"] == "sepconv" and [p["cout"] for p in a1][-1] == 320


def test_canonical_merges_ineffective_skips():
    t = TINY.baseline()
    skip = DECISION_NAMES.index("skip")
    plan = TINY.plan(t)
    assert plan[0]["cin"] != plan[0]["cout"]            # block 0: one layer, 8 -> 4 channels
    a, b = list(t), list(t)
    a[skip], b[skip] = 0, 1                             # so its skip cannot apply: same network
    assert TINY.canonical(a) == TINY.canonical(b)
    c, d = list(t), list(t)
    c[PER_BLOCK + skip], d[PER_BLOCK + skip] = 0, 1     # block 1 has 2 layers: the second can skip
    assert TINY.canonical(c) != TINY.canonical(d)


def test_reward_presets():
    assert reward(0.9, 1.0, 1.0, -0.07, -0.07) == pytest.approx(0.9)
    assert reward(0.9, 2.0, 1.0, -0.07, -0.07) == pytest.approx(0.9 * 2 ** -0.07)
    assert reward(0.9, 0.5, 1.0, -0.07, -0.07) > 0.9          # soft: faster is rewarded too
    assert reward(0.9, 0.5, 1.0, 0.0, -1.0) == pytest.approx(0.9)  # hard: no bonus under T
    assert reward(0.9, 2.0, 1.0, 0.0, -1.0) == pytest.approx(0.45)


# ----------------------------------------------------------------------------- strategies


def test_reinforce_update_raises_log_prob_of_rewarded_sequence():
    strat = Reinforce(TINY.vocab, seed=3)
    a, b = strat.ask(2)
    assert a != b
    lp_a = strat.controller.log_prob(a).item()
    lp_b = strat.controller.log_prob(b).item()
    strat.tell([a, b], [1.0, 0.2])
    assert strat.controller.log_prob(a).item() > lp_a
    assert strat.controller.log_prob(b).item() < lp_b
    # repeated updates concentrate the controller on the rewarded sequence
    for _ in range(30):
        strat.tell([a, b], [1.0, 0.2])
    assert strat.controller.log_prob(a).item() > lp_a + 5


def test_reinforce_normalized_advantages_ignore_the_reward_scale():
    """normalize: the update depends on rewards only through (R - b) / rms(R - b), so an affine change of
    the reward (another accuracy scale, a constant bonus) gives the same controller."""
    a_s, b_s = Reinforce(TINY.vocab, seed=5, normalize=True), Reinforce(TINY.vocab, seed=5, normalize=True)
    for _ in range(4):
        ts = a_s.ask(3)
        assert ts == b_s.ask(3)
        rs = [fake_reward(t) for t in ts]
        a_s.tell(ts, rs)
        b_s.tell(ts, [10 * r + 3 for r in rs])
    t = a_s.ask(1)[0]
    assert a_s.controller.log_prob(t).item() == pytest.approx(b_s.controller.log_prob(t).item(), abs=1e-4)
    # without normalisation the scale matters
    c_s, d_s = Reinforce(TINY.vocab, seed=5, normalize=False), Reinforce(TINY.vocab, seed=5, normalize=False)
    ts = c_s.ask(3)
    d_s.ask(3)
    c_s.tell(ts, [0.1, 0.5, 0.9])
    d_s.tell(ts, [0.1, 0.5, 0.9])
    c_s.tell(ts, [0.1, 0.5, 0.9])
    d_s.tell(ts, [1.0, 5.0, 9.0])
    assert c_s.controller.log_prob(ts[2]).item() != pytest.approx(d_s.controller.log_prob(ts[2]).item(), abs=1e-4)


def test_reinforce_cumulative_spread_does_not_inflate_near_equal_rewards():
    """A converging controller sees batches of near-equal rewards. The moving RMS of R - b shrinks with them
    and blows their differences up to unit advantages (a collapse feedback); the cumulative RMS keeps the
    scale of all rewards seen, so the same differences stay small."""
    adv = {}
    for spread in ("moving", "cumulative"):
        s = Reinforce(TINY.vocab, seed=5, spread=spread)
        ts = s.ask(3)
        s.tell(ts, [0.1, 0.5, 0.9])
        for _ in range(30):
            ts = s.ask(3)
            s.tell(ts, [0.6, 0.601, 0.602])
        adv[spread] = max(abs(x) for x in s._advantages([0.6, 0.601, 0.602]))
    assert adv["cumulative"] < 0.1 and adv["moving"] > 0.5
    with pytest.raises(ValueError, match="spread"):
        Reinforce(TINY.vocab, spread="ema")


def test_reinforce_ppo_epochs_learn_more_per_batch_and_options_are_checked():
    lp = {}
    for epochs in (1, 4):
        s = Reinforce(TINY.vocab, seed=3, epochs=epochs)
        a, b = s.ask(2)
        before = s.controller.log_prob(a).item()
        s.tell([a, b], [1.0, 0.2])
        lp[epochs] = s.controller.log_prob(a).item() - before
    assert lp[4] > lp[1] > 0
    for bad in ({"lr": 0.0}, {"epochs": 0}, {"clip": 1.5}, {"baseline_decay": 1.0}):
        with pytest.raises(ValueError, match="reinforce"):
            Reinforce(TINY.vocab, **bad)


@pytest.mark.parametrize("cls", [Reinforce, RandomSearch, RegularizedEvolution])
def test_strategies_are_seeded_and_replay_exactly(cls):
    kw = {"population": 4, "sample": 2} if cls is RegularizedEvolution else {}

    def drive(s, replay_upto=0, recorded=None):
        out = []
        for step in range(5):
            rep = recorded[step] if recorded and step < replay_upto else ()
            ts = s.ask(3, rep)
            s.tell(ts, [fake_reward(t) for t in ts])
            out.append(ts)
        return out

    first = drive(cls(TINY.vocab, seed=7, **kw))
    assert first == drive(cls(TINY.vocab, seed=7, **kw))
    assert first != drive(cls(TINY.vocab, seed=8, **kw))
    assert first == drive(cls(TINY.vocab, seed=7, **kw), replay_upto=3, recorded=first)


def fake_reward(t) -> float:
    return sum(t) / (10 * len(t))


def test_reinforce_beats_random_on_a_synthetic_reward():
    """With a cheap reward (fraction of tokens equal to 0) the controller must learn it."""
    def score(t):
        return sum(x == 0 for x in t) / len(t)
    res = {}
    for cls in (Reinforce, RandomSearch):
        s, total = cls(TINY.vocab, seed=0), []
        for _ in range(40):
            ts = s.ask(4)
            rs = [score(t) for t in ts]
            s.tell(ts, rs)
            total += rs
        res[cls.name] = sum(total[-40:]) / 40
    assert res["reinforce"] > res["random"] + 0.1


# ----------------------------------------------------------------------------- search, cache, checkpoint


def test_search_caches_duplicates_and_checkpoints_every_child(tmp_path):
    calls = []

    def acc(m):
        calls.append(1)
        return fake_accuracy(m)
    ck = tmp_path / "s.jsonl"
    res = Search(TINY, TARGET, acc, strategy="evolution", samples=10, batch=2, seed=0, checkpoint=ck,
                 strategy_options={"population": 2, "sample": 2}).run()
    lines = ck.read_text().splitlines()
    assert "header" in json.loads(lines[0]) and len(lines) == 11
    recs = [json.loads(x) for x in lines[1:]]
    assert sorted(r["index"] for r in recs) == list(range(10))
    assert all({"tokens", "accuracy", "latency_ms", "reward", "seed"} <= set(r) for r in recs)
    keys = {TINY.canonical(r["tokens"]) for r in recs}
    assert len(calls) == len(keys) == res.evaluations   # each architecture trained once
    best = res.best
    assert best["reward"] == max(r["reward"] for r in recs)
    # a finished search re-run from its checkpoint evaluates nothing
    calls.clear()
    again = Search(TINY, TARGET, acc, strategy="evolution", samples=10, batch=2, seed=0, checkpoint=ck,
                   strategy_options={"population": 2, "sample": 2}).run()
    assert not calls and [r["tokens"] for r in again.history] == [r["tokens"] for r in res.history]
    with pytest.raises(ValueError, match="strategy"):
        Search(TINY, TARGET, acc, strategy="random", samples=10, batch=2, seed=0, checkpoint=ck).run()


_KILL_SCRIPT = """
import math, sys, time, torch
torch.set_num_threads(1)
from hwopt.passes.nas import Search, SearchSpace
from hwopt.targets import load_target
TINY = SearchSpace(blocks=3, in_channels=1, num_classes=10, resolution=28, width=0.25, head=32, divisor=4)
def acc(m):
    time.sleep(0.4)
    n = sum(p.numel() for p in m.parameters())
    return 0.5 + 0.45 * (1 - math.exp(-n / 30000))
Search(TINY, load_target("cortex-a72"), acc, strategy="reinforce", samples={samples}, batch=3, seed=11,
       checkpoint=sys.argv[1]).run()
"""


def test_search_killed_with_sigkill_resumes_to_the_same_architectures(tmp_path):
    samples, k = 12, 5
    full = Search(TINY, TARGET, fake_accuracy, strategy="reinforce", samples=samples, batch=3, seed=11,
                  checkpoint=tmp_path / "full.jsonl").run()

    ck = tmp_path / "killed.jsonl"
    script = tmp_path / "run.py"
    script.write_text(_KILL_SCRIPT.format(samples=samples))
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.Popen([sys.executable, str(script), str(ck)], env=env)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if ck.exists() and len(ck.read_text().splitlines()) >= 1 + k:
                break
            assert proc.poll() is None, "the search ended before it could be killed"
            time.sleep(0.05)
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    n_done = len(ck.read_text().splitlines()) - 1
    assert k <= n_done < samples

    calls = []

    def counting(m):
        calls.append(1)
        return fake_accuracy(m)
    resumed = Search(TINY, TARGET, counting, strategy="reinforce", samples=samples, batch=3, seed=11,
                     checkpoint=ck).run()
    assert resumed.evaluated() == full.evaluated()
    assert [r["tokens"] for r in resumed.history] == [r["tokens"] for r in full.history]
    assert [r["reward"] for r in resumed.history] == pytest.approx([r["reward"] for r in full.history])
    # nothing recorded before the kill was evaluated again
    assert len(calls) <= samples - n_done
    assert len(ck.read_text().splitlines()) == 1 + samples


def test_process_pool_gives_the_same_search(tmp_path):
    kw = dict(strategy="reinforce", samples=6, batch=3, seed=2)
    serial = Search(TINY, TARGET, fake_accuracy, **kw).run()
    pooled = Search(TINY, TARGET, fake_accuracy, executor="process", workers=2, **kw).run()
    assert [r["tokens"] for r in pooled.history] == [r["tokens"] for r in serial.history]


@pytest.mark.slow  # starting Ray and importing torch in its workers takes 40-110 s on this shared machine
def test_ray_executor_runs_the_same_search():
    ray = pytest.importorskip("ray")
    acc = ProxyTrainer(train_limit=64, eval_limit=64, steps=1, batch_size=16)
    kw = dict(strategy="random", samples=4, batch=2, seed=5)
    serial = Search(TINY, TARGET, acc, **kw).run()
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}})
        on_ray = Search(TINY, TARGET, acc, executor="ray", workers=2, **kw).run()
    finally:
        ray.shutdown()
    assert [r["tokens"] for r in on_ray.history] == [r["tokens"] for r in serial.history]
    assert [r["accuracy"] for r in on_ray.history] == [r["accuracy"] for r in serial.history]


# ----------------------------------------------------------------------------- the pass


def test_nas_pass_in_a_pipeline(tmp_path):
    text = "nas{samples=4,batch=2,blocks=3,width=0.25,head=32,divisor=4,baselines=[random]}"
    pm = PassManager.parse(text)
    assert str(pm) == text
    from hwopt import models
    g = hwopt.lift(models.mnist_cnn(), torch.zeros(1, 1, 28, 28))
    ctx = PassContext(target=TARGET, evaluate=fake_accuracy, checkpoint_dir=str(tmp_path), seed=1)
    out = pm.run(g, ctx)
    out.verify()
    assert out is not g and g.verify()
    rec = next(r for r in ctx.records if r.get("pass") == "nas.search")
    assert rec["search"]["samples"] == 4 and "random" in rec["baselines"]
    assert rec["baseline"]["arch"].startswith("mbconv6k3")
    assert (tmp_path / "nas-pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "nas-reinforce-1.jsonl").exists() and (tmp_path / "nas-random-1.jsonl").exists()
    assert TARGET.cost(out).latency_ms == pytest.approx(rec["best"]["latency_ms"], rel=1e-6)
    y = hwopt.lower(out)(torch.randn(2, 1, 28, 28))
    assert y.shape == (2, 10)


def test_nas_pass_validates_options():
    with pytest.raises(hwopt.PassError, match="samples"):
        make_pass("nas", samples=0)
    with pytest.raises(hwopt.PassError, match="baselines"):
        make_pass("nas", baselines=("grid",))
    g = hwopt.lift(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                       torch.nn.Linear(4, 5)), torch.zeros(1, 3, 32, 32))
    with pytest.raises(hwopt.PassError, match="evaluate"):
        NAS(samples=1).run(g, PassContext(target=TARGET))


@pytest.mark.slow
def test_search_cli_runs_with_the_proxy_trainer(tmp_path, capsys):
    from hwopt.passes.nas import cli
    assert cli.main(["--samples", "2", "--batch", "2", "--blocks", "2", "--width", "0.25", "--head", "32",
                     "--proxy-steps", "1", "--no-progress", "--plot", str(tmp_path / "p.png"),
                     "--checkpoint", str(tmp_path / "c.jsonl"), "--save", str(tmp_path / "m.pt")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["search"]["samples"] == 2 and (tmp_path / "p.png").exists() and (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("strategy", ["reinforce", "random", "evolution"])
def test_children_budget_trains_exactly_that_many_and_extends_exactly(strategy, tmp_path):
    """Equal-cost comparisons: `children` stops after that many distinct trained children, whatever the
    duplicates; a finished search extended to more children equals an uninterrupted longer one."""
    opts = {"population": 4, "sample": 2} if strategy == "evolution" else {}
    calls = []

    def counting(m):
        calls.append(1)
        return fake_accuracy(m)
    ck = tmp_path / "c.jsonl"
    short = Search(TINY, TARGET, counting, strategy=strategy, children=6, samples=None, batch=4, seed=2,
                   checkpoint=ck, strategy_options=opts).run()
    assert len(calls) == 6 == sum(not r["cached"] for r in short.history) == short.evaluations
    calls.clear()
    extended = Search(TINY, TARGET, counting, strategy=strategy, children=9, samples=None, batch=4, seed=2,
                      checkpoint=ck, strategy_options=opts).run()
    assert len(calls) == 3
    full = Search(TINY, TARGET, fake_accuracy, strategy=strategy, children=9, samples=None, batch=4, seed=2,
                  strategy_options=opts).run()
    assert [r["tokens"] for r in extended.history] == [r["tokens"] for r in full.history]
    with pytest.raises(ValueError, match="children"):
        Search(TINY, TARGET, fake_accuracy, children=0)
