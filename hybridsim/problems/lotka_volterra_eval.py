"""Evaluation of Lotka–Volterra models: rollout errors inside and beyond the training window,
learned interaction terms against −βxy and γxy, equation discovery, plots."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from hybridsim.numerics.discovery import polynomial_rhs
from hybridsim.numerics.ode import Dopri5, odeint
from hybridsim.numerics.sparse_regression import monomial_exponents
from hybridsim.problems.base import SplitData

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _rel_l2(pred: np.ndarray, true: np.ndarray) -> float:
    err = float(np.linalg.norm(pred - true) / np.linalg.norm(true))
    return err if math.isfinite(err) else float("inf")


def _rollout(model: nn.Module, data: SplitData, like: dict[str, Any]) -> np.ndarray:
    u0 = torch.as_tensor(data.arrays["u0"], **like)
    t = torch.as_tensor(data.coords["t"], **like)
    with torch.no_grad():
        pred = model(u0, t).transpose(0, 1).double().cpu().numpy()  # (n, n_t, 2)
    return np.where(np.isfinite(pred), pred, np.nan)


def _rollout_equations(xi: list, degree: int, data: SplitData) -> np.ndarray:
    """The discovered polynomial model ``du/dt = Θ(u) ξ`` from ``u0`` (dopri5, tight)."""
    f = polynomial_rhs(monomial_exponents(2, degree), np.asarray(xi, dtype=np.float64))
    u0 = torch.as_tensor(data.arrays["u0"], dtype=torch.float64)
    t = torch.as_tensor(data.coords["t"], dtype=torch.float64)
    try:
        with torch.no_grad():
            pred = odeint(f, u0, t, Dopri5(rtol=1e-10, atol=1e-12, max_steps=20_000))
    except RuntimeError:  # a wrong model that blows up exhausts dopri5's steps
        return np.full((len(u0), len(t), 2), np.nan)
    pred = pred.transpose(0, 1).numpy()
    return np.where(np.isfinite(pred), pred, np.nan)


def rhs_at(model: nn.Module, u: torch.Tensor) -> torch.Tensor:
    """The model's full right-hand side at states ``u (n, 2)``, unfused (for discovery)."""
    physics, net = model.stepper, model.correction
    if model.coupling.name == "blackbox":
        return physics.term(net, u)
    if net is None:
        return physics.known(u)
    return physics.known(u) + physics.term(net, u)


