"""1D viscous Burgers, periodic: smooth random data, a spectral reference, a coarse FV step.

    u_t + (u^2 / 2)_x = nu u_xx,    x in [0, L) periodic,    nu > 0 (units: length^2 / time)

the corrected-stepper case of APEBench (Koehler et al., NeurIPS 2024) and exponax. Three pieces:

- :func:`random_initial_conditions`: a few low Fourier modes with random amplitudes and phases,
  scaled so that ``sum_k |a_k| = amplitude``; hence ``max |u0| <= amplitude`` and, by the maximum
  principle of viscous Burgers, ``max |u(t)| <= amplitude`` for all t (a CFL bound known up front).
- :class:`SpectralBurgers` / :func:`reference_trajectory`: Fourier pseudo-spectral in space with
  2/3-rule dealiasing, ETDRK4 in time (Cox & Matthews, 2002) with the phi functions evaluated by
  the contour integral of Kassam & Trefethen (2005, eq. 2.5 and section 5). Unknowns are point
  values on ``x_j = j L / N``. The mean (mode 0) is conserved exactly; the dealiased nonlinear
  term conserves the energy, so energy only decays by viscosity.
- :class:`~hybridsim.numerics.burgers_fv.CoarseBurgers` (its own module): a finite-volume step
  on cell averages over ``[i h, (i + 1) h]``, ``h = L / n``: MUSCL reconstruction with a slope
  limiter (van Leer, 1979), a Rusanov (local Lax–Friedrichs) or Godunov numerical flux, central
  second-order diffusion and SSP-RK3 in time (Shu & Osher, 1988). Mass is conserved to round-off
  (fluxes telescope).

Fine -> coarse: the reference is restricted to the coarse grid by **exact cell averages** of the
spectral (trigonometric) interpolant (:func:`cell_average`), because the finite-volume unknowns
are cell averages: the reference then carries the coarse solver's own meaning of its unknowns
(a spectral truncation would be a point-value/low-pass quantity that differs from the cell
average at second order, an error no coarse scheme could remove). Cell averages also keep the
mean exactly, so coarse and reference mass agree to round-off.

Shapes: states are ``(batch, n)`` tensors; ``nu`` is a float or a ``(batch,)`` tensor (one
viscosity per sample). Everything is plain torch (float32 or float64, any device) and
differentiable: ``CoarseBurgers.step`` is backpropagated through for solver-in-the-loop
training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BurgersDefaults:
    """CPU-sized defaults, measured in docs/burgers-numerics.md (domain [0, 2 pi)).

    ``n_coarse`` cells against ``n_fine`` spectral points (32x; the reference is accurate to
    ~1e-8 at nu >= 0.008), ``dt`` per saved frame and per coarse step (Courant number
    ``amplitude dt / h`` = 0.25), ``n_steps`` frames of rollout (t = 5). The coarse scheme is
    first-order Rusanov: its numerical viscosity ``~ |u| h / 2 ~ 0.1`` exceeds the physical one,
    giving a 10-25 % relative L2 error at 100 steps for every viscosity (MUSCL/van Leer: 1-7 %,
    too little for a correction to show). Training viscosities ``nu_train``; the test ones lie
    between and outside them (unseen). ``amplitude`` bounds ``max |u|``
    (:func:`random_initial_conditions`), ``k_max`` is the highest initial wavenumber.
    """

    length: float = 2 * math.pi
    n_coarse: int = 32
    n_fine: int = 1024
    dt: float = 0.05
    n_steps: int = 100
    amplitude: float = 1.0
    k_max: int = 5
    limiter: str = "first_order"
    flux: str = "rusanov"
    nu_train: tuple[float, ...] = (0.01, 0.02, 0.03, 0.04, 0.05)
    nu_test: tuple[float, ...] = (0.008, 0.015, 0.035, 0.07)


DEFAULTS = BurgersDefaults()


def as_viscosity(nu: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``nu`` as a ``(batch, 1)`` tensor on ``like``'s dtype/device; must be positive, finite."""
    nu_t = torch.as_tensor(nu, dtype=like.dtype, device=like.device)
    if nu_t.dim() == 0:
        nu_t = nu_t.expand(like.shape[0])
    if nu_t.shape != (like.shape[0],):
        raise ValueError(
            f"viscosity needs one value or one per sample: got shape {tuple(nu_t.shape)} "
            f"for a batch of {like.shape[0]}"
        )
    values = nu_t.detach()
    if not bool(torch.isfinite(values).all()) or not bool((values > 0).all()):
        raise ValueError(f"viscosity must be positive and finite, got {values.tolist()}")
    return nu_t.unsqueeze(-1)


