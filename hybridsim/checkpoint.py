"""Checkpoints and JSON records, written atomically; below both ``train`` and ``evaluate``.

A checkpoint is a :class:`TrainState` stored as plain containers (tensors, dicts, lists,
numbers, strings), so ``torch.load(path, weights_only=True)`` reads it without trusting any
pickled class. Writing goes through a temporary file and a rename (``hybridsim.atomic``): an
interrupted save never leaves a file that looks complete.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hybridsim.atomic import NotARegularFile, atomic_path, require_regular_file, write_text_atomic


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read (the message names the file)."""


@dataclass
class TrainState:
    """Everything a fit needs to continue bit for bit: the model's, optimiser's, scheduler's and
    L-BFGS's state dicts, the step and phase (``adam``, ``lbfgs``, ``done``), the best validation
    loss, whether training finished, the RNG states (``torch``: the global generator, ``batch``:
    the batch sampler's), the resolved run config and the versions that wrote it; the L-BFGS
    stage and its previous loss while polishing."""

    model: dict[str, torch.Tensor]
    step: int = 0
    phase: str = "adam"
    best: float = float("inf")
    done: bool = False
    optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    polish_optimizer: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, torch.Tensor] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=lambda: {"torch": str(torch.__version__)})
    polish_prev: float | None = None
    polish_stage: int | None = None

    def to_plain(self) -> dict[str, Any]:
        """The state as the plain dict a checkpoint file holds (key order as saved before)."""
        return {f: getattr(self, f) for f in _ORDER}

    @classmethod
    def from_plain(cls, ck: dict[str, Any]) -> TrainState:
        known = {k: ck[k] for k in _ORDER if k in ck}
        return cls(**known)


_ORDER = (
    "model",
    "optimizer",
    "scheduler",
    "polish_optimizer",
    "step",
    "phase",
    "best",
    "done",
    "rng",
    "config",
    "versions",
    "polish_prev",
    "polish_stage",
)


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file and a rename (a TrainState as plain containers)."""
    if isinstance(obj, TrainState):
        obj = obj.to_plain()
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint as plain containers (``weights_only``); CheckpointError naming the file if
    it is missing, not a regular file, truncated or not a checkpoint."""
    try:
        require_regular_file(path, "checkpoint")
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, NotARegularFile) as e:
        raise CheckpointError(
            str(e) if isinstance(e, NotARegularFile) else f"checkpoint {path} does not exist"
        ) from None
    except Exception as e:  # noqa: BLE001  (truncated, corrupt, or an unsafe pickle)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {first[:200]}); it is "
            "truncated or not a hybridsim checkpoint: delete it to restart that model"
        ) from None
    if not isinstance(ck, dict) or "model" not in ck or "step" not in ck:
        raise CheckpointError(f"checkpoint {path} is not a hybridsim checkpoint (no model/step)")
    return ck


def load_state(path: Path) -> TrainState:
    """:func:`load_checkpoint` as a :class:`TrainState`."""
    return TrainState.from_plain(load_checkpoint(path))


def _finite(obj: Any) -> Any:
    """JSON-safe: non-finite floats become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_json_atomic(obj: Any, path: Path) -> None:
    """``obj`` as indented JSON (non-finite floats as null), written atomically."""
    write_text_atomic(path, json.dumps(_finite(obj), indent=2))
