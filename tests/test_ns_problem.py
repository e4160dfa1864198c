"""problem=ns below the CLI: data, the hybrid's coupling, gradient modes, SOL training, errors."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from hybridsim.config import (
    ConfigError,
    FluidSolverConfig,
    NoCorrectionConfig,
    NSConfig,
    ResNetConfig,
)
from hybridsim.nn.resnet import ResNet, n_parameters
from hybridsim.nn.unet import UNet
from hybridsim.numerics.rollout import GradientMode
from hybridsim.problems.base import ProblemError
from hybridsim.problems.navier_stokes import NavierStokes

# A tiny wake: coarse 32 x 16, reference 64 x 32, short warm-up.
TINY = NSConfig(
    resolution=[32, 16],
    factor=2,
    warmup=20,
    n_frames=12,
    n_frames_test=12,
    eval_steps=8,
    eval_long_steps=10,
    reynolds_train=[100.0, 800.0],
    reynolds_val=[300.0],
    reynolds_test=[200.0],
)
SOLVER = FluidSolverConfig(name="semi_lagrangian")
RESNET = ResNetConfig(width=[8, 8], kernel_size=3, init_scale=0.1)


@pytest.fixture(scope="module")
def tiny():
    problem = NavierStokes(TINY)
    return problem, problem.generate("train", 1)


def _tensors(split):
    return split.tensors(torch.device("cpu"), torch.float32)


def test_resnet_sizes():
    assert 46_000 < n_parameters(ResNet(3, 2, [32, 32, 32], 3)) < 48_000  # the pbdl book's
    assert 250_000 < n_parameters(ResNet(3, 2, [32], 5, blocks=5)) < 270_000  # Um et al.'s
    zero = ResNet(4, 3, [4], 3, dim=3, final_scale=0.0)
    assert torch.equal(zero(torch.randn(1, 4, 5, 6, 7)), torch.zeros(1, 3, 5, 6, 7))
    unet = UNet(3, 2, [4, 8, 8], 3)
    assert unet(torch.randn(2, 3, 17, 33)).shape == (2, 2, 17, 33)  # odd sizes: pad and crop
    assert torch.equal(
        UNet(3, 2, [4], 3, final_scale=0.0)(torch.ones(1, 3, 5, 5)), torch.zeros(1, 2, 5, 5)
    )


def test_data_shapes_and_disjoint_reynolds(tiny):
    problem, train = tiny
    a = train.arrays
    assert a["u"].shape == (2, 12, 16, 33) and a["v"].shape == (2, 12, 17, 32)
    assert a["p"].shape == (2, 12, 16, 32) and a["u"].dtype == np.float32
    assert np.isfinite(a["u"]).all() and list(a["reynolds"]) == [100.0, 800.0]
    assert train.coords["t"][0] == TINY.warmup
    assert not set(TINY.reynolds_train) & set(TINY.reynolds_test)


def test_zero_correction_is_the_solver_alone(tiny):
    problem, train = tiny
    data = _tensors(train)
    solver = problem.build_model(SOLVER, NoCorrectionConfig(), "after_step", train)
    zero = problem.build_model(SOLVER, replace(RESNET, init_scale=0.0), "after_step", train)
    batch = problem.batch(data, 2, 5, torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = problem.predict(solver, batch, teacher_forcing=False)
        b = problem.predict(zero, batch, teacher_forcing=False)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def test_checkpointing_gives_the_full_gradient(tiny):
    problem, train = tiny
    data = _tensors(train)
    model = problem.build_model(SOLVER, RESNET, "after_step", train)
    batch = problem.batch(data, 2, 6, torch.Generator().manual_seed(1))
    grads = []
    for mode in (GradientMode("full"), GradientMode("checkpoint", 2)):
        model.gradient = mode
        model.zero_grad()
        problem.loss(model, batch).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    rel = float((grads[0] - grads[1]).norm() / grads[0].norm())
    assert rel < 1e-4, f"checkpointed gradient differs from full by {rel:.2e}"


def test_sol_iterations_lower_the_loss(tiny):
    problem, train = tiny
    data = _tensors(train)
    torch.manual_seed(0)
    model = problem.build_model(SOLVER, RESNET, "after_step", train)
    batch = problem.batch(data, 2, 3, torch.Generator().manual_seed(2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = problem.loss(model, batch)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.85 * losses[0], f"SOL-3 loss did not drop: {losses}"


def test_non_is_teacher_forced_and_skips_the_solver_gradient(tiny):
    problem, train = tiny
    data = _tensors(train)
    model = problem.build_model(SOLVER, RESNET, "non", train)
    batch = problem.batch(data, 2, 3, torch.Generator().manual_seed(3))
    loss = problem.loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
    # step k starts from reference frame k: the first step equals a free rollout's first step
    with torch.no_grad():
        tf = problem.predict(model, batch, teacher_forcing=True)
        free = problem.predict(model, batch, teacher_forcing=False)
    assert torch.allclose(tf[0][:, 0], free[0][:, 0], atol=1e-6)


def test_model_set_and_validation(tiny):
    problem, train = tiny
    models = problem.model_set(SOLVER, RESNET, "after_step", train, baselines=True, untrained=True)
    assert set(models) == {"hybrid", "non", "solver"}
    assert models["solver"].correction is None and models["non"].coupling.name == "non"
    only = problem.model_set(SOLVER, NoCorrectionConfig(), "after_step", train, True, True)
    assert set(only) == {"hybrid"}
    metrics = problem.validate(models["solver"], _tensors(train))
    assert math.isfinite(metrics["loss"]) and 0 < metrics["rel_l2"] < 1


def test_taylor_green_reference_is_exact():
    cfg = NSConfig(
        scenario="taylor_green",
        resolution=[16, 16],
        factor=1,
        dt=0.1,
        warmup=0,
        n_frames=5,
        n_frames_test=5,
        eval_steps=4,
        eval_long_steps=4,
        reynolds_train=[10.0],
        reynolds_val=[20.0],
        reynolds_test=[15.0],
    )
    split = NavierStokes(cfg).generate("train", 1)
    u = split.arrays["u"][0]
    ratio = np.abs(u[-1]).max() / np.abs(u[0]).max()
    assert ratio == pytest.approx(math.exp(-2 * 0.1 * 4 * 0.1), rel=1e-5)


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"size": [15.0, 10.0]}, "does not fit"),
        ({"resolution": [4, 2]}, "smaller than the grid resolves"),
        ({"resolution": [64, 32, 32]}, "needs 2 entries"),
        ({"scenario": "kolmogorov", "resolution": [32, 16]}, "square"),
    ],
)
def test_bad_geometry(change, needle):
    with pytest.raises(ProblemError, match=needle):
        NavierStokes(replace(TINY, **change))


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"reynolds_train": [100.0, -5.0]}, "reynolds_train"),
        ({"reynolds_test": [0.0]}, "reynolds_test"),
        ({"scenario": "nope"}, "choose one of"),
        ({"eval_long_steps": 50}, "n_frames_test"),
        ({"eval_steps": 11}, "problem.eval_long_steps=10 must be >= problem.eval_steps"),
        ({"input_scale": "energy"}, "problem.input_scale=energy"),
        ({"train_noise": -0.1}, "problem.train_noise"),
        ({"train_noise_cells": 0}, "problem.train_noise_cells"),
    ],
)
def test_bad_config(change, needle):
    with pytest.raises(ConfigError, match=needle):
        replace(TINY, **change)


@pytest.mark.parametrize("cells", [1, 4])
def test_training_noise_perturbs_inputs_only(tiny, cells):
    """problem.train_noise: the windows' input velocities get noise of that many times their
    rms on the open faces only; the targets, pressure and prescribed faces stay the reference,
    and the windows drawn are those of the noise-free run with the same generator."""
    problem, train = tiny
    data = _tensors(train)
    noisy = NavierStokes(replace(TINY, train_noise=0.05, train_noise_cells=cells))
    clean = problem.batch(data, 4, 3, torch.Generator().manual_seed(0))
    pert = noisy.batch(data, 4, 3, torch.Generator().manual_seed(0))
    open_ = problem.coarse_grid.consts(torch.float32, "cpu")["open"]
    diff_sq, ref_sq = 0.0, 0.0
    for c, m in zip(("u", "v"), open_, strict=True):
        assert torch.equal(pert.targets[c], clean.targets[c])
        d = pert.inputs[c] - clean.inputs[c]
        assert torch.equal(d * (1 - m), torch.zeros_like(d)), f"noise on prescribed {c} faces"
        diff_sq += float((d**2).sum())
        ref_sq += float((clean.inputs[c] ** 2 * m).sum())
    assert torch.equal(pert.inputs["p"], clean.inputs["p"])
    assert torch.equal(pert.inputs["reynolds"], clean.inputs["reynolds"])
    level = math.sqrt(diff_sq / ref_sq)  # noise rms / signal rms over all open faces
    assert 0.04 < level < 0.06, level


def test_bad_scenario_options():
    with pytest.raises(ProblemError, match="problem.conserve_momentum=true needs a periodic"):
        NavierStokes(replace(TINY, conserve_momentum=True))
    with pytest.raises(ConfigError, match="correction.padding=reflect"):
        ResNetConfig(padding="reflect")


# ------------------------------------------------------------------ scale, momentum, padding
def _periodic(scenario: str, **kw) -> NSConfig:
    base = {
        "scenario": scenario,
        "resolution": [16, 16],
        "factor": 1 if scenario == "taylor_green" else 2,
        "dt": 0.1 if scenario == "taylor_green" else 0.05,
        "warmup": 0 if scenario == "taylor_green" else 20,
        "n_frames": 12,
        "n_frames_test": 12,
        "eval_steps": 8,
        "eval_long_steps": 10,
        "reynolds_train": [5.0, 20.0] if scenario == "taylor_green" else [50.0, 200.0],
        "reynolds_val": [10.0] if scenario == "taylor_green" else [100.0],
        "reynolds_test": [8.0] if scenario == "taylor_green" else [80.0],
        "input_scale": "rms2" if scenario == "taylor_green" else "fixed",
        "conserve_momentum": True,
    }
    return NSConfig(**{**base, **kw})


@pytest.mark.parametrize("input_scale,degree", [("rms", 1), ("rms2", 2)])
def test_rms_scaled_correction_is_homogeneous(input_scale, degree):
    """C(a u) = a^p C(u): p = 1 (rms) or 2 (rms2), whatever the network."""
    problem = NavierStokes(_periodic("taylor_green", input_scale=input_scale))
    train = problem.generate("train", 1)
    model = problem.build_model(SOLVER, RESNET, "after_step", train).double()
    data = train.tensors(torch.device("cpu"), torch.float64)
    u = (data["u"][:, 3], data["v"][:, 3])
    re = data["reynolds"]

    def correct(velocity):
        return model.stepper.corrected_velocity(velocity, model.correction, re)

    with torch.no_grad():
        du1 = [c - v for c, v in zip(correct(u), u, strict=True)]
        a = 0.01
        ua = tuple(a * v for v in u)
        dua = [c - v for c, v in zip(correct(ua), ua, strict=True)]
    for x, y in zip(du1, dua, strict=True):
        assert float(x.abs().max()) > 0
        err = float((y - a**degree * x).abs().max()) / float((a**degree * x).abs().max())
        assert err < 1e-8, f"C(a u) != a^{degree} C(u): relative difference {err:.2e}"


def test_momentum_balance_on_periodic_domains():
    """The corrected step keeps <u>_{t+1} = <u>_t (1 - drag dt) + dt <f> whatever the network
    adds; without a correction the solver alone is untouched (bit for bit)."""
    problem = NavierStokes(_periodic("kolmogorov"))
    train = problem.generate("train", 1)
    data = _tensors(train)
    model = problem.build_model(SOLVER, RESNET, "after_step", train)
    with torch.no_grad():
        for p in model.correction.out.parameters():
            p.add_(0.05)  # a correction with a large mean
    shift = 0.3  # a uniform flow in the start state: decays by the drag only
    state = (data["u"][:, 2] + shift, data["v"][:, 2], data["p"][:, 2])
    with torch.no_grad():
        out = model(state, data["reynolds"], 5)
    drag, dt = model.stepper.template.drag, model.stepper.dt
    for k, s in enumerate(out, start=1):
        for c in range(2):  # the forcing sin(4y) has zero mean
            expected = state[c].mean((1, 2)) * (1 - drag * dt) ** k
            torch.testing.assert_close(s[c].mean((1, 2)), expected, rtol=1e-4, atol=1e-6)
    solver = problem.build_model(SOLVER, NoCorrectionConfig(), "after_step", train)
    assert solver.correction is None
    plain = solver.stepper.template
    with torch.no_grad():
        a = solver(state, data["reynolds"], 2)[-1]
        ref = state
        for _ in range(2):
            ref = model.stepper.flow(data["reynolds"]).solver.step(ref, dt)
    for x, y in zip(a, ref, strict=True):
        assert torch.equal(x, y)
    assert plain.drag == drag


def test_periodic_correction_is_translation_equivariant():
    """Circular padding (correction.padding=auto on a periodic domain): shifting the flow by
    whole cells shifts the correction; periodic axes are packed without the zero pad."""
    problem = NavierStokes(_periodic("kolmogorov"))
    train = problem.generate("train", 1)
    model = problem.build_model(SOLVER, RESNET, "after_step", train)
    data = _tensors(train)
    u = (data["u"][:, 4], data["v"][:, 4])
    re = data["reynolds"]
    roll = lambda t: torch.roll(t, (3, 5), dims=(-2, -1))  # noqa: E731
    with torch.no_grad():
        a = model.stepper.corrected_velocity(u, model.correction, re)
        b = model.stepper.corrected_velocity(tuple(roll(v) for v in u), model.correction, re)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(roll(x), y, rtol=1e-5, atol=1e-6)
    zeros = NavierStokes(_periodic("kolmogorov")).build_model(
        SOLVER, replace(RESNET, padding="zeros"), "after_step", train
    )
    zeros.correction.load_state_dict(model.correction.state_dict())
    with torch.no_grad():
        c = zeros.stepper.corrected_velocity(tuple(roll(v) for v in u), zeros.correction, re)
    assert any(not torch.allclose(roll(x), y, atol=1e-6) for x, y in zip(a, c, strict=True))


def test_a_config_saved_before_eval_long_steps_still_evaluates():
    """A run saved without eval_long_steps gets the longest rollout its test frames allow."""
    old = replace(TINY, eval_long_steps=None)
    assert old.eval_long_steps == old.n_frames_test - 1
    assert NSConfig().eval_long_steps == 500


def test_correlation_times():
    """Time until the vorticity correlation first drops below a threshold: the steps that stayed
    above it times dt; never below: the whole horizon; a blown-up (NaN) step counts as below."""
    from hybridsim.problems.navier_stokes_eval import _correlation_time

    corr = np.array([[1.0, 0.9, 0.7, 0.9], [0.99, 0.97, 0.96, 0.96], [0.99, np.nan, 0.9, 0.9]])
    assert _correlation_time(corr, 0.5).tolist() == [0.5, 2.0, 0.5]
    assert _correlation_time(corr, 0.5, threshold=0.8).tolist() == [1.0, 2.0, 0.5]


@pytest.mark.parametrize("scenario", ["taylor_green", "kolmogorov"])
def test_zero_correction_with_momentum_balance_is_the_balanced_solver(scenario):
    """With ``conserve_momentum`` the hybrid's stepper is the solver step followed by the
    momentum balance (a constraint, not learned): a correction whose output is zero reproduces
    exactly that, bit for bit (the generic registry test covers the couplings without it)."""
    problem = NavierStokes(_periodic(scenario))
    train = problem.generate("train", 1)
    data = _tensors(train)
    model = problem.build_model(SOLVER, RESNET, "after_step", train)
    with torch.no_grad():
        for p in model.correction.parameters():
            p.zero_()
    stepper = model.stepper
    assert stepper.conserve_momentum
    state = (data["u"][:, 2] + 0.1, data["v"][:, 2], data["p"][:, 2])
    with torch.no_grad():
        out = model(state, data["reynolds"], 3)[-1]
        ref = state
        flow = stepper.flow(data["reynolds"])
        for _ in range(3):
            nxt = flow.solver.step(ref, stepper.dt)
            ref = (*stepper._momentum_balance(flow.solver, ref[:2], nxt[:2]), nxt[2])
        plain = state
        for _ in range(3):
            plain = flow.solver.step(plain, stepper.dt)
    for x, y in zip(out, ref, strict=True):
        assert torch.equal(x, y)
    # the balance is not a no-op: semi-Lagrangian advection alone lets the mean drift
    assert not torch.equal(out[0], plain[0])
