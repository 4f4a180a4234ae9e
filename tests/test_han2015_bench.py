"""bench/han2015.py: the allocation table's verdict (issue 20, Done-when 1) and its --no-han / --summarize paths."""
import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "han2015.py"


@pytest.fixture(scope="module")
def han():
    spec = importlib.util.spec_from_file_location("han2015_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def rows(errors):
    """Allocation rows from {(seed, allocation): (one-shot, retrained)} at one sparsity, 90 %."""
    return [dict(kind="allocation", model="lenet_300_100", seed=seed, s=0.9, allocation=a, one_shot=e[0],
                 retrained=e[1], err0=1.5, picked="min-drop/global", protocol="2x2 epochs, l2 0.0005", ntest=10000)
            for (seed, a), e in errors.items()]


def table(errors):
    return {(seed, a): e for seed in (0, 1) for a, e in errors(seed).items()}


def verdict(han, capsys, errors) -> str:
    han.print_allocation_rows(rows(errors), "t")
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_default_judged_against_global_on_the_seed_mean(han, capsys):
    # seed 1's default is worse than global one-shot, seed 0's better by more: the mean decides
    ok = table(lambda seed: {"global": (3.6, 1.6), "equal-drop": (12.0, 1.7), "min-drop": (3.4 + 0.3 * seed, 1.5),
                             "default": (3.4 + 0.3 * seed, 1.6)})
    line = verdict(han, capsys, ok)
    assert line.endswith("default <= global in every column: yes") and "min-drop/global x2" in line
    # the retrained column alone above global: NO
    bad = table(lambda seed: {"global": (3.6, 1.6), "equal-drop": (12.0, 1.7), "min-drop": (3.4, 1.5),
                              "default": (3.4, 1.61)})
    assert verdict(han, capsys, bad).endswith("default <= global in every column: NO")


def test_summarize_reads_allocation_only_files(han, capsys, tmp_path):
    """--no-han --save files hold allocation rows only; --summarize prints their table (no Table 1 rows)."""
    errors = table(lambda seed: {"global": (3.6, 1.6), "equal-drop": (12.0, 1.7), "min-drop": (3.5, 1.5),
                                 "default": (3.5, 1.6)})
    for seed in (0, 1):
        (tmp_path / f"a{seed}.json").write_text(json.dumps([r for r in rows(errors) if r["seed"] == seed]))
    han.main(["--summarize", str(tmp_path / "a0.json"), str(tmp_path / "a1.json")])
    out = capsys.readouterr().out
    assert "mean over seeds 0,1" in out and "every column: yes" in out and "seed mean" not in out


def test_no_han_option(han):
    args = han.parser().parse_args(["--no-han", "--no-obd"])
    assert args.han is False and args.no_obd
    assert han.parser().parse_args([]).han is True
