"""The hybrid model: a stepper (the classical solver's one step), a correction (a network, or
``None``) and a coupling (how the two combine), used by every problem.

    Hybrid(stepper, correction, coupling, gradient).step(state, ctx)
        = coupling.step(stepper, correction, state, ctx)

Couplings (``COUPLINGS``; a problem names the ones it accepts):

- ``rhs``          du/dt = f(u) + NN(u): the network is a term of the ODE's right-hand side,
                   integrated by the stepper's ODE solver (Rackauckas et al. 2020);
- ``blackbox``     du/dt = NN(u): the network replaces the right-hand side (a neural ODE);
- ``after_step``   u ← s + NN(s), s = step(u): a correction after each solver step (Um et al.
                   2020; APEBench's ``sequential_with_bypass``);
- ``non``          the same step, with no gradient through the solver (NON: trained on single
                   steps from reference states);
- ``update``       the network makes the iteration's update from the step's own quantities
                   (learned gradient descent, Adler & Öktem 2017): u ← step(u) + NN(features).

A correction whose output is zero reproduces the stepper exactly for every coupling but
``blackbox`` (which has no stepper term): ``s + 0 = s`` in floating point (tested for every
registered problem, tests/test_registry.py). The gradient mode
(full, checkpoint, truncate) is an argument of the Hybrid, used by :meth:`Hybrid.rollout`.

What the stepper supplies per coupling (duck-typed; see the problems for examples):

- ``after_step``/``non``: ``step(state, ctx) -> state``; optionally ``correct(before, s, net,
  ctx) -> state`` (default: ``s + net(s)``): how the network sees the state and acts on it (its
  units, a staggered grid's packing, a mask, a projection, a conservation law);
- ``rhs``/``blackbox``: ``rhs() -> f(t, u)``, ``plus(net) -> f + NN``, ``replace(net) -> NN``
  and ``step_rhs(f, state, ctx) -> state`` (one solver step of ``du/dt = f``);
- ``update``: ``propose(state, ctx)`` (the uncorrected iterate and what the network sees),
  ``encode(proposal, state, ctx)``, ``decode(y, proposal, ctx)`` and ``accept(proposal,
  increment, state) -> state``;
- a per-iteration network (an ``nn.ModuleList``): ``iteration(state) -> int``.

The correction is a plain network (``hybridsim.nn.build_correction``); how the state becomes its
input and its output an increment is the stepper's (scaling, a staggered grid's packing, a
mask), since it is about the state, not the network. A checkpoint keeps the
names it always had: the stepper's tensors at the top level (``theta3``, ``u_scale``), the
network's under ``correction.``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from hybridsim.numerics.rollout import GradientMode, rollout


class Coupling:
    """How a stepper and a correction combine into one step; subclasses name themselves."""

    name: ClassVar[str]
    needs_correction: ClassVar[bool] = False  # made of the network alone (blackbox)
    teacher_forced: ClassVar[bool] = False  # trained on single steps from reference states

    def step(self, stepper: Any, correction: nn.Module | None, state: Any, ctx: Any) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _network(stepper: Any, correction: nn.Module, state: Any) -> nn.Module:
    """The network of this step: one for all steps, or one per iteration (a ModuleList; the
    last one repeats past its end)."""
    if isinstance(correction, nn.ModuleList):
        return correction[min(stepper.iteration(state), len(correction) - 1)]
    return correction


class AfterStep(Coupling):
    """``u ← s + NN(s)`` with ``s = step(u)``; a stepper with ``correct(before, s, net, ctx)``
    applies the network itself (its units, a mask, a projection)."""

    name = "after_step"
    solver_grad: ClassVar[bool] = True

    def step(self, stepper: Any, correction: nn.Module | None, state: Any, ctx: Any) -> Any:
        with torch.set_grad_enabled(self.solver_grad and torch.is_grad_enabled()):
            s = stepper.step(state, ctx)
        if correction is None:
            return s
        net = _network(stepper, correction, state)
        correct = getattr(stepper, "correct", None)
        return correct(state, s, net, ctx) if correct else s + net(s)


class NonSupervised(AfterStep):
    """``after_step`` with the solver outside the graph (NON, Um et al. 2020)."""

    name = "non"
    solver_grad = False
    teacher_forced = True


class RHS(Coupling):
    """``du/dt = f(u) + NN(u)``, one step of the stepper's ODE solver. The stepper's physics
    adds the term (``stepper.plus(net)``): it knows its state's units and its own form."""

    name = "rhs"

    def rhs(self, stepper: Any, correction: nn.Module | None) -> Callable:
        """The combined right-hand side ``f(t, u)`` for one trajectory (constants folded once)."""
        return stepper.rhs() if correction is None else stepper.plus(correction)

    def step(self, stepper: Any, correction: nn.Module | None, state: Any, ctx: Any) -> Any:
        return stepper.step_rhs(self.rhs(stepper, correction), state, ctx)


