"""Regularizers for CT reconstruction, with values and analytic gradients.

Images are ``(batch, ny, nx)`` (any leading dims); values are per sample, ``(batch,)``. The
discrete gradient ``D`` takes forward differences with Neumann boundaries (the difference out of
the last row/column is zero), so ``D^T = -div`` exactly and ``D^T D = -Laplacian`` with the
matching (reflecting) boundary; ``||D||^2 <= 8`` (Chambolle 2004).

- ``DirichletEnergy``: ``S(a) = 1/2 ||D a||^2``, ``grad S = D^T D a = -Laplacian(a)``; the
  ``S`` of Adler & Öktem (2017), whose gradient their learned scheme sees.
- ``TotalVariation``: isotropic TV smoothed by the Huber function,
  ``R(a) = sum_pixels h_eps(|D a|)``, ``h_eps(t) = t^2 / (2 eps)`` for ``t <= eps`` and
  ``t - eps / 2`` above; ``grad R = D^T (D a / max(|D a|, eps))``, Lipschitz ``8 / eps``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from hybridsim.numerics.operator import LinearOperator, register_operator


def finite_difference(a: torch.Tensor) -> torch.Tensor:
    """Forward differences ``D a``, ``(..., ny, nx) -> (..., 2, ny, nx)`` (rows: d/dy, d/dx),
    zero across the far boundary (Neumann)."""
    dy = torch.zeros_like(a)
    dx = torch.zeros_like(a)
    dy[..., :-1, :] = a[..., 1:, :] - a[..., :-1, :]
    dx[..., :, :-1] = a[..., :, 1:] - a[..., :, :-1]
    return torch.stack([dy, dx], dim=-3)


def finite_difference_adjoint(g: torch.Tensor) -> torch.Tensor:
    """Exact adjoint ``D^T g = -div g``, ``(..., 2, ny, nx) -> (..., ny, nx)``."""
    gy, gx = g[..., 0, :, :], g[..., 1, :, :]
    out = torch.zeros_like(gy)
    # D^T of a forward difference: each difference adds to its far pixel, subtracts from its near
    out[..., :-1, :] -= gy[..., :-1, :]
    out[..., 1:, :] += gy[..., :-1, :]
    out[..., :, :-1] -= gx[..., :, :-1]
    out[..., :, 1:] += gx[..., :, :-1]
    return out


def laplacian(a: torch.Tensor) -> torch.Tensor:
    """Five-point Laplacian with reflecting boundaries, ``-D^T D a``, ``(..., ny, nx)``."""
    return -finite_difference_adjoint(finite_difference(a))


class FiniteDifference(LinearOperator):
    """``D: (batch, ny, nx) -> (batch, 2, ny, nx)`` as a LinearOperator (exact adjoint)."""

    def __init__(self, shape: int | tuple[int, int]) -> None:
        self.domain_shape = (shape, shape) if isinstance(shape, int) else tuple(shape)

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return finite_difference(x)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return finite_difference_adjoint(y)


@register_operator("finite_difference")
def _small_finite_difference() -> FiniteDifference:
    return FiniteDifference((5, 7))


class Regularizer(Protocol):
    """``value(a) -> (batch,)``, ``gradient(a) -> like a``, ``lipschitz`` of the gradient."""

    lipschitz: float

    def value(self, a: torch.Tensor) -> torch.Tensor: ...

    def gradient(self, a: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class DirichletEnergy:
    """``S(a) = 1/2 ||D a||^2``; ``grad S = -Laplacian(a)`` (Adler & Öktem 2017, Sec. 4)."""

    lipschitz: float = 8.0  # ||D^T D|| <= 8 on a 2D grid

    def value(self, a: torch.Tensor) -> torch.Tensor:
        return 0.5 * finite_difference(a).square().sum(dim=(-3, -2, -1))

    def gradient(self, a: torch.Tensor) -> torch.Tensor:
        return -laplacian(a)


@dataclass(frozen=True)
class TotalVariation:
    """Huber-smoothed isotropic total variation (Rudin, Osher & Fatemi 1992; Huber 1964).

    ``eps`` is in image units: gradients smaller than ``eps`` are penalised quadratically.
    Smaller ``eps`` is closer to TV but makes the gradient stiffer (Lipschitz ``8 / eps``).
    """

    eps: float = 1e-2

    def __post_init__(self) -> None:
        if self.eps <= 0:
            raise ValueError(f"TV smoothing eps must be > 0, got {self.eps}")

    @property
    def lipschitz(self) -> float:
        return 8.0 / self.eps

    def value(self, a: torch.Tensor) -> torch.Tensor:
        sq = finite_difference(a).square().sum(dim=-3)
        # clamp inside the sqrt: the quadratic branch is used there, and sqrt'(0) would be NaN
        norm = torch.sqrt(sq.clamp_min(self.eps**2))
        huber = torch.where(sq <= self.eps**2, sq / (2 * self.eps), norm - self.eps / 2)
        return huber.sum(dim=(-2, -1))

    def gradient(self, a: torch.Tensor) -> torch.Tensor:
        g = finite_difference(a)
        norm = torch.sqrt(g.square().sum(dim=-3, keepdim=True)).clamp_min(self.eps)
        return finite_difference_adjoint(g / norm)
