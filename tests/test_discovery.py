"""Sparse regression recovers the Lotka–Volterra equations from exact terms."""

import numpy as np
import pytest

from hybridsim.config import LVConfig
from hybridsim.numerics.sparse_regression import format_equation, polynomial_library, stlsq
from hybridsim.problems.lotka_volterra import LotkaVolterra


@pytest.fixture(scope="module")
def orbit():
    cfg = LVConfig()
    u = LotkaVolterra(cfg).generate("train", 1).arrays["u_true"].reshape(-1, 2)
    x, y = u[:, 0], u[:, 1]
    f = np.stack([cfg.alpha * x - cfg.beta * x * y, cfg.gamma * x * y - cfg.delta * y], 1)
    return cfg, u, f


@pytest.mark.parametrize("degree", [3, 5])
def test_stlsq_recovers_lv_from_exact_terms(orbit, degree):
    cfg, u, f = orbit
    theta, terms = polynomial_library(u, degree, ("x", "y"))
    xi = stlsq(theta, f, threshold=0.05)
    expected = np.zeros_like(xi)
    expected[terms.index("x"), 0], expected[terms.index("x y"), 0] = cfg.alpha, -cfg.beta
    expected[terms.index("x y"), 1], expected[terms.index("y"), 1] = cfg.gamma, -cfg.delta
    np.testing.assert_allclose(xi, expected, atol=1e-8, err_msg=f"degree {degree}: {xi}")


def test_stlsq_on_interaction_terms_only(orbit):
    cfg, u, _ = orbit
    x, y = u[:, 0], u[:, 1]
    theta, terms = polynomial_library(u, 5, ("x", "y"))
    xi = stlsq(theta, np.stack([-cfg.beta * x * y, cfg.gamma * x * y], 1), threshold=0.05)
    assert np.count_nonzero(xi) == 2
    assert xi[terms.index("x y"), 0] == pytest.approx(-0.4, abs=1e-9)
    assert xi[terms.index("x y"), 1] == pytest.approx(0.1, abs=1e-9)


def test_library_terms_and_size():
    theta, terms = polynomial_library(np.array([[2.0, 3.0]]), 2, ("x", "y"))
    assert terms == ["1", "x", "y", "x^2", "x y", "y^2"]
    np.testing.assert_array_equal(theta, [[1, 2, 3, 4, 6, 9]])


def test_format_equation():
    eq = format_equation("dx/dt", np.array([0.0, 1.1, 0.0, -0.398]), ["1", "x", "y", "x y"])
    assert eq == "dx/dt = 1.100 x - 0.398 x y"
    assert format_equation("dy/dt", np.zeros(2), ["1", "x"]) == "dy/dt = 0"


def test_bad_library_degree():
    with pytest.raises(ValueError, match="degree"):
        polynomial_library(np.ones((3, 2)), 0, ("x", "y"))


def test_selection_recovers_a_term_that_one_threshold_cuts(orbit):
    """A threshold above γ = 0.1 makes one STLSQ pass cut γxy; scanning thresholds and keeping
    the sparsest adequate fit recovers the true model, also from an inexact learned term."""
    from hybridsim.numerics.sparse_regression import stlsq_select

    cfg, u, f = orbit
    rng = np.random.default_rng(0)
    theta, terms = polynomial_library(u, 3, ("x", "y"))
    # A learned term is not exactly polynomial: a smooth 3 % error along the orbit.
    learned = f * (1 + 0.03 * np.sin(np.linspace(0, 7, len(f))))[:, None]
    learned += 1e-3 * rng.standard_normal(f.shape)
    plain = stlsq(theta, learned, threshold=0.15)
    assert plain[terms.index("x y"), 1] == 0, "premise: one pass at 0.15 cuts γ"
    xi = stlsq_select(theta, learned, threshold=0.15)
    support = {(terms[i], int(j)) for i, j in zip(*np.nonzero(xi), strict=True)}
    assert support == {("x", 0), ("x y", 0), ("y", 1), ("x y", 1)}, support
    assert xi[terms.index("x y"), 1] == pytest.approx(cfg.gamma, rel=0.05)


# ---------------------------------------------------------------- discovery by simulation
def _learned(cfg: LVConfig, u: np.ndarray, error: float = 0.03, phase: float = 0.0) -> np.ndarray:
    """A stand-in for a trained UDE's right-hand side: the exact one plus a smooth error field
    over the orbit of ``error`` times each equation's largest value (a network's error is
    absolute and not polynomial)."""
    x, y = u[:, 0], u[:, 1]
    f = np.stack([cfg.alpha * x - cfg.beta * x * y, cfg.gamma * x * y - cfg.delta * y], 1)
    a, b = (x - x.min()) / np.ptp(x), (y - y.min()) / np.ptp(y)
    field = np.stack(
        [
            np.sin(2 * np.pi * 1.8 * a + phase) * np.cos(2 * np.pi * 1.6 * b + phase),
            np.cos(2 * np.pi * 2.3 * a + phase) * np.sin(2 * np.pi * 1.2 * b + phase),
        ],
        1,
    )
    return f + error * np.abs(f).max(0) * field


