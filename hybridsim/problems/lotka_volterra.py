"""Lotka–Volterra universal differential equation (Rackauckas et al., arXiv:2001.04385, §2.1).

Truth:   dx/dt = αx − βxy,          dy/dt = γxy − δy.
UDE:     dx/dt = αx + NN₁(x, y),    dy/dt = NN₂(x, y) − θ₃y     (coupling ``rhs``; θ₃ learned)
Physics: dx/dt = αx,                dy/dt = −θ₃y                (correction ``none``)
Black box: du/dt = NN(x, y)                                     (coupling ``blackbox``)

Networks see ``u / u_scale`` and return ``du_scale * out``: on the default orbit the missing term
−βxy spans about [−60, 0], far outside a tanh network's natural range. State ``u = (x, y)`` has
shape ``(batch, 2)``; trajectories ``(n_traj, n_t, 2)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from hybridsim.hybrid import Hybrid
from hybridsim.hybrid import coupling as make_coupling
from hybridsim.nn import build_correction
from hybridsim.numerics.discovery import discover
from hybridsim.numerics.ode import Dopri5, build_solver, odeint
from hybridsim.numerics.rollout import GradientMode, rollout
from hybridsim.numerics.sparse_regression import (
    format_equation,
    monomial_exponents,
    polynomial_library,
    stlsq_select,
)
from hybridsim.problems.base import Batch, Comparator, Problem, SplitData, register
from hybridsim.problems.lotka_volterra_eval import LVEvaluation
from hybridsim.schemas import CorrectionConfig, LVConfig, ODESolverConfig


class LVPhysics(nn.Module):
    """The stepper of the UDE: the physics it keeps, ``du/dt = (αx, −θ₃y)``, integrated by an
    ODE solver (``substeps`` steps per output interval), and the units of its state.

    α is a fixed buffer; θ₃ is an ``nn.Parameter`` when learned, else a buffer. A network sees
    ``u / u_scale`` and its output counts in ``du_scale`` (per capita: ``du_scale / u_scale``).
    """

    def __init__(
        self,
        alpha: float,
        theta3: float,
        learn_theta3: bool,
        solver: Any,
        substeps: int,
        u_scale: torch.Tensor,
        du_scale: torch.Tensor,
        per_capita: bool = False,
    ) -> None:
        super().__init__()
        self.solver, self.substeps, self.per_capita = solver, substeps, per_capita
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        if learn_theta3:
            self.theta3 = nn.Parameter(torch.tensor(float(theta3)))
        else:
            self.register_buffer("theta3", torch.tensor(float(theta3)))
        self.register_buffer("u_scale", u_scale.clone())
        self.register_buffer("du_scale", du_scale.clone())

    def known(self, u: torch.Tensor) -> torch.Tensor:
        """The physics the UDE keeps: (αx, −θ₃y)."""
        return torch.stack((self.alpha * u[:, 0], -self.theta3 * u[:, 1]), dim=1)

    def term(self, net: nn.Module, u: torch.Tensor) -> torch.Tensor:
        """The network's contribution to du/dt at ``u`` (unfused; for discovery and plots)."""
        if self.per_capita:  # u ⊙ g(u): a population at zero stays at zero
            return u * (self.du_scale / self.u_scale) * net(u / self.u_scale)
        return self.du_scale * net(u / self.u_scale)

    # The right-hand sides, with constants folded once per trajectory: the linear physics as
    # one multiply, the scales inside the network's weights (GroupedMLP.scaled).
    def rhs(self) -> Callable:
        coef = torch.stack((self.alpha, -self.theta3))
        return lambda t, u: u * coef

    def plus(self, net: nn.Module) -> Callable:
        coef = torch.stack((self.alpha, -self.theta3))
        if self.per_capita:
            rate = net.scaled(self.u_scale, self.du_scale / self.u_scale)
            return lambda t, u: u * (rate(u) + coef)
        g = net.scaled(self.u_scale, self.du_scale)
        return lambda t, u: torch.addcmul(g(u), u, coef)

    def replace(self, net: nn.Module) -> Callable:
        g = net.scaled(self.u_scale, self.du_scale)
        return lambda t, u: g(u)

    def step_rhs(
        self, f: Callable, state: tuple[torch.Tensor, torch.Tensor], h: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One solver step of size ``h`` on ``state = (u, t)``."""
        u, time = state
        return self.solver.step(f, time, u, h), time + h

    def run(self, hybrid: Hybrid, u0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Trajectory ``(n_t, batch, 2)`` from ``u0 (batch, 2)`` at times ``t (n_t,)``.

        With a fixed-step solver and the hybrid's gradient mode ``checkpoint`` or ``truncate``,
        the steps run through :func:`rollout` so that memory or gradient horizon follow that
        mode; ``t`` must then be uniformly spaced.
        """
        f = hybrid.coupling.rhs(self, hybrid.correction)
        if hybrid.gradient.kind == "full" or self.solver.adaptive or len(t) < 2:
            return odeint(f, u0, t, self.solver, self.substeps)
        dt = t[1:] - t[:-1]
        if not torch.allclose(dt, dt[0]):
            raise ValueError("gradient modes other than 'full' need uniformly spaced times")
        h = float(dt[0]) / self.substeps
        saved = rollout(
            lambda s: self.step_rhs(f, s, h),
            (u0, t[0].clone()),
            (len(t) - 1) * self.substeps,
            save_every=self.substeps,
            gradient=hybrid.gradient,
        )
        return torch.stack([u0, *(s[0] for s in saved)])


def lotka_volterra_rhs(cfg: LVConfig):
    """The true right-hand side as a function ``f(t, u)``."""

    def f(t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        x, y = u[:, 0], u[:, 1]
        return torch.stack((cfg.alpha * x - cfg.beta * x * y, cfg.gamma * x * y - cfg.delta * y), 1)

    return f


def first_integral(cfg: LVConfig, u: torch.Tensor) -> torch.Tensor:
    """V = γx − δ ln x + βy − α ln y, constant along exact solutions."""
    x, y = u[..., 0], u[..., 1]
    return cfg.gamma * x - cfg.delta * torch.log(x) + cfg.beta * y - cfg.alpha * torch.log(y)


@register
class LotkaVolterra(LVEvaluation, Problem):
    name = "lv"
    solvers = ("euler", "rk4", "dopri5")
    corrections = ("none", "mlp")
    couplings = ("rhs", "blackbox")
    needs_network = frozenset({"blackbox"})
    schema = LVConfig
    solver_schemas = {"ode": ODESolverConfig}
    comparators = (
        Comparator("blackbox", "mlp", "blackbox"),
        # The known physics alone (αx, −θ₃y at θ₃'s starting value): fitting θ₃ without the
        # interaction terms is meaningless, and long windows of it blow up exponentially.
        Comparator("physics", "none", "rhs", trained=False),
    )
    tiny = ("problem.t_train=1.0", "problem.t_test=2.0", "correction.width=[8]")
    cfg: LVConfig
    not_data_parallel = (
        "its data are a single trajectory (a batch is windows of one short series, cheap on "
        "one core), there is nothing worth splitting across processes, and its L-BFGS polish "
        "needs the whole series"
    )

    # Settings that shape only the model or the evaluation, not the data (not hashed).
    model_keys = frozenset(
        {
            "theta3_init",
            "learn_theta3",
            "val_window",
            "per_capita",
            "library_degree",
            "threshold",
            "discovery",
            "max_terms",
        }
    )

    # ------------------------------------------------------------------ data

    def generate(self, split: str, seed: int) -> SplitData:
        """Noisy observations ``u`` and the exact ``u_true`` (dopri5, float64, rtol 1e-10)."""
        cfg = self.cfg
        rng = np.random.default_rng(seed)
        n = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}[split]
        horizon = cfg.t_test if split == "test" else cfg.t_train
        n_t = int(round(horizon / cfg.dt_obs)) + 1
        t = np.arange(n_t) * cfg.dt_obs
        if cfg.ic_box is None:
            u0 = np.tile([cfg.x0, cfg.y0], (n, 1)).astype(np.float64)
        else:
            lo, hi = np.array(cfg.ic_box[0::2]), np.array(cfg.ic_box[1::2])
            u0 = lo + (hi - lo) * rng.random((n, 2))
        reference = Dopri5(rtol=1e-10, atol=1e-12)
        with torch.no_grad():
            traj = odeint(
                lotka_volterra_rhs(cfg), torch.from_numpy(u0), torch.from_numpy(t), reference
            )
        u_true = traj.permute(1, 0, 2).numpy()  # (n, n_t, 2)
        scale = u_true.reshape(-1, 2).std(axis=0)
        u = u_true + cfg.noise * scale * rng.standard_normal(u_true.shape)
        return SplitData(
            arrays={"u": u, "u_true": u_true, "u0": u0},
            coords={"t": t},
            attrs={"t_train": cfg.t_train, "noise_scale": scale},
        )

    # ----------------------------------------------------------------- model
    def build_model(
        self,
        solver: ODESolverConfig,
        correction: CorrectionConfig,
        coupling: str,
        train: SplitData,
        gradient: GradientMode | None = None,
    ) -> Hybrid:
        # rhs: NN₁ and NN₂ as two independent 2→…→1 networks; blackbox: one 2→…→2 network.
        groups, out = (2, 1) if coupling == "rhs" else (1, 2)
        net = build_correction(correction, 2, out, dim=0, groups=groups)
        u = torch.as_tensor(train.arrays["u"], dtype=torch.float64)
        dt = float(train.coords["t"][1] - train.coords["t"][0])
        u_scale = u.reshape(-1, 2).abs().amax(0)
        du_scale = ((u[:, 1:] - u[:, :-1]) / dt).reshape(-1, 2).abs().amax(0)
        physics = LVPhysics(
            self.cfg.alpha,
            self.cfg.theta3_init,
            self.cfg.learn_theta3 and coupling == "rhs",
            build_solver(solver.name, solver.rtol, solver.atol),
            solver.substeps,
            u_scale.float(),
            du_scale.float(),
            self.cfg.per_capita and coupling == "rhs",
        )
        return Hybrid(physics, net, make_coupling(coupling), gradient)

    # -------------------------------------------------------------- training
    def _scale(self, data: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return data["u"].reshape(-1, 2).std(0)

    def batch(
        self, data: Mapping[str, torch.Tensor], batch_size: int, unroll: int, gen: torch.Generator
    ) -> Batch:
        """Random windows of ``unroll`` intervals, started from the observed state (multiple
        shooting); ``unroll = -1`` or longer than the data: the full trajectories from ``u0``."""
        u, t = data["u"], data["t"]
        n_traj, n_t, _ = u.shape
        if unroll < 0 or unroll >= n_t - 1:
            return self.full_batch(data)
        traj = torch.randint(n_traj, (batch_size,), generator=gen).to(u.device)
        start = torch.randint(n_t - unroll, (batch_size,), generator=gen).to(u.device)
        idx = start[:, None] + torch.arange(unroll + 1, device=u.device)  # (batch, unroll+1)
        windows = u[traj[:, None], idx]  # (batch, unroll+1, 2)
        return Batch(
            inputs={"u0": windows[:, 0], "t": t[: unroll + 1] - t[0]},
            targets={"u": windows.transpose(0, 1), "scale": self._scale(data)},
        )

    def polish_batch(self, data: Mapping[str, torch.Tensor], unroll: int) -> Batch:
        u, t = data["u"], data["t"]
        if unroll < 0 or unroll >= u.shape[1] - 1:
            return self.full_batch(data)
        idx = torch.arange(u.shape[1] - unroll, device=u.device)[:, None] + torch.arange(
            unroll + 1, device=u.device
        )
        windows = u[:, idx].reshape(-1, unroll + 1, 2)  # every window of every trajectory
        return Batch(
            inputs={"u0": windows[:, 0], "t": t[: unroll + 1] - t[0]},
            targets={"u": windows.transpose(0, 1), "scale": self._scale(data)},
        )

    def full_batch(self, data: Mapping[str, torch.Tensor]) -> Batch:
        targets = {"u": data["u"].transpose(0, 1), "scale": self._scale(data)}
        if "u_true" in data:
            targets["u_true"] = data["u_true"].transpose(0, 1)
        return Batch(inputs={"u0": data["u0"], "t": data["t"]}, targets=targets)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Mean squared error relative to each variable's spread."""
        pred = model(batch.inputs["u0"], batch.inputs["t"])
        return (((pred - batch.targets["u"]) / batch.targets["scale"]) ** 2).mean()

    def validate(self, model: nn.Module, data: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """``loss`` (ranks checkpoints for ``best.pt``): the multiple-shooting loss over every
        window of ``val_window`` intervals plus the full rollout's loss, both against the
        observations. The windowed term is smooth in the parameters and ranks early models;
        the full rollout catches a model that fits short windows but drifts in phase.
        ``full_rel_mse``: the full rollout against the exact solution."""
        batch = self.full_batch(data)
        with torch.no_grad():
            windowed = float(self.loss(model, self.polish_batch(data, self.cfg.val_window)))
            pred = model(batch.inputs["u0"], batch.inputs["t"])
        scale = batch.targets["scale"]
        full = float((((pred - batch.targets["u"]) / scale) ** 2).mean())
        out = {"loss": windowed + full, "windowed": windowed, "full": full}
        if "u_true" in batch.targets:
            out["full_rel_mse"] = float((((pred - batch.targets["u_true"]) / scale) ** 2).mean())
        return out

    # ------------------------------------------------------------ evaluation
    # (the hooks: lotka_volterra_eval.LVEvaluation)

    def discover(
        self, f: np.ndarray, states: np.ndarray, train: SplitData, substeps: int = 1
    ) -> dict[str, Any]:
        """Equation discovery on a model's full right-hand side ``f (n, 2)`` sampled at
        ``states (n, 2)`` (:func:`hybridsim.problems.lotka_volterra_eval.rhs_at`); candidates
        are simulated with the model's ``substeps``.

        ``problem.discovery=simulate`` (default): best-subset and STLSQ-path candidates from
        the learned terms, each simulated from the training data's initial conditions, its
        coefficients fitted to the observed trajectories, the structure chosen by BIC
        (:func:`hybridsim.numerics.discovery.discover`). ``stlsq``: STLSQ alone over a
        threshold scan (Brunton et al. 2016), for comparison.
        """
        cfg = self.cfg
        theta, terms = polynomial_library(states, cfg.library_degree, ("x", "y"))
        candidates: list[dict[str, Any]] = []
        if cfg.discovery == "stlsq":
            xi = regression = stlsq_select(theta, f, cfg.threshold)
        else:
            observed = train.arrays["u"]
            found = discover(
                theta,
                f,
                monomial_exponents(2, cfg.library_degree),
                train.arrays["u0"],
                train.coords["t"],
                observed,
                observed.reshape(-1, 2).std(0),
                max_terms=cfg.max_terms,
                thresholds=[cfg.threshold * k for k in (0.25, 0.5, 1.0, 2.0, 4.0)],
                substeps=substeps,
            )
            xi, regression = found.coef, found.regression
            for c in found.candidates[:10]:
                candidates.append(
                    {
                        "terms": [[terms[i] for i in s] for s in c["support"]],
                        "k": c["k"],
                        "rss": c["rss"],
                        "bic": c["bic"],
                    }
                )
        truth = np.zeros_like(xi)
        for name, (term, j, sign) in _PARAMETERS.items():
            truth[terms.index(term), j] = sign * getattr(cfg, name)
        lhs = ("dx/dt", "dy/dt")
        return {
            "method": cfg.discovery,
            "equations": [format_equation(lhs[j], xi[:, j], terms) for j in range(2)],
            "equations_regression": [
                format_equation(lhs[j], regression[:, j], terms) for j in range(2)
            ],
            "true_equations": [format_equation(lhs[j], truth[:, j], terms) for j in range(2)],
            "xi": xi.tolist(),  # (library term, equation), terms in the order of "terms"
            "terms": terms,
            "coefficients": _by_term(xi, terms),
            "coefficients_regression": _by_term(regression, terms),
            "relative_error": _parameter_errors(xi, truth, terms),
            "relative_error_regression": _parameter_errors(regression, truth, terms),
            "n_terms": int(np.count_nonzero(xi)),
            # the true terms, and only those, for the configured truth (zero parameters drop out)
            "structure_found": bool(((xi != 0) == (truth != 0)).all()),
            "candidates": candidates,
        }


_PARAMETERS = {  # name -> (term, equation, sign) in dx/dt = αx − βxy, dy/dt = γxy − δy
    "alpha": ("x", 0, 1.0),
    "beta": ("x y", 0, -1.0),
    "gamma": ("x y", 1, 1.0),
    "delta": ("y", 1, -1.0),
}


def _by_term(xi: np.ndarray, terms: list[str]) -> dict[str, dict[str, float]]:
    return {
        lhs: dict(zip(terms, xi[:, j].tolist(), strict=True))
        for j, lhs in enumerate(("dx/dt", "dy/dt"))
    }


def _parameter_errors(xi: np.ndarray, truth: np.ndarray, terms: list[str]) -> dict[str, float]:
    """|found − true| / |true| per parameter (|found| where the true value is 0)."""
    out = {}
    for name, (term, j, _) in _PARAMETERS.items():
        found, true = xi[terms.index(term), j], truth[terms.index(term), j]
        out[name] = float(abs(found - true) / abs(true) if true else abs(found))
    return out
