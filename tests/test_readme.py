"""README's quick start runs as written (the demo at a reduced size: tests/test_optimize.py)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_blocks_run(index, tmp_path):
    code = python_blocks()[index]
    if "@given" in code:  # a test template: run it as a test
        path = tmp_path / "test_readme_block.py"
        path.write_text(code)
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)]
    else:
        cmd = [sys.executable, "-c", code]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def test_readme_shell_commands_run(tmp_path):
    text = README.read_text()
    commands = re.findall(r"^\.venv/bin/hwopt (.*)$", text, re.M)
    assert any(c.startswith("inspect") for c in commands) and any(c.startswith("optimize") for c in commands)
    for cmd in commands:
        r = subprocess.run([sys.executable, "-m", "hwopt.cli", *cmd.split()], capture_output=True, text=True,
                           timeout=600, cwd=tmp_path)
        assert r.returncode == 0, cmd + "\n" + r.stderr[-2000:]
    assert "OMP_WAIT_POLICY=PASSIVE .venv/bin/hwopt demo --target cortex-m7" in text


def test_readme_shows_the_callbacks_and_nothing_points_outside_the_repository():
    text = README.read_text()
    assert "data=batches" in text and "train=trainer.train" in text and "evaluate=trainer.evaluate" in text
    assert "--data hwopt.data:mnist_batches" in text
    assert "(docs/ARCHITECTURE.md)" in text
    assert not re.search(r"(?<!\.venv/bin/)\bpython examples/", text)
    root = README.parent
    OUTSIDE = r"\.\./" + "shared|/work/" + "shared"  # split: this file must not match itself
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    outside = [f for f in tracked if f.endswith((".md", ".py", ".toml"))
               and re.search(OUTSIDE, (root / f).read_text(errors="replace"))]
    assert not outside
    links = re.findall(r"\]\(([^)#]+)\)", (root / "docs" / "ARCHITECTURE.md").read_text())
    missing = [link for link in links if not link.startswith("http") and not (root / "docs" / link).exists()
               and link != "ops.md"]  # docs/ops.md: the op table's page (issue 15)
    assert not missing
