"""Explicit ODE solvers for batched systems ``du/dt = f(t, u)``, differentiable by backprop.

A solver is one step (``step(f, t, u, h) -> u_next``) with a declared order; integration over
output times (sub-stepping, adaptive stepping) is :func:`odeint`. Everything is plain torch on
whatever device/dtype ``u`` lives, so gradients flow through every stage of every step.

References: Hairer, Nørsett & Wanner, *Solving ODEs I* (RK4: Table 1.2; Dormand–Prince 5(4):
Table 5.2, with the standard step-size controller of §II.4).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

RHS = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class FixedStepSolver:
    """One explicit Runge–Kutta step of fixed size. ``order`` is the global order."""

    name: str
    order: int
    adaptive = False

    def step(self, f: RHS, t: torch.Tensor, u: torch.Tensor, h: float) -> torch.Tensor:
        raise NotImplementedError


class Euler(FixedStepSolver):
    """Forward Euler: ``u + h f(t, u)``. Order 1; for oscillators V grows at any h."""

    name, order = "euler", 1

    def step(self, f: RHS, t: torch.Tensor, u: torch.Tensor, h: float) -> torch.Tensor:
        return torch.add(u, f(t, u), alpha=h)


class RK4(FixedStepSolver):
    """Classical fourth-order Runge–Kutta (Kutta 1901). Order 4, four evaluations of f."""

    name, order = "rk4", 4

    def step(self, f: RHS, t: torch.Tensor, u: torch.Tensor, h: float) -> torch.Tensor:
        half = 0.5 * h
        t_half = t + half  # once: a tensor op per call
        k1 = f(t, u)
        k2 = f(t_half, torch.add(u, k1, alpha=half))
        k3 = f(t_half, torch.add(u, k2, alpha=half))
        k4 = f(t + h, torch.add(u, k3, alpha=h))
        # u + h/6 (k1 + 2 k2 + 2 k3 + k4) with fused multiply-adds (fewer kernel launches).
        return torch.add(
            u, torch.add(torch.add(k1, k4), torch.add(k2, k3), alpha=2.0), alpha=h / 6.0
        )


# Dormand–Prince 5(4) tableau (FSAL); b is the 5th-order solution, e = b - b* the error weights.
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DP_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DP_E = (
    71 / 57600,
    0.0,
    -71 / 16695,
    71 / 1920,
    -17253 / 339200,
    22 / 525,
    -1 / 40,
)


@dataclass
class Dopri5:
    """Adaptive Dormand–Prince 5(4) with error control ``|err_i| <= atol + rtol*|u_i|`` (RMS norm).

    ``step`` returns the 5th-order solution and the embedded error estimate; :func:`odeint`
    adapts ``h`` and lands exactly on every output time. Step-size decisions are taken on
    detached values, so the gradient is that of the discrete scheme actually run.
    """

    rtol: float = 1e-6
    atol: float = 1e-8
    max_steps: int = 100_000
    name = "dopri5"
    order = 5
    adaptive = True

    def step(
        self, f: RHS, t: torch.Tensor, u: torch.Tensor, h: torch.Tensor, k1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One trial step from (t, u) with ``k1 = f(t, u)``; returns (u_next, error, k_last)."""
        ks = [k1]
        for i in range(1, 7):
            du = sum(a * k for a, k in zip(_DP_A[i], ks, strict=False) if a != 0.0)
            ks.append(f(t + _DP_C[i] * h, u + h * du))
        u_next = u + h * sum(b * k for b, k in zip(_DP_B, ks, strict=True) if b != 0.0)
        err = h * sum(e * k for e, k in zip(_DP_E, ks, strict=True) if e != 0.0)
        return u_next, err, ks[-1]

    def error_ratio(self, err: torch.Tensor, u0: torch.Tensor, u1: torch.Tensor) -> float:
        scale = self.atol + self.rtol * torch.maximum(u0.detach().abs(), u1.detach().abs())
        return float(torch.sqrt(torch.mean((err.detach() / scale) ** 2)))


SOLVERS: dict[str, type] = {"euler": Euler, "rk4": RK4, "dopri5": Dopri5}


