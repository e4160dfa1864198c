"""Pressure projection: the masked Laplacian, batched PCG, an FFT solve, implicit gradients.

Chorin's projection (Chorin, 1968) on a MAC grid: given a velocity ``u*`` find ``q = dt p`` with

    G^T M G q = -D u*        (D: divergence, G = -D^T: gradient, M: mask of open faces)
    u = u* - M G q           so that D u = 0 on every fluid cell.

``A = G^T M G`` is the symmetric positive semidefinite form of ``-laplace`` restricted to fluid
cells (identity rows on obstacle cells). Without an outflow boundary it is singular, with the
constants on the fluid as null space (pure Neumann/periodic); then the right-hand side is
projected to fluid-mean zero and so is the solution (assumes one connected fluid region).

The solve is differentiated implicitly: the backward pass solves ``A g_b = g_q`` with the same
(symmetric) operator instead of backpropagating through CG iterations (as in Um et al., 2020,
and PhiFlow). Its gradient is exact up to the solve tolerances.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hybridsim.numerics.grid import MACGrid, Velocity
from hybridsim.numerics.operator import LinearOperator, register_operator

PRECONDITIONERS = ("fdm", "jacobi", "none")
METHODS = ("pcg", "fft")


def _batch_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product, shaped ``(batch, 1, ..., 1)`` to broadcast against ``a``."""
    return (a * b).sum(dim=tuple(range(1, a.dim())), keepdim=True)


