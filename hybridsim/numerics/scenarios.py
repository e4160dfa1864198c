"""Initial and boundary setups: pure functions of their parameters, returning a ``Scenario``.

- ``wake``: the 2D cylinder wake of Um et al. (NeurIPS 2020): domain 200 x 100, cylinder of
  radius 10 at (50, 50), inflow velocity 1 on the left, outflow on the right, free-slip side
  walls, dt = 1, viscosity ``nu = U D / Re``. Reference 256 x 128 cells, coarse 64 x 32.
- ``wake3d``: the same around a sphere, 200 x 100 x 100 on 64 x 32 x 32 cells.
- ``taylor_green``: periodic [0, 2 pi]^2, ``u = cos x sin y e^{-2 nu t}``,
  ``v = -sin x cos y e^{-2 nu t}``; energy decays as ``e^{-4 nu t}``.
- ``kolmogorov``: periodic [0, 2 pi]^2, forcing ``sin(4 y)`` along x, drag ``-0.1 u``,
  ``nu = 1e-2`` (APEBench; JAX-CFD, Kochkov et al., 2021).

``make_scenario(name, **params)`` dispatches by name. Every scenario returns its solver, its
initial state ``(*velocity, pressure)`` (projected, so divergence-free) and its time step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from hybridsim.numerics.fluid import FluidSolver, State
from hybridsim.numerics.grid import MACGrid, Velocity
from hybridsim.numerics.pressure import PressureSolve


class Scenario(NamedTuple):
    solver: FluidSolver
    state: State
    dt: float

    @property
    def grid(self) -> MACGrid:
        return self.solver.grid


def _like(dtype: torch.dtype, device: torch.device | str) -> dict:
    return {"dtype": dtype, "device": torch.device(device)}


def _viscosity(value: float | Sequence[float], batch: int, like: dict) -> float | torch.Tensor:
    if isinstance(value, int | float):
        return float(value)
    nu = torch.as_tensor(value, **like)
    if nu.shape != (batch,):
        raise ValueError(f"need one viscosity per sample: got {tuple(nu.shape)}, batch {batch}")
    return nu


def _reynolds_to_viscosity(
    reynolds: float | Sequence[float], velocity: float, length: float
) -> float | list[float]:
    """``nu = U D / Re``; raises for a non-positive Reynolds number."""
    values = [reynolds] if isinstance(reynolds, int | float) else list(reynolds)
    if not all(r > 0 and math.isfinite(r) for r in values):
        raise ValueError(f"Reynolds number must be positive and finite, got {reynolds}")
    nus = [velocity * length / r for r in values]
    return nus[0] if isinstance(reynolds, int | float) else nus


def bluff_body_grid(
    resolution: Sequence[int],
    size: Sequence[float],
    center: Sequence[float],
    radius: float,
    inflow_velocity: float = 1.0,
    side_walls: str = "slip",
) -> MACGrid:
    """Channel with inflow at x = 0, outflow at x = Lx, a cylinder (2D) / sphere (3D) obstacle.

    Raises ValueError when the obstacle does not fit into the domain or is not resolved by at
    least one cell.
    """
    dim = len(resolution)
    if len(size) != dim or len(center) != dim:
        raise ValueError(f"size {tuple(size)} and center {tuple(center)} need {dim} entries")
    if radius <= 0:
        raise ValueError(f"obstacle radius must be positive, got {radius}")
    for a in range(dim):
        if center[a] - radius <= 0 or center[a] + radius >= size[a]:
            raise ValueError(
                f"obstacle (center {tuple(center)}, radius {radius}) does not fit into the domain "
                f"{tuple(size)} along {'xyz'[a]}"
            )
    boundaries = [("inflow", "outflow")] + [side_walls] * (dim - 1)
    probe = MACGrid(resolution, size, boundaries)
    centers = probe.cell_centers()
    r2 = sum((c - c0) ** 2 for c, c0 in zip(centers, center, strict=True))
    obstacle = r2 < radius**2
    if not bool(obstacle.any()):
        raise ValueError(
            f"obstacle of radius {radius} is smaller than the grid resolves (spacing "
            f"{probe.spacing}); refine the grid"
        )
    inflow = (inflow_velocity,) + (0.0,) * (dim - 1)
    return MACGrid(resolution, size, boundaries, inflow, obstacle)


def _bluff_body(
    grid: MACGrid,
    reynolds: float | Sequence[float],
    inflow_velocity: float,
    diameter: float,
    perturbation: float,
    seed: int,
    batch: int | None,
    dt: float,
    like: dict,
    solver_kwargs: dict,
) -> Scenario:
    nu = _reynolds_to_viscosity(reynolds, inflow_velocity, diameter)
    if batch is None:
        batch = 1 if isinstance(nu, float) else len(nu)
    solver = FluidSolver(grid, _viscosity(nu, batch, like), **solver_kwargs)
    gen = torch.Generator().manual_seed(seed)
    velocity = []
    for a in range(grid.dim):
        shape = (batch, *grid.face_shape(a))
        comp = torch.zeros(shape, dtype=torch.float64)
        if a == 0:
            comp += inflow_velocity
        else:
            # a cross-stream bump behind the obstacle (random sign and strength per sample)
            # breaks the symmetry so that shedding starts within a few hundred steps
            x = grid.face_centers(a)
            dist2 = (x[0] - 1.75 * grid.size[0] / 4) ** 2 + sum(
                (x[b] - grid.size[b] / 2) ** 2 for b in range(1, grid.dim)
            )
            bump = torch.exp(-dist2 / (2 * diameter**2))
            amp = perturbation * inflow_velocity * (2 * torch.rand(batch, generator=gen) - 1)
            if a == 1:
                comp += amp.view(-1, *([1] * grid.dim)) * bump
        velocity.append(comp.to(**like))
    velocity_p, pressure = solver.project(tuple(velocity), None, dt)
    return Scenario(solver, (*velocity_p, pressure.detach()), dt)


def wake(
    resolution: Sequence[int] = (64, 32),
    reynolds: float | Sequence[float] = 100.0,
    *,
    batch: int | None = None,
    perturbation: float = 0.1,
    seed: int = 0,
    size: Sequence[float] = (200.0, 100.0),
    center: Sequence[float] = (50.0, 50.0),
    radius: float = 10.0,
    inflow_velocity: float = 1.0,
    side_walls: str = "slip",
    dt: float = 1.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    **solver_kwargs,
) -> Scenario:
    """2D cylinder wake (Um et al., 2020). ``reynolds``: one value or one per sample (batch).

    ``solver_kwargs`` go to ``FluidSolver`` (``advection``, ``pressure_solve``, ``cfl_warn``).
    """
    like = _like(dtype, device)
    grid = bluff_body_grid(resolution, size, center, radius, inflow_velocity, side_walls)
    return _bluff_body(
        grid,
        reynolds,
        inflow_velocity,
        2 * radius,
        perturbation,
        seed,
        batch,
        dt,
        like,
        solver_kwargs,
    )


def wake3d(
    resolution: Sequence[int] = (64, 32, 32),
    reynolds: float | Sequence[float] = 100.0,
    *,
    batch: int | None = None,
    perturbation: float = 0.1,
    seed: int = 0,
    size: Sequence[float] = (200.0, 100.0, 100.0),
    center: Sequence[float] = (50.0, 50.0, 50.0),
    radius: float = 10.0,
    inflow_velocity: float = 1.0,
    side_walls: str = "slip",
    dt: float = 1.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    **solver_kwargs,
) -> Scenario:
    """3D wake behind a sphere (Um et al., 2020, figure 1): 64 x 32 x 32 cells by default."""
    like = _like(dtype, device)
    grid = bluff_body_grid(resolution, size, center, radius, inflow_velocity, side_walls)
    return _bluff_body(
        grid,
        reynolds,
        inflow_velocity,
        2 * radius,
        perturbation,
        seed,
        batch,
        dt,
        like,
        solver_kwargs,
    )


def periodic_grid(n: int, dim: int = 2, length: float = 2 * math.pi) -> MACGrid:
    return MACGrid((n,) * dim, (length,) * dim, ["periodic"] * dim)


def taylor_green_velocity(
    grid: MACGrid, viscosity: float, t: float, batch: int = 1, **like
) -> Velocity:
    """Exact Taylor–Green vortex at time t on the faces of a periodic [0, 2 pi]^2 grid."""
    decay = math.exp(-2 * viscosity * t)
    x, y = grid.face_centers(0, **like)
    u = torch.cos(x) * torch.sin(y) * decay
    x, y = grid.face_centers(1, **like)
    v = -torch.sin(x) * torch.cos(y) * decay
    return (u.expand(batch, *u.shape).clone(), v.expand(batch, *v.shape).clone())


def taylor_green(
    n: int = 32,
    viscosity: float = 0.1,
    *,
    batch: int = 1,
    dt: float = 0.1,
    method: str = "fft",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    **solver_kwargs,
) -> Scenario:
    """Taylor–Green vortex on ``n x n`` cells of the periodic [0, 2 pi]^2 (exact initial state)."""
    like = _like(dtype, device)
    grid = periodic_grid(n)
    solver_kwargs.setdefault("pressure_solve", PressureSolve(grid, method=method))
    solver = FluidSolver(grid, viscosity, **solver_kwargs)
    velocity = taylor_green_velocity(grid, viscosity, 0.0, batch, **like)
    x, y = grid.cell_centers(**like)
    pressure = (-0.25 * (torch.cos(2 * x) + torch.cos(2 * y))).expand(batch, n, n).clone()
    return Scenario(solver, (*velocity, pressure), dt)


def kolmogorov(
    n: int = 64,
    viscosity: float = 1e-2,
    *,
    drag: float = 0.1,
    wavenumber: int = 4,
    amplitude: float = 1.0,
    batch: int = 1,
    seed: int = 0,
    dt: float | None = None,
    method: str = "fft",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    **solver_kwargs,
) -> Scenario:
    """Kolmogorov flow: forcing ``sin(k y)`` along x, linear drag, random initial vortices.

    The initial velocity comes from a random stream function with wavenumbers |k| <= 4 (seeded),
    scaled to rms 0.5 and projected. Default ``dt`` keeps the CFL number of the laminar profile
    ``1 / (nu k^2 + drag)`` at 0.5.
    """
    like = _like(dtype, device)
    grid = periodic_grid(n)
    x, y = grid.face_centers(0, dtype=torch.float64)
    force = (
        (amplitude * torch.sin(wavenumber * y)).expand(grid.face_shape(0)).clone().to(**like),
        torch.zeros(grid.face_shape(1), **like),
    )
    solver_kwargs.setdefault("pressure_solve", PressureSolve(grid, method=method))
    solver = FluidSolver(grid, viscosity, force=force, drag=drag, **solver_kwargs)
    if dt is None:
        laminar = amplitude / (viscosity * wavenumber**2 + drag)
        dt = 0.5 * grid.spacing[0] / laminar
    gen = torch.Generator().manual_seed(seed)
    k = torch.fft.fftfreq(n, 1.0 / n)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    low = ((kx**2 + ky**2) <= 16) & ((kx**2 + ky**2) > 0)
    coef = torch.complex(
        torch.randn(batch, n, n, generator=gen), torch.randn(batch, n, n, generator=gen)
    )
    psi = torch.fft.ifft2(coef * low).real.to(torch.float64)  # stream function at cell centres
    # u = d psi / dy, v = -d psi / dx on the faces (exactly divergence-free on the MAC grid
    # if psi sat at the nodes; at centres the projection below removes the small rest)
    h = grid.spacing[0]
    u = (psi - torch.roll(psi, 1, dims=-2)) / h
    v = -(psi - torch.roll(psi, 1, dims=-1)) / h
    rms = torch.sqrt(0.5 * (u.pow(2).mean((1, 2)) + v.pow(2).mean((1, 2)))).view(-1, 1, 1)
    velocity = (0.5 * u / rms).to(**like), (0.5 * v / rms).to(**like)
    velocity, pressure = solver.project(velocity, None, dt)
    return Scenario(solver, (*velocity, pressure.detach()), dt)


SCENARIOS = {
    "wake": wake,
    "wake3d": wake3d,
    "taylor_green": taylor_green,
    "kolmogorov": kolmogorov,
}


def make_scenario(name: str, **params) -> Scenario:
    """Build a scenario by name; unknown names raise ValueError listing the valid ones."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; choose one of {sorted(SCENARIOS)}")
    return SCENARIOS[name](**params)
