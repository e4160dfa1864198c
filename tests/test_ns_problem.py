"""problem=ns below the CLI: data, the hybrid's coupling, gradient modes, SOL training, errors."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from hybridsim.config import ConfigError, CorrectionConfig, FluidSolverConfig, NSConfig
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
    reynolds_train=[100.0, 800.0],
    reynolds_val=[300.0],
    reynolds_test=[200.0],
)
SOLVER = FluidSolverConfig(name="semi_lagrangian")
RESNET = CorrectionConfig(name="resnet", kind="resnet", width=[8, 8], kernel_size=3)


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
    solver = problem.build_model(SOLVER, CorrectionConfig(), "after_step", train)
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
    assert models["solver"].correction is None and models["non"].coupling == "non"
    only = problem.model_set(SOLVER, CorrectionConfig(), "after_step", train, True, True)
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
        ({"eval_steps": 50}, "n_frames_test"),
    ],
)
def test_bad_config(change, needle):
    with pytest.raises(ConfigError, match=needle):
        replace(TINY, **change)
