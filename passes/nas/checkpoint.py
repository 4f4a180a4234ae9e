"""The NAS checkpoint file: read and validated in full before anything is written back to it.

Format (JSONL, append-only): line 1 is `{"header": {...}}` with the search's configuration; every further
line is one evaluated child, a JSON object with at least `index` (int; -1 is the baseline), `tokens` (one
int per decision), `accuracy`, `latency_ms` and `reward` (numbers). A line torn by a kill mid-write can
only be the last one and has no newline; it is dropped, but only after the rest of the file proved to
be a checkpoint, so a file that is not one (notes, a binary, a directory) is refused and never touched.
A file without its header line is refused too: its records cannot be checked against the configuration.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

from hwopt.errors import PassError

NUMBER_FIELDS = ("accuracy", "latency_ms", "reward")


class CheckpointError(PassError):
    """A checkpoint path that is not a readable NAS checkpoint, or a malformed line in one."""


def _where(path: Path, lineno: int | None = None) -> str:
    return f"checkpoint {path}" + (f" line {lineno}" if lineno is not None else "")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_record(obj, path: Path, lineno: int, vocab: Sequence[int] | None) -> dict:
    where = _where(path, lineno)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where}: expected a child record (a JSON object), got {type(obj).__name__}")
    missing = [k for k in ("index", "tokens", *NUMBER_FIELDS) if k not in obj]
    if missing:
        raise CheckpointError(f"{where}: child record lacks {', '.join(missing)}")
    if not isinstance(obj["index"], int) or isinstance(obj["index"], bool) or obj["index"] < -1:
        raise CheckpointError(f"{where}: 'index' must be an integer >= -1, got {obj['index']!r}")
    tokens = obj["tokens"]
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise CheckpointError(f"{where}: 'tokens' must be a list of integers, got {tokens!r}")
    if vocab is not None:
        if len(tokens) != len(vocab):
            raise CheckpointError(f"{where}: 'tokens' has {len(tokens)} decisions, the space has {len(vocab)}")
        bad = [i for i, (t, n) in enumerate(zip(tokens, vocab)) if not 0 <= t < n]
        if bad:
            raise CheckpointError(f"{where}: token {bad[0]} is {tokens[bad[0]]}, outside 0..{vocab[bad[0]] - 1}")
    for k in NUMBER_FIELDS:
        v = obj[k]
        # latency of a child that failed to build is inf (written as Infinity); accuracy and reward are finite
        if not _is_number(v) or math.isnan(v) or (k != "latency_ms" and math.isinf(v)):
            raise CheckpointError(f"{where}: {k!r} must be a number, got {v!r}")
    return obj


def _parse_line(line: str, path: Path, lineno: int):
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{_where(path, lineno)}: not JSON ({e.msg} at column {e.colno}); "
                              "is this a NAS checkpoint?") from None


def read_checkpoint(path: str | os.PathLike, vocab: Sequence[int] | None = None) -> tuple[dict | None, list[dict], int]:
    """(header, records, torn_bytes) of the checkpoint at `path`; (None, [], 0) if it does not exist or is empty.

    Reads only: nothing is written. `torn_bytes` is the length of an unterminated last line (a write cut
    short by a kill), which the caller drops with `drop_torn_tail` once it has decided to append.
    `vocab` (choices per decision) checks every record's tokens against the space. Raises CheckpointError
    naming the file and line for a directory, an unreadable or non-UTF-8 file, a missing header, a
    non-JSON line, or a line that is JSON but not a child record.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{_where(path)} is a directory; give a file path")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, [], 0
    except OSError as e:
        raise CheckpointError(f"{_where(path)}: cannot read: {e.strerror or e}") from None
    complete = raw[:raw.rfind(b"\n") + 1]
    torn = len(raw) - len(complete)
    try:
        text = complete.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = complete[:e.start].count(b"\n") + 1
        raise CheckpointError(f"{_where(path, lineno)}: not UTF-8 text (byte 0x{complete[e.start]:02x}); "
                              "is this a NAS checkpoint?") from None
    header, records, seen = None, [], {}
    lines = text.split("\n")[:-1] if text else []
    tail = raw[len(complete):]
    if not lines and torn:
        # only a torn first line: a header cut short, or some other file
        if not tail.lstrip().startswith(b'{"header"'):
            raise CheckpointError(f"{_where(path, 1)}: not a checkpoint header and not terminated; "
                                  "is this a NAS checkpoint?")
        return None, [], torn
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        obj = _parse_line(line, path, lineno)
        if header is None:
            if not (isinstance(obj, dict) and set(obj) == {"header"} and isinstance(obj["header"], dict)):
                raise CheckpointError(f"{_where(path, lineno)}: the first line must be the checkpoint header "
                                      '({"header": {...}}, the search configuration); without it the records '
                                      "cannot be checked against this search, use another checkpoint path")
            header = obj["header"]
            continue
        if isinstance(obj, dict) and "header" in obj:
            raise CheckpointError(f"{_where(path, lineno)}: a second header (two searches in one file?)")
        rec = _check_record(obj, path, lineno, vocab)
        if rec["index"] in seen:
            raise CheckpointError(f"{_where(path, lineno)}: child index {rec['index']} already recorded on "
                                  f"line {seen[rec['index']]}")
        seen[rec["index"]] = lineno
        records.append(rec)
    # hwopt writes ASCII JSON objects, so a line torn mid-write is the start of one
    if torn and not (tail.lstrip().startswith(b"{") and tail.isascii() and all(b >= 0x20 for b in tail)):
        raise CheckpointError(f"{_where(path, len(lines) + 1)}: an unterminated last line that is "
                              "not the start of a record; is this a NAS checkpoint?")
    return header, records, torn


def drop_torn_tail(path: str | os.PathLike, torn_bytes: int) -> None:
    """Cut the unterminated last `torn_bytes` bytes off a checkpoint `read_checkpoint` accepted."""
    if torn_bytes:
        with open(path, "r+b") as fh:
            fh.truncate(os.fstat(fh.fileno()).st_size - torn_bytes)