class PressureOperator(LinearOperator):
    """``A p = F G^T M G F p + (1 - F) p``: masked ``-laplace`` on cells, symmetric PSD.

    ``F`` is the fluid-cell mask, ``M`` the open-face mask (see ``MACGrid.consts``). Shapes:
    ``(batch, *cells)`` -> ``(batch, *cells)``. Self-adjoint, so ``A_adjoint = A``.
    """

    def __init__(self, grid: MACGrid) -> None:
        self.grid = grid
        self.domain_shape = grid.cell_shape
        self.singular = not any("outflow" in sides for sides in grid.boundaries)

        self._stencils: dict[tuple, tuple] = {}

    def A(self, p: torch.Tensor) -> torch.Tensor:  # noqa: N802
        # Five/seven-point stencil with precomputed coefficients. Off-diagonal coefficients
        # vanish across bounded domain edges, so a zero pad serves every bounded axis (the
        # Dirichlet ghost of an outflow only enters the diagonal); periodic axes roll.
        diag, coeffs = self.stencil(p.dtype, p.device)
        g = self.grid
        bounded = [a for a in range(g.dim) if not g.periodic[a]]
        if bounded:
            widths = []
            for a in range(g.dim):
                widths += [1, 1] if a in bounded else [0, 0]
            pad = F.pad(p, widths)
            windows, strides, base = self._windows(pad), pad.stride(), pad.storage_offset()
        out = diag * p
        for a, (c_lo, c_hi) in enumerate(coeffs):
            td = p.dim() - 1 - a
            if g.periodic[a]:
                lo, hi = torch.roll(p, 1, dims=td), torch.roll(p, -1, dims=td)
            else:
                lo, hi = (pad.as_strided(p.shape, strides, base + o) for o in windows[a])
            out = out - c_lo * lo - c_hi * hi
        return out

    def _windows(self, pad: torch.Tensor) -> list:
        """Per axis, the storage offsets of the lower and the upper neighbour of cell 0 in the
        padded field ``pad`` (bounded axes padded by one): each neighbour field is then one
        strided view of the pad, with its strides and the unpadded shape. Cached per shape
        (``F.pad`` returns a fresh contiguous tensor, so the strides follow from it)."""
        key = ("windows", tuple(pad.shape))
        if key not in self._stencils:
            g, strides, last = self.grid, pad.stride(), pad.dim() - 1
            windows = []
            for a in range(g.dim):
                pair = []
                for start in (0, 2):
                    offset = 0
                    for b in range(g.dim):
                        if not g.periodic[b]:
                            offset += (start if b == a else 1) * strides[last - b]
                    pair.append(offset)
                windows.append(pair)
            self._stencils[key] = windows
        return self._stencils[key]

    def stencil(self, dtype: torch.dtype, device: torch.device) -> tuple:
        """``(diag, ((c_lo, c_hi) per axis))`` with ``A p = diag p - sum c_lo p_lo + c_hi p_hi``."""
        key = (dtype, device)
        if key not in self._stencils:
            g, c = self.grid, self.grid.consts(torch.float64, torch.device("cpu"))
            coeffs = []
            for a in range(g.dim):
                m, td, h2 = c["open"][a], g.dim - 1 - a, g.spacing[a] ** 2
                if g.periodic[a]:
                    lo, hi = m, torch.roll(m, -1, dims=td)
                    c_lo, c_hi = lo / h2, hi / h2
                else:
                    n = m.shape[td]
                    lo, hi = m.narrow(td, 0, n - 1), m.narrow(td, 1, n - 1)
                    c_lo, c_hi = lo.clone() / h2, hi.clone() / h2
                    c_lo.select(td, 0).zero_()
                    c_hi.select(td, n - 2).zero_()
                coeffs.append(
                    (c_lo.to(dtype=dtype, device=device), c_hi.to(dtype=dtype, device=device))
                )
            diag = self.diagonal(dtype, device)
            self._stencils[key] = (diag, tuple(coeffs))
        return self._stencils[key]

    def A_reference(self, p: torch.Tensor) -> torch.Tensor:
        """``F G^T M G F p + (1 - F) p`` spelled out with the grid's G and D (for tests)."""
        g, c = self.grid, self.grid.consts(p.dtype, p.device)
        fluid = c["fluid"]
        grad = g.gradient(fluid * p)
        flux = tuple(m * gi for m, gi in zip(c["open"], grad, strict=True))
        return (1.0 - fluid) * p - fluid * g.divergence(flux)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return self.A(y)

    def diagonal(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Diagonal of ``A`` (for Jacobi), shape ``cells``."""
        g, c = self.grid, self.grid.consts(dtype, device)
        diag = torch.zeros(g.cell_shape, dtype=dtype, device=device)
        for a in range(g.dim):
            m, td = c["open"][a], g.dim - 1 - a
            if g.periodic[a]:
                both = m + torch.roll(m, -1, dims=td)
            else:
                n = m.shape[td]
                both = m.narrow(td, 0, n - 1) + m.narrow(td, 1, n - 1)
            diag = diag + both / g.spacing[a] ** 2
        fluid = c["fluid"]
        diag = fluid * diag + (1.0 - fluid)
        return torch.where(diag > 0, diag, torch.ones_like(diag))

    def remove_null_space(self, p: torch.Tensor) -> torch.Tensor:
        """Subtract the fluid mean (only for a singular system) and zero obstacle cells."""
        fluid = self.grid.consts(p.dtype, p.device)["fluid"]
        p = fluid * p
        if self.singular:
            mean = p.flatten(1).sum(1) / fluid.sum()
            p = p - fluid * mean.view(-1, *([1] * (p.dim() - 1)))
        return p


class GradientOperator(LinearOperator):
    """``G``: cell pressure -> face values of all components, flattened and concatenated.

    Pressure outside bounded axes counts as zero, which makes ``G^T = -D`` exact; the adjoint
    is minus the divergence (MAC grids: Harlow & Welch, 1965). Shapes ``(batch, *cells)`` ->
    ``(batch, n_faces)``.
    """

    def __init__(self, grid: MACGrid) -> None:
        self.grid = grid
        self.domain_shape = grid.cell_shape

    def A(self, p: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return torch.cat([g.flatten(1) for g in self.grid.gradient(p)], dim=1)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        comps, start = [], 0
        for a in range(self.grid.dim):
            shape = self.grid.face_shape(a)
            n = int(torch.Size(shape).numel())
            comps.append(y[:, start : start + n].reshape(-1, *shape))
            start += n
        return -self.grid.divergence(tuple(comps))


class FastDiagonalization:
    """Preconditioner: exact inverse of the obstacle-free operator by separation of variables.

    ``A0 = sum_d I x .. x T_d x .. x I`` with 1D second-difference matrices ``T_d`` carrying the
    boundary conditions of axis d (periodic, Neumann at walls/inflow, Dirichlet at outflow).
    With ``T_d = Q_d diag(l_d) Q_d^T``, ``A0^{-1} r = Q (Q^T r / sum_d l_d)``: a few small
    matmuls per application (Lynch, Rice & Thomas, 1964). Applied as ``F A0^+ F + (1 - F)``,
    which is SPD on the fluid cells, so PCG stays valid with obstacles; it is exact without.
    """

    def __init__(self, grid: MACGrid) -> None:
        self.grid = grid
        self._cache: dict[tuple, tuple] = {}

    def _1d(self, axis: int) -> torch.Tensor:
        g = self.grid
        n, h = g.resolution[axis], g.spacing[axis]
        t = torch.zeros(n, n, dtype=torch.float64)
        idx = torch.arange(n - 1)
        t[idx, idx] += 1
        t[idx + 1, idx + 1] += 1
        t[idx, idx + 1] -= 1
        t[idx + 1, idx] -= 1
        if g.periodic[axis]:
            t[0, 0] += 1
            t[-1, -1] += 1
            t[0, -1] -= 1
            t[-1, 0] -= 1
        else:
            lo, hi = g.boundaries[axis]
            t[0, 0] += lo == "outflow"
            t[-1, -1] += hi == "outflow"
        return t / h**2

    def _factors(self, dtype: torch.dtype, device: torch.device) -> tuple:
        key = (dtype, str(device))
        if key not in self._cache:
            qs, lam = [], None
            for a in range(self.grid.dim):
                eigval, q = torch.linalg.eigh(self._1d(a))
                view = [1] * self.grid.dim
                view[self.grid.dim - 1 - a] = -1
                lv = eigval.view(view)
                lam = lv if lam is None else lam + lv
                qs.append(q)
            inv = torch.where(lam.abs() > 1e-9 * lam.abs().max(), 1.0 / lam, torch.zeros_like(lam))
            # forward: coefficients Q^T r along every axis; x-axis acts from the right
            fwd = [q if a == 0 else q.T for a, q in enumerate(qs)]
            bwd = [q.T if a == 0 else q for a, q in enumerate(qs)]
            conv = {"dtype": dtype, "device": device}
            self._cache[key] = (
                tuple(m.contiguous().to(**conv) for m in fwd),
                tuple(m.contiguous().to(**conv) for m in bwd),
                inv.to(**conv),
            )
        return self._cache[key]

    def _transform(self, x: torch.Tensor, mats: tuple) -> torch.Tensor:
        # x: (batch, *cells); multiply every axis by its (small, dense) matrix
        shape = x.shape
        for a, m in enumerate(mats):
            if a == 0:  # x: last tensor dim, right-multiply by m^T
                x = x @ m
            elif a == 1:  # y: left-multiply on the last two dims (one bmm: `m @ x` spelled
                # out, without matmul's broadcasting bookkeeping; the same kernel and values)
                x = torch.bmm(m.expand(x.shape[0], *m.shape), x) if x.dim() == 3 else m @ x
            else:  # z: fold (y, x) into one axis
                x = (m @ x.reshape(shape[0], shape[-3], -1)).reshape(shape)
        return x

    def __call__(
        self, r: torch.Tensor, fluid: torch.Tensor, solid: torch.Tensor | None
    ) -> torch.Tensor:
        fwd, bwd, inv = self._factors(r.dtype, r.device)
        if solid is None:
            return self._transform(self._transform(r, fwd) * inv, bwd)
        z = self._transform(self._transform(fluid * r, fwd) * inv, bwd)
        return torch.addcmul(fluid * z, solid, r)


def pcg(
    op: PressureOperator,
    b: torch.Tensor,
    x0: torch.Tensor | None,
    precond,
    rtol: float,
    atol: float,
    max_iter: int,
) -> tuple[torch.Tensor, int, float]:
    """Batched preconditioned conjugate gradients for ``A x = b`` (A SPD or consistent PSD).

    Every sample has its own step sizes; iteration stops when every sample satisfies
    ``|r| <= rtol |b| + atol``. Returns ``(x, iterations, max relative residual)``. Not meant to
    be differentiated through: wrap it in ``ImplicitSolve``.
    """
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - op.A(x) if x0 is not None else b.clone()
    bound = rtol * b.flatten(1).norm(dim=1) + atol
    tiny = torch.finfo(b.dtype).tiny
    z = precond(r)
    d = z
    rz = _batch_dot(r, z)
    it = 0
    for it in range(max_iter + 1):  # noqa: B007  (it is returned)
        rnorm = r.flatten(1).norm(dim=1)
        if bool((rnorm <= bound).all()) or it == max_iter:
            break
        ad = op.A(d)
        # A and the preconditioner are PSD, so d.Ad >= 0 and r.z >= 0; a converged sample has
        # both zero, and the clamp turns its 0/0 into a zero step
        alpha = rz / _batch_dot(d, ad).clamp_min(tiny)
        x = torch.addcmul(x, alpha, d)
        r = torch.addcmul(r, alpha, ad, value=-1.0)
        z = precond(r)
        rz_new = _batch_dot(r, z)
        d = torch.addcmul(z, rz_new / rz.clamp_min(tiny), d)
        rz = rz_new
    bnorm = b.flatten(1).norm(dim=1).clamp_min(torch.finfo(b.dtype).tiny)
    return x, it, float((r.flatten(1).norm(dim=1) / bnorm).max())


class _ImplicitSolve(torch.autograd.Function):
    """``x = A^+ b``; backward ``g_b = A^+ g_x`` (A symmetric), never through CG iterations."""

    @staticmethod
    def forward(ctx, b, x0, solver, info):  # type: ignore[override]
        x, it, res = solver._solve(b, x0, solver.rtol, solver.atol)
        info.update(iterations=it, residual=res)
        ctx.solver = solver
        return x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_x):  # type: ignore[override]
        s = ctx.solver
        grad_b, it, res = s._solve(grad_x.contiguous(), None, s.grad_rtol, s.grad_atol)
        return grad_b, None, None, None


class PressureSolve:
    """Solve ``A q = b`` for the pressure (times dt) on ``grid``; differentiable implicitly.

    Args:
        method: ``pcg`` (any boundaries, obstacles) or ``fft`` (fully periodic, no obstacle).
        preconditioner: ``fdm`` (fast diagonalization, default), ``jacobi`` or ``none``.
        rtol, atol: stopping rule ``|r| <= rtol |b| + atol`` per sample.
        grad_rtol, grad_atol: the same for the adjoint solve of the backward pass
            (default: the forward values).
        max_iter: CG iteration cap (default: number of cells).
    Call ``solve(b, x0)``; ``x0`` is the warm start (previous pressure), which carries no
    gradient. ``last_info`` holds iterations and relative residual of the latest forward solve.
    """

    def __init__(
        self,
        grid: MACGrid,
        method: str = "pcg",
        preconditioner: str = "fdm",
        rtol: float = 1e-5,
        atol: float = 0.0,
        grad_rtol: float | None = None,
        grad_atol: float | None = None,
        max_iter: int | None = None,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"pressure method {method!r} unknown; choose one of {METHODS}")
        if preconditioner not in PRECONDITIONERS:
            raise ValueError(
                f"preconditioner {preconditioner!r} unknown; choose one of {PRECONDITIONERS}"
            )
        if not rtol > 0 and not atol > 0:
            raise ValueError(f"need rtol > 0 or atol > 0, got rtol={rtol}, atol={atol}")
        if method == "fft" and (not all(grid.periodic) or bool(grid.obstacle.any())):
            raise ValueError(
                f"method='fft' needs a fully periodic grid without obstacles; got boundaries "
                f"{grid.boundaries}, {int(grid.obstacle.sum())} obstacle cells; use method='pcg'"
            )
        self.grid, self.method = grid, method
        self.operator = PressureOperator(grid)
        self.preconditioner = preconditioner
        self.rtol, self.atol = rtol, atol
        self.grad_rtol = rtol if grad_rtol is None else grad_rtol
        self.grad_atol = atol if grad_atol is None else grad_atol
        self.max_iter = max_iter or 2 * int(torch.Size(grid.cell_shape).numel())
        self._fdm = FastDiagonalization(grid)
        self.last_info: dict = {}

    def _precond(self, dtype: torch.dtype, device: torch.device):
        fluid = self.grid.consts(dtype, device)["fluid"]
        solid = (1.0 - fluid) if bool(self.grid.obstacle.any()) else None
        if self.preconditioner == "fdm":
            return lambda r: self._fdm(r, fluid, solid)
        if self.preconditioner == "jacobi":
            inv_diag = 1.0 / self.operator.diagonal(dtype, device)
            return lambda r: inv_diag * r
        return lambda r: r

    def _solve(self, b, x0, rtol, atol) -> tuple[torch.Tensor, int, float]:
        with torch.no_grad():
            op = self.operator
            b = op.remove_null_space(b)
            if self.method == "fft":
                return fft_solve(self.grid, b), 1, 0.0
            precond = self._precond(b.dtype, b.device)
            x, it, res = pcg(op, b, x0, precond, rtol, atol, self.max_iter)
            return op.remove_null_space(x), it, res

    def solve(self, b: torch.Tensor, x0: torch.Tensor | None = None) -> torch.Tensor:
        """``q = A^+ b`` for ``b`` of shape ``(batch, *cells)``; gradients by an adjoint solve."""
        if self.method == "fft":
            # fully differentiable spectral solve; autograd through FFTs is exact and cheap
            q = fft_solve(self.grid, self.operator.remove_null_space(b))
            self.last_info = {"iterations": 1, "residual": 0.0}
            return q
        info: dict = {}
        x0 = None if x0 is None else x0.detach()
        q = _ImplicitSolve.apply(b, x0, self, info)
        self.last_info = info
        return q

    __call__ = solve


def fft_solve(grid: MACGrid, b: torch.Tensor) -> torch.Tensor:
    """Solve ``A q = b`` on a fully periodic grid by FFT.

    ``q_k = b_k / lambda_k``, ``lambda_k = sum_d (2 - 2 cos(2 pi k_d / n_d)) / dx_d^2``.

    The zero mode is set to zero (mean-free pressure). Shapes ``(batch, *cells)``.
    """
    dims = tuple(range(-grid.dim, 0))
    bk = torch.fft.rfftn(b, dim=dims)
    lam = None
    for a in range(grid.dim):
        n, h = grid.resolution[a], grid.spacing[a]
        k = (
            torch.fft.rfftfreq(n, device=b.device)
            if a == 0
            else torch.fft.fftfreq(n, device=b.device)
        )
        la = (2.0 - 2.0 * torch.cos(2 * torch.pi * k.to(torch.float64))) / h**2
        view = [1] * grid.dim
        view[grid.dim - 1 - a] = -1
        la = la.view(view)
        lam = la if lam is None else lam + la
    inv = torch.where(lam > 0, 1.0 / torch.where(lam > 0, lam, 1.0), 0.0).to(b.dtype)
    return torch.fft.irfftn(bk * inv, s=b.shape[-grid.dim :], dim=dims)


def project(
    grid: MACGrid,
    velocity: Velocity,
    pressure_solve: PressureSolve,
    pressure: torch.Tensor | None = None,
    dt: float = 1.0,
) -> tuple[Velocity, torch.Tensor]:
    """Make ``velocity`` divergence-free on fluid cells; returns ``(velocity, pressure)``.

    Prescribed faces are set first (``u = M u + fixed``), then ``A q = -F D u``, ``u -= M G q``,
    ``pressure = q / dt`` (density 1). ``pressure`` (previous step) warm-starts the solve.
    The map is affine and idempotent; its linear part is an orthogonal projection.
    """
    c = grid.consts(velocity[0].dtype, velocity[0].device)
    velocity = tuple(
        m * u + v for m, u, v in zip(c["open"], velocity, c["fixed_value"], strict=True)
    )
    rhs = -c["fluid"] * grid.divergence(velocity)
    x0 = None if pressure is None else pressure * dt
    q = pressure_solve(rhs, x0)
    grad = grid.gradient(q)
    velocity = tuple(u - m * g for u, m, g in zip(velocity, c["open"], grad, strict=True))
    return velocity, q / dt


# ---- registered test instances (tests/test_operators.py) ------------------------------------
def _small_grid() -> MACGrid:
    obstacle = torch.zeros(6, 7, dtype=torch.bool)
    obstacle[2:4, 3:5] = True
    return MACGrid(
        (7, 6), (7.0, 4.5), [("inflow", "outflow"), ("wall", "slip")], (1.0, 0.0), obstacle
    )


@register_operator("masked_laplacian")
def _masked_laplacian() -> PressureOperator:
    return PressureOperator(_small_grid())


@register_operator("gradient_divergence")
def _gradient_divergence() -> GradientOperator:
    return GradientOperator(_small_grid())


@register_operator("gradient_divergence_periodic_3d")
def _gradient_divergence_3d() -> GradientOperator:
    return GradientOperator(MACGrid((4, 3, 5), (1.0, 1.0, 2.0), ["periodic", "wall", "outflow"]))
