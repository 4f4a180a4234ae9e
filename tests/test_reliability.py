"""Issue 19's remaining reliability items outside the CLI table: non-UTF-8 target files (item 9), bench
results written atomically, and the RPC example not telling users to expose an unauthenticated server."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import hwopt
from hwopt import models
from hwopt.errors import TargetError
from hwopt.targets import TARGET_DIR, load_target
from hwopt.targets.tomlio import update_runtime, write_calibration

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def latin1_target(tmp_path):
    """A valid target file whose description was saved as Latin-1 (é = 0xe9)."""
    text = (TARGET_DIR / "cortex-m7.toml").read_text()
    text = text.replace('description = "', 'description = "caf\u00e9 board, ', 1)
    assert "caf\u00e9" in text
    p = tmp_path / "board.toml"
    p.write_bytes(text.encode("latin-1"))
    return p


def test_non_utf8_target_is_a_target_error_naming_the_file(latin1_target):
    line = next(i for i, ln in enumerate(latin1_target.read_bytes().split(b"\n"), 1) if b"\xe9" in ln)
    with pytest.raises(TargetError, match=rf"in {latin1_target}: not UTF-8 text \(byte 0xe9 on line {line}\)"):
        load_target(latin1_target)
    with pytest.raises(TargetError, match="not UTF-8"):
        hwopt.optimize(models.mnist_cnn(), str(latin1_target), torch.randn(1, 1, 28, 28))


def test_calibration_write_back_refuses_non_utf8_and_leaves_the_file(latin1_target):
    before = latin1_target.read_bytes()
    with pytest.raises(TargetError, match="not UTF-8"):  # refused before the new tables are even formatted
        write_calibration(latin1_target, {"default": "tvm-default"})
    with pytest.raises(TargetError, match="not UTF-8"):
        update_runtime(latin1_target, "tvm", {})
    assert latin1_target.read_bytes() == before


def _writes_in_place(path: Path) -> list[str]:
    """Calls of open(..., 'w'/'a'/'x') and json.dump(...) in a script: result files written non-atomically."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        modes = [a.value for a in node.args[1:2] + [k.value for k in node.keywords if k.arg == "mode"]
                 if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        if (name == "open" and any(set(m) & set("wax") for m in modes)) or name == "dump":
            bad.append(f"{path.name}:{node.lineno}")
    return bad


@pytest.mark.parametrize("script", ["han2015.py", "nas.py"])
def test_bench_results_are_written_atomically(script):
    assert _writes_in_place(ROOT / "bench" / script) == []


def test_rpc_example_does_not_expose_an_unauthenticated_server():
    text = (ROOT / "examples" / "new_target_and_calibrate.py").read_text()
    assert "unauthenticated" in text and "ssh -N -L" in text
    assert "--host 0.0.0.0" not in text and "--host 127.0.0.1" in text
