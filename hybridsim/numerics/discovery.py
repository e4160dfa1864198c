"""Equation discovery that proposes sparse structures and validates them by simulation.

The UDE's learned right-hand side ``f(u)`` is regressed on a polynomial library ``Θ(u)`` (SINDy;
Brunton, Proctor & Kutz, PNAS 2016), as in Rackauckas et al. (2020, §2.1). Samples taken along
one closed orbit make the library nearly collinear (condition number 1e7 and more): STLSQ's first
full least-squares fit spreads the true coefficients over neighbouring terms, and no threshold
then proposes the true subset, although a least-squares fit on that subset has a smaller
residual. So discovery here has two stages:

1. **Candidates** per equation: the best least-squares subsets of every size ``1..max_terms``
   (exhaustive: a degree-3 library in two variables has 10 terms, 385 subsets of up to 4 terms),
   plus the supports along an STLSQ threshold path.
2. **Validation** of every combination (one candidate per equation): the candidate ODE
   ``du/dt = Θ(u) ξ`` is simulated from the data's initial conditions, its nonzero coefficients
   are fitted to the observed trajectories by Levenberg–Marquardt (exact forward sensitivities
   through RK4, started from the regression coefficients, as the UDE papers refit the
   discovered model), and the Bayesian information criterion

       BIC = n ln(max(RSS / n, floor²)) + k ln n

   picks the structure (``n`` residuals scaled by each variable's spread, ``k`` nonzero
   coefficients). Once the right structure fits the data to its noise, an extra term lowers
   RSS by about one noise variance and costs ``ln n`` of them; a missing term leaves a
   systematic misfit. ``floor`` is the relative precision below which fits count as equal
   (integration error, noise-free data).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations, product
from math import comb

import numpy as np
import torch

from hybridsim.numerics.ode import RK4
from hybridsim.numerics.sparse_regression import stlsq

Support = tuple[int, ...]


# ------------------------------------------------------------------------ candidates
def subset_fit(theta: np.ndarray, target: np.ndarray, support: Support) -> tuple[np.ndarray, float]:
    """Least-squares coefficients on ``support`` (columns scaled to unit norm for the solve)
    and the relative residual ``|Θ ξ − f| / |f|``. Returns ``(xi (p,), residual)``."""
    a = theta[:, list(support)]
    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0] = 1.0
    coef = np.linalg.lstsq(a / scale, target, rcond=None)[0] / scale
    xi = np.zeros(theta.shape[1])
    xi[list(support)] = coef
    norm = max(float(np.linalg.norm(target)), 1e-300)
    return xi, float(np.linalg.norm(a @ coef - target)) / norm


def best_subsets(
    theta: np.ndarray,
    target: np.ndarray,
    max_terms: int,
    keep: int = 2,
    max_subsets: int = 20_000,
) -> list[Support]:
    """For every size ``1..max_terms``, the ``keep`` supports of the library ``theta (n, p)``
    whose least-squares fit of ``target (n,)`` has the smallest residual (best-subset
    selection). Sizes whose subsets would exceed ``max_subsets`` in all are skipped."""
    p = theta.shape[1]
    out: list[Support] = []
    total = 0
    for k in range(1, min(max_terms, p) + 1):
        total += comb(p, k)
        if total > max_subsets:
            break
        scored = sorted((subset_fit(theta, target, s)[1], s) for s in combinations(range(p), k))
        out.extend(s for _, s in scored[:keep])
    return out


def stlsq_supports(
    theta: np.ndarray, target: np.ndarray, thresholds: Sequence[float]
) -> list[Support]:
    """The distinct nonempty supports STLSQ finds along a threshold path."""
    found: list[Support] = []
    for thr in thresholds:
        s = tuple(int(i) for i in np.flatnonzero(stlsq(theta, target, thr)))
        if s and s not in found:
            found.append(s)
    return found


# ------------------------------------------------------------------------ simulation
@dataclass
class TrajectoryFit:
    """Coefficients fitted to trajectories, per candidate: ``coef (C, p, d)``, ``rss (C,)``
    (sum of squared scaled residuals; inf where the simulation blew up), ``n`` residuals."""

    coef: np.ndarray
    rss: np.ndarray
    n: int


def _monomials(u: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """``[Θ(u), ∂Θ/∂u]`` for states ``u (..., d)`` as one ``(…, p, 1 + d)`` tensor;
    ``exponents (p, d)`` holds each monomial's powers (as floats)."""
    d = u.shape[-1]
    x = u[..., None, :]
    factors = x**exponents  # (…, p, d): u_m^{e_km}
    lowered = exponents * x ** (exponents - 1).clamp(min=0)  # ∂/∂u_m of each factor
    own = torch.eye(d, dtype=torch.bool, device=u.device)
    # ∂Θ_k/∂u_l = lowered_kl · Π_{m≠l} factors_km: a (d, d) table per monomial, product by row
    grads = torch.where(own, lowered[..., None, :], factors[..., None, :]).prod(-1)
    return torch.cat((factors.prod(-1, keepdim=True), grads), -1)


