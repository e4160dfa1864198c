"""The contract every problem fulfils, and the problem registry.

A problem knows its physics (state, parameters), how to make reference data for each split,
how to build its models from (solver, correction, coupling), how to draw a training batch and
score a prediction, and how to evaluate trained models against the solver alone.

It receives typed config dataclasses (see ``hybridsim.config``), never a DictConfig, and never
touches Hydra or h5py: the data layer hands it plain numpy arrays, the trainer gives it tensors.

The three kinds of hybrid the contract serves:

- ODE right-hand side (lv): ``du/dt = f_known(u) + NN(u)``, integrated by euler/rk4/dopri5;
- PDE time step (ns): ``u_{n+1} = u* + NN(u*)``, ``u* = solver.step(u_n)``;
- iterative reconstruction (ct): ``a_{k+1} = a_k + NN(a_k, grad L(a_k), ...)``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

SPLITS = ("train", "val", "test")


class ProblemError(ValueError):
    """A configuration that the problem cannot work with (message is shown to the user)."""


@dataclass
class SplitData:
    """One split of a data set: arrays with a leading sample axis, plus coordinates.

    ``arrays`` hold the samples (e.g. ``u: (n_traj, n_t, 2)``, ``image: (n, ny, nx)``);
    ``coords`` hold what describes the axes (``t``, ``angles``, grid spacing), shared by all
    samples; ``attrs`` hold scalars worth keeping (parameters actually used).
    """

    arrays: dict[str, np.ndarray]
    coords: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)

    def tensors(self, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Arrays and coordinates as tensors on ``device`` (floating ones in ``dtype``)."""
        out: dict[str, torch.Tensor] = {}
        for name, a in {**self.coords, **self.arrays}.items():
            t = torch.as_tensor(np.asarray(a), device=device)
            out[name] = t.to(dtype) if t.is_floating_point() else t
        return out


@dataclass
class Batch:
    """What one training step sees; ``inputs`` and ``targets`` are problem-specific tensors."""

    inputs: dict[str, torch.Tensor]
    targets: dict[str, torch.Tensor]


