"""Evaluation of Navier–Stokes hybrids (Um et al., 2020, section 5; JAX-CFD's correlation time).

From ``eval_starts`` evenly spaced frames of every test simulation (Reynolds numbers unseen in
training), every model rolls out ``eval_long_steps`` (500) coarse steps; the headline horizon is
the first ``eval_steps`` (100) of them. Per step ``k`` and sample:

    rel_l2(k) = ||u_k - r_k||_2 / ||r_k||_2,   rel_l1(k) = ||u_k - r_k||_1 / ||r_k||_1

over all velocity components on the open faces (``r`` = downsampled reference), and the
vorticity correlation with the reference. Reported (``N = eval_steps``, ``L = eval_long_steps``):
``rel_l2_mean`` (mean over steps 1..N, the pbdl book's "100-step relative error"),
``rel_l2_<N>`` and ``rel_l2_<L>`` (the error at step N and at step L), ``rel_l2_mean_<L>``,
``finite_<L>`` (the fraction of rollouts with no non-finite value in L steps), ``rel_l1_mean``,
``vort_corr_final`` (at step N), the correlation time ``corr_time`` (time until the vorticity
correlation first drops below 0.95 within the N steps; the full horizon if never), the
decorrelation time ``decorr_time`` (until it first drops below 0.8 within the L steps) and
``energy_ratio_<N>``, ``energy_ratio_<L>`` (the kinetic energy over the open faces relative to
the reference's at steps N and L: above 1 the model gains energy, below it damps), each averaged
over samples, overall and per Reynolds number. A blown-up rollout scores ``inf``. Plots:
vorticity fields at step N (reference, each model) and error / correlation over time (all L
steps).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from hybridsim.numerics.fluid import vorticity, vorticity_correlation
from hybridsim.problems.base import Batch, SplitData

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CORRELATION_THRESHOLD = 0.95
DECORRELATION_THRESHOLD = 0.8  # decorr_time: over the long rollout
LABELS = {
    "solver": "SRC (solver alone)",
    "non": "NON (one-step supervised)",
    "hybrid": "hybrid (SOL-n)",
}


def _norms(diff: tuple[torch.Tensor, ...], open_: tuple[torch.Tensor, ...], p: int) -> torch.Tensor:
    """Per sample and step ``(batch, n)``: the masked l_p norm over all components' faces."""
    total = 0.0
    for d, m in zip(diff, open_, strict=True):
        total = total + (d.abs() ** p * m).flatten(2).sum(2)
    return total ** (1.0 / p)


def _correlation_time(
    corr: np.ndarray, dt: float, threshold: float = CORRELATION_THRESHOLD
) -> np.ndarray:
    """Time until the correlation first drops below ``threshold``, per sample ``(batch,)``."""
    below = ~(corr >= threshold)  # NaN (blown up) counts as below
    n = corr.shape[1]
    first = np.where(below.any(1), below.argmax(1), n)
    return first * dt


@dataclass
class Case:
    """Windows of ``long`` steps from ``eval_starts`` frames of every test simulation, the
    reference velocity over them, its norms and vorticity, and each window's Reynolds number."""

    batch: Batch
    ref: tuple[torch.Tensor, ...]
    open_: tuple[torch.Tensor, ...]
    ref_l2: torch.Tensor
    ref_l1: torch.Tensor
    ref_vort: torch.Tensor
    reynolds: np.ndarray
    steps: int
    long: int


