"""Fitting the latency model to measurements: the per-sample design (node features of many graphs),
the "roofline" fit (`fit_coefficients`) and the "terms" fit (`fit_terms`), cross-validation, and the
calibration table a fit becomes."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import cost as _cost
from ..schema import KINDS, TERMS

@dataclass
class Design:
    """Node features of many samples, concatenated, with the sample each node belongs to."""
    kind: np.ndarray
    grouped: np.ndarray
    work: np.ndarray
    nbytes: np.ndarray
    sample: np.ndarray
    n: int
    terms: np.ndarray | None = None      # (nodes x TERMS)
    ambiguous: np.ndarray | None = None

    @classmethod
    def from_graphs(cls, graphs: list, dtype_bytes: int, cache_bytes: tuple[float, float] = (1 << 20, 32 << 20)) -> "Design":
        """cache_bytes: the target's (L2, last-level cache) bytes (Target.cache_bytes), for the spill terms."""
        ks, gs, ws, bs, ss, ts, am = [], [], [], [], [], [], []
        for i, g in enumerate(graphs):
            f = _cost.features(g)
            ks.append(f.kind)
            gs.append(f.grouped)
            ws.append(f.work)
            bs.append((f.act_elems + f.weight_elems) * dtype_bytes)
            ss.append(np.full(len(f.kind), i))
            ts.append(_cost.term_matrix(f, dtype_bytes, *cache_bytes))
            am.append(f.ambiguous)
        return cls(np.concatenate(ks), np.concatenate(gs), np.concatenate(ws), np.concatenate(bs), np.concatenate(ss),
                   len(graphs), np.concatenate(ts), np.concatenate(am))

    def subset(self, idx: np.ndarray) -> "Design":
        keep = np.isin(self.sample, idx)
        remap = np.full(self.n, -1)
        remap[np.asarray(idx, int)] = np.arange(len(idx))
        return Design(self.kind[keep], self.grouped[keep], self.work[keep], self.nbytes[keep],
                      remap[self.sample[keep]], len(idx), self.terms[keep], self.ambiguous[keep])

    def predict_s(self, c: _cost.Coefficients, peak: float, bw: float) -> np.ndarray:
        sec = _cost.node_seconds(self.kind, self.work, self.nbytes, c, peak, bw, self.grouped, self.terms, self.ambiguous)
        return np.bincount(self.sample, weights=sec, minlength=self.n)

    def term_matrix(self) -> np.ndarray:
        """(samples x KINDS*TERMS): per sample, the sum over its nodes of each kind of each monomial
        (grouped / ambiguous convs counted under their own kind): the terms form is linear in it."""
        real = self.kind >= 0
        nt = len(TERMS)
        a = np.zeros((self.n, len(KINDS) * nt))
        for j in range(nt):
            np.add.at(a, (self.sample[real], self.kind[real] * nt + j), self.terms[real, j])
        return a


P_BOUNDS = (1.0, 8.0)


PARAMS = ("compute_eff", "memory_eff", "overhead_us")


def _unpack(theta: np.ndarray, free: list[str], base: _cost.Coefficients,
            params: tuple = PARAMS) -> _cost.Coefficients:
    arrs = {"compute_eff": base.compute_eff.copy(), "memory_eff": base.memory_eff.copy(),
            "overhead_us": base.overhead_us.copy()}
    p = base.p
    i = 0
    for kind in free:
        j = KINDS.index(kind)
        for name in params:
            arrs[name][j] = np.exp(theta[i])
            i += 1
    if i < len(theta):
        p = float(theta[i])
    return _cost.Coefficients(arrs["compute_eff"], arrs["memory_eff"], arrs["overhead_us"], p)


