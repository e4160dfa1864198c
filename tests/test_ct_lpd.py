"""Learned primal-dual (coupling=primal_dual of problem=ct, Adler & Öktem 2018): zero networks
leave the initial reconstruction unchanged, shapes and unshared weights, a float64 gradient
check through the unrolled iterations (ray transform and adjoint inside), checkpointing equal to
full backpropagation, and a short training that beats its untrained start."""

from dataclasses import replace

import pytest
import torch

from hybridsim.config import ConvNetConfig, CTConfig, CTSolverConfig
from hybridsim.numerics.radon import fbp
from hybridsim.numerics.rollout import GradientMode
from hybridsim.problems.base import ProblemError
from hybridsim.problems.tomography import Tomography
from hybridsim.problems.tomography_lpd import LearnedPrimalDual

CFG = CTConfig(size=16, n_angles=8, n_val=4, n_test=2, n_ellipses=10, memory=3)
ZERO = ConvNetConfig(activation="tanh", width=[6, 6], init_scale=0.0)
NET = replace(ZERO, init_scale=0.1)
SOLVER = CTSolverConfig(name="gd", n_iter=3)


@pytest.fixture(scope="module")
def problem():
    return Tomography(CFG)


def _sino(problem, n=2, dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    image, sino = problem.draw(n, gen)
    return image.to(dtype), sino.to(dtype)


@pytest.mark.parametrize("init", ["fbp", "zero"])
def test_zero_networks_return_the_initial_reconstruction(problem, init):
    solver = replace(SOLVER, init=init)
    model = problem.build_model(solver, ZERO, "primal_dual", None).double()
    _, sino = _sino(problem)
    with torch.no_grad():
        out = model(sino)
    start = fbp(model.op, sino, "hann") if init == "fbp" else torch.zeros_like(out)
    torch.testing.assert_close(out, start, rtol=0, atol=0)


def test_shapes_and_unshared_weights(problem):
    model = problem.build_model(SOLVER, NET, "primal_dual", None)
    assert isinstance(model, LearnedPrimalDual)
    assert len(model.iterations) == 3  # one (dual, primal) pair per iteration
    it = model.iterations[0]
    assert it.dual.in_channels == 3 + 2 and it.dual.out_channels == 3
    assert it.primal.in_channels == 3 + 1 and it.primal.out_channels == 3
    a, b = (torch.cat([p.ravel() for p in m.parameters()]) for m in model.iterations[:2])
    assert not torch.equal(a, b), "iterations must have their own weights"
    assert type(it.dual.net[1]).__name__ == "PReLU"
    _, sino = _sino(problem, 3, torch.float32)
    assert model(sino).shape == (3, 16, 16)
    assert model(sino, n_iter=1).shape == (3, 16, 16)
    shared = Tomography(replace(CFG, share_weights=True)).build_model(
        SOLVER, NET, "primal_dual", None
    )
    assert len(shared.iterations) == 1


def test_gradcheck_through_the_unrolled_primal_dual(problem):
    """float64 finite differences against autograd, with respect to the data and to one
    network weight, through two iterations (F and F* in the loop)."""
    small = Tomography(replace(CFG, size=8, n_angles=4, memory=2))
    corr = replace(NET, width=[3], init_scale=1.0)
    model = small.build_model(replace(SOLVER, n_iter=2), corr, "primal_dual", None).double()
    _, sino = _sino(small, 1)
    sino = sino.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: model(s).square().sum(), (sino,), atol=1e-6)
    w = model.iterations[1].dual.net[0].weight

    def of_weight(v):
        with torch.no_grad():
            w.copy_(v)
        return model(sino.detach()).square().sum()

    v0 = w.detach().clone()
    loss = of_weight(v0)
    (grad,) = torch.autograd.grad(loss, w)
    direction = torch.randn_like(v0)
    h = 1e-6
    fd = (of_weight(v0 + h * direction) - of_weight(v0 - h * direction)) / (2 * h)
    torch.testing.assert_close(fd.detach(), (grad * direction).sum(), rtol=1e-6, atol=1e-9)


def test_checkpointing_gives_the_full_gradient(problem):
    model = problem.build_model(SOLVER, NET, "primal_dual", None).double()
    image, sino = _sino(problem)
    grads = []
    for mode in (GradientMode("full"), GradientMode("checkpoint", 1)):
        model.gradient = mode
        model.zero_grad()
        (model(sino) - image).square().sum().backward()
        grads.append(torch.cat([p.grad.ravel() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)


def test_training_beats_the_untrained_start_on_its_training_data(problem):
    """80 Adam steps on fresh phantoms: the loss on a fixed batch of the same distribution falls
    well below the untrained model's (which is FBP, up to a small correction)."""
    torch.manual_seed(0)
    model = problem.build_model(SOLVER, NET, "primal_dual", None)
    like = {"angles": torch.zeros(1)}
    fixed = problem.batch(like, 8, -1, torch.Generator().manual_seed(99))
    with torch.no_grad():
        before = float(problem.loss(model, fixed))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(80):
        loss = problem.loss(model, problem.batch(like, 4, -1, gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(problem.loss(model, fixed))
    assert after < 0.85 * before, f"loss {before:.4g} -> {after:.4g}"


def test_primal_dual_needs_a_network(problem):
    with pytest.raises(ProblemError, match="coupling=primal_dual"):
        problem.check_choices("gd", "none", "primal_dual")
    with pytest.raises(ProblemError, match="solver=fbp"):
        problem.check_choices("fbp", "convnet", "primal_dual")
