"""Ellipse phantoms: the modified Shepp-Logan phantom and random-ellipse training images.

An ellipse is a row ``(value, a, b, x0, y0, phi)`` in normalised coordinates: the image spans
``[-1, 1]^2`` (``x`` to the right, ``y`` up, as in ``radon.py``), ``a`` and ``b`` are the
half-axes along ``x`` and ``y`` before rotating by ``phi`` (radians, counter-clockwise) about the
centre ``(x0, y0)``. Values of overlapping ellipses add (as ODL's ``ellipsoid_phantom``).

Images are ``(batch, ny, nx)`` tensors; rendering averages ``supersample^2`` points per pixel.
``ellipse_sinogram`` gives the exact ray transform of the same ellipses, and
``simulate_sinogram`` measures a phantom rendered on a finer grid, both to avoid the "inverse
crime" of simulating data with the operator used to reconstruct.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from hybridsim.numerics.radon import RayTransform

# Toft's modified Shepp-Logan intensities (Toft 1996; MATLAB's phantom('Modified Shepp-Logan')).
_SHEPP_LOGAN = (
    (1.0, 0.69, 0.92, 0.0, 0.0, 0.0),
    (-0.8, 0.6624, 0.8740, 0.0, -0.0184, 0.0),
    (-0.2, 0.1100, 0.3100, 0.22, 0.0, -18.0),
    (-0.2, 0.1600, 0.4100, -0.22, 0.0, 18.0),
    (0.1, 0.2100, 0.2500, 0.0, 0.35, 0.0),
    (0.1, 0.0460, 0.0460, 0.0, 0.1, 0.0),
    (0.1, 0.0460, 0.0460, 0.0, -0.1, 0.0),
    (0.1, 0.0460, 0.0230, -0.08, -0.605, 0.0),
    (0.1, 0.0230, 0.0230, 0.0, -0.606, 0.0),
    (0.1, 0.0230, 0.0460, 0.06, -0.605, 0.0),
)


def shepp_logan_ellipses() -> torch.Tensor:
    """The ten ellipses of the modified Shepp-Logan phantom, ``(10, 6)`` float64, phi in rad."""
    e = torch.tensor(_SHEPP_LOGAN, dtype=torch.float64)
    e[:, 5] = torch.deg2rad(e[:, 5])
    return e


def random_ellipses(
    n_mean: float = 100.0, generator: np.random.Generator | torch.Generator | None = None
) -> torch.Tensor:
    """Ellipses of one random phantom (Adler & Öktem 2017, their training data), ``(n, 6)``.

    ``n ~ Poisson(n_mean)``; value ``(U - 0.3) Exp(0.3)``; half-axes ``0.2 Exp(1)``; centre
    ``U - 0.5`` per coordinate; angle ``2 pi U`` (``U`` uniform on [0, 1), ``Exp(scale)``).
    Draws from a numpy ``Generator`` or a ``torch.Generator`` (each seeded by the caller).
    """
    if isinstance(generator, torch.Generator):
        n = int(torch.poisson(torch.tensor([float(n_mean)]), generator=generator).item())
        u = torch.rand((n, 6), generator=generator, dtype=torch.float64)
        # Exp(1) by inversion so the torch path needs only the generator's uniforms.
        exp = -torch.log1p(-torch.rand((n, 3), generator=generator, dtype=torch.float64))
        value = (u[:, 0] - 0.3) * 0.3 * exp[:, 0]
        axes = 0.2 * exp[:, 1:]
        centre = u[:, 1:3] - 0.5
        phi = 2 * math.pi * u[:, 3]
        return torch.cat([value[:, None], axes, centre, phi[:, None]], dim=1)
    rng = generator if generator is not None else np.random.default_rng()
    n = int(rng.poisson(n_mean))
    value = (rng.random(n) - 0.3) * rng.exponential(0.3, n)
    axes = 0.2 * rng.exponential(1.0, (n, 2))
    centre = rng.random((n, 2)) - 0.5
    phi = 2 * math.pi * rng.random(n)
    return torch.from_numpy(np.column_stack([value, axes, centre, phi]))


def render_ellipses(
    ellipses: torch.Tensor,
    shape: int | tuple[int, int],
    supersample: int = 1,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Render ``(n, 6)`` ellipses to one ``(ny, nx)`` image, each pixel the mean over a
    ``supersample x supersample`` grid of points inside it."""
    ny, nx = (shape, shape) if isinstance(shape, int) else tuple(shape)
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    e = ellipses.to(dtype=torch.float64, device=device)
    # sub-pixel point centres in normalised coordinates, row 0 on top (y = +1)
    sub = (torch.arange(supersample, dtype=torch.float64, device=device) + 0.5) / supersample
    x = (
        (torch.arange(nx, dtype=torch.float64, device=device)[:, None] + sub) / nx * 2 - 1
    ).reshape(-1)
    y = (
        1 - (torch.arange(ny, dtype=torch.float64, device=device)[:, None] + sub) / ny * 2
    ).reshape(-1)
    image = torch.zeros(ny * supersample, nx * supersample, dtype=torch.float64, device=device)
    yy, xx = y[:, None], x[None, :]
    for value, a, b, x0, y0, phi in e.tolist():
        c, s = math.cos(phi), math.sin(phi)
        u = ((xx - x0) * c + (yy - y0) * s) / a
        v = (-(xx - x0) * s + (yy - y0) * c) / b
        image += value * (u * u + v * v <= 1).to(torch.float64)  # a bool times a float is float32
    image = image.reshape(ny, supersample, nx, supersample).mean(dim=(1, 3))
    return image.to(dtype)


