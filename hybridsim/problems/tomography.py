"""X-ray CT by learned gradient descent (Adler & Öktem 2017, Inverse Problems 33, 124007).

Minimise ``L(a) = D(a; b) + λ R(a)`` over images ``a`` from a sinogram ``b``, with ``D`` the
least-squares (linear model, Gaussian noise) or Poisson negative log-likelihood (Beer–Lambert)
data term and ``R`` the Dirichlet energy or Huber TV. One solver step is one descent iteration;
the hybrid adds a network's output to it (coupling ``update``):

    z_k = a_k                                          (gd; agd: z_k = a_k + m_k (a_k − a_{k−1}))
    (δ, h_{k+1}) = NN(z_k, ∇D(z_k)/L_D, ∇R(z_k), h_k)   8 -> 32 -> 32 -> 1 + memory channels
    a_{k+1} = z_k − s (∇D(z_k) + λ ∇R(z_k)) + δ,       h_{k+1} = ReLU(h_{k+1})

``s = 1/(L_D + λ L_R)`` unless ``solver.step_size`` is set. A zero network output gives plain
(accelerated) gradient descent exactly; ``correction=none`` is that descent. Coupling
``update_lambda`` (the paper's "Hybrid2" comparator here) also learns ``λ = softplus(ρ)``, one
for all iterations or one per iteration. Images ``(batch, ny, nx)``, sinograms
``(batch, n_angles, n_det)``, memory ``(batch, memory, ny, nx)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import nn

from hybridsim.hybrid import Hybrid, Update
from hybridsim.nn import build_correction
from hybridsim.numerics.phantoms import (
    random_ellipses,
    random_ellipses_batch,
    render_ellipses,
    render_ellipses_batch,
    shepp_logan_ellipses,
    simulate_sinogram,
)
from hybridsim.numerics.radon import fbp
from hybridsim.numerics.reconstruction import (
    data_and_regularizer_gradients,
    default_step_size,
    descent_update,
    gaussian_noise,
    nesterov_extrapolation,
    psnr,
)
from hybridsim.numerics.rollout import GradientMode
from hybridsim.problems.base import Batch, Comparator, Problem, ProblemError, SplitData, register
from hybridsim.problems.tomography_eval import CTEvaluation
from hybridsim.problems.tomography_lpd import LearnedPrimalDual
from hybridsim.problems.tomography_ops import (  # noqa: F401  (re-exported)
    data_term,
    line_integrals,
    operator,
    ray_transform,
    regularizer,
)
from hybridsim.schemas import CorrectionConfig, CTConfig, CTSolverConfig


def _softplus_inverse(x: float) -> float:
    return x + math.log(-math.expm1(-x))


class Proposal(NamedTuple):
    """One uncorrected iteration: the point ``z`` it starts from (``a_k``, or FISTA's
    extrapolation), the gradients there, the descent step's result and the next momentum."""

    z: torch.Tensor
    grad_d: torch.Tensor
    grad_r: torch.Tensor
    a_next: torch.Tensor
    t_next: torch.Tensor


