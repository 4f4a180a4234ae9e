"""`hwopt calibrate --target T --from-table FILE`: fit a `[calibration.<runtime>]` of T to a table of
measured models (a user's own board, or published measurements), instead of timing micro-benchmarks.

The table is a CSV with a header:

| column | |
| --- | --- |
| `model` | a model factory `package.module:function` or `path/file.py:function`, optionally called with literal arguments: `hwopt.nasbench201:nasbench201("\\|nor_conv_3x3~0\\|+...")`; or the path of an exported model file (`.pt2`, `torch.export.save`), relative to the CSV |
| `latency_ms` | the measured latency, ms (> 0) |
| `input_shape` | optional: the input shape, e.g. `1,3,32,32` (else `--input-shape`) |
| `split` | optional: `fit` or `test`; test rows are never fit, only reported |
| `name`, `notes` | optional, ignored |

The fit is the "terms" form (cost.py): sample latency = sum over the sample's nodes of non-negative
coefficients times monomials of each node's sizes, which is linear in the coefficients and monotone
in every channel count. With a *prior* (`--prior TARGET:RUNTIME`, a related device's terms table) the
fit starts from it, HELP's point (Lee et al., NeurIPS 2021: a few samples suffice when the model starts
from another device): the prior is scaled to the new device (one factor), then each of its non-zero
coefficients may move by a factor u >= 0 with a penalty lam * (u - 1)^2, lam chosen by leave-one-out
error over the fit rows. Without a prior the plain `fit_terms` (non-negative least squares) is used.

Fit rows and test rows are kept apart. The held-out error of the fit rows (leave-one-out for <= 30
rows, else 5-fold, each fold refit with everything fit inside it) and their held-out Spearman rank
correlation are written into the table (`loo_error`, `rank_correlation`) and printed; test rows,
when there are any, give `test_error` and `test_rank_correlation`.
"""
from __future__ import annotations

import ast
import csv
import datetime as _dt
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwopt.errors import TargetError

from .. import cost as _cost
from ..schema import KINDS, PROVENANCES, TERMS
from .fit import Design, coefficients_table, fit_terms, rel_errors

COLUMNS = ("model", "latency_ms", "input_shape", "split", "name", "notes")
LAMBDAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)  # prior penalties tried (leave-one-out picks one)
# losses of the fit on log latency (fit.fit_terms) tried without a prior; the held-out share within ±10 %
# picks one: least squares, or a robust loss when some measurements sit in a slow mode of the board
# (bench/device_fidelity.py: on the Pi 4 a third of the runs of small networks are ~45 % slower at random)
LOSSES = ("linear", "cauchy")
# monomials a table fit uses: work, activation traffic and the narrow-output cost (work_per_cout: a
# conv's efficiency rising with its width, which NAS-Bench-201's 16/32/64-channel stages show). A table of
# whole networks built from a handful of layer shapes (NAS-Bench-201: three per op kind, every one in every
# network) cannot identify the others, and fitted anyway they extrapolate wildly: through `weights` a fit
# priced ShuffleNet's pointwise convs 4.3x higher; a per-call overhead (`one`) is collinear with `work`
# there (each cell op does the same work in all three stages): dropped, the held-out figures do not move,
# kept, the fit put 15 µs per 1x1 conv into it, a floor channel pruning cannot lower.
TABLE_TERMS = ("work", "out", "in", "work_per_cout")


@dataclass(frozen=True)
class Row:
    model: str
    latency_ms: float
    input_shape: tuple[int, ...]
    split: str
    line: int


