"""The recipe's schema: how to train."""

from __future__ import annotations

from dataclasses import dataclass, field

from hybridsim.schemas.checks import MISSING, ConfigError, _non_negative, _one_of, _positive


@dataclass
class RecipeConfig:
    """How to train: optimiser, schedule, unroll curriculum, gradient mode, polish."""

    name: str = MISSING
    optimizer: str = "adam"  # adam | adamw | rmsprop
    lr: float = 1e-2
    lr_schedule: str = "cosine"  # constant | cosine | inverse_step
    lr_min_factor: float = 0.01
    lr_decay_every: int = 500  # inverse_step: lr / (1 + step // lr_decay_every)
    weight_decay: float = 0.0
    steps: int = 1000
    batch_size: int = 64
    # Unroll lengths (solver steps / output intervals per sample), one stage each, spread evenly
    # over ``steps``; -1 means the full horizon.
    unroll: list[int] = field(default_factory=lambda: [10, 20, 40])
    grad_clip: float = 1.0
    gradient_mode: str = "full"  # full | checkpoint | truncate
    gradient_every: int = 1
    polish: str = "none"  # none | lbfgs  (on the full horizon, after the first-order phase)
    polish_steps: int = 100
    # Polish stages, evenly spread over polish_steps: unroll lengths of all-window batches
    # (multiple shooting); -1 = the full trajectories.
    polish_unroll: list[int] = field(default_factory=lambda: [-1])
    log_every: int = 10
    val_every: int = 100
    baselines: bool = True  # also fit the problem's comparators (e.g. the black-box model)

    def __post_init__(self) -> None:
        r = "recipe"
        _one_of("recipe.optimizer", self.optimizer, ("adam", "adamw", "rmsprop"))
        _one_of("recipe.lr_schedule", self.lr_schedule, ("constant", "cosine", "inverse_step"))
        _one_of("recipe.gradient_mode", self.gradient_mode, ("full", "checkpoint", "truncate"))
        _one_of("recipe.polish", self.polish, ("none", "lbfgs"))
        _positive(r, lr=self.lr, steps=self.steps, batch_size=self.batch_size)
        _positive(r, log_every=self.log_every, val_every=self.val_every)
        _positive(r, gradient_every=self.gradient_every, lr_decay_every=self.lr_decay_every)
        _non_negative(r, weight_decay=self.weight_decay, grad_clip=self.grad_clip)
        _non_negative(r, polish_steps=self.polish_steps, lr_min_factor=self.lr_min_factor)
        for key in ("unroll", "polish_unroll"):
            values = getattr(self, key)
            if not values:
                raise ConfigError(f"recipe.{key} must list at least one unroll length")
            for u in values:
                if u != -1 and u < 1:
                    raise ConfigError(f"recipe.{key} entries must be >= 1 (or -1 = full), got {u}")
