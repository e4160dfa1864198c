"""Incompressible Navier–Stokes on a MAC grid: advection, viscosity, forcing, one step.

    du/dt + (u . grad) u = -grad p + nu laplace u + f - drag u,    div u = 0

discretised by operator splitting (Chorin, 1968; Stam, 1999), as in the PhiFlow solver used by
Um et al. (NeurIPS 2020): semi-Lagrangian advection (or MacCormack with clamping, Selle et al.,
2008), explicit viscosity with sub-steps, forcing, boundary conditions and a pressure projection
(``pressure.project``). Everything is batched ``(batch, ...)``, differentiable and follows the
input's dtype and device.

Stability: semi-Lagrangian advection is unconditionally stable but damps more as the CFL number
``max|u| dt / dx`` grows; it is accurate only for CFL of order one (a warning fires once above
``cfl_warn``). Explicit viscosity needs ``nu dt sum_d 1/dx_d^2 <= 1/2``; the step is split into
enough sub-steps to keep that number below ``max_diffusion_number``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from hybridsim.numerics.grid import MACGrid, Velocity, cell_centered, sample_indices
from hybridsim.numerics.pressure import PressureSolve, project

ADVECTION_SCHEMES = ("semi_lagrangian", "maccormack", "none")
State = tuple[torch.Tensor, ...]


def _pair_average(x: torch.Tensor, td: int, periodic: bool, to_faces: bool) -> torch.Tensor:
    """Average neighbours along tensor dim ``td``: faces -> centres or centres -> faces."""
    if periodic:
        shift = 1 if to_faces else -1  # faces: (c[i-1] + c[i]) / 2; centres: (f[i] + f[i+1]) / 2
        return 0.5 * (x + torch.roll(x, shift, dims=td))
    if to_faces:
        # boundary faces take the adjacent cell value (constant extrapolation)
        x = torch.cat([x.narrow(td, 0, 1), x, x.narrow(td, -1, 1)], dim=td)
    n = x.shape[td]
    return 0.5 * (x.narrow(td, 0, n - 1) + x.narrow(td, 1, n - 1))


def velocity_at_faces(grid: MACGrid, velocity: Velocity, axis: int) -> tuple[torch.Tensor, ...]:
    """All velocity components at the faces of component ``axis`` (2- or 4-point averages)."""
    out = []
    for b, comp in enumerate(velocity):
        if b != axis:
            comp = _pair_average(comp, grid.tensor_dim(b), grid.periodic[b], to_faces=False)
            comp = _pair_average(comp, grid.tensor_dim(axis), grid.periodic[axis], to_faces=True)
        out.append(comp)
    return tuple(out)


def _neighbour_extrema(
    field: torch.Tensor, idx: Sequence[torch.Tensor], periodic: Sequence[bool]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of the 2^d samples surrounding each fractional index (MacCormack limiter)."""
    dim = len(idx)
    f = field
    for a in range(dim):
        if periodic[a]:
            td = f.dim() - 1 - a
            f = torch.cat([f, f.narrow(td, 0, 1)], dim=td)
    pool = F.max_pool2d if dim == 2 else F.max_pool3d
    hi = pool(f.unsqueeze(1), 2, stride=1).squeeze(1)
    lo = -pool(-f.unsqueeze(1), 2, stride=1).squeeze(1)
    corner = []
    for a in range(dim):
        n = field.shape[field.dim() - 1 - a]
        i0 = torch.floor(idx[a].detach())
        i0 = torch.remainder(i0, n) if periodic[a] else i0.clamp(0, n - 2)
        corner.append(i0)
    no_wrap = [False] * dim
    return (
        sample_indices(lo, corner, no_wrap, mode="nearest"),
        sample_indices(hi, corner, no_wrap, mode="nearest"),
    )