def read_table(path: str | Path, input_shape: tuple[int, ...] | None = None) -> list[Row]:
    """Rows of a measurement table; TargetError naming the file, line and column on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TargetError(f"cannot read the measurement table: {e}", path=str(path)) from None
    reader = csv.DictReader(line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    cols = reader.fieldnames or []
    for c in ("model", "latency_ms"):
        if c not in cols:
            raise TargetError(f"measurement table needs a {c!r} column (has: {cols})", path=str(path))
    for c in cols:
        if c not in COLUMNS:
            raise TargetError(f"unknown column {c!r} (known: {list(COLUMNS)})", path=str(path))
    rows = []
    for i, r in enumerate(reader, start=2):
        where = f"{path}: line {i}"
        try:
            ms = float(r["latency_ms"])
        except (TypeError, ValueError):
            raise TargetError(f"{where}: latency_ms must be a number, got {r['latency_ms']!r}") from None
        if not math.isfinite(ms) or ms <= 0:
            raise TargetError(f"{where}: latency_ms must be > 0 ms, got {ms!r}")
        shape = input_shape
        if r.get("input_shape"):
            try:
                shape = tuple(int(s) for s in r["input_shape"].replace("x", ",").split(","))
            except ValueError:
                raise TargetError(f"{where}: input_shape must be like 1,3,32,32, got {r['input_shape']!r}") from None
        if not shape or any(s <= 0 for s in shape):
            raise TargetError(f"{where}: no input shape (give an input_shape column or --input-shape)")
        split = (r.get("split") or "fit").strip()
        if split not in ("fit", "test"):
            raise TargetError(f"{where}: split must be 'fit' or 'test', got {split!r}")
        if not (r.get("model") or "").strip():
            raise TargetError(f"{where}: empty model")
        rows.append(Row(r["model"].strip(), ms, shape, split, i))
    if not rows:
        raise TargetError("measurement table has no rows", path=str(path))
    return rows


def build_model(spec: str, base: Path):
    """A torch module from a table's `model` cell: FACTORY[(literal args)] or an exported model file."""
    from hwopt.cli import load_factory

    p = base / spec
    if spec.endswith(".pt2"):
        import torch
        if not p.is_file():
            raise TargetError(f"no such exported model file: {p}")
        return torch.export.load(str(p)).module()
    head, paren, rest = spec.partition("(")
    fn = load_factory(head.strip() if not head.strip().endswith(".py") else str(base / head.strip()))
    args, kwargs = [], {}
    if paren:
        try:
            call = ast.parse("f(" + rest, mode="eval").body
            if not isinstance(call, ast.Call):
                raise ValueError("not a call")
            args = [ast.literal_eval(a) for a in call.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        except (SyntaxError, ValueError) as e:
            raise TargetError(f"model {spec!r}: arguments must be Python literals ({e})") from None
    m = fn(*args, **kwargs)
    return m.eval()


def design_of(rows: list[Row], base: Path, target) -> Design:
    """The per-sample features of every row's model, lifted at its input shape."""
    import torch

    import hwopt
    graphs = []
    for r in rows:
        try:
            m = build_model(r.model, base)
            g = hwopt.lift(m, torch.randn(r.input_shape, generator=torch.Generator().manual_seed(0)))
        except TargetError:
            raise
        except Exception as e:
            raise TargetError(f"line {r.line}: model {r.model[:120]!r} failed: {type(e).__name__}: {e}") from None
        graphs.append(g)
    return Design.from_graphs(graphs, _cost.DTYPE_BYTES[target.deploy_dtype], target.cache_bytes)


# --------------------------------------------------------------------------------------------------
# The fit with a prior


def _terms_coefficients(terms: np.ndarray) -> _cost.Coefficients:
    z = np.zeros(len(KINDS))
    return _cost.Coefficients(z + 1.0, z + 1.0, z, 1.0, terms)


def prior_scale(design: Design, measured_ms: np.ndarray, prior: np.ndarray) -> float:
    """The one factor that best scales the prior's predictions to the measurements (least squares on
    relative error)."""
    q = (design.term_matrix() @ prior.reshape(-1)) / (np.asarray(measured_ms, float) * 1e-3)
    return float(q.sum() / max((q * q).sum(), 1e-300))


def fit_terms_prior(design: Design, measured_ms: np.ndarray, prior: np.ndarray, lam: float) -> _cost.Coefficients:
    """Terms fit pulled towards `prior` (KINDS x TERMS, seconds per unit): c = s * prior * u, u >= 0,
    minimizing sum_i ((A c)_i / y_i - 1)^2 + lam * sum_j (u_j - 1)^2, where s is the single factor that
    best scales the prior to the data. Terms the prior has at 0 stay 0."""
    from scipy.optimize import lsq_linear

    y = np.asarray(measured_ms, float) * 1e-3
    a = design.term_matrix()
    p = prior.reshape(-1)
    on = np.flatnonzero(p > 0)
    s = prior_scale(design, measured_ms, prior)
    b = a[:, on] * (s * p[on]) / y[:, None]           # columns: contribution of u_j = 1
    k = len(on)
    lhs = np.vstack([b, math.sqrt(lam) * np.eye(k)])
    rhs = np.concatenate([np.ones(len(y)), math.sqrt(lam) * np.ones(k)])
    u = lsq_linear(lhs, rhs, bounds=(0, np.inf), method="bvls").x
    full = np.zeros_like(p)
    full[on] = s * p[on] * np.maximum(u, 0.0)
    return _terms_coefficients(full.reshape(prior.shape))


IDENTIFIED_SHARE = 0.01  # a kind below 1 % of the data's predicted time is not identified by it


def unidentified_kinds(design: Design, base: np.ndarray, fitted: np.ndarray | None = None) -> list[str]:
    """Kinds the fit data says (almost) nothing about: under the `base` table, and under the `fitted` one
    when given, their nodes take < 1 % of the samples' total time (no node at all: NAS-Bench-201 has no
    depthwise conv; one 64x10 linear layer). A kind the fit gives >= 1 % of the time is identified even
    where `base` prices it at 0."""
    a = design.term_matrix().sum(axis=0).reshape(len(KINDS), len(TERMS))

    def shares(table):
        s = (a * table).sum(axis=1)
        return s / max(s.sum(), 1e-300)
    share = shares(base) if fitted is None else np.maximum(shares(base), shares(fitted))
    grouped = design.grouped.any()
    return [k for i, k in enumerate(KINDS) if share[i] < IDENTIFIED_SHARE and not (grouped and k in ("conv", "depthwise"))]


def terms_of_table(t) -> np.ndarray:
    """A target's calibration in use as a terms array (KINDS x TERMS, seconds per unit). A roofline
    table becomes its p = 1 form, overhead + compute time + memory time (an upper bound of the soft
    maximum, within 2^(1-1/p) of it): one = overhead, work = 1 / (peak MACs/s * compute_eff), and
    in / out / weights = dtype bytes / (bandwidth * memory_eff)."""
    c = t.coefficients
    if c.terms is not None:
        return c.terms.copy()
    out = np.zeros((len(KINDS), len(TERMS)))
    ab = _cost.DTYPE_BYTES[t.deploy_dtype]
    for i in range(len(KINDS)):
        out[i, TERMS.index("one")] = c.overhead_us[i] * 1e-6
        out[i, TERMS.index("work")] = 1.0 / (t.peak_macs_per_s * c.compute_eff[i])
        for m in ("in", "out", "weights"):
            out[i, TERMS.index(m)] = ab / (t.bandwidth_bytes_s * c.memory_eff[i])
    return out


def fill_unidentified_kinds(c: _cost.Coefficients, design: Design, base: np.ndarray,
                            scale: float = 1.0) -> tuple[_cost.Coefficients, list[str]]:
    """Kinds the data does not identify take `base`'s row (times `scale`, the prior's factor to this
    device) instead of whatever the fit left there, usually 0."""
    missing = unidentified_kinds(design, base, c.terms)
    terms = c.terms.copy()
    for k in missing:
        terms[KINDS.index(k)] = base[KINDS.index(k)] * scale
    return _terms_coefficients(terms), missing


def _folds(n: int, folds: int = 5) -> list[np.ndarray]:
    idx = np.arange(n)
    if n <= 30:
        return [np.array([i]) for i in idx]
    return [np.sort(f) for f in np.array_split(np.random.default_rng(0).permutation(idx), folds)]


def _heldout(design: Design, ms: np.ndarray, fit) -> np.ndarray:
    """Held-out prediction (ms) of every sample: leave-one-out for <= 30 samples, else 5-fold."""
    pred = np.zeros(design.n)
    idx = np.arange(design.n)
    for test in _folds(design.n):
        train = np.setdiff1d(idx, test)
        c = fit(design.subset(train), ms[train])
        pred[test] = design.subset(test).predict_s(c, 1.0, 1.0) * 1e3
    return pred


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr
    return float(spearmanr(a, b)[0]) if len(a) > 2 else float("nan")


def fit_table(design: Design, ms: np.ndarray, prior: np.ndarray | None = None):
    """(coefficients, fitter, description): with a prior, its penalty chosen by leave-one-out error."""
    if prior is None:
        best = None
        for loss in LOSSES:
            f = lambda d, y, loss=loss: fit_terms(d, y, loss=loss, terms=TABLE_TERMS)  # noqa: E731
            err = rel_errors(_heldout(design, ms, f), ms)
            key = (-float(np.mean(err <= 0.1)), float(np.median(err)))
            if best is None or key < best[0]:
                best = (key, loss, f)
        _, loss, f = best
        return f(design, ms), f, (f"terms {', '.join(TABLE_TERMS)}: non-negative least squares on relative error, refined "
                                  f"on log latency with the {loss!r} loss (chosen by held-out share within ±10 % over {LOSSES})")
    best = None
    for lam in LAMBDAS:
        f = lambda d, y, lam=lam: fit_terms_prior(d, y, prior, lam)  # noqa: E731
        err = float(np.median(rel_errors(_heldout(design, ms, f), ms)))
        if best is None or err < best[0]:
            best = (err, lam, f)
    _, lam, f = best
    return f(design, ms), f, (f"prior scaled to the data, then each coefficient moved by a factor u >= 0 with "
                              f"penalty {lam:g} * (u - 1)^2 (penalty chosen by leave-one-out error over {LAMBDAS})")


def calibrate_from_table(target, table: str | Path, runtime: str, out: str | Path | None = None,
                         prior: str | None = None, provenance: str = "measured", input_shape=None,
                         write: bool = True, make_default: bool = False, source: str | None = None) -> dict:
    """Fit `[calibration.<runtime>]` of `target` to the measurement table; write it unless `write` is False.
    Returns a report: the table, held-out and test errors and rank correlations."""
    from .. import load_target
    from ..tomlio import update_runtime

    t = load_target(target)
    if provenance not in PROVENANCES:
        raise TargetError(f"provenance must be one of {list(PROVENANCES)}, got {provenance!r}", "provenance")
    out = Path(out or t.path)
    table = Path(table)
    rows = read_table(table, input_shape)
    fit_rows = [r for r in rows if r.split == "fit"]
    test_rows = [r for r in rows if r.split == "test"]
    if len(fit_rows) < 3:
        raise TargetError(f"only {len(fit_rows)} fit rows; need at least 3 (and leave-one-out needs them)", path=str(table))
    prior_terms, prior_name = None, ""
    if prior:
        name, _, rt = prior.partition(":")
        pt = load_target(name, runtime=rt or None)
        if pt.coefficients.terms is None:
            raise TargetError(f"prior {prior!r} is a roofline table; a prior must be a terms table", "prior")
        prior_terms, prior_name = pt.coefficients.terms, f"{pt.name}:{pt.runtime}"
    d = design_of(fit_rows, table.parent, t)
    ms = np.array([r.latency_ms for r in fit_rows])
    c, fit_only, how = fit_table(d, ms, prior_terms)
    base_name = prior_name or f"{t.name}:{t.runtime}"
    base = prior_terms if prior_terms is not None else terms_of_table(t)

    def fitter(dd: Design, yy: np.ndarray) -> _cost.Coefficients:  # the fit as written, for the held-out folds too
        sc = prior_scale(dd, yy, prior_terms) if prior_terms is not None else 1.0
        return fill_unidentified_kinds(fit_only(dd, yy), dd, base, sc)[0]

    scale = prior_scale(d, ms, prior_terms) if prior_terms is not None else 1.0
    c, missing = fill_unidentified_kinds(c, d, base, scale)
    if missing:
        how += (f"; kinds the data does not identify (< 1 % of its time: {', '.join(missing)}) taken from {base_name}"
                + (f" x {scale:.3g}" if prior_terms is not None else "")
                + ("" if prior_terms is not None or t.coefficients.terms is not None else " (its roofline as overhead + compute + memory time)"))
    fit_pred = d.predict_s(c, 1.0, 1.0) * 1e3
    held = _heldout(d, ms, fitter)
    fit_err, cv_err = rel_errors(fit_pred, ms), rel_errors(held, ms)
    meta = {
        "source": source or (f"hwopt calibrate --from-table {table.name}: {len(fit_rows)} measured models"
                             + (f" starting from {prior_name}" if prior_name else "")),
        "date": _dt.date.today().isoformat(),
        "method": how + ("; cv: leave-one-out" if len(fit_rows) <= 30 else "; cv: 5-fold")
                  + " (held-out error in loo_error, held-out Spearman in rank_correlation)",
        "schedules": f"as measured in {table.name}",
        "provenance": provenance,
        "samples": len(fit_rows),
        "fit_error": round(float(np.median(fit_err)), 4),
        "loo_error": round(float(np.median(cv_err)), 4),
        "rank_correlation": round(spearman(held, ms), 4),
    }
    if prior_name:
        meta["prior"] = prior_name
    rep = {"fit_error": fit_err, "cv_error": cv_err, "cv_rank": meta["rank_correlation"], "fit_rows": len(fit_rows),
           "test_rows": len(test_rows), "coefficients": c}
    if test_rows:
        dt = design_of(test_rows, table.parent, t)
        tm = np.array([r.latency_ms for r in test_rows])
        tp = dt.predict_s(c, 1.0, 1.0) * 1e3
        rep["test_error"] = rel_errors(tp, tm)
        meta["test_samples"] = len(test_rows)
        meta["test_error"] = round(float(np.median(rep["test_error"])), 4)
        meta["test_rank_correlation"] = round(spearman(tp, tm), 4)
        rep["test_rank"] = meta["test_rank_correlation"]
    tbl = coefficients_table(c, meta)
    if write:
        update_runtime(out, runtime, tbl, make_default=make_default)
    rep.update(table=tbl, runtime=runtime, out=str(out))
    return rep
