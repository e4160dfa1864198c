"""The L-BFGS polish after the first-order phase of :func:`hybridsim.train.fit`: staged over
``recipe.polish_unroll``, one iteration per outer step so that progress, checkpoints and resume
work per iteration."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from hybridsim.divergence import non_finite
from hybridsim.interrupts import check as check_interrupt
from hybridsim.runlog import Progress


def polish(run: Any, train_data: Mapping[str, torch.Tensor], total: int, bar: Progress) -> None:
    """The L-BFGS polish after the first-order phase: ``recipe.polish_unroll`` stages (e.g. all
    windows of 20 intervals, then the full trajectories) spread over ``recipe.polish_steps``
    iterations, each stage with a fresh L-BFGS memory and ending early once an iteration finds
    no decrease (the line search has converged to float precision).

    ``run`` is the fit's state (``hybridsim.train._Fit``: recipe, problem, model, params, step,
    phase, the L-BFGS optimiser and its stage, the metrics log, ``checkpoint``, ``diverged``)."""
    recipe, problem, model = run.recipe, run.problem, run.model
    run.phase = "lbfgs"
    stages = recipe.polish_unroll
    batch = None
    while run.step < total:
        stage = min((run.step - recipe.steps) * len(stages) // recipe.polish_steps, len(stages) - 1)
        if run.polish_opt is None or stage != run.polish_stage:
            run.polish_opt, run.polish_stage, run.polish_prev = lbfgs(run.params), stage, None
            batch = problem.polish_batch(train_data, stages[stage])
        elif batch is None:
            batch = problem.polish_batch(train_data, stages[stage])
        model.train()

        def closure(opt=run.polish_opt, batch=batch) -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            value = problem.loss(model, batch)
            if not torch.isfinite(value.detach()):
                # A trial point of the line search where the rollout blew up: +inf (not NaN,
                # which compares false) makes the search back off from it.
                return torch.full_like(value.detach(), float("inf"))
            value.backward()
            return value

        value = float(run.polish_opt.step(closure).detach())
        if not math.isfinite(value):
            raise run.diverged(
                f"the L-BFGS loss is {value}",
                f"the model blows up over recipe.polish_unroll={stages[stage]}",
            )
        bad = non_finite(model)
        if bad:
            raise run.diverged(
                f"parameter {bad} is non-finite after an L-BFGS step",
                f"the polish diverged (recipe.polish_unroll={stages[stage]}); "
                "recipe.polish=none keeps the first-order result",
            )
        check_interrupt()
        stalled = run.polish_prev is not None and value >= run.polish_prev
        run.polish_prev = value
        run.step += 1
        if stalled:  # on to the next stage
            run.log.write(run.step, run.phase, {"polish/stage_converged": stage})
            next_stage = recipe.steps + -(-(stage + 1) * recipe.polish_steps // len(stages))
            run.step = max(run.step, next_stage)
        logged = run.step % recipe.log_every == 0
        if logged:
            run.log.write(run.step, run.phase, {"train/loss": value, "unroll": stages[stage]})
        bar.update(run.step, f"L-BFGS loss {value:.3e} unroll {stages[stage]}", logged)
        if run.step % recipe.val_every == 0 or run.step >= total or stalled:
            run.checkpoint()


def lbfgs(params: list[nn.Parameter]) -> torch.optim.LBFGS:
    # One iteration per outer step (so progress, checkpoints and resume work per iteration);
    # max_eval must be set explicitly: its default (max_iter * 5 // 4 = 1) leaves the line
    # search no evaluation, and L-BFGS then never moves.
    return torch.optim.LBFGS(
        params, lr=1.0, max_iter=1, max_eval=25, history_size=50, line_search_fn="strong_wolfe"
    )