def polynomial_rhs(exponents: np.ndarray, coef: np.ndarray):
    """The discovered model ``f(t, u) = Θ(u) ξ`` for :func:`hybridsim.numerics.ode.odeint`:
    ``u (batch, d)``, ``coef (p, d)``."""

    def f(_t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        ex = torch.as_tensor(exponents, dtype=u.dtype, device=u.device)
        xi = torch.as_tensor(coef, dtype=u.dtype, device=u.device)
        return (u[:, None, :] ** ex).prod(-1) @ xi

    return f


def simulate(
    exponents: np.ndarray,
    coef: torch.Tensor,
    u0: torch.Tensor,
    t: torch.Tensor,
    substeps: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Trajectories of ``du/dt = Θ(u) ξ_c`` for every candidate ``c`` with their sensitivities.

    Args:
        exponents: ``(p, d)`` monomial powers (:func:`sparse_regression.monomial_exponents`).
        coef: ``(C, p, d)`` coefficients, column ``j`` the equation of ``du_j/dt``.
        u0: ``(B, d)`` initial states, shared by the candidates.
        t: ``(T,)`` uniformly spaced output times (RK4 with ``substeps`` steps per interval).
    Returns:
        ``u (C, B, T, d)`` and ``S (C, B, T, d, p, d)`` with ``S[..., i, k, j] = ∂u_i/∂ξ_kj``
        (the variational equation ``dS/dt = J_f S + ∂f/∂ξ``, integrated with the same RK4).
    """
    n_cand, p, d = coef.shape
    ex = torch.as_tensor(exponents, dtype=coef.dtype, device=coef.device)
    eye = torch.eye(d, dtype=coef.dtype, device=coef.device)
    batch = u0.shape[0]
    coef_t = coef.transpose(1, 2)[:, None]  # (C, 1, d, p)

    def f(_t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        u, s = z[..., :d], z[..., d:].reshape(n_cand, batch, d, p * d)
        lib = _monomials(u, ex)  # (C, B, p, 1 + d)
        both = coef_t @ lib  # (C, B, d, 1 + d): f and its Jacobian J_f
        # dS/dt = J_f S + ∂f/∂ξ, with ∂f_i/∂ξ_kj = Θ_k δ_ij
        source = lib[..., 0][:, :, None, :, None] * eye[:, None, :]  # (C, B, d, p, d)
        ds = torch.baddbmm(
            source.reshape(-1, d, p * d),
            both[..., 1:].reshape(-1, d, d),
            s.reshape(-1, d, p * d),
        )
        return torch.cat((both[..., 0], ds.reshape(n_cand, batch, -1)), -1)

    z = torch.cat(
        (
            u0.expand(n_cand, batch, d),
            torch.zeros(n_cand, batch, d * p * d, dtype=coef.dtype, device=coef.device),
        ),
        -1,
    )
    times = t.tolist()
    h = (times[1] - times[0]) / substeps if len(times) > 1 else 0.0
    rk4, out = RK4(), [z]
    with torch.no_grad():
        for i in range(len(times) - 1):
            for j in range(substeps):
                z = rk4.step(f, times[i] + j * h, z, h)
            z = torch.nan_to_num(z, nan=float("inf"))
            out.append(z)
    traj = torch.stack(out, 2)  # (C, B, T, d + d p d)
    return traj[..., :d], traj[..., d:].reshape(n_cand, batch, len(times), d, p, d)


def fit_trajectories(
    exponents: np.ndarray,
    supports: np.ndarray,
    coef0: np.ndarray,
    u0: np.ndarray,
    t: np.ndarray,
    observed: np.ndarray,
    scale: np.ndarray,
    substeps: int = 1,
    iterations: int = 40,
) -> TrajectoryFit:
    """Fit the nonzero coefficients of every candidate to observed trajectories.

    Levenberg–Marquardt (Marquardt 1963, diagonal scaling) on the residuals
    ``(u_c(t) − observed) / scale``, all candidates at once, each with its own damping.

    Args:
        exponents: ``(p, d)`` monomial powers.
        supports: ``(C, p, d)`` booleans, the nonzero coefficients of each candidate.
        coef0: ``(C, p, d)`` starting coefficients (zero off the support).
        u0: ``(B, d)`` initial states; ``t (T,)`` uniformly spaced times.
        observed: ``(B, T, d)`` observations; ``scale (d,)`` each variable's spread.
    """
    dt = torch.float64
    mask = torch.as_tensor(supports, dtype=torch.bool).reshape(len(supports), -1)
    coef = torch.as_tensor(coef0, dtype=dt) * mask.reshape(coef0.shape)
    u0_t, t_t = torch.as_tensor(u0, dtype=dt), torch.as_tensor(t, dtype=dt)
    obs = torch.as_tensor(observed, dtype=dt)
    sc = torch.as_tensor(scale, dtype=dt)
    n_cand, n_par = mask.shape

    def evaluate(
        c: torch.Tensor, m: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        u, s = simulate(exponents, c, u0_t, t_t, substeps)
        r = ((u - obs) / sc).reshape(len(c), -1)
        jac = (s / sc[:, None, None]).reshape(len(c), r.shape[1], n_par) * m[:, None, :]
        ok = torch.isfinite(r).all(1) & torch.isfinite(jac).all((1, 2))
        rss = torch.where(ok, (torch.nan_to_num(r) ** 2).sum(1), torch.inf)
        return torch.nan_to_num(r, posinf=0.0, neginf=0.0), torch.nan_to_num(jac), rss

    r, jac, rss = evaluate(coef, mask)
    damping = torch.full((n_cand,), 1e-3, dtype=dt)
    eye = torch.eye(n_par, dtype=dt)
    done = ~torch.isfinite(rss)  # a candidate that blows up from its start is not fitted
    for it in range(iterations):
        # far behind the best fit after a few iterations: no longer a contender
        for after, factor in ((25, 1.2), (20, 2.0), (15, 10.0), (10, 30.0), (5, 100.0)):
            if it >= after:
                done |= rss > factor * rss.min()
                break
        idx = torch.nonzero(~done).flatten()  # only the candidates still improving are run
        if len(idx) == 0:
            break
        m, j_a, r_a = mask[idx], jac[idx], r[idx]
        jtj = j_a.transpose(1, 2) @ j_a
        grad = (j_a.transpose(1, 2) @ r_a[..., None])[..., 0]
        diag = torch.diagonal(jtj, dim1=1, dim2=2).clamp(min=1e-12)
        # coefficients outside the support get an identity row, which keeps them at zero
        lhs = jtj + (damping[idx, None] * diag + (~m).to(dt))[:, :, None] * eye
        step = -torch.linalg.solve(lhs, grad) * m
        trial = coef[idx] + step.reshape(-1, *coef.shape[1:])
        r_t, jac_t, rss_t = evaluate(trial, m)
        better = rss_t < rss[idx]
        converged = better & ((rss[idx] - rss_t) <= 1e-6 * rss[idx])
        b = idx[better]
        coef[b], r[b], jac[b], rss[b] = trial[better], r_t[better], jac_t[better], rss_t[better]
        damping[idx] = torch.where(better, damping[idx] / 3, damping[idx] * 4)
        done[idx[converged]] = True
        done |= damping > 1e10
    return TrajectoryFit(coef.numpy(), rss.numpy(), int(r.shape[1]))


def bic(rss: np.ndarray, n: int, k: np.ndarray, floor: float) -> np.ndarray:
    """``n ln(max(RSS/n, floor²)) + k ln n`` (inf where RSS is)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        fit = n * np.log(np.maximum(np.asarray(rss) / n, floor**2))
    return np.where(np.isfinite(rss), fit + np.asarray(k) * np.log(n), np.inf)


# ------------------------------------------------------------------------- discovery
@dataclass
class Discovered:
    """The selected model and the evidence: ``coef (p, d)`` fitted to the trajectories,
    ``regression (p, d)`` the least-squares fit of the learned terms on the same support,
    ``candidates``: every validated candidate, best BIC first (supports, k, rss, bic)."""

    coef: np.ndarray
    regression: np.ndarray
    support: list[Support]
    candidates: list[dict]
    n_residuals: int


def discover(
    theta: np.ndarray,
    target: np.ndarray,
    exponents: np.ndarray,
    u0: np.ndarray,
    t: np.ndarray,
    observed: np.ndarray,
    scale: np.ndarray,
    *,
    max_terms: int = 4,
    keep: int = 2,
    thresholds: Sequence[float] = (),
    floor: float = 1e-3,
    substeps: int = 1,
    iterations: int = 40,
    rounds: int = 4,
) -> Discovered:
    """Discover ``du/dt = Θ(u) ξ`` from a learned right-hand side and the observations.

    Args:
        theta: library at the sample states ``(n, p)``; ``target`` the learned ``f`` ``(n, d)``.
        exponents: ``(p, d)`` the library's monomial powers (columns of ``theta``).
        u0, t, observed, scale: the trajectories to validate against (see
            :func:`fit_trajectories`).
        max_terms, keep: best-subset candidates per equation (sizes ``1..max_terms``, the
            ``keep`` best of each size); ``thresholds``: an STLSQ path adding candidates.
        floor: relative precision below which trajectory fits count as equal.
        rounds: rounds of backward elimination (one term fewer) around the best structures.
    """
    d, p = target.shape[1], theta.shape[1]
    per_eq: list[list[Support]] = []
    for j in range(d):
        cands = best_subsets(theta, target[:, j], max_terms, keep)
        cands += [s for s in stlsq_supports(theta, target[:, j], thresholds) if s not in cands]
        per_eq.append(cands)
    regression = {
        (j, s): subset_fit(theta, target[:, j], s)[0]
        for j, cands in enumerate(per_eq)
        for s in cands
    }
    fitted: dict[tuple[Support, ...], tuple[np.ndarray, float, int]] = {}  # coef, rss, k
    n_res = 0

    def validate(starts: dict[tuple[Support, ...], np.ndarray]) -> None:
        nonlocal n_res
        combos = list(starts)
        supports = np.zeros((len(combos), p, d), dtype=bool)
        for c, combo in enumerate(combos):
            for j, sup in enumerate(combo):
                supports[c, list(sup), j] = True
        coef0 = np.stack([starts[c] for c in combos])
        fit = fit_trajectories(
            exponents, supports, coef0, u0, t, observed, scale, substeps, iterations
        )
        n_res = fit.n
        for c, combo in enumerate(combos):
            fitted[combo] = (fit.coef[c], float(fit.rss[c]), int(supports[c].sum()))

    def ranked() -> list[tuple[Support, ...]]:
        scores = {
            c: float(bic(np.array([v[1]]), n_res, np.array([v[2]]), floor)[0])
            for c, v in fitted.items()
        }
        return sorted(fitted, key=lambda c: (scores[c], fitted[c][2]))

    validate(
        {
            combo: np.stack([regression[j, sup] for j, sup in enumerate(combo)], 1)
            for combo in product(*per_eq)
        }
    )
    # Backward elimination around the best structures: each of the 3 best with one term fewer
    # in one equation, warm-started from its fitted coefficients, until the best stays the same.
    # It recovers a true subset that the regression on an inaccurate learned term ranked below
    # its supersets. (Adding terms is not searched: testing many supersets of the true model
    # lets one of them beat the BIC's ln n penalty by chance.)
    for _ in range(rounds):
        order = ranked()
        best = order[0]
        starts: dict[tuple[Support, ...], np.ndarray] = {}
        for combo in order[:3]:
            coef = fitted[combo][0]
            for j, sup in enumerate(combo):
                for new in (tuple(i for i in sup if i != drop) for drop in sup if len(sup) > 1):
                    neighbour = (*combo[:j], new, *combo[j + 1 :])
                    if neighbour not in fitted and neighbour not in starts:
                        start = coef.copy()
                        start[[i for i in range(p) if i not in new], j] = 0.0
                        starts[neighbour] = start
        if not starts:
            break
        validate(starts)
        if ranked()[0] == best:
            break
    order = ranked()
    best = order[0]
    candidates = []
    for combo in order:
        coef, rss, k = fitted[combo]
        score = float(bic(np.array([rss]), n_res, np.array([k]), floor)[0])
        candidates.append({"support": [list(s) for s in combo], "k": k, "rss": rss, "bic": score})
    reg = np.stack([subset_fit(theta, target[:, j], sup)[0] for j, sup in enumerate(best)], 1)
    return Discovered(fitted[best][0], reg, list(best), candidates, n_res)