class BlackBox(RHS):
    """``du/dt = NN(u)``: the network replaces the physics (a neural ODE)."""

    name = "blackbox"
    needs_correction = True

    def rhs(self, stepper: Any, correction: nn.Module | None) -> Callable:
        return stepper.replace(correction)


class Update(Coupling):
    """An iteration whose update the network corrects from the step's own quantities:
    ``p = propose(u)``, ``u ← accept(p, decode(NN(encode(p))))`` (learned gradient descent:
    ``a_{k+1} = a_k − s ∇L(a_k) + NN(a_k, ∇L(a_k), ...)``)."""

    name = "update"

    def step(self, stepper: Any, correction: nn.Module | None, state: Any, ctx: Any) -> Any:
        proposal = stepper.propose(state, ctx)
        if correction is None:
            return stepper.accept(proposal, None, state)
        net = _network(stepper, correction, state)
        increment = stepper.decode(net(stepper.encode(proposal, state, ctx)), proposal, ctx)
        return stepper.accept(proposal, increment, state)


COUPLINGS: dict[str, type[Coupling]] = {
    c.name: c for c in (RHS, BlackBox, AfterStep, NonSupervised, Update)
}


def coupling(name: str) -> Coupling:
    """The named coupling; ValueError naming the valid ones for an unknown name."""
    if name not in COUPLINGS:
        raise ValueError(f"coupling={name} unknown; choose one of: {', '.join(COUPLINGS)}")
    return COUPLINGS[name]()


class Hybrid(nn.Module):
    """``stepper`` + ``correction`` + ``coupling``, with a gradient mode for rollouts.

    ``forward(*args)`` is the stepper's own driver (``stepper.run(self, *args)``): how a problem's
    inputs (initial state and output times, a sinogram) become steps; everything else a problem
    needs is :meth:`step` and :meth:`rollout`.
    """

    def __init__(
        self,
        stepper: nn.Module,
        correction: nn.Module | None,
        coupling: Coupling,
        gradient: GradientMode | None = None,
    ) -> None:
        super().__init__()
        if coupling.needs_correction and correction is None:
            raise ValueError(f"coupling={coupling.name} needs a network")
        # the stepper first: the optimiser's parameter order (and so every saved state) is a
        # learned physical constant's, then the network's (as a module's own parameters come
        # before its children's)
        self.stepper = stepper
        self.correction = correction
        self.coupling = coupling
        self.gradient = gradient or GradientMode()
        self._register_state_dict_hook(_flat_names)
        self._register_load_state_dict_pre_hook(_nested_names, with_module=True)

    def step(self, state: Any, ctx: Any = None) -> Any:
        return self.coupling.step(self.stepper, self.correction, state, ctx)

    def rollout(self, state: Any, n_steps: int, ctx: Any = None, save_every: int = 1) -> list:
        """The states after every ``save_every`` steps, backpropagated by ``self.gradient``."""
        return rollout(
            lambda s: self.step(s, ctx),
            state,
            n_steps,
            save_every=save_every,
            gradient=self.gradient,
        )

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.stepper.run(self, *args, **kwargs)

    @property
    def like(self) -> dict[str, Any]:
        """``{"device", "dtype"}`` of the model's floating tensors (for building inputs)."""
        for t in (*self.parameters(), *self.buffers()):
            if t.is_floating_point():
                return {"device": t.device, "dtype": t.dtype}
        return {"device": torch.device("cpu"), "dtype": torch.get_default_dtype()}


def _flat_names(module: nn.Module, state: dict, prefix: str, local_metadata: Any) -> None:
    """state_dict hook: the stepper's tensors at the top level (``stepper.theta3`` ->
    ``theta3``), the names checkpoints have always had; the network's stay ``correction.*``."""
    inner = prefix + "stepper."
    for key in list(state):
        if key.startswith(inner):
            state[prefix + key[len(inner) :]] = state.pop(key)


def _nested_names(module: nn.Module, state: dict, prefix: str, *args: Any) -> None:
    """load_state_dict pre-hook: the inverse of :func:`_flat_names`."""
    for key in module.stepper.state_dict():
        if prefix + key in state:
            state[prefix + "stepper." + key] = state.pop(prefix + key)
