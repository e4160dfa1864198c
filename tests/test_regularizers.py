"""Regularizers: analytic gradients against autograd, Laplacian consistency."""

import pytest
import torch

from hybridsim.numerics.regularizers import (
    DirichletEnergy,
    TotalVariation,
    finite_difference,
    finite_difference_adjoint,
    laplacian,
)


def _image(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(3, 9, 11, generator=gen, dtype=torch.float64)
    a[:, :4, :5] = 0.3  # a flat patch: zero gradient, exercises TV's quadratic branch
    return a


@pytest.mark.parametrize(
    "reg", [DirichletEnergy(), TotalVariation(1e-2), TotalVariation(0.5)], ids=repr
)
def test_gradient_matches_autograd(reg):
    a = _image().requires_grad_(True)
    (auto,) = torch.autograd.grad(reg.value(a).sum(), a)
    err = float((reg.gradient(a.detach()) - auto).abs().max() / auto.abs().max())
    assert err < 1e-12, f"{reg}: analytic gradient differs from autograd by {err:.2e} (rel)"
    assert reg.value(a).shape == (3,)


def test_tv_approaches_tv_and_is_zero_on_constants():
    a = _image(1)
    g = finite_difference(a)
    tv = torch.sqrt(g.square().sum(dim=-3)).sum(dim=(-2, -1))
    smoothed = TotalVariation(1e-8).value(a)
    assert torch.allclose(smoothed, tv, rtol=1e-6), (smoothed, tv)
    const = torch.full((1, 5, 5), 2.0, dtype=torch.float64)
    assert float(TotalVariation().value(const)) == 0.0
    assert float(TotalVariation().gradient(const).abs().max()) == 0.0


def test_laplacian_stencil_and_boundary():
    a = _image(2)
    lap = laplacian(a)
    interior = (
        a[:, :-2, 1:-1] + a[:, 2:, 1:-1] + a[:, 1:-1, :-2] + a[:, 1:-1, 2:] - 4 * a[:, 1:-1, 1:-1]
    )
    assert torch.allclose(lap[:, 1:-1, 1:-1], interior)
    # Neumann boundary: the Laplacian integrates to zero and is the Dirichlet energy's gradient
    assert float(lap.sum(dim=(-2, -1)).abs().max()) < 1e-12
    assert torch.allclose(DirichletEnergy().gradient(a), -lap)
    # D^T D is self-adjoint and positive semi-definite
    b = _image(3)
    lhs = (finite_difference(a) * finite_difference(b)).sum()
    assert torch.allclose(lhs, (a * finite_difference_adjoint(finite_difference(b))).sum())


@pytest.mark.parametrize("reg", [DirichletEnergy(), TotalVariation(0.1)], ids=repr)
def test_lipschitz_bound(reg):
    # ||grad R(a) - grad R(b)|| <= L ||a - b|| on random pairs
    a, b = _image(4), _image(5)
    lhs = float((reg.gradient(a) - reg.gradient(b)).norm())
    rhs = reg.lipschitz * float((a - b).norm())
    assert lhs <= rhs, f"{reg}: gradient difference {lhs:.3g} exceeds L |a-b| = {rhs:.3g}"


def test_tv_rejects_bad_eps():
    with pytest.raises(ValueError, match="eps"):
        TotalVariation(0.0)
