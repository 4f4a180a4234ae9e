"""NAS checkpoints: a file is proved to be a checkpoint of this search before anything is written to it
(issue 19 items 4, 5, 7), the proxy trainer's short schedules (item 8), and `hwopt search --save` (a file
that loads without unpickling code, written atomically)."""
from __future__ import annotations

import json
import math

import pytest
import torch

import hwopt
from hwopt.passes.nas import CheckpointError, ProxyTrainer, Search, SearchSpace, read_checkpoint
from hwopt.targets import load_target

TARGET = load_target("cortex-a72")
TINY = SearchSpace(blocks=2, in_channels=1, num_classes=10, resolution=28, width=0.25, head=32, divisor=4)


def fake_accuracy(module: torch.nn.Module) -> float:
    n = sum(p.numel() for p in module.parameters())
    return 0.5 + 0.45 * (1 - math.exp(-n / 30000))


def search(ck, seed=3, samples=4, acc=fake_accuracy):
    return Search(TINY, TARGET, acc, strategy="random", samples=samples, batch=2, seed=seed, checkpoint=ck).run()


def records(text: str) -> list[dict]:
    """The lines of a checkpoint without their timings."""
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in text.splitlines()]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A finished seed-3 checkpoint's lines."""
    ck = tmp_path_factory.mktemp("ck") / "seed3.jsonl"
    search(ck)
    return ck.read_text().splitlines(keepends=True)


def test_headerless_checkpoint_is_refused_not_trusted(good, tmp_path):
    # item 4: seed-3 records without their header, resumed as a seed-4 search
    ck = tmp_path / "c.jsonl"
    ck.write_text("".join(good[1:]))
    before = ck.read_bytes()
    calls = []
    with pytest.raises(CheckpointError, match=r"line 1: the first line must be the checkpoint header"):
        search(ck, seed=4, acc=lambda m: calls.append(1) or fake_accuracy(m))
    assert not calls and ck.read_bytes() == before


def test_header_mismatch_is_refused(good, tmp_path):
    ck = tmp_path / "c.jsonl"
    ck.write_text("".join(good))
    with pytest.raises(CheckpointError, match="different search.*seed"):
        search(ck, seed=4)
    assert ck.read_text() == "".join(good)


@pytest.mark.parametrize("content", [b"my notes\nlast line without newline",
                                     bytes(range(256)) * 4,
                                     b'{"header": {}}\nnot json\n{"index": 0',
                                     b"line one\n\x00\x01\x02"], ids=["notes", "binary", "bad-line", "binary-tail"])
def test_a_file_that_is_not_a_checkpoint_is_never_truncated(tmp_path, content):
    # item 5: the torn-tail truncation used to run before the file was checked
    ck = tmp_path / "c.jsonl"
    ck.write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"checkpoint {ck}"):
        search(ck)
    assert ck.read_bytes() == content


@pytest.mark.parametrize("line, match", [
    ("null", "line 2: expected a child record.*NoneType"),
    ("[1, 2, 3]", "line 2: expected a child record.*list"),
    ('"text"', "line 2: expected a child record.*str"),
    ('{"index": 0, "accuracy": 0.5, "latency_ms": 1.0, "reward": 0.5}', "line 2: child record lacks tokens"),
    ('{"tokens": [0], "accuracy": 0.5, "latency_ms": 1.0, "reward": 0.5}', "line 2: child record lacks index"),
    ('{"index": 0, "tokens": [0,0,0,0,0,0,0,0,0,0,0,0], "accuracy": "high", "latency_ms": 1.0, "reward": 0.5}',
     "line 2: 'accuracy' must be a number, got 'high'"),
    ('{"index": "0", "tokens": [0,0,0,0,0,0,0,0,0,0,0,0], "accuracy": 0.5, "latency_ms": 1.0, "reward": 0.5}',
     "line 2: 'index' must be an integer"),
    ('{"index": 0, "tokens": [0,0,0], "accuracy": 0.5, "latency_ms": 1.0, "reward": 0.5}',
     "line 2: 'tokens' has 3 decisions, the space has 12"),
    ('{"index": 0, "tokens": [9,0,0,0,0,0,0,0,0,0,0,0], "accuracy": 0.5, "latency_ms": 1.0, "reward": 0.5}',
     "line 2: token 0 is 9, outside 0..3"),
    ("{not json", "line 2: not JSON"),
])
def test_json_lines_that_are_not_records_name_file_and_line(good, tmp_path, line, match):
    # item 7: these crashed with KeyError / TypeError, or named no file and line
    ck = tmp_path / "c.jsonl"
    ck.write_text(good[0] + line + "\n" + "".join(good[1:]))
    before = ck.read_bytes()
    with pytest.raises(CheckpointError, match=match) as e:
        search(ck)
    assert str(ck) in str(e.value) and ck.read_bytes() == before


