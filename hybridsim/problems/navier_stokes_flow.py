"""The stepper of ``problem=ns`` (:class:`CoarseFlow`): the coarse fluid solver's step, and how
the correction after it sees and changes the state (``hybridsim.problems.navier_stokes``)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from hybridsim.hybrid import Hybrid
from hybridsim.numerics.fluid import FluidSolver
from hybridsim.numerics.grid import MACGrid, stack_staggered, unstack_staggered
from hybridsim.numerics.pressure import PressureSolve

State = tuple[torch.Tensor, ...]


class Flow(NamedTuple):
    """What a step of a batch needs beyond its state: the coarse solver with one viscosity per
    sample, and the Reynolds numbers ``(batch,)`` (a network input)."""

    solver: FluidSolver
    reynolds: torch.Tensor


class CoarseFlow(nn.Module):
    """The stepper of ``problem=ns``: the coarse fluid solver's step on ``state = (*velocity,
    pressure)``, and how the correction after it sees the state (the staggered
    velocity in the network's units and a Reynolds channel) and acts on it (``correct``: a
    velocity increment on the open faces, optionally re-projected and with the mean momentum
    set by the discrete balance).
    """

    def __init__(
        self,
        template: FluidSolver,
        dt: float,
        nu_scale: float,
        advection: str,
        pressure_solve: PressureSolve,
        project_correction: bool,
        log_re_mean: float,
        log_re_std: float,
        velocity_scale: float,
        input_scale: str = "fixed",
        conserve_momentum: bool = False,
    ) -> None:
        super().__init__()
        self.grid: MACGrid = template.grid
        self.template, self.dt, self.nu_scale = template, dt, nu_scale
        self.advection, self.pressure_solve = advection, pressure_solve
        self.project_correction = project_correction
        self.register_buffer("log_re_mean", torch.tensor(float(log_re_mean)))
        self.register_buffer("log_re_std", torch.tensor(float(log_re_std)))
        self.velocity_scale, self.input_scale = velocity_scale, input_scale
        self.conserve_momentum = conserve_momentum

    def flow(self, reynolds: torch.Tensor) -> Flow:
        """The coarse step with one viscosity ``nu = nu_scale / Re`` per sample."""
        t = self.template
        solver = FluidSolver(
            self.grid,
            self.nu_scale / reynolds,
            advection=self.advection,
            pressure_solve=self.pressure_solve,
            force=t.force,
            drag=t.drag,
            cfl_warn=None,
            max_diffusion_number=t.max_diffusion_number,
        )
        return Flow(solver, reynolds)

    def step(self, state: State, flow: Flow) -> State:
        return flow.solver.step(state, self.dt)

    def re_channel(self, reynolds: torch.Tensor) -> torch.Tensor:
        """``(ln Re - mean) / std`` as ``(batch, 1, 1[, 1], 1)`` (broadcast to a channel)."""
        x = (torch.log(reynolds) - self.log_re_mean) / self.log_re_std
        return x.view(-1, *([1] * (self.grid.dim + 1)))

    def scale(self, velocity: State, open_: tuple[torch.Tensor, ...]) -> torch.Tensor | float:
        """The network's velocity unit: ``U`` (``fixed``), or per sample the rms velocity over
        the open faces as ``(batch, 1, 1[, 1])`` (``rms``; floored at ``1e-12 U`` so that a
        fluid at rest gives a zero correction, not a division by zero)."""
        if self.input_scale == "fixed":
            return self.velocity_scale
        total = sum((u**2 * m).flatten(1).sum(1) for u, m in zip(velocity, open_, strict=True))
        count = sum(float(m.sum()) for m in open_)
        rms = torch.sqrt(total / count).clamp_min(1e-12 * self.velocity_scale)
        return rms.view(-1, *([1] * (self.grid.dim + 1)))

    def correct(self, before: State, s: State, net: nn.Module, flow: Flow) -> State:
        """The corrected velocity (:meth:`corrected_velocity`), then the options: projection,
        momentum balance (``before`` is the state before the step)."""
        d = self.grid.dim
        velocity, pressure = self.corrected_velocity(tuple(s[:d]), net, flow.reynolds), s[d]
        if self.project_correction:
            velocity, pressure = flow.solver.project(velocity, pressure, self.dt)
        if self.conserve_momentum:
            velocity = self._momentum_balance(flow.solver, tuple(before[:d]), velocity)
        return (*velocity, pressure)

    def corrected_velocity(self, velocity: State, net: nn.Module, reynolds: torch.Tensor) -> State:
        """``velocity + C(velocity, Re)`` on the open faces. The network sees ``(batch, dim + 1,
        *(cells + 1))``: the staggered velocity over its scale and the Reynolds channel; its
        output counts in the scale (``fixed``, ``rms``) or in ``scale² / U`` (``rms2``)."""
        open_ = self.grid.consts(velocity[0].dtype, velocity[0].device)["open"]
        scale = self.scale(velocity, open_)
        packed = stack_staggered(self.grid, velocity) / scale
        re = self.re_channel(reynolds)
        x = torch.cat([packed, re.expand(-1, 1, *packed.shape[2:])], dim=1)
        out_scale = scale * scale / self.velocity_scale if self.input_scale == "rms2" else scale
        du = unstack_staggered(self.grid, net(x) * out_scale)
        return tuple(u + e * m for u, e, m in zip(velocity, du, open_, strict=True))

    def _momentum_balance(self, solver: FluidSolver, before: State, after: State) -> State:
        """``after`` with each component's mean set to ``<u> (1 - drag dt) + dt <f>`` of
        ``before`` (a uniform shift: divergence and boundary values are unchanged)."""
        out = []
        for a, (u0, u1) in enumerate(zip(before, after, strict=True)):
            dims = tuple(range(1, u1.dim()))
            target = u0.mean(dims, keepdim=True) * (1 - solver.drag * self.dt)
            if solver.force is not None:
                target = target + self.dt * solver.force[a].to(u1).mean()
            out.append(u1 - u1.mean(dims, keepdim=True) + target)
        return tuple(out)

    def run(self, hybrid: Hybrid, state: State, reynolds: torch.Tensor, n_steps: int) -> list:
        """The ``n_steps`` states after each corrected step from ``state``."""
        return hybrid.rollout(tuple(state), n_steps, self.flow(reynolds))