class NSEvaluation:
    """The evaluation hooks of ``problem=ns`` (:class:`hybridsim.problems.base.Problem`); the
    metrics are the module docstring's."""

    cfg: Any  # NSConfig
    coarse_grid: Any  # MACGrid
    headline_error = "rel_l2_mean"

    def eval_case(self, test: SplitData, train: SplitData, like: dict[str, Any]) -> Case:
        cfg = self.cfg
        comps = self.components()  # type: ignore[attr-defined]
        device, dtype = like["device"], like["dtype"]
        data = test.tensors(device, dtype)
        n_sim, n_t = data["u"].shape[:2]
        long = min(cfg.eval_long_steps, n_t - 1)
        steps = min(cfg.eval_steps, long)
        starts = torch.linspace(0, n_t - 1 - long, cfg.eval_starts).round().long().unique()
        sim = torch.arange(n_sim).repeat_interleave(len(starts)).to(device)
        start = starts.repeat(n_sim).to(device)
        batch = self.windows(data, sim, start, long)  # type: ignore[attr-defined]
        ref = tuple(batch.targets[c] for c in comps)
        open_ = self.coarse_grid.consts(dtype, device)["open"]
        return Case(
            batch=batch,
            ref=ref,
            open_=open_,
            ref_l2=_norms(ref, open_, 2),
            ref_l1=_norms(ref, open_, 1),
            ref_vort=_vorticity_series(self.coarse_grid, ref),
            reynolds=data["reynolds"][sim].double().cpu().numpy(),
            steps=steps,
            long=long,
        )

    def predict_case(self, model: nn.Module, case: Case) -> dict[str, Any]:
        """Per sample and step ``(n_samples, long)``: relative L2 (``inf`` where not finite) and
        L1 errors, energy ratio, vorticity correlation; per sample the correlation and
        decorrelation times; the fraction of finite rollouts; the first sample's vorticity at
        step ``steps``."""
        cfg, open_ = self.cfg, case.open_
        pred = self.predict(model, case.batch, teacher_forcing=False)  # type: ignore[attr-defined]
        finite = torch.ones(len(case.reynolds), dtype=torch.bool, device=open_[0].device)
        for c in pred:
            finite &= torch.isfinite(c).flatten(1).all(1)
        diff = tuple(a - b for a, b in zip(pred, case.ref, strict=True))
        l2_long = (_norms(diff, open_, 2) / case.ref_l2).double().cpu().numpy()
        energy = ((_norms(pred, open_, 2) / case.ref_l2) ** 2).double().cpu().numpy()
        energy = np.nan_to_num(energy, nan=np.inf)
        l1_long = (_norms(diff, open_, 1) / case.ref_l1).double().cpu().numpy()
        l2_long = np.nan_to_num(l2_long, nan=np.inf)
        vort = _vorticity_series(self.coarse_grid, pred)
        corr_long = vorticity_correlation(vort.flatten(0, 1), case.ref_vort.flatten(0, 1))
        corr_long = corr_long.view(*vort.shape[:2]).double().cpu().numpy()
        return {
            "l2": l2_long,
            "l1": l1_long,
            "energy": energy,
            "corr": corr_long,
            "corr_time": _correlation_time(corr_long[:, : case.steps], cfg.dt),
            "decorr_time": _correlation_time(corr_long, cfg.dt, DECORRELATION_THRESHOLD),
            "finite": float(finite.double().mean()),
            "vorticity": vort[0, case.steps - 1].double().cpu().numpy(),
        }

    def metrics(self, pred: dict[str, Any], case: Case) -> dict[str, float]:
        steps, long = case.steps, case.long
        l2_long, energy, corr = pred["l2"], pred["energy"], pred["corr"][:, :steps]
        l2, l1 = l2_long[:, :steps], np.nan_to_num(pred["l1"][:, :steps], nan=np.inf)
        return {
            "rel_l2_mean": float(l2.mean()),
            f"rel_l2_{steps}": float(l2[:, -1].mean()),
            f"rel_l2_{long}": float(l2_long[:, -1].mean()),
            f"rel_l2_mean_{long}": float(l2_long.mean()),
            f"finite_{long}": pred["finite"],
            "rel_l1_mean": float(l1.mean()),
            "vort_corr_final": float(np.nan_to_num(corr[:, -1], nan=0.0).mean()),
            "corr_time": float(pred["corr_time"].mean()),
            "decorr_time": float(pred["decorr_time"].mean()),
            f"energy_ratio_{steps}": float(energy[:, steps - 1].mean()),
            f"energy_ratio_{long}": float(energy[:, -1].mean()),
        }

    def summarise(
        self,
        table: dict[str, dict[str, float]],
        preds: dict[str, Any],
        case: Case,
        models: Mapping[str, nn.Module],
    ) -> dict[str, Any]:
        """Per Reynolds number, the mean series over samples, and the gains over the solver."""
        steps, long, reynolds = case.steps, case.long, case.reynolds
        per_re = {}
        for name, p in preds.items():
            l2_long = p["l2"]
            per_re[name] = {
                f"{r:g}": {
                    "rel_l2_mean": float(l2_long[:, :steps][reynolds == r].mean()),
                    f"rel_l2_{long}": float(l2_long[reynolds == r, -1].mean()),
                    "corr_time": float(p["corr_time"][reynolds == r].mean()),
                    "decorr_time": float(p["decorr_time"][reynolds == r].mean()),
                }
                for r in np.unique(reynolds)
            }
        series = {
            name: {
                "rel_l2": p["l2"].mean(0).tolist(),
                "rel_l1": np.nan_to_num(p["l1"], nan=np.inf).mean(0).tolist(),
                "vort_corr": np.nan_to_num(p["corr"], nan=0.0).mean(0).tolist(),
            }
            for name, p in preds.items()
        }
        return {
            "headline": [
                "rel_l2_mean",
                f"rel_l2_{long}",
                "gain_over_solver",
                f"finite_{long}",
            ],
            "labels": {k: LABELS.get(k, k) for k in table},
            "per_reynolds": per_re,
            "series": series,
            "eval_steps": steps,
            "eval_long_steps": long,
            "n_samples": len(reynolds),
            "test_reynolds": sorted({float(r) for r in reynolds}),
            "gain_over_solver": {
                name: row["gain_over_solver"]
                for name, row in table.items()
                if "gain_over_solver" in row
            },
        }

    def plots(self, preds: dict[str, Any], case: Case, result: dict[str, Any]) -> dict[str, Any]:
        """``error_over_time.png`` (all ``long`` steps) and ``vorticity.png`` (at ``steps``)."""
        return {
            "error_over_time.png": _plot_errors(result["series"], self.cfg.dt),
            "vorticity.png": _plot_vorticity(
                case.ref_vort[0, case.steps - 1].double().cpu().numpy(),
                {name: p["vorticity"] for name, p in preds.items()},
                case.steps,
                float(case.reynolds[0]),
            ),
        }


