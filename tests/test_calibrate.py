"""Calibration: the fit recovers known coefficients; timing over a loopback TVM RPC server agrees with
local timing (the path a user's Raspberry Pi takes)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

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
    assert r.ident().endswith("threads1-cputime") and "1 thread" in r.schedules
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
