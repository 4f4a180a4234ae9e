"""magnitude-prune's last retraining round (cosine cycles, best checkpoint on held-out data) and the
Trainer.train options behind it. Small subsets, few steps; behaviour only, never timings."""
from __future__ import annotations

import pytest
import torch

import hwopt
from hwopt import data, models
from hwopt import sparse as sp
from hwopt.passes.magnitude_prune import MagnitudePrune

X1 = torch.zeros(1, 1, 28, 28)


def _trainer(**kw):
    return data.mnist_trainer(512, "val", 200, flat=False, **kw)


def _lrs_seen(tr, **kw):
    """The learning rate of every step of a Trainer.train run."""
    seen = []
    step = torch.optim.SGD.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)
    torch.manual_seed(0)
    m = models.lenet_300_100()
    torch.optim.SGD.step = spy
    try:
        tr.train(m, **kw)
    finally:
        torch.optim.SGD.step = step
    return seen


def test_default_schedule_unchanged_and_cycles_restart():
    tr = _trainer(lr=0.1, batch_size=64)  # 512 / 64 = 8 steps per epoch
    one = _lrs_seen(tr, epochs=2.0)
    assert len(one) == 16 and one[0] == pytest.approx(0.1) and one == sorted(one, reverse=True)
    three = _lrs_seen(tr, epochs=3.0, cycles=3)
    assert len(three) == 24
    for c in range(3):  # every cycle restarts at lr and decays
        cyc = three[8 * c:8 * (c + 1)]
        assert cyc[0] == pytest.approx(0.1) and cyc == sorted(cyc, reverse=True) and cyc[-1] < 0.01
    with pytest.raises(ValueError, match="cycles"):
        tr.train(models.lenet_300_100(), epochs=1.0, cycles=0)


def test_keep_best_loads_the_best_checkpoint_on_eval():
    tr = _trainer(lr=0.05, batch_size=64)
    scores = iter([0.5, 0.9, 0.7, 0.6])  # the 2nd checkpoint is best: its weights must come back
    states = []
    orig = tr.evaluate

    def fake(m):
        states.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        return next(scores)
    tr.evaluate = fake
    torch.manual_seed(0)
    m = models.lenet_300_100()
    tr.train(m, epochs=2.0, cycles=2, keep_best=True, eval_every=0.5)  # checks every 4 steps, 16 steps
    tr.evaluate = orig
    assert len(states) == 4
    for k, v in m.state_dict().items():
        assert torch.equal(v, states[1][k])
    # without keep_best nothing is evaluated and the last state stays
    calls = []
    tr.evaluate = lambda m: calls.append(1) or 1.0
    tr.train(models.lenet_300_100(), epochs=1.0, eval_every=0.25)
    tr.evaluate = orig
    assert calls == []


def test_keep_best_is_never_worse_on_eval_than_the_last_step():
    tr = _trainer(lr=0.2, batch_size=64)
    torch.manual_seed(1)
    a, b = models.lenet_300_100(), models.lenet_300_100()
    b.load_state_dict(a.state_dict())
    tr.train(a, epochs=2.0, cycles=2, seed=3)
    tr.train(b, epochs=2.0, cycles=2, seed=3, keep_best=True, eval_every=0.25)
    assert tr.evaluate(b) >= tr.evaluate(a)


