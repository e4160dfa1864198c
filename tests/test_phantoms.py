"""Phantoms: determinism, Shepp-Logan values, exact ellipse projections, fine-grid data."""

import numpy as np
import torch

from hybridsim.numerics.phantoms import (
    ellipse_sinogram,
    random_ellipses,
    random_phantoms,
    render_ellipses,
    shepp_logan,
    shepp_logan_ellipses,
    simulate_sinogram,
)
from hybridsim.numerics.radon import RayTransform


def test_shepp_logan_values():
    x = shepp_logan(128)
    assert x.shape == (1, 128, 128) and x.dtype == torch.float32
    assert abs(float(x.min())) < 1e-6 and abs(float(x.max()) - 1.0) < 1e-6
    values = {round(float(v), 4) for v in x.unique()}
    assert values <= {0.0, 0.1, 0.2, 0.3, 0.4, 1.0}, values
    assert abs(float(x[0, 6, 64]) - 1.0) < 1e-6  # skull at the top: row 0 is y = +1
    assert abs(float(x[0, 64, 64]) - 0.2) < 1e-6  # brain
    # the three small ellipses sit at y = -0.605, the bottom of an upright image
    assert abs(float(x[0, 102, 64]) - 0.3) < 1e-6 and abs(float(x[0, 25, 64]) - 0.2) < 1e-6


def test_random_phantoms_deterministic_by_seed():
    a = random_phantoms(3, 32, np.random.default_rng(7))
    b = random_phantoms(3, 32, np.random.default_rng(7))
    c = random_phantoms(3, 32, np.random.default_rng(8))
    assert a.shape == (3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    t1 = random_phantoms(2, 32, torch.Generator().manual_seed(3))
    t2 = random_phantoms(2, 32, torch.Generator().manual_seed(3))
    assert torch.equal(t1, t2) and not torch.equal(t1[0], t1[1])


def test_random_ellipse_statistics():
    rng = np.random.default_rng(0)
    e = torch.cat([random_ellipses(100, rng) for _ in range(50)])
    n = e.shape[0] / 50
    assert 90 < n < 110, f"mean ellipse count {n}"
    assert abs(float(e[:, 1:3].mean()) - 0.2) < 0.01  # half-axes 0.2 Exp(1)
    assert float(e[:, 3:5].abs().max()) <= 0.5  # centres U - 0.5
    # value (U - 0.3) Exp(0.3): mean 0.2 * 0.3 = 0.06
    assert abs(float(e[:, 0].mean()) - 0.06) < 0.01, float(e[:, 0].mean())
    te = random_ellipses(100, torch.Generator().manual_seed(0))
    assert te.shape[1] == 6 and te.dtype == torch.float64


def test_supersampling_converges_to_area():
    disk = torch.tensor([[1.0, 0.5, 0.5, 0.0, 0.0, 0.0]])
    area = np.pi * 16**2  # radius 0.5 of the half-width 32
    for ss, tol in ((1, 0.02), (8, 0.002)):
        mass = float(render_ellipses(disk, 64, supersample=ss, dtype=torch.float64).sum())
        assert abs(mass / area - 1) < tol, f"supersample {ss}: mass {mass:.2f} vs {area:.2f}"


def test_ellipse_sinogram_matches_discrete_projection():
    op = RayTransform(64, angles=10, normalize=True)
    exact = ellipse_sinogram(shepp_logan_ellipses(), op)
    coarse = op(shepp_logan(64, dtype=torch.float64))
    fine = simulate_sinogram(shepp_logan(256, dtype=torch.float64), op, 4)
    err_coarse = float((coarse - exact).norm() / exact.norm())
    err_fine = float((fine - exact).norm() / exact.norm())
    assert err_fine < 0.03 and err_fine < err_coarse, (err_fine, err_coarse)
    assert fine.shape == coarse.shape == (1, 10, op.n_det)
