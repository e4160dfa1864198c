"""hybridsim: hybrid differentiable-physics models, trained end to end through the solver."""

__version__ = "0.1.0"
