"""The contract every problem fulfils, and the problem registry.

A problem knows its physics (state, parameters), how to make reference data for each split,
how to build its models from (solver, correction, coupling), how to draw a training batch and
score a prediction: the evaluation loop (``hybridsim.evaluate``) asks it for the test case, each
model's prediction, the metrics, a summary and the plots.

It receives typed config dataclasses (see ``hybridsim.config``), never a DictConfig, and never
touches Hydra or h5py: the data layer hands it plain numpy arrays, the trainer gives it tensors.

The three kinds of hybrid the contract serves:

- ODE right-hand side (lv): ``du/dt = f_known(u) + NN(u)``, integrated by euler/rk4/dopri5;
- PDE time step (ns): ``u_{n+1} = u* + NN(u*)``, ``u* = solver.step(u_n)``;
- iterative reconstruction (ct): ``a_{k+1} = a_k + NN(a_k, grad L(a_k), ...)``.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from hybridsim.data import SPLITS, ProblemError, SplitData  # noqa: F401  (re-exported)
from hybridsim.numerics.rollout import GradientMode


@dataclass(frozen=True)
class Comparator:
    """A model evaluated beside the hybrid, declared by the problem as data.

    ``correction``: the correction config (``correction=<name>``, its YAML and the user's
    overrides of it when it is the main model's) or ``None`` for the main model's own;
    ``coupling``: how it combines with the solver; ``trained``: fitted by ``train`` (when
    ``recipe.baselines``) or built directly at evaluation (the solver alone).
    """

    name: str
    correction: str | None
    coupling: str
    trained: bool = True


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
    schema: its config dataclass (``problem.*``), stored in Hydra's ConfigStore.
    solvers: the solver configs (``solver=…``) this problem accepts.
    corrections: the correction configs (``correction=…``) it accepts; ``none`` = solver alone.
    couplings: the ways solver and correction combine; the first one is the default.
    needs_network: couplings that are made of networks (rejected with ``correction=none``).
    comparators: the models evaluated beside the hybrid (:class:`Comparator`), in order.
    solver_schemas: config dataclasses of solver kinds the problem brings (``{kind: schema}``).
    config_files: YAML shipped with a problem from outside hybridsim, ``{"problem/heat":
        "package:path/heat.yaml"}``: put on Hydra's search path (its ConfigStore) at start-up.
    tiny: overrides that make a run of seconds with the problem's physics (a small grid, few
        samples, short horizons): the registry tests run every problem with them.
    headline_error: a metric of the evaluation table where lower is better (``rel_l2_mean``);
        when set, every model's row gets ``gain_over_solver``: the solver alone's value over its
        own (the solver alone: :meth:`solver_alone`).
    """

    name: ClassVar[str]
    schema: ClassVar[type]
    solvers: ClassVar[tuple[str, ...]]
    corrections: ClassVar[tuple[str, ...]]
    couplings: ClassVar[tuple[str, ...]]
    needs_network: ClassVar[frozenset[str]] = frozenset()
    comparators: ClassVar[tuple[Comparator, ...]] = ()
    solver_schemas: ClassVar[dict[str, type]] = {}
    config_files: ClassVar[dict[str, str]] = {}
    tiny: ClassVar[tuple[str, ...]] = ()
    headline_error: ClassVar[str | None] = None
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
        return {k: v for k, v in asdict(self.cfg).items() if k not in self.model_keys}

    # ----------------------------------------------------------------- model
    @abc.abstractmethod
    def build_model(
        self,
        solver: Any,
        correction: Any,
        coupling: str,
        train: SplitData,
        gradient: GradientMode | None = None,
    ) -> nn.Module:
        """The model for (solver config, correction config, coupling), usually a
        :class:`hybridsim.hybrid.Hybrid`; ``gradient`` is how backpropagation runs through its
        unrolled steps (the recipe's; forward values are the same for every mode).

        ``correction.kind == "none"`` gives the solver alone; a correction whose output is zero
        must reproduce the solver alone exactly. ``train`` is the training split, for scaling
        network inputs and outputs.
        """

    def check_choices(self, solver: str, correction: str, coupling: str | None) -> str:
        """Reject a solver, correction or coupling that does not fit; return the coupling.
        Subclasses add their own rules (and call this first)."""
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
        if correction == "none" and coupling in self.needs_network:
            net = next(c for c in self.corrections if c != "none")
            raise ProblemError(
                f"coupling={coupling} {self.needs_network_reason}; choose correction={net}"
            )
        return coupling

    needs_network_reason: ClassVar[str] = "needs a network"

    def supports_polish(self, unroll: list[int]) -> bool:
        """Whether ``recipe.polish=lbfgs`` over ``recipe.polish_unroll`` works: the problem has
        a deterministic batch of windows, or of the full horizon for ``-1`` stages only."""
        if type(self).polish_batch is not Problem.polish_batch:
            return True
        return type(self).full_batch is not Problem.full_batch and all(u == -1 for u in unroll)

    def check_run(self, solver: str, correction: str, coupling: str | None, recipe: Any) -> str:
        """Every rule of a training run, checked once before any work: the choices of the main
        model and of each comparator it will train, and the recipe's polish. Returns the
        coupling."""
        coupling = self.check_choices(solver, correction, coupling)
        for c in self.resolve_comparators(correction, coupling, trained=True, untrained=True):
            self.check_choices(solver, c.correction or correction, c.coupling)
        if (
            recipe is not None
            and recipe.polish == "lbfgs"
            and recipe.polish_steps > 0
            and not self.supports_polish(list(recipe.polish_unroll))
        ):
            raise ProblemError(
                f"recipe.polish=lbfgs with recipe.polish_unroll={list(recipe.polish_unroll)} "
                f"needs deterministic batches that problem={self.name} does not make; set "
                "recipe.polish=none (or recipe.polish_unroll=[-1] if it has a full batch)"
            )
        return coupling

    @classmethod
    def solver_alone(cls) -> str | None:
        """The name of the comparator that is the solver alone (correction ``none``, untrained:
        ``solver``, ``physics`` for lv), or ``None`` if the problem declares none."""
        return next(
            (c.name for c in cls.comparators if c.correction == "none" and not c.trained), None
        )

    def resolve_comparators(
        self, correction: str, coupling: str, trained: bool, untrained: bool
    ) -> list[Comparator]:
        """The comparators to build beside a main model (``correction``, ``coupling``): those
        asked for, less the one the main model already is, and less a comparator of the main
        model's own correction that this correction cannot make (NON without a network)."""
        out = []
        for c in self.comparators:
            if not (trained if c.trained else untrained):
                continue
            name = c.correction or correction
            if (name, c.coupling) == (correction, coupling):
                continue  # the main model already is this comparator
            if c.correction is None:
                try:
                    self.check_choices(self.solvers[0], name, c.coupling)
                except ProblemError:
                    continue
            out.append(c)
        return out

    def model_set(
        self,
        solver: Any,
        correction: Any,
        coupling: str,
        train: SplitData,
        baselines: bool,
        untrained: bool = False,
        correction_config: Callable[[str], Any] | None = None,
        gradient: GradientMode | None = None,
    ) -> dict[str, nn.Module]:
        """The main model (``hybrid``), the trained comparators when ``baselines``, and the
        untrained ones (the solver alone) when ``untrained``. ``correction_config(name)`` gives
        a comparator's correction config as the user's config files define it (the composition
        root passes it; otherwise the defaults of the schema of the kind it names)."""
        from hybridsim.schemas import correction_schema

        models = {"hybrid": self.build_model(solver, correction, coupling, train, gradient)}
        for c in self.resolve_comparators(correction.name, coupling, baselines, untrained):
            if c.correction is None or c.correction == correction.name:
                corr = correction
            elif correction_config is not None:
                corr = correction_config(c.correction)
            else:
                corr = correction_schema(c.correction)(name=c.correction)
            models[c.name] = self.build_model(solver, corr, c.coupling, train, gradient)
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

    # ------------------------------------------------------------ evaluation
    # The one evaluation loop is :func:`hybridsim.evaluate.evaluate_models`; it owns the models,
    # the device and dtype (``like = {"device", "dtype"}``, the run's, never a model's) and the
    # comparison with the solver alone. A problem supplies the pieces below, on plain arrays.

    def tune_baselines(
        self, models: Mapping[str, nn.Module], val: SplitData, like: dict[str, Any]
    ) -> dict[str, Any]:
        """Choose the classical comparators' free settings (e.g. a regularisation weight) on the
        validation split, never on the test split; called before the evaluation, which then
        uses them. Returns what was chosen (recorded in ``eval/metrics.json``); by default there
        is nothing to choose."""
        return {}

    def extra_models(self, models: Mapping[str, nn.Module]) -> dict[str, Callable[..., Any]]:
        """Models without a checkpoint, as plain callables evaluated before ``models`` (in the
        table first): classical methods such as CT's FBP and TV reconstructions. Each one is
        given to :meth:`predict_case` like a model. By default there are none."""
        return {}

    @abc.abstractmethod
    def eval_case(self, test: SplitData, train: SplitData, like: dict[str, Any]) -> Any:
        """What every model is scored on, made once: the inputs and the reference, as tensors
        on ``like``'s device and dtype (an object of the problem's choosing)."""

    @abc.abstractmethod
    def predict_case(self, model: Callable[..., Any], case: Any) -> Any:
        """One model's prediction on ``case`` (called under ``torch.no_grad()``), reduced to
        what :meth:`metrics`, :meth:`summarise` and :meth:`plots` need, preferably plain numpy
        arrays (the loop keeps every model's until the plots are drawn)."""

    @abc.abstractmethod
    def metrics(self, pred: Any, case: Any) -> dict[str, float]:
        """A model's row of the table, ``{metric: value}``, from its prediction."""

    def summarise(
        self,
        table: dict[str, dict[str, float]],
        preds: dict[str, Any],
        case: Any,
        models: Mapping[str, nn.Module],
    ) -> dict[str, Any]:
        """Run-level entries of ``eval/metrics.json`` beside ``table`` (``headline``, ``labels``,
        per-parameter breakdowns, series). Called after every row (and ``gain_over_solver``) is
        in; it may add metrics to rows, and rows of models derived from the others (LV's
        discovered equations) to ``table`` with their predictions in ``preds``."""
        return {}

    def plots(self, preds: dict[str, Any], case: Any, result: dict[str, Any]) -> dict[str, Any]:
        """``{file name: matplotlib Figure}``, saved under ``eval/plots/`` by the loop; ``result``
        is the table with the summary. Make figures with ``matplotlib.figure.Figure`` (no
        pyplot, no backend to choose, nothing to close); its ``dpi`` is the file's."""
        return {}


_REGISTRY: dict[str, type[Problem]] = {}
# The problems that ship with hybridsim, imported when the registry is first read (by name, so
# that importing this module loads none of them, nor Hydra).
BUILTIN = (
    "hybridsim.problems.lotka_volterra",
    "hybridsim.problems.tomography",
    "hybridsim.problems.navier_stokes",
    "hybridsim.problems.burgers",
)
ENTRY_POINT_GROUP = "hybridsim.problems"
_loaded = False


def register(cls: type[Problem]) -> type[Problem]:
    """Class decorator: make ``cls`` selectable as ``problem=<cls.name>``."""
    _REGISTRY[cls.name] = cls
    return cls


def registered() -> dict[str, type[Problem]]:
    """Every registered problem class by name: the built-in ones, then those of installed
    packages that declare an entry point in the group ``hybridsim.problems`` (``name =
    "package.module:ProblemClass"``, or a module that registers its problems on import)."""
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN:
            importlib.import_module(module)
        for ep in _entry_points():
            try:
                obj = ep.load()
            except Exception as e:  # noqa: BLE001  (a broken plug-in names itself)
                raise ProblemError(
                    f"the problem plug-in {ep.name!r} ({ep.value}) cannot be loaded: "
                    f"{type(e).__name__}: {e}"
                ) from None
            if isinstance(obj, type) and issubclass(obj, Problem):
                register(obj)
    return dict(_REGISTRY)


def _entry_points() -> list[Any]:
    from importlib.metadata import entry_points

    return sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
