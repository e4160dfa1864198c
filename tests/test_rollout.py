"""Gradient modes agree with full backpropagation where they should."""

import pytest
import torch

from hybridsim.numerics.rollout import GradientMode, rollout


def _setup():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 3).double()
    x0 = torch.randn(2, 3, dtype=torch.float64)

    def step(x):
        return x + 0.1 * torch.tanh(lin(x))

    return lin, x0, step


def _grads(mode: GradientMode):
    lin, x0, step = _setup()
    states = rollout(step, x0, 10, save_every=2, gradient=mode)
    loss = sum((s**2).sum() for s in states)
    loss.backward()
    return [s.detach() for s in states], lin.weight.grad.clone()


def test_checkpoint_matches_full():
    s_full, g_full = _grads(GradientMode("full"))
    s_ck, g_ck = _grads(GradientMode("checkpoint", every=3))
    assert len(s_full) == len(s_ck) == 5
    for a, b in zip(s_full, s_ck, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(g_full, g_ck, rtol=1e-12, atol=1e-14)


def test_truncate_same_forward_different_gradient():
    s_full, g_full = _grads(GradientMode("full"))
    s_tr, g_tr = _grads(GradientMode("truncate", every=2))
    for a, b in zip(s_full, s_tr, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(g_full, g_tr), "truncation should change the gradient"


def test_tuple_state_and_bad_arguments():
    states = rollout(
        lambda s: (s[0] + 1, s[1] * 2),
        (torch.zeros(1), torch.ones(1)),
        3,
        gradient=GradientMode("checkpoint", every=2),
    )
    assert [float(s[0]) for s in states] == [1, 2, 3] and float(states[-1][1]) == 8
    with pytest.raises(ValueError, match="every"):
        GradientMode("checkpoint", every=0)
    with pytest.raises(ValueError, match="unknown"):
        GradientMode("adjoint")