def advect(
    grid: MACGrid, velocity: Velocity, dt: float, scheme: str = "semi_lagrangian"
) -> Velocity:
    """Self-advection ``u_t + (u . grad) u = 0`` of a staggered velocity over ``dt``.

    Semi-Lagrangian (Stam, 1999): trace each face back along the velocity at that face
    (explicit Euler) and interpolate linearly there. MacCormack (Selle et al., 2008): a forward
    and a backward semi-Lagrangian step correct the error, clamped to the extrema of the
    interpolation stencil so that no new extrema appear. Shapes are preserved.
    """
    if scheme not in ADVECTION_SCHEMES:
        raise ValueError(f"advection scheme {scheme!r} unknown; choose one of {ADVECTION_SCHEMES}")
    if scheme == "none":
        return velocity
    out = []
    for a, comp in enumerate(velocity):
        vel = velocity_at_faces(grid, velocity, a)
        base = grid.face_index_coords(a, comp.dtype, comp.device)
        step = [v * (dt / h) for v, h in zip(vel, grid.spacing, strict=True)]
        back = [i - s for i, s in zip(base, step, strict=True)]
        new = sample_indices(comp, back, grid.periodic)
        if scheme == "maccormack":
            fwd = [i + s for i, s in zip(base, step, strict=True)]
            returned = sample_indices(new, fwd, grid.periodic)
            corrected = new + 0.5 * (comp - returned)
            lo, hi = _neighbour_extrema(comp, back, grid.periodic)
            new = torch.minimum(torch.maximum(corrected, lo), hi)
        out.append(new)
    return tuple(out)


def _component_laplacian(grid: MACGrid, comp: torch.Tensor, axis: int) -> torch.Tensor:
    """``laplace u_axis`` with ghost values set by the boundaries (shape preserved).

    Tangential to a bounded axis the ghost cell mirrors the boundary condition: no-slip wall
    ``-u`` (zero at the wall), inflow ``2 u_in - u``, free-slip and outflow ``u`` (zero
    gradient). Along the component's own axis the boundary faces are prescribed or outflow;
    a zero-gradient ghost keeps the stencil defined there.
    """
    lap = None
    for b in range(grid.dim):
        td = grid.tensor_dim(b)
        n = comp.shape[td]
        if grid.periodic[b]:
            lo, hi = torch.roll(comp, 1, dims=td), torch.roll(comp, -1, dims=td)
        else:
            ghosts = []
            for side, kind in zip((0, 1), grid.boundaries[b], strict=True):
                edge = comp.narrow(td, 0 if side == 0 else n - 1, 1)
                if b != axis and kind == "wall":
                    edge = -edge
                elif b != axis and kind == "inflow":
                    edge = 2.0 * grid.inflow_velocity[axis] - edge
                ghosts.append(edge)
            ext = torch.cat([ghosts[0], comp, ghosts[1]], dim=td)
            lo, hi = ext.narrow(td, 0, n), ext.narrow(td, 2, n)
        term = (lo + hi - 2.0 * comp) / grid.spacing[b] ** 2
        lap = term if lap is None else lap + term
    return lap


def diffuse(
    grid: MACGrid,
    velocity: Velocity,
    viscosity: float | torch.Tensor,
    dt: float,
    max_diffusion_number: float = 0.4,
) -> Velocity:
    """Explicit viscosity ``u += nu dt laplace u`` in ``k`` equal sub-steps.

    Forward Euler is stable for the diffusion number ``nu dt sum_d dx_d^-2 <= 1/2``; ``k`` is
    the smallest count keeping ``nu (dt / k) sum_d dx_d^-2 <= max_diffusion_number``.
    ``viscosity``: a float or a tensor of shape ``(batch,)`` (one Reynolds number per sample).
    """
    nu_max = float(viscosity.detach().max()) if torch.is_tensor(viscosity) else float(viscosity)
    number = nu_max * dt * sum(h**-2 for h in grid.spacing)
    k = max(1, math.ceil(number / max_diffusion_number))
    nu = viscosity
    if torch.is_tensor(nu) and nu.dim() > 0:
        nu = nu.view(-1, *([1] * grid.dim))
    for _ in range(k):
        velocity = tuple(
            u + (nu * dt / k) * _component_laplacian(grid, u, a) for a, u in enumerate(velocity)
        )
    return velocity


