"""Atomic file output: readers see the old file or the new one, never a torn one, and a failure leaves nothing."""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_output(path: str | os.PathLike, suffix: str | None = None) -> Iterator[str]:
    """Yield a fresh temporary path beside `path` for a writer to fill; on success it replaces `path`.

    `suffix` (default: `path`'s) matters to writers that pick a format from the name (TVM, matplotlib).
    The temporary name is new, not pre-created, so the writer makes it with the usual file modes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix if suffix is None else suffix}"
    try:
        yield str(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Write `data` to `path` atomically (flushed to disk before it replaces the old file)."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb" if isinstance(data, bytes) else "w") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def check_output_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Refuse, before any long work, a directory that cannot receive files: an existing file, a parent that
    is a file, or a folder without write permission. Raises HwoptError naming `what` (e.g. "--out")."""
    from .errors import HwoptError

    d = Path(path)
    if d.exists() and not d.is_dir():
        raise HwoptError(f"{what} {path} is an existing file (it exists and is not a directory)")
    parent = d if d.exists() else next((q for q in d.parents if q.exists()), Path("."))
    if not parent.is_dir():
        raise HwoptError(f"{what} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise HwoptError(f"{what} {path}: {parent} is not writable")
    return d


def check_output_file(path: str | os.PathLike, what: str = "output") -> Path:
    """Refuse, before any long work, an output file path that cannot be written: a directory, a parent that
    is a file, a folder without write permission, a read-only file. Raises HwoptError naming `what`."""
    from .errors import HwoptError

    p = Path(path)
    if p.is_dir():
        raise HwoptError(f"{what} {path}: is a directory; give a file name inside it")
    check_output_dir(p.parent if str(p.parent) else ".", what)
    if p.exists() and not os.access(p, os.W_OK):
        raise HwoptError(f"{what} {path}: the file is not writable")
    return p
