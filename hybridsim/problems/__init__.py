"""Problems: one module per problem; importing this package registers them all."""

from hybridsim.problems import lotka_volterra  # noqa: F401  (registers problem=lv)
from hybridsim.problems import tomography  # noqa: F401  (registers problem=ct)
from hybridsim.problems.base import Problem, ProblemError, register, registered  # noqa: F401