def shepp_logan(
    shape: int | tuple[int, int] = 128,
    supersample: int = 1,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Modified Shepp-Logan phantom, ``(1, ny, nx)``, values in [0, 1] (Toft's intensities)."""
    return render_ellipses(shepp_logan_ellipses(), shape, supersample, dtype, device)[None]


def random_phantoms(
    batch: int,
    shape: int | tuple[int, int] = 128,
    generator: np.random.Generator | torch.Generator | None = None,
    n_mean: float = 100.0,
    supersample: int = 1,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``(batch, ny, nx)`` random-ellipse phantoms (see ``random_ellipses``); deterministic
    given the generator's seed."""
    images = [
        render_ellipses(random_ellipses(n_mean, generator), shape, supersample, dtype, device)
        for _ in range(batch)
    ]
    return torch.stack(images)


def random_ellipses_batch(batch: int, n_mean: float, generator: torch.Generator) -> torch.Tensor:
    """Ellipses of ``batch`` random phantoms at once (the distribution of ``random_ellipses``),
    ``(batch, n_max, 6)``; phantom ``i`` has ``n_i ~ Poisson(n_mean)`` ellipses and its rows
    past ``n_i`` are zero (value 0: they draw nothing). All draws come from ``generator`` in a
    fixed order (counts, then uniforms, then exponentials), so the phantoms are a function of
    its state alone: a training stream drawn from it resumes bit for bit from a saved state.
    """
    counts = torch.poisson(
        torch.full((batch,), float(n_mean), dtype=torch.float64), generator=generator
    ).long()
    n_max = max(int(counts.max()), 1) if batch else 1
    u = torch.rand((batch, n_max, 4), generator=generator, dtype=torch.float64)
    exp = -torch.log1p(-torch.rand((batch, n_max, 3), generator=generator, dtype=torch.float64))
    value = (u[..., 0] - 0.3) * 0.3 * exp[..., 0]
    value = value * (torch.arange(n_max)[None] < counts[:, None])
    axes = 0.2 * exp[..., 1:].clamp_min(1e-12)  # never a zero half-axis (a division below)
    return torch.cat([value[..., None], axes, u[..., 1:3] - 0.5, 2 * math.pi * u[..., 3:4]], dim=-1)


def render_ellipses_batch(
    ellipses: torch.Tensor,
    shape: int | tuple[int, int],
    dtype: torch.dtype = torch.float32,
    chunk: int = 16,
) -> torch.Tensor:
    """Render ``(batch, n, 6)`` ellipses (rows of value 0 draw nothing) to ``(batch, ny, nx)``
    images sampled at the pixel centres, as ``render_ellipses`` with ``supersample=1``.
    Computed in float64 on ``ellipses``' device, returned in ``dtype``; memory ``4 batch·ny·nx``.

    Vectorised over the batch, one ellipse index at a time into preallocated buffers, so every
    pass stays in cache (a ``batch x chunk`` block of whole images does not). The values are a
    fixed sum: the ellipses of each ``chunk`` are added in order, then the chunk to the image,
    the same on every machine (no BLAS kernel picks the order).
    """
    ny, nx = (shape, shape) if isinstance(shape, int) else tuple(shape)
    e = ellipses.to(torch.float64)
    dev, (nb, n) = e.device, e.shape[:2]
    x = ((torch.arange(nx, dtype=torch.float64, device=dev) + 0.5) / nx * 2 - 1)[None, :]
    y = (1 - (torch.arange(ny, dtype=torch.float64, device=dev) + 0.5) / ny * 2)[:, None]
    # ellipse index first: each (batch, ...) slice below is contiguous
    value, a, b, x0, y0, phi = e.transpose(0, 1).unbind(-1)  # each (n, batch)
    c, s = torch.cos(phi), torch.sin(phi)
    # the quadratic form u² + v² = p dx² + 2 q dx dy + r dy² of the rotated, scaled offsets;
    # its separable parts are small: (n, batch, 1, nx) and (n, batch, ny, 1)
    ia, ib = 1 / (a * a), 1 / (b * b)
    p, q, r = c * c * ia + s * s * ib, c * s * (ia - ib), s * s * ia + c * c * ib
    dx = x - x0[..., None, None]
    dy = y - y0[..., None, None]
    pxx, ryy = p[..., None, None] * dx * dx, r[..., None, None] * dy * dy
    qx, value = 2 * q[..., None, None] * dx, value[..., None, None].contiguous()
    image = torch.zeros(nb, ny, nx, dtype=torch.float64, device=dev)
    form, scratch, acc = (torch.empty_like(image) for _ in range(3))
    inside = torch.empty(nb, ny, nx, dtype=torch.bool, device=dev)
    zero = torch.zeros((), dtype=torch.float64, device=dev)
    for i in range(0, n, chunk):
        for k in range(i, min(i + chunk, n)):
            torch.add(pxx[k], ryy[k], out=form)
            form += torch.mul(qx[k], dy[k], out=scratch)
            torch.le(form, 1, out=inside)
            if k == i:
                torch.where(inside, value[k], zero, out=acc)
            else:
                acc += torch.where(inside, value[k], zero, out=scratch)
        image += acc
    return image.to(dtype)


def ellipse_sinogram(
    ellipses: torch.Tensor, op: RayTransform, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Exact ray transform of ellipses in ``op``'s geometry (averaged over each bin's rays),
    ``(1, n_angles, n_det)``; includes ``op.scale`` so it compares with ``op(image)``.

    For half-axes ``a, b`` (physical units), the chord at offset ``s'`` from the centre is
    ``2 a b sqrt(r^2 - s'^2) / r^2`` with ``r^2 = a^2 cos^2(theta - phi) + b^2 sin^2(theta -
    phi)`` (Kak & Slaney 1988, eq. 3.10, rotated and shifted).
    """
    half = torch.tensor([op.nx, op.ny], dtype=torch.float64) * op.pixel_size / 2
    e = ellipses.to(torch.float64)
    theta = torch.as_tensor(op.angles, dtype=torch.float64)[:, None]
    theta = theta[..., None]  # (n_angles, 1, 1) against rays (1, n_det, rays_per_bin)
    s = torch.as_tensor(op.ray_positions, dtype=torch.float64)[None]
    sino = torch.zeros(op.n_angles, *op.ray_positions.shape, dtype=torch.float64)
    # Normalised -> physical: x scales by nx/2, y by ny/2; exact for square images, where an
    # ellipse stays an ellipse with the same angle.
    if op.nx != op.ny:
        raise ValueError("ellipse_sinogram needs a square image (nx == ny)")
    for value, a, b, x0, y0, phi in e.tolist():
        a, b, x0, y0 = a * half[0], b * half[1], x0 * half[0], y0 * half[1]
        r2 = (a * torch.cos(theta - phi)) ** 2 + (b * torch.sin(theta - phi)) ** 2
        offset = s - (x0 * torch.cos(theta) + y0 * torch.sin(theta))
        sino += value * 2 * a * b * torch.sqrt(torch.clamp(r2 - offset**2, min=0)) / r2
    return (sino.mean(dim=-1) * op.scale).to(dtype)[None]


def simulate_sinogram(image_fine: torch.Tensor, op: RayTransform, upsample: int) -> torch.Tensor:
    """Measure an image given on a ``upsample``-times finer grid of the same physical domain with
    ``op``'s detector and angles: ``(batch, ny*k, nx*k) -> (batch, n_angles, n_det)``.

    The fine operator uses pixels of side ``op.pixel_size / upsample``, so ``op(coarse)`` and
    this agree up to discretisation (and ``op.scale`` is applied to both).
    """
    fine = fine_operator(op, upsample)
    return fine(image_fine) * op.scale


def fine_operator(op: RayTransform, upsample: int) -> RayTransform:
    """Un-normalised ray transform of an ``upsample``-times finer grid with ``op``'s geometry
    (cached: building the fine matrix costs ~upsample times the coarse one)."""
    return _fine_operator(
        op.ny, op.nx, op.pixel_size, op.angles.tobytes(), op.n_det, op.det_spacing, upsample
    )


@functools.lru_cache(maxsize=4)
def _fine_operator(
    ny: int, nx: int, pixel_size: float, angles: bytes, n_det: int, det_spacing: float, k: int
) -> RayTransform:
    return RayTransform(
        (ny * k, nx * k),
        angles=np.frombuffer(angles, dtype=np.float64),
        n_det=n_det,
        det_spacing=det_spacing,
        pixel_size=pixel_size / k,
    )
