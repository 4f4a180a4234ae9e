"""How well does the host cost model predict real latency? Random architectures, never calibrated on.

    OMP_WAIT_POLICY=PASSIVE python bench/cost_fidelity.py [--n 40] [--smoke] [--tune TRIALS] [--seed S]

Draws `--n` random CNNs (varied depth, widths, kernels 3/5/7, strides, input resolution, plain /
depthwise-separable / residual / squeeze-excite blocks) with a seed the calibration grid does not use,
lifts each, predicts its latency with `hwopt.targets.load_target("host")` (calibration runtime
"tvm-default", or "tvm-tuned" with --tune) and times it (1) compiled with TVM through
hwopt.tvm_backend, the deploy path (default schedules unless --tune: then MetaSchedule with the shared
per-target tuning database of the backend), and (2) in torch eager (runtime "torch-eager").
Prints, per runtime, the share of architectures predicted within ±10 % and ±20 %, the median
|error|, the Spearman rank correlation, and the script's own runtime.

OMP_WAIT_POLICY must be set before Python starts for torch's OpenMP pool to honour it on this
2-core machine; the script sets it with os.environ.setdefault before importing torch as a fallback.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402


class SE(nn.Module):
    def __init__(self, c):
        super().__init__()
        r = max(4, c // 4)
        self.pool, self.fc1, self.act, self.fc2, self.gate = (nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, r, 1), nn.ReLU(),
                                                              nn.Conv2d(r, c, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class Block(nn.Module):
    def __init__(self, kind, cin, w, k, s, expand):
        super().__init__()
        self.kind, self.skip = kind, (s == 1 and cin == w)
        if kind in ("mbconv", "mbconv-se"):
            h = cin * expand
            layers = [nn.Conv2d(cin, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
                      nn.Conv2d(h, h, k, s, k // 2, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6()]
            if kind == "mbconv-se":
                layers.append(SE(h))
            layers += [nn.Conv2d(h, w, 1, bias=False), nn.BatchNorm2d(w)]
            self.body = nn.Sequential(*layers)
        elif kind == "residual":
            self.body = nn.Sequential(nn.Conv2d(cin, w, k, s, k // 2, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                                      nn.Conv2d(w, w, k, 1, k // 2, bias=False), nn.BatchNorm2d(w))
            self.act = nn.ReLU()
        else:  # plain
            self.body = nn.Sequential(nn.Conv2d(cin, w, k, s, k // 2, bias=False), nn.BatchNorm2d(w), nn.ReLU())
            self.skip = False

    def forward(self, x):
        y = self.body(x)
        if self.skip:
            y = x + y
        if self.kind == "residual":
            y = self.act(y)
        return y


def random_arch(rng: np.random.Generator, small: bool = False) -> tuple[nn.Module, torch.Tensor, str]:
    """small: 32x32 input and widths <= 48 (untuned TVM runs a 2-GMAC random net for minutes)."""
    res = 32 if small else int(rng.choice([32, 48, 64, 96, 128]))
    family = str(rng.choice(["mobile", "resnet", "mixed"]))
    n_stages = int(rng.integers(2, 6))
    stem = int(rng.choice([8, 16, 24, 32]))
    layers: list[nn.Module] = [nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU()]
    cin, desc = stem, [f"r{res}", f"stem{stem}"]
    for i in range(n_stages):
        w = int(rng.choice([8, 16, 24, 32, 48] if small else [8, 16, 24, 32, 48, 64, 96, 128, 160]))
        k = int(rng.choice([3, 3, 5, 7]))
        depth = int(rng.integers(1, 4))
        kind = {"mobile": str(rng.choice(["mbconv", "mbconv-se"])), "resnet": "residual",
                "mixed": str(rng.choice(["mbconv", "mbconv-se", "residual", "plain"]))}[family]
        expand = int(rng.choice([1, 3, 4, 6]))
        s = 2 if (i > 0 and rng.random() < 0.6) else 1
        for d in range(depth):
            layers.append(Block(kind, cin, w, k, s if d == 0 else 1, expand))
            cin = w
        desc.append(f"{kind}:{w}k{k}s{s}x{depth}" + (f"e{expand}" if kind.startswith("mb") else ""))
    head = int(rng.choice([0, 128] if small else [0, 256, 512]))
    if head:
        layers += [nn.Conv2d(cin, head, 1, bias=False), nn.BatchNorm2d(head), nn.ReLU()]
        cin = head
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)]
    m = nn.Sequential(*layers).eval()
    for mod in m.modules():  # non-trivial BN stats (they do not change timing, but avoid denormals)
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_var.fill_(1.0)
    return m, torch.randn(1, 3, res, res), " ".join(desc)


def figures(pred: np.ndarray, meas: np.ndarray) -> dict:
    from scipy.stats import spearmanr
    err = np.abs(pred / meas - 1)
    return {"n": len(meas), "within10": float(np.mean(err <= 0.10)), "within20": float(np.mean(err <= 0.20)),
            "median_err": float(np.median(err)), "spearman": float(spearmanr(pred, meas).statistic) if len(meas) > 2 else float("nan")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=20240611, help="architecture seed (the calibration grid uses 0)")
    ap.add_argument("--smoke", action="store_true", help="5 small architectures: a CI-sized run")
    ap.add_argument("--small", action="store_true", help="small architectures (32x32 input, widths <= 48)")
    ap.add_argument("--tune", type=int, default=0, help="MetaSchedule trials (0: TVM default schedules)")
    ap.add_argument("--no-tvm", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per architecture")
    a = ap.parse_args(argv)
    t_start = time.time()

    import hwopt
    from hwopt.targets import load_target
    from hwopt.targets.calibrate import TorchRunner, TVMRunner

    n = 5 if a.smoke else a.n
    rng = np.random.default_rng(a.seed)
    archs = [random_arch(rng, small=a.smoke or a.small) for _ in range(n)]
    runtimes = []
    if not a.no_tvm:
        host = load_target("host")
        rt = "tvm-tuned" if a.tune else "tvm-default"
        if rt not in host.calibration:
            print(f"host.toml has no [calibration.{rt}]: run hwopt calibrate --target host" + (f" --tune {a.tune}" if a.tune else ""))
            return 2
        runtimes.append((rt, load_target("host", runtime=rt), TVMRunner(host.tvm_target, tune_trials=a.tune)))
    if not a.no_torch:
        runtimes.append(("torch-eager", load_target("host", runtime="torch-eager"), TorchRunner()))
    graphs = [hwopt.lift(m, x) for m, x, _ in archs]
    print(f"cost_fidelity: {n} random architectures (seed {a.seed}), host "
          f"{load_target('host').tvm_target.get('mcpu')} x{load_target('host').cores_used}; "
          f"MACs {min(g.stats()['macs'] for g in graphs) / 1e6:.1f}..{max(g.stats()['macs'] for g in graphs) / 1e6:.1f} M")
    for name, target, runner in runtimes:
        t0 = time.time()
        pred, meas = [], []
        for (m, x, desc), g in zip(archs, graphs):
            p = target.cost(g).latency_ms
            try:
                ms = runner.measure(m, x)
            except Exception as e:  # report, do not hide: a failed compile is a finding
                print(f"  [{name}] FAILED {desc}: {type(e).__name__}: {str(e)[:160]}")
                continue
            pred.append(p)
            meas.append(ms)
            if a.verbose:
                print(f"  [{name}] measured {ms:9.3f} ms  predicted {p:9.3f} ms  ({p / ms - 1:+6.1%})  {desc}")
        f = figures(np.array(pred), np.array(meas))
        sched = runner.schedules if hasattr(runner, "schedules") else ""
        print(f"{name:<12} n={f['n']:<3} within ±10%: {f['within10']:5.1%}  within ±20%: {f['within20']:5.1%}  "
              f"median |err| {f['median_err']:5.1%}  Spearman {f['spearman']:.3f}  ({time.time() - t0:.0f} s; {sched})")
    print(f"total runtime {time.time() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