def _support(xi: np.ndarray, terms: list[str]) -> set[tuple[str, int]]:
    return {(terms[i], int(j)) for i, j in zip(*np.nonzero(xi), strict=True)}


TRUE_SUPPORT = {("x", 0), ("x y", 0), ("y", 1), ("x y", 1)}


def test_sensitivities_match_finite_differences():
    """simulate()'s forward sensitivities ∂u(t)/∂ξ equal central differences (float64)."""
    import torch

    from hybridsim.numerics.discovery import simulate
    from hybridsim.numerics.sparse_regression import monomial_exponents

    ex = monomial_exponents(2, 2)
    rng = np.random.default_rng(0)
    coef = torch.tensor(0.1 * rng.standard_normal((1, len(ex), 2)))
    coef[0, 1, 0], coef[0, 2, 1] = 0.5, -0.3
    u0 = torch.tensor([[1.0, 0.5], [0.3, 1.2]], dtype=torch.float64)
    t = torch.linspace(0, 2, 21, dtype=torch.float64)
    _, sens = simulate(ex, coef, u0, t, substeps=2)
    eps = 1e-6
    for k, j in [(0, 0), (1, 0), (4, 1), (5, 1)]:
        plus, minus = coef.clone(), coef.clone()
        plus[0, k, j] += eps
        minus[0, k, j] -= eps
        fd = (simulate(ex, plus, u0, t, 2)[0] - simulate(ex, minus, u0, t, 2)[0]) / (2 * eps)
        err = float((fd[0] - sens[0, ..., k, j]).abs().max())
        assert err < 1e-7, f"sensitivity to coefficient ({k}, {j}) off by {err:.2e}"


def test_best_subset_proposes_the_structure_stlsq_misses(orbit):
    """The issue's mechanism: on one closed orbit the library is nearly collinear; STLSQ's
    threshold scan never proposes {y, xy} for dy/dt, the best 2-term subset is exactly it."""
    from hybridsim.numerics.discovery import best_subsets
    from hybridsim.numerics.sparse_regression import stlsq_select

    cfg, u, _ = orbit
    theta, terms = polynomial_library(u, 3, ("x", "y"))
    assert np.linalg.cond(theta) > 1e4
    for phase in (0.0, 1.0, 2.0):
        learned = _learned(cfg, u, error=0.03, phase=phase)
        found = _support(stlsq_select(theta, learned, 0.05), terms)
        assert found != TRUE_SUPPORT, "premise: the STLSQ threshold scan misses the structure"
        for j, true in enumerate(({"x", "x y"}, {"y", "x y"})):
            best2 = best_subsets(theta, learned[:, j], max_terms=2, keep=1)[-1]
            assert {terms[i] for i in best2} == true


def _discover_lv(cfg: LVConfig, error: float = 0.03, phase: float = 1.0, seed: int = 1):
    from hybridsim.numerics.discovery import discover
    from hybridsim.numerics.sparse_regression import monomial_exponents

    data = LotkaVolterra(cfg).generate("train", seed)
    u = data.arrays["u_true"].reshape(-1, 2)
    theta, terms = polynomial_library(u, 3, ("x", "y"))
    observed = data.arrays["u"]
    found = discover(
        theta,
        _learned(cfg, u, error, phase),
        monomial_exponents(2, 3),
        data.arrays["u0"],
        data.coords["t"],
        observed,
        observed.reshape(-1, 2).std(0),
        thresholds=[0.0125, 0.025, 0.05, 0.1, 0.2],
    )
    return found, terms


@pytest.mark.parametrize(
    "params",
    [
        {"noise": 0.0},
        {"noise": 0.01},
        {"noise": 0.05},
        # a small orbit near the equilibrium (δ/γ, α/β) = (4, 2.75): worse conditioned
        {"noise": 0.01, "x0": 5.0, "y0": 3.5},
        # the paper's parameters and initial condition (Rackauckas et al. 2020)
        {
            "alpha": 1.3,
            "beta": 0.9,
            "gamma": 0.8,
            "delta": 1.8,
            "x0": 0.44249296,
            "y0": 4.6280594,
            "t_train": 10.0,
            "t_test": 20.0,
            "noise": 0.05,
        },
    ],
    ids=["noise0", "noise1pct", "noise5pct", "small-orbit", "paper-parameters"],
)
def test_discovery_finds_structure_and_parameters(params):
    """From a learned right-hand side 3 % off (on which STLSQ fails), the candidates validated
    by simulation give the true terms and only those, and the parameters (fitted to the
    trajectories) within 1 % plus a fifth of the noise level."""
    cfg = LVConfig(**params)
    found, terms = _discover_lv(cfg)
    assert _support(found.coef, terms) == TRUE_SUPPORT, found.candidates[:3]
    truth = {
        ("x", 0): cfg.alpha,
        ("x y", 0): -cfg.beta,
        ("x y", 1): cfg.gamma,
        ("y", 1): -cfg.delta,
    }
    tol = 1e-3 if cfg.noise == 0 else 0.01 + cfg.noise / 5
    for (term, j), value in truth.items():
        got = found.coef[terms.index(term), j]
        assert got == pytest.approx(value, rel=tol), f"{term} in eq {j}: {got} vs {value}"


