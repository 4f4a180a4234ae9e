"""optimize(): budgets met or refused with the closest figures; bad input is a clear error; exports load."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import hwopt
from hwopt import models
from hwopt.targets import available, load_target


def small_input(name):
    shape = models.MODELS[name][1]
    return torch.randn(1, *shape[1:]) if shape[-1] <= 32 else torch.randn(1, shape[1], 64, 64)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_half_latency_is_met_or_refused_on_every_target(name):
    m = models.get(name).eval()
    x = small_input(name)
    outcomes = set()
    for tname in available():
        target = load_target(tname)
        start = target.cost(hwopt.lift(m, x)).latency_ms
        try:
            r = hwopt.optimize(m, target, x, budget={"latency_ms": start / 2})
        except hwopt.BudgetError as e:
            assert "latency_ms" in e.closest and e.closest["latency_ms"] > start / 2
            assert "latency_ms=" in str(e)
            outcomes.add("refused")
            continue
        assert r.after["latency_ms"] <= start / 2 * (1 + 1e-9)
        assert r.model(x).shape == m(x).shape
        outcomes.add("met")
    assert outcomes


def test_both_outcomes_occur():
    m = models.get("mnist_cnn").eval()
    x = torch.randn(1, 1, 28, 28)
    target = load_target("cortex-m7")
    start = target.cost(hwopt.lift(m, x)).latency_ms
    assert hwopt.optimize(m, target, x, budget={"latency_ms": start / 2}).after["latency_ms"] <= start / 2
    with pytest.raises(hwopt.BudgetError, match=r"out of reach on cortex-m7.*needs latency_ms=") as e:
        hwopt.optimize(m, target, x, budget={"latency_ms": start / 1000})
    assert e.value.closest["latency_ms"] > start / 1000


def test_multi_resource_budget_and_report(tmp_path):
    m = models.get("mnist_cnn").eval()
    x = torch.randn(1, 1, 28, 28)
    before = hwopt.load_target("cortex-m4").cost(hwopt.lift(m, x))
    budget = {"peak_sram_bytes": before.peak_sram_bytes * 0.8, "flash_bytes": before.flash_bytes * 0.6}
    r = hwopt.optimize(m, "cortex-m4", x, budget=budget)
    assert all(r.after[k] <= v for k, v in budget.items())
    assert "channel-prune{ratio=" in r.pipeline and "bisection" in r.why
    assert hwopt.PassManager.parse(r.pipeline)  # the recipe is a valid pipeline
    files = r.write_report(tmp_path)
    assert {p.name for p in files} >= {"report.md", "report.json", "latency_by_kind.png", "widths.png"}
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["pipeline"] == r.pipeline and rep["after"]["flash_bytes"] == r.after["flash_bytes"]


def test_user_model_is_never_mutated():
    m = models.get("mnist_cnn").train()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    hwopt.optimize(m, "cortex-m7", torch.randn(1, 1, 28, 28), budget={"macs": 5e5})
    assert m.training and all(torch.equal(state[k], v) for k, v in m.state_dict().items())


# --- bad input: a clear error, nothing written ----------------------------------------------------

def test_unknown_target_lists_known_ones():
    with pytest.raises(hwopt.TargetError, match=r"cortex-a72.*cortex-m7"):
        hwopt.optimize(models.get("mnist_cnn"), "cortex-z9", torch.randn(1, 1, 28, 28))


def test_unreadable_target_file(tmp_path):
    bad = tmp_path / "broken.toml"
    bad.write_text("name = 'x'\nclock_mhz = [unclosed\n")
    with pytest.raises(hwopt.TargetError, match="broken.toml"):
        hwopt.optimize(models.get("mnist_cnn"), str(bad), torch.randn(1, 1, 28, 28))


def test_wrong_example_input_shape():
    with pytest.raises(hwopt.ShapeError, match=r"conv2d expects input \[N, 1, H, W\]"):
        hwopt.optimize(models.get("mnist_cnn"), "cortex-m7", torch.randn(1, 3, 28, 28))


@pytest.mark.parametrize("budget, match", [
    ({"speed": 1.0}, r"unknown budget resource 'speed'; known resources: latency_ms, peak_sram_bytes"),
    ({"latency_ms": -1.0}, r"budget 'latency_ms' must be a positive number, got -1.0"),
    ({"flash_bytes": float("nan")}, r"'flash_bytes' must be a positive number"),
    ({"macs": "many"}, r"'macs' must be a positive number"),
])
def test_bad_budgets(budget, match):
    with pytest.raises(hwopt.BudgetError, match=match):
        hwopt.optimize(models.get("mnist_cnn"), "cortex-m7", torch.randn(1, 1, 28, 28), budget=budget)


def test_unsupported_op_names_module():
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Sequential(nn.LSTM(4, 4)))
    with pytest.raises(hwopt.UnsupportedOpError, match=r"LSTM.*'1\.0'"):
        hwopt.optimize(m, "cortex-m7", torch.randn(1, 1, 8, 8))


def test_cli_failures_write_nothing(tmp_path):
    out = tmp_path / "out"
    for args in (["--target", "cortex-z9"], ["--target", "cortex-m7", "--budget", "latency_ms=-3"],
                 ["--target", "cortex-m7", "--input-shape", "1,3,28,28"]):
        argv = ["optimize", "hwopt.models:mnist_cnn", "--input-shape", "1,1,28,28", *args, "--out", str(out), "--export", "torch"]
        r = subprocess.run([sys.executable, "-m", "hwopt.cli", *argv], capture_output=True, text=True, timeout=300)
        assert r.returncode == 1, r.stderr
        assert "error:" in r.stderr and "Traceback" not in r.stderr
        assert not out.exists()


# --- exports ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def optimized():
    m = models.get("mnist_cnn").eval()
    return hwopt.optimize(m, "host", torch.randn(1, 1, 28, 28), budget={"macs": 9e5})


def test_torch_export_loads_and_matches(optimized, tmp_path):
    path = optimized.export(tmp_path / "m.pt2", "torch")
    ep = torch.export.load(str(path))
    x = torch.randn(1, 1, 28, 28)
    torch.testing.assert_close(ep.module()(x), optimized.model(x), atol=1e-5, rtol=1e-5)


def test_onnx_export_matches_in_onnxruntime(optimized, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = optimized.export(tmp_path / "m.onnx", "onnx")
    sess = ort.InferenceSession(str(path))
    x = torch.randn(1, 1, 28, 28)
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(y, optimized.model(x).detach().numpy(), atol=1e-4, rtol=1e-4)


def test_tvm_export_for_host_loads_and_matches(optimized, tmp_path):
    from hwopt import tvm as tvm_backend
    path = optimized.export(tmp_path / "m.so", "tvm")
    loaded = tvm_backend.load_exported(str(path))
    x = torch.randn(1, 1, 28, 28)
    np.testing.assert_allclose(loaded.run(x), optimized.model(x).detach().numpy(), atol=1e-4, rtol=1e-4)


def test_unknown_export_format(optimized, tmp_path):
    with pytest.raises(hwopt.HwoptError, match="unknown export format 'tflite'"):
        optimized.export(tmp_path / "m.tflite", "tflite")
    assert not (tmp_path / "m.tflite").exists()


def test_demo_runs_at_reduced_size(tmp_path):
    """README's quick start (`hwopt demo --target cortex-m7`) at a reduced size."""
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "hwopt.cli", "demo", "--target", "cortex-m7", "--out", str(out),
                        "--train-limit", "2000", "--epochs", "0.5", "--eval-limit", "1000", "--json"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout)
    rep = info["report"]
    assert rep["after"]["latency_ms"] <= rep["budget"]["latency_ms"]
    assert rep["after"]["peak_sram_bytes"] <= rep["budget"]["peak_sram_bytes"]
    before_acc, after_acc = rep["accuracy"]["accuracy"]
    assert before_acc > 0.8 and after_acc > 0.7
    assert (out / "report.md").exists() and (out / "model.pt2").exists()
    from hwopt.firmware import toolchain_missing
    fw = info["firmware"]  # the demo ends with an int8 firmware image run in QEMU (where the toolchain is)
    assert fw["int8_accuracy"] > 0.7
    if toolchain_missing() is None:
        assert fw["equal_to_lower"] and fw["elf_flash_bytes"] <= 1048576 and fw["elf_ram_bytes"] <= 327680