class Descent(nn.Module):
    """The stepper of ``problem=ct``: ``n_iter`` (accelerated) gradient-descent steps on
    ``D(a) + λR(a)`` from FBP or zero (:func:`descent_update`, :func:`nesterov_extrapolation`);
    ``solver.name == "fbp"``: FBP alone. ``learn_lambda``: λ = softplus(ρ) is learned (one for
    all iterations or one per iteration), else a buffer kept for the record (the step uses the
    Python float, so a float64 model applies exactly the configured λ).

    State ``(a, a_prev, t, memory, k)``: images ``(batch, ny, nx)``, FISTA's ``t (batch,)``, the
    network's memory ``(batch, memory, ny, nx)`` and the iteration counter (a 0-d tensor).
    """

    def __init__(
        self,
        problem: CTConfig,
        solver: CTSolverConfig,
        lam_init: float,
        learn_lambda: bool,
        lambda_per_iteration: bool,
        memory: int,
    ) -> None:
        super().__init__()
        self.cfg, self.solver, self.memory = problem, solver, memory
        self.op = operator(problem)
        self.data = data_term(problem, self.op)
        self.reg = regularizer(solver.regularizer, solver.huber_eps)
        self.step_size = solver.step_size or default_step_size(self.data, self.reg, lam_init)
        self.learn_lambda = learn_lambda
        if learn_lambda:
            n = max(solver.n_iter, 1) if lambda_per_iteration else 1
            self.rho = nn.Parameter(torch.full((n,), _softplus_inverse(lam_init)))
        else:
            self.register_buffer("lam", torch.tensor(float(lam_init)))
        self.lam_value = float(lam_init)

    def lam_at(self, state: tuple) -> torch.Tensor | float:
        """λ of this iteration (learned: ``softplus(ρ_k)``, kept positive)."""
        if not self.learn_lambda:
            return self.lam_value
        k = self.iteration(state) if self.rho.numel() > 1 else 0  # a host sync only then
        return nnf.softplus(self.rho[min(k, len(self.rho) - 1)])

    def iteration(self, state: tuple) -> int:
        return int(state[4])

    def initial(self, sinogram: torch.Tensor) -> torch.Tensor:
        """FBP (filter and cut-off of the solver) or zeros, ``(batch, ny, nx)``."""
        if self.solver.init == "zero" and self.solver.name != "fbp":
            return sinogram.new_zeros(sinogram.shape[0], self.op.ny, self.op.nx)
        p = line_integrals(self.cfg, sinogram)
        return fbp(self.op, p, self.solver.filter, self.solver.cutoff)

    def propose(self, state: tuple, sinogram: torch.Tensor) -> Proposal:
        a, a_prev, t, _, _ = state
        if self.solver.name == "agd":
            z, t_next = nesterov_extrapolation(a, a_prev, t)
        else:
            z, t_next = a, t
        grad_d, grad_r = data_and_regularizer_gradients(z, sinogram, self.data, self.reg)
        a_next = descent_update(z, grad_d, grad_r, self.step_size, self.lam_at(state))
        return Proposal(z, grad_d, grad_r, a_next, t_next)

    def encode(self, p: Proposal, state: tuple, sinogram: torch.Tensor) -> torch.Tensor:
        """The network's input ``(z, ∇D(z)/L_D, ∇R(z), memory)``, ``(batch, 3 + memory, ny, nx)``
        (Adler & Öktem 2017, Alg. 2)."""
        return torch.cat(
            [p.z[:, None], p.grad_d[:, None] / self.data.lipschitz, p.grad_r[:, None], state[3]], 1
        )

    def decode(self, out: torch.Tensor, p: Proposal, sinogram: torch.Tensor) -> tuple:
        """The image increment and the next memory (``ReLU`` of the other output channels)."""
        return out[:, 0], torch.relu(out[:, 1:])

    def accept(self, p: Proposal, increment: tuple | None, state: tuple) -> tuple:
        a, _, _, memory, k_t = state
        a_next = p.a_next
        if increment is not None:
            a_next, memory = a_next + increment[0], increment[1]
        if self.solver.nonnegative:
            a_next = a_next.clamp_min(0)
        return a_next, a, p.t_next, memory, k_t + 1

    def run(self, hybrid: Hybrid, sinogram: torch.Tensor, n_iter: int | None = None):
        """``(batch, n_angles, n_det) -> (batch, ny, nx)``; ``n_iter`` caps the iterations."""
        a0 = self.initial(sinogram)
        n = self.solver.n_iter if n_iter is None or n_iter < 0 else min(n_iter, self.solver.n_iter)
        if self.solver.name == "fbp" or n == 0:
            return a0
        batch = a0.shape[0]
        state = (
            a0,
            a0,
            a0.new_ones(batch),
            a0.new_zeros(batch, self.memory, *a0.shape[-2:]),
            torch.zeros((), dtype=torch.long, device=a0.device),
        )
        return hybrid.rollout(state, n, sinogram, save_every=n)[-1][0]


