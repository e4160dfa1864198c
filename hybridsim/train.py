"""The training loop: unroll curriculum, optimiser and schedule, clipping, checkpoints, metrics.

One plain loop (after nanoGPT): draw a batch from the problem, backpropagate the problem's loss
through the unrolled solver, clip, step. Checkpoints (``last.pt`` every validation, ``best.pt``
on the best validation loss) hold the model, optimiser, scheduler, step, best metric, RNG states
and the resolved config as plain containers, written atomically; resuming from ``last.pt``
continues the run bit for bit on CPU. An optional L-BFGS polish follows (hybridsim.polish).

Divergence (a non-finite loss, gradient, parameter or validation loss) stops the fit with a
message that says which of them diverged and the setting most likely to blame; a checkpoint is
never written with non-finite parameters or after a non-finite validation loss, so ``last.pt``
stays the last good state (the messages: hybridsim.divergence). ``metrics.jsonl`` is strict
JSON (non-finite values as ``null``).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hybridsim import interrupts, parallel
from hybridsim.checkpoint import (  # noqa: F401  (CheckpointError re-exported)
    CheckpointError,
    TrainState,
    load_checkpoint,
    load_state,
    save_atomic,
    write_json_atomic,
)
from hybridsim.divergence import (  # noqa: F401  (the exceptions re-exported)
    TrainingDiverged,
    TrainingError,
    diverged,
    loss_cause,
    lr_cause,
    non_finite,
)
from hybridsim.interrupts import Interrupted
from hybridsim.interrupts import check as check_interrupt
from hybridsim.nn import accelerate
from hybridsim.polish import lbfgs, polish
from hybridsim.problems.base import Problem
from hybridsim.runlog import (  # noqa: F401  (read_metrics, git_sha re-exported)
    MetricsLog,
    Progress,
    _meta,
    _NoLog,
    _plot_training_curve,
    _write_meta,
    git_sha,
    read_metrics,
)
from hybridsim.schemas import RecipeConfig


def make_optimizer(params: list[nn.Parameter], recipe: RecipeConfig) -> torch.optim.Optimizer:
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.RMSprop(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def lr_factor(recipe: RecipeConfig) -> Callable[[int], float]:
    """Learning-rate multiplier as a function of the step (a pure function: resumable)."""
    if recipe.lr_schedule == "constant":
        return lambda step: 1.0
    if recipe.lr_schedule == "inverse_step":  # Adler & Öktem: lr / (1 + step // 500)
        return lambda step: 1.0 / (1 + step // recipe.lr_decay_every)
    lo = recipe.lr_min_factor
    return lambda step: (
        lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * min(step, recipe.steps) / recipe.steps))
    )


def unroll_at(recipe: RecipeConfig, step: int) -> int:
    """The curriculum: ``recipe.unroll`` stages spread evenly over the steps."""
    stage = min(step * len(recipe.unroll) // recipe.steps, len(recipe.unroll) - 1)
    return recipe.unroll[stage]


@dataclass
class FitResult:
    step: int
    best: float
    seconds: float
    cpu_seconds: float = 0.0  # CPU time of this process during the fit (all threads)


def fit(
    problem: Problem,
    model: nn.Module,
    train_data: Mapping[str, torch.Tensor],
    val_data: Mapping[str, torch.Tensor],
    recipe: RecipeConfig,
    run_dir: Path,
    *,
    name: str = "hybrid",
    seed: int = 0,
    config: dict[str, Any] | None = None,
    progress: str = "auto",
    tracker: Any = None,
) -> FitResult:
    """Train ``model`` by ``recipe``: Adam (or AdamW, RMSProp) on random batches, then the
    optional L-BFGS polish (:func:`_polish`); checkpoints go to ``run_dir/checkpoints[/<name>]``.

    Resumes from ``last.pt`` when it exists (and returns at once if that run had finished).
    The model's gradient mode is its own (given when the problem built it), never set here.
    """
    ckpt_dir = run_dir / "checkpoints" if name == "hybrid" else run_dir / "checkpoints" / name
    last, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    world = parallel.world()  # under torchrun: rank 0 alone writes (see hybridsim.parallel)
    run_dir.mkdir(parents=True, exist_ok=True)
    params = [p for p in model.parameters() if p.requires_grad]
    t0, cpu0 = time.perf_counter(), time.process_time()
    if not params:  # nothing to learn (e.g. the solver alone with fixed physics)
        if world.main:
            state = TrainState(
                model.state_dict(),
                phase="done",
                best=float("nan"),
                done=True,
                rng={"torch": torch.get_rng_state(), "batch": torch.get_rng_state()},
                config=config or {},
            )
            save_atomic(state, last)
            save_atomic(load_checkpoint(last), best_path)
        return FitResult(0, float("nan"), 0.0)

    run = _Fit(problem, model, params, recipe, seed, name, last, best_path, val_data, config)
    if last.exists():
        ck = load_state(last)
        model.load_state_dict(ck.model)
        if ck.done:
            return FitResult(ck.step, ck.best, 0.0)
        run.restore(ck)
    run.log = (
        MetricsLog(run_dir / "metrics.jsonl", name, run.step if last.exists() else None, tracker)
        if world.main
        else _NoLog()
    )
    total = recipe.steps + (recipe.polish_steps if recipe.polish == "lbfgs" else 0)
    bar = Progress(progress if world.main else "none", total, name)
    ddp = parallel.wrap(problem, model) if world.active else None
    # Under DDP a signal is held until the ranks agree on it at the end of a step.
    with interrupts.held() if ddp is not None else contextlib.nullcontext():
        try:
            while run.phase == "adam" and run.step < recipe.steps:
                unroll = unroll_at(recipe, run.step)
                value, gnorm = run.adam_step(train_data, unroll, ddp)
                _end_of_step(ddp)
                run.step += 1
                logged = run.step % recipe.log_every == 0
                if logged:
                    row = {"train/loss": value, "lr": run.sched.get_last_lr()[0], "unroll": unroll}
                    run.log.write(run.step, run.phase, {**row, "grad_norm": gnorm})
                bar.update(run.step, f"loss {value:.3e} unroll {unroll}", logged)
                if run.step % recipe.val_every == 0 or run.step == recipe.steps:
                    run.checkpoint()
            if recipe.polish == "lbfgs" and recipe.polish_steps > 0:
                polish(run, train_data, total, bar)
            run.checkpoint(done=True)
        finally:
            bar.close()
    return FitResult(run.step, run.best, time.perf_counter() - t0, time.process_time() - cpu0)


def _end_of_step(ddp: Any) -> None:
    if ddp is None:
        check_interrupt()
        return
    # Every rank stops at the same step (a signal reaches the ranks at different times).
    signum = parallel.agreed_signal(interrupts.pending())
    if signum is not None:
        interrupts.check(force=True)
        raise Interrupted(signum)


class _Fit:
    """The state of one fit (model, optimisers, step, best loss, batch generator) and what a
    step does with it; :func:`fit` is the loop around it."""

    def __init__(
        self,
        problem: Problem,
        model: nn.Module,
        params: list[nn.Parameter],
        recipe: RecipeConfig,
        seed: int,
        name: str,
        last: Path,
        best_path: Path,
        val_data: Mapping[str, torch.Tensor],
        config: dict[str, Any] | None,
    ) -> None:
        self.problem, self.model, self.params, self.recipe = problem, model, params, recipe
        self.name, self.last, self.best_path, self.val_data = name, last, best_path, val_data
        self.config = config or {}
        self.opt = make_optimizer(params, recipe)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_factor(recipe))
        self.gen = torch.Generator().manual_seed(seed)
        self.step, self.best, self.phase = 0, float("inf"), "adam"
        self.polish_opt: torch.optim.LBFGS | None = None
        self.polish_prev: float | None = None
        self.polish_stage: int | None = None
        self.log: Any = _NoLog()

    def restore(self, ck: TrainState) -> None:
        self.step, self.best, self.phase = ck.step, ck.best, ck.phase
        self.opt.load_state_dict(ck.optimizer)
        self.sched.load_state_dict(ck.scheduler)
        self.gen.set_state(ck.rng["batch"])
        torch.set_rng_state(ck.rng["torch"])
        if self.phase == "lbfgs":
            self.polish_opt = lbfgs(self.params)
            self.polish_opt.load_state_dict(ck.polish_optimizer)
            self.polish_prev, self.polish_stage = ck.polish_prev, ck.polish_stage

    def diverged(self, what: str, cause: str) -> TrainingDiverged:
        return diverged(self.name, self.step, self.phase, what, cause, self.last)

    def lr_cause(self) -> str:
        return lr_cause(self.recipe, self.sched)

    def adam_step(
        self, train_data: Mapping[str, torch.Tensor], unroll: int, ddp: Any
    ) -> tuple[float, float]:
        """One first-order update on a fresh batch; returns (loss, gradient norm)."""
        recipe, model = self.recipe, self.model
        model.train()
        batch = self.problem.batch(train_data, recipe.batch_size, unroll, self.gen)
        if ddp is not None:  # this rank's slice of the global batch
            loss = ddp(parallel.shard(batch, recipe.batch_size))
            value = parallel.mean(float(loss.detach()))
        else:
            loss = self.problem.loss(model, batch)
            value = float(loss.detach())
        if not math.isfinite(value):
            raise self.diverged(
                *loss_cause(model, batch, value, self.step, unroll, recipe, self.sched)
            )
        if not loss.requires_grad:
            raise TrainingError(
                f"{self.name} cannot be trained: its loss does not depend on any trainable "
                "parameter, so the correction is never applied (a solver that makes no "
                "steps, e.g. solver.n_iter=0, leaves nothing to correct)"
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = nn.utils.clip_grad_norm_(self.params, recipe.grad_clip or float("inf"))
        if not torch.isfinite(gnorm):
            raise self.diverged(
                f"the gradient is non-finite (norm {float(gnorm)}; the loss was {value:.3e})",
                f"backpropagation through the unrolled solver overflowed: likely "
                f"recipe.unroll={unroll} (shorter, or recipe.gradient_mode=truncate) or "
                f"{self.lr_cause()}",
            )
        self.opt.step()
        self.sched.step()
        return value, float(gnorm)

    def state(self, done: bool) -> TrainState:
        return TrainState(
            self.model.state_dict(),
            step=self.step,
            phase=self.phase,
            best=self.best,
            done=done,
            optimizer=self.opt.state_dict(),
            scheduler=self.sched.state_dict(),
            polish_optimizer=self.polish_opt.state_dict() if self.polish_opt is not None else {},
            rng={"torch": torch.get_rng_state(), "batch": self.gen.get_state()},
            config=self.config,
            polish_prev=self.polish_prev,
            polish_stage=self.polish_stage,
        )

    def checkpoint(self, done: bool = False) -> None:
        """Validate, log, and save ``last.pt`` (and ``best.pt`` on a new best loss)."""
        bad = non_finite(self.model)
        if bad:
            raise self.diverged(f"parameter {bad} is non-finite", self.lr_cause())
        metrics = self.problem.validate(self.model, self.val_data)
        self.log.write(self.step, self.phase, {f"val/{k}": v for k, v in metrics.items()})
        if not math.isfinite(metrics["loss"]):
            raise self.diverged(
                f"the validation loss is {metrics['loss']} (the model blows up over the "
                "validation horizon)",
                self.lr_cause(),
            )
        ck = self.state(done)
        main = parallel.world().main
        if metrics["loss"] < self.best:
            self.best = ck.best = metrics["loss"]
            if main:
                save_atomic(ck, self.best_path)
        if main:
            save_atomic(ck, self.last)


def run_training(
    cfg: Any,
    run_dir: Path,
    config: dict[str, Any],
    tracker: Any = None,
    attempt: dict[str, Any] | None = None,
) -> dict[str, FitResult]:
    """The ``train`` command below the CLI: data, models, one fit per model, meta.json.

    ``cfg`` is a typed TrainConfig; ``config`` its plain resolved form (saved in checkpoints);
    ``tracker`` receives every metrics row (``hybridsim.tracking.Trackers``); ``attempt``
    (a sweep job's action: new, resumed, rerun) is recorded in ``meta.json``.
    """
    from hybridsim.config import correction_config, resolve_device
    from hybridsim.data import data_path, ensure_dataset, read_split
    from hybridsim.numerics.rollout import GradientMode
    from hybridsim.problems.base import registered

    world = parallel.world()  # under torchrun every rank runs this; rank 0 alone writes
    cpu_start = time.process_time()  # this process's CPU time (all threads): data and fits
    torch.manual_seed(cfg.seed)
    device = torch.device(resolve_device(cfg.device))
    if world.active and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU
    dtype = getattr(torch, cfg.dtype)
    accelerate.check(getattr(cfg, "amp", "none"), device.type, cfg.dtype)
    problem = registered()[cfg.problem.name](cfg.problem)
    coupling = problem.check_run(cfg.solver.name, cfg.correction.name, cfg.coupling, cfg.recipe)
    if world.active:
        parallel.check_supported(problem, cfg.recipe)
    if world.main:
        path, generated = ensure_dataset(problem, cfg.data_dir)
        print(f"data: {path} ({'generated' if generated else 'cached'})", flush=True)
    if world.active:
        parallel.barrier()  # the others read the file once rank 0 has it
    if not world.main:
        path = data_path(problem, cfg.data_dir)
    cpu = {"data": time.process_time() - cpu_start}
    train_split, val_split = read_split(path, "train"), read_split(path, "val")
    models = problem.model_set(
        cfg.solver,
        cfg.correction,
        coupling,
        train_split,
        cfg.recipe.baselines,
        correction_config=lambda name: correction_config(name, cfg.problem),
        gradient=GradientMode(cfg.recipe.gradient_mode, cfg.recipe.gradient_every),
    )
    train_data = train_split.tensors(device, dtype)
    val_data = val_split.tensors(device, dtype)
    if _completed(run_dir, list(models)):
        if world.main:
            print(f"training: already complete in {run_dir} (nothing to do)", flush=True)
        return {}
    meta = _meta(cfg, path, device)
    if attempt:
        meta["attempt"] = attempt
    if world.active:
        meta["world_size"], meta["backend"] = world.size, world.backend
    if not world.main:  # meta.json, plots: rank 0's
        return _train_models(problem, models, cfg, train_data, val_data, run_dir, config, device)
    _write_meta(run_dir, meta, "running")
    try:
        results = _train_models(
            problem, models, cfg, train_data, val_data, run_dir, config, device, tracker
        )
    except TrainingDiverged as e:
        _write_meta(run_dir, meta, "diverged", str(e))
        raise
    except KeyboardInterrupt as e:
        signame = e.args[0] if isinstance(e, Interrupted) else "SIGINT"
        _write_meta(run_dir, meta, "interrupted", f"interrupted by {signame}")
        raise
    except BaseException as e:
        _write_meta(run_dir, meta, "failed", (str(e).strip().splitlines() or [repr(e)])[0])
        raise
    meta["fits"] = {
        k: {
            "steps": v.step,
            "best_val_loss": v.best,
            "seconds": round(v.seconds, 2),
            "cpu_seconds": round(v.cpu_seconds, 2),
        }
        for k, v in results.items()
    }
    # CPU seconds of this process (data generation in it when not cached, and every fit):
    # on a shared machine the wall-clock "seconds" above include the time others ran
    total = cpu["data"] + sum(v.cpu_seconds for v in results.values())
    meta["cpu_seconds"] = {"data": round(cpu["data"], 2), "total": round(total, 2)}
    _write_meta(run_dir, meta, "completed")
    _plot_training_curve(run_dir)
    return results


def _train_models(
    problem: Problem,
    models: dict[str, nn.Module],
    cfg: Any,
    train_data: Mapping[str, torch.Tensor],
    val_data: Mapping[str, torch.Tensor],
    run_dir: Path,
    config: dict[str, Any],
    device: torch.device,
    tracker: Any = None,
) -> dict[str, FitResult]:
    """One fit per model, in order (the main model first)."""
    dtype = getattr(torch, cfg.dtype)
    results: dict[str, FitResult] = {}
    for i, (name, model) in enumerate(models.items()):
        torch.manual_seed(cfg.seed + 1000 * i)  # each model's init independent of the order
        model.to(device=device, dtype=dtype)
        accelerate.accelerate_model(
            model, getattr(cfg, "amp", "none"), getattr(cfg, "compile", False)
        )
        results[name] = fit(
            problem,
            model,
            train_data,
            val_data,
            cfg.recipe,
            run_dir,
            name=name,
            seed=cfg.seed + i,
            config=config,
            progress=cfg.progress,
            tracker=tracker,
        )
    return results


def _completed(run_dir: Path, names: list[str]) -> bool:
    """Whether this run finished training already (meta.json says so and every model's last.pt
    is final): a resume then leaves meta.json and the checkpoints as they are."""
    try:
        meta = json.loads((run_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("status") != "completed":
        return False
    for name in names:
        last = run_dir / "checkpoints" / ("" if name == "hybrid" else name) / "last.pt"
        if not last.is_file() or not load_checkpoint(last).get("done"):
            return False
    return True
