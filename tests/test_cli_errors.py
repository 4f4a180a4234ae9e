"""Every `hwopt` subcommand turns a user error into exit 1 and one line on stderr that names the thing,
with no traceback and no file written (issue 19: items 9, 11, 14, duplicate budget keys, "the CLI never
prints a traceback for a user error"). Real bugs still show their traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hwopt import cli

NOTES = b"my notes\nthe last line has no newline"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """User files the bad arguments point at, in a folder apart from the one that must stay empty."""
    d = tmp_path_factory.mktemp("inputs")
    (d / "factories.py").write_text(
        "import torch\n"
        "def raising():\n    raise RuntimeError('no weights here')\n"
        "def not_a_module():\n    return 42\n"
        "NOT_CALLABLE = 3\n"
        "def needs_args(width):\n    return torch.nn.Linear(width, 2)\n")
    (d / "broken.py").write_text("def build(:\n")
    (d / "latin1.toml").write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    (d / "notes.txt").write_bytes(NOTES)
    (d / "headerless.jsonl").write_text('{"index": 0, "tokens": [0], "accuracy": 0.5, "latency_ms": 1, "reward": 0.5}\n')
    (d / "a-file").write_text("x")
    return d


M = "hwopt.models:mnist_cnn"
SHAPE = ["--input-shape", "1,1,28,28"]

# (argv with {d} = the inputs folder, {out} = a path inside the folder that must stay empty, what stderr names)
CASES = {
    "inspect": [
        ([], "required: model, --input-shape"),
        (["nocolon", *SHAPE], "MODULE:FACTORY"),
        (["no_such_module_xyz:f", *SHAPE], "cannot import 'no_such_module_xyz'"),
        (["hwopt.models:nope", *SHAPE], "has no attribute 'nope'"),
        (["{d}/factories.py:NOT_CALLABLE", *SHAPE], "'NOT_CALLABLE' is a int, not a callable factory"),
        (["{d}/factories.py:raising", *SHAPE], "raising raised RuntimeError: no weights here"),
        (["{d}/factories.py:not_a_module", *SHAPE], "returned a int, not a torch.nn.Module"),
        (["{d}/factories.py:needs_args", *SHAPE], "needs_args raised TypeError"),
        (["{d}/broken.py:build", *SHAPE], "broken.py' raised SyntaxError"),
        (["{d}/missing.py:build", *SHAPE], "no such file"),
        ([M, "--input-shape", "1,1,a,28"], "comma-separated integers"),
        ([M, "--input-shape", "1,0,28,28"], "positive integers"),
        ([M, "--input-shape", "1,3,100000,100000"], "GiB of float32"),
        ([M, "--input-shape", "1,3,28,28"], "do not fit the model at module '0.0'"),
        ([M, *SHAPE, "--groups", "x"], "--groups: invalid int value"),
    ],
    "targets": [
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
    "optimize": [
        ([M, *SHAPE, "--target", "host", "--export", "torch"], "--export torch needs --out"),
        ([M, *SHAPE, "--target", "host", "--export", "pt", "--out", "{out}"], "--export 'pt'"),
        ([M, *SHAPE, "--target", "host", "--budget", "latency_ms=1,latency_ms=2", "--out", "{out}"],
         "'latency_ms' twice"),
        ([M, *SHAPE, "--target", "host", "--budget", "latency_ms", "--out", "{out}"], "resource=value"),
        ([M, *SHAPE, "--target", "host", "--budget", "latency_ms=fast", "--out", "{out}"], "must be a number"),
        ([M, *SHAPE, "--target", "cortex-z9", "--out", "{out}"], "unknown target 'cortex-z9'"),
        ([M, *SHAPE, "--target", "{d}/latin1.toml", "--out", "{out}"], "latin1.toml: not UTF-8"),
        ([M, *SHAPE, "--target", "{d}/nowhere.toml", "--out", "{out}"], "no such target file"),
        (["{d}/factories.py:raising", *SHAPE, "--target", "host", "--out", "{out}"], "raised RuntimeError"),
        ([M, "--input-shape", "1,3,100000,100000", "--target", "host", "--out", "{out}"], "GiB"),
        ([M, *SHAPE, "--target", "host", "--seed", "x"], "--seed: invalid int value"),
    ],
    "demo": [
        (["--epochs", "0", "--out", "{out}"], "--epochs must be a positive number"),
        (["--train-limit", "0", "--out", "{out}"], "--train-limit must be >= 1"),
        (["--eval-limit", "0", "--out", "{out}"], "--eval-limit must be >= 1"),
        (["--target", "cortex-z9", "--out", "{out}"], "unknown target"),
        (["--target", "{d}/latin1.toml", "--out", "{out}"], "not UTF-8"),
        (["--out", "{d}/a-file"], "exists and is not a directory"),
    ],
    "calibrate": [
        ([], "required: --target"),
        (["--target", "{d}/latin1.toml", "--dry-run"], "not UTF-8"),
        (["--target", "cortex-z9", "--dry-run"], "unknown target"),
        (["--target", "host", "--dry-run", "--nets", "-1"], "--nets must be >= 0"),
        (["--target", "host", "--rpc", "nohostport"], "HOST:PORT"),
    ],
    "search": [
        (["--input-shape", "1,28,28"], "4 dimensions"),
        (["--proxy-steps", "0"], "'proxy_steps' must be >= 1"),
        (["--samples", "0"], "'samples' must be >= 1"),
        (["--classes", "1"], "--classes must be >= 2"),
        (["--strategy", "grid"], "invalid choice: 'grid'"),
        (["--target", "{d}/latin1.toml"], "not UTF-8"),
        (["--checkpoint", "{d}/notes.txt"], "notes.txt line 1: not JSON"),
        (["--checkpoint", "{d}/headerless.jsonl"], "line 1: the first line must be the checkpoint header"),
        (["--checkpoint", "{d}"], "is a directory"),
        (["--checkpoint-dir", "{d}/notes.txt"], "notes.txt: exists and is not a directory"),
        (["--checkpoint-dir", "{out}", "--workdir", "{out}"], "give --checkpoint-dir only"),
        (["--save", "{d}", "--checkpoint", "{out}/c.jsonl"], "--save"),
        (["--input-shape", "1,3,32,32", "--checkpoint", "{out}/c.jsonl"], "ctx.evaluate"),
    ],
}


def test_every_subcommand_has_bad_argument_cases():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(CASES) == set(cli.SUBCOMMANDS)


def run_main(argv) -> int:
    """`hwopt ARGV` in this process, as the console script runs it (sys.exit(main()))."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1


