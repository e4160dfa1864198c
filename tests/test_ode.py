"""ODE solvers on Lotka–Volterra: observed order, tolerance, conservation, gradients."""

import math

import numpy as np
import pytest
import torch

from hybridsim.config import LVConfig, MLPConfig, NoCorrectionConfig, ODESolverConfig
from hybridsim.numerics.ode import RK4, Dopri5, Euler, odeint
from hybridsim.numerics.rollout import GradientMode
from hybridsim.problems.lotka_volterra import LotkaVolterra, first_integral, lotka_volterra_rhs
from hybridsim.problems.lotka_volterra_eval import rhs_at

CFG = LVConfig()
F = lotka_volterra_rhs(CFG)
U0 = torch.tensor([[10.0, 10.0], [5.0, 3.0]], dtype=torch.float64)


def reference(t_end: float) -> torch.Tensor:
    t = torch.tensor([0.0, t_end], dtype=torch.float64)
    return odeint(F, U0, t, Dopri5(rtol=1e-12, atol=1e-14))[-1]


@pytest.mark.parametrize("solver,order", [(Euler(), 1), (RK4(), 4)])
def test_observed_order_by_step_halving(solver, order):
    t_end, ref = 2.0, reference(2.0)
    errors = []
    steps = [200, 400, 800] if order == 1 else [40, 80, 160]
    for n in steps:
        t = torch.linspace(0, t_end, n + 1, dtype=torch.float64)
        errors.append(float((odeint(F, U0, t, solver)[-1] - ref).abs().max()))
    rates = [math.log2(a / b) for a, b in zip(errors[:-1], errors[1:], strict=True)]
    assert all(abs(r - order) < 0.25 for r in rates), f"observed orders {rates}, expected {order}"


def test_substeps_equal_finer_output_grid():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    fine = torch.linspace(0, 1, 41, dtype=torch.float64)
    a = odeint(F, U0, t, RK4(), substeps=4)
    b = odeint(F, U0, fine, RK4())[::4]
    torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("rtol", [1e-4, 1e-6, 1e-8])
def test_dopri5_meets_tolerance(rtol):
    ref = reference(5.0)
    t = torch.tensor([0.0, 5.0], dtype=torch.float64)
    out = odeint(F, U0, t, Dopri5(rtol=rtol, atol=rtol * 1e-2))[-1]
    rel = float(((out - ref).abs() / ref.abs()).max())
    # Global error of a locally controlled method: within a modest factor of the tolerance.
    assert rel < 50 * rtol, f"dopri5 rtol={rtol}: relative error {rel:.2e}"


def test_dopri5_exact_on_linear_ode():
    lam = -0.7
    t = torch.linspace(0, 3, 7, dtype=torch.float64)
    u0 = torch.ones(1, 1, dtype=torch.float64)
    out = odeint(lambda t, u: lam * u, u0, t, Dopri5(rtol=1e-10, atol=1e-12))
    err = float((out[:, 0, 0] - torch.exp(lam * t)).abs().max())
    assert err < 1e-9, f"max error {err:.2e} against exp(lam t)"


def test_first_integral_conserved_along_reference():
    data = LotkaVolterra(CFG).generate("test", 3)
    v = first_integral(CFG, torch.from_numpy(data.arrays["u_true"]))
    drift = float((v - v[:, :1]).abs().max())
    assert drift < 1e-8, f"V drifts by {drift:.2e} along the reference"


def test_euler_energy_drifts_upward():
    t = torch.linspace(0, 20, 201, dtype=torch.float64)
    v = first_integral(CFG, odeint(F, U0[:1], t, Euler())[:, 0])
    assert float(v[-1] - v[0]) > 0.01, "explicit Euler should spiral outward (V increases)"


def _model(solver: str, init_scale: float = 0.1):
    problem = LotkaVolterra(CFG)
    train = problem.generate("train", 1)
    corr = MLPConfig(width=[8], init_scale=init_scale)
    return problem.build_model(ODESolverConfig(name=solver), corr, "rhs", train).double()