def test_pass_sends_final_options_to_the_last_round_only():
    torch.manual_seed(0)
    g = hwopt.lift(models.lenet_300_100().eval(), X1)
    calls = []
    ctx = hwopt.PassContext(train=lambda m, **kw: calls.append(kw), evaluate=lambda m: 0.5)
    MagnitudePrune(quality=1.0, iterations=3, retrain_epochs=0.5, final_retrain_epochs=2.0, final_cycles=2,
                   final_keep_best=True, final_eval_every=0.5).run(g, ctx)
    assert [c["epochs"] for c in calls] == [0.5, 0.5, 2.0]
    assert all(set(c) == {"epochs", "penalty"} for c in calls[:2])
    assert calls[2]["cycles"] == 2 and calls[2]["keep_best"] is True and calls[2]["eval_every"] == 0.5
    calls.clear()  # defaults: ctx.train sees only the two keywords every callback takes
    MagnitudePrune(quality=1.0, iterations=2, retrain_epochs=0.5).run(g, ctx)
    assert all(set(c) == {"epochs", "penalty"} for c in calls)
    p = hwopt.PassManager.parse("magnitude-prune{quality=1.0,final_cycles=3,final_keep_best=true,final_eval_every=1}")
    assert p.passes[0].final_train_options() == {"cycles": 3, "keep_best": True, "eval_every": 1.0}
    with pytest.raises(hwopt.PassError, match="final_cycles"):
        MagnitudePrune(final_cycles=0)
    with pytest.raises(hwopt.PassError, match="final_keep_best"):
        MagnitudePrune(final_eval_every=1.0)


def test_pass_with_trainer_keeps_best_on_real_data():
    tr = _trainer(lr=0.1, batch_size=64)
    torch.manual_seed(0)
    m = models.lenet_300_100()
    tr.train(m, epochs=1.0)
    g = hwopt.lift(m, X1)
    ctx = hwopt.PassContext(train=tr.train, evaluate=tr.evaluate)
    out = MagnitudePrune(sparsity=0.8, iterations=2, retrain_epochs=0.5, final_retrain_epochs=1.0, final_cycles=2,
                         final_keep_best=True, final_eval_every=0.25).run(g, ctx)
    assert 0.75 < hwopt.sparse.sparsity(out) < 0.85
    assert tr.evaluate(hwopt.lower(out)) > 0.5


def test_average_ends_on_the_mean_of_the_cycle_end_weights():
    # cycle 1 of a 2-cycle run is a half-length run from the same start and seed: its end is snapshot 1
    tr = _trainer(lr=0.1, batch_size=64)
    torch.manual_seed(0)
    start = models.lenet_300_100().state_dict()
    runs = {}
    for key, kw in {"first": dict(epochs=1.0), "last": dict(epochs=2.0, cycles=2),
                    "mean": dict(epochs=2.0, cycles=2, average=True)}.items():
        m = models.lenet_300_100()
        m.load_state_dict(start)
        tr.train(m, seed=5, **kw)
        runs[key] = m.state_dict()
    for k, v in runs["mean"].items():
        assert torch.allclose(v, (runs["first"][k] + runs["last"][k]) / 2, atol=1e-6), k
    assert any(not torch.allclose(v, runs["last"][k]) for k, v in runs["mean"].items())  # not the last step
    with pytest.raises(ValueError, match="average and keep_best"):
        tr.train(models.lenet_300_100(), epochs=1.0, cycles=2, average=True, keep_best=True)


def test_average_recomputes_batchnorm_statistics_on_training_data():
    tr = _trainer(lr=0.01, batch_size=64)
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.BatchNorm2d(1), torch.nn.Flatten(), torch.nn.Linear(784, 10))
    tr.train(m, epochs=2.0, cycles=2, average=True)
    # update_bn averages the batch means equally: 512 / 64 = 8 equal batches, so the exact data mean
    assert float(m[0].running_mean) == pytest.approx(float(tr.x_train.mean()), abs=1e-4)
    assert float(m[0].running_var) == pytest.approx(float(tr.x_train.var()), rel=2e-2)


def test_pass_final_average_goes_to_the_last_round_and_is_validated():
    torch.manual_seed(0)
    g = hwopt.lift(models.lenet_300_100().eval(), X1)
    calls = []
    ctx = hwopt.PassContext(train=lambda m, **kw: calls.append(kw), evaluate=lambda m: 0.5)
    MagnitudePrune(quality=1.0, iterations=2, retrain_epochs=0.5, final_cycles=4, final_average=True).run(g, ctx)
    assert "average" not in calls[0] and calls[1]["average"] is True and calls[1]["cycles"] == 4
    with pytest.raises(hwopt.PassError, match="final_average.*final_cycles >= 2"):
        MagnitudePrune(final_average=True)
    with pytest.raises(hwopt.PassError, match="final_average.*final_keep_best"):
        MagnitudePrune(final_average=True, final_cycles=2, final_keep_best=True)


