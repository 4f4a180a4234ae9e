"""Pausing Python's cyclic garbage collector around graph building.

Lifting, channel analysis, channel removal and lowering allocate tens of thousands of short-lived objects
(fx nodes and proxies, IR nodes, argument tuples). With the collector running they survive a few young
collections, get promoted, and then trip full collections that scan every object of the process: ~0.3 s
beside a timm model and a few copies of it, more than the work itself. Paused, they die young: one young
collection at the end frees the cycles (fx graphs link their nodes both ways). Reference counting still
frees everything else immediately, so memory stays bounded by the work's own size.
"""
from __future__ import annotations

import contextlib
import functools
import gc


@contextlib.contextmanager
def collector_paused():
    """No cyclic collection inside the block (nests; leaves the collector as it found it)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
            gc.collect(0)


def pauses_collector(fn):
    """`fn` runs under collector_paused()."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with collector_paused():
            return fn(*args, **kwargs)
    return wrapper
