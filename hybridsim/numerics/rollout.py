"""Rollout: repeated application of a one-step map, with a configurable gradient mode.

A solver is one step, ``step(state) -> state`` (time step, CT iteration, ...). Time stepping,
saving every k steps and how gradients flow back through the unrolled loop are combinators that
live here, shared by every problem (after diffrax's ``SaveAt``/``adjoint`` split).

A state is a tensor or a tuple of tensors (e.g. ``(velocity, pressure)`` or ``(image, memory)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

import torch
from torch.utils.checkpoint import checkpoint

State: TypeAlias = torch.Tensor | tuple[torch.Tensor, ...]
Step: TypeAlias = Callable[[State], State]

GRADIENT_KINDS = ("full", "checkpoint", "truncate")


@dataclass(frozen=True)
class GradientMode:
    """How gradients flow back through an unrolled loop.

    - ``full``: backpropagate through every step (memory grows linearly with the unroll).
    - ``checkpoint``: store the state every ``every`` steps and recompute the steps in between
      during the backward pass; same gradient as ``full``, memory ~ n/every + every states.
    - ``truncate``: detach the state every ``every`` steps (truncated backpropagation through
      time); cheaper, biased gradient.
    """

    kind: Literal["full", "checkpoint", "truncate"] = "full"
    every: int = 1

    def __post_init__(self) -> None:
        if self.kind not in GRADIENT_KINDS:
            raise ValueError(f"gradient mode {self.kind!r} unknown; choose one of {GRADIENT_KINDS}")
        if self.every < 1:
            raise ValueError(f"gradient mode 'every' must be >= 1, got {self.every}")


def _detach(state: State) -> State:
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def _chunk(step: Step, n: int, save_every: int, offset: int) -> Callable[..., tuple]:
    """n steps of ``step``; returns (final state, *saved states) flattened for checkpoint()."""

    def run(*flat: torch.Tensor) -> tuple:
        state: State = flat if len(flat) > 1 else flat[0]
        saved: list[State] = []
        for i in range(n):
            state = step(state)
            if (offset + i + 1) % save_every == 0:
                saved.append(state)
        return (state, *saved)

    return run


def rollout(
    step: Step,
    state: State,
    n_steps: int,
    *,
    save_every: int = 1,
    gradient: GradientMode | None = None,
) -> list[State]:
    """Apply ``step`` ``n_steps`` times and return the states after every ``save_every`` steps.

    The initial state is not included: the returned list has ``n_steps // save_every`` entries.
    ``gradient`` selects full backpropagation, checkpointing or truncation (see GradientMode);
    all three give the same forward values.
    """
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    if save_every < 1:
        raise ValueError(f"save_every must be >= 1, got {save_every}")
    gradient = gradient or GradientMode()
    saved: list[State] = []
    if gradient.kind == "full" or not torch.is_grad_enabled():
        for i in range(n_steps):
            state = step(state)
            if (i + 1) % save_every == 0:
                saved.append(state)
        return saved

    done = 0
    while done < n_steps:
        n = min(gradient.every, n_steps - done)
        if gradient.kind == "truncate":
            if done > 0:
                state = _detach(state)
            out = _chunk(step, n, save_every, done)(
                *(state if isinstance(state, tuple) else (state,))
            )
        else:
            flat = state if isinstance(state, tuple) else (state,)
            out = checkpoint(_chunk(step, n, save_every, done), *flat, use_reentrant=False)
        state, chunk_saved = out[0], list(out[1:])
        saved.extend(chunk_saved)
        done += n
    return saved