def learned_terms(
    model: nn.Module, u: np.ndarray, like: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """(NN₁, NN₂ − θ₃y) at states ``u (n, 2)``: what the UDE learned of the interactions."""
    ut = torch.as_tensor(u, **like)
    with torch.no_grad():
        f = (rhs_at(model, ut) - _alpha_only(model, ut)).double().cpu().numpy()
    return f[:, 0], f[:, 1]


def _alpha_only(model: nn.Module, u: torch.Tensor) -> torch.Tensor:
    return torch.stack((model.stepper.alpha * u[:, 0], torch.zeros_like(u[:, 1])), 1)


@dataclass
class Case:
    """The test split and, for the discovery, the training split; ``inside``: the test times
    within the training window ``(n_t,)``."""

    test: SplitData
    train: SplitData
    like: dict[str, Any]
    inside: np.ndarray


def _errors(pred: np.ndarray, case: Case) -> dict[str, float]:
    true, inside = case.test.arrays["u_true"], case.inside
    return {
        "rel_l2_window": _rel_l2(pred[:, inside], true[:, inside]),
        "rel_l2_extrapolation": _rel_l2(pred[:, ~inside], true[:, ~inside])
        if (~inside).any()
        else float("nan"),
    }


class LVEvaluation:
    """The evaluation hooks of ``problem=lv`` (:class:`hybridsim.problems.base.Problem`): rollouts
    of the test trajectories, errors inside and beyond the training window; for the UDE
    (``hybrid``, coupling ``rhs``) its learned terms against the truth and equation discovery,
    whose equations are rolled out as a model of their own (``discovered``)."""

    cfg: Any  # LVConfig

    def eval_case(self, test: SplitData, train: SplitData, like: dict[str, Any]) -> Case:
        return Case(test, train, like, test.coords["t"] <= self.cfg.t_train + 1e-9)

    def predict_case(self, model: nn.Module, case: Case) -> dict[str, np.ndarray]:
        """``{"u": (n, n_t, 2)}``, non-finite values as NaN."""
        return {"u": _rollout(model, case.test, case.like)}

    def metrics(self, pred: dict[str, np.ndarray], case: Case) -> dict[str, float]:
        return _errors(pred["u"], case)

    def summarise(
        self,
        table: dict[str, dict[str, Any]],
        preds: dict[str, Any],
        case: Case,
        models: Mapping[str, nn.Module],
    ) -> dict[str, Any]:
        cfg, train = self.cfg, case.train
        result: dict[str, Any] = {
            "t_train": cfg.t_train,
            "t_test": cfg.t_test,
            # what `hybridsim report` plots across groups
            "headline": [
                "rel_l2_extrapolation",
                "structure_found",
                "beta_rel_err",
                "gamma_rel_err",
                "run/extrapolation_gain_over_blackbox",
                "run/discovered_gain_over_blackbox",
            ],
        }
        hybrid = models.get("hybrid")
        if hybrid is not None and hybrid.coupling.name == "rhs":
            states = train.arrays["u_true"].reshape(-1, 2)
            x, y = states[:, 0], states[:, 1]
            nn_x, f_y = learned_terms(hybrid, states, case.like)
            preds["hybrid"]["terms"] = (x, y, nn_x, f_y)
            true_x, true_y = -cfg.beta * x * y, cfg.gamma * x * y - cfg.delta * y
            table["hybrid"]["term_x_rel_err"] = _rel_l2(nn_x, true_x)
            table["hybrid"]["term_y_rel_err"] = _rel_l2(f_y, true_y)
            table["hybrid"]["theta3"] = float(hybrid.stepper.theta3.detach())
            # Sample the learned right-hand side where the model itself goes: its own
            # trajectories through the training window. The noisy observations would put sample
            # points at x < 0 near the prey minimum (x ~ 0.02, noise ~ 0.08), where the network
            # extrapolates and pulls the regression towards wrong sparse models.
            own = _rollout(hybrid, train, case.like).reshape(-1, 2)
            own = own[np.isfinite(own).all(axis=1)]
            states = own if len(own) else train.arrays["u"].reshape(-1, 2)
            with torch.no_grad():
                f = rhs_at(hybrid, torch.as_tensor(states, **case.like)).double().cpu().numpy()
            discovery = self.discover(f, states, train, hybrid.stepper.substeps)
            result["discovery"] = discovery
            # The discovered equations as a model of their own (Rackauckas et al. extrapolate
            # with the recovered equations): rolled out on the test split like the others.
            pred = _rollout_equations(discovery["xi"], cfg.library_degree, case.test)
            preds["discovered"] = {"u": pred}
            table["discovered"] = {
                **_errors(pred, case),
                "structure_found": discovery["structure_found"],
                "n_terms": discovery["n_terms"],
                **{f"{k}_rel_err": v for k, v in discovery["relative_error"].items()},
                **{
                    f"{k}_rel_err_regression": v
                    for k, v in discovery["relative_error_regression"].items()
                    if k in ("beta", "gamma")
                },
            }
        if "blackbox" in table:
            # the black box's extrapolation error over the UDE network's and over the discovered
            # equations' (> 1: the UDE extrapolates better)
            bb = table["blackbox"]["rel_l2_extrapolation"]
            for key, model in (
                ("extrapolation_gain_over_blackbox", "hybrid"),
                ("discovered_gain_over_blackbox", "discovered"),
            ):
                if model in table:
                    own = table[model]["rel_l2_extrapolation"]
                    result[key] = bb / own if own > 0 else float("inf")
        return result

    def plots(self, preds: dict[str, Any], case: Case, result: dict[str, Any]) -> dict[str, Any]:
        """``trajectories.png`` (the first test trajectory) and, with discovery,
        ``learned_terms.png``."""
        test = case.test
        figures = {}
        if "terms" in preds.get("hybrid", {}):
            figures["learned_terms.png"] = _plot_terms(
                case.train.coords["t"], *preds["hybrid"]["terms"], self.cfg
            )
        figures["trajectories.png"] = _plot_trajectories(
            test.coords["t"],
            test.arrays["u_true"][0],
            test.arrays["u"][0],
            {k: v["u"][0] for k, v in preds.items()},
            self.cfg.t_train,
        )
        return figures


def _plot_trajectories(t, true, observed, preds: dict[str, np.ndarray], t_train) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 6), dpi=110)
    axes = fig.subplots(2, 1, sharex=True)
    for i, (ax, label) in enumerate(zip(axes, ("prey x", "predator y"), strict=True)):
        ax.plot(t, observed[:, i], ".", color="0.6", ms=2, label="observed (test)")
        ax.plot(t, true[:, i], "k-", lw=2, label="reference")
        for name, pred in preds.items():
            ax.plot(t, pred[:, i], "--", lw=1.4, label=name)
        ax.axvspan(t[0], t_train, color="C0", alpha=0.07, label="training window")
        ax.set_ylabel(label)
        top = np.nanmax(np.abs(true[:, i]))
        ax.set_ylim(-0.1 * top, 1.5 * top)
    axes[0].legend(loc="upper right", fontsize=8, ncol=3)
    axes[1].set_xlabel("t")
    fig.suptitle("Lotka–Volterra: test trajectory (extrapolation beyond the shaded window)")
    fig.tight_layout()
    return fig


def _plot_terms(t, x, y, nn_x, f_y, cfg) -> Figure:
    from matplotlib.figure import Figure

    n = len(t)
    fig = Figure(figsize=(11, 4), dpi=110)
    axes = fig.subplots(1, 2)
    axes[0].plot(t, -cfg.beta * x[:n] * y[:n], "k-", lw=2, label="true −βxy")
    axes[0].plot(t, nn_x[:n], "C1--", label="learned NN₁(x,y)")
    axes[1].plot(
        t, cfg.gamma * x[:n] * y[:n] - cfg.delta * y[:n], "k-", lw=2, label="true γxy − δy"
    )
    axes[1].plot(t, f_y[:n], "C1--", label="learned NN₂(x,y) − θ₃y")
    for ax in axes:
        ax.set_xlabel("t (training trajectory)")
        ax.legend()
    fig.tight_layout()
    return fig
