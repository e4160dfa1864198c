"""Evaluation of CT reconstructions: PSNR and SSIM of FBP, TV-regularised descent, the solver
alone, learned gradient descent and the λ-learning variant, on the held-out random phantoms and
on the modified Shepp–Logan phantom; a figure grid per case.

PSNR and SSIM use the data range ``max − min`` of each true image (1 for Shepp–Logan).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from hybridsim.numerics.radon import fbp
from hybridsim.numerics.reconstruction import (
    AcceleratedGradientDescent,
    psnr,
    ssim,
)
from hybridsim.numerics.regularizers import TotalVariation
from hybridsim.numerics.rollout import rollout
from hybridsim.problems.base import SplitData
from hybridsim.problems.tomography_ops import data_term, line_integrals, operator

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Reconstruct = Callable[[torch.Tensor], torch.Tensor]


def classical(
    problem: Any, model: nn.Module, tv_lam: float | None = None
) -> dict[str, Reconstruct]:
    """FBP (the solver's filter and cut-off) and TV: FISTA on ``D + λ_TV TV_ε`` from that FBP,
    nonnegative, ``problem.tv_iters`` steps (``docs/ct-numerics.md``: 30.19 dB on 128²), with
    ``λ_TV = tv_lam`` (default: the one chosen on validation, else ``problem.tv_lam``)."""
    cfg, op = problem.cfg, operator(problem.cfg)
    solver = _part(model).solver
    if tv_lam is None:
        tv_lam = problem.tv_lam_chosen if cfg.tv_lam is None else cfg.tv_lam
    if tv_lam is None:
        raise ValueError("problem.tv_lam is null and no λ was chosen on validation")

    def fbp_rec(sinogram: torch.Tensor) -> torch.Tensor:
        return fbp(op, line_integrals(cfg, sinogram), solver.filter, solver.cutoff)

    tv = AcceleratedGradientDescent(
        data_term(cfg, op), TotalVariation(cfg.tv_eps), tv_lam, nonnegative=True
    )

    def tv_rec(sinogram: torch.Tensor) -> torch.Tensor:
        step = partial(tv.step, sinogram=sinogram)
        state = tv.init(fbp_rec(sinogram).clamp_min(0))
        return rollout(step, state, cfg.tv_iters, save_every=cfg.tv_iters)[-1][0]

    return {"fbp": fbp_rec, "tv": tv_rec}


def choose_tv_lambda(
    problem: Any,  # the Tomography problem
    model: nn.Module,
    val: SplitData,
    grid: list[float],
    like: dict[str, Any],
    max_extensions: int = 8,
) -> dict[str, Any]:
    """The TV weight with the best mean PSNR on the validation phantoms (the test split is never
    looked at), and the validation PSNR of every candidate tried.

    The search starts on ``grid``. The right scale of λ depends on the data term (the
    Beer-Lambert likelihood is about ``mu² i0`` times the least-squares term), so while the best
    λ is an edge of the values tried, the search goes on past that edge by factors of 10 (at most
    ``max_extensions`` steps), then refines twice between the best and its neighbours (geometric
    means); ``tv_lam_at_grid_edge`` says if the optimum is still at an edge after that. The
    phantoms are put on ``like``'s device and dtype (the run's)."""
    sino = torch.as_tensor(val.arrays["sinogram"]).to(**like)
    true = torch.as_tensor(val.arrays["image"]).to(**like)
    scores: dict[float, float] = {}

    def score(lam: float) -> None:
        tv = classical(problem, model, tv_lam=lam)["tv"]  # type: ignore[arg-type]
        with torch.no_grad():
            scores[lam] = float(psnr(tv(sino), true).mean())

    for lam in grid:
        score(float(lam))
    for _ in range(max_extensions):  # past an edge by decades until the best is inside
        tried = sorted(scores)
        best = max(scores, key=lambda lam: scores[lam])
        if len(tried) < 2 or best not in (tried[0], tried[-1]) or best == 0.0:
            break
        score(best * 10.0 if best == tried[-1] else best / 10.0)
    for _ in range(2):  # then halve the log-spacing around the best, twice
        tried = sorted(scores)
        best = max(scores, key=lambda lam: scores[lam])
        k = tried.index(best)
        if best == 0.0 or not 0 < k < len(tried) - 1:
            break
        for other in (tried[k - 1], tried[k + 1]):
            if other > 0:
                score(math.sqrt(best * other))
    best = max(scores, key=lambda lam: scores[lam])
    tried = sorted(scores)
    return {
        "tv_lam": best,
        "tv_val_psnr": {f"{lam:g}": scores[lam] for lam in tried},
        "tv_lam_at_grid_edge": len(tried) > 1 and best in (tried[0], tried[-1]),
    }


def _part(model: nn.Module) -> Any:
    """The module holding the solver config and a learned λ: a Hybrid's stepper, else itself."""
    return getattr(model, "stepper", model)