def fit_coefficients(design: Design, measured_ms: np.ndarray, peak: float, bw: float,
                     base: _cost.Coefficients | None = None, free_kinds: list[str] | None = None,
                     fit_p: bool = True, restarts: int = 3, params: tuple = PARAMS) -> _cost.Coefficients:
    """Least squares on log latency over the free kinds' (log compute_eff, log memory_eff, log overhead)
    and the roofline exponent p. Kinds without any node in the design keep `base`'s values."""
    from scipy.optimize import least_squares

    if base is None:
        base = _cost.Coefficients(np.full(len(KINDS), 0.1), np.full(len(KINDS), 0.5), np.full(len(KINDS), 1.0), 2.0)
    present = {KINDS[k] for k in np.unique(design.kind) if k >= 0}
    if design.grouped.any():
        present |= {"conv", "depthwise"}
    free = [k for k in (free_kinds or KINDS) if k in present]
    theta0, lo, hi = [], [], []
    bounds = {"compute_eff": (1e-5, 4.0), "memory_eff": (1e-4, 20.0), "overhead_us": (1e-3, 5e4)}
    for kind in free:
        j = KINDS.index(kind)
        for name in params:
            theta0.append(math.log(max(float(getattr(base, name)[j]), 1e-3)))
            lo.append(math.log(bounds[name][0]))
            hi.append(math.log(bounds[name][1]))
    if fit_p:
        theta0.append(min(max(base.p, P_BOUNDS[0]), P_BOUNDS[1]))
        lo.append(P_BOUNDS[0])
        hi.append(P_BOUNDS[1])
    theta0 = np.clip(np.array(theta0, float), np.array(lo) + 1e-9, np.array(hi) - 1e-9)
    y = np.log(np.asarray(measured_ms, float) * 1e-3)

    def resid(theta):
        pred = design.predict_s(_unpack(theta, free, base, params), peak, bw)
        return np.log(np.maximum(pred, 1e-12)) - y

    best = None
    starts = [theta0]
    rng = np.random.default_rng(0)
    for _ in range(restarts):  # a few restarts: the max/soft-max makes the problem mildly non-convex
        starts.append(np.clip(theta0 + rng.normal(0, 1.0, len(theta0)), np.array(lo) + 1e-9, np.array(hi) - 1e-9))
    for t0 in starts:
        r = least_squares(resid, t0, bounds=(lo, hi), method="trf", x_scale=1.0, max_nfev=400)
        if best is None or r.cost < best.cost:
            best = r
    return _unpack(best.x, free, base, params)


ROBUST_SCALE = 0.05  # log-latency residual (~5 %) beyond which a measurement counts as an outlier (loss "cauchy")


