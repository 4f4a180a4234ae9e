"""NAS on MNIST against the cortex-a72 cost model: REINFORCE vs random search, then serial vs Ray.

    python bench/nas.py --smoke              # ~1-2 minutes: the harness end to end, tiny budget
    python bench/nas.py                      # 3 seeds x (REINFORCE, random) x --samples children
    python bench/nas.py --ray                # also the same REINFORCE search on Ray with 2 local workers
    python bench/nas.py --confirm-steps 300  # retrain found vs baseline longer (searches resume from --out)

For each seed both strategies get the same number of proposals (duplicates are cached, not retrained),
the same proxy trainer (Adam on an MNIST subset, BN recalibrated, seeded) and the same reward
(hard preset: ACC, times T/LAT above T; T = the predicted latency of the space's MobileNetV2-style
member: all blocks MBConv6 k3, no SE, x1.0, base layers). Printed: best reward per run and mean per
strategy, whether the best child dominates the baseline (higher proxy accuracy at <= its predicted
latency), wall and CPU time. Every run checkpoints under --out, so an interrupted bench resumes.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from hwopt.passes.nas import ProxyTrainer, Search, SearchSpace, evaluate_child, EvalSpec, pareto_plot  # noqa: E402
from hwopt.fileio import atomic_write  # noqa: E402
from hwopt.targets import load_target  # noqa: E402


def cpu_seconds() -> float:
    r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny budget (~1-2 min)")
    ap.add_argument("--samples", type=int, default=40, help="children proposed per search")
    ap.add_argument("--batch", type=int, default=4, help="children per controller update")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--blocks", type=int, default=4, help="searched blocks (MnasNet-A1 has 7; 4 fits the CPU budget)")
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--head", type=int, default=128)
    ap.add_argument("--steps", type=int, default=24, help="proxy training steps per child")
    ap.add_argument("--train-limit", type=int, default=2048)
    ap.add_argument("--eval-limit", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32, help="proxy training batch size")
    ap.add_argument("--lr", type=float, default=3e-2)
    ap.add_argument("--reward", choices=("soft", "hard"), default="hard")
    ap.add_argument("--controller-lr", type=float, default=0.02)
    ap.add_argument("--ray", action="store_true", help="also run the first seed's REINFORCE search on Ray (2 workers)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the serial runs")
    ap.add_argument("--confirm-steps", type=int, default=0,
                    help="retrain each seed's best REINFORCE child and the baseline this many steps (batch 64, "
                         "10k train images) and compare on the 10k validation set")
    ap.add_argument("--out", default="/tmp/hwopt-nas-bench")
    ap.add_argument("--progress", action="store_true")
    a = ap.parse_args(argv)
    if a.smoke:
        a.samples, a.seeds, a.batch, a.steps, a.train_limit, a.eval_limit = 6, 1, 3, 6, 256, 300
        a.blocks, a.out = 4, a.out + "-smoke"
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)

    target = load_target("cortex-a72")
    space = SearchSpace(blocks=a.blocks, in_channels=1, num_classes=10, resolution=28, width=a.width, head=a.head)
    print(f"space: {space.blocks} blocks, {space.size:.3g} architectures; target {target.name}; "
          f"proxy: {a.steps} Adam steps x {a.batch_size} on {a.train_limit} MNIST train images, eval on {a.eval_limit} val")
    rows, results = [], {}
    t_all, cpu_all = time.perf_counter(), cpu_seconds()
    seeds = list(range(a.first_seed, a.first_seed + a.seeds))
    for seed in seeds:
        acc = ProxyTrainer(a.train_limit, a.eval_limit, a.steps, a.batch_size, lr=a.lr, seed=seed)
        for strategy in ("reinforce", "random"):
            opts = {"lr": a.controller_lr} if strategy == "reinforce" else {}
            t0, c0 = time.perf_counter(), cpu_seconds()
            res = Search(space, target, acc, strategy=strategy, samples=a.samples, batch=a.batch, seed=seed,
                         reward=a.reward, checkpoint=os.path.join(a.out, f"{strategy}-{seed}.jsonl"),
                         progress=a.progress, strategy_options=opts, evaluate_baseline=True).run()
            results[(strategy, seed)] = res
            base, best = res.baseline, res.best
            dominates = best["accuracy"] > base["accuracy"] and best["latency_ms"] <= base["latency_ms"]
            dom = res.dominating(base)
            any_dom = len({tuple(r["tokens"]) for r in dom})
            feasible = max(dom, key=lambda r: (r["accuracy"], -r["index"])) if dom else None
            rows.append(dict(strategy=strategy, seed=seed, best_reward=best["reward"], best_accuracy=best["accuracy"],
                             best_latency_ms=best["latency_ms"], best_arch=best["arch"],
                             baseline_accuracy=base["accuracy"], baseline_latency_ms=base["latency_ms"],
                             dominates=dominates, dominating_children=any_dom,
                             feasible_best=None if feasible is None else {k: feasible[k] for k in (
                                 "arch", "tokens", "accuracy", "latency_ms", "reward")}, evaluations=res.evaluations,
                             distinct=len(res.evaluated()), wall_s=time.perf_counter() - t0,
                             cpu_s=cpu_seconds() - c0))
            r = rows[-1]
            print(f"[{strategy:9s} seed {seed}] best reward {r['best_reward']:.4f} (acc {r['best_accuracy']:.3f}, "
                  f"{r['best_latency_ms']:.3f} ms) vs baseline acc {r['baseline_accuracy']:.3f} at "
                  f"{r['baseline_latency_ms']:.3f} ms: dominates={dominates} ({any_dom} distinct children dominate it); "
                  f"{r['distinct']} distinct archs, {r['evaluations']} trained now; wall {r['wall_s']:.0f} s, "
                  f"cpu {r['cpu_s']:.0f} s  [{r['best_arch']}]", flush=True)
    wall_all, cpu_total = time.perf_counter() - t_all, cpu_seconds() - cpu_all

    summary = {}
    for strategy in ("reinforce", "random"):
        rs = [r for r in rows if r["strategy"] == strategy]
        summary[strategy] = dict(mean_best_reward=statistics.mean(r["best_reward"] for r in rs),
                                 best_rewards=[round(r["best_reward"], 4) for r in rs],
                                 dominates=sum(r["dominates"] for r in rs),
                                 some_child_dominates=sum(r["dominating_children"] > 0 for r in rs), runs=len(rs))
    print("\n=== REINFORCE vs random search, equal proposals per run ===")
    for k, v in summary.items():
        print(f"{k:9s}: mean best reward {v['mean_best_reward']:.4f} {v['best_rewards']}; "
              f"best-reward child dominates the MobileNetV2-style baseline in {v['dominates']}/{v['runs']} seeds, "
              f"some child at <= its latency is more accurate in {v['some_child_dominates']}/{v['runs']}")
    ahead = summary["reinforce"]["mean_best_reward"] > summary["random"]["mean_best_reward"]
    print(f"REINFORCE ahead of random search: {ahead}")
    print(f"wall time {wall_all:.0f} s, CPU time of this process and its children {cpu_total / 60:.1f} CPU-minutes")

    pareto_plot({f"{s}-seed{seeds[0]}": results[(s, seeds[0])] for s in ("reinforce", "random")}, os.path.join(a.out, "pareto.png"),
                baseline=results[("reinforce", seeds[0])].baseline, target_ms=results[("reinforce", seeds[0])].target_ms,
                title="NAS on MNIST, cortex-a72 (predicted latency)")

    confirm = []
    if a.confirm_steps:
        print(f"\n=== confirmation: {a.confirm_steps} steps x 64 on 10k train images, 10k val images ===")
        for seed in seeds:
            res = results[("reinforce", seed)]
            long = ProxyTrainer(10000, 10000, a.confirm_steps, 64, lr=a.lr, seed=seed)
            spec = EvalSpec(space, target, long, seed)
            row_s = next(r for r in rows if r["strategy"] == "reinforce" and r["seed"] == seed)
            base = evaluate_child(spec, res.baseline["tokens"])
            cands = {"best-reward": res.best["tokens"]}
            if row_s["feasible_best"] and row_s["feasible_best"]["tokens"] != res.best["tokens"]:
                cands["best at <= baseline latency"] = row_s["feasible_best"]["tokens"]
            for label, tokens in cands.items():
                found = evaluate_child(spec, tokens)
                row = dict(seed=seed, child=label, arch=space.describe(tokens), found_accuracy=found["accuracy"],
                           found_latency_ms=found["latency_ms"], baseline_accuracy=base["accuracy"],
                           baseline_latency_ms=base["latency_ms"],
                           dominates=found["accuracy"] > base["accuracy"] and found["latency_ms"] <= base["latency_ms"])
                confirm.append(row)
                print(f"seed {seed} {label}: {row['found_accuracy']:.4f} at {row['found_latency_ms']:.3f} ms vs "
                      f"baseline {row['baseline_accuracy']:.4f} at {row['baseline_latency_ms']:.3f} ms: "
                      f"dominates={row['dominates']}  [{row['arch']}]", flush=True)

    ray_info = None
    if a.ray:
        serial = results[("reinforce", seeds[0])]
        serial_row = next(r for r in rows if r["strategy"] == "reinforce" and r["seed"] == seeds[0])
        ck = os.path.join(a.out, f"reinforce-{seeds[0]}-ray.jsonl")
        if os.path.exists(ck):
            os.unlink(ck)  # time a full run
        acc = ProxyTrainer(a.train_limit, a.eval_limit, a.steps, a.batch_size, lr=a.lr, seed=seeds[0])
        import ray
        t0 = time.perf_counter()
        ray.init(num_cpus=a.workers, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}})
        t_init = time.perf_counter() - t0
        try:
            res = Search(space, target, acc, strategy="reinforce", samples=a.samples, batch=a.batch, seed=seeds[0],
                         reward=a.reward, checkpoint=ck, executor="ray", workers=a.workers,
                         strategy_options={"lr": a.controller_lr}, evaluate_baseline=False).run()
        finally:
            ray.shutdown()
        same = res.evaluated() == serial.evaluated()
        ray_info = dict(serial_wall_s=serial_row["wall_s"], serial_trained=serial_row["evaluations"],
                        ray_wall_s=res.wall_seconds, ray_init_s=t_init, ray_trained=res.evaluations,
                        same_architectures=same, ray_best_reward=res.best["reward"])
        note = "" if serial_row["evaluations"] >= serial_row["distinct"] else \
            " (serial run was resumed from its checkpoint: its wall time is not a full run's)"
        print(f"\n=== serial vs Ray ({a.workers} local workers), REINFORCE seed {seeds[0]}, {a.samples} proposals ===")
        print(f"serial: {serial_row['wall_s']:.0f} s{note}; Ray: {res.wall_seconds:.0f} s (+ {t_init:.0f} s ray.init); "
              f"same architectures: {same}")
    out = dict(args=vars(a), rows=rows, summary=summary, reinforce_ahead=ahead, wall_s=wall_all,
               cpu_minutes=cpu_total / 60, ray=ray_info, confirm=confirm)
    atomic_write(os.path.join(a.out, "summary.json"), json.dumps(out, indent=2, default=str))
    print(f"plot and summary: {a.out}/pareto.png, {a.out}/summary.json")
    return out


if __name__ == "__main__":
    main()