def test_cubic_schedule_prunes_early_and_reaches_the_target():
    from hwopt.passes.magnitude_prune import cubic_fraction, geometric_fraction
    f = 0.92
    cubic = [cubic_fraction(0.0, f, i / 4) for i in range(1, 5)]
    geo = [geometric_fraction(0.0, f, i / 4) for i in range(1, 5)]
    assert cubic[-1] == pytest.approx(f) and geo[-1] == pytest.approx(f)
    assert all(c > g for c, g in zip(cubic[:-1], geo[:-1]))  # ahead of geometric in every round but the last
    assert cubic[-1] - cubic[-2] < geo[-1] - geo[-2]  # so the last step is the smaller one
    assert cubic_fraction(0.5, f, 0.0) == pytest.approx(0.5)  # starts from the incoming sparsity
    # the pass: every round's pruned fraction follows the schedule, the end is at the target
    torch.manual_seed(0)
    g = hwopt.lift(models.lenet_300_100().eval(), X1)
    seen = []
    ctx = hwopt.PassContext(train=lambda m, **kw: seen.append(
        [float((l.weight == 0).float().mean()) for l in m.modules() if isinstance(l, torch.nn.Linear)]),
        evaluate=lambda m: 0.5)
    out = MagnitudePrune(quality=1.5, iterations=4, retrain_epochs=0.1, schedule="cubic", remove_dead=False).run(g, ctx)
    final = [float((l.weight == 0).float().mean()) for l in hwopt.lower(out).modules() if isinstance(l, torch.nn.Linear)]
    for layer in range(3):
        per_round = [s[layer] for s in seen]
        assert per_round == sorted(per_round) and per_round[-1] == pytest.approx(final[layer], abs=1e-3)
        assert per_round[0] == pytest.approx(cubic_fraction(0.0, final[layer], 0.25), abs=2e-3)
    with pytest.raises(hwopt.PassError, match="option 'schedule'.*'linear'"):
        MagnitudePrune(schedule="linear")
    assert hwopt.PassManager.parse("magnitude-prune{sparsity=0.9,schedule=cubic}").passes[0].schedule == "cubic"


def test_geometric_schedule_continues_from_a_pruned_net_round_by_round():
    """A second magnitude-prune from an already pruned net prunes in every round, the same share of the
    incoming survivors each time (it used to prune nothing until the last round, then all at once)."""
    from hwopt.passes.magnitude_prune import geometric_fraction
    assert geometric_fraction(0.0, 0.9, 0.5) == pytest.approx(1 - 0.1 ** 0.5)  # from dense: as before
    steps = [geometric_fraction(0.8, 0.9, i / 2) for i in range(1, 3)]
    assert steps[0] == pytest.approx(1 - 0.2 * 0.5 ** 0.5) and steps[1] == pytest.approx(0.9)
    assert geometric_fraction(0.95, 0.9, 0.5) == 0.95  # a layer past its target keeps its mask
    torch.manual_seed(0)
    g = hwopt.lift(models.lenet_300_100().eval(), X1)
    ctx = hwopt.PassContext(train=lambda m, **kw: None)
    first = MagnitudePrune(sparsity=0.8, iterations=1, retrain_epochs=0.1, remove_dead=False).run(g, ctx)
    seen = []
    ctx = hwopt.PassContext(train=lambda m, **kw: seen.append(
        sum(int((l.weight == 0).sum()) for l in m.modules() if isinstance(l, torch.nn.Linear))))
    MagnitudePrune(sparsity=0.9, iterations=2, retrain_epochs=0.1, remove_dead=False).run(first, ctx)
    total = sum(first[k].params["weight"].numel() for k in sp.prunable_layers(first))
    assert 0.83 * total < seen[0] < 0.87 * total  # round 1 prunes about half the step (0.859), not nothing
    assert seen[1] == pytest.approx(0.9 * total, rel=1e-3)
