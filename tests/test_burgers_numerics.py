"""Burgers numerics: Cole–Hopf exact solutions, conservation, energy, orders, gradients."""

import math

import pytest
import torch

from hybridsim.numerics.burgers import (
    DEFAULTS,
    SpectralBurgers,
    cell_average,
    energy,
    fourier_resample,
    grid_points,
    random_initial_conditions,
    reference_substeps,
    reference_trajectory,
    relative_l2,
)
from hybridsim.numerics.burgers_fv import FLUXES, LIMITERS, CoarseBurgers

F64 = {"dtype": torch.float64}
TWO_PI = 2 * math.pi
# phi = A + sum_m c_m exp(-nu k_m^2 t) cos(k_m x): A > sum |c_m| keeps phi > 0
COLE_HOPF = (1.3, ((1, 0.6), (2, 0.3), (3, 0.2)))


def _phi(x: torch.Tensor, t: float, nu: float, length: float) -> tuple[torch.Tensor, torch.Tensor]:
    a, modes = COLE_HOPF
    phi, phi_x = torch.full_like(x, a), torch.zeros_like(x)
    for m, c in modes:
        k = TWO_PI * m / length
        decay = c * math.exp(-nu * k * k * t)
        phi = phi + decay * torch.cos(k * x)
        phi_x = phi_x - k * decay * torch.sin(k * x)
    return phi, phi_x


def cole_hopf(n: int, t: float, nu: float, length: float = TWO_PI) -> torch.Tensor:
    """Exact ``u = -2 nu phi_x / phi`` at ``x_j = j L / n``, ``(1, n)``."""
    phi, phi_x = _phi(grid_points(n, length, **F64), t, nu, length)
    return (-2 * nu * phi_x / phi).unsqueeze(0)


def cole_hopf_cell_averages(n: int, t: float, nu: float, length: float = TWO_PI) -> torch.Tensor:
    """Exact averages over ``[i h, (i+1) h]``: ``-2 nu (ln phi(x_{i+1}) - ln phi(x_i)) / h``."""
    h = length / n
    phi, _ = _phi(torch.arange(n + 1, **F64) * h, t, nu, length)
    return (-2 * nu * torch.diff(torch.log(phi)) / h).unsqueeze(0)


def _initial(batch: int, seed: int, **kw) -> torch.Tensor:
    return random_initial_conditions(batch, 64, torch.Generator().manual_seed(seed), **kw)


def _rate(errors: list[float]) -> float:
    """Observed order from errors on successively halved step sizes (last pair)."""
    return math.log2(errors[-2] / errors[-1])


# ------------------------------------------------------------------------- initial conditions


