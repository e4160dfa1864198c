"""Pressure projection: divergence, projector properties, PCG vs FFT, implicit gradients."""

import pytest
import torch

from hybridsim.numerics.grid import MACGrid
from hybridsim.numerics.pressure import (
    PressureOperator,
    PressureSolve,
    fft_solve,
    project,
)
from hybridsim.numerics.scenarios import bluff_body_grid, periodic_grid

F64 = {"dtype": torch.float64}


def _random_velocity(grid: MACGrid, batch: int = 2, seed: int = 0) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn(batch, *grid.face_shape(a), generator=gen, **F64) for a in range(grid.dim)
    )


def _dot(a: tuple, b: tuple) -> float:
    return float(sum((x * y).sum() for x, y in zip(a, b, strict=True)))


GRIDS = {
    "wake": lambda: bluff_body_grid((64, 32), (200.0, 100.0), (50.0, 50.0), 10.0),
    "periodic_obstacle": lambda: MACGrid(
        (24, 16), (6.0, 4.0), ["periodic", "periodic"], obstacle=_box((16, 24), 5, 9, 8, 12)
    ),
    "closed_box": lambda: MACGrid((20, 12), (2.0, 1.0), ["wall", ("slip", "wall")]),
    "periodic_3d": lambda: periodic_grid(8, dim=3),
}