class Problem(abc.ABC):
    """Base class of every problem. Subclasses set the class attributes and implement the methods.

    Class attributes
    ----------------
    name: short name used on the command line (``problem=lv``).
    solvers: the solver configs (``solver=…``) this problem accepts.
    corrections: the correction configs (``correction=…``) it accepts; ``none`` = solver alone.
    couplings: the ways solver and correction combine; the first one is the default.
    """

    name: ClassVar[str]
    solvers: ClassVar[tuple[str, ...]]
    corrections: ClassVar[tuple[str, ...]]
    couplings: ClassVar[tuple[str, ...]]
    model_keys: ClassVar[frozenset[str]] = frozenset()  # config keys that do not shape the data
    # Why its batches cannot be split across processes (torchrun/DDP), if they cannot.
    not_data_parallel: ClassVar[str | None] = None

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    # ------------------------------------------------------------------ data
    @abc.abstractmethod
    def generate(self, split: str, seed: int) -> SplitData:
        """Reference data for ``split``: a pure function of (problem config, split, seed)."""

    def data_config(self) -> dict[str, Any]:
        """The part of the config that determines the data (hashed into the file name): all of
        it but ``model_keys``."""
        from dataclasses import asdict

        return {k: v for k, v in asdict(self.cfg).items() if k not in self.model_keys}

    # ----------------------------------------------------------------- model
    @abc.abstractmethod
    def build_model(
        self, solver: Any, correction: Any, coupling: str, train: SplitData
    ) -> nn.Module:
        """The model for (solver config, correction config, coupling).

        ``correction.name == "none"`` gives the solver alone; a correction whose output is zero
        must reproduce the solver alone exactly. ``train`` is the training split, for scaling
        network inputs and outputs.
        """

    def check_choices(self, solver: str, correction: str, coupling: str | None) -> str:
        """Reject a solver, correction or coupling that does not fit; return the coupling."""
        for group, value, valid in (
            ("solver", solver, self.solvers),
            ("correction", correction, self.corrections),
        ):
            if value not in valid:
                raise ProblemError(
                    f"{group}={value} does not apply to problem={self.name}; "
                    f"choose one of: {', '.join(valid)}"
                )
        coupling = coupling or self.couplings[0]
        if coupling not in self.couplings:
            raise ProblemError(
                f"coupling={coupling} does not apply to problem={self.name}; "
                f"choose one of: {', '.join(self.couplings)}"
            )
        return coupling

    def model_set(
        self,
        solver: Any,
        correction: Any,
        coupling: str,
        train: SplitData,
        baselines: bool,
        untrained: bool = False,
    ) -> dict[str, nn.Module]:
        """The main model (``hybrid``), the trainable comparators when ``baselines``, and the
        untrained ones (the solver alone) when ``untrained``."""
        models = {"hybrid": self.build_model(solver, correction, coupling, train)}
        groups = {
            **(self.baselines() if baselines else {}),
            **(self.untrained_baselines() if untrained else {}),
        }
        if groups:
            for name, (corr_name, corr_coupling) in groups.items():
                if (corr_name, corr_coupling) == (correction.name, coupling):
                    continue  # the main model already is this comparator
                same = correction.name == corr_name
                corr = correction if same else type(correction)(name=corr_name, kind=corr_name)
                models[name] = self.build_model(solver, corr, corr_coupling, train)
        return models

    # -------------------------------------------------------------- training
    @abc.abstractmethod
    def batch(
        self, data: Mapping[str, torch.Tensor], batch_size: int, unroll: int, gen: torch.Generator
    ) -> Batch:
        """A random training batch: ``unroll`` solver steps (or iterations) per sample."""

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Scalar training loss of ``model`` on ``batch`` (backpropagated through the solver)."""

    def full_batch(self, data: Mapping[str, torch.Tensor]) -> Batch:
        """The whole split as one batch over its full horizon (used by L-BFGS and validation)."""
        raise NotImplementedError(f"problem {self.name} has no full-horizon batch")

    def polish_batch(self, data: Mapping[str, torch.Tensor], unroll: int) -> Batch:
        """A deterministic batch for L-BFGS: every window of ``unroll`` steps (multiple
        shooting), or the full horizon for ``unroll = -1``."""
        if unroll == -1:
            return self.full_batch(data)
        raise NotImplementedError(f"problem {self.name} has no windowed polish batch")

    def validate(self, model: nn.Module, data: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Validation metrics; must contain ``loss`` (used to keep ``best.pt``)."""
        with torch.no_grad():
            return {"loss": float(self.loss(model, self.full_batch(data)))}

    def baselines(self) -> dict[str, tuple[str, str]]:
        """Comparators that ``train`` fits beside the main model: name -> (correction, coupling).

        Models that need no training are listed by :meth:`untrained_baselines` instead.
        """
        return {}

    def untrained_baselines(self) -> dict[str, tuple[str, str]]:
        """Comparators built directly at evaluation, without training: name -> (correction,
        coupling). By default the solver alone."""
        return {"solver": ("none", self.couplings[0])}

    # ------------------------------------------------------------ evaluation
    def tune_baselines(self, models: Mapping[str, nn.Module], val: SplitData) -> dict[str, Any]:
        """Choose the classical comparators' free settings (e.g. a regularisation weight) on the
        validation split, never on the test split; called before :meth:`evaluate`, which then
        uses them. Returns what was chosen (recorded in ``eval/metrics.json``); by default there
        is nothing to choose."""
        return {}

    @abc.abstractmethod
    def evaluate(
        self,
        models: Mapping[str, nn.Module],
        test: SplitData,
        train: SplitData,
        out_dir: Path,
    ) -> dict[str, Any]:
        """Score every model (and the solver alone) on ``test``; write plots under ``out_dir``.

        Returns a JSON-serialisable dict: ``{"table": {model: {metric: value}}, ...}``; the
        ``table`` entry is printed as a table by the CLI.
        """


_REGISTRY: dict[str, Callable[[Any], Problem]] = {}


def register(cls: type[Problem]) -> type[Problem]:
    """Class decorator: make ``cls`` selectable as ``problem=<cls.name>``."""
    _REGISTRY[cls.name] = cls
    return cls


def registered() -> dict[str, Callable[[Any], Problem]]:
    """Every registered problem class by name (importing the problem modules first)."""
    from hybridsim import problems  # noqa: F401  (the package imports every problem module)

    return dict(_REGISTRY)
