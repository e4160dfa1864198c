"""What diverged in a fit, and the setting most likely to blame: the messages of
:class:`TrainingDiverged` (a non-finite loss, gradient, parameter or validation loss)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from hybridsim.problems.base import Batch
from hybridsim.schemas import RecipeConfig


class TrainingDiverged(RuntimeError):
    """Training produced a non-finite value; the last good checkpoint is kept."""


class TrainingError(RuntimeError):
    """A model that cannot be trained as configured (the message names the setting)."""


def diverged(name: str, step: int, phase: str, what: str, cause: str, last: Path) -> Exception:
    kept = f"last good checkpoint: {last}" if last.exists() else "no checkpoint was written yet"
    return TrainingDiverged(
        f"training of {name} diverged at step {step} ({phase}): {what}; likely cause: {cause}; "
        f"{kept}"
    )


def non_finite(model: nn.Module) -> str | None:
    """The name of the first parameter or floating buffer with a non-finite entry, if any."""
    tensors = [(k, v) for k, v in model.state_dict().items() if v.is_floating_point()]
    if not tensors:
        return None
    finite = torch.stack([torch.isfinite(v).all() for _, v in tensors]).tolist()
    return next((k for (k, _), ok in zip(tensors, finite, strict=True) if not ok), None)


def lr_cause(recipe: RecipeConfig, sched: torch.optim.lr_scheduler.LRScheduler) -> str:
    return f"recipe.lr={recipe.lr:g} (now {sched.get_last_lr()[0]:.3g}) is too large"


def loss_cause(
    model: nn.Module, batch: Batch, value: float, step: int, unroll: int, recipe, sched
) -> tuple[str, str]:
    """What made the training loss non-finite, and the setting most likely to blame."""
    what = f"non-finite loss ({value})"
    for part in (batch.inputs, batch.targets):
        for key, t in part.items():
            if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all():
                return f"{what}: the training batch's {key!r} holds non-finite values", (
                    "the data file (delete it and generate it again)"
                )
    bad = non_finite(model)
    if bad:
        return f"{what}: parameter {bad} is non-finite", lr_cause(recipe, sched)
    if step == 0:
        return f"{what} before any update", (
            "the untrained model blows up: a solver setting (solver.*), correction.init_scale, "
            f"or recipe.unroll={unroll}"
        )
    return f"{what} (parameters finite)", (
        f"{lr_cause(recipe, sched)}, or recipe.unroll={unroll} is too long for this model"
    )
