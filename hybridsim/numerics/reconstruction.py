"""Forward models, data terms, one-step reconstruction solvers and image-quality metrics for CT.

Shapes: images ``a`` are ``(batch, ny, nx)``, sinograms ``(batch, n_angles, n_det)``; values of
data terms, regularizers and metrics are per sample, ``(batch,)``.

Forward models (Adler & Öktem 2017, Sec. 5):
- linear: ``sinogram = F a + e``, ``e ~ level * mean|F a| * N(0, 1)`` (``gaussian_noise``; the
  paper's 5 %), data term ``D(a) = 1/2 ||F a - sinogram||^2``, ``grad D = F^T (F a - sinogram)``;
- Beer-Lambert: photon counts ``b ~ Poisson(I0 exp(-mu F a))``, data term the Poisson negative
  log-likelihood ``D(a) = sum lambda - b log lambda`` with ``lambda = I0 exp(-mu F a)``, and
  ``grad D = mu F^T (b - lambda)``.

A solver is one step (``step(state, sinogram) -> state``); iterate it with ``rollout``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, TypeAlias

import torch
import torch.nn.functional as nnf

from hybridsim.numerics.operator import LinearOperator
from hybridsim.numerics.regularizers import Regularizer

State: TypeAlias = torch.Tensor | tuple[torch.Tensor, ...]


def _sum_image(x: torch.Tensor) -> torch.Tensor:
    return x.sum(dim=(-2, -1))


# ------------------------------------------------------------------ noise and forward models


def gaussian_noise(
    sinogram: torch.Tensor, level: float = 0.05, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``sinogram + level * mean(|sinogram|) * N(0, 1)``, the mean taken per sample (Adler &
    Öktem 2017: level 0.05). Noise is drawn on the CPU from ``generator`` so that a seed gives
    the same data on every device."""
    scale = level * sinogram.abs().mean(dim=(-2, -1), keepdim=True)
    noise = torch.randn(sinogram.shape, generator=generator, dtype=sinogram.dtype)
    return sinogram + scale * noise.to(sinogram.device)