@register
class Tomography(CTEvaluation, Problem):
    name = "ct"
    solvers = ("fbp", "gd", "agd")
    corrections = ("none", "convnet")
    couplings = ("update", "update_lambda", "primal_dual")
    needs_network = frozenset({"primal_dual"})
    needs_network_reason = "is made of networks (the learned primal and dual updates)"
    schema = CTConfig
    solver_schemas = {"ct": CTSolverConfig}
    comparators = (
        Comparator("learned_lambda", "convnet", "update_lambda"),
        Comparator("primal_dual", "convnet", "primal_dual"),
        Comparator("solver", "none", "update", trained=False),
    )
    tiny = (
        "problem.size=24",
        "problem.n_angles=12",
        "problem.n_train=8",
        "problem.n_val=2",
        "problem.n_test=2",
        "problem.n_ellipses=20",
        "problem.tv_iters=10",
        "solver.n_iter=3",
        "correction.width=[8,8]",
    )
    cfg: CTConfig

    # Settings that shape only the model or the evaluation, not the data (not hashed).
    model_keys = frozenset(
        {
            "memory",
            "share_weights",
            "primal_dual_activation",
            "lambda_init",
            "lambda_per_iteration",
            "tv_lam",
            "tv_lam_grid",
            "tv_eps",
            "tv_iters",
        }
    )

    # Settings of the stored training split, which fresh phantoms (train_data=fresh) never read.
    stored_train_keys = frozenset({"n_train", "seed_train", "upsample_train"})

    def data_config(self) -> dict[str, Any]:
        """The hashed settings; with fresh training phantoms the file holds only val/test, so
        the training split's size and seed do not name it (the seeds of a sweep share it)."""
        config = super().data_config()
        if self.cfg.train_data == "fresh":
            config = {k: v for k, v in config.items() if k not in self.stored_train_keys}
        return config

    def _measure(self, fine: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
        """Noisy data of images given on a ``k``-times finer grid, ``(n, n_angles, n_det)``."""
        cfg, op = self.cfg, operator(self.cfg)
        clean = op(fine) if k == 1 else simulate_sinogram(fine, op, k)
        if cfg.forward_model == "beer_lambert":
            expected = cfg.i0 * torch.exp(-cfg.mu * clean)
            if cfg.noise == 0:
                return expected
            return torch.poisson(expected, generator=gen)
        return gaussian_noise(clean, cfg.noise, gen)

    def generate(self, split: str, seed: int) -> SplitData:
        """Random-ellipse phantoms ``image (n, size, size)`` (pixel means of the phantom rendered
        on the simulation grid) and their noisy ``sinogram``; ``test`` also holds the modified
        Shepp–Logan phantom (``shepp_logan``, ``shepp_logan_sinogram``). Float64 simulation,
        stored as float32."""
        cfg = self.cfg
        op = operator(cfg)
        coords = {"angles": op.angles, "detector": op.det_pos}
        if split == "train" and cfg.train_data == "fresh":
            # phantoms are drawn for every batch (``batch``); nothing to store
            return SplitData(
                arrays={},
                coords=coords,
                attrs={"train_data": "fresh"},
            )
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(seed)
        n = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}[split]
        k = cfg.upsample_train if split == "train" else cfg.upsample_eval
        fine = torch.stack(
            [
                render_ellipses(
                    random_ellipses(cfg.n_ellipses, rng), cfg.size * k, dtype=torch.float64
                )
                for _ in range(n)
            ]
        )
        arrays: dict[str, np.ndarray] = {}
        if split == "test":
            sl = render_ellipses(shepp_logan_ellipses(), cfg.size * k, dtype=torch.float64)[None]
            arrays["shepp_logan"] = _pool(sl, k).float().numpy()
            arrays["shepp_logan_sinogram"] = self._measure(sl, k, gen).float().numpy()
        # image/sinogram last: the file's n_samples attribute counts the last array
        arrays["image"] = _pool(fine, k).float().numpy()
        arrays["sinogram"] = self._measure(fine, k, gen).float().numpy()
        return SplitData(
            arrays=arrays,
            coords=coords,
            attrs={
                "upsample": k,
                "operator_scale": op.scale,
                "pixel_size": 1.0,
                "forward_model": cfg.forward_model,
            },
        )

    # ----------------------------------------------------------------- model
    def check_choices(self, solver: str, correction: str, coupling: str | None) -> str:
        coupling = super().check_choices(solver, correction, coupling)
        if solver == "fbp" and (correction != "none" or coupling != "update"):
            raise ProblemError(
                "solver=fbp has no iterations to correct or λ to learn; choose solver=gd or agd "
                "(or correction=none coupling=update)"
            )
        return coupling

    def build_model(
        self,
        solver: CTSolverConfig,
        correction: CorrectionConfig,
        coupling: str,
        train: SplitData,
        gradient: GradientMode | None = None,
    ) -> nn.Module:
        cfg = self.cfg
        if coupling == "primal_dual":
            share = False if cfg.share_weights is None else cfg.share_weights
            return LearnedPrimalDual(cfg, solver, correction, share, gradient)
        per_iteration = not (cfg.share_weights is None or cfg.share_weights)
        net = build_correction(
            correction,
            3 + cfg.memory,
            1 + cfg.memory,
            dim=2,
            copies=max(solver.n_iter, 1) if per_iteration else 1,
        )
        lam = solver.lam if coupling == "update" or solver.lam > 0 else cfg.lambda_init
        memory = cfg.memory if net is not None else 0
        learn = coupling == "update_lambda"
        stepper = Descent(cfg, solver, lam, learn, cfg.lambda_per_iteration, memory)
        return Hybrid(stepper, net, Update(), gradient)

    # -------------------------------------------------------------- training
    def batch(
        self, data: Mapping[str, torch.Tensor], batch_size: int, unroll: int, gen: torch.Generator
    ) -> Batch:
        """``batch_size`` training pairs; ``unroll`` caps the iterations (-1: all).

        ``problem.train_data=fresh`` (the paper's way): new random-ellipse phantoms drawn from
        ``gen`` for every batch, rendered on the ``upsample_train``-times finer grid and measured
        with fresh noise from ``gen``; the trainer checkpoints ``gen``, so a resumed run sees the
        same stream. ``stored``: random samples of the stored training split."""
        if self.cfg.train_data == "fresh":
            image, sinogram = self.draw(batch_size, gen)
            like = {"device": data["angles"].device, "dtype": data["angles"].dtype}
            return Batch(
                inputs={"sinogram": sinogram.to(**like), "n_iter": torch.tensor(unroll)},
                targets={"image": image.to(**like)},
            )
        n = data["image"].shape[0]
        idx = torch.randint(n, (batch_size,), generator=gen).to(data["image"].device)
        return Batch(
            inputs={"sinogram": data["sinogram"][idx], "n_iter": torch.tensor(unroll)},
            targets={"image": data["image"][idx]},
        )

    def draw(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` fresh training pairs ``(image (n, size, size), sinogram)`` in float64 on the
        CPU, a function of ``gen``'s state (vectorised sampler, ``random_ellipses_batch``)."""
        cfg, k = self.cfg, self.cfg.upsample_train
        ellipses = random_ellipses_batch(n, cfg.n_ellipses, gen)
        fine = render_ellipses_batch(ellipses, cfg.size * k, dtype=torch.float64)
        return _pool(fine, k), self._measure(fine, k, gen)

    def full_batch(self, data: Mapping[str, torch.Tensor]) -> Batch:
        return Batch(
            inputs={"sinogram": data["sinogram"], "n_iter": torch.tensor(-1)},
            targets={"image": data["image"]},
        )

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """``mean_batch Σ_pixels (a − a_true)²`` (the paper's sum of squared errors)."""
        pred = model(batch.inputs["sinogram"], int(batch.inputs["n_iter"]))
        return (pred - batch.targets["image"]).square().sum(dim=(-2, -1)).mean()

    def validate(self, model: nn.Module, data: Mapping[str, torch.Tensor]) -> dict[str, float]:
        with torch.no_grad():
            pred = model(data["sinogram"])
            true = data["image"]
            return {
                "loss": float((pred - true).square().sum(dim=(-2, -1)).mean()),
                "psnr": float(psnr(pred, true).mean()),
            }

    # ------------------------------------------------------------ evaluation
    # (the hooks: tomography_eval.CTEvaluation)


def _pool(fine: torch.Tensor, k: int) -> torch.Tensor:
    """Pixel means of a ``k``-times finer image, ``(n, ny*k, nx*k) -> (n, ny, nx)``."""
    return fine if k == 1 else nnf.avg_pool2d(fine[:, None], k)[:, 0]
