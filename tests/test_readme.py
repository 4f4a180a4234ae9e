"""README's quick start runs as written."""
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
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def test_readme_inspect_command_runs():
    cmd = re.search(r"\.venv/bin/hwopt (inspect .*)", README.read_text()).group(1).split()
    r = subprocess.run([sys.executable, "-m", "hwopt.cli", *cmd], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "params 25,557,032" in r.stdout and "channel groups" in r.stdout
