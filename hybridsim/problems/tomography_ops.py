"""The physics of problem=ct shared by its models and its evaluation: the normalised ray
transform of a config, the data term of its forward model, the regulariser of a solver config
and the measured line integrals."""

from __future__ import annotations

import functools

import torch

from hybridsim.numerics.radon import RayTransform, default_detector
from hybridsim.numerics.reconstruction import DataTerm, LeastSquares, PoissonLogLikelihood
from hybridsim.numerics.regularizers import DirichletEnergy, Regularizer, TotalVariation
from hybridsim.schemas import CTConfig


@functools.lru_cache(maxsize=4)
def ray_transform(
    size: int, n_angles: int, n_det: int | None, det_spacing: float | None
) -> RayTransform:
    """The normalised (``||F|| = 1``) parallel-beam operator of a config (cached: built once)."""
    if n_det is not None and det_spacing is None:
        # the default spacing of the default detector: a user-chosen n_det keeps pixel-sized bins
        det_spacing = default_detector(size, size)[1]
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
