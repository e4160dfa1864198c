"""Every registered linear operator: exact adjoint, consistent norm."""

import importlib
import pkgutil

import pytest
import torch

import hybridsim.numerics as numerics
from hybridsim.numerics.operator import OPERATORS

# Import every numerics module so that its operators register themselves.
for _m in pkgutil.iter_modules(numerics.__path__):
    importlib.import_module(f"hybridsim.numerics.{_m.name}")


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_adjointness(name):
    op = OPERATORS[name]()
    err = op.adjointness_error()
    assert err < 1e-10, f"{name}: <Ax,y> - <x,A^T y> relative gap {err:.2e}"


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_norm_bounds_action(name):
    op = OPERATORS[name]()
    norm = op.norm(n_iter=500, tol=1e-10)
    x = torch.randn((4, *op.domain_shape), dtype=torch.float64)
    for xi in x:
        ratio = float(op.A(xi[None]).norm() / xi.norm())
        assert ratio <= norm * (1 + 1e-6), f"{name}: |Ax|/|x| = {ratio} exceeds norm {norm}"


def test_the_import_loop_registers_every_shipped_operator():
    # Guards the import loop above: the registry is filled by importing numerics modules, so a
    # broken loop would leave the parametrised tests with nothing to check.
    shipped = {"ray_transform", "masked_laplacian", "gradient_divergence", "finite_difference"}
    assert shipped <= set(OPERATORS), sorted(OPERATORS)