def _box(shape, y0, y1, x0, x1):
    m = torch.zeros(shape, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_projection_is_divergence_free(name):
    grid = GRIDS[name]()
    solve = PressureSolve(grid, rtol=1e-13)
    velocity, _ = project(grid, _random_velocity(grid), solve)
    fluid = grid.consts(torch.float64, torch.device("cpu"))["fluid"]
    div = float((grid.divergence(velocity) * fluid).abs().max())
    assert div < 1e-8, f"{name}: max |div u| after projection = {div:.2e}"


@pytest.mark.parametrize("name", ["wake", "periodic_obstacle", "closed_box"])
def test_projection_idempotent_and_self_adjoint(name):
    grid = GRIDS[name]()
    solve = PressureSolve(grid, rtol=1e-14)
    u, v = _random_velocity(grid, seed=1), _random_velocity(grid, seed=2)
    pu = project(grid, u, solve)[0]
    ppu = project(grid, pu, solve)[0]
    err = max(float((a - b).abs().max()) for a, b in zip(pu, ppu, strict=True))
    assert err < 1e-10, f"{name}: |P(P u) - P u| = {err:.2e}"
    # the projection is affine (inflow values); its linear part L u = P u - P 0 is symmetric
    zero = tuple(torch.zeros_like(c) for c in u)
    p0 = project(grid, zero, solve)[0]
    lu = tuple(a - b for a, b in zip(pu, p0, strict=True))
    lv = tuple(a - b for a, b in zip(project(grid, v, solve)[0], p0, strict=True))
    lhs, rhs = _dot(lu, v), _dot(u, lv)
    gap = abs(lhs - rhs) / abs(lhs)
    assert gap < 1e-10, f"{name}: <Pu, v> = {lhs}, <u, Pv> = {rhs}, relative gap {gap:.2e}"


def test_stencil_matches_gradient_divergence_form():
    # bounded, periodic, one axis of each (the neighbour views' offsets mix padded and rolled
    # axes), and 3D bounded (offsets over three strides)
    mixed = MACGrid(
        (24, 12), (6.0, 3.0), ["periodic", "wall"], obstacle=_box((12, 24), 4, 8, 8, 12)
    )
    box3d = MACGrid((8, 6, 4), (2.0, 1.5, 1.0), ["wall", "slip", ("wall", "slip")])
    for grid in (
        GRIDS["wake"](),
        GRIDS["periodic_obstacle"](),
        GRIDS["closed_box"](),
        mixed,
        box3d,
    ):
        op = PressureOperator(grid)
        p = torch.randn(2, *grid.cell_shape, **F64)
        err = float((op.A(p) - op.A_reference(p)).abs().max())
        assert err < 1e-10, f"stencil vs F G^T M G F: {err:.2e}"


@pytest.mark.parametrize("preconditioner", ["fdm", "jacobi", "none"])
def test_fft_agrees_with_pcg_on_periodic_grid(preconditioner):
    grid = MACGrid((32, 16), (6.0, 3.0), ["periodic", "periodic"])
    b = torch.randn(3, *grid.cell_shape, **F64)
    pcg = PressureSolve(grid, preconditioner=preconditioner, rtol=1e-12)
    fft = PressureSolve(grid, method="fft")
    x_pcg, x_fft = pcg(b), fft(b)
    err = float((x_pcg - x_fft).abs().max() / x_fft.abs().max())
    assert err < 1e-9, f"PCG ({preconditioner}) vs FFT relative difference {err:.2e}"
    assert abs(float(x_fft.mean())) < 1e-12, "FFT pressure should have zero mean"
    # the fast-diagonalization preconditioner is exact without obstacles: one iteration
    if preconditioner == "fdm":
        assert pcg.last_info["iterations"] <= 2, f"fdm PCG took {pcg.last_info['iterations']}"


def test_fdm_preconditioner_needs_few_iterations_with_obstacle():
    grid = GRIDS["wake"]()
    fdm = PressureSolve(grid, rtol=1e-6)
    jacobi = PressureSolve(grid, preconditioner="jacobi", rtol=1e-6)
    b = torch.randn(2, *grid.cell_shape, **F64)
    fdm(b)
    jacobi(b)
    n_fdm, n_jac = fdm.last_info["iterations"], jacobi.last_info["iterations"]
    assert n_fdm < 20 and n_fdm * 5 < n_jac, f"PCG iterations: fdm {n_fdm}, jacobi {n_jac}"


def test_warm_start_reduces_iterations():
    grid = GRIDS["wake"]()
    solve = PressureSolve(grid, rtol=1e-8)
    b = torch.randn(1, *grid.cell_shape, **F64)
    x = solve(b)
    cold = solve.last_info["iterations"]
    solve(b, x)
    warm = solve.last_info["iterations"]
    assert warm < cold, f"warm start took {warm} iterations, cold {cold}"


@pytest.mark.parametrize("name", ["wake", "closed_box"])
def test_implicit_gradient_of_pressure_solve(name):
    grid = GRIDS[name]()
    solve = PressureSolve(grid, rtol=1e-13)
    gen = torch.Generator().manual_seed(3)
    fluid = grid.consts(torch.float64, torch.device("cpu"))["fluid"]
    b = (torch.randn(2, *grid.cell_shape, generator=gen, **F64) * fluid).requires_grad_(True)
    w = torch.randn(2, *grid.cell_shape, generator=gen, **F64)
    d = torch.randn(2, *grid.cell_shape, generator=gen, **F64)
    q = solve(b)
    assert type(q.grad_fn).__name__ == "_ImplicitSolveBackward", "backward must be implicit"
    (grad,) = torch.autograd.grad((q * w).sum(), b)
    eps = 1e-6
    with torch.no_grad():
        fd = float(((solve(b + eps * d) - solve(b - eps * d)) * w).sum()) / (2 * eps)
    ad = float((grad * d).sum())
    err = abs(ad - fd) / abs(fd)
    assert err < 1e-5, f"{name}: implicit gradient {ad} vs central difference {fd}: rel {err:.2e}"


def test_fft_solve_gradient():
    grid = periodic_grid(8)
    b = torch.randn(1, 8, 8, **F64)
    b = (b - b.mean()).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: fft_solve(grid, x), (b,))


def test_bad_solver_options_raise():
    grid = GRIDS["wake"]()
    with pytest.raises(ValueError, match="fully periodic"):
        PressureSolve(grid, method="fft")
    with pytest.raises(ValueError, match="preconditioner"):
        PressureSolve(grid, preconditioner="ilu")
    with pytest.raises(ValueError, match="method"):
        PressureSolve(grid, method="multigrid")