@pytest.mark.parametrize("solver", ["euler", "rk4", "dopri5"])
def test_gradcheck_through_unrolled_steps(solver):
    model = _model(solver)
    t = torch.linspace(0, 0.3, 4, dtype=torch.float64)
    w = model.correction.weights[0]

    def f(u0, weight, theta3):
        params = {"correction.weights.0": weight, "theta3": theta3}
        return torch.func.functional_call(model, params, (u0, t))

    u0 = U0.clone().requires_grad_()
    weight = w.detach().clone().requires_grad_()
    theta3 = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (u0, weight, theta3), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("solver", ["euler", "rk4", "dopri5"])
def test_zero_correction_is_physics_only(solver):
    problem = LotkaVolterra(CFG)
    train = problem.generate("train", 1)
    zero = MLPConfig(init_scale=0.0)
    none = NoCorrectionConfig()
    hybrid = problem.build_model(ODESolverConfig(name=solver), zero, "rhs", train)
    with torch.no_grad():
        hybrid.correction.biases[-1].zero_()
    physics = problem.build_model(ODESolverConfig(name=solver), none, "rhs", train)
    t = torch.linspace(0, 2, 21)
    u0 = torch.tensor([[10.0, 10.0]])
    with torch.no_grad():
        assert torch.equal(hybrid(u0, t), physics(u0, t))


def test_physics_only_misses_interactions():
    problem = LotkaVolterra(CFG)
    train = problem.generate("train", 1)
    none = NoCorrectionConfig()
    physics = problem.build_model(ODESolverConfig(name="rk4"), none, "rhs", train)
    u = torch.tensor([[10.0, 10.0]])
    rhs = rhs_at(physics, u)
    np.testing.assert_allclose(rhs.detach().numpy(), [[1.1 * 10, -0.5 * 10]], rtol=1e-6)


@pytest.mark.parametrize("substeps", [1, 2])
def test_gradient_modes_through_the_ude(substeps):
    """Checkpointing gives full backpropagation's gradient; truncation only the same forward."""
    model = _model("rk4")
    model.stepper.substeps = substeps
    t = torch.linspace(0, 1.0, 11, dtype=torch.float64)

    def run(kind: str, every: int = 3):
        model.gradient = GradientMode(kind, every)
        model.zero_grad()
        out = model(U0, t)
        (out**2).sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    full_out, full_grad = run("full")
    for kind in ("checkpoint", "truncate"):
        out, grad = run(kind)
        torch.testing.assert_close(out, full_out, rtol=1e-12, atol=1e-12)
        same = all(
            torch.allclose(a, b, rtol=1e-10, atol=1e-12)
            for a, b in zip(grad, full_grad, strict=True)
        )
        assert same == (kind == "checkpoint"), f"{kind}: gradient agreement {same}"


@pytest.mark.parametrize("per_capita", [True, False])
@pytest.mark.parametrize("coupling", ["rhs", "blackbox"])
def test_fused_rhs_equals_plain_rhs(coupling, per_capita):
    """The fast path (scales folded into the weights) computes the same function."""
    problem = LotkaVolterra(LVConfig(per_capita=per_capita))
    train = problem.generate("train", 1)
    corr = MLPConfig(width=[16, 8], init_scale=1.0)
    model = problem.build_model(ODESolverConfig(name="rk4"), corr, coupling, train).double()
    u = torch.rand(33, 2, dtype=torch.float64) * torch.tensor([29.0, 11.0])
    fast = model.coupling.rhs(model.stepper, model.correction)(0.0, u)
    torch.testing.assert_close(fast, rhs_at(model, u), rtol=1e-12, atol=1e-12)


def test_per_capita_networks_keep_extinct_populations_at_zero():
    """NN₁ = x·g₁, NN₂ = y·g₂: dx/dt = 0 where x = 0 and dy/dt = 0 where y = 0, whatever the
    network (the unconstrained form does not)."""
    corr = MLPConfig(width=[16], init_scale=1.0)
    u = torch.tensor([[0.0, 3.0], [2.0, 0.0]], dtype=torch.float64)
    for per_capita in (True, False):
        problem = LotkaVolterra(LVConfig(per_capita=per_capita))
        model = problem.build_model(
            ODESolverConfig(name="rk4"), corr, "rhs", problem.generate("train", 1)
        ).double()
        with torch.no_grad():
            f = rhs_at(model, u)
        zero = bool(f[0, 0] == 0 and f[1, 1] == 0)
        assert zero == per_capita, f"per_capita={per_capita}: {f}"
