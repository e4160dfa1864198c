"""The solvers' schemas, one per ``solver.kind``: ODE integrators, CT reconstructions, the
Navier–Stokes step."""

from __future__ import annotations

from dataclasses import dataclass

from hybridsim.schemas.checks import MISSING, ConfigError, _non_negative, _one_of, _positive


@dataclass
class ODESolverConfig:
    """An ODE integrator: euler, rk4 (fixed step, ``substeps`` per output interval), dopri5."""

    name: str = MISSING
    kind: str = "ode"
    substeps: int = 1
    rtol: float = 1e-6
    atol: float = 1e-8

    def __post_init__(self) -> None:
        _positive("solver", substeps=self.substeps, rtol=self.rtol, atol=self.atol)


@dataclass
class CTSolverConfig:
    """A classical CT reconstruction: ``fbp`` (filtered back-projection), or ``gd`` / ``agd``
    (gradient descent / Nesterov-accelerated descent on D(a) + λR(a), ``n_iter`` steps from
    ``init``); one descent step is one solver step of the hybrid."""

    name: str = MISSING
    kind: str = "ct"
    filter: str = "hann"  # ramp | shepp-logan | cosine | hann  (FBP, also the initial guess)
    cutoff: float = 1.0  # fraction of the Nyquist frequency
    init: str = "fbp"  # fbp | zero
    regularizer: str = "dirichlet"  # dirichlet | tv | none
    lam: float = 0.0
    huber_eps: float = 1.0e-2
    step_size: float | None = None  # None: 1 / (L_D + λ L_R) from the operator norm
    n_iter: int = 10
    nonnegative: bool = False

    def __post_init__(self) -> None:
        _one_of("solver.filter", self.filter, ("ramp", "shepp-logan", "cosine", "hann"))
        _one_of("solver.init", self.init, ("fbp", "zero"))
        _one_of("solver.regularizer", self.regularizer, ("dirichlet", "tv", "none"))
        _positive("solver", huber_eps=self.huber_eps)
        _non_negative("solver", lam=self.lam, n_iter=self.n_iter)
        if not 0 < self.cutoff <= 1:
            raise ConfigError(f"solver.cutoff must be in (0, 1], got {self.cutoff}")
        if self.step_size is not None:
            _positive("solver", step_size=self.step_size)


@dataclass
class FluidSolverConfig:
    """A Navier–Stokes step (``numerics.fluid``): advection scheme and pressure-solve tolerances
    (the backward pass solves the adjoint system to ``grad_rtol``)."""

    name: str = MISSING
    kind: str = "fluid"
    advection: str = "semi_lagrangian"  # semi_lagrangian | maccormack
    rtol: float = 1e-5
    grad_rtol: float = 1e-5

    def __post_init__(self) -> None:
        _one_of("solver.advection", self.advection, ("semi_lagrangian", "maccormack"))
        _positive("solver", rtol=self.rtol, grad_rtol=self.grad_rtol)
