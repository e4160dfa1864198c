"""Problems: one module per problem, found through :func:`registered` (the built-in ones and
those of installed packages, entry point group ``hybridsim.problems``). Importing this package
loads no problem module and no Hydra."""

from hybridsim.problems.base import Comparator, Problem, ProblemError, register, registered

__all__ = ["Comparator", "Problem", "ProblemError", "register", "registered"]
