"""Problems: one module per problem; importing this package registers them all."""

from hybridsim.problems import lotka_volterra, tomography  # noqa: F401  (problem=lv, problem=ct)
from hybridsim.problems.base import Problem, ProblemError, register, registered  # noqa: F401

# isort: split
from hybridsim.problems import navier_stokes  # noqa: F401  (registers problem=ns)
