"""Evaluation of CT reconstructions: PSNR and SSIM of FBP, TV-regularised descent, the solver
alone, learned gradient descent and the λ-learning variant, on the held-out random phantoms and
on the modified Shepp–Logan phantom; a figure grid per case.

PSNR and SSIM use the data range ``max − min`` of each true image (1 for Shepp–Logan).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

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
    max_extensions: int = 8,
) -> dict[str, Any]:
    """The TV weight with the best mean PSNR on the validation phantoms (the test split is never
    looked at), and the validation PSNR of every candidate tried.

    The search starts on ``grid``. The right scale of λ depends on the data term (the
    Beer-Lambert likelihood is about ``mu² i0`` times the least-squares term), so while the best
    λ is an edge of the values tried, the search goes on past that edge by factors of 10 (at most
    ``max_extensions`` steps), then refines twice between the best and its neighbours (geometric
    means); ``tv_lam_at_grid_edge`` says if the optimum is still at an edge after that."""
    like = _like(model)
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


def _like(model: nn.Module) -> dict[str, Any]:
    like = getattr(model, "like", None)
    if like is not None:  # a Hybrid
        return like
    anchor = next(iter(model.buffers()))
    return {"device": anchor.device, "dtype": anchor.dtype}


def _part(model: nn.Module) -> Any:
    """The module holding the solver config and a learned λ: a Hybrid's stepper, else itself."""
    return getattr(model, "stepper", model)


def _scores(rec: Reconstruct, sinogram: torch.Tensor, true: torch.Tensor) -> dict[str, Any]:
    with torch.no_grad():
        t0 = time.perf_counter()
        pred = rec(sinogram)
        ms = 1e3 * (time.perf_counter() - t0) / sinogram.shape[0]
    pred = torch.where(torch.isfinite(pred), pred, torch.zeros_like(pred))
    return {"pred": pred, "psnr": psnr(pred, true), "ssim": ssim(pred, true), "ms": ms}


def evaluate(
    problem: Any,  # the Tomography problem
    models: Mapping[str, nn.Module],
    test: SplitData,
    out_dir: Path,
) -> dict[str, Any]:
    ref = next(iter(models.values()))
    like = _like(ref)
    held_sino = torch.as_tensor(test.arrays["sinogram"]).to(**like)
    held_true = torch.as_tensor(test.arrays["image"]).to(**like)
    sl_sino = torch.as_tensor(test.arrays["shepp_logan_sinogram"]).to(**like)
    sl_true = torch.as_tensor(test.arrays["shepp_logan"]).to(**like)

    recons: dict[str, Reconstruct] = classical(problem, ref)  # type: ignore[arg-type]
    recons.update({name: model for name, model in models.items()})
    table: dict[str, dict[str, float]] = {}
    examples: dict[str, dict[str, np.ndarray]] = {"heldout": {}, "shepp_logan": {}}
    for name, rec in recons.items():
        held = _scores(rec, held_sino, held_true)
        sl = _scores(rec, sl_sino, sl_true)
        table[name] = {
            "psnr_heldout": float(held["psnr"].mean()),
            "ssim_heldout": float(held["ssim"].mean()),
            "psnr_shepp_logan": float(sl["psnr"][0]),
            "ssim_shepp_logan": float(sl["ssim"][0]),
            "ms_per_image": held["ms"],
        }
        lam = getattr(_part(rec), "rho", None)
        if lam is not None:
            table[name]["lambda"] = float(torch.nn.functional.softplus(lam.detach()).mean())
        examples["heldout"][name] = held["pred"][0].double().cpu().numpy()
        examples["shepp_logan"][name] = sl["pred"][0].double().cpu().numpy()
    result: dict[str, Any] = {
        "table": table,
        "data_range": "max - min of each true image (1 for Shepp-Logan)",
        "n_heldout": int(held_true.shape[0]),
        "settings": {
            "size": problem.cfg.size,
            "n_angles": problem.cfg.n_angles,
            "forward_model": problem.cfg.forward_model,
            "noise": problem.cfg.noise,
            "tv_lam": problem.tv_lam_chosen if problem.cfg.tv_lam is None else problem.cfg.tv_lam,
            "tv_lam_chosen_on": "config" if problem.cfg.tv_lam is not None else "validation",
            "tv_eps": problem.cfg.tv_eps,
            "tv_iters": problem.cfg.tv_iters,
        },
    }
    if "hybrid" in table and "tv" in table:
        result["hybrid_over_tv_db"] = {
            case: table["hybrid"][f"psnr_{case}"] - table["tv"][f"psnr_{case}"]
            for case in ("heldout", "shepp_logan")
        }
    truths = {
        "heldout": (test.arrays["image"][0], test.arrays["sinogram"][0]),
        "shepp_logan": (test.arrays["shepp_logan"][0], test.arrays["shepp_logan_sinogram"][0]),
    }
    for case, (true, sino) in truths.items():
        _plot_grid(out_dir / f"ct_{case}.png", case, true, sino, examples[case], table, case)
    return result


def _plot_grid(
    path: Path,
    title: str,
    true: np.ndarray,
    sino: np.ndarray,
    recs: dict[str, np.ndarray],
    table: dict[str, dict[str, float]],
    case: str,
) -> None:
    """Row 1: truth, sinogram, reconstructions; row 2: absolute error maps (shared scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(recs)
    n = 2 + len(names)
    fig, axes = plt.subplots(2, n, figsize=(2.3 * n, 4.9), squeeze=False)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