CASES = ("heldout", "shepp_logan")


@dataclass
class Case:
    """Per case (``heldout``: the random test phantoms, ``shepp_logan``), the sinograms and true
    images on the run's device, and the first of each as numpy arrays (for the plots)."""

    sinogram: dict[str, torch.Tensor]
    image: dict[str, torch.Tensor]
    first: dict[str, tuple[np.ndarray, np.ndarray]]


def _scores(rec: Reconstruct, sinogram: torch.Tensor, true: torch.Tensor) -> dict[str, Any]:
    t0 = time.perf_counter()
    pred = rec(sinogram)
    ms = 1e3 * (time.perf_counter() - t0) / sinogram.shape[0]
    pred = torch.where(torch.isfinite(pred), pred, torch.zeros_like(pred))
    return {
        "psnr": psnr(pred, true),  # per image, (n,), kept as tensors: their means are metrics
        "ssim": ssim(pred, true),
        "ms": ms,
        "example": pred[0].double().cpu().numpy(),
    }


class CTEvaluation:
    """The evaluation hooks of ``problem=ct`` (:class:`hybridsim.problems.base.Problem`): FBP
    and TV (plain callables) beside the loaded models, PSNR and SSIM per case, the time per
    held-out image, a learned λ; TV's λ chosen on validation unless configured."""

    cfg: Any  # CTConfig
    tv_lam_chosen: float | None = None

    def tune_baselines(
        self, models: Mapping[str, nn.Module], val: SplitData, like: dict[str, Any]
    ) -> dict[str, Any]:
        """``problem.tv_lam=null``: TV's λ is the one of ``problem.tv_lam_grid`` with the best
        mean PSNR on the validation phantoms (a fair baseline: tuned on data the learned models
        were selected on, never on test)."""
        if self.cfg.tv_lam is not None:
            return {}
        chosen = choose_tv_lambda(
            self, next(iter(models.values())), val, list(self.cfg.tv_lam_grid), like
        )
        self.tv_lam_chosen = chosen["tv_lam"]
        return chosen

    def extra_models(self, models: Mapping[str, nn.Module]) -> dict[str, Reconstruct]:
        """FBP and TV with the solver's filter and cut-off (:func:`classical`)."""
        return classical(self, next(iter(models.values())))

    def eval_case(self, test: SplitData, train: SplitData, like: dict[str, Any]) -> Case:
        a = test.arrays
        keys = {
            "heldout": ("sinogram", "image"),
            "shepp_logan": ("shepp_logan_sinogram", "shepp_logan"),
        }
        return Case(
            sinogram={c: torch.as_tensor(a[s]).to(**like) for c, (s, _) in keys.items()},
            image={c: torch.as_tensor(a[i]).to(**like) for c, (_, i) in keys.items()},
            first={c: (a[i][0], a[s][0]) for c, (s, i) in keys.items()},
        )

    def predict_case(self, model: Reconstruct, case: Case) -> dict[str, Any]:
        """Per case: PSNR and SSIM per image, ms per image, the first reconstruction (finite,
        non-finite pixels as 0); and the
        learned λ (softplus of ``rho``, averaged) of a model that has one."""
        pred: dict[str, Any] = {c: _scores(model, case.sinogram[c], case.image[c]) for c in CASES}
        lam = getattr(_part(model), "rho", None)
        if lam is not None:
            pred["lambda"] = float(torch.nn.functional.softplus(lam.detach()).mean())
        return pred

    def metrics(self, pred: dict[str, Any], case: Case) -> dict[str, float]:
        held, sl = pred["heldout"], pred["shepp_logan"]
        row = {
            "psnr_heldout": float(held["psnr"].mean()),
            "ssim_heldout": float(held["ssim"].mean()),
            "psnr_shepp_logan": float(sl["psnr"][0]),
            "ssim_shepp_logan": float(sl["ssim"][0]),
            "ms_per_image": held["ms"],
        }
        if "lambda" in pred:
            row["lambda"] = pred["lambda"]
        return row

    def summarise(
        self,
        table: dict[str, dict[str, float]],
        preds: dict[str, Any],
        case: Case,
        models: Mapping[str, nn.Module],
    ) -> dict[str, Any]:
        cfg = self.cfg
        result: dict[str, Any] = {
            "data_range": "max - min of each true image (1 for Shepp-Logan)",
            "n_heldout": int(case.image["heldout"].shape[0]),
            "settings": {
                "size": cfg.size,
                "n_angles": cfg.n_angles,
                "forward_model": cfg.forward_model,
                "noise": cfg.noise,
                "tv_lam": self.tv_lam_chosen if cfg.tv_lam is None else cfg.tv_lam,
                "tv_lam_chosen_on": "config" if cfg.tv_lam is not None else "validation",
                "tv_eps": cfg.tv_eps,
                "tv_iters": cfg.tv_iters,
            },
        }
        if "hybrid" in table and "tv" in table:
            result["hybrid_over_tv_db"] = {
                c: table["hybrid"][f"psnr_{c}"] - table["tv"][f"psnr_{c}"] for c in CASES
            }
        return result

    def plots(self, preds: dict[str, Any], case: Case, result: dict[str, Any]) -> dict[str, Any]:
        """``ct_heldout.png`` and ``ct_shepp_logan.png``: each model's first reconstruction."""
        return {
            f"ct_{c}.png": _plot_grid(
                c,
                *case.first[c],
                {name: p[c]["example"] for name, p in preds.items()},
                result["table"],
                c,
            )
            for c in CASES
        }


