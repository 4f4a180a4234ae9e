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
