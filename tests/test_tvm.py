"""hwopt.tvm: torch -> TVM 0.27 Relax -> host/aarch64/Cortex-M artifacts, RPC and tuning."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time

import numpy as np
import pytest
import torch
from torch import nn

tb = pytest.importorskip("hwopt.tvm")

A72 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}
M7 = {"kind": "llvm", "mtriple": "thumbv7em-none-eabi", "mcpu": "cortex-m7"}


class SmallNet(nn.Module):
    """conv+BN+ReLU, residual add, depthwise conv, avgpool, linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = self.relu(self.bn(self.conv(x)))
        y = y + self.relu(self.bn2(self.dw(y)))
        return self.fc(torch.flatten(self.pool(y), 1))


def _model():
    torch.manual_seed(0)
    m = SmallNet()
    with torch.no_grad():  # non-trivial BN statistics, so a wrong BN lowering shows
        for bn in (m.bn, m.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return m.eval()


@pytest.fixture(scope="module")
def net():
    m = _model()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m(x).numpy()
    return m, x, ref


@pytest.fixture(scope="module")
def host_model(net):
    m, x, _ = net
    return tb.compile_module(m, (x,), "host")


def _elf_header(path):
    with open(path, "rb") as f:
        head = f.read(20)
    assert head[:4] == b"\x7fELF", f"{path} is not an ELF file"
    bits = {1: 32, 2: 64}[head[4]]
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return bits, machine


# ---------------------------------------------------------------------------------------------


def test_tvm_target_forms():
    host = tb.tvm_target("host")
    assert host.kind.name == "llvm"
    assert str(host.attrs["mcpu"]) == tb.host_cpu()
    assert tb.tvm_target({"kind": "llvm"}).attrs["mcpu"] == host.attrs["mcpu"]
    a72 = tb.tvm_target(A72)
    assert str(a72.attrs["mtriple"]) == "aarch64-linux-gnu"
    assert str(a72.attrs["mcpu"]) == "cortex-a72"
    assert tb.tvm_target('{"kind": "c"}').kind.name == "c"
    with pytest.raises(tb.CompileError) as ei:
        tb.tvm_target({"kind": "no-such-kind"})
    assert ei.value.stage == "target"
    assert isinstance(ei.value, RuntimeError)


def test_to_relax_binds_weights(net):
    m, x, _ = net
    mod = tb.to_relax(m, (x,))
    params = mod["main"].params
    assert len(params) == 1  # only the input: weights are constants
    assert [int(d) for d in params[0].ty.shape] == [1, 3, 16, 16]  # TVM 0.27: Var.ty (no struct_info)
    assert not m.training


def test_host_matches_torch(net, host_model):
    _, x, ref = net
    out = host_model.run(x)
    assert isinstance(out, np.ndarray) and out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(host_model.run(x.numpy()), ref, atol=1e-4, rtol=1e-4)
    assert host_model.tuned is False
    assert host_model.schedules and set(host_model.schedules.values()) == {"default"}
    stats = host_model.benchmark(repeat=3, number=1, min_repeat_ms=5)
    assert stats["median_ms"] > 0 and len(stats["results_ms"]) == 3
    assert {"mean_ms", "std_ms"} <= set(stats)


def test_export_load_roundtrip(net, host_model, tmp_path):
    _, x, ref = net
    path = host_model.export(tmp_path / "model.so")
    assert os.path.exists(path)
    assert sorted(os.listdir(tmp_path)) == ["model.so"]  # temp file renamed away
    bits, machine = _elf_header(path)
    loaded = tb.load_exported(path)
    np.testing.assert_allclose(loaded.run(x), ref, atol=1e-4, rtol=1e-4)
    # the plain TVM way works too
    import tvm
    import tvm_ffi
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(path), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x.numpy()))
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-4, rtol=1e-4)


