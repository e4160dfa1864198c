"""Staggered (MAC) grids in 2D and 3D: geometry, boundary masks and staggered-aware resampling.

Marker-and-cell layout (Harlow & Welch, 1965): pressure lives at cell centres, velocity
component ``d`` on the faces normal to axis ``d``. Coordinates are listed ``(x, y[, z])``;
tensors are stored the other way round, ``(batch, [nz,] ny, nx)``, so coordinate axis ``d``
is tensor dimension ``-1 - d``.

Shapes of one sample (without the batch axis), for ``n = (nx, ny[, nz])`` cells:

- pressure: ``(ny, nx)`` / ``(nz, ny, nx)``
- velocity component ``d``: like pressure, except ``n_d + 1`` faces along axis ``d`` when that
  axis is bounded, ``n_d`` when it is periodic (face ``n_d`` is face ``0``).

Boundaries, per axis and side: ``periodic`` (both sides), ``wall`` (no-slip), ``slip``
(free-slip), ``inflow`` (the boundary velocity is given), ``outflow`` (zero-gradient velocity,
pressure zero outside). Static obstacles are boolean cell masks (cell centre inside).

A *velocity* is a tuple of components ``(u, v[, w])``; a *state* of the fluid solver is
``(*velocity, pressure)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

BOUNDARY_KINDS = ("periodic", "wall", "slip", "inflow", "outflow")
# Faces on these boundaries carry a prescribed normal velocity (zero, or the inflow value).
_FIXED_NORMAL = ("wall", "slip", "inflow")

Velocity = tuple[torch.Tensor, ...]


class MACGrid:
    """Geometry, boundary conditions and masks of a uniform staggered grid.

    Args:
        resolution: cells per coordinate axis ``(nx, ny[, nz])``.
        size: physical extent ``(Lx, Ly[, Lz])``; spacing ``dx_d = L_d / n_d``.
        boundaries: per coordinate axis a pair ``(lower, upper)`` of kinds from
            ``BOUNDARY_KINDS``, or one string used for both sides.
        inflow_velocity: velocity vector imposed on ``inflow`` faces (normal component) and used
            as the tangential Dirichlet value there.
        obstacle: boolean cell mask of shape ``(ny, nx)`` / ``(nz, ny, nx)``, True = solid.

    Buffers are kept in float64 on the CPU and converted (and cached) on first use for another
    dtype or device, so one grid serves float32/float64 and CPU/CUDA inputs alike.
    """

    def __init__(
        self,
        resolution: Sequence[int],
        size: Sequence[float],
        boundaries: Sequence[str | Sequence[str]],
        inflow_velocity: Sequence[float] | None = None,
        obstacle: torch.Tensor | None = None,
    ) -> None:
        self.resolution = tuple(int(n) for n in resolution)
        self.dim = len(self.resolution)
        if self.dim not in (2, 3):
            raise ValueError(f"MACGrid supports 2D and 3D, got resolution {self.resolution}")
        if len(size) != self.dim or len(boundaries) != self.dim:
            raise ValueError(
                f"size {tuple(size)} and boundaries {tuple(boundaries)} need {self.dim} entries, "
                f"one per axis of resolution {self.resolution}"
            )
        if any(n < 2 for n in self.resolution):
            raise ValueError(f"need at least 2 cells per axis, got resolution {self.resolution}")
        if any(s <= 0 for s in size):
            raise ValueError(f"domain size must be positive, got {tuple(size)}")
        self.size = tuple(float(s) for s in size)
        self.spacing = tuple(s / n for s, n in zip(self.size, self.resolution, strict=True))
        sides = []
        for axis, b in enumerate(boundaries):
            pair = (b, b) if isinstance(b, str) else tuple(b)
            for kind in pair:
                if kind not in BOUNDARY_KINDS:
                    raise ValueError(
                        f"unknown boundary {kind!r} on axis {'xyz'[axis]}; "
                        f"choose one of {BOUNDARY_KINDS}"
                    )
            if ("periodic" in pair) and pair != ("periodic", "periodic"):
                raise ValueError(
                    f"axis {'xyz'[axis]}: periodic must apply to both sides, got {pair}"
                )
            sides.append(pair)
        self.boundaries: tuple[tuple[str, str], ...] = tuple(sides)
        self.periodic = tuple(p[0] == "periodic" for p in self.boundaries)
        self.inflow_velocity = tuple(float(c) for c in (inflow_velocity or (0.0,) * self.dim))
        if len(self.inflow_velocity) != self.dim:
            raise ValueError(f"inflow_velocity needs {self.dim} components")
        cells = self.cell_shape
        if obstacle is None:
            obstacle = torch.zeros(cells, dtype=torch.bool)
        if tuple(obstacle.shape) != cells:
            raise ValueError(f"obstacle mask shape {tuple(obstacle.shape)} != cell shape {cells}")
        self.obstacle = obstacle.to(torch.bool).cpu()
        if bool(self.obstacle.all()):
            raise ValueError("the obstacle covers every cell; no fluid left")
        self._cache: dict[tuple, dict[str, torch.Tensor | tuple]] = {}

    # ---- shapes -------------------------------------------------------------------------------
    @property
    def cell_shape(self) -> tuple[int, ...]:
        """Tensor shape of a cell-centred field (no batch): ``(ny, nx)`` or ``(nz, ny, nx)``."""
        return tuple(reversed(self.resolution))

    def tensor_dim(self, axis: int) -> int:
        """Tensor dimension (counted from the end) holding coordinate ``axis``."""
        return -1 - axis

    def face_shape(self, axis: int) -> tuple[int, ...]:
        """Tensor shape of velocity component ``axis`` (no batch axis)."""
        shape = list(self.cell_shape)
        if not self.periodic[axis]:
            shape[self.dim - 1 - axis] += 1
        return tuple(shape)

    @property
    def n_faces(self) -> int:
        return sum(math.prod(self.face_shape(a)) for a in range(self.dim))

    # ---- coordinates --------------------------------------------------------------------------
    def cell_centers(self, **like) -> tuple[torch.Tensor, ...]:
        """Coordinates ``(x, y[, z])`` of cell centres, each broadcastable to ``cell_shape``."""
        return self._coords(None, **like)

    def face_centers(self, axis: int, **like) -> tuple[torch.Tensor, ...]:
        """Coordinates of the faces carrying velocity component ``axis``."""
        return self._coords(axis, **like)

    def face_index_coords(
        self, axis: int, dtype: torch.dtype, device: torch.device | str
    ) -> tuple[torch.Tensor, ...]:
        """``index_coords(face_centers(axis), axis)``: the faces' own fractional indices, as
        broadcastable views (cached per dtype and device; every advection step needs them)."""
        key = ("face_index", axis, dtype, torch.device(device))
        if key not in self._cache:
            centers = self.face_centers(axis, dtype=dtype, device=device)
            self._cache[key] = tuple(self.index_coords(centers, axis))
        return self._cache[key]

    def _coords(self, face_axis: int | None, **like) -> tuple[torch.Tensor, ...]:
        like.setdefault("dtype", torch.float64)
        out = []
        for a in range(self.dim):
            n, h = self.resolution[a], self.spacing[a]
            if a == face_axis:
                count = n if self.periodic[a] else n + 1
                c = torch.arange(count, **like) * h
            else:
                c = (torch.arange(n, **like) + 0.5) * h
            view = [1] * self.dim
            view[self.dim - 1 - a] = -1
            out.append(c.view(view))
        return tuple(out)

    # ---- masks and boundary values -------------------------------------------------------------
    def consts(self, dtype: torch.dtype, device: torch.device | str) -> dict:
        """Masks as tensors of ``dtype`` on ``device`` (cached).

        - ``fluid``: 1 on fluid cells, 0 in obstacles.
        - ``open[d]``: 1 on faces of component d that the pressure projection may change
          (between two fluid cells, or on an outflow boundary), 0 on faces with a prescribed
          velocity (walls, inflow, faces touching an obstacle).
        - ``fixed_value[d]``: the prescribed velocity on the other faces.
        """
        key = (dtype, device)
        if key not in self._cache:
            c = self._build_consts()
            self._cache[key] = {
                k: tuple(t.to(dtype=dtype, device=device) for t in v)
                if isinstance(v, tuple)
                else v.to(dtype=dtype, device=device)
                for k, v in c.items()
            }
        return self._cache[key]

    def _build_consts(self) -> dict:
        fluid = (~self.obstacle).to(torch.float64)
        opens, values = [], []
        for a in range(self.dim):
            td = self.dim - 1 - a  # tensor dim without batch axis
            if self.periodic[a]:
                # face i sits between cells i-1 and i (wrapping)
                open_ = fluid * torch.roll(fluid, 1, dims=td)
                value = torch.zeros_like(open_)
            else:
                pad = [0, 0] * self.dim
                pad[2 * (self.dim - 1 - td)] = 1
                pad[2 * (self.dim - 1 - td) + 1] = 1
                ext = F.pad(fluid[None, None], pad, value=1.0)[0, 0]
                lo = ext.narrow(td, 0, ext.shape[td] - 1)
                hi = ext.narrow(td, 1, ext.shape[td] - 1)
                open_ = lo * hi
                value = torch.zeros_like(open_)
                for side, idx in ((0, 0), (1, open_.shape[td] - 1)):
                    kind = self.boundaries[a][side]
                    if kind in _FIXED_NORMAL:
                        open_.select(td, idx).zero_()
                    if kind == "inflow":
                        # the inflow face keeps its value unless it touches an obstacle
                        face_fluid = fluid.select(td, 0 if side == 0 else -1)
                        value.select(td, idx).copy_(self.inflow_velocity[a] * face_fluid)
            opens.append(open_)
            values.append(value)
        return {"fluid": fluid, "open": tuple(opens), "fixed_value": tuple(values)}

    def apply_boundaries(self, velocity: Velocity) -> Velocity:
        """Impose prescribed face velocities (walls, inflow, obstacles) and zero-gradient outflow.

        Outflow faces copy the velocity of the face one cell inside (first-order extrapolation);
        the pressure projection then corrects them.
        """
        like = velocity[0]
        c = self.consts(like.dtype, like.device)
        out = []
        for a, comp in enumerate(velocity):
            comp = c["open"][a] * comp + c["fixed_value"][a]
            if not self.periodic[a]:
                td = self.tensor_dim(a)
                n = comp.shape[td]
                lo_kind, hi_kind = self.boundaries[a]
                if lo_kind == "outflow" or hi_kind == "outflow":
                    parts = [
                        comp.narrow(td, 1, 1) if lo_kind == "outflow" else comp.narrow(td, 0, 1)
                    ]
                    parts.append(comp.narrow(td, 1, n - 2))
                    parts.append(
                        comp.narrow(td, n - 2, 1)
                        if hi_kind == "outflow"
                        else comp.narrow(td, n - 1, 1)
                    )
                    comp = torch.cat(parts, dim=td)
            out.append(comp)
        return tuple(out)

    # ---- differential operators on the staggered grid -----------------------------------------
    def divergence(self, velocity: Velocity) -> torch.Tensor:
        """Cell-centred ``div u = sum_d (u_d[i+1/2] - u_d[i-1/2]) / dx_d``, ``(batch, *cells)``."""
        div = None
        for a, comp in enumerate(velocity):
            td = self.tensor_dim(a)
            if self.periodic[a]:
                d = torch.roll(comp, -1, dims=td) - comp
            else:
                d = torch.diff(comp, dim=td)
            d = d / self.spacing[a]
            div = d if div is None else div + d
        return div

    def gradient(self, pressure: torch.Tensor) -> Velocity:
        """Face-centred ``grad p``; outside a bounded axis the pressure is taken as zero.

        With that convention ``gradient`` is exactly ``-divergence^T`` (Euclidean inner products),
        so ``divergence . open . gradient`` is symmetric. Faces with a prescribed velocity are
        masked out by the caller.
        """
        out = []
        for a in range(self.dim):
            td = self.tensor_dim(a)
            if self.periodic[a]:
                g = pressure - torch.roll(pressure, 1, dims=td)
            else:
                shape = list(pressure.shape)
                shape[td] = 1
                zero = pressure.new_zeros(shape)
                g = torch.diff(pressure, dim=td, prepend=zero, append=zero)
            out.append(g / self.spacing[a])
        return tuple(out)

    # ---- staggered-aware resampling -----------------------------------------------------------
    def index_coords(self, points: Sequence[torch.Tensor], axis: int | None) -> list[torch.Tensor]:
        """Physical points -> fractional array indices of a field stored at ``axis`` faces
        (``axis=None``: cell centres)."""
        out = []
        for a, p in enumerate(points):
            offset = 0.0 if a == axis else 0.5
            out.append(p / self.spacing[a] - offset)
        return out

    def sample(
        self,
        field: torch.Tensor,
        axis: int | None,
        points: Sequence[torch.Tensor],
        mode: str = "bilinear",
    ) -> torch.Tensor:
        """(Bi/tri)linear interpolation of a staggered field at physical ``points``.

        Args:
            field: ``(batch, *shape)`` stored at the faces of ``axis`` (None: cell centres).
            points: coordinates ``(x, y[, z])``, each of shape ``(batch, *out_shape)`` or
                broadcastable to it.
        Periodic axes wrap; bounded axes clamp to the outermost sample (constant extrapolation).
        """
        idx = self.index_coords(points, axis)
        return sample_indices(field, idx, self.periodic, mode=mode)


def sample_indices(
    field: torch.Tensor,
    idx: Sequence[torch.Tensor],
    periodic: Sequence[bool],
    mode: str = "bilinear",
) -> torch.Tensor:
    """Interpolate ``field (batch, *shape)`` at fractional indices ``idx`` (coordinate order).

    Periodic axes wrap (the field is padded with its first slice so that interpolation between
    the last and first sample works); other axes clamp (``padding_mode='border'``).
    """
    dim = len(idx)
    batch = field.shape[0]
    shapes = [tuple(i.shape) for i in idx]
    # torch.broadcast_shapes costs more than the interpolation on small grids: skip it when
    # every index array has the same shape already (the advection's case)
    same = all(s == shapes[0] for s in shapes)
    out_shape = shapes[0] if same else tuple(torch.broadcast_shapes(*shapes))
    if len(out_shape) == dim:  # static points: same for every sample
        out_shape = (batch, *out_shape)
    grid_coords = []
    f = field
    for a in range(dim):
        td = f.dim() - 1 - a
        n = f.shape[td]
        i = idx[a].expand(out_shape)
        if periodic[a]:
            i = torch.remainder(i, n)
            f = torch.cat([f, f.narrow(td, 0, 1)], dim=td)
            n = n + 1
        grid_coords.append(2.0 * i / (n - 1) - 1.0)
    g = torch.stack(grid_coords, dim=-1)
    if g.dim() != dim + 2:  # arbitrary point sets: sample them as a flat row
        g = g.reshape(batch, *([1] * (dim - 1)), -1, dim)
    res = F.grid_sample(
        f.unsqueeze(1), g.to(f.dtype), mode=mode, padding_mode="border", align_corners=True
    )
    return res.reshape(out_shape)


def downsample(grid_fine: MACGrid, grid_coarse: MACGrid, state: Sequence[torch.Tensor]) -> tuple:
    """Restrict a fine staggered state ``(*velocity, pressure)`` to a coarser grid.

    Velocity: the coarse face ``I`` along axis d coincides with fine face ``f*I``; its value is
    the mean over the ``f^(dim-1)`` fine faces covering it (a face average, so fluxes and hence
    cell divergences are conserved: the coarse divergence is the mean of the fine divergences).
    Pressure: mean over the ``f^dim`` fine cells of each coarse cell.
    Both grids must span the same domain with the fine resolution an integer multiple.
    """
    dim = grid_fine.dim
    if grid_coarse.dim != dim or len(state) not in (dim, dim + 1):
        raise ValueError(f"state of {len(state)} tensors does not fit a {dim}D grid")
    factors = []
    for nf, nc in zip(grid_fine.resolution, grid_coarse.resolution, strict=True):
        if nf % nc:
            raise ValueError(
                f"fine resolution {grid_fine.resolution} is not a multiple of "
                f"{grid_coarse.resolution}"
            )
        factors.append(nf // nc)
    if any(
        abs(a - b) > 1e-9 * max(a, b) for a, b in zip(grid_fine.size, grid_coarse.size, strict=True)
    ):
        raise ValueError(f"domain sizes differ: {grid_fine.size} vs {grid_coarse.size}")
    pool = F.avg_pool2d if dim == 2 else F.avg_pool3d
    out = []
    for a in range(dim):
        comp = state[a]
        td = comp.dim() - 1 - a
        # coarse face I coincides with fine face f*I (for a periodic axis, I < n_coarse)
        comp = comp.index_select(
            td, torch.arange(0, comp.shape[td], factors[a], device=comp.device)
        )
        kernel = [factors[b] if b != a else 1 for b in reversed(range(dim))]
        out.append(pool(comp.unsqueeze(1), kernel).squeeze(1))
    if len(state) > dim:
        kernel = list(reversed(factors))
        out.append(pool(state[dim].unsqueeze(1), kernel).squeeze(1))
    return tuple(out)


def cell_centered(grid: MACGrid, velocity: Velocity) -> torch.Tensor:
    """Average face velocities to cell centres: ``(batch, dim, *cells)``, components x, y[, z]."""
    comps = []
    for a, comp in enumerate(velocity):
        td = grid.tensor_dim(a)
        if grid.periodic[a]:
            c = 0.5 * (comp + torch.roll(comp, -1, dims=td))
        else:
            n = comp.shape[td]
            c = 0.5 * (comp.narrow(td, 0, n - 1) + comp.narrow(td, 1, n - 1))
        comps.append(c)
    return torch.stack(comps, dim=1)


def stack_staggered(grid: MACGrid, velocity: Velocity) -> torch.Tensor:
    """Pack the components into one tensor ``(batch, dim, *(cells + 1))`` for a network.

    Each component is zero-padded at the upper end of the axes where it has fewer samples
    (the layout PhiFlow's ``staggered_tensor`` uses); ``unstack_staggered`` inverts it. A
    periodic axis has as many faces as cells and is not padded (``cells`` there, not
    ``cells + 1``), so the packed tensor stays periodic for circular convolutions.
    """
    full = [
        n + (0 if grid.periodic[grid.dim - 1 - td] else 1) for td, n in enumerate(grid.cell_shape)
    ]
    comps = []
    for comp in velocity:
        pad = []
        for td in reversed(range(grid.dim)):
            pad += [0, full[td] - comp.shape[1 + td]]
        comps.append(F.pad(comp, pad))
    return torch.stack(comps, dim=1)


def unstack_staggered(grid: MACGrid, packed: torch.Tensor) -> Velocity:
    """Inverse of ``stack_staggered``: crop each channel to its component's face shape."""
    out = []
    for a in range(grid.dim):
        comp = packed[:, a]
        for td, n in enumerate(grid.face_shape(a)):
            comp = comp.narrow(1 + td, 0, n)
        out.append(comp)
    return tuple(out)