def test_bic_prefers_the_true_model_over_one_with_an_extra_term():
    """An extra term lowers the residual by about one noise variance and costs ln n of them."""
    from hybridsim.numerics.discovery import bic

    n, sigma2 = 400, 1e-4
    true_rss, extra_rss = n * sigma2, n * sigma2 - 2 * sigma2  # a typical χ²₁ gain
    scores = bic(np.array([true_rss, extra_rss]), n, np.array([4, 5]), floor=1e-3)
    assert scores[0] < scores[1]
    # below the floor, fits count as equal and the sparser model wins
    assert (
        bic(np.array([1e-12, 1e-14]), n, np.array([4, 5]), 1e-3)[0]
        < bic(np.array([1e-12, 1e-14]), n, np.array([4, 5]), 1e-3)[1]
    )
    assert np.isinf(bic(np.array([np.inf]), n, np.array([4]), 1e-3)[0])


class _FakeUDE:
    """What LotkaVolterra.discover needs of a trained model: its right-hand side's values."""

    def __init__(self, cfg: LVConfig, drop_gamma: bool = False) -> None:
        self.cfg, self.drop_gamma = cfg, drop_gamma

    def values(self, u):
        learned = _learned(self.cfg, u)
        if self.drop_gamma:  # a model that missed the predator's growth term γxy
            learned[:, 1] -= self.cfg.gamma * u[:, 0] * u[:, 1]
        return learned


@pytest.mark.parametrize(
    "params",
    [
        {},
        {
            "alpha": 1.3,
            "beta": 0.9,
            "gamma": 0.8,
            "delta": 1.8,
            "x0": 0.44,
            "y0": 4.6,
            "t_train": 10.0,
            "t_test": 20.0,
        },
    ],
    ids=["lecture", "paper"],
)
def test_problem_reports_structure_against_the_configured_truth(params):
    cfg = LVConfig(**params)
    problem = LotkaVolterra(cfg)
    train = problem.generate("train", cfg.seed_train)
    states = train.arrays["u_true"].reshape(-1, 2)
    out = problem.discover(_FakeUDE(cfg).values(states), states, train)
    assert out["structure_found"], out["equations"]
    assert out["n_terms"] == 4
    assert max(out["relative_error"].values()) < 0.02, out["relative_error"]
    assert out["true_equations"][1].startswith(f"dy/dt = -{cfg.delta:.3f} y")


def test_a_model_that_missed_a_term_has_the_wrong_structure():
    cfg = LVConfig(t_train=10.0, t_test=20.0)
    problem = LotkaVolterra(cfg)
    train = problem.generate("train", cfg.seed_train)
    states = train.arrays["u_true"][0]
    out = problem.discover(_FakeUDE(cfg, drop_gamma=True).values(states), states, train)
    assert not out["structure_found"], out["equations"]


def test_stlsq_method_still_selectable():
    cfg = LVConfig(discovery="stlsq")
    problem = LotkaVolterra(cfg)
    train = problem.generate("train", 1)
    states = train.arrays["u_true"].reshape(-1, 2)
    out = problem.discover(_FakeUDE(cfg).values(states), states, train)
    assert out["method"] == "stlsq" and out["candidates"] == []


def test_backward_elimination_reaches_a_subset_no_candidate_proposed(monkeypatch):
    """When the regression on an inaccurate learned term proposes only a superset of the true
    structure ({y, xy, y³}), removing terms one at a time from the best fits finds {y, xy}."""
    import hybridsim.numerics.discovery as disc

    cfg = LVConfig(noise=0.05)
    data = LotkaVolterra(cfg).generate("train", 1)
    u = data.arrays["u_true"].reshape(-1, 2)
    theta, terms = polynomial_library(u, 3, ("x", "y"))
    proposals = {
        0: [(terms.index("x"), terms.index("x y"))],
        1: [(terms.index("y"), terms.index("x y"), terms.index("y^3"))],
    }
    calls = iter([0, 1])
    monkeypatch.setattr(disc, "best_subsets", lambda *a, **k: proposals[next(calls)])
    observed = data.arrays["u"]
    found = disc.discover(
        theta,
        _learned(cfg, u),
        disc_exponents(),
        data.arrays["u0"],
        data.coords["t"],
        observed,
        observed.reshape(-1, 2).std(0),
    )
    assert _support(found.coef, terms) == TRUE_SUPPORT, found.candidates[:3]


def disc_exponents():
    from hybridsim.numerics.sparse_regression import monomial_exponents

    return monomial_exponents(2, 3)
