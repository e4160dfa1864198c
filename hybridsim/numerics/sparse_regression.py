"""Equation discovery by sparse regression (SINDy; Brunton, Proctor & Kutz, PNAS 2016).

Sequentially thresholded least squares (STLSQ) over a polynomial library. Columns are scaled to
unit norm before each least-squares solve (a degree-5 library in x ~ 30 spans ~1e7 in scale);
the threshold is applied to the coefficients in physical units. A ridge penalty is optional and
off by default: on the Lotka–Volterra orbit a degree-5 library has condition number ~1e10, and
even a small ridge term then shrinks the true coefficients below the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations_with_replacement

import numpy as np


def monomial_exponents(n_vars: int, degree: int) -> np.ndarray:
    """Powers ``(n_terms, n_vars)`` of every monomial up to ``degree``, constant first, then by
    total degree (``1, x, y, x^2, x y, y^2, …`` for two variables)."""
    if degree < 1:
        raise ValueError(f"library degree must be >= 1, got {degree}")
    rows = [[0] * n_vars]
    for k in range(1, degree + 1):
        for combo in combinations_with_replacement(range(n_vars), k):
            rows.append([combo.count(i) for i in range(n_vars)])
    return np.array(rows, dtype=np.int64)


def term_names(exponents: np.ndarray, names: Sequence[str]) -> list[str]:
    """``"1"``, ``"x"``, ``"x y"``, ``"x^2 y"``, … for the rows of ``exponents``."""
    out = []
    for powers in exponents:
        parts = [n if p == 1 else f"{n}^{p}" for n, p in zip(names, powers, strict=True) if p]
        out.append(" ".join(parts) or "1")
    return out


def polynomial_library(
    u: np.ndarray, degree: int, names: Sequence[str]
) -> tuple[np.ndarray, list[str]]:
    """All monomials of the columns of ``u`` up to ``degree`` (constant included).

    Args:
        u: samples ``(n, d)``.
        degree: highest total degree, >= 1.
        names: one name per column (``("x", "y")``).
    Returns:
        ``(theta, terms)``: ``theta`` is ``(n, n_terms)``; ``terms`` names each column
        (``"1"``, ``"x"``, ``"x y"``, ``"x^2 y"``, …), in the order of
        :func:`monomial_exponents`.
    """
    u = np.asarray(u, dtype=np.float64)
    if u.ndim != 2 or u.shape[1] != len(names):
        raise ValueError(f"u must be (n, {len(names)}), got {u.shape}")
    exponents = monomial_exponents(u.shape[1], degree)
    theta = np.prod(u[:, None, :] ** exponents[None], axis=2)
    return theta, term_names(exponents, names)


def stlsq(
    theta: np.ndarray,
    target: np.ndarray,
    threshold: float,
    max_iter: int = 20,
    ridge: float = 0.0,
) -> np.ndarray:
    """Sparse ``xi`` with ``theta @ xi ≈ target``: least squares, zero ``|xi| < threshold``, refit.

    Args:
        theta: library ``(n, p)``.
        target: ``(n, k)`` (one column per equation) or ``(n,)``.
        threshold: coefficients smaller than this (in physical units) are set to zero.
        ridge: Tikhonov penalty on the column-normalised problem (0 = plain least squares).
    Returns:
        ``xi`` of shape ``(p, k)`` (or ``(p,)`` for a 1-D target).
    """
    theta = np.asarray(theta, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    one_d = target.ndim == 1
    target = target[:, None] if one_d else target
    scale = np.linalg.norm(theta, axis=0)
    scale[scale == 0] = 1.0
    xi = np.zeros((theta.shape[1], target.shape[1]))
    for j in range(target.shape[1]):
        active = np.ones(theta.shape[1], dtype=bool)
        for _ in range(max_iter):
            coef = _solve(theta[:, active] / scale[active], target[:, j], ridge) / scale[active]
            keep = np.abs(coef) >= threshold
            xi[:, j] = 0.0
            xi[np.flatnonzero(active), j] = coef
            if keep.all() or not keep.any():
                if not keep.any():
                    xi[:, j] = 0.0
                break
            active[np.flatnonzero(active)[~keep]] = False
    return xi[:, 0] if one_d else xi


def stlsq_select(
    theta: np.ndarray,
    target: np.ndarray,
    threshold: float,
    factors: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0),
    tolerance: float = 0.05,
    max_iter: int = 20,
) -> np.ndarray:
    """STLSQ over the thresholds ``threshold * factors``, keeping for each equation the
    sparsest model whose relative residual ``|theta xi - f| / |f|`` is within ``tolerance``
    of the best candidate's (ties: the smaller residual).

    A single threshold is fragile when the samples lie on a curve (a limit cycle): the
    library's columns are then nearly collinear, the first full least-squares fit spreads a
    true coefficient over its neighbours, and STLSQ can cut it (γ = 0.1 against a threshold
    of 0.05). A too-sparse model shows in its residual; extra terms that only fit the
    network's small errors are not worth their complexity (the Pareto-front choice of
    Brunton et al., PNAS 2016).
    """
    theta = np.asarray(theta, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    one_d = target.ndim == 1
    target = target[:, None] if one_d else target
    best = np.zeros((theta.shape[1], target.shape[1]))
    for j in range(target.shape[1]):
        norm = max(float(np.linalg.norm(target[:, j])), 1e-300)
        candidates = []
        for f in factors:
            xi = stlsq(theta, target[:, j], threshold * f, max_iter=max_iter)
            err = float(np.linalg.norm(theta @ xi - target[:, j])) / norm
            candidates.append((int(np.count_nonzero(xi)), err, xi))
        floor = min(err for _, err, _ in candidates)
        fit = [c for c in candidates if c[1] <= floor + tolerance]
        best[:, j] = min(fit, key=lambda c: (c[0], c[1]))[2]
    return best[:, 0] if one_d else best


def _solve(a: np.ndarray, b: np.ndarray, ridge: float) -> np.ndarray:
    if ridge > 0:
        return np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ b)
    return np.linalg.lstsq(a, b, rcond=None)[0]


def format_equation(lhs: str, coefs: np.ndarray, terms: Sequence[str], digits: int = 3) -> str:
    """``dx/dt = 1.100 x - 0.398 x y`` from coefficients and term names (zeros omitted)."""
    parts: list[str] = []
    for c, term in zip(coefs, terms, strict=True):
        if c == 0:
            continue
        mag = f"{abs(c):.{digits}f}" + ("" if term == "1" else f" {term}")
        parts.append(("- " if c < 0 else "+ ") + mag if parts else ("-" if c < 0 else "") + mag)
    return f"{lhs} = " + (" ".join(parts) if parts else "0")
