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

import functools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import nn

from hybridsim.config import CorrectionConfig, CTConfig, CTSolverConfig
from hybridsim.nn.convnet import ConvNet
from hybridsim.numerics.phantoms import (
    random_ellipses,
    random_ellipses_batch,
    render_ellipses,
    render_ellipses_batch,
    shepp_logan_ellipses,
    simulate_sinogram,
)
from hybridsim.numerics.radon import RayTransform, fbp
from hybridsim.numerics.reconstruction import (
    DataTerm,
    LeastSquares,
    PoissonLogLikelihood,
    gaussian_noise,
    psnr,
)
from hybridsim.numerics.regularizers import DirichletEnergy, Regularizer, TotalVariation
from hybridsim.numerics.rollout import GradientMode, rollout
from hybridsim.problems.base import Batch, Problem, ProblemError, SplitData, register


@functools.lru_cache(maxsize=4)
def ray_transform(
    size: int, n_angles: int, n_det: int | None, det_spacing: float | None
) -> RayTransform:
    """The normalised (``||F|| = 1``) parallel-beam operator of a config (cached: built once)."""
    if n_det is not None and det_spacing is None:
        # the default spacing of the default detector: a user-chosen n_det keeps pixel-sized bins
        det_spacing = math.hypot(size, size) / (2 * math.ceil(math.hypot(size, size) / 2) + 1)
    return RayTransform(size, n_angles, n_det=n_det, det_spacing=det_spacing, normalize=True)


def operator(cfg: CTConfig) -> RayTransform:
    return ray_transform(cfg.size, cfg.n_angles, cfg.n_det, cfg.det_spacing)


def data_term(cfg: CTConfig, op: RayTransform) -> DataTerm:
    if cfg.forward_model == "beer_lambert":
        return PoissonLogLikelihood(op, cfg.mu, cfg.i0, op_norm=1.0)
    return LeastSquares(op, op_norm=1.0)


def regularizer(name: str, huber_eps: float) -> Regularizer | None:
    return {"dirichlet": DirichletEnergy(), "tv": TotalVariation(huber_eps), "none": None}[name]


def line_integrals(cfg: CTConfig, sinogram: torch.Tensor) -> torch.Tensor:
    """Measured data as (normalised) line integrals: the sinogram itself for the linear model,
    ``−log(max(b, 1)/I₀)/μ`` for Beer–Lambert counts (zero counts clipped to one photon)."""
    if cfg.forward_model == "beer_lambert":
        return -torch.log(sinogram.clamp_min(1.0) / cfg.i0) / cfg.mu
    return sinogram


def _softplus_inverse(x: float) -> float:
    return x + math.log(-math.expm1(-x))


class LearnedGradientDescent(nn.Module):
    """``n_iter`` (accelerated) gradient-descent steps from FBP or zero, each corrected by a
    network (see the module docstring); ``solver.name == "fbp"``: FBP alone.

    ``forward(sinogram (batch, n_angles, n_det), n_iter=None) -> image (batch, ny, nx)``.
    ``gradient`` (a GradientMode, set by the trainer from the recipe) selects full
    backpropagation, checkpointing or truncation across the iterations.
    """

    def __init__(
        self,
        problem: CTConfig,
        solver: CTSolverConfig,
        correction: nn.Module | nn.ModuleList | None,
        coupling: str,
        lam_init: float,
        lambda_per_iteration: bool,
    ) -> None:
        super().__init__()
        self.cfg, self.solver = problem, solver
        self.op = operator(problem)
        self.data = data_term(problem, self.op)
        self.reg = regularizer(solver.regularizer, solver.huber_eps)
        self.correction, self.coupling = correction, coupling
        self.memory = problem.memory if correction is not None else 0
        self.gradient = GradientMode()
        l_reg = 0.0 if self.reg is None else self.reg.lipschitz
        self.step_size = solver.step_size or 1.0 / (self.data.lipschitz + lam_init * l_reg)
        if coupling == "update_lambda":
            n = max(solver.n_iter, 1) if lambda_per_iteration else 1
            rho = _softplus_inverse(lam_init)
            self.rho = nn.Parameter(torch.full((n,), rho))
        else:
            # kept in the checkpoint for the record; the step uses the Python float, so a float64
            # model applies exactly the configured λ (a float32 buffer would round it)
            self.register_buffer("lam", torch.tensor(float(lam_init)))
        self.lam_value = float(lam_init)
        self.register_buffer("device_like", torch.zeros(()), persistent=False)
        self.per_iteration = isinstance(correction, nn.ModuleList) or (
            coupling == "update_lambda" and self.rho.numel() > 1
        )

    def lam_at(self, k: int) -> torch.Tensor | float:
        """λ of iteration ``k`` (learned: ``softplus(ρ_k)``, kept positive)."""
        if self.coupling == "update_lambda":
            return nnf.softplus(self.rho[min(k, len(self.rho) - 1)])
        return self.lam_value

    def initial(self, sinogram: torch.Tensor) -> torch.Tensor:
        """FBP (filter and cut-off of the solver) or zeros, ``(batch, ny, nx)``."""
        if self.solver.init == "zero" and self.solver.name != "fbp":
            return sinogram.new_zeros(sinogram.shape[0], self.op.ny, self.op.nx)
        p = line_integrals(self.cfg, sinogram)
        return fbp(self.op, p, self.solver.filter, self.solver.cutoff)

    def _network(self, k: int) -> nn.Module | None:
        if isinstance(self.correction, nn.ModuleList):
            return self.correction[min(k, len(self.correction) - 1)]
        return self.correction

    def step(self, state: tuple[torch.Tensor, ...], sinogram: torch.Tensor) -> tuple:
        """One iteration on ``(a, a_prev, t, memory, k)``; ``t`` is FISTA's ``(batch,)``
        sequence (unused by gd), ``k`` the iteration counter (a 0-d tensor)."""
        a, a_prev, t, memory, k_t = state
        k = int(k_t) if self.per_iteration else 0  # a host sync only when it matters
        if self.solver.name == "agd":
            t_next = 0.5 * (1 + torch.sqrt(1 + 4 * t * t))
            z = a + ((t - 1) / t_next)[..., None, None] * (a - a_prev)
        else:
            t_next, z = t, a
        grad_d = self.data.gradient(z, sinogram)
        grad_r = torch.zeros_like(z) if self.reg is None else self.reg.gradient(z)
        a_next = z - self.step_size * (grad_d + self.lam_at(k) * grad_r)
        net = self._network(k)
        if net is not None:
            inputs = torch.cat(
                [z[:, None], grad_d[:, None] / self.data.lipschitz, grad_r[:, None], memory], 1
            )
            out = net(inputs)
            a_next = a_next + out[:, 0]
            memory = torch.relu(out[:, 1:])
        if self.solver.nonnegative:
            a_next = a_next.clamp_min(0)
        return a_next, a, t_next, memory, k_t + 1

    def forward(self, sinogram: torch.Tensor, n_iter: int | None = None) -> torch.Tensor:
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
        return rollout(
            functools.partial(self.step, sinogram=sinogram),
            state,
            n,
            save_every=n,
            gradient=self.gradient,
        )[-1][0]


