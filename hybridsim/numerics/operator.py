"""Linear operators that know their adjoint (after deepinv's ``LinearPhysics``).

Every operator ships ``A``, an exact ``A_adjoint``, an operator-norm estimate, and can check its
own adjointness. Registering an operator factory adds it to the parametrised adjointness test
(``tests/test_operators.py``), so nothing registers itself untested.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class LinearOperator:
    """A linear map ``A: X -> Y`` on batched tensors, with its exact adjoint.

    Subclasses implement ``A`` and ``A_adjoint`` and set ``domain_shape`` (shape of one input
    sample, without the batch axis), so that the generic checks can draw random inputs.
    """

    domain_shape: tuple[int, ...]

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802  (the papers' name)
        raise NotImplementedError

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.A(x)

    def norm(self, n_iter: int = 100, tol: float = 1e-7, seed: int = 0, **like) -> float:
        """Operator 2-norm ``||A||`` by the power method on ``A^T A``."""
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn((1, *self.domain_shape), generator=gen, dtype=torch.float64).to(**like)
        x = x / x.norm()
        estimate = 0.0
        for _ in range(n_iter):
            y = self.A_adjoint(self.A(x))
            new = float(y.norm())
            x = y / new
            if abs(new - estimate) <= tol * new:
                estimate = new
                break
            estimate = new
        return estimate**0.5

    def adjointness_error(self, seed: int = 0, **like) -> float:
        """Relative gap ``|<Ax, y> - <x, A^T y>| / (|Ax||y|)`` for random x, y (float64)."""
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn((2, *self.domain_shape), generator=gen, dtype=torch.float64).to(**like)
        ax = self.A(x)
        y = torch.randn(ax.shape, generator=gen, dtype=torch.float64).to(ax)
        lhs = (ax * y).sum()
        rhs = (x * self.A_adjoint(y)).sum()
        return float((lhs - rhs).abs() / (ax.norm() * y.norm()))


OPERATORS: dict[str, Callable[[], LinearOperator]] = {}


def register_operator(name: str) -> Callable:
    """Decorator for a zero-argument factory returning a small float64 test instance."""

    def wrap(factory: Callable[[], LinearOperator]) -> Callable[[], LinearOperator]:
        OPERATORS[name] = factory
        return factory

    return wrap
