"""Calibration: the fit recovers known coefficients; timing over a loopback TVM RPC server agrees with
local timing (the path a user's Raspberry Pi takes)."""
from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hwopt
import hwopt.targets as T
from hwopt.targets import calibrate as C
from hwopt.targets.cost import Coefficients
from hwopt.targets.schema import KINDS


def test_fit_recovers_known_coefficients():
    t = T.load_target("host")
    ws = C.micro_grid("small")
    graphs = [hwopt.lift(*w.build()) for w in ws]
    design = C.Design.from_graphs(graphs, 4)
    truth = Coefficients(np.linspace(0.05, 0.6, len(KINDS)), np.linspace(0.2, 2.0, len(KINDS)),
                         np.linspace(0.5, 8.0, len(KINDS)), 3.0)
    ms = design.predict_s(truth, t.peak_macs_per_s, t.bandwidth_bytes_s) * 1e3
    fit = C.fit_coefficients(design, ms, t.peak_macs_per_s, t.bandwidth_bytes_s)
    pred = design.predict_s(fit, t.peak_macs_per_s, t.bandwidth_bytes_s) * 1e3
    assert np.median(np.abs(pred / ms - 1)) < 0.01
    # compute-bound kinds with many samples are identified
    for k in ("conv", "pointwise"):
        j = KINDS.index(k)
        assert abs(fit.compute_eff[j] / truth.compute_eff[j] - 1) < 0.1, k


def test_fit_terms_recovers_known_terms():
    """The "terms" form is linear in its coefficients: a noiseless synthetic truth over the small grid
    plus random blocks is fit to < 1 % and the GEMM kinds' leading terms are identified."""
    from hwopt.targets.schema import TERMS
    ws = C.micro_grid("small") + [w for w in C.wide_grid() if w.kind in ("block", "conv")][:60]
    design = C.Design.from_graphs([hwopt.lift(*w.build()) for w in ws], 4)
    rng = np.random.default_rng(3)
    truth = np.zeros((len(KINDS), len(TERMS)))
    for i in range(len(KINDS)):
        truth[i, 0] = rng.uniform(2, 20) * 1e-6           # one: 2..20 µs
        truth[i, 1] = rng.uniform(2e-5, 2e-4) * 1e-6     # work
        truth[i, 2] = rng.uniform(1e-4, 1e-3) * 1e-6     # out
    z = np.zeros(len(KINDS))
    c_true = Coefficients(z + 1, z + 1, z, 1.0, truth)
    ms = design.predict_s(c_true, 1.0, 1.0) * 1e3
    fit = C.fit_terms(design, ms)
    assert fit.form == "terms" and (fit.terms >= 0).all()
    pred = design.predict_s(fit, 1.0, 1.0) * 1e3
    assert np.median(np.abs(pred / ms - 1)) < 0.01
    for k in ("conv", "pointwise"):
        j = KINDS.index(k)
        assert abs(fit.terms[j, 1] / truth[j, 1] - 1) < 0.15, (k, fit.terms[j], truth[j])


def test_measurement_cache_resumes(tmp_path):
    calls = []

    class Fake:
        runtime = "fake"

        def ident(self):
            return "fake-1"

        def measure(self, module, example):
            calls.append(1)
            return 1.5

    ws = C.micro_grid("tiny")[:3]
    cache = tmp_path / "m.json"
    assert [m for _, m in C.measure_all(ws, Fake(), cache, progress=False)] == [1.5] * 3
    assert len(calls) == 3
    C.measure_all(ws, Fake(), cache, progress=False)
    assert len(calls) == 3  # all three came from the cache
    # more passes: each workload timed again once per extra pass, the minimum kept; resumable
    C.measure_all(ws, Fake(), cache, progress=False, passes=3)
    assert len(calls) == 3 + 2 * 3
    C.measure_all(ws, Fake(), cache, progress=False, passes=3)
    assert len(calls) == 9


def test_measure_all_keeps_the_minimum(tmp_path):
    vals = iter([3.0, 2.0, 5.0])

    class Fake:
        runtime = "fake"

        def ident(self):
            return "fake-2"

        def measure(self, module, example):
            return next(vals)

    ws = C.micro_grid("tiny")[:1]
    assert C.measure_all(ws, Fake(), tmp_path / "m.json", progress=False, passes=3)[0][1] == 2.0


def test_torch_runner_threads():
    import torch
    before = torch.get_num_threads()
    r = C.TorchRunner(1)
    from hwopt.targets.probe import cpu_id
    # the cache key names the CPU: a timing from another CPU is never taken for this machine's
    assert r.ident().endswith(f"threads1-cputime-cpu[{cpu_id()}]") and "1 thread" in r.schedules
    m, x = C.micro_grid("tiny")[0].build()
    assert r.measure(m, x) > 0
    assert torch.get_num_threads() == before  # restored


