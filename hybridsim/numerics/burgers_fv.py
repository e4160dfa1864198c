"""The coarse solver of 1D viscous Burgers (:mod:`hybridsim.numerics.burgers`): a finite-volume
step on ``n`` periodic cell averages, MUSCL reconstruction with a slope limiter, a Rusanov or
Godunov flux, central diffusion and SSP-RK3 in time (:class:`CoarseBurgers`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hybridsim.numerics.burgers import DEFAULTS, as_viscosity, check_state

LIMITERS = ("first_order", "minmod", "van_leer", "mc", "unlimited")
FLUXES = ("rusanov", "godunov")

# Linear stability of SSP-RK3 for the semi-discrete FV scheme: the advective Courant number
# max|u| dt / h (<= 1 for MUSCL with these limiters, Gottlieb & Shu 1998) and the diffusion number
# nu dt / h^2 (the central Laplacian's eigenvalue -4 nu / h^2 must lie in RK3's real stability
# interval [-2.51, 0], i.e. nu dt / h^2 <= 0.628) share one budget: the step is accepted when
#   max|u| dt / h + 2 nu dt / h^2 <= CFL_MAX,
# a conservative sum of the two limits (a pure-diffusion step may use nu dt / h^2 <= 0.5).
CFL_MAX = 1.0


def _limited_slope(du_minus: torch.Tensor, du_plus: torch.Tensor, limiter: str) -> torch.Tensor:
    """Cell slope (times h) from the one-sided differences ``u_i - u_{i-1}``, ``u_{i+1} - u_i``."""
    if limiter == "unlimited":
        return 0.5 * (du_minus + du_plus)
    same = (du_minus * du_plus) > 0
    if limiter == "minmod":
        s = torch.sign(du_minus) * torch.minimum(du_minus.abs(), du_plus.abs())
    elif limiter == "van_leer":
        # harmonic mean 2 a b / (a + b) where a b > 0 (smooth, so differentiable there)
        denom = torch.where(same, du_minus + du_plus, torch.ones_like(du_minus))
        s = 2 * du_minus * du_plus / denom
    elif limiter == "mc":
        s = torch.sign(du_minus) * torch.minimum(
            0.5 * (du_minus + du_plus).abs(),
            2 * torch.minimum(du_minus.abs(), du_plus.abs()),
        )
    else:
        raise ValueError(f"unknown limiter {limiter!r}; choose one of {LIMITERS}")
    return torch.where(same, s, torch.zeros_like(s))


def _flux(u_left: torch.Tensor, u_right: torch.Tensor, kind: str) -> torch.Tensor:
    """Numerical flux for ``f(u) = u^2 / 2`` at an interface with states left/right of it."""
    if kind == "rusanov":
        speed = torch.maximum(u_left.abs(), u_right.abs())
        return 0.25 * (u_left**2 + u_right**2) - 0.5 * speed * (u_right - u_left)
    if kind == "godunov":
        # exact Riemann solution for a convex flux with minimum at 0
        return 0.5 * torch.maximum(u_left.clamp(min=0) ** 2, u_right.clamp(max=0) ** 2)
    raise ValueError(f"unknown flux {kind!r}; choose one of {FLUXES}")


@dataclass(frozen=True)
class CoarseBurgers:
    """Finite-volume Burgers step on ``n`` periodic cells of ``[0, L)``: MUSCL + SSP-RK3.

    Semi-discretisation on cell averages ``u_i`` (``h = L / n``):

        du_i/dt = -(F_{i+1/2} - F_{i-1/2}) / h + nu (u_{i+1} - 2 u_i + u_{i-1}) / h^2

    with ``F_{i+1/2} = F(u_i + s_i / 2, u_{i+1} - s_{i+1} / 2)``, ``s_i`` the limited slope
    (``limiter``: first_order = 0, minmod, van_leer, mc, unlimited = central) and ``F`` the
    Rusanov (``|u|``-max local Lax–Friedrichs) or Godunov flux. Time: SSP-RK3 (Shu & Osher 1988).
    Second order in space for smooth data (``first_order``: first; the default, see
    :class:`BurgersDefaults`), third in time; the total mass
    ``h sum u_i`` is conserved to round-off.

    Stability (checked in :meth:`step` unless ``check_cfl=False``):
    ``max|u| dt / h + 2 nu dt / h^2 <= cfl_max`` (see ``CFL_MAX``); a larger ``dt`` raises
    ``ValueError`` naming the largest stable one. Use :meth:`max_stable_dt` to choose ``dt``.
    """

    n: int
    length: float = 2 * math.pi
    limiter: str = DEFAULTS.limiter
    flux: str = DEFAULTS.flux
    cfl_max: float = CFL_MAX
    check_cfl: bool = True

    time_order = 3

    @property
    def order(self) -> int:
        """Spatial order for smooth data: 1 without reconstruction, else 2."""
        return 1 if self.limiter == "first_order" else 2

    def __post_init__(self) -> None:
        if self.n < 3:
            raise ValueError(f"the coarse grid needs n >= 3 cells, got {self.n}")
        if not (self.length > 0 and math.isfinite(self.length)):
            raise ValueError(f"length must be positive and finite, got {self.length}")
        if self.limiter not in LIMITERS:
            raise ValueError(f"unknown limiter {self.limiter!r}; choose one of {LIMITERS}")
        if self.flux not in FLUXES:
            raise ValueError(f"unknown flux {self.flux!r}; choose one of {FLUXES}")
        if not self.cfl_max > 0:
            raise ValueError(f"cfl_max must be positive, got {self.cfl_max}")

    @property
    def h(self) -> float:
        return self.length / self.n

    def max_stable_dt(self, u_max: float, nu: float) -> float:
        """Largest ``dt`` with ``u_max dt / h + 2 nu dt / h^2 <= cfl_max`` (``nu`` the largest)."""
        return self.cfl_max / (abs(u_max) / self.h + 2 * nu / self.h**2)

    def rhs(self, u: torch.Tensor, nu: torch.Tensor) -> torch.Tensor:
        """Semi-discrete ``du/dt`` for ``u`` ``(batch, n)`` and ``nu`` ``(batch, 1)``."""
        up = torch.roll(u, -1, dims=-1)  # u_{i+1}
        um = torch.roll(u, 1, dims=-1)  # u_{i-1}
        if self.limiter == "first_order":
            left, right = u, up
        else:
            s = _limited_slope(u - um, up - u, self.limiter)
            left, right = u + 0.5 * s, up - 0.5 * torch.roll(s, -1, dims=-1)
        f = _flux(left, right, self.flux)  # F_{i+1/2}
        return -(f - torch.roll(f, 1, dims=-1)) / self.h + nu * (up - 2 * u + um) / self.h**2

    def check(self, u: torch.Tensor, nu: torch.Tensor, dt: float) -> None:
        """Raise ``ValueError`` when ``dt`` violates the CFL bound for this state."""
        u_max = float(u.detach().abs().max())
        nu_max = float(nu.detach().max())
        number = u_max * dt / self.h + 2 * nu_max * dt / self.h**2
        if not number <= self.cfl_max:
            raise ValueError(
                f"unstable coarse Burgers step: dt={dt:g} gives max|u| dt/h + 2 nu dt/h^2 = "
                f"{number:.3g} > {self.cfl_max:g} (max|u|={u_max:.3g}, nu={nu_max:g}, n={self.n}); "
                f"use dt <= {self.max_stable_dt(u_max, nu_max):.3g}"
            )

    def step(self, u: torch.Tensor, nu: float | torch.Tensor, dt: float) -> torch.Tensor:
        """One SSP-RK3 step of size ``dt``: ``u`` ``(batch, n)`` cell averages -> ``(batch, n)``.

        ``nu``: float or ``(batch,)`` (differentiable when a tensor)."""
        check_state(u, self.n, "coarse state")
        if not (dt > 0 and math.isfinite(dt)):
            raise ValueError(f"dt must be positive and finite, got {dt}")
        nu_t = as_viscosity(nu, u)
        if self.check_cfl:
            self.check(u, nu_t, dt)
        u1 = u + dt * self.rhs(u, nu_t)
        u2 = 0.75 * u + 0.25 * (u1 + dt * self.rhs(u1, nu_t))
        return u / 3 + (2 / 3) * (u2 + dt * self.rhs(u2, nu_t))

    def trajectory(
        self, u0: torch.Tensor, nu: float | torch.Tensor, dt: float, n_steps: int
    ) -> torch.Tensor:
        """``n_steps`` steps from ``u0``; ``(batch, n_steps + 1, n)`` with frame 0 = ``u0``."""
        frames = [u0]
        for _ in range(n_steps):
            frames.append(self.step(frames[-1], nu, dt))
        return torch.stack(frames, dim=1)