def odeint(
    f: RHS,
    u0: torch.Tensor,
    t: torch.Tensor,
    solver: FixedStepSolver | Dopri5,
    substeps: int = 1,
) -> torch.Tensor:
    """Integrate ``du/dt = f(t, u)`` from ``u0`` (at ``t[0]``) and return ``u`` at every ``t``.

    Args:
        f: right-hand side, ``f(t, u) -> du/dt`` with ``u`` of shape ``(batch, dim)``.
        u0: initial state ``(batch, dim)``.
        t: increasing output times ``(n_t,)``.
        solver: a fixed-step solver (``substeps`` equal steps per output interval) or Dopri5.
    Returns:
        ``(n_t, batch, dim)``, with ``out[0] = u0``.
    """
    if substeps < 1:
        raise ValueError(f"substeps must be >= 1, got {substeps}")
    out = [u0]
    u = u0
    if not getattr(solver, "adaptive", False):
        # Step sizes as Python floats (one device sync for all of them): scalar arguments let
        # every stage fuse its multiply-add into one kernel.
        times = t.tolist()
        for i in range(len(times) - 1):
            h = (times[i + 1] - times[i]) / substeps
            for j in range(substeps):
                u = solver.step(f, times[i] + j * h, u, h)
            out.append(u)
        return torch.stack(out)
    return _odeint_adaptive(f, u0, t, solver)


def _odeint_adaptive(f: RHS, u0: torch.Tensor, t: torch.Tensor, solver: Dopri5) -> torch.Tensor:
    out = [u0]
    u, tc = u0, t[0]
    k1 = f(tc, u)
    span = float(t[-1] - t[0])
    h = _initial_step(f, tc, u, k1, solver) if span > 0 else 0.0
    n_steps = 0
    for i in range(1, len(t)):
        t_end = float(t[i])
        while float(tc) < t_end - 1e-12 * max(1.0, abs(t_end)):
            h_try = min(h, t_end - float(tc))
            h_t = torch.as_tensor(h_try, dtype=u.dtype, device=u.device)
            u_new, err, k_last = solver.step(f, tc, u, h_t, k1)
            ratio = solver.error_ratio(err, u, u_new)
            n_steps += 1
            if n_steps > solver.max_steps:
                raise RuntimeError(f"dopri5 exceeded max_steps={solver.max_steps}")
            if not (ratio <= 1.0) and h_try > 1e-12 * max(1.0, span):
                h = h_try * max(0.2, 0.9 * (ratio if ratio == ratio else 1e9) ** -0.2)
                continue
            tc = tc + h_t
            u, k1 = u_new, k_last
            growth = 5.0 if ratio == 0.0 else min(5.0, max(0.2, 0.9 * ratio**-0.2))
            h = h_try * growth
        tc = t[i]
        out.append(u)
    return torch.stack(out)


def _initial_step(f: RHS, t: torch.Tensor, u: torch.Tensor, k1: torch.Tensor, s: Dopri5) -> float:
    """Hairer's starting step heuristic (Solving ODEs I, §II.4)."""
    with torch.no_grad():
        scale = s.atol + s.rtol * u.abs()
        d0 = float(torch.sqrt(torch.mean((u / scale) ** 2)))
        d1 = float(torch.sqrt(torch.mean((k1 / scale) ** 2)))
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        k2 = f(t + h0, u + h0 * k1)
        d2 = float(torch.sqrt(torch.mean(((k2 - k1) / scale) ** 2))) / h0
        m = max(d1, d2)
        h1 = max(1e-6, h0 * 1e-3) if m <= 1e-15 else (0.01 / m) ** (1 / 5)
        return min(100 * h0, h1)


def build_solver(name: str, rtol: float = 1e-6, atol: float = 1e-8) -> FixedStepSolver | Dopri5:
    """The solver called ``name`` (``euler``, ``rk4`` or ``dopri5``)."""
    if name not in SOLVERS:
        raise ValueError(f"unknown ODE solver {name!r}; choose one of {sorted(SOLVERS)}")
    if name == "dopri5":
        return Dopri5(rtol=rtol, atol=atol)
    return SOLVERS[name]()