class FluidSolver:
    """One step of incompressible Navier–Stokes, ``step(state, dt) -> state``.

    ``state = (*velocity, pressure)``: ``(u, v, p)`` in 2D, ``(u, v, w, p)`` in 3D, shapes as in
    ``MACGrid`` (``(batch, ny, nx + 1)``, ``(batch, ny + 1, nx)``, ``(batch, ny, nx)`` for a 2D
    inflow/outflow-by-wall domain). The pressure is only a warm start for the next solve
    (and a diagnostic); the step is stateless otherwise.

    Args:
        grid: geometry, boundaries, obstacle.
        viscosity: kinematic viscosity nu > 0, float or tensor ``(batch,)`` (may require grad).
        advection: ``semi_lagrangian`` (default), ``maccormack`` or ``none``.
        pressure_solve: a ``PressureSolve`` (default: PCG with fast-diagonalization
            preconditioner, rtol 1e-5).
        force: optional constant body force per component (face shapes, broadcast over batch).
        drag: linear drag coefficient (``- drag u``), e.g. 0.1 for Kolmogorov flow.
        cfl_warn: warn (once per solver) when ``max|u| dt / dx`` exceeds it; None disables the
            check (saves a device sync per step).
    Order within a step: advect, diffuse, force, boundaries, project (after Um et al., 2020).
    """

    def __init__(
        self,
        grid: MACGrid,
        viscosity: float | torch.Tensor,
        *,
        advection: str = "semi_lagrangian",
        pressure_solve: PressureSolve | None = None,
        force: Velocity | None = None,
        drag: float = 0.0,
        cfl_warn: float | None = 2.0,
        max_diffusion_number: float = 0.4,
    ) -> None:
        nu = viscosity.detach() if torch.is_tensor(viscosity) else torch.tensor(viscosity)
        if not bool(torch.isfinite(nu).all()) or not bool((nu > 0).all()):
            raise ValueError(f"viscosity must be positive and finite, got {viscosity}")
        if advection not in ADVECTION_SCHEMES:
            raise ValueError(
                f"advection scheme {advection!r} unknown; choose one of {ADVECTION_SCHEMES}"
            )
        if force is not None and len(force) != grid.dim:
            raise ValueError(f"force needs {grid.dim} components, got {len(force)}")
        if drag < 0:
            raise ValueError(f"drag must be >= 0, got {drag}")
        self.grid = grid
        self.viscosity = viscosity
        self.advection = advection
        self.pressure_solve = pressure_solve or PressureSolve(grid)
        self.force = force
        self.drag = drag
        self.cfl_warn = cfl_warn
        self.max_diffusion_number = max_diffusion_number
        self._cfl_warned = False  # warn once; the only mutable attribute, not part of the physics

    def check_state(self, state: Sequence[torch.Tensor]) -> None:
        g = self.grid
        if len(state) != g.dim + 1:
            raise ValueError(
                f"state must be (*velocity, pressure) with {g.dim + 1} tensors, got {len(state)}"
            )
        expected = [g.face_shape(a) for a in range(g.dim)] + [g.cell_shape]
        for i, (t, shape) in enumerate(zip(state, expected, strict=True)):
            if t.dim() != g.dim + 1 or tuple(t.shape[1:]) != shape:
                raise ValueError(
                    f"state[{i}] has shape {tuple(t.shape)}, expected (batch, *{shape})"
                )

    def cfl(self, velocity: Velocity, dt: float) -> float:
        """``max_d max|u_d| dt / dx_d`` (one device sync)."""
        return max(
            float(u.detach().abs().max()) * dt / h
            for u, h in zip(velocity, self.grid.spacing, strict=True)
        )

    def project(
        self, velocity: Velocity, pressure: torch.Tensor | None = None, dt: float = 1.0
    ) -> tuple[Velocity, torch.Tensor]:
        """Pressure projection only (see ``pressure.project``)."""
        return project(self.grid, velocity, self.pressure_solve, pressure, dt)

    def step(self, state: Sequence[torch.Tensor], dt: float) -> State:
        """Advance ``state = (*velocity, pressure)`` by ``dt``; returns a new state tuple."""
        self.check_state(state)
        g = self.grid
        velocity, pressure = tuple(state[: g.dim]), state[g.dim]
        if self.cfl_warn is not None and not self._cfl_warned:
            cfl = self.cfl(velocity, dt)
            if cfl > self.cfl_warn:
                self._cfl_warned = True
                warnings.warn(
                    f"CFL number {cfl:.3g} exceeds {self.cfl_warn} (dt={dt}, dx={g.spacing}); "
                    "semi-Lagrangian advection stays stable but loses accuracy",
                    RuntimeWarning,
                    stacklevel=2,
                )
        velocity = advect(g, velocity, dt, self.advection)
        velocity = diffuse(g, velocity, self.viscosity, dt, self.max_diffusion_number)
        if self.force is not None or self.drag:
            forced = []
            for a, u in enumerate(velocity):
                du = -self.drag * u
                if self.force is not None:
                    du = du + self.force[a].to(u)
                forced.append(u + dt * du)
            velocity = tuple(forced)
        velocity = g.apply_boundaries(velocity)
        velocity, pressure = self.project(velocity, pressure, dt)
        return (*velocity, pressure)

    __call__ = step


