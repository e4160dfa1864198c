"""1D viscous Burgers with a learned correction after each coarse step (the corrected-stepper
case of APEBench, Koehler et al. 2024, and exponax; solver-in-the-loop as in Um et al. 2020).

    u_t + (u²/2)_x = ν u_xx  on [0, 2π) periodic,    u_{n+1} = s + C(s, ν),  s = P(u_n)

``P`` is the coarse finite-volume step (:class:`hybridsim.numerics.burgers.CoarseBurgers`, first-
order Rusanov by default: its numerical viscosity is what the correction makes up for); the
reference is the Fourier pseudo-spectral ETDRK4 solution on a 32x finer grid, restricted to the
coarse cells by exact cell averages (:func:`~hybridsim.numerics.burgers.reference_trajectory`).
Models, each one config away, as in ``problem=ns``:

- SRC: the coarse solver alone (evaluated as the untrained ``solver``);
- SOL-n: ``n`` corrected steps unrolled per update, gradients through the solver
  (coupling ``after_step``, ``recipe.unroll=[n]``);
- NON: the same correction trained on single steps from reference states (coupling ``non``;
  trained beside SOL as the comparator ``non``).

Network input ``(batch, 2, n)``: ``u / U`` (``U = problem.amplitude`` bounds ``|u|``) and a constant
channel ``(ln ν − mean) / std`` over the training viscosities; output ``U`` times a cell
increment. The test viscosities lie between and outside the training ones (unseen).

Data per split: ``u: (n_samples, n_t, n_coarse)`` cell averages, ``nu: (n_samples,)``; coordinates
``t`` and ``x`` (cell centres). ``n_per_nu`` random smooth initial conditions per viscosity
(:func:`~hybridsim.numerics.burgers.random_initial_conditions`), one generator per split seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from hybridsim.data import SplitData
from hybridsim.hybrid import Hybrid
from hybridsim.hybrid import coupling as make_coupling
from hybridsim.nn import build_correction
from hybridsim.numerics.burgers import (
    DEFAULTS,
    cell_centers,
    random_initial_conditions,
    reference_trajectory,
    relative_l2,
)
from hybridsim.numerics.burgers_fv import FLUXES, LIMITERS, CoarseBurgers
from hybridsim.numerics.rollout import GradientMode
from hybridsim.problems.base import Batch, Comparator, Problem, ProblemError, register
from hybridsim.schemas import MISSING, ConfigError, CorrectionConfig, _one_of, _positive

LABELS = {"solver": "SRC (solver alone)", "non": "NON (one-step supervised)", "hybrid": "SOL-n"}


@dataclass
class BurgersConfig:
    """``problem=burgers`` (defaults: :data:`hybridsim.numerics.burgers.DEFAULTS`, measured in
    docs/burgers-numerics.md)."""

    name: str = "burgers"
    n_coarse: int = DEFAULTS.n_coarse
    n_fine: int = DEFAULTS.n_fine
    dt: float = DEFAULTS.dt
    amplitude: float = DEFAULTS.amplitude
    k_max: int = DEFAULTS.k_max
    nu_train: list[float] = field(default_factory=lambda: list(DEFAULTS.nu_train))
    nu_val: list[float] = field(default_factory=lambda: [0.025, 0.045])
    nu_test: list[float] = field(default_factory=lambda: list(DEFAULTS.nu_test))
    n_per_nu: int = 4  # initial conditions per viscosity (train)
    n_per_nu_eval: int = 4  # per viscosity (val, test)
    n_frames: int = 41  # frames per train/val trajectory
    n_frames_test: int = DEFAULTS.n_steps + 1  # >= eval_steps + 1
    val_steps: int = 20
    eval_steps: int = DEFAULTS.n_steps
    seed_train: int = 1
    seed_val: int = 2
    seed_test: int = 3

    def __post_init__(self) -> None:
        p = "problem"
        _positive(p, n_coarse=self.n_coarse, n_fine=self.n_fine, dt=self.dt)
        _positive(p, amplitude=self.amplitude, k_max=self.k_max, n_per_nu=self.n_per_nu)
        _positive(p, n_per_nu_eval=self.n_per_nu_eval, val_steps=self.val_steps)
        _positive(p, eval_steps=self.eval_steps)
        for key in ("nu_train", "nu_val", "nu_test"):
            values = getattr(self, key)
            if not values or not all(v > 0 for v in values):
                raise ConfigError(f"problem.{key} must list positive viscosities, got {values}")
        if self.n_fine % self.n_coarse:
            raise ConfigError(
                f"problem.n_fine={self.n_fine} must be a multiple of problem.n_coarse="
                f"{self.n_coarse} (the reference is restricted by exact cell averages)"
            )
        if self.n_frames < 2:
            raise ConfigError(f"problem.n_frames must be >= 2, got {self.n_frames}")
        if self.n_frames_test < self.eval_steps + 1:
            raise ConfigError(
                f"problem.n_frames_test={self.n_frames_test} must be >= problem.eval_steps + 1 "
                f"= {self.eval_steps + 1}"
            )
        if 2 * self.k_max >= self.n_coarse:
            raise ConfigError(
                f"problem.k_max={self.k_max} is not resolved on problem.n_coarse="
                f"{self.n_coarse} cells (needs 2 k_max < n_coarse)"
            )


@dataclass
class BurgersSolverConfig:
    """The coarse finite-volume step: slope ``limiter`` (first_order: none) and numerical
    ``flux`` (:class:`hybridsim.numerics.burgers.CoarseBurgers`)."""

    name: str = MISSING
    kind: str = "burgers"
    limiter: str = DEFAULTS.limiter
    flux: str = DEFAULTS.flux

    def __post_init__(self) -> None:
        _one_of("solver.limiter", self.limiter, LIMITERS)
        _one_of("solver.flux", self.flux, FLUXES)


@dataclass
class EvalCase:
    """What every model is scored on: ``batch`` (the first frame of every test trajectory and
    the reference ``(n, steps, n_coarse)`` after it, on the run's device), per trajectory its
    viscosity ``nu (n,)``, the times ``t (steps + 1,)`` and the cell centres ``x``."""

    batch: Batch
    nu: np.ndarray
    t: np.ndarray
    x: np.ndarray


class CoarseStep(nn.Module):
    """The stepper: one coarse finite-volume step of ``dt`` on ``u (batch, n)`` with one viscosity
    ``nu (batch,)`` per sample, and how the correction sees and changes the state."""

    def __init__(self, fv: CoarseBurgers, dt: float, u_scale: float, log_nu: np.ndarray) -> None:
        super().__init__()
        self.fv, self.dt, self.u_scale = fv, dt, u_scale
        std = float(log_nu.std()) if len(log_nu) > 1 and log_nu.std() > 0 else 1.0
        self.register_buffer("log_nu_mean", torch.tensor(float(log_nu.mean())))
        self.register_buffer("log_nu_std", torch.tensor(std))

    def step(self, u: torch.Tensor, nu: torch.Tensor) -> torch.Tensor:
        return self.fv.step(u, nu, self.dt)

    def correct(self, before: torch.Tensor, s: torch.Tensor, net: nn.Module, nu: torch.Tensor):
        """``s + U C(s / U, ν)``."""
        channel = ((torch.log(nu) - self.log_nu_mean) / self.log_nu_std)[:, None, None]
        x = torch.cat([s[:, None] / self.u_scale, channel.expand(-1, 1, s.shape[-1])], dim=1)
        return s + self.u_scale * net(x)[:, 0]

    def run(self, hybrid: Hybrid, u0: torch.Tensor, nu: torch.Tensor, n_steps: int) -> list:
        """The ``n_steps`` states after each corrected step from ``u0``."""
        return hybrid.rollout(u0, n_steps, nu)


@register
class Burgers(Problem):
    name = "burgers"
    schema = BurgersConfig
    solvers = ("burgers_fv",)
    corrections = ("none", "resnet", "resnet_paper")
    couplings = ("after_step", "non")
    needs_network = frozenset({"non"})
    needs_network_reason = "trains a correction"
    solver_schemas = {"burgers": BurgersSolverConfig}
    comparators = (
        Comparator("non", None, "non"),  # NON: the main model's correction, one-step supervised
        Comparator("solver", "none", "after_step", trained=False),  # SRC
    )
    model_keys = frozenset({"val_steps", "eval_steps"})
    headline_error = "rel_l2_mean"  # each model's gain_over_solver: SRC's over its own
    tiny = (
        "problem.n_fine=256",
        "problem.n_frames=9",
        "problem.n_frames_test=11",
        "problem.eval_steps=10",
        "problem.val_steps=4",
        "problem.n_per_nu=2",
        "problem.n_per_nu_eval=1",
        "problem.nu_train=[0.02,0.04]",
        "problem.nu_val=[0.03]",
        "problem.nu_test=[0.05]",
        "correction.width=[8]",
    )
    cfg: BurgersConfig

    def __init__(self, cfg: BurgersConfig) -> None:
        super().__init__(cfg)
        fv = CoarseBurgers(cfg.n_coarse)
        nu_max = max(cfg.nu_train + cfg.nu_val + cfg.nu_test)
        if cfg.dt > fv.max_stable_dt(cfg.amplitude, nu_max):
            raise ProblemError(
                f"problem.dt={cfg.dt:g} is unstable for the coarse step (|u| <= "
                f"{cfg.amplitude:g}, nu <= {nu_max:g}, {cfg.n_coarse} cells); use problem.dt <= "
                f"{fv.max_stable_dt(cfg.amplitude, nu_max):.3g}"
            )

    # ------------------------------------------------------------------ data
    def generate(self, split: str, seed: int) -> SplitData:
        """``n_per_nu`` reference trajectories per viscosity of the split (float64, stored as
        float32)."""
        cfg = self.cfg
        nus = {"train": cfg.nu_train, "val": cfg.nu_val, "test": cfg.nu_test}[split]
        per = cfg.n_per_nu if split == "train" else cfg.n_per_nu_eval
        n_t = cfg.n_frames_test if split == "test" else cfg.n_frames
        gen = torch.Generator().manual_seed(seed)
        u0 = random_initial_conditions(
            per * len(nus), cfg.n_fine, gen, k_max=cfg.k_max, amplitude=cfg.amplitude
        )
        nu = torch.tensor([v for v in nus for _ in range(per)], dtype=torch.float64)
        u = reference_trajectory(
            u0, nu, cfg.dt, n_t - 1, cfg.n_fine, n_coarse=cfg.n_coarse, u_max=cfg.amplitude
        )
        return SplitData(
            arrays={"u": u.float().numpy(), "nu": nu.numpy()},
            coords={
                "t": np.arange(n_t) * cfg.dt,
                "x": cell_centers(cfg.n_coarse, dtype=torch.float64).numpy(),
            },
            attrs={"n_fine": cfg.n_fine},
        )

    # ----------------------------------------------------------------- model
    def build_model(
        self,
        solver: BurgersSolverConfig,
        correction: CorrectionConfig,
        coupling: str,
        train: SplitData,
        gradient: GradientMode | None = None,
    ) -> Hybrid:
        net = build_correction(correction, 2, 1, dim=1, periodic=True)
        # stability is checked once for the configuration (Burgers.__init__), not every step
        fv = CoarseBurgers(
            self.cfg.n_coarse, limiter=solver.limiter, flux=solver.flux, check_cfl=False
        )
        log_nu = np.log(np.asarray(train.arrays["nu"], dtype=np.float64))
        stepper = CoarseStep(fv, self.cfg.dt, self.cfg.amplitude, log_nu)
        return Hybrid(stepper, net, make_coupling(coupling), gradient)

    # -------------------------------------------------------------- training
    def batch(
        self, data: Mapping[str, torch.Tensor], batch_size: int, unroll: int, gen: torch.Generator
    ) -> Batch:
        """Random windows of ``unroll + 1`` consecutive frames (``-1``: the longest)."""
        n, n_t = data["u"].shape[:2]
        unroll = n_t - 1 if unroll < 0 or unroll > n_t - 1 else unroll
        dev = data["u"].device
        sample = torch.randint(n, (batch_size,), generator=gen).to(dev)
        start = torch.randint(n_t - unroll, (batch_size,), generator=gen).to(dev)
        return self._windows(data, sample, start, unroll)

    def _windows(self, data, sample: torch.Tensor, start: torch.Tensor, unroll: int) -> Batch:
        idx = start[:, None] + torch.arange(unroll + 1, device=start.device)
        u = data["u"][sample[:, None], idx]  # (batch, unroll + 1, n)
        return Batch(inputs={"u": u, "nu": data["nu"][sample]}, targets={"u": u[:, 1:]})

    def predict(self, model: Hybrid, batch: Batch, teacher_forcing: bool) -> torch.Tensor:
        """``(batch, n_steps, n)``: a free rollout from the first frame (SOL), or one step from
        each reference frame (NON)."""
        u, nu = batch.inputs["u"], batch.inputs["nu"]
        b, n1, n = u.shape
        if teacher_forcing:
            out = model.step(u[:, :-1].reshape(-1, n), nu.repeat_interleave(n1 - 1))
            return out.reshape(b, n1 - 1, n)
        return torch.stack(model(u[:, 0], nu, n1 - 1), dim=1)

    def loss(self, model: Hybrid, batch: Batch) -> torch.Tensor:
        """Mean over steps, samples and cells of the squared error."""
        pred = self.predict(model, batch, teacher_forcing=model.coupling.teacher_forced)
        return (pred - batch.targets["u"]).square().mean()

    def validate(self, model: Hybrid, data: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Free rollouts of ``val_steps`` from the first frame of every validation trajectory
        (the same criterion for SOL and NON)."""
        n, n_t = data["u"].shape[:2]
        steps = min(self.cfg.val_steps, n_t - 1)
        zeros = torch.zeros(n, dtype=torch.long, device=data["u"].device)
        batch = self._windows(data, torch.arange(n, device=zeros.device), zeros, steps)
        with torch.no_grad():
            pred = self.predict(model, batch, teacher_forcing=False)
        ref = batch.targets["u"]
        loss = float((pred - ref).square().mean())
        rel = math.sqrt(loss / float(ref.square().mean()))
        bad = not math.isfinite(loss)
        return {"loss": float("inf") if bad else loss, "rel_l2": float("inf") if bad else rel}

    # ------------------------------------------------------------ evaluation
    def eval_case(self, test: SplitData, train: SplitData, like: dict[str, Any]) -> EvalCase:
        """Every test trajectory (unseen viscosities) from its first frame, ``eval_steps`` steps."""
        steps = min(self.cfg.eval_steps, test.arrays["u"].shape[1] - 1)
        data = test.tensors(like["device"], like["dtype"])
        n = data["u"].shape[0]
        zeros = torch.zeros(n, dtype=torch.long, device=like["device"])
        batch = self._windows(data, torch.arange(n, device=zeros.device), zeros, steps)
        return EvalCase(batch, test.arrays["nu"], test.coords["t"][: steps + 1], test.coords["x"])

    def predict_case(self, model: Hybrid, case: EvalCase) -> dict[str, np.ndarray]:
        """The relative L2 error per trajectory and step ``(n, steps)`` (``inf`` where not
        finite), and the first trajectory's last state ``(n_coarse,)``."""
        pred = self.predict(model, case.batch, teacher_forcing=False)
        err = relative_l2(pred, case.batch.targets["u"]).double().cpu().numpy()
        return {
            "rel_l2": np.where(np.isfinite(err), err, np.inf),
            "final": pred[0, -1].double().cpu().numpy(),
        }

    def metrics(self, pred: dict[str, np.ndarray], case: EvalCase) -> dict[str, float]:
        """The mean over the rollout (the headline, ``headline_error``), at its last step."""
        err = pred["rel_l2"]
        return {
            "rel_l2_mean": float(err.mean()),
            f"rel_l2_{err.shape[1]}": float(err[:, -1].mean()),
            "finite": float(np.isfinite(err).all()),
        }

    def summarise(
        self,
        table: dict[str, dict[str, float]],
        preds: dict[str, Any],
        case: EvalCase,
        models: Mapping[str, nn.Module],
    ) -> dict[str, Any]:
        """Per viscosity, and the error per step (the mean over trajectories)."""
        steps, nus = len(case.t) - 1, case.nu
        return {
            "headline": ["rel_l2_mean", f"rel_l2_{steps}", "gain_over_solver"],
            "labels": {k: LABELS.get(k, k) for k in table},
            "eval_steps": steps,
            "test_viscosities": [float(v) for v in np.unique(nus)],
            "per_viscosity": {
                name: {f"{v:g}": float(p["rel_l2"][nus == v].mean()) for v in np.unique(nus)}
                for name, p in preds.items()
            },
            "series": {"rel_l2": {name: p["rel_l2"].mean(0).tolist() for name, p in preds.items()}},
        }

    def plots(self, preds: dict[str, Any], case: EvalCase, result: dict[str, Any]) -> dict:
        """``error_over_time.png``, and ``rollout.png``: the first test trajectory at the start
        and the end, the reference and each model."""
        from matplotlib.figure import Figure

        t = case.t[1:]
        errors = Figure(figsize=(7, 4), dpi=110)
        ax = errors.subplots()
        for name, values in result["series"]["rel_l2"].items():
            ax.semilogy(t, values, label=LABELS.get(name, name))
        ax.set_xlabel("t")
        ax.set_ylabel("relative L2 error")
        ax.legend()
        errors.tight_layout()
        rollout = Figure(figsize=(7, 4), dpi=110)
        ax = rollout.subplots()
        first, ref = case.batch.inputs["u"][0, 0], case.batch.targets["u"][0, -1]
        ax.plot(case.x, first.double().cpu().numpy(), "k:", label="t = 0")
        ax.plot(case.x, ref.double().cpu().numpy(), "k", label="reference")
        for name, p in preds.items():
            ax.plot(case.x, p["final"], label=LABELS.get(name, name))
        ax.set_xlabel("x")
        ax.set_ylabel(f"u at t = {t[-1]:g}")
        ax.legend(fontsize=8)
        rollout.tight_layout()
        return {"error_over_time.png": errors, "rollout.png": rollout}