def test_initial_conditions_are_seeded_bounded_zero_mean_and_grid_independent():
    a = _initial(16, 3, k_max=5, amplitude=1.5)
    assert torch.equal(a, _initial(16, 3, k_max=5, amplitude=1.5))
    assert not torch.equal(a, _initial(16, 4, k_max=5, amplitude=1.5))
    assert a.shape == (16, 64)
    assert float(a.abs().max()) <= 1.5
    assert float(a.mean(-1).abs().max()) < 1e-14
    # the same function on any grid: sampled at 512 points = resampled from 64 points
    fine = random_initial_conditions(
        16, 512, torch.Generator().manual_seed(3), k_max=5, amplitude=1.5
    )
    assert torch.allclose(fourier_resample(a, 512), fine, atol=1e-13)
    assert torch.allclose(fourier_resample(fine, 64), a, atol=1e-13)
    f32 = random_initial_conditions(
        16, 64, torch.Generator().manual_seed(3), k_max=5, amplitude=1.5, dtype=torch.float32
    )
    assert f32.dtype == torch.float32 and torch.allclose(f32.double(), a, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, needle",
    [({"k_max": 32}, "k_max"), ({"k_max": 0}, "k_max"), ({"amplitude": -1.0}, "amplitude")],
)
def test_initial_conditions_reject_bad_parameters(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        _initial(2, 0, **kwargs)


def test_cell_average_is_exact_for_cole_hopf_and_keeps_the_mean():
    """Exact averages of the trigonometric interpolant: the closed-form cell averages of a
    resolved smooth function, to spectral accuracy (not the point values at the centres)."""
    nu, n_coarse = 0.1, 32
    u = cole_hopf(256, 0.0, nu)
    avg = cell_average(u, n_coarse)
    exact = cole_hopf_cell_averages(n_coarse, 0.0, nu)
    assert float((avg - exact).abs().max()) < 1e-12
    centres = cole_hopf(2 * n_coarse, 0.0, nu)[:, 1::2]
    assert float((centres - exact).abs().max()) > 1e-3, "cell averages differ from point values"
    assert abs(float(avg.mean() - u.mean())) < 1e-15
    with pytest.raises(ValueError, match="multiple"):
        cell_average(u, 48)


# ---------------------------------------------------------------------------- spectral reference


@pytest.mark.parametrize("length", [TWO_PI, 1.0])
def test_reference_matches_cole_hopf(length):
    """Exact solution of viscous Burgers (Cole 1951, Hopf 1950), point values and cell averages."""
    nu = 0.1 * (length / TWO_PI) ** 2  # the same solution in scaled variables
    t_end = 1.0
    traj = reference_trajectory(
        cole_hopf(128, 0.0, nu, length), nu, t_end / 4, 4, 128, substeps=50, length=length
    )
    assert float((traj[:, -1] - cole_hopf(128, t_end, nu, length)).abs().max()) < 1e-12
    coarse = reference_trajectory(
        cole_hopf(128, 0.0, nu, length), nu, t_end, 1, 128, n_coarse=16, substeps=200, length=length
    )
    exact = cole_hopf_cell_averages(16, t_end, nu, length)
    assert float((coarse[:, -1] - exact).abs().max()) < 1e-12


def test_reference_converges_spectrally_in_space():
    nu, t_end = 0.1, 1.0
    errors = []
    for n in (16, 32, 64):
        u = reference_trajectory(cole_hopf(n, 0.0, nu), nu, t_end, 1, n, substeps=200)[:, -1]
        errors.append(float((u - cole_hopf(n, t_end, nu)).abs().max()))
    # exponential convergence: each doubling gains far more than any fixed algebraic order
    assert errors[1] < 1e-2 * errors[0] and errors[2] < 1e-3 * errors[1], errors
    assert errors[2] < 1e-10, errors


def test_reference_etdrk4_is_fourth_order_in_time():
    nu, t_end, n = 0.05, 2.0, 128
    u0, exact = cole_hopf(n, 0.0, nu), cole_hopf(n, t_end, nu)
    fine = SpectralBurgers(n)
    errors = []
    for steps in (4, 8, 16, 32):
        u = fine.advance(u0, fine.coefficients(nu, t_end / steps, u0), steps)
        errors.append(float((u - exact).abs().max()))
    rate = _rate(errors)
    assert 3.6 < rate < 4.4, f"ETDRK4 order {rate:.2f}, errors {errors}"
    assert errors[-1] < 1e-9, errors


def test_reference_conserves_mass_exactly_and_energy_never_grows():
    u0 = _initial(6, 1, k_max=5)
    traj = reference_trajectory(u0, torch.linspace(0.005, 0.05, 6, **F64), 0.05, 60, 512)
    drift = (traj.mean(-1) - traj[:, :1].mean(-1)).abs().max()
    assert float(drift) < 1e-15
    e = energy(traj)
    assert bool((e[:, 1:] <= e[:, :-1] * (1 + 1e-13)).all())
    assert bool((e[:, -1] < 0.9 * e[:, 0]).all()), "viscosity must dissipate energy"
    coarse = reference_trajectory(u0, 0.02, 0.05, 10, 512, n_coarse=32)
    assert float((coarse.mean(-1) - u0.mean(-1, keepdim=True)).abs().max()) < 1e-15


def test_reference_batches_viscosity_per_sample():
    u0 = _initial(2, 5)
    kw = {"n_coarse": 32, "u_max": 1.0}  # a bound, not the batch's max: batch-independent dt
    both = reference_trajectory(u0, torch.tensor([0.02, 0.05], **F64), 0.1, 5, 128, **kw)
    for i, nu in enumerate((0.02, 0.05)):
        one = reference_trajectory(u0[i : i + 1], nu, 0.1, 5, 128, **kw)
        assert torch.allclose(both[i : i + 1], one, atol=1e-14, rtol=0)
    assert both.shape == (2, 6, 32)
    with pytest.raises(ValueError, match="u_max"):
        reference_trajectory(u0, 0.02, 0.1, 5, 128, u_max=0.5)


def test_reference_float32_agrees_with_float64():
    u0 = _initial(3, 2)
    ref64 = reference_trajectory(u0, 0.03, 0.05, 20, 256, n_coarse=32)
    ref32 = reference_trajectory(u0.float(), 0.03, 0.05, 20, 256, n_coarse=32)
    assert ref32.dtype == torch.float32
    assert float((ref32.double() - ref64).abs().max()) < 1e-5


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"nu": -0.01}, "viscosity"),
        ({"nu": torch.tensor([0.01, 0.02, 0.03])}, "one per sample"),
        ({"dt": 0.0}, "dt"),
        ({"n_steps": -1}, "n_steps"),
        ({"n_fine": 129}, "even"),
    ],
)
def test_reference_rejects_bad_input(kwargs, needle):
    args = {"nu": 0.02, "dt": 0.1, "n_steps": 2, "n_fine": 128} | kwargs
    with pytest.raises(ValueError, match=needle):
        reference_trajectory(_initial(2, 0), **args)