def test_cli_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        C.main(["--target", "host", "--tracker", "127.0.0.1:9190"])  # needs --key
    with pytest.raises(SystemExit):
        C.main(["--target", "host", "--rpc", "nohostport"])
    with pytest.raises(SystemExit):  # TVM threads are set on this machine, not on a device
        C.main(["--target", "host", "--rpc", "127.0.0.1:9090", "--threads", "2"])
    with pytest.raises(SystemExit):  # nothing to tune
        C.main(["--target", "host", "--runtime", "torch", "--tune-only"])
    for opt in ("--nets", "--small-nets", "--blocks"):
        with pytest.raises(SystemExit):
            C.main(["--target", "host", "--dry-run", opt, "-1"])
    with pytest.raises(ValueError, match="threads"):
        C.TVMRunner({"kind": "llvm"}, rpc=("127.0.0.1", 9090), threads=2)


# --------------------------------------------------------------------------------------------------
# Loopback RPC


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def rpc_server():
    pytest.importorskip("tvm")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port),
                             "--port-end", str(port + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    try:
        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail("tvm.exec.rpc_server exited at start-up")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.time() > deadline:
                    pytest.fail("tvm.exec.rpc_server did not listen within 60 s")
                time.sleep(0.3)
        time.sleep(0.5)
        yield ("127.0.0.1", port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# compute-bound shapes (untuned TVM: a few ms each), one or two per kind
RPC_WORKLOADS = [
    C._w("conv", cin=16, cout=32, k=3, s=1, hw=28, g=1, bn=False, act="relu"),
    C._w("conv", cin=32, cout=32, k=3, s=1, hw=14, g=1, bn=True, act="none"),
    C._w("conv", cin=48, cout=64, k=1, s=1, hw=28, g=1, bn=False, act="none"),
    C._w("conv", cin=64, cout=64, k=1, s=1, hw=14, g=1, bn=False, act="relu"),
    C._w("conv", cin=128, cout=128, k=7, s=1, hw=56, g=128, bn=False, act="none"),
    C._w("dense", fin=1024, fout=256, act="none"),
]


@pytest.mark.slow  # ~50 s on an idle 2-core machine; timing-based, so it needs the machine to itself
def test_rpc_calibration_matches_local(rpc_server, tmp_path):
    """The full calibrate() path over RPC, then local vs RPC timings interleaved workload by workload
    (other processes on a shared 2-core machine swing untuned TVM timings by up to 2x over seconds;
    interleaving makes both sides see the same load) and fit the same way: coefficients within 20 %."""
    host_file = tmp_path / "host.toml"
    host_file.write_text((T.TARGET_DIR / "host.toml").read_text())
    # compute efficiency only (memory and overhead terms switched off): identified by every sample
    fit_kw = {"params": ("compute_eff",), "fit_p": False,
              "base": Coefficients(np.full(len(KINDS), 0.1), np.full(len(KINDS), 1e6), np.zeros(len(KINDS)), 8.0)}
    rep = C.calibrate(str(host_file), runtime="tvm", rpc=rpc_server, cache=tmp_path / "rpc.json", write=True,
                      cv=False, progress=False, workloads=RPC_WORKLOADS[:4], fit_kw=fit_kw, form="roofline")
    assert len(rep["measurements"]) == 4
    assert "RPC 127.0.0.1" in rep["table"]["source"]
    assert "RPC 127.0.0.1" in T.load_target(host_file, runtime="tvm-default").calibration_info["source"]

    t = T.load_target("host")
    local, remote = C.TVMRunner(t.tvm_target), C.TVMRunner(t.tvm_target, rpc=rpc_server)
    loc, rem = {}, {}
    for rnd in range(3):
        for w in RPC_WORKLOADS:
            m, x = w.build()
            for side in ((local, loc), (remote, rem))[:: 1 if rnd % 2 == 0 else -1]:
                runner, store = side
                store[w] = min(store.get(w, np.inf), runner.measure(m, x))
    c_loc, _, _ = C.fit_measurements(t, list(loc.items()), fit_kw, cv=False, form="roofline")
    c_rem, _, _ = C.fit_measurements(t, list(rem.items()), fit_kw, cv=False, form="roofline")
    for kind in ("conv", "pointwise", "depthwise", "dense"):
        j = KINDS.index(kind)
        a, b = c_loc.compute_eff[j], c_rem.compute_eff[j]
        assert abs(b / a - 1) <= 0.20, (kind, a, b, {w.key: (loc[w], rem[w]) for w in RPC_WORKLOADS})


# --------------------------------------------------------------------------------------------------
# The measurement cache is validated before anything is written back (issue 19 item 6)


class _OneMs:
    runtime = "fake"

    def ident(self):
        return "fake-cache"

    def measure(self, module, example):
        return 1.0


@pytest.mark.parametrize("content", ["{not json", "[1, 2, 3]", '{"k": "fast"}', '{"k": -1}', "\xff\xfe"],
                         ids=["not-json", "not-object", "string-value", "negative", "not-utf8"])
def test_corrupt_cache_is_an_error_and_left_untouched(tmp_path, content):
    from hwopt.errors import TargetError
    cache = tmp_path / "t.measurements.json"
    cache.write_bytes(content.encode("latin-1"))
    before = cache.read_bytes()
    with pytest.raises(TargetError) as e:
        C.measure_all(C.micro_grid("tiny")[:1], _OneMs(), cache, progress=False)
    assert str(cache) in str(e.value) and "untouched" in str(e.value)
    assert cache.read_bytes() == before


def test_measure_all_without_write_cache_writes_nothing(tmp_path):
    cache = tmp_path / "m.json"
    out = C.measure_all(C.micro_grid("tiny")[:2], _OneMs(), cache, progress=False, write_cache=False)
    assert [m for _, m in out] == [1.0, 1.0] and not cache.exists()


def test_dry_run_writes_nothing(tmp_path, capsys):
    """`hwopt calibrate --dry-run` times and fits but neither the target file nor a cache appears or changes."""
    target = tmp_path / "board.toml"
    target.write_text((T.TARGET_DIR / "host.toml").read_text())
    before = target.read_bytes()
    assert C.main(["--target", str(target), "--runtime", "torch", "--size", "tiny", "--no-models", "--passes", "1",
                   "--form", "terms", "--dry-run"]) == 0
    assert "would write" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["board.toml"] and target.read_bytes() == before


def test_shipped_targets_keep_their_cache_in_data():
    from hwopt.targets.calibrate.run import default_cache_path
    assert default_cache_path(T.TARGET_DIR / "host.toml") == T.TARGET_DIR / "data" / "host.measurements.json"
    assert (T.TARGET_DIR / "data" / "host.measurements.json").is_file()
    assert default_cache_path("/x/board.toml") == __import__("pathlib").Path("/x/board.measurements.json")


# --------------------------------------------------------------------------------------------------
# hwopt calibrate --from-table: fit to a table of measured models


SHIPPED_PI4 = T.TARGET_DIR / "data" / "nasbench201_raspi4.csv"


def _small_table(tmp_path, n_fit=8, n_test=4):
    lines = SHIPPED_PI4.read_text().splitlines()
    fit = [line for line in lines[1:] if line.endswith(",fit")][:n_fit]
    test = [line for line in lines[1:] if line.endswith(",test")][:n_test]
    p = tmp_path / "board.csv"
    p.write_text("\n".join([lines[0]] + fit + test) + "\n")
    return p


@pytest.mark.parametrize("text,what", [
    ("model\nhwopt.models:lenet5\n", "latency_ms"),
    ("model,latency_ms,speed\nhwopt.models:lenet5,1.0,3\n", "unknown column 'speed'"),
    ("model,latency_ms\nhwopt.models:lenet5,fast\n", "line 2: latency_ms must be a number"),
    ("model,latency_ms\nhwopt.models:lenet5,-2\n", "line 2: latency_ms must be > 0"),
    ("model,latency_ms,input_shape\nhwopt.models:lenet5,1.0,1;1;28\n", "line 2: input_shape"),
    ("model,latency_ms\nhwopt.models:lenet5,1.0\n", "line 2: no input shape"),
    ("model,latency_ms,input_shape,split\nhwopt.models:lenet5,1.0,\"1,1,28,28\",train\n", "line 2: split"),
    ("model,latency_ms\n", "no rows"),
])
def test_bad_measurement_tables_are_named(tmp_path, text, what):
    from hwopt.errors import TargetError
    p = tmp_path / "t.csv"
    p.write_text(text)
    with pytest.raises(TargetError, match=what):
        C.read_table(p)


def test_from_table_fits_reports_and_writes(tmp_path, capsys):
    """A new board's table: 8 fit rows (leave-one-out), 4 test rows kept apart; the table written into
    the target carries provenance, held-out error and rank correlation; --dry-run writes nothing."""
    target = tmp_path / "board.toml"
    target.write_text((T.TARGET_DIR / "pixel-3.toml").read_text())
    table = _small_table(tmp_path)
    argv = ["--target", str(target), "--from-table", str(table), "--runtime", "tflite", "--prior", "cortex-a72:tflite"]
    before = target.read_bytes()
    assert C.main(argv + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "held out (leave-one-out)" in out and "4 test rows" in out and "would write" in out
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["board.csv", "board.toml"]
    assert C.main(argv + ["--make-default"]) == 0
    t = T.load_target(str(target))
    info = t.calibration_info
    assert t.runtime == "tflite" and "bootstrap" not in t.runtimes
    assert info["provenance"] == "measured" and info["prior"] == "cortex-a72:tflite" and info["samples"] == 8
    assert info["test_samples"] == 4 and 0 <= info["loo_error"] < 0.5 and -1 <= info["rank_correlation"] <= 1
    # NAS-Bench-201 has no depthwise conv: that kind comes from the prior, not a cost of 0
    assert t.coefficients.terms[T.KINDS.index("depthwise")].sum() > 0


def test_from_table_rejects_timing_options(tmp_path):
    with pytest.raises(SystemExit):
        C.main(["--target", "host", "--from-table", str(SHIPPED_PI4), "--runtime", "tflite", "--tune", "8"])
    with pytest.raises(SystemExit):
        C.main(["--target", "host", "--from-table", str(SHIPPED_PI4)])  # which runtime was measured?
    with pytest.raises(SystemExit):
        C.main(["--target", "host", "--runtime", "tflite"])  # a free runtime name needs --from-table


def test_prior_fit_recovers_a_scaled_device():
    """HELP's setting: the new device is the old one scaled (x0.4) with one kind 2x slower; from 6 rows
    the prior fit gets it, where a fit from scratch has too few rows for its terms."""
    ws = [w for w in C.micro_grid("small") if w.kind in ("conv", "pool", "eltwise")]
    d = C.Design.from_graphs([hwopt.lift(*w.build()) for w in ws], 4)
    rng = np.random.default_rng(0)
    prior = np.zeros((len(KINDS), 9))
    prior[:, :3] = rng.uniform(1e-7, 1e-5, (len(KINDS), 3))
    truth = prior * 0.4
    truth[KINDS.index("pooling")] *= 2.0
    z = np.zeros(len(KINDS))
    ms = d.predict_s(Coefficients(z + 1, z + 1, z, 1.0, truth), 1, 1) * 1e3
    from hwopt.targets.calibrate.table import fit_table
    few = np.arange(0, d.n, max(1, d.n // 6))[:6]
    c = fit_table(d.subset(few), ms[few], prior)[0]
    pred = d.predict_s(c, 1, 1) * 1e3
    assert np.median(np.abs(pred / ms - 1)) < 0.05


def test_shipped_tflite_tables_predict_their_test_rows():
    """cortex-a72 / pixel-3 [calibration.tflite] against 30 of the published test rows shipped beside them
    (never fit): the figures the bench reports on 5,000 rows, at a glance (full: bench/device_fidelity.py)."""
    from scipy.stats import spearmanr

    from hwopt.targets.calibrate.table import design_of, read_table
    for name, csv in (("cortex-a72", "nasbench201_raspi4.csv"), ("pixel-3", "nasbench201_pixel3.csv")):
        t = T.load_target(name, runtime="tflite")
        rows = [r for r in read_table(T.TARGET_DIR / "data" / csv) if r.split == "test"][:30]
        d = design_of(rows, T.TARGET_DIR / "data", t)
        ms = np.array([r.latency_ms for r in rows])
        pred = d.predict_s(t.coefficients, t.peak_macs_per_s, t.bandwidth_bytes_s) * 1e3
        assert np.median(np.abs(pred / ms - 1)) < 0.12, name
        assert spearmanr(pred, ms)[0] > 0.9, name


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(3, 12), st.floats(0.01, 10.0))
def test_prior_fit_is_nonnegative_hence_monotone(seed, n, lam):
    """Whatever the data and prior, the prior fit's coefficients are >= 0: with the terms' monomials
    non-decreasing in every channel count, its cost never rises when channels are removed (the
    property test_cost checks for any non-negative terms table)."""
    from hwopt.targets.calibrate.table import fill_unidentified_kinds, fit_terms_prior, prior_scale
    rng = np.random.default_rng(seed)
    full = _tiny_design()
    d = full.subset(np.sort(rng.choice(full.n, size=min(n, full.n), replace=False)))
    prior = rng.uniform(0, 1e-6, (len(KINDS), 9)) * (rng.random((len(KINDS), 9)) < 0.5)
    ms = rng.uniform(0.01, 10.0, d.n)
    c = fit_terms_prior(d, ms, prior, lam)
    c2, _ = fill_unidentified_kinds(c, d, prior, prior_scale(d, ms, prior))
    assert (c.terms >= 0).all() and (c2.terms >= 0).all() and np.isfinite(c2.terms).all()


@functools.cache
def _tiny_design():
    return C.Design.from_graphs([hwopt.lift(*w.build()) for w in C.micro_grid("tiny")], 4)