def _plot_grid(
    title: str,
    true: np.ndarray,
    sino: np.ndarray,
    recs: dict[str, np.ndarray],
    table: dict[str, dict[str, float]],
    case: str,
) -> Figure:
    """Row 1: truth, sinogram, reconstructions; row 2: absolute error maps (shared scale)."""
    from matplotlib.figure import Figure

    names = list(recs)
    n = 2 + len(names)
    fig = Figure(figsize=(2.3 * n, 4.9), dpi=100)
    axes = fig.subplots(2, n, squeeze=False)
    lo, hi = float(true.min()), float(true.max())
    axes[0, 0].imshow(true, cmap="gray", vmin=lo, vmax=hi)
    axes[0, 0].set_title("truth", fontsize=9)
    axes[0, 1].imshow(sino, cmap="gray", aspect="auto")
    axes[0, 1].set_title("sinogram", fontsize=9)
    err_max = max(float(np.abs(r - true).max()) for r in recs.values()) or 1.0
    for j, name in enumerate(names, start=2):
        axes[0, j].imshow(recs[name], cmap="gray", vmin=lo, vmax=hi)
        row = table[name]
        axes[0, j].set_title(
            f"{name}\n{row[f'psnr_{case}']:.2f} dB, SSIM {row[f'ssim_{case}']:.3f}", fontsize=8
        )
        axes[1, j].imshow(np.abs(recs[name] - true), cmap="magma", vmin=0, vmax=err_max)
        axes[1, j].set_title(f"|error| {name}", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[1, 0].axis("off")
    axes[1, 1].axis("off")
    fig.suptitle(f"CT reconstructions: {title}")
    fig.tight_layout()
    return fig