def fit_terms(design: Design, measured_ms: np.ndarray, refine: bool = True, ridge: float = 1e-3,
              weights: np.ndarray | None = None, loss: str = "linear",
              terms: tuple[str, ...] | None = None) -> _cost.Coefficients:
    """Fit the "terms" form: per kind, non-negative seconds per unit of each TERMS monomial.

    1. Linear: sample time = term_matrix @ c, so minimizing the squared *relative* error
       sum_i ((A c)_i / y_i - 1)^2 over c >= 0 is a bounded linear least-squares problem
       (scipy lsq_linear, columns scaled to unit norm; a small ridge pulls unidentified terms to 0).
    2. Refine on log latency (scipy least_squares, c >= 0) through the full prediction (max/min rules
       for grouped / one-channel convs included), started from the linear solution. `loss` is
       least_squares' loss on the log residuals: "linear" (least squares) or "cauchy" (scale
       ROBUST_SCALE: a residual of r costs log(1 + (r / scale)^2), so a measurement far off the rest,
       e.g. a run caught in a slow phase of the board, pulls the fit little; the fit follows the bulk
       of the measurements instead of landing between a fast and a slow mode). `terms`: fit only these
       monomials (the others stay 0), None: all of TERMS.
    Non-negative coefficients on non-decreasing monomials: the fitted cost is monotone in channels."""
    from scipy.optimize import least_squares, lsq_linear

    y = np.asarray(measured_ms, float) * 1e-3
    sw = np.sqrt(np.ones(len(y)) if weights is None else np.asarray(weights, float))
    a = design.term_matrix() / y[:, None] * sw[:, None]
    allowed = np.ones(len(KINDS) * len(TERMS), bool) if terms is None else \
        np.tile(np.isin(TERMS, terms), len(KINDS))
    used = np.flatnonzero(a.any(axis=0) & allowed)
    scale = np.linalg.norm(a[:, used], axis=0)
    a_s = a[:, used] / scale
    lam = math.sqrt(ridge)
    a_aug = np.vstack([a_s, lam * np.eye(len(used))])
    b_aug = np.concatenate([sw, np.zeros(len(used))])
    r = lsq_linear(a_aug, b_aug, bounds=(0, np.inf), method="bvls")
    theta = np.maximum(r.x, 0.0)

    def unpack(th):
        full = np.zeros(len(KINDS) * len(TERMS))
        full[used] = np.maximum(th, 0.0) / scale
        z = np.zeros(len(KINDS))
        return _cost.Coefficients(z + 1.0, z + 1.0, z, 1.0, full.reshape(len(KINDS), len(TERMS)))

    if refine:
        ly = np.log(y)

        def resid(th):
            pred = design.predict_s(unpack(th), 1.0, 1.0)
            return np.concatenate([sw * (np.log(np.maximum(pred, 1e-12)) - ly), lam * th])

        r2 = least_squares(resid, theta + 1e-9, bounds=(0, np.inf), method="trf", max_nfev=200,
                           loss=loss, f_scale=ROBUST_SCALE if loss != "linear" else 1.0)
        theta = r2.x
    # terms that contribute < 0.01 % of every sample's predicted time are not identified: set them to 0
    contrib = design.term_matrix()[:, used] * (np.maximum(theta, 0.0) / scale)
    total = contrib.sum(axis=1, keepdims=True)
    theta = np.where((contrib / np.maximum(total, 1e-300)).max(axis=0) < 1e-4, 0.0, theta)
    return unpack(theta)


def rel_errors(pred_ms: np.ndarray, meas_ms: np.ndarray) -> np.ndarray:
    return np.abs(np.asarray(pred_ms) / np.asarray(meas_ms) - 1.0)


def cross_validate(design: Design, measured_ms: np.ndarray, peak: float, bw: float, folds: int = 5,
                   base: _cost.Coefficients | None = None, **kw) -> np.ndarray:
    """Held-out |relative error| of every sample: leave-one-out when n <= 30, else `folds`-fold."""
    n = design.n
    idx = np.arange(n)
    rng = np.random.default_rng(0)
    groups = [np.array([i]) for i in idx] if n <= 30 else np.array_split(rng.permutation(idx), folds)
    err = np.zeros(n)
    form = kw.pop("form", "roofline")
    sw = kw.pop("weights", None)
    for test in groups:
        train = np.setdiff1d(idx, test)
        if form == "terms":
            c = fit_terms(design.subset(train), measured_ms[train], weights=None if sw is None else sw[train])
        else:
            c = fit_coefficients(design.subset(train), measured_ms[train], peak, bw, base=base,
                                 restarts=0 if base is not None else 3, **kw)
        pred = design.subset(np.sort(test)).predict_s(c, peak, bw) * 1e3
        err[np.sort(test)] = rel_errors(pred, measured_ms[np.sort(test)])
    return err


def coefficients_table(c: _cost.Coefficients, meta: dict) -> dict:
    t = dict(meta)
    if c.terms is not None:
        t["form"] = "terms"
        t.pop("soft_max_p", None)
        t["terms"] = {k: {m: float(c.terms[i, j] * 1e6) for j, m in enumerate(TERMS) if c.terms[i, j] > 0}
                      for i, k in enumerate(KINDS)}
        return t
    t["soft_max_p"] = round(float(c.p), 4)
    t["kinds"] = {k: {"compute_eff": float(c.compute_eff[i]), "memory_eff": float(c.memory_eff[i]),
                      "overhead_us": float(c.overhead_us[i])} for i, k in enumerate(KINDS)}
    return t


