"""bench/machine_noise.py: the figures it prints are computed from the samples (the claim "this machine
does not repeat a timing" rests on them)."""
import importlib.util
from pathlib import Path

import numpy as np


def _bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "machine_noise.py"
    spec = importlib.util.spec_from_file_location("machine_noise", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_steady_timings_agree_and_phased_timings_do_not():
    bench = _bench()
    rng = np.random.default_rng(1)
    steady = bench.summary("steady", 10.0 * (1 + 0.01 * rng.standard_normal(400)), np.random.default_rng(0))
    assert "pairs within ±10 % 100.0%" in steady and "p90/p10 1.0" in steady
    # slow and fast phases of equal length, 1.5x apart: half the pairs straddle them
    phased = bench.summary("phased", np.repeat([10.0, 15.0, 10.0, 15.0], 100), np.random.default_rng(0))
    agree = float(phased.split("pairs within ±10 %")[1].split("%")[0])
    assert 40 < agree < 60
    assert "lag-1 autocorrelation 0.9" in phased


def test_runs_end_to_end(capsys):
    assert _bench().main(["--seconds", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "numpy matmul" in out and "python loop" in out