@register
class Tomography(Problem):
    name = "ct"
    solvers = ("fbp", "gd", "agd")
    corrections = ("none", "convnet")
    couplings = ("update", "update_lambda", "primal_dual")
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
        if coupling == "primal_dual" and correction == "none":
            raise ProblemError(
                "coupling=primal_dual is made of networks (the learned primal and dual "
                "updates); choose correction=convnet"
            )
        return coupling

    def build_model(
        self,
        solver: CTSolverConfig,
        correction: CorrectionConfig,
        coupling: str,
        train: SplitData,
    ) -> LearnedGradientDescent:
        if getattr(solver, "kind", None) != "ct":
            raise ProblemError(
                f"solver={solver.name} does not apply to problem=ct; "
                f"choose one of: {', '.join(self.solvers)}"
            )
        cfg = self.cfg
        if coupling == "primal_dual":
            from hybridsim.problems.tomography_lpd import LearnedPrimalDual

            if correction.kind != "convnet":
                raise ProblemError(
                    f"coupling=primal_dual needs correction=convnet, got correction="
                    f"{correction.name}"
                )
            share = False if cfg.share_weights is None else cfg.share_weights
            return LearnedPrimalDual(cfg, solver, correction, share)  # type: ignore[return-value]
        net: nn.Module | nn.ModuleList | None = None
        if correction.kind == "convnet":

            def make() -> ConvNet:
                return ConvNet(
                    3 + cfg.memory,
                    1 + cfg.memory,
                    correction.width,
                    correction.kernel_size,
                    correction.activation,
                    correction.init_scale,
                )

            net = (
                make()
                if cfg.share_weights is None or cfg.share_weights
                else nn.ModuleList(make() for _ in range(max(solver.n_iter, 1)))
            )
        elif correction.kind != "none":
            raise ProblemError(
                f"correction={correction.name} does not apply to problem=ct; "
                f"choose one of: {', '.join(self.corrections)}"
            )
        lam = solver.lam if coupling == "update" or solver.lam > 0 else cfg.lambda_init
        return LearnedGradientDescent(cfg, solver, net, coupling, lam, cfg.lambda_per_iteration)

    def baselines(self) -> dict[str, tuple[str, str]]:
        return {
            "learned_lambda": ("convnet", "update_lambda"),
            "primal_dual": ("convnet", "primal_dual"),
        }

    def untrained_baselines(self) -> dict[str, tuple[str, str]]:
        return {"solver": ("none", "update")}

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
    tv_lam_chosen: float | None = None

    def tune_baselines(self, models: Mapping[str, nn.Module], val: SplitData) -> dict[str, Any]:
        """``problem.tv_lam=null``: TV's λ is the one of ``problem.tv_lam_grid`` with the best
        mean PSNR on the validation phantoms (a fair baseline: tuned on data the learned models
        were selected on, never on test)."""
        from hybridsim.problems import tomography_eval

        if self.cfg.tv_lam is not None:
            return {}
        chosen = tomography_eval.choose_tv_lambda(
            self, next(iter(models.values())), val, list(self.cfg.tv_lam_grid)
        )
        self.tv_lam_chosen = chosen["tv_lam"]
        return chosen

    def evaluate(
        self,
        models: Mapping[str, nn.Module],
        test: SplitData,
        train: SplitData,
        out_dir: Path,
    ) -> dict[str, Any]:
        from hybridsim.problems import tomography_eval

        return tomography_eval.evaluate(self, models, test, out_dir)


def _pool(fine: torch.Tensor, k: int) -> torch.Tensor:
    """Pixel means of a ``k``-times finer image, ``(n, ny*k, nx*k) -> (n, ny, nx)``."""
    return fine if k == 1 else nnf.avg_pool2d(fine[:, None], k)[:, 0]