# --------------------------------------------------------------------------------- coarse solver


@pytest.mark.parametrize("flux", FLUXES)
@pytest.mark.parametrize("limiter", LIMITERS)
def test_coarse_conserves_mass_and_dissipates_energy(limiter, flux):
    """Fluxes telescope on a periodic grid: mass to round-off. Energy: a theorem for the monotone
    first-order schemes (SSP-RK3 is a convex combination of Euler steps); for the limited
    schemes it holds on this steep case (nu = 0.002, shocks spanning about a cell)."""
    u0 = cell_average(fourier_resample(_initial(8, 2, k_max=5), 256), 32)
    traj = CoarseBurgers(32, limiter=limiter, flux=flux).trajectory(u0, 0.002, 0.08, 100)
    drift = (traj.sum(-1) - traj[:, :1].sum(-1)).abs().max()
    assert float(drift) < 1e-13
    if limiter != "unlimited":  # central slopes are not TVD: no energy guarantee
        e = energy(traj)
        assert bool((e[:, 1:] <= e[:, :-1]).all())


@pytest.mark.parametrize(
    "limiter, flux, low, high",
    [
        ("first_order", "rusanov", 0.85, 1.15),
        ("van_leer", "rusanov", 1.8, 2.3),
        ("van_leer", "godunov", 1.8, 2.3),
        ("mc", "rusanov", 1.7, 2.3),
    ],
)
def test_coarse_spatial_order_against_reference(limiter, flux, low, high):
    """Smooth case (amplitude 0.5, nu 0.05, t = 1), dt proportional to h (time error O(h^3))."""
    u0 = _initial(3, 1, k_max=2, amplitude=0.5)
    nu, t_end = 0.05, 1.0
    errors = []
    for n in (32, 64, 128):
        ref = reference_trajectory(u0, nu, t_end, 1, 256, n_coarse=n, substeps=20)
        solver = CoarseBurgers(n, limiter=limiter, flux=flux)
        steps = math.ceil(t_end / (0.25 * solver.h))
        u = ref[:, 0]
        for _ in range(steps):
            u = solver.step(u, nu, t_end / steps)
        errors.append(float(relative_l2(u, ref[:, -1]).max()))
    rate = _rate(errors)
    assert solver.order == (1 if limiter == "first_order" else 2)
    assert low < rate < high, f"{limiter}/{flux}: order {rate:.2f}, errors {errors}"


def test_coarse_ssp_rk3_is_third_order_in_time():
    """Self-convergence at fixed n (the spatial error cancels in differences of solutions)."""
    u0 = cell_average(fourier_resample(_initial(3, 1, k_max=2, amplitude=0.5), 256), 32)
    solver = CoarseBurgers(32, limiter="unlimited")
    sols = []
    for steps in (10, 20, 40, 80):
        u = u0
        for _ in range(steps):
            u = solver.step(u, 0.05, 1.0 / steps)
        sols.append(u)
    errors = [float((a - b).abs().max()) for a, b in zip(sols, sols[1:], strict=False)]
    rate = _rate(errors)
    assert solver.time_order == 3 and 2.8 < rate < 3.3, f"order {rate:.2f}, errors {errors}"


@pytest.mark.parametrize("limiter, flux", [("first_order", "rusanov"), ("van_leer", "godunov")])
def test_coarse_gradcheck_through_unrolled_steps(limiter, flux):
    """float64 gradcheck w.r.t. the state and the per-sample viscosity over 3 steps."""
    solver = CoarseBurgers(8, limiter=limiter, flux=flux)
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(2, 8, generator=gen, **F64).requires_grad_()
    nu = torch.tensor([0.05, 0.1], **F64, requires_grad=True)

    def three_steps(u: torch.Tensor, nu: torch.Tensor) -> torch.Tensor:
        return solver.trajectory(u, nu, 0.1, 3)

    assert torch.autograd.gradcheck(three_steps, (u, nu))


