"""problem=ct: data, the learned-gradient model (zero correction = plain descent, gradient
modes, λ learning, Beer–Lambert), a short training that lowers the loss, config checks."""

from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf

from hybridsim.config import (
    ConfigError,
    ConvNetConfig,
    CTConfig,
    CTSolverConfig,
    NoCorrectionConfig,
)
from hybridsim.numerics.radon import fbp
from hybridsim.numerics.reconstruction import (
    AcceleratedGradientDescent,
    GradientDescent,
    LeastSquares,
    PoissonLogLikelihood,
)
from hybridsim.numerics.regularizers import DirichletEnergy, TotalVariation
from hybridsim.numerics.rollout import GradientMode, rollout
from hybridsim.problems.base import ProblemError
from hybridsim.problems.tomography import Tomography, line_integrals

TINY = CTConfig(
    size=24, n_angles=12, train_data="stored", n_train=8, n_val=2, n_test=3, n_ellipses=20
)
NONE = NoCorrectionConfig()
ZERO_NET = ConvNetConfig(activation="relu", init_scale=0.0, width=[8, 8])
NET = replace(ZERO_NET, init_scale=0.1)


@pytest.fixture(scope="module")
def tiny():
    problem = Tomography(TINY)
    return problem, problem.generate("train", 1), problem.generate("test", 3)


def test_data_is_a_function_of_config_split_and_seed(tiny):
    problem, train, test = tiny
    again = problem.generate("train", 1)
    for k in train.arrays:
        np.testing.assert_array_equal(train.arrays[k], again.arrays[k])
    assert not np.array_equal(problem.generate("train", 2).arrays["image"], train.arrays["image"])
    assert train.arrays["image"].shape == (8, 24, 24)
    assert train.arrays["sinogram"].shape == (8, 12, 2 * 17 + 1)
    assert test.arrays["shepp_logan"].shape == (1, 24, 24)
    assert test.attrs["upsample"] == 2 and train.attrs["upsample"] == 1
    assert all(np.isfinite(a).all() for a in (*train.arrays.values(), *test.arrays.values()))
    assert test.arrays["shepp_logan"].max() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("name", ["gd", "agd"])
@pytest.mark.parametrize("reg", ["dirichlet", "tv"])
def test_zero_correction_is_plain_descent(tiny, name, reg):
    """A network whose output is zero, and correction=none, both give the classical descent."""
    problem, train, test = tiny
    solver = CTSolverConfig(name=name, regularizer=reg, lam=2e-3, n_iter=6, nonnegative=True)
    sino = torch.as_tensor(test.arrays["sinogram"], dtype=torch.float64)
    op = problem.build_model(solver, NONE, "update", train).stepper.op
    r = DirichletEnergy() if reg == "dirichlet" else TotalVariation(solver.huber_eps)
    cls = GradientDescent if name == "gd" else AcceleratedGradientDescent
    classic = cls(LeastSquares(op, op_norm=1.0), r, 2e-3, nonnegative=True)
    state = classic.init(fbp(op, sino, "hann"))
    expected = rollout(partial(classic.step, sinogram=sino), state, 6, save_every=6)[-1]
    expected = expected[0] if isinstance(expected, tuple) else expected
    for corr in (NONE, ZERO_NET):
        model = problem.build_model(solver, corr, "update", train).double()
        with torch.no_grad():
            torch.testing.assert_close(model(sino), expected, rtol=0, atol=1e-12)


def test_checkpointing_gives_the_full_gradient(tiny):
    problem, train, test = tiny
    model = problem.build_model(CTSolverConfig(name="gd", n_iter=4), NET, "update", train).double()
    data = train.tensors(torch.device("cpu"), torch.float64)
    batch = problem.full_batch(data)
    grads = []
    for mode in (GradientMode("full"), GradientMode("checkpoint", 2)):
        model.gradient = mode
        model.zero_grad()
        problem.loss(model, batch).backward()
        grads.append(torch.cat([p.grad.ravel() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)


def test_short_training_lowers_the_loss(tiny):
    """30 Adam steps of learned GD (and of the λ-learning variant) lower the validation loss,
    with finite gradients throughout; λ stays positive."""
    problem, train, _ = tiny
    data = train.tensors(torch.device("cpu"), torch.float32)
    solver = CTSolverConfig(name="gd", n_iter=5)
    for coupling in ("update", "update_lambda"):
        model = problem.build_model(solver, NET, coupling, train)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        gen = torch.Generator().manual_seed(0)
        before = problem.validate(model, data)["loss"]
        for _ in range(30):
            loss = problem.loss(model, problem.batch(data, 4, -1, gen))
            opt.zero_grad()
            loss.backward()
            for p in model.parameters():
                assert torch.isfinite(p.grad).all()
            opt.step()
        after = problem.validate(model, data)["loss"]
        assert after < 0.8 * before, f"{coupling}: val loss {before:.4g} -> {after:.4g}"
        if coupling == "update_lambda":
            rho = model.stepper.rho
            assert rho.grad is not None and float(nnf.softplus(rho.detach()).min()) > 0


def test_per_iteration_weights_and_lambdas(tiny):
    problem, train, test = tiny
    cfg = replace(TINY, share_weights=False, lambda_per_iteration=True)
    model = Tomography(cfg).build_model(
        CTSolverConfig(name="gd", n_iter=3), NET, "update_lambda", train
    )
    assert len(model.correction) == 3 and model.stepper.rho.shape == (3,)
    sino = torch.as_tensor(test.arrays["sinogram"])
    problem.loss(
        model,
        problem.full_batch({"sinogram": sino, "image": torch.as_tensor(test.arrays["image"])}),
    )
    out = model(sino)
    out.square().sum().backward()
    assert all(p.grad is not None for net in model.correction for p in net.parameters())


def test_beer_lambert_counts_and_poisson_descent():
    cfg = replace(TINY, forward_model="beer_lambert", i0=1e4, mu=2.0)
    problem = Tomography(cfg)
    train = problem.generate("train", 1)
    b = train.arrays["sinogram"]
    assert (b >= 0).all() and np.allclose(b, np.round(b)) and b.max() <= 2e4
    sino = torch.as_tensor(b, dtype=torch.float64)
    solver = CTSolverConfig(name="gd", regularizer="none", n_iter=4)
    model = problem.build_model(solver, ZERO_NET, "update", train).double()
    op = model.stepper.op
    classic = GradientDescent(PoissonLogLikelihood(op, 2.0, 1e4, op_norm=1.0))
    a = fbp(op, line_integrals(cfg, sino), "hann")
    expected = rollout(partial(classic.step, sinogram=sino), a, 4, save_every=4)[-1]
    with torch.no_grad():
        torch.testing.assert_close(model(sino), expected, rtol=0, atol=1e-12)
        # the data term decreases along the descent
        assert (classic.objective(expected, sino) < classic.objective(a, sino)).all()


def test_fbp_solver_rejects_a_network(tiny):
    problem, _, _ = tiny
    with pytest.raises(ProblemError, match="solver=fbp"):
        problem.check_choices("fbp", "convnet", None)
    with pytest.raises(ProblemError, match="choose one of: fbp, gd, agd"):
        problem.check_choices("rk4", "convnet", None)


@pytest.mark.parametrize(
    "kw,needle",
    [
        ({"n_angles": 0}, "problem.n_angles"),
        ({"n_det": 20}, "detector is too small"),
        ({"noise": -0.1}, "problem.noise"),
        ({"forward_model": "magic"}, "problem.forward_model"),
    ],
)
def test_config_checks(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        CTConfig(**kw)
