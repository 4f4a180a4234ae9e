"""Tensors held by an IR graph: copy-on-write snapshots, and which are known finite.

IR tensors are never modified in place, so a finiteness check holds for a tensor's life; a selection
from a finite tensor is finite. Imports nothing of hwopt (the op table's removal rules use `selected`).
"""
from __future__ import annotations

import weakref

import torch

# Tensors already checked finite. IR tensors are never modified in place, so a check holds for life.
# Keyed by id with a weak reference (tensors compare elementwise, so they cannot be set members).
_FINITE: dict[int, weakref.ref] = {}


def _known_finite(t: torch.Tensor) -> bool:
    ref = _FINITE.get(id(t))
    return ref is not None and ref() is t


def remember_finite(t: torch.Tensor) -> None:
    """Record that `t` holds no NaN/inf without scanning it: for tensors their maker knows to be finite
    (built from zeros / ones, or selected from a tensor already known finite); `finite(t)` is then free."""
    key = id(t)
    _FINITE[key] = weakref.ref(t, lambda _r, key=key: _FINITE.pop(key, None) if _FINITE.get(key) is _r else None)


def finite(t: torch.Tensor) -> bool:
    """True when `t` holds no NaN or inf (remembered, so a tensor is scanned once)."""
    if _known_finite(t):
        return True
    # any NaN/inf element makes the sum non-finite; only a finite-element overflow needs the full check
    ok = bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())
    if ok:
        remember_finite(t)
    return ok


def check_finite_at_once(tensors) -> None:
    """Remember as finite those of `tensors` with no NaN/inf, checked in a few ops instead of `finite`'s one or
    two per tensor (a mobile net has ~250 mostly tiny tensors; per-op overhead dominates). Small tensors are
    checked together: if any holds NaN/inf (or a huge finite sum overflows) none of them is remembered, and
    `finite` later checks them one by one (verify() then names the node)."""
    small, large = [], []
    for t in tensors:
        if t.is_floating_point() and not _known_finite(t):
            (small if t.numel() <= 1 << 16 else large).append(t)
    ok = [t for t in large if bool(torch.isfinite(t.sum()))]
    if small and bool(torch.isfinite(torch.cat([t.reshape(-1) for t in small]).sum())):
        ok += small
    for t in ok:
        remember_finite(t)


_LAZY_CLONE = getattr(torch, "_lazy_clone", None)


def snapshot(t: torch.Tensor) -> torch.Tensor:
    """A detached copy of `t` that shares memory until either side is written: torch's copy-on-write
    `_lazy_clone` (numpy/dlpack/data_ptr access materialize it), a plain clone on a torch without it.
    Lift, lower and read_back copy whole models, and ResNet-50's 100 MB of weights take ~40 ms to clone."""
    if _LAZY_CLONE is None:
        return t.detach().clone()
    if t.requires_grad and torch.is_grad_enabled():  # else the clone is not recorded for autograd anyway
        t = t.detach()
    return _LAZY_CLONE(t)


def selected(src: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """`src.index_select(dim, index)`; a selection from a tensor verified finite is known finite, so
    verify() does not scan it again (graph rewrites that slice weights stay cheap to verify)."""
    out = src.index_select(dim, index)
    if _known_finite(src):
        remember_finite(out)
    return out
