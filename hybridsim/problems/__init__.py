"""Problems: one module per problem; importing this package registers them all."""

from hybridsim.problems.base import Problem, register, registered  # noqa: F401
