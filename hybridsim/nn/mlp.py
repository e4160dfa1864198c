"""Multilayer perceptrons, including G independent networks evaluated as one batched matmul."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

ACTIVATIONS = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "gelu": nn.functional.gelu,
    "silu": nn.functional.silu,
    "softplus": nn.functional.softplus,
    "rbf": lambda x: torch.exp(-(x * x)),  # Gaussian RBF, as in Rackauckas et al. (2020)
}


class GroupedMLP(nn.Module):
    """``groups`` independent MLPs ``in_features -> width… -> out_features`` on the same input.

    Input ``(batch, in_features)``, output ``(batch, groups * out_features)``: column block g is
    network g. All groups run in one ``baddbmm`` per layer, so two small networks (the UDE's NN₁
    and NN₂) cost one kernel launch per layer instead of two: the work is overhead-bound.

    ``final_scale`` multiplies the initial weights of the last layer; 0 gives a network whose
    output is exactly zero at initialisation (a zero correction = the solver alone).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        width: Sequence[int] = (32, 32),
        groups: int = 1,
        activation: str = "tanh",
        final_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}"
            )
        self.groups, self.in_features, self.out_features = groups, in_features, out_features
        self.activation = activation
        self.kernel = grouped_layers  # replaced by nn.accelerate under amp / compile
        sizes = [in_features, *width, out_features]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            w = torch.empty(groups, n_in, n_out)
            for g in range(groups):  # Glorot-uniform per group, as nn.Linear's default family
                bound = math.sqrt(6.0 / (n_in + n_out))
                nn.init.uniform_(w[g], -bound, bound)
            if i == len(sizes) - 2:
                w.mul_(final_scale)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(groups, 1, n_out)))

    def scaled(
        self, in_scale: torch.Tensor, out_scale: torch.Tensor
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """``x -> out_scale * self(x / in_scale)`` with both scales folded into the first and
        last layers' weights once, so that each call costs only the network's own kernels (an
        ODE solver calls this 4x per RK4 step: the work is launch-overhead-bound).

        ``in_scale``: ``(in_features,)``; ``out_scale``: ``(groups * out_features,)``.
        Differentiable in the parameters; build it anew after every optimiser step.
        """
        g, n_out = self.groups, self.out_features
        ws = list(self.weights)
        bs = list(self.biases)
        out = out_scale.reshape(g, 1, n_out)
        ws[0] = ws[0] / in_scale.reshape(1, -1, 1)
        ws[-1], bs[-1] = ws[-1] * out, bs[-1] * out
        kernel, activation = self.kernel, self.activation
        return lambda x: kernel(x, ws, bs, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel(x, list(self.weights), list(self.biases), self.activation)


def grouped_layers(
    x: torch.Tensor, ws: list[torch.Tensor], bs: list[torch.Tensor], activation: str
) -> torch.Tensor:
    """The G networks on ``x`` ``(batch, in)`` -> ``(batch, G * out)``: one batched multiply-add
    per layer, ``(G, batch, width)`` from the start, no copies. A plain function of the
    weights, so that ``torch.compile`` of it (``compile=true``) is compiled once, not per
    optimiser step."""
    act = ACTIVATIONS[activation]
    g, n_out = ws[0].shape[0], ws[-1].shape[-1]
    h = x.expand(g, *x.shape)
    last = len(ws) - 1
    for i, (w, b) in enumerate(zip(ws, bs, strict=True)):
        h = torch.baddbmm(b, h, w)
        if i < last:
            h = act(h)
    if g == 1:
        return h[0]
    if n_out == 1:  # (G, batch, 1) -> (batch, G) as a view, no copy
        return h.squeeze(-1).t()
    return h.transpose(0, 1).reshape(x.shape[0], g * n_out)
