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
