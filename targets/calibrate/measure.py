"""Timing a list of workloads with a resumable cache (`<target>.measurements.json`)."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from hwopt.errors import TargetError
from hwopt.fileio import atomic_write

def read_cache(path: Path) -> dict[str, float]:
    """The measurements cached in `path` ({} when it does not exist). A file that is not such a cache
    (not JSON, not an object of key -> positive number) raises TargetError naming it and is left as it
    is: it may be hours of timings or someone else's file, never silently replaced."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise TargetError(f"measurement cache is unreadable ({type(e).__name__}: {e}); it was left untouched: "
                          "repair or move it, or pass --cache with another file", path=str(path)) from None
    if not isinstance(data, dict):
        raise TargetError(f"measurement cache must be a JSON object of workload -> ms, got {type(data).__name__}; "
                          "it was left untouched", path=str(path))
    for k, v in data.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise TargetError(f"measurement cache entry {k[:120]!r} is {v!r}, not a positive number of ms; "
                              "the file was left untouched", path=str(path))
    return data


def measure_all(workloads: list, runner, cache_path: str | os.PathLike | None, progress: bool = True,
                on_error: str = "skip", passes: int = 1, tune_only: bool = False,
                write_cache: bool = True) -> list[tuple]:
    """Time every workload (cached ones are not timed again). passes > 1: then time the whole list
    again passes - 1 times, round robin, keeping each workload's minimum: load from other processes
    on a shared machine comes in bursts of seconds, and a later pass catches a quieter moment.
    A runner with a `prepare` step (tuning) prepares every untimed workload first; tune_only: stop
    there and time nothing (returns []). write_cache=False (--dry-run): read the cache, write nothing."""
    cp = Path(cache_path) if cache_path else None
    cache = read_cache(cp) if cp else {}
    ident = runner.ident()
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    failed: set = set()

    def skip(w, e):
        if on_error == "raise":
            raise e
        print(f"hwopt calibrate: skipped {w.key}: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
        failed.add(w)

    if hasattr(runner, "prepare"):
        todo = [w for w in workloads if f"{ident}|{w.key}" not in cache]
        it = tqdm(todo, desc=f"prepare {runner.runtime}", unit="wl", disable=not progress or not todo,
                  file=sys.stderr) if tqdm is not None else todo
        for w in it:
            try:
                runner.prepare(*w.build())
            except Exception as e:
                skip(w, e)
    if tune_only:
        return []
    for pas in range(max(1, passes)):
        it = workloads
        if tqdm is not None:
            it = tqdm(workloads, desc=f"calibrate {runner.runtime}" + (f" pass {pas + 1}/{passes}" if passes > 1 else ""),
                      unit="wl", disable=not progress, file=sys.stderr)
        for w in it:
            k = f"{ident}|{w.key}"
            if w in failed:
                continue
            if pas == 0 and k in cache:
                continue
            if pas > 0 and int(cache.get(f"{k}|passes", 1)) > pas:
                continue  # this pass was already made (resume)
            try:
                m, x = w.build()
                ms = runner.measure(m, x)
            except Exception as e:  # a workload the runtime cannot build is reported, not fatal
                skip(w, e)
                continue
            cache[k] = min(ms, cache.get(k, math.inf))
            if pas > 0:
                cache[f"{k}|passes"] = pas + 1
            if cp and write_cache:
                atomic_write(cp, json.dumps(cache, indent=0, sort_keys=True))
    return [(w, float(cache[f"{ident}|{w.key}"])) for w in workloads if f"{ident}|{w.key}" in cache]