# ---- diagnostics --------------------------------------------------------------------------------
def divergence(grid: MACGrid, velocity: Velocity, fluid_only: bool = True) -> torch.Tensor:
    """Cell divergence ``(batch, *cells)``; zero inside obstacles when ``fluid_only``."""
    div = grid.divergence(velocity)
    if fluid_only:
        div = div * grid.consts(div.dtype, div.device)["fluid"]
    return div


def kinetic_energy(grid: MACGrid, velocity: Velocity) -> torch.Tensor:
    """``E = 1/2 sum_d sum_faces u_d^2 dV`` per sample, shape ``(batch,)``."""
    volume = math.prod(grid.spacing)
    return 0.5 * volume * sum(u.flatten(1).pow(2).sum(1) for u in velocity)


def _central_diff(x: torch.Tensor, td: int, h: float, periodic: bool) -> torch.Tensor:
    if periodic:
        return (torch.roll(x, -1, dims=td) - torch.roll(x, 1, dims=td)) / (2 * h)
    return torch.gradient(x, spacing=h, dim=td)[0]


def vorticity(grid: MACGrid, velocity: Velocity) -> torch.Tensor:
    """Cell-centred vorticity: 2D ``dv/dx - du/dy`` ``(batch, ny, nx)``; 3D ``|curl u|``.

    Central differences of the cell-centred velocity (one-sided at bounded edges).
    """
    uc = cell_centered(grid, velocity)

    def d(comp: int, axis: int) -> torch.Tensor:
        td = grid.tensor_dim(axis)
        return _central_diff(uc[:, comp], td, grid.spacing[axis], grid.periodic[axis])

    if grid.dim == 2:
        return d(1, 0) - d(0, 1)
    wx = d(2, 1) - d(1, 2)
    wy = d(0, 2) - d(2, 0)
    wz = d(1, 0) - d(0, 1)
    return torch.sqrt(wx**2 + wy**2 + wz**2)


def vorticity_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two vorticity fields per sample ``(batch,)`` (JAX-CFD's metric)."""
    a = a.flatten(1) - a.flatten(1).mean(1, keepdim=True)
    b = b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(torch.finfo(a.dtype).tiny)