def test_c_target_runs_on_host(net):
    m, x, ref = net
    cm = tb.compile_module(m, (x,), {"kind": "c"})
    np.testing.assert_allclose(cm.run(x), ref, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def a72_model(net):
    m, x, _ = net
    return tb.compile_module(m, (x,), A72)


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="no aarch64-linux-gnu-gcc")
def test_aarch64_export_is_elf_aarch64(net, a72_model, tmp_path):
    _, x, _ = net
    assert not a72_model.host_runnable
    path = a72_model.export(tmp_path / "a72.so")
    assert _elf_header(path) == (64, 183)  # EM_AARCH64
    with pytest.raises(tb.CompileError, match="remote"):
        a72_model.run(x)


def test_missing_cross_compiler_is_named(a72_model, tmp_path, monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda n, *a, **k: None if "aarch64" in n else real_which(n))
    with pytest.raises(tb.CompileError, match="aarch64-linux-gnu-gcc") as ei:
        a72_model.export(tmp_path / "a72.so")
    assert ei.value.stage == "export-lib"
    assert "cortex-a72" in str(ei.value)
    assert not os.listdir(tmp_path)


def test_cortex_m_exports_kernel_object(net, tmp_path):
    m, x, _ = net
    cm = tb.compile_module(m, (x,), M7)
    assert cm.bare_metal
    path = cm.export(tmp_path / "m7.tar")
    with tarfile.open(path) as tar:
        names = set(tar.getnames())
        assert {"lib0.o", "devc.o", "vm_bytecode.txt", "README.txt"} <= names
        tar.extract("lib0.o", tmp_path / "x")
    assert _elf_header(tmp_path / "x" / "lib0.o") == (32, 40)  # EM_ARM
    with pytest.raises(NotImplementedError):
        cm.run(x)