def beer_lambert_counts(
    op: LinearOperator,
    a: torch.Tensor,
    mu: float,
    i0: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Photon counts ``b ~ Poisson(I0 exp(-mu F a))`` (``generator=None``: no noise, the
    expected counts). Adler & Öktem (2017) use ``I0 = 1e4`` and ``mu`` for water."""
    expected = i0 * torch.exp(-mu * op.A(a))
    if generator is None:
        return expected
    counts = torch.poisson(expected.detach().cpu().double(), generator=generator)
    return counts.to(dtype=a.dtype, device=a.device)


class DataTerm(Protocol):
    """``value(a, sinogram) -> (batch,)``, ``gradient(a, sinogram)``; ``lipschitz`` of it."""

    lipschitz: float

    def value(self, a: torch.Tensor, sinogram: torch.Tensor) -> torch.Tensor: ...

    def gradient(self, a: torch.Tensor, sinogram: torch.Tensor) -> torch.Tensor: ...


class LeastSquares:
    """``D(a) = 1/2 ||F a - sinogram||^2``, ``grad D = F^T (F a - sinogram)``.

    ``lipschitz = ||F||^2`` (1 for a normalised ray transform), by the power method once.
    """

    def __init__(self, op: LinearOperator, op_norm: float | None = None) -> None:
        self.op = op
        self.lipschitz = (op.norm() if op_norm is None else op_norm) ** 2

    def value(self, a: torch.Tensor, sinogram: torch.Tensor) -> torch.Tensor:
        return 0.5 * _sum_image((self.op.A(a) - sinogram).square())

    def gradient(self, a: torch.Tensor, sinogram: torch.Tensor) -> torch.Tensor:
        return self.op.A_adjoint(self.op.A(a) - sinogram)


class PoissonLogLikelihood:
    """Beer-Lambert data term ``D(a) = sum_rays lambda - b log lambda``, ``lambda = I0 exp(-mu
    F a)``, for photon counts ``b`` (passed as ``sinogram``); ``grad D = mu F^T (b - lambda)``.

    Equals the Kullback-Leibler divergence ``KL(b, lambda)`` up to a constant in ``a``.
    ``lipschitz = mu^2 I0 ||F||^2`` holds where ``F a >= 0`` (then ``lambda <= I0``).
    """

    def __init__(self, op: LinearOperator, mu: float, i0: float, op_norm: float | None = None):
        if mu <= 0 or i0 <= 0:
            raise ValueError(f"Beer-Lambert needs mu > 0 and i0 > 0, got mu={mu}, i0={i0}")
        self.op, self.mu, self.i0 = op, mu, i0
        self.lipschitz = mu**2 * i0 * (op.norm() if op_norm is None else op_norm) ** 2

    def value(self, a: torch.Tensor, sinogram: torch.Tensor) -> torch.Tensor:
        log_lam = math.log(self.i0) - self.mu * self.op.A(a)  # exact, no log of an exp
        return _sum_image(torch.exp(log_lam) - sinogram * log_lam)

    def gradient(self, a: torch.Tensor, sinogram: torch.Tensor) -> torch.Tensor:
        lam = self.i0 * torch.exp(-self.mu * self.op.A(a))
        return self.mu * self.op.A_adjoint(sinogram - lam)


# ------------------------------------------------------------------ one-step solvers


def data_and_regularizer_gradients(
    a: torch.Tensor, sinogram: torch.Tensor, data: DataTerm, regularizer: Regularizer | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad D(a), grad R(a))`` separately: the learned gradient scheme takes both as network
    inputs (Adler & Öktem 2017, Alg. 2). ``grad R`` is zeros without a regularizer."""
    grad_d = data.gradient(a, sinogram)  # first: the autograd graph's order is part of the
    # floating-point result of a backward pass through it (contributions summed in that order)
    return grad_d, torch.zeros_like(a) if regularizer is None else regularizer.gradient(a)


def descent_update(
    z: torch.Tensor,
    grad_d: torch.Tensor,
    grad_r: torch.Tensor,
    step: float,
    lam: float | torch.Tensor,
) -> torch.Tensor:
    """One descent step on ``D + lam R`` from ``z``: ``z - s (grad D(z) + lam grad R(z))`` (the
    step of :class:`GradientDescent`, :class:`AcceleratedGradientDescent` and the learned
    iterations of ``problem=ct``)."""
    return z - step * (grad_d + lam * grad_r)


def nesterov_extrapolation(
    a: torch.Tensor, a_prev: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """FISTA's extrapolated point and next momentum parameter (Beck & Teboulle 2009, eq.
    4.2-4.3): ``t_next = (1 + sqrt(1 + 4 t^2)) / 2``, ``z = a + (t - 1) / t_next (a - a_prev)``;
    ``t`` is ``(batch,)``, images ``(batch, ny, nx)``."""
    t_next = 0.5 * (1 + torch.sqrt(1 + 4 * t * t))
    return a + ((t - 1) / t_next)[..., None, None] * (a - a_prev), t_next


def default_step_size(data: DataTerm, regularizer: Regularizer | None, lam: float) -> float:
    """``1 / (L_D + lam L_R)``, the classical safe step for a smooth objective."""
    l_reg = 0.0 if regularizer is None else lam * regularizer.lipschitz
    return 1.0 / (data.lipschitz + l_reg)


@dataclass(frozen=True)
class GradientDescent:
    """One step ``a <- a - s (grad D(a) + lam grad R(a))``, then ``max(a, 0)`` if
    ``nonnegative`` (projected gradient). ``step_size=None``: ``1 / (L_D + lam L_R)``.

    State: the image ``(batch, ny, nx)``.
    """

    data: DataTerm
    regularizer: Regularizer | None = None
    lam: float = 0.0
    step_size: float | None = None
    nonnegative: bool = False

    @property
    def s(self) -> float:
        if self.step_size is not None:
            return self.step_size
        return default_step_size(self.data, self.regularizer, self.lam)

    def init(self, a0: torch.Tensor) -> torch.Tensor:
        return a0

    def objective(self, a: torch.Tensor, sinogram: torch.Tensor) -> torch.Tensor:
        """``D(a) + lam R(a)``, ``(batch,)``."""
        value = self.data.value(a, sinogram)
        if self.regularizer is not None and self.lam != 0:
            value = value + self.lam * self.regularizer.value(a)
        return value

    def direction(self, a: torch.Tensor, sinogram: torch.Tensor) -> torch.Tensor:
        grad_d, grad_r = data_and_regularizer_gradients(a, sinogram, self.data, self.regularizer)
        return grad_d + self.lam * grad_r

    def step(self, a: torch.Tensor, sinogram: torch.Tensor) -> torch.Tensor:
        grad_d, grad_r = data_and_regularizer_gradients(a, sinogram, self.data, self.regularizer)
        a = descent_update(a, grad_d, grad_r, self.s, self.lam)
        return a.clamp_min(0) if self.nonnegative else a


@dataclass(frozen=True)
class AcceleratedGradientDescent(GradientDescent):
    """Nesterov's accelerated gradient / FISTA for the smooth objective ``D + lam R`` (Nesterov
    1983; Beck & Teboulle 2009, eq. 4.1-4.3), one step per call:

        z = a + (t_prev - 1) / t * (a - a_prev),  a_next = z - s grad(z),
        t_next = (1 + sqrt(1 + 4 t^2)) / 2.

    State: ``(a, a_prev, t)`` with ``t`` of shape ``(batch,)``; ``init(a0) = (a0, a0, 1)``.
    The momentum is in the state so that rollouts (and checkpointing) see it.
    """

    def init(self, a0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = torch.ones(a0.shape[:-2], dtype=a0.dtype, device=a0.device)
        return a0, a0, t

    def step(  # type: ignore[override]
        self, state: tuple[torch.Tensor, torch.Tensor, torch.Tensor], sinogram: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, a_prev, t = state
        z, t_next = nesterov_extrapolation(a, a_prev, t)
        grad_d, grad_r = data_and_regularizer_gradients(z, sinogram, self.data, self.regularizer)
        a_next = descent_update(z, grad_d, grad_r, self.s, self.lam)
        if self.nonnegative:
            a_next = a_next.clamp_min(0)
        return a_next, a, t_next


# ------------------------------------------------------------------ metrics


def psnr(
    x: torch.Tensor, x_true: torch.Tensor, data_range: float | torch.Tensor | None = None
) -> torch.Tensor:
    """Peak signal-to-noise ratio ``10 log10(range^2 / mse)`` in dB, ``(batch,)``.

    ``data_range=None`` uses ``max - min`` of each true image (1 for the modified Shepp-Logan
    phantom); PSNRs are only comparable at the same range, so state it.
    """
    if data_range is None:
        data_range = x_true.amax(dim=(-2, -1)) - x_true.amin(dim=(-2, -1))
    mse = (x - x_true).square().mean(dim=(-2, -1))
    return 10 * torch.log10(torch.as_tensor(data_range, dtype=mse.dtype) ** 2 / mse)


def _gaussian_window(sigma: float, radius: int, like: torch.Tensor) -> torch.Tensor:
    k = torch.arange(-radius, radius + 1, dtype=like.dtype, device=like.device)
    w = torch.exp(-0.5 * (k / sigma) ** 2)
    return w / w.sum()


def ssim(
    x: torch.Tensor,
    x_true: torch.Tensor,
    data_range: float | torch.Tensor | None = None,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) with an 11-tap Gaussian window (sigma 1.5),
    averaged over the valid region, ``(batch,)``; matches ``skimage.metrics.
    structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.
    ``data_range=None`` uses ``max - min`` of each true image. Differentiable.
    """
    if data_range is None:
        data_range = x_true.amax(dim=(-2, -1)) - x_true.amin(dim=(-2, -1))
    lead = x.shape[:-2]
    x = x.reshape(-1, 1, *x.shape[-2:])
    y = x_true.reshape(-1, 1, *x_true.shape[-2:]).to(x)
    radius = int(3.5 * sigma + 0.5)  # scipy's gaussian_filter with skimage's truncate=3.5
    w = _gaussian_window(sigma, radius, x)

    def blur(z: torch.Tensor) -> torch.Tensor:  # separable, valid region only
        z = nnf.conv2d(z, w.view(1, 1, -1, 1))
        return nnf.conv2d(z, w.view(1, 1, 1, -1))

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    r = torch.as_tensor(data_range, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
    c1, c2 = (k1 * r) ** 2, (k2 * r) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return s.mean(dim=(-3, -2, -1)).reshape(lead)