@pytest.mark.parametrize("command, argv, names",
                         [(c, a, n) for c, cases in CASES.items() for a, n in cases],
                         ids=[f"{c}-{i}" for c, cases in CASES.items() for i in range(len(cases))])
def test_bad_arguments_exit_1_with_one_line_and_write_nothing(command, argv, names, files, tmp_path, monkeypatch,
                                                              capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # defaults such as demo's --out land here too
    out = work / "out"
    argv = [a.format(d=files, out=out) for a in argv]
    before = {p: p.read_bytes() for p in files.iterdir()}
    code = run_main([command, *argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"hwopt {command}: error: ") and names.format(d=files) in lines[0], lines[0]
    assert list(work.iterdir()) == [], "a failed command wrote files"
    assert {p: p.read_bytes() for p in files.iterdir()} == before  # the user's files untouched


def test_a_bug_still_shows_its_traceback(monkeypatch):
    def broken(args):
        raise KeyError("a bug in hwopt")
    monkeypatch.setattr(cli, "cmd_targets", broken)
    with pytest.raises(KeyError):
        cli.main(["targets"])


def test_console_script_one_line_and_traceback_on_request(files, tmp_path):
    """The real entry point: exit 1 and one line; HWOPT_TRACEBACK=1 shows the factory's own traceback."""
    argv = [sys.executable, "-m", "hwopt.cli", "inspect", f"{files}/factories.py:raising", *SHAPE]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    env.pop("HWOPT_TRACEBACK", None)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "no weights here" in r.stderr, r.stderr
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env=dict(env, HWOPT_TRACEBACK="1"))
    assert r.returncode == 1 and "Traceback" in r.stderr and "raise RuntimeError('no weights here')" in r.stderr
    assert list(Path(tmp_path).iterdir()) == []