def _vorticity_series(grid, velocity: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Vorticity ``(batch, n, *cells)`` of velocity components ``(batch, n, *faces)``;
    3D: a mid-depth slice of |curl u|."""
    b, n = velocity[0].shape[:2]
    flat = tuple(v.reshape(b * n, *v.shape[2:]) for v in velocity)
    w = vorticity(grid, flat)
    if grid.dim == 3:
        w = w[:, w.shape[1] // 2]
    return w.reshape(b, n, *w.shape[1:])


def _plot_errors(series: dict[str, dict[str, list[float]]], dt: float) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), dpi=110)
    axes = fig.subplots(1, 2)
    for i, (name, s) in enumerate(series.items()):
        t = (np.arange(len(s["rel_l2"])) + 1) * dt
        axes[0].semilogy(
            t, np.clip(s["rel_l2"], 1e-6, 1e3), color=f"C{i}", label=LABELS.get(name, name)
        )
        tc = (np.arange(len(s["vort_corr"])) + 1) * dt
        axes[1].plot(tc, s["vort_corr"], color=f"C{i}", label=LABELS.get(name, name))
    axes[0].set_ylabel("relative L2 velocity error")
    axes[1].axhline(CORRELATION_THRESHOLD, color="0.5", ls=":", lw=1)
    axes[1].axhline(DECORRELATION_THRESHOLD, color="0.5", ls="--", lw=1)
    axes[1].set_ylabel("vorticity correlation")
    axes[1].set_ylim(-0.1, 1.02)
    for ax in axes:
        ax.set_xlabel("time after the start frame")
        ax.legend(fontsize=8)
    fig.suptitle("Navier–Stokes: rollouts from test states (unseen Reynolds numbers)")
    fig.tight_layout()
    return fig


def _plot_vorticity(
    ref: np.ndarray, fields: dict[str, np.ndarray], steps: int, reynolds: float
) -> Figure:
    from matplotlib.figure import Figure

    panels = {"reference": ref, **fields}
    vmax = float(np.nanmax(np.abs(ref))) or 1.0
    fig = Figure(figsize=(7, 2.2 * len(panels)), dpi=110)
    axes = fig.subplots(len(panels), 1, squeeze=False)
    for ax, (name, w) in zip(axes[:, 0], panels.items(), strict=True):
        w = np.where(np.isfinite(w), w, 0.0)
        ax.imshow(w, origin="lower", cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="equal")
        ax.set_title(f"{LABELS.get(name, name)}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"vorticity after {steps} steps, Re = {reynolds:g} (test)", fontsize=10)
    fig.tight_layout()
    return fig
