"""Learned primal-dual reconstruction (Adler & Öktem 2018, IEEE TMI 37(6), 1322–1332, Alg. 3):
coupling ``primal_dual`` of problem=ct.

Unrolled primal and dual updates, each a small CNN with its own weights per iteration, with the
ray transform ``F`` and its adjoint in the loop:

    h_0 = 0 (m channels, sinogram-shaped),   f_0 = [a_0, …, a_0] (m channels, image-shaped)
    for k = 0 … n_iter − 1:
        h_{k+1} = h_k + Γ_k([h_k, F f_k^{(2)}, g])        (m + 2) -> 32 -> 32 -> m, PReLU
        f_{k+1} = f_k + Λ_k([f_k, F* h_{k+1}^{(1)}])      (m + 1) -> 32 -> 32 -> m, PReLU
    return f_n^{(1)}

``g`` is the data as line integrals (the sinogram itself for the linear model; ``−log(b/I₀)/μ``
for Beer–Lambert counts), ``a_0`` the solver's initial guess (``solver.init``: FBP as the learned
gradient scheme here, or zero as the paper), ``m = problem.memory`` (paper: 5). The superscripts
are channels as in the authors' code (``primal[..., 1:2]`` into ``F``, ``dual[..., 0:1]`` into
``F*``; with ``m = 1`` both are channel 0). Each update is a residual: a network whose last
layer outputs zero leaves ``a_0`` unchanged, exactly (the tests' zero-correction check).
Images ``(batch, ny, nx)``, sinograms ``(batch, n_angles, n_det)``.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from hybridsim.nn.convnet import ConvNet
from hybridsim.numerics.radon import fbp
from hybridsim.numerics.rollout import GradientMode, rollout
from hybridsim.problems.tomography_ops import line_integrals, operator
from hybridsim.schemas import CorrectionConfig, CTConfig, CTSolverConfig


class PrimalDualIteration(nn.Module):
    """The dual network ``Γ`` and the primal network ``Λ`` of one iteration."""

    def __init__(self, memory: int, correction: CorrectionConfig, activation: str) -> None:
        super().__init__()
        width, k, act = correction.width, correction.kernel_size, activation
        self.dual = ConvNet(memory + 2, memory, width, k, act, correction.init_scale)
        self.primal = ConvNet(memory + 1, memory, width, k, act, correction.init_scale)


class LearnedPrimalDual(nn.Module):
    """``forward(sinogram (batch, n_angles, n_det), n_iter=None) -> image (batch, ny, nx)``;
    ``n_iter`` caps the iterations (the recipe's unroll curriculum). ``gradient`` (the
    recipe's) selects full backpropagation, checkpointing or truncation across iterations."""

    def __init__(
        self,
        problem: CTConfig,
        solver: CTSolverConfig,
        correction: CorrectionConfig,
        share_weights: bool,
        gradient: GradientMode | None = None,
    ) -> None:
        super().__init__()
        self.cfg, self.solver = problem, solver
        self.op = operator(problem)
        self.memory = max(problem.memory, 1)
        n = 1 if share_weights else max(solver.n_iter, 1)
        self.iterations = nn.ModuleList(
            PrimalDualIteration(self.memory, correction, problem.primal_dual_activation)
            for _ in range(n)
        )
        self.gradient = gradient or GradientMode()

    def initial(self, sinogram: torch.Tensor) -> torch.Tensor:
        """``a_0``: FBP (the solver's filter and cut-off) or zeros, ``(batch, ny, nx)``."""
        if self.solver.init == "zero":
            return sinogram.new_zeros(sinogram.shape[0], self.op.ny, self.op.nx)
        return fbp(
            self.op, line_integrals(self.cfg, sinogram), self.solver.filter, self.solver.cutoff
        )

    def step(self, state: tuple[torch.Tensor, ...], g: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One primal-dual iteration on ``(f, h, k)``; ``k`` the counter (a 0-d tensor)."""
        f, h, k_t = state
        nets = self.iterations[min(int(k_t), len(self.iterations) - 1)]
        into_op = f[:, min(1, self.memory - 1)]
        h = h + nets.dual(torch.cat([h, self.op(into_op)[:, None], g[:, None]], 1))
        back = self.op.A_adjoint(h[:, 0])[:, None]
        f = f + nets.primal(torch.cat([f, back], 1))
        return f, h, k_t + 1

    def forward(self, sinogram: torch.Tensor, n_iter: int | None = None) -> torch.Tensor:
        a0 = self.initial(sinogram)
        n = self.solver.n_iter if n_iter is None or n_iter < 0 else min(n_iter, self.solver.n_iter)
        if n == 0:
            return a0
        g = line_integrals(self.cfg, sinogram)
        f = a0[:, None].expand(-1, self.memory, -1, -1).contiguous()
        h = g.new_zeros(g.shape[0], self.memory, *g.shape[-2:])
        k0 = torch.zeros((), dtype=torch.long, device=a0.device)
        final = rollout(
            functools.partial(self.step, g=g), (f, h, k0), n, save_every=n, gradient=self.gradient
        )[-1]
        return final[0][:, 0]