def test_duplicate_index_and_directory_and_unreadable(good, tmp_path):
    ck = tmp_path / "c.jsonl"
    ck.write_text("".join(good) + good[1])
    with pytest.raises(CheckpointError, match=r"line 6: child index 0 already recorded on line 2"):
        search(ck)
    with pytest.raises(CheckpointError, match=r"is a directory"):
        search(tmp_path)
    ck.write_bytes(good[0].encode() + b"\xff\xfe\n")
    with pytest.raises(CheckpointError, match=r"line 2: not UTF-8"):
        search(ck)


def test_a_torn_last_line_is_dropped_after_the_file_is_checked(good, tmp_path):
    ck = tmp_path / "c.jsonl"
    ck.write_text("".join(good[:3]) + good[3][:25])  # killed while writing the third record
    header, recs, torn = read_checkpoint(ck, TINY.vocab)
    assert header is not None and len(recs) == 2 and torn == 25
    assert ck.read_text().endswith(good[3][:25])  # reading writes nothing
    calls = []
    res = search(ck, acc=lambda m: calls.append(1) or fake_accuracy(m))
    assert len(res.history) == 4 and len(calls) == 2 and records(ck.read_text()) == records("".join(good))
    # a file holding only a torn header is a checkpoint cut short at its first write
    ck.write_text(good[0][:10])
    assert read_checkpoint(ck) == (None, [], 10)
    search(ck)
    assert records(ck.read_text()) == records("".join(good))


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5])
def test_proxy_trainer_short_schedules(steps):
    # item 8: OneCycleLR divides by zero below 5 steps at pct_start 0.25
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    acc = ProxyTrainer(256, 200, steps, seed=0)(m)
    assert 0.2 < acc <= 1.0  # trained: chance is 0.1
    with pytest.raises(ValueError, match="steps"):
        ProxyTrainer(256, 200, 0)


def test_proxy_trainer_score_does_not_depend_on_the_evaluation_chunk():
    # the chunk is a speed setting only: 200 images in chunks of 7 (a short last one) or 100 score alike
    def score(chunk):
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
        return ProxyTrainer(256, 200, 3, seed=0, eval_batch=chunk)(m)
    assert score(7) == score(100) == score(200)
    with pytest.raises(ValueError, match="eval_batch"):
        ProxyTrainer(256, 200, 3, eval_batch=0)


def test_search_cli_short_proxy_and_safe_save(tmp_path, capsys):
    # item 8 through the CLI, and --save: a .pt2 and a state dict, both loadable without unpickling code
    from hwopt.passes.nas import cli
    common = ["--samples", "2", "--batch", "2", "--blocks", "2", "--width", "0.25", "--head", "32",
              "--proxy-steps", "4", "--no-progress", "--seed", "1"]
    assert cli.main([*common, "--save", str(tmp_path / "m.pt2"), "--checkpoint", str(tmp_path / "c.jsonl")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["search"]["samples"] == 2 and out["saved"] == str(tmp_path / "m.pt2")
    x = torch.randn(1, 1, 28, 28)  # the exported program has the --input-shape
    exported = torch.export.load(str(tmp_path / "m.pt2")).module()
    assert cli.main([*common, "--save", str(tmp_path / "m.pt"), "--checkpoint", str(tmp_path / "c.jsonl")]) == 0
    out = json.loads(capsys.readouterr().out)
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    space = SearchSpace(**out["space"])
    module = hwopt.lower(space.graph(out["search"]["best_tokens"]))
    module.load_state_dict(state)
    torch.testing.assert_close(module.eval()(x), exported(x), atol=1e-5, rtol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "m.pt", "m.pt2"]  # no temporary left over