class _SqueezeExciteNet(nn.Module):
    """The int8 ops beyond conv: a squeeze-and-excite gate (mean, hard-sigmoid lookup table, broadcast int8
    product), a residual add and a concat requantized to their own scales, an average pool."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.se = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        z = self.conv(y)
        z = z * nn.functional.hardsigmoid(self.se(z.mean((2, 3), keepdim=True)))
        y = torch.cat([y + z, y], 1)
        return self.fc(torch.flatten(nn.functional.avg_pool2d(y, 8), 1))


def test_int8_graph_compiles_to_the_same_integers():
    import hwopt
    torch.manual_seed(0)
    g = hwopt.lift(_SqueezeExciteNet().eval(), torch.randn(1, 3, 8, 8))
    calib = [(torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(i)), None) for i in range(2)]
    qm = hwopt.lower(hwopt.PassManager.parse("quantize").run(g, hwopt.PassContext(data=calib)))
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = qm(x).numpy()
    np.testing.assert_array_equal(tb.compile_module(qm, (x,), "host").run(x), ref)  # bit-exact
    assert tb.compile_module(qm, (x,), M7).bare_metal  # and the Cortex-M kernel objects build


def test_compile_error_names_stage():
    class DataDependent(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # torch.export cannot trace this
                return x * 2
            return x

    with pytest.raises(tb.CompileError) as ei:
        tb.compile_module(DataDependent(), (torch.randn(1, 3),), "host")
    assert ei.value.stage == "export"
    assert "llvm" in str(ei.value)


def test_tuning_a_board_needs_a_tracker(net, tmp_path):
    m, x, _ = net
    with pytest.raises(tb.CompileError, match="tracker") as ei:
        tb.compile_module(m, (x,), A72, tune_trials=4, store=tmp_path)
    assert ei.value.stage == "tune"


# ---------------------------------------------------------------- RPC (loopback server)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def _rpc_server_process(tmp_path_factory):
    """Start the loopback RPC server when the module starts (it takes a few seconds to import
    tvm), so it boots while the other tests run; stopped on teardown."""
    port = _free_port()
    log = tmp_path_factory.mktemp("rpc") / "server.log"
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1",
             "--port", str(port), "--port-end", str(port + 1)],
            stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    try:
        yield proc, port, log
    finally:
        # the server forks a worker per session: stop the process group we created
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture(scope="module")
def rpc_server(_rpc_server_process):
    proc, port, log = _rpc_server_process
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            pytest.fail(f"rpc_server exited early: {log.read_text()[-2000:]}")
        if b"bind to" in log.read_bytes():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return "127.0.0.1", port
            except OSError:
                pass
        if time.monotonic() > deadline:
            pytest.fail(f"rpc_server did not start in 90 s: {log.read_text()[-2000:]}")
        time.sleep(0.2)


def test_rpc_loopback_run_and_time(net, host_model, rpc_server):
    _, x, ref = net
    host, port = rpc_server
    with tb.remote_session(host, port) as remote:
        out = host_model.run(x, remote=remote)
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)
        stats = host_model.benchmark(x, repeat=3, number=2, min_repeat_ms=0, remote=remote)
        assert stats["remote"] and stats["median_ms"] > 0


# ---------------------------------------------------------------- tuning


def test_tuning_reuses_database(tmp_path):
    # the deploy path: tune, reuse the database, apply it without tuning (~15 s since tuning is sized to the budget)
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU()).eval()
    x = torch.randn(1, 16, 28, 28)
    with torch.no_grad():
        ref = conv(x).numpy()
    first = tb.compile_module(conv, (x,), "host", tune_trials=8, store=tmp_path)
    assert first.tuned and first.tuning_trials > 0
    assert "tuned" in first.schedules.values()
    assert os.path.exists(os.path.join(first.database_dir, "database_tuning_record.json"))
    out1 = first.run(x)
    np.testing.assert_allclose(out1, ref, atol=1e-4, rtol=1e-4)

    second = tb.compile_module(conv, (x,), "host", tune_trials=8, store=tmp_path)
    assert second.tuning_trials == 0 and "tune_s" in second.timings
    assert second.tuned and second.schedules == first.schedules
    np.testing.assert_array_equal(second.run(x), out1)

    # without tune_trials, an existing database is still applied
    third = tb.compile_module(conv, (x,), "host", store=tmp_path)
    assert third.tuned and third.tuning_trials == 0


class _PoolHead(nn.Module):
    """`depth` convs, then a global mean: the mean's TIR reduction block is named after a Relax variable,
    which differs with `depth` while the workload is the same."""

    def __init__(self, depth: int):
        super().__init__()
        self.body = nn.Sequential(*[nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()) for _ in range(depth)])

    def forward(self, x):
        return self.body(x).mean(dim=(2, 3))


def _block_names(func) -> list[str]:
    return tb._SBLOCK_NAME.findall(func.script())


def test_canonical_block_names_make_equal_workloads_name_blocks_alike():
    import tvm
    import tvm_ffi

    x = torch.randn(1, 8, 16, 16)
    target = tb.tvm_target("host")
    prepared = [tb._prepare(tb.to_relax(_PoolHead(d).eval(), (x,), target=target), target) for d in (1, 3)]
    canonical = [tb._canonical_block_names(p) for p in prepared]
    funcs = [[f for f in p.functions.values() if isinstance(f, tvm.tirx.PrimFunc)] for p in canonical]
    pairs = [(a, b) for a in funcs[0] for b in funcs[1] if tvm_ffi.structural_equal(a, b)]
    assert pairs, "the two models share no workload"
    for a, b in pairs:
        assert _block_names(a) == _block_names(b)
        assert all(n == "root" or n.startswith("b") for n in _block_names(a))
    for before, after in zip(prepared, canonical):  # renaming changes nothing else
        assert set(gv.name_hint for gv in before.functions) == set(gv.name_hint for gv in after.functions)
        for gv, f in before.functions.items():
            if isinstance(f, tvm.tirx.PrimFunc):
                tvm.ir.assert_structural_equal(f, after[gv.name_hint])


def test_database_tuned_on_one_model_replays_on_another(tmp_path):
    # the mean workload is shared: records tuned on the first model must replay on the second
    torch.manual_seed(0)
    x = torch.randn(1, 8, 16, 16)
    first = tb.compile_module(_PoolHead(1).eval(), (x,), "host", tune_trials=2, store=tmp_path)
    assert first.tuned
    m2 = _PoolHead(3).eval()
    second = tb.compile_module(m2, (x,), "host", store=tmp_path)  # applies the database, no tuning
    assert second.tuned and second.tuning_trials == 0
    with torch.no_grad():
        np.testing.assert_allclose(second.run(x), m2(x).numpy(), atol=1e-4, rtol=1e-4)


def test_tune_module_then_compile_applies_the_database(tmp_path, monkeypatch):
    # the calibration/bench flow: tune several models first, build and time them later
    torch.manual_seed(0)
    x = torch.randn(1, 8, 16, 16)
    models = [_PoolHead(d).eval() for d in (1, 2)]
    scratch = tmp_path / "tmp"  # the temp dir of this process and of MetaSchedule's builder / runner workers
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert tb.tune_module(models[0], (x,), "host", tune_trials=2, store=tmp_path) > 0
    assert [p.name for p in scratch.iterdir() if p.name != "torchinductor_root"] == []  # builds removed
    assert tb.tune_module(models[0], (x,), "host", tune_trials=2, store=tmp_path) == 0  # already tuned
    for m in models:
        built = tb.compile_module(m, (x,), "host", store=tmp_path)
        assert built.tuned and set(built.schedules.values()) == {"tuned"}
        with torch.no_grad():
            np.testing.assert_allclose(built.run(x), m(x).numpy(), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="tune_trials"):
        tb.tune_module(models[0], (x,), "host", tune_trials=0, store=tmp_path)


def test_calibration_runner_times_a_prepared_model_without_the_tuning_check(tmp_path, monkeypatch):
    # calibrate/cost_fidelity: prepare() tunes every model, then each timing pass builds from the
    # database as it is (re-checking the tasks against the manifest cost ~5 s per model and pass)
    from hwopt.targets.calibrate import TVMRunner

    torch.manual_seed(0)
    x = torch.randn(1, 8, 16, 16)
    m = _PoolHead(1).eval()
    runner = TVMRunner(tb._host_spec(), tune_trials=2, store=str(tmp_path))
    runner.prepare(m, x)
    assert runner._database == tb.database_dir(tb._host_spec(), tmp_path)
    assert os.path.isfile(os.path.join(runner._database, "database_workload.json"))

    def no_tuning(*args, **kwargs):
        raise AssertionError("a prepared model was tuned (or checked) again")

    import hwopt.tvm.compile as tvm_compile
    monkeypatch.setattr(tvm_compile, "_tune", no_tuning)  # compile_module calls tuning through its module
    built = runner.build(m, x)
    assert built.tuned and set(built.schedules.values()) == {"tuned"} and built.tuning_trials == 0
    assert runner.measure(m, x) > 0


def test_database_is_opened_once_until_its_files_change(tmp_path):
    db = tb._open_database(str(tmp_path))
    assert tb._open_database(str(tmp_path)) is db  # parsing a large database once per process
    st = os.stat(tmp_path / "database_workload.json")  # another process wrote to it
    os.utime(tmp_path / "database_workload.json", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert tb._open_database(str(tmp_path)) is not db


def test_one_tuning_store_names_the_database(tmp_path):
    store = tb.TuningStore(str(tmp_path))
    d = store.directory("host")
    assert d == tb.database_dir("host", tmp_path) and d.startswith(str(tmp_path)) and not store.exists("host")
    assert tb.TuningStore.at(d).directory("cortex-a72-anything") == d  # one directory, as is
    assert tb.as_store(store=tmp_path) == store
    # work_dir= and database= are the old spellings: still accepted, with a DeprecationWarning naming store=
    with pytest.warns(DeprecationWarning, match="store="):
        assert tb.as_store(database=d) == tb.TuningStore.at(d)
    with pytest.warns(DeprecationWarning, match="store="):
        assert tb.as_store(work_dir=tmp_path) == store
    with pytest.raises(ValueError, match="one of store="):
        tb.as_store(store, work_dir=tmp_path)