def _complex(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def check_state(u: torch.Tensor, n: int, what: str) -> None:
    if u.dim() != 2 or u.shape[-1] != n:
        raise ValueError(f"{what} must have shape (batch, {n}), got {tuple(u.shape)}")


def wavenumbers(n: int, length: float = 2 * math.pi, **like) -> torch.Tensor:
    """Angular wavenumbers ``k_m = 2 pi m / L``, ``m = 0 .. n//2`` (rfft layout): ``(n//2+1,)``."""
    return 2 * math.pi / length * torch.arange(n // 2 + 1, **like)


def grid_points(n: int, length: float = 2 * math.pi, **like) -> torch.Tensor:
    """Spectral collocation points ``x_j = j L / n``, ``(n,)``."""
    return torch.arange(n, **like) * (length / n)


def cell_centers(n: int, length: float = 2 * math.pi, **like) -> torch.Tensor:
    """Centres ``(i + 1/2) L / n`` of the finite-volume cells ``[i h, (i + 1) h]``, ``(n,)``."""
    return (torch.arange(n, **like) + 0.5) * (length / n)


def random_initial_conditions(
    batch: int,
    n: int,
    gen: torch.Generator,
    *,
    k_max: int = DEFAULTS.k_max,
    amplitude: float = DEFAULTS.amplitude,
    length: float = DEFAULTS.length,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Smooth zero-mean periodic initial conditions, point values on ``x_j = j L / n``.

        u0(x) = sum_{m=1}^{k_max} a_m sin(2 pi m x / L + phi_m),
        a_m ~ U(-1, 1), phi_m ~ U(0, 2 pi), rescaled so that sum_m |a_m| = amplitude

    so ``max_x |u0| <= amplitude`` on any grid (and for all t under viscous Burgers). The draw
    happens on the CPU in float64 from ``gen`` and is then cast, so the same seed gives the same
    function on every device, dtype and ``n`` (sample it on the fine grid for the reference).

    Returns:
        ``(batch, n)``.
    """
    if batch < 1 or n < 1:
        raise ValueError(f"batch and n must be >= 1, got batch={batch}, n={n}")
    if k_max < 1 or 2 * k_max >= n:
        raise ValueError(f"k_max must be in [1, n/2) to be resolved on n={n} points, got {k_max}")
    if not (amplitude > 0 and math.isfinite(amplitude)):
        raise ValueError(f"amplitude must be positive and finite, got {amplitude}")
    a = 2 * torch.rand(batch, k_max, generator=gen, dtype=torch.float64) - 1
    phi = 2 * math.pi * torch.rand(batch, k_max, generator=gen, dtype=torch.float64)
    a = amplitude * a / a.abs().sum(-1, keepdim=True)
    m = torch.arange(1, k_max + 1, dtype=torch.float64)
    x = grid_points(n, length, dtype=torch.float64)
    arg = 2 * math.pi / length * m.view(1, -1, 1) * x.view(1, 1, -1) + phi.unsqueeze(-1)
    u0 = (a.unsqueeze(-1) * torch.sin(arg)).sum(1)
    return u0.to(dtype=dtype, device=device)


def fourier_resample(u: torch.Tensor, n: int) -> torch.Tensor:
    """Trigonometric resampling of point values ``(batch, n0)`` onto ``n`` points: ``(batch, n)``.

    Refining zero-pads the spectrum, coarsening truncates it (modes ``|m| >= n / 2`` dropped); the
    Nyquist mode of an even grid is split/merged symmetrically, so a real signal stays real. Exact
    for data band-limited below ``min(n0, n) / 2``.
    """
    n0 = u.shape[-1]
    if n < 2:
        raise ValueError(f"fourier_resample needs n >= 2, got {n}")
    if n == n0:
        return u
    u_hat = torch.fft.rfft(u, dim=-1)
    if n > n0 and n0 % 2 == 0:
        u_hat = torch.cat([u_hat[..., :-1], 0.5 * u_hat[..., -1:]], dim=-1)
    if n < n0:
        u_hat = u_hat[..., : n // 2 + 1]
        if n % 2 == 0:
            u_hat = torch.cat([u_hat[..., :-1], 2 * u_hat[..., -1:].real.to(u_hat)], dim=-1)
    return torch.fft.irfft(u_hat, n=n, dim=-1) * (n / n0)


def cell_average(u: torch.Tensor, n_coarse: int, length: float = 2 * math.pi) -> torch.Tensor:
    """Exact averages of the trigonometric interpolant of ``u`` over the cells of a coarse grid.

    ``u``: point values ``(batch, N)`` on ``x_j = j L / N``; returns ``(batch, n_coarse)``, the
    averages over ``[i h, (i + 1) h]``, ``h = L / n_coarse`` (``N`` a multiple of ``n_coarse``):

        <u>_i = sum_k u_hat_k e^{i k x_i} (e^{i k h} - 1) / (i k h),    x_i = i h

    The Nyquist mode of the fine grid (not a well-defined function) is dropped; a resolved
    reference has none. The mean is preserved exactly.
    """
    n_fine = u.shape[-1]
    if n_coarse < 1 or n_fine % n_coarse:
        raise ValueError(f"the fine grid ({n_fine}) must be a multiple of n_coarse ({n_coarse})")
    h = length / n_coarse
    k = wavenumbers(n_fine, length, dtype=torch.float64, device=u.device)
    kh = k * h
    safe = torch.where(kh == 0, torch.ones_like(kh), kh)
    factor = torch.where(
        kh == 0,
        torch.ones_like(kh, dtype=torch.complex128),
        (torch.exp(1j * kh) - 1) / (1j * safe),
    )
    if n_fine % 2 == 0:
        factor[-1] = 0
    u_hat = torch.fft.rfft(u, dim=-1) * factor.to(_complex(u.dtype))
    return torch.fft.irfft(u_hat, n=n_fine, dim=-1)[..., :: n_fine // n_coarse]


def energy(u: torch.Tensor, length: float = 2 * math.pi) -> torch.Tensor:
    """``E = 1/2 int u^2 dx`` by the rectangle rule on a periodic grid, ``(batch,)``.

    Exact for point values of a trigonometric polynomial of degree < n/2; for cell averages it is
    the discrete energy of the finite-volume scheme."""
    return 0.5 * u.pow(2).sum(-1) * (length / u.shape[-1])


# --------------------------------------------------------------------------- spectral reference


def _etdrk4_coefficients(lin: torch.Tensor, h: float, n_contour: int = 64) -> tuple:
    """ETDRK4 coefficients for the diagonal linear part ``lin`` (real, <= 0), step ``h``.

    Kassam & Trefethen (2005), eq. (2.5) for ``f1, f2, f3`` (their alpha, beta, gamma) and the
    half-step ``Q = h phi_1(h L / 2) / 2``, each averaged over ``n_contour`` points on a unit
    circle around ``h L`` so that the cancellation at ``h L -> 0`` never happens. Computed in
    float64; ``lin`` of any shape.
    """
    hl = (h * lin).to(torch.float64)
    root = torch.exp(
        1j * math.pi * (torch.arange(1, n_contour + 1, dtype=torch.float64) - 0.5) / n_contour
    ).to(hl.device)
    # the upper half circle; the real part of the mean is the mean over the full circle for real hl
    z = hl.unsqueeze(-1) + root
    ez = torch.exp(z)
    q = h * torch.mean((torch.exp(z / 2) - 1) / z, dim=-1).real
    f1 = h * torch.mean((-4 - z + ez * (4 - 3 * z + z**2)) / z**3, dim=-1).real
    f2 = h * torch.mean((2 + z + ez * (z - 2)) / z**3, dim=-1).real
    f3 = h * torch.mean((-4 - 3 * z - z**2 + ez * (4 - z)) / z**3, dim=-1).real
    return torch.exp(hl), torch.exp(hl / 2), q, f1, f2, f3


class SpectralBurgers:
    """Fourier pseudo-spectral Burgers with 2/3 dealiasing and ETDRK4 time stepping.

    In Fourier space (``v = rfft(u)``, ``k = 2 pi m / L``)

        dv/dt = -nu k^2 v + N(v),    N(v) = -(i k / 2) D rfft(irfft(v)^2)

    with the dealiasing mask ``D`` keeping ``|m| < n / 3`` (Orszag's 2/3 rule). ETDRK4 treats the
    stiff linear part exactly, so the step is limited only by the explicit nonlinear term:
    ``max|u| dt / dx`` of order one for stability, smaller for accuracy (4th order in dt).
    Unknowns: point values ``(batch, n)`` on ``x_j = j L / n``.
    """

    order = 4

    def __init__(self, n: int, length: float = 2 * math.pi) -> None:
        if n < 4 or n % 2:
            raise ValueError(f"the spectral grid needs an even n >= 4, got {n}")
        self.n, self.length = n, length

    def _tables(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = wavenumbers(self.n, self.length, dtype=torch.float64, device=like.device)
        mask = (torch.arange(self.n // 2 + 1, device=like.device) < self.n / 3).to(torch.float64)
        return k, mask

    def coefficients(self, nu: float | torch.Tensor, dt: float, like: torch.Tensor) -> tuple:
        """Per-sample ETDRK4 coefficients ``(E, E2, Q, f1, f2, f3)``, each ``(batch, n//2+1)``."""
        k, _ = self._tables(like)
        nu_t = as_viscosity(nu, like).to(torch.float64)
        coeffs = _etdrk4_coefficients(-nu_t * k**2, dt)
        return tuple(c.to(like.dtype) for c in coeffs)

    def advance(self, u: torch.Tensor, coeffs: tuple, n_steps: int) -> torch.Tensor:
        """``n_steps`` ETDRK4 steps with precomputed :meth:`coefficients`; ``(batch, n)``."""
        check_state(u, self.n, "spectral state")
        k, mask = self._tables(u)
        # -(i k / 2) D, as a complex multiplier in the state's precision
        ctype = _complex(u.dtype)
        g = (-0.5j * k * mask).to(ctype)
        e, e2, q, f1, f2, f3 = coeffs

        def nonlinear(v: torch.Tensor) -> torch.Tensor:
            return g * torch.fft.rfft(torch.fft.irfft(v, n=self.n).pow(2))

        v = torch.fft.rfft(u) * mask.to(ctype)
        for _ in range(n_steps):
            nv = nonlinear(v)
            a = e2 * v + q * nv
            na = nonlinear(a)
            b = e2 * v + q * na
            nb = nonlinear(b)
            c = e2 * a + q * (2 * nb - nv)
            nc = nonlinear(c)
            v = e * v + nv * f1 + 2 * (na + nb) * f2 + nc * f3
        return torch.fft.irfft(v, n=self.n)

    def step(self, u: torch.Tensor, nu: float | torch.Tensor, dt: float) -> torch.Tensor:
        """One ETDRK4 step of size ``dt``; ``u`` ``(batch, n)`` point values. Modes with
        ``|m| >= n / 3`` of ``u`` are removed first (they are outside the dealiased space)."""
        return self.advance(u, self.coefficients(nu, dt, u), 1)


def reference_substeps(
    amplitude: float, dt: float, n_fine: int, length: float = 2 * math.pi, courant: float = 0.2
) -> int:
    """Fine ETDRK4 steps per ``dt`` so that ``amplitude * (dt / substeps) / dx_fine <= courant``.

    ``amplitude`` bounds ``max |u|`` (maximum principle). At the default 0.2 the time error of a
    default rollout is ~1e-11 (max over 100 frames, docs/burgers-numerics.md)."""
    if not (amplitude > 0 and dt > 0 and courant > 0):
        raise ValueError(
            f"amplitude, dt and courant must be positive, got {amplitude}, {dt}, {courant}"
        )
    return max(1, math.ceil(amplitude * dt / (length / n_fine) / courant))


def reference_trajectory(
    u0: torch.Tensor,
    nu: float | torch.Tensor,
    dt: float,
    n_steps: int,
    n_fine: int = DEFAULTS.n_fine,
    *,
    n_coarse: int | None = None,
    substeps: int | None = None,
    u_max: float | None = None,
    length: float = 2 * math.pi,
) -> torch.Tensor:
    """The spectral reference, saved every ``dt`` and restricted to the coarse grid.

    Args:
        u0: initial point values ``(batch, n0)`` on ``x_j = j L / n0``, band-limited below
            ``n0 / 2`` (e.g. :func:`random_initial_conditions` with any ``n0 <= n_fine``); they are
            Fourier-resampled onto ``n_fine`` points.
        nu: viscosity, a float or ``(batch,)``.
        dt: time between saved frames (the coarse step).
        n_steps: number of saved steps after the initial frame.
        n_fine: spectral resolution (even).
        n_coarse: if given, every frame is restricted to ``n_coarse`` exact cell averages
            (:func:`cell_average`, ``n_fine`` a multiple of ``n_coarse``); else fine point values.
        substeps: fine ETDRK4 steps per ``dt``; default :func:`reference_substeps` with
            ``u_max``.
        u_max: a bound on ``max |u|`` (by the maximum principle, on ``max |u0|``), e.g. the
            ``amplitude`` of :func:`random_initial_conditions`; default ``max |u0|`` over the
            batch. Pass it when a sample's data must not depend on the rest of its batch (the
            fine step would otherwise follow the batch's largest amplitude).
    Returns:
        ``(batch, n_steps + 1, n_coarse or n_fine)``, frame 0 the (restricted) initial state.
        No gradient is tracked (the reference is data).
    """
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    if not (dt > 0 and math.isfinite(dt)):
        raise ValueError(f"dt must be positive and finite, got {dt}")
    if u0.dim() != 2:
        raise ValueError(f"u0 must have shape (batch, n), got {tuple(u0.shape)}")
    fine = SpectralBurgers(n_fine, length)
    with torch.no_grad():
        u = fourier_resample(u0, n_fine)
        peak = float(u.abs().max())
        if u_max is not None and peak > u_max * (1 + 1e-6):
            raise ValueError(f"u0 exceeds u_max: max|u0| = {peak:.4g} > {u_max:g}")
        if substeps is None:
            substeps = reference_substeps(u_max or peak or 1.0, dt, n_fine, length)
        if substeps < 1:
            raise ValueError(f"substeps must be >= 1, got {substeps}")
        coeffs = fine.coefficients(nu, dt / substeps, u)

        def restrict(v: torch.Tensor) -> torch.Tensor:
            return v if n_coarse is None else cell_average(v, n_coarse, length)

        frames = [restrict(u)]
        for _ in range(n_steps):
            u = fine.advance(u, coeffs, substeps)
            frames.append(restrict(u))
    return torch.stack(frames, dim=1)


def relative_l2(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``||pred - ref||_2 / ||ref||_2`` over the last dim; ``(...)`` (per sample and frame)."""
    return torch.linalg.vector_norm(pred - ref, dim=-1) / torch.linalg.vector_norm(ref, dim=-1)
