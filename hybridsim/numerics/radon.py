"""2D parallel-beam ray transform with an exact adjoint, and filtered back-projection.

Geometry (one convention for the whole package): an ``(ny, nx)`` image of square pixels of side
``pixel_size`` covers ``[-nx*pixel_size/2, nx*pixel_size/2] x [-ny*pixel_size/2, ...]``; column
``j`` sits at ``x_j = (j + 1/2 - nx/2) * pixel_size`` and row ``i`` at
``y_i = (ny/2 - i - 1/2) * pixel_size`` (row 0 on top, so ``imshow`` shows the image upright).
The ray for angle ``theta`` and detector coordinate ``s`` is the line
``{p : p . (cos theta, sin theta) = s}``, and the ray transform is the line integral

    (F a)(theta, s) = integral a(s (cos theta, sin theta) + t (-sin theta, cos theta)) dt.

Discretised by Siddon's method (Siddon 1985): for a piecewise constant image, one ray per detector
bin through the bin centre, ``F[ray, pixel]`` = length of the ray inside the pixel. The sparse
matrix is built once (vectorised in numpy) and applied with torch CSR matmul; its transpose is the
exact adjoint, so ``<F x, y> = <x, F^T y>`` to rounding.

Defaults follow Adler & Öktem (2017) and their ODL code (``parallel_beam_geometry``): angles at
the midpoints of ``n_angles`` equal cells of ``[0, pi)``, ``n_det = 2 ceil(rho) + 1`` bins that
span the image diagonal ``[-rho, rho]`` (183 bins for 128 x 128), and optionally ``F / ||F||``.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import numpy as np
import torch

from hybridsim.numerics.operator import LinearOperator, register_operator

FilterName = Literal["ramp", "shepp-logan", "cosine", "hann"]
FILTERS: tuple[str, ...] = ("ramp", "shepp-logan", "cosine", "hann")

# Rays x grid-line candidates processed per chunk while building the matrix (memory ~ 8 x this).
_BUILD_CHUNK = 4_000_000


def default_angles(n_angles: int) -> np.ndarray:
    """Midpoints of ``n_angles`` equal cells of ``[0, pi)`` (ODL's ``uniform_partition``)."""
    return (np.arange(n_angles) + 0.5) * (math.pi / n_angles)


def default_detector(ny: int, nx: int, pixel_size: float = 1.0) -> tuple[int, float]:
    """``(n_det, det_spacing)``: ``2 ceil(rho) + 1`` bins spanning ``[-rho, rho]``, rho = half
    diagonal of the image in pixel units (as ODL's ``parallel_beam_geometry``)."""
    rho = 0.5 * math.hypot(nx, ny)
    n_det = 2 * math.ceil(rho) + 1
    return n_det, 2 * rho * pixel_size / n_det


def _siddon_coo(
    ny: int,
    nx: int,
    pixel_size: float,
    angles: np.ndarray,
    det_pos: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ray index, pixel index, intersection length) of every nonzero of F, rays in sinogram order.

    All crossings of a ray with the vertical and horizontal pixel edges are merged and sorted;
    consecutive crossings bound one segment whose midpoint names its pixel (Siddon 1985, done
    as one vectorised sort instead of the incremental walk).
    """
    n_det = det_pos.size
    xe = (np.arange(nx + 1) - nx / 2) * pixel_size
    ye = (np.arange(ny + 1) - ny / 2) * pixel_size
    half_w, half_h = nx * pixel_size / 2, ny * pixel_size / 2
    t_max = math.hypot(half_w, half_h) + pixel_size  # every in-image point has |t| < t_max
    per_angle = n_det * (nx + ny + 4)
    chunk = max(1, _BUILD_CHUNK // per_angle)
    rows, cols, vals = [], [], []
    for a0 in range(0, angles.size, chunk):
        th = angles[a0 : a0 + chunk, None, None]
        s = det_pos[None, :, None]
        cos, sin = np.cos(th), np.sin(th)
        x0, y0 = s * cos, s * sin  # foot of the ray; direction (-sin, cos)
        dx, dy = -sin, cos
        with np.errstate(divide="ignore", invalid="ignore"):
            tx = (xe - x0) / dx
            ty = (ye - y0) / dy
        ends = np.broadcast_to(np.array([-t_max, t_max]), (*x0.shape[:2], 2))
        t = np.concatenate(
            [
                np.broadcast_to(tx, (*x0.shape[:2], nx + 1)),
                np.broadcast_to(ty, (*x0.shape[:2], ny + 1)),
                ends,
            ],
            axis=-1,
        )
        # Rays parallel to a set of edges never cross them: park those crossings at the end.
        t = np.clip(np.where(np.isfinite(t), t, t_max), -t_max, t_max)
        t.sort(axis=-1)
        length = np.diff(t, axis=-1)
        mid = 0.5 * (t[..., 1:] + t[..., :-1])
        col = np.floor((x0 + mid * dx + half_w) / pixel_size).astype(np.int64)
        row = np.floor((half_h - (y0 + mid * dy)) / pixel_size).astype(np.int64)
        keep = (length > 1e-9 * pixel_size) & (col >= 0) & (col < nx) & (row >= 0) & (row < ny)
        ia, id_, _ = np.nonzero(keep)
        rows.append((a0 + ia) * n_det + id_)
        cols.append(row[keep] * nx + col[keep])
        vals.append(length[keep])
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


def _csr(
    rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int]
) -> torch.Tensor:
    """CSR tensor from COO triplets (duplicates summed)."""
    order = np.lexsort((cols, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    if rows.size:
        first = np.ones(rows.size, dtype=bool)
        first[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
        starts = np.flatnonzero(first)
        rows, cols, vals = rows[starts], cols[starts], np.add.reduceat(vals, starts)
    crow = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=shape[0]), out=crow[1:])
    # 32-bit indices where they fit: a third less memory traffic per product (the matrix is
    # streamed once per batch), the same values in the same order
    index = np.int32 if max(vals.size, *shape) < 2**31 else np.int64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(
            torch.from_numpy(crow.astype(index)),
            torch.from_numpy(cols.astype(index)),
            torch.from_numpy(vals),
            size=shape,
        )


def sparse_matmul(
    m: torch.Tensor, x: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``m @ x`` for a sparse CSR ``m`` and a dense matrix ``x``, written into a fresh row-major
    ``out`` (or the one given, whose contents are ignored).

    The same kernel and the same values as ``m @ x``, which first zero-fills a result and then
    copies it: ``addmm`` with ``beta=0`` skips both (documented not to read ``out``, so no NaN
    left in fresh memory leaks in); the time saved is measured in docs/benchmarks.md.
    """
    if out is None:
        out = torch.empty(m.shape[0], x.shape[1], dtype=x.dtype, device=x.device)
    return torch.addmm(out, m, x, beta=0, out=out)


class _SparseApply(torch.autograd.Function):
    """``M @ x`` for a constant sparse ``M``; the backward pass applies ``M^T`` (itself this
    Function, so double backward works too)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, m: torch.Tensor, m_t: torch.Tensor) -> torch.Tensor:
        ctx.matrices = (m, m_t)
        return sparse_matmul(m, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        m, m_t = ctx.matrices
        return _SparseApply.apply(grad, m_t, m), None, None


class RayTransform(LinearOperator):
    """Parallel-beam ray transform ``F: (batch, ny, nx) -> (batch, n_angles, n_det)``.

    ``sinogram = F a`` with ``F[ray, pixel]`` the Siddon intersection length (see the module
    docstring for the geometry); ``A_adjoint`` applies the exact transpose. Differentiable
    (autograd through ``A`` applies ``F^T`` and vice versa), on any device and in float32 or
    float64: it follows the input tensor, keeping one converted copy of the matrix per
    (device, dtype). Leading dimensions beyond one batch axis are allowed: ``(..., ny, nx)``.

    Args:
        shape: ``n`` or ``(ny, nx)`` pixels.
        angles: number of angles (midpoints of equal cells of ``[0, pi)``) or the angles in
            radians.
        n_det, det_spacing: detector bins and their spacing (physical units); default covers
            the image diagonal (``default_detector``).
        pixel_size: side of a pixel; a finer grid of the same physical domain (``n * k`` pixels
            of side ``1 / k``) with the same detector measures the same object.
        normalize: divide by the operator norm (power method), as Adler & Öktem (2017) do;
            ``scale`` holds the factor applied (``1 / ||F_raw||``, or 1).
        rays_per_bin: rays averaged across each detector bin (1: the bin centre only).

    Reference: Siddon (1985), Med. Phys. 12:252; Adler & Öktem (2017), Inverse Problems 33.
    """

    def __init__(
        self,
        shape: int | tuple[int, int],
        angles: int | np.ndarray | torch.Tensor = 30,
        n_det: int | None = None,
        det_spacing: float | None = None,
        pixel_size: float = 1.0,
        normalize: bool = False,
        rays_per_bin: int = 1,
    ) -> None:
        ny, nx = (shape, shape) if isinstance(shape, int) else tuple(shape)
        if ny < 1 or nx < 1 or pixel_size <= 0:
            raise ValueError(
                f"need a positive image shape and pixel_size, got {shape}, {pixel_size}"
            )
        if isinstance(angles, int):
            if angles < 1:
                raise ValueError(f"n_angles must be >= 1, got {angles}")
            angles = default_angles(angles)
        angles = np.asarray(
            angles.detach().cpu() if isinstance(angles, torch.Tensor) else angles, dtype=np.float64
        ).reshape(-1)
        d_n, d_spacing = default_detector(ny, nx, pixel_size)
        n_det = d_n if n_det is None else n_det
        det_spacing = d_spacing if det_spacing is None else det_spacing
        if rays_per_bin < 1:
            raise ValueError(f"rays_per_bin must be >= 1, got {rays_per_bin}")
        if n_det < 1 or det_spacing <= 0:
            raise ValueError(f"need n_det >= 1 and det_spacing > 0, got {n_det}, {det_spacing}")
        self.ny, self.nx, self.pixel_size = ny, nx, float(pixel_size)
        self.angles = angles
        self.n_angles, self.n_det, self.det_spacing = angles.size, int(n_det), float(det_spacing)
        self.det_pos = (np.arange(self.n_det) - (self.n_det - 1) / 2) * self.det_spacing
        self.domain_shape = (ny, nx)
        self.range_shape = (self.n_angles, self.n_det)
        self.rays_per_bin = rays_per_bin
        # rays_per_bin > 1 averages equally spaced rays across each bin: a bin-integrating
        # detector (strip integral) instead of a point sample at the bin centre.
        rows, cols, vals = _siddon_coo(ny, nx, self.pixel_size, angles, self.ray_positions.ravel())
        rows, vals = rows // rays_per_bin, vals / rays_per_bin
        n_rays, n_pix = self.n_angles * self.n_det, ny * nx
        self._matrix = _csr(rows, cols, vals, (n_rays, n_pix))
        self._matrix_t = _csr(cols, rows, vals, (n_pix, n_rays))
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
        self._bp_cache: dict[
            tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]
        ] = {}
        self.scale = 1.0
        if normalize:
            self.scale = 1.0 / self.norm(n_iter=500, tol=1e-10)
            self._matrix = self._matrix * self.scale
            self._matrix_t = self._matrix_t * self.scale
            self._cache.clear()

    @property
    def ray_positions(self) -> np.ndarray:
        """Detector coordinates of the rays, ``(n_det, rays_per_bin)``, spread evenly per bin."""
        r = self.rays_per_bin
        sub = ((np.arange(r) + 0.5) / r - 0.5) * self.det_spacing
        return self.det_pos[:, None] + sub

    @property
    def nnz(self) -> int:
        return int(self._matrix.values().numel())

    def matrices(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(F, F^T)`` as CSR tensors on ``like``'s device and dtype (cached)."""
        key = (like.device, like.dtype)
        if key not in self._cache:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._cache[key] = (
                    self._matrix.to(device=like.device, dtype=like.dtype),
                    self._matrix_t.to(device=like.device, dtype=like.dtype),
                )
        return self._cache[key]

    def backprojection_matrices(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, B^T)`` of the pixel-driven back-projection (see ``backproject``), cached."""
        key = (like.device, like.dtype)
        if key not in self._bp_cache:
            rows, cols, vals = _backprojection_coo(self)
            shape = (self.ny * self.nx, self.n_angles * self.n_det)
            b, b_t = _csr(rows, cols, vals, shape), _csr(cols, rows, vals, shape[::-1])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._bp_cache[key] = (
                    b.to(device=like.device, dtype=like.dtype),
                    b_t.to(device=like.device, dtype=like.dtype),
                )
        return self._bp_cache[key]

    def _check(self, x: torch.Tensor, shape: tuple[int, int], what: str) -> None:
        if x.dim() < 2 or tuple(x.shape[-2:]) != shape:
            raise ValueError(
                f"{what} must have shape (batch, {shape[0]}, {shape[1]}), got {tuple(x.shape)}"
            )

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """``sinogram = F a``: ``(..., ny, nx) -> (..., n_angles, n_det)``."""
        self._check(x, self.domain_shape, "image")
        lead = x.shape[:-2]
        m, m_t = self.matrices(x)
        # (n_pix, batch): CSR @ dense with the batch as contiguous rows of columns
        cols = x.reshape(-1, self.ny * self.nx).T.contiguous()
        out = _SparseApply.apply(cols, m, m_t)
        return out.T.reshape(*lead, self.n_angles, self.n_det)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """``a = F^T sinogram`` (exact transpose): ``(..., n_angles, n_det) -> (..., ny, nx)``."""
        self._check(y, self.range_shape, "sinogram")
        lead = y.shape[:-2]
        m, m_t = self.matrices(y)
        cols = y.reshape(-1, self.n_angles * self.n_det).T.contiguous()
        out = _SparseApply.apply(cols, m_t, m)
        return out.T.reshape(*lead, self.ny, self.nx)

    def __repr__(self) -> str:
        return (
            f"RayTransform(({self.ny}, {self.nx}), n_angles={self.n_angles}, n_det={self.n_det}, "
            f"det_spacing={self.det_spacing:.4g}, pixel_size={self.pixel_size:g}, "
            f"scale={self.scale:.4g})"
        )


# ------------------------------------------------------------------ filtered back-projection


def fbp_filter(
    n_det: int,
    det_spacing: float,
    filter_name: FilterName = "ramp",
    cutoff: float = 1.0,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Frequency response (length ``n_pad // 2 + 1``, for ``rfft`` of ``n_pad`` samples) of the
    FBP filter: the ramp ``|omega|`` times a window, zero above ``cutoff`` x Nyquist.

    The ramp is the transform of the band-limited spatial Ram-Lak kernel (Kak & Slaney 1988,
    eq. 61), which, unlike sampling ``|omega|``, has the right DC value. Windows, with
    ``f = omega / (cutoff * Nyquist)`` in ``[0, 1]``: Shepp-Logan ``sinc(f / 2)``, cosine
    ``cos(pi f / 2)``, Hann ``cos(pi f / 2)^2``. Includes the ``det_spacing`` quadrature weight.
    """
    if filter_name not in FILTERS:
        raise ValueError(f"unknown FBP filter {filter_name!r}; choose one of {FILTERS}")
    if not 0 < cutoff <= 1:
        raise ValueError(
            f"FBP cutoff is a fraction of the Nyquist frequency in (0, 1], got {cutoff}"
        )
    n_pad = max(64, 2 ** math.ceil(math.log2(2 * n_det)))
    k = torch.arange(-(n_pad // 2), n_pad // 2, dtype=torch.float64)
    kernel = torch.zeros(n_pad, dtype=torch.float64)
    kernel[k == 0] = 0.25
    odd = k.remainder(2) == 1
    kernel[odd] = -1.0 / (math.pi * k[odd]) ** 2
    # kernel already carries 1/d^2; the convolution quadrature adds d, leaving 1/d overall
    response = torch.fft.rfft(torch.fft.ifftshift(kernel)).real / det_spacing
    f = torch.linspace(0, 1, n_pad // 2 + 1, dtype=torch.float64) / cutoff
    window = {
        "ramp": torch.ones_like(f),
        "shepp-logan": torch.sinc(f / 2),
        "cosine": torch.cos(f * math.pi / 2),
        "hann": torch.cos(f * math.pi / 2) ** 2,
    }[filter_name]
    response = torch.where(f <= 1, response * window, torch.zeros_like(f))
    return response.to(dtype=dtype, device=device)


def filter_sinogram(
    sinogram: torch.Tensor,
    det_spacing: float,
    filter_name: FilterName = "ramp",
    cutoff: float = 1.0,
) -> torch.Tensor:
    """Convolve every projection ``(..., n_angles, n_det)`` with the FBP filter (zero-padded
    FFT, so no wrap-around)."""
    n_det = sinogram.shape[-1]
    real = sinogram.real.dtype if sinogram.is_complex() else sinogram.dtype
    response = fbp_filter(
        n_det, det_spacing, filter_name, cutoff, dtype=real, device=sinogram.device
    )
    n_pad = 2 * (response.numel() - 1)
    spectrum = torch.fft.rfft(sinogram, n=n_pad, dim=-1) * response
    return torch.fft.irfft(spectrum, n=n_pad, dim=-1)[..., :n_det]


def fbp(
    op: RayTransform,
    sinogram: torch.Tensor,
    filter_name: FilterName = "ramp",
    cutoff: float = 1.0,
) -> torch.Tensor:
    """Filtered back-projection ``a = (pi / n_angles) B h * (sinogram / scale)``, ``(batch,
    n_angles, n_det) -> (batch, ny, nx)``.

    Inverts the ray transform for noiseless, densely sampled data (Natterer 1986, ch. V.1);
    ``h`` is the filter of ``fbp_filter``, ``B`` a pixel-driven back-projection with linear
    interpolation on the detector (the classical choice; ``F^T`` would need a per-pixel weight
    to be a good back-projector). Works with a normalised operator: the sinogram is divided by
    ``op.scale`` first. Assumes angles spread evenly over ``[0, pi)``.
    """
    filtered = filter_sinogram(sinogram / op.scale, op.det_spacing, filter_name, cutoff)
    return backproject(op, filtered) * (math.pi / op.n_angles)


def _backprojection_coo(op: RayTransform) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pixel, ray, weight) triplets of the pixel-driven linear interpolation of each projection at
    ``s = x cos theta + y sin theta`` of the pixel centre."""
    x = (np.arange(op.nx) + 0.5 - op.nx / 2) * op.pixel_size
    y = (op.ny / 2 - np.arange(op.ny) - 0.5) * op.pixel_size
    yy, xx = np.meshgrid(y, x, indexing="ij")
    pix = np.arange(op.ny * op.nx)
    s = (
        xx.reshape(1, -1) * np.cos(op.angles)[:, None]
        + yy.reshape(1, -1) * np.sin(op.angles)[:, None]
    )
    u = s / op.det_spacing + (op.n_det - 1) / 2  # fractional bin index
    lo = np.floor(u).astype(np.int64)
    w_hi = u - lo
    rows, cols, vals = [], [], []
    for shift, w in ((0, 1.0 - w_hi), (1, w_hi)):
        b = lo + shift
        ok = (b >= 0) & (b < op.n_det) & (w > 0)
        ia, ip = np.nonzero(ok)
        rows.append(pix[ip])
        cols.append(ia * op.n_det + b[ok])
        vals.append(w[ok])
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


def backproject(op: RayTransform, sinogram: torch.Tensor) -> torch.Tensor:
    """Pixel-driven back-projection ``(B p)(x) = sum_k p(theta_k, x . theta_k)`` with linear
    interpolation on the detector: ``(..., n_angles, n_det) -> (..., ny, nx)``.

    An approximate adjoint only (``B ~ F^T / det_spacing`` up to interpolation): use
    ``op.A_adjoint`` for gradients. Differentiable; its autograd backward applies ``B^T``.
    """
    b, b_t = op.backprojection_matrices(sinogram)
    lead = sinogram.shape[:-2]
    out = _SparseApply.apply(sinogram.reshape(-1, op.n_angles * op.n_det).T, b, b_t)
    return out.T.reshape(*lead, op.ny, op.nx)


# ------------------------------------------------------------------ registered test instances


@register_operator("ray_transform")
def _small_ray_transform() -> RayTransform:
    return RayTransform(12, angles=7)


@register_operator("ray_transform_rect_normalized")
def _rect_ray_transform() -> RayTransform:
    return RayTransform(
        (9, 14),
        angles=np.linspace(0, math.pi, 11, endpoint=False),
        n_det=13,
        det_spacing=1.3,
        normalize=True,
    )
