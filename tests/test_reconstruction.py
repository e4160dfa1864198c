"""Data terms, one-step solvers and metrics for CT reconstruction."""

from functools import partial

import numpy as np
import pytest
import torch

from hybridsim.numerics.phantoms import random_phantoms, shepp_logan
from hybridsim.numerics.radon import RayTransform, fbp
from hybridsim.numerics.reconstruction import (
    AcceleratedGradientDescent,
    GradientDescent,
    LeastSquares,
    PoissonLogLikelihood,
    beer_lambert_counts,
    data_and_regularizer_gradients,
    gaussian_noise,
    psnr,
    ssim,
)
from hybridsim.numerics.regularizers import DirichletEnergy, TotalVariation
from hybridsim.numerics.rollout import GradientMode, rollout


@pytest.fixture(scope="module")
def op():
    return RayTransform(16, angles=8, normalize=True)


def _phantom(n: int = 16, batch: int = 2) -> torch.Tensor:
    return random_phantoms(batch, n, np.random.default_rng(0), dtype=torch.float64).clamp_min(0)


def test_least_squares_gradient_matches_autograd(op):
    a = _phantom()
    y = op(a.flip(-1))
    data = LeastSquares(op, op_norm=1.0)
    v = a.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(data.value(v, y).sum(), v)
    err = float((data.gradient(a, y) - auto).abs().max())
    assert err < 1e-12, f"least-squares gradient vs autograd: {err:.2e}"


def test_poisson_gradient_matches_autograd(op):
    a = _phantom()
    mu, i0 = 2.0, 1e4
    counts = beer_lambert_counts(op, a, mu, i0, torch.Generator().manual_seed(0))
    assert torch.equal(counts, beer_lambert_counts(op, a, mu, i0, torch.Generator().manual_seed(0)))
    assert float((counts - counts.round()).abs().max()) == 0.0 and float(counts.min()) >= 0
    data = PoissonLogLikelihood(op, mu, i0, op_norm=1.0)
    b = 0.5 * a + 0.1
    v = b.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(data.value(v, counts).sum(), v)
    analytic = data.gradient(b, counts)
    err = float((analytic - auto).abs().max() / auto.abs().max())
    assert err < 1e-10, f"Poisson NLL gradient vs autograd: relative error {err:.2e}"
    # noiseless counts: the true image is a stationary point
    expected = beer_lambert_counts(op, a, mu, i0)
    assert float(data.gradient(a, expected).abs().max()) < 1e-8


def test_gaussian_noise_level_and_seed():
    y = torch.ones(4, 30, 50, dtype=torch.float64) * 3.0
    n1 = gaussian_noise(y, 0.05, torch.Generator().manual_seed(1))
    n2 = gaussian_noise(y, 0.05, torch.Generator().manual_seed(1))
    assert torch.equal(n1, n2)
    std = float((n1 - y).std())
    assert abs(std / (0.05 * 3.0) - 1) < 0.05, f"noise std {std:.4f}, expected 0.15"


def test_gd_step_without_regularizer_is_hand_computed(op):
    a, y = _phantom(), op(_phantom().flip(-2))
    solver = GradientDescent(LeastSquares(op, op_norm=1.0), TotalVariation(), lam=0.0)
    expected = a - 1.0 * op.A_adjoint(op(a) - y)  # s = 1 / ||F||^2 = 1
    assert torch.allclose(solver.step(a, y), expected, atol=1e-14)
    s = 0.3
    reg = GradientDescent(LeastSquares(op, op_norm=1.0), DirichletEnergy(), 0.1, step_size=s)
    grad_d, grad_r = data_and_regularizer_gradients(a, y, reg.data, reg.regularizer)
    assert torch.allclose(reg.step(a, y), a - s * (grad_d + 0.1 * grad_r), atol=1e-14)


def test_accelerated_beats_plain_descent(op):
    a_true = _phantom()
    y = gaussian_noise(op(a_true), 0.05, torch.Generator().manual_seed(0))
    kw = dict(data=LeastSquares(op, op_norm=1.0), regularizer=TotalVariation(0.05), lam=1e-3)
    plain, fast = GradientDescent(**kw), AcceleratedGradientDescent(**kw)
    a0 = torch.zeros_like(a_true)
    a_plain = rollout(partial(plain.step, sinogram=y), plain.init(a0), 50, save_every=50)[-1]
    state = rollout(partial(fast.step, sinogram=y), fast.init(a0), 50, save_every=50)[-1]
    f_plain, f_fast = plain.objective(a_plain, y), fast.objective(state[0], y)
    assert bool((f_fast < f_plain).all()), f"accelerated {f_fast} vs plain {f_plain} after 50"


def test_accelerated_rollout_checkpoint_matches_full(op):
    a_true = _phantom(batch=1)
    y = op(a_true)
    solver = AcceleratedGradientDescent(LeastSquares(op, op_norm=1.0), DirichletEnergy(), 1e-2)
    grads = []
    for mode in (GradientMode("full"), GradientMode("checkpoint", 3)):
        a0 = torch.zeros_like(a_true, requires_grad=True)
        out = rollout(partial(solver.step, sinogram=y), solver.init(a0), 7, gradient=mode)[-1]
        (g,) = torch.autograd.grad(out[0].square().sum(), a0)
        grads.append(g)
    assert torch.allclose(*grads, atol=1e-12)


def test_tv_descent_beats_fbp_on_noisy_data():
    # 5 % noise, 30 angles (the paper's setting, on 64 x 64 to keep the test fast)
    x = shepp_logan(64, dtype=torch.float64)
    op = RayTransform(64, angles=30, normalize=True)
    y = gaussian_noise(op(x), 0.05, torch.Generator().manual_seed(0))
    a_fbp = fbp(op, y, "hann")
    solver = AcceleratedGradientDescent(
        LeastSquares(op, op_norm=1.0), TotalVariation(1e-2), lam=3e-4, nonnegative=True
    )
    a_tv = rollout(partial(solver.step, sinogram=y), solver.init(a_fbp), 150, save_every=150)[-1][0]
    p_fbp, p_tv = float(psnr(a_fbp, x)), float(psnr(a_tv, x))
    assert p_tv > p_fbp + 3, f"TV {p_tv:.2f} dB vs FBP {p_fbp:.2f} dB"


def test_psnr_known_value():
    x = torch.zeros(1, 8, 8, dtype=torch.float64)
    x[0, 0, 0] = 2.0  # data range 2
    noisy = x + 0.1
    assert abs(float(psnr(noisy, x)) - 10 * np.log10(4 / 0.01)) < 1e-9
    assert abs(float(psnr(noisy, x, data_range=1.0)) - 20.0) < 1e-9


def test_ssim_matches_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    x = shepp_logan(48, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    noisy = x + 0.1 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    ours = float(ssim(noisy, x, data_range=1.0))
    ref = metrics.structural_similarity(
        noisy[0].numpy(),
        x[0].numpy(),
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert abs(ours - ref) < 1e-6, f"ssim {ours:.8f} vs skimage {ref:.8f}"
    assert abs(float(ssim(x, x)) - 1) < 1e-12
