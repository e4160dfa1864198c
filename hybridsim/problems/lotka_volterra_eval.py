"""Evaluation of Lotka–Volterra models: rollout errors inside and beyond the training window,
learned interaction terms against −βxy and γxy, equation discovery, plots."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hybridsim.numerics.discovery import polynomial_rhs
from hybridsim.numerics.ode import Dopri5, odeint
from hybridsim.numerics.sparse_regression import monomial_exponents
from hybridsim.problems.base import SplitData


def _rel_l2(pred: np.ndarray, true: np.ndarray) -> float:
    err = float(np.linalg.norm(pred - true) / np.linalg.norm(true))
    return err if math.isfinite(err) else float("inf")


def _rollout(model: nn.Module, data: SplitData) -> np.ndarray:
    u0 = torch.as_tensor(data.arrays["u0"], **model.like)
    t = torch.as_tensor(data.coords["t"], **model.like)
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


def learned_terms(model: nn.Module, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(NN₁, NN₂ − θ₃y) at states ``u (n, 2)``: what the UDE learned of the interactions."""
    ut = torch.as_tensor(u, **model.like)
    with torch.no_grad():
        f = (rhs_at(model, ut) - _alpha_only(model, ut)).double().cpu().numpy()
    return f[:, 0], f[:, 1]


def _alpha_only(model: nn.Module, u: torch.Tensor) -> torch.Tensor:
    return torch.stack((model.stepper.alpha * u[:, 0], torch.zeros_like(u[:, 1])), 1)


def evaluate(
    problem: Any,  # the LotkaVolterra problem
    models: Mapping[str, nn.Module],
    test: SplitData,
    train: SplitData,
    out_dir: Path,
) -> dict[str, Any]:
    cfg = problem.cfg
    t = test.coords["t"]
    inside = t <= cfg.t_train + 1e-9
    true = test.arrays["u_true"]
    table: dict[str, dict[str, float]] = {}
    preds: dict[str, np.ndarray] = {}
    for name, model in models.items():
        pred = _rollout(model, test)
        preds[name] = pred
        table[name] = {
            "rel_l2_window": _rel_l2(pred[:, inside], true[:, inside]),
            "rel_l2_extrapolation": _rel_l2(pred[:, ~inside], true[:, ~inside])
            if (~inside).any()
            else float("nan"),
        }
    result: dict[str, Any] = {
        "table": table,
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
        nn_x, f_y = learned_terms(hybrid, states)
        true_x, true_y = -cfg.beta * x * y, cfg.gamma * x * y - cfg.delta * y
        table["hybrid"]["term_x_rel_err"] = _rel_l2(nn_x, true_x)
        table["hybrid"]["term_y_rel_err"] = _rel_l2(f_y, true_y)
        table["hybrid"]["theta3"] = float(hybrid.stepper.theta3.detach())
        # Sample the learned right-hand side where the model itself goes: its own trajectories
        # through the training window. The noisy observations would put sample points at
        # x < 0 near the prey minimum (x ~ 0.02, noise ~ 0.08), where the network extrapolates
        # and pulls the regression towards wrong sparse models.
        own = _rollout(hybrid, train).reshape(-1, 2)
        own = own[np.isfinite(own).all(axis=1)]
        states = own if len(own) else train.arrays["u"].reshape(-1, 2)
        with torch.no_grad():
            f = rhs_at(hybrid, torch.as_tensor(states, **hybrid.like)).double().cpu().numpy()
        discovery = problem.discover(f, states, train, hybrid.stepper.substeps)
        result["discovery"] = discovery
        # The discovered equations as a model of their own (Rackauckas et al. extrapolate with
        # the recovered equations): rolled out on the test split like the others.
        pred = _rollout_equations(discovery["xi"], cfg.library_degree, test)
        preds["discovered"] = pred
        table["discovered"] = {
            "rel_l2_window": _rel_l2(pred[:, inside], true[:, inside]),
            "rel_l2_extrapolation": _rel_l2(pred[:, ~inside], true[:, ~inside])
            if (~inside).any()
            else float("nan"),
            "structure_found": discovery["structure_found"],
            "n_terms": discovery["n_terms"],
            **{f"{k}_rel_err": v for k, v in discovery["relative_error"].items()},
            **{
                f"{k}_rel_err_regression": v
                for k, v in discovery["relative_error_regression"].items()
                if k in ("beta", "gamma")
            },
        }
        _plot_terms(out_dir / "learned_terms.png", train.coords["t"], x, y, nn_x, f_y, cfg)
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
    _plot_trajectories(
        out_dir / "trajectories.png",
        t,
        true[0],
        test.arrays["u"][0],
        {k: v[0] for k, v in preds.items()},
        cfg.t_train,
    )
    return result


def _plot_trajectories(path: Path, t, true, observed, preds: dict[str, np.ndarray], t_train):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_terms(path: Path, t, x, y, nn_x, f_y, cfg) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(t)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