def test_coarse_batches_viscosity_per_sample_and_float32():
    u0 = cell_average(fourier_resample(_initial(2, 4), 256), 32)
    solver = CoarseBurgers(32)
    both = solver.trajectory(u0, torch.tensor([0.01, 0.04], **F64), 0.05, 10)
    for i, nu in enumerate((0.01, 0.04)):
        assert torch.equal(both[i : i + 1], solver.trajectory(u0[i : i + 1], nu, 0.05, 10))
    f32 = solver.trajectory(u0[:1].float(), 0.01, 0.05, 10)
    assert f32.dtype == torch.float32
    assert float((f32.double() - both[:1]).abs().max()) < 1e-5


def test_coarse_rejects_an_unstable_dt_naming_the_stable_one():
    solver = CoarseBurgers(32)
    u = torch.ones(2, 32, **F64)
    with pytest.raises(ValueError, match=r"unstable coarse Burgers step: dt=1 .* use dt <= 0\.1"):
        solver.step(u, 0.01, 1.0)
    dt_max = solver.max_stable_dt(1.0, 0.01)
    solver.step(u, 0.01, 0.99 * dt_max)  # just inside: accepted
    with pytest.raises(ValueError, match="unstable"):
        solver.step(u, 0.01, 1.01 * dt_max)
    CoarseBurgers(32, check_cfl=False).step(u, 0.01, 1.0)  # the check can be switched off


@pytest.mark.parametrize(
    "build, call, needle",
    [
        ({"n": 2}, None, "n >= 3"),
        ({"n": 32, "limiter": "superbee"}, None, "limiter"),
        ({"n": 32, "flux": "roe"}, None, "flux"),
        ({"n": 32}, {"u": torch.zeros(2, 16, **F64)}, r"shape \(batch, 32\)"),
        ({"n": 32}, {"nu": 0.0}, "viscosity"),
        ({"n": 32}, {"nu": float("nan")}, "viscosity"),
        ({"n": 32}, {"dt": -0.1}, "dt"),
    ],
)
def test_coarse_rejects_bad_input(build, call, needle):
    with pytest.raises(ValueError, match=needle):
        solver = CoarseBurgers(**build)
        args = {"u": torch.zeros(2, 32, **F64), "nu": 0.01, "dt": 0.05} | (call or {})
        solver.step(**args)


# ------------------------------------------------------------------------------------ defaults


def test_defaults_are_stable_and_leave_the_coarse_solver_a_measurable_error():
    """At the default setup the coarse step is within its CFL bound for every viscosity (by the
    maximum principle max|u| <= amplitude), the reference time step is resolved, and after 20
    steps the coarse solver alone is clearly off (a correction has something to learn)."""
    d = DEFAULTS
    solver = CoarseBurgers(d.n_coarse, d.length, d.limiter, d.flux)
    nus = (*d.nu_train, *d.nu_test)
    assert d.dt <= solver.max_stable_dt(d.amplitude, max(nus))
    assert reference_substeps(d.amplitude, d.dt, d.n_fine, d.length) >= 1
    u0 = random_initial_conditions(
        4, d.n_coarse, torch.Generator().manual_seed(0), k_max=d.k_max, amplitude=d.amplitude
    )
    nu = torch.tensor([min(nus), max(nus)] * 2, **F64)
    ref = reference_trajectory(u0, nu, d.dt, 20, d.n_fine, n_coarse=d.n_coarse, length=d.length)
    err = relative_l2(solver.trajectory(ref[:, 0], nu, d.dt, 20), ref)[:, -1]
    assert bool((err > 0.05).all()) and bool((err < 0.5).all()), err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    u0 = _initial(4, 0)
    nu = torch.tensor([0.01, 0.02, 0.03, 0.05], **F64)
    ref = reference_trajectory(u0, nu, 0.05, 10, 256, n_coarse=32)
    ref_gpu = reference_trajectory(u0.cuda(), nu.cuda(), 0.05, 10, 256, n_coarse=32)
    assert ref_gpu.device.type == "cuda"
    assert torch.allclose(ref_gpu.cpu(), ref, atol=1e-12, rtol=0)
    solver = CoarseBurgers(32)
    u = ref_gpu[:, 0].clone().requires_grad_()
    out = solver.trajectory(u, nu.cuda(), 0.05, 10)
    out.pow(2).sum().backward()
    assert torch.allclose(
        out.detach().cpu(), solver.trajectory(ref[:, 0], nu, 0.05, 10), atol=1e-12
    )
    assert u.grad is not None and bool(torch.isfinite(u.grad).all())
