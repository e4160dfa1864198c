"""The training loop: unroll curriculum, optimiser and schedule, clipping, checkpoints, metrics.

One plain loop (after nanoGPT): draw a batch from the problem, backpropagate the problem's loss
through the unrolled solver, clip, step. Checkpoints (``last.pt`` every validation, ``best.pt``
on the best validation loss) hold the model, optimiser, scheduler, step, best metric, RNG states
and the resolved config as plain containers, written atomically; resuming from ``last.pt``
continues the run bit for bit on CPU. An optional L-BFGS polish on the full horizon follows.

Divergence (a non-finite loss, gradient, parameter or validation loss) stops the fit with a
message that says which of them diverged and the setting most likely to blame; a checkpoint is
never written with non-finite parameters or after a non-finite validation loss, so ``last.pt``
stays the last good state. ``metrics.jsonl`` is strict JSON (non-finite values as ``null``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hybridsim import interrupts, parallel
from hybridsim.config import RecipeConfig
from hybridsim.data import NotARegularFile, atomic_path, require_regular_file
from hybridsim.interrupts import Interrupted
from hybridsim.interrupts import check as check_interrupt
from hybridsim.numerics.rollout import GradientMode
from hybridsim.problems.base import Batch, Problem


class TrainingDiverged(RuntimeError):
    """Training produced a non-finite value; the last good checkpoint is kept."""


class TrainingError(RuntimeError):
    """A model that cannot be trained as configured (the message names the setting)."""


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read (the message names the file)."""


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file and a rename (see ``data.atomic_path``)."""
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


class Progress:
    """A rich progress bar on a terminal, plain lines otherwise (or nothing)."""

    def __init__(self, mode: str, total: int, title: str) -> None:
        if mode == "auto":
            mode = "rich" if sys.stdout.isatty() else "plain"
        self.mode, self.total, self.title = mode, total, title
        self._bar = None
        if mode == "rich":
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self._task = self._bar.add_task(title, total=total, info="")
            self._bar.start()
        self._t0 = time.perf_counter()

    def update(self, step: int, info: str, log: bool) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=info)
        elif self.mode == "plain" and log:
            elapsed = time.perf_counter() - self._t0
            print(f"[{self.title}] step {step}/{self.total} {info} ({elapsed:.0f}s)", flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _json_value(v: Any) -> Any:
    """A float that JSON can hold: non-finite values become null."""
    return v if not isinstance(v, float) or math.isfinite(v) else None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl``, skipping lines that do not parse (a line torn by a kill)."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


class MetricsLog:
    """``metrics.jsonl``: one JSON object per logged step; on resume, later lines (and a line
    torn by a kill) are dropped."""

    def __init__(self, path: Path, model: str, resume_step: int | None, sink: Any = None) -> None:
        self.path, self.model, self.sink = path, model, sink
        if path.exists():
            require_regular_file(path, "metrics file")
        if resume_step is not None and path.exists():
            keep = [
                {k: _json_value(v) for k, v in row.items()}
                for row in read_metrics(path)
                if row.get("model") != model or row.get("step", 0) <= resume_step
            ]
            text = "".join(json.dumps(row, allow_nan=False) + "\n" for row in keep)
            with atomic_path(path) as tmp:
                tmp.write_text(text)
            if sink is not None:
                sink.resumed(model, resume_step)

    def write(self, step: int, phase: str, values: Mapping[str, float]) -> None:
        row = {"step": step, "model": self.model, "phase": phase, **values}
        row = {k: _json_value(v) for k, v in row.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(row, allow_nan=False) + "\n")
        if self.sink is not None:  # the trackers (hybridsim.tracking): after the file has it
            self.sink.row(row)


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
    """Train ``model`` by ``recipe``; checkpoints go to ``run_dir/checkpoints[/<name>]``.

    Resumes from ``last.pt`` when it exists (and returns at once if that run had finished).
    """
    ckpt_dir = run_dir / "checkpoints" if name == "hybrid" else run_dir / "checkpoints" / name
    last, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    world = parallel.world()  # under torchrun: rank 0 alone writes (see hybridsim.parallel)
    run_dir.mkdir(parents=True, exist_ok=True)
    params = [p for p in model.parameters() if p.requires_grad]
    t0, cpu0 = time.perf_counter(), time.process_time()
    if not params:  # nothing to learn (e.g. the solver alone with fixed physics)
        if world.main:
            state = _state(model, None, None, 0, "done", float("nan"), None, config, True)
            save_atomic(state, last)
            save_atomic(load_checkpoint(last), best_path)
        return FitResult(0, float("nan"), 0.0)

    if isinstance(getattr(model, "gradient", None), GradientMode):
        # a model that unrolls its own loop takes the recipe's gradient mode
        model.gradient = GradientMode(recipe.gradient_mode, recipe.gradient_every)
    opt = make_optimizer(params, recipe)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(recipe))
    gen = torch.Generator().manual_seed(seed)
    step, best, phase = 0, float("inf"), "adam"
    polish_opt: torch.optim.LBFGS | None = None
    polish_prev: float | None = None
    polish_stage: int | None = None
    polish_batch = None
    if last.exists():
        ck = load_checkpoint(last)
        model.load_state_dict(ck["model"])
        if ck.get("done"):
            return FitResult(ck["step"], ck["best"], 0.0)
        step, best, phase = ck["step"], ck["best"], ck["phase"]
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        gen.set_state(ck["rng"]["batch"])
        torch.set_rng_state(ck["rng"]["torch"])
        if phase == "lbfgs":
            polish_opt = _lbfgs(params)
            polish_opt.load_state_dict(ck["polish_optimizer"])
            polish_prev, polish_stage = ck.get("polish_prev"), ck.get("polish_stage")
    resumed_at = step if last.exists() else None
    log = (
        MetricsLog(run_dir / "metrics.jsonl", name, resumed_at, tracker) if world.main else _NoLog()
    )
    total = recipe.steps + (recipe.polish_steps if recipe.polish == "lbfgs" else 0)
    bar = Progress(progress if world.main else "none", total, name)
    ddp = parallel.wrap(problem, model) if world.active else None

    def end_of_step() -> None:
        if ddp is None:
            check_interrupt()
            return
        # Every rank stops at the same step (a signal reaches the ranks at different times).
        signum = parallel.agreed_signal(interrupts.pending())
        if signum is not None:
            interrupts.check(force=True)
            raise Interrupted(signum)

    def diverged(what: str, cause: str) -> TrainingDiverged:
        return _diverged(name, step, phase, what, cause, last)

    def checkpoint(done: bool = False) -> None:
        nonlocal best
        bad = _non_finite(model)
        if bad:
            raise diverged(f"parameter {bad} is non-finite", _lr_cause(recipe, sched))
        metrics = problem.validate(model, val_data)
        log.write(step, phase, {f"val/{k}": v for k, v in metrics.items()})
        if not math.isfinite(metrics["loss"]):
            raise diverged(
                f"the validation loss is {metrics['loss']} (the model blows up over the "
                "validation horizon)",
                _lr_cause(recipe, sched),
            )
        ck = _state(model, opt, sched, step, phase, best, gen, config, done, polish_opt)
        ck["polish_prev"], ck["polish_stage"] = polish_prev, polish_stage
        if math.isfinite(metrics["loss"]) and metrics["loss"] < best:
            best = metrics["loss"]
            ck["best"] = best
            if world.main:
                save_atomic(ck, best_path)
        if world.main:
            save_atomic(ck, last)

    # Under DDP a signal is held until the ranks agree on it at the end of a step.
    with interrupts.held() if ddp is not None else contextlib.nullcontext():
        try:
            while phase == "adam" and step < recipe.steps:
                model.train()
                unroll = unroll_at(recipe, step)
                batch = problem.batch(train_data, recipe.batch_size, unroll, gen)
                if ddp is not None:  # this rank's slice of the global batch
                    loss = ddp(parallel.shard(batch, recipe.batch_size))
                    value = parallel.mean(float(loss.detach()))
                else:
                    loss = problem.loss(model, batch)
                    value = float(loss.detach())
                if not math.isfinite(value):
                    raise diverged(*_loss_cause(model, batch, value, step, unroll, recipe, sched))
                if not loss.requires_grad:
                    raise TrainingError(
                        f"{name} cannot be trained: its loss does not depend on any trainable "
                        "parameter, so the correction is never applied (a solver that makes no "
                        "steps, e.g. solver.n_iter=0, leaves nothing to correct)"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                gnorm = nn.utils.clip_grad_norm_(params, recipe.grad_clip or float("inf"))
                if not torch.isfinite(gnorm):
                    raise diverged(
                        f"the gradient is non-finite (norm {float(gnorm)}; the loss was "
                        f"{value:.3e})",
                        f"backpropagation through the unrolled solver overflowed: likely "
                        f"recipe.unroll={unroll} (shorter, or recipe.gradient_mode=truncate) "
                        "or "
                        f"{_lr_cause(recipe, sched)}",
                    )
                opt.step()
                sched.step()
                end_of_step()
                step += 1
                logged = step % recipe.log_every == 0
                if logged:
                    log.write(
                        step,
                        phase,
                        {
                            "train/loss": value,
                            "lr": sched.get_last_lr()[0],
                            "unroll": unroll,
                            "grad_norm": float(gnorm),
                        },
                    )
                bar.update(step, f"loss {value:.3e} unroll {unroll}", logged)
                if step % recipe.val_every == 0 or step == recipe.steps:
                    checkpoint()
            if recipe.polish == "lbfgs" and recipe.polish_steps > 0:
                phase = "lbfgs"
                stages = recipe.polish_unroll
                while step < total:
                    # Stages of the polish (e.g. all windows of 20 intervals, then the full
                    # trajectories), each with a fresh L-BFGS memory.
                    stage = min(
                        (step - recipe.steps) * len(stages) // recipe.polish_steps, len(stages) - 1
                    )
                    if polish_opt is None or stage != polish_stage:
                        polish_opt, polish_stage, polish_prev = _lbfgs(params), stage, None
                        polish_batch = problem.polish_batch(train_data, stages[stage])
                    elif polish_batch is None:
                        polish_batch = problem.polish_batch(train_data, stages[stage])
                    model.train()

                    def closure(opt=polish_opt, batch=polish_batch) -> torch.Tensor:
                        opt.zero_grad(set_to_none=True)
                        value = problem.loss(model, batch)
                        if not torch.isfinite(value.detach()):
                            # A trial point of the line search where the rollout blew up: +inf (not
                            # NaN, which compares false) makes the search back off from it.
                            return torch.full_like(value.detach(), float("inf"))
                        value.backward()
                        return value

                    loss = polish_opt.step(closure)
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise diverged(
                            f"the L-BFGS loss is {value}",
                            f"the model blows up over recipe.polish_unroll={stages[stage]}",
                        )
                    bad = _non_finite(model)
                    if bad:
                        raise diverged(
                            f"parameter {bad} is non-finite after an L-BFGS step",
                            f"the polish diverged (recipe.polish_unroll={stages[stage]}); "
                            "recipe.polish=none keeps the first-order result",
                        )
                    check_interrupt()
                    # No decrease since the previous iteration: the line search found none, the
                    # stage has converged to float precision; go on to the next stage.
                    stalled = polish_prev is not None and value >= polish_prev
                    polish_prev = value
                    step += 1
                    if stalled:
                        log.write(step, phase, {"polish/stage_converged": stage})
                        step = max(
                            step,
                            recipe.steps + -(-(stage + 1) * recipe.polish_steps // len(stages)),
                        )
                    logged = step % recipe.log_every == 0
                    if logged:
                        log.write(step, phase, {"train/loss": value, "unroll": stages[stage]})
                    bar.update(step, f"L-BFGS loss {value:.3e} unroll {stages[stage]}", logged)
                    if step % recipe.val_every == 0 or step >= total or stalled:
                        checkpoint()
            checkpoint(done=True)
        finally:
            bar.close()
    return FitResult(step, best, time.perf_counter() - t0, time.process_time() - cpu0)


class _NoLog:
    """The metrics log of a rank other than 0 (which writes nothing)."""

    def write(self, step: int, phase: str, values: Mapping[str, float]) -> None:
        pass


def _lbfgs(params: list[nn.Parameter]) -> torch.optim.LBFGS:
    # One iteration per outer step (so progress, checkpoints and resume work per iteration);
    # max_eval must be set explicitly: its default (max_iter * 5 // 4 = 1) leaves the line
    # search no evaluation, and L-BFGS then never moves.
    return torch.optim.LBFGS(
        params, lr=1.0, max_iter=1, max_eval=25, history_size=50, line_search_fn="strong_wolfe"
    )


def _diverged(name: str, step: int, phase: str, what: str, cause: str, last: Path) -> Exception:
    kept = f"last good checkpoint: {last}" if last.exists() else "no checkpoint was written yet"
    return TrainingDiverged(
        f"training of {name} diverged at step {step} ({phase}): {what}; likely cause: {cause}; "
        f"{kept}"
    )


def _non_finite(model: nn.Module) -> str | None:
    """The name of the first parameter or floating buffer with a non-finite entry, if any."""
    tensors = [(k, v) for k, v in model.state_dict().items() if v.is_floating_point()]
    if not tensors:
        return None
    finite = torch.stack([torch.isfinite(v).all() for _, v in tensors]).tolist()
    return next((k for (k, _), ok in zip(tensors, finite, strict=True) if not ok), None)


def _lr_cause(recipe: RecipeConfig, sched: torch.optim.lr_scheduler.LRScheduler) -> str:
    return f"recipe.lr={recipe.lr:g} (now {sched.get_last_lr()[0]:.3g}) is too large"


def _loss_cause(
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
    bad = _non_finite(model)
    if bad:
        return f"{what}: parameter {bad} is non-finite", _lr_cause(recipe, sched)
    if step == 0:
        return f"{what} before any update", (
            "the untrained model blows up: a solver setting (solver.*), correction.init_scale, "
            f"or recipe.unroll={unroll}"
        )
    return f"{what} (parameters finite)", (
        f"{_lr_cause(recipe, sched)}, or recipe.unroll={unroll} is too long for this model"
    )


def _state(model, opt, sched, step, phase, best, gen, config, done, polish_opt=None) -> dict:
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict() if opt is not None else {},
        "scheduler": sched.state_dict() if sched is not None else {},
        "polish_optimizer": polish_opt.state_dict() if polish_opt is not None else {},
        "step": step,
        "phase": phase,
        "best": best,
        "done": done,
        "rng": {
            "torch": torch.get_rng_state(),
            "batch": gen.get_state() if gen is not None else torch.get_rng_state(),
        },
        "config": config or {},
        "versions": {"torch": str(torch.__version__)},
    }


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
    from hybridsim.config import resolve_device
    from hybridsim.data import data_path, ensure_dataset, read_split
    from hybridsim.problems.base import registered

    world = parallel.world()  # under torchrun every rank runs this; rank 0 alone writes
    cpu_start = time.process_time()  # this process's CPU time (all threads): data and fits
    torch.manual_seed(cfg.seed)
    device = torch.device(resolve_device(cfg.device))
    if world.active and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU
    dtype = getattr(torch, cfg.dtype)
    problem = registered()[cfg.problem.name](cfg.problem)
    coupling = problem.check_choices(cfg.solver.name, cfg.correction.name, cfg.coupling)
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
        cfg.solver, cfg.correction, coupling, train_split, cfg.recipe.baselines
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


def git_sha(start: Path) -> str | None:
    """The commit checked out in the git repository holding ``start``, read from ``.git``
    itself: running ``git`` would execute whatever a changed PATH (or a run's config, through
    Hydra's ``env_set``) puts first on it."""
    import re

    sha = re.compile(r"[0-9a-f]{40}")
    try:
        for folder in (start, *start.parents):
            dot = folder / ".git"
            if dot.is_dir():
                gitdir = dot
                break
            if dot.is_file() and dot.read_text().startswith("gitdir:"):
                gitdir = (folder / dot.read_text().split(":", 1)[1].strip()).resolve()
                break
        else:
            return None
        common = gitdir
        if (gitdir / "commondir").is_file():  # a worktree: its refs live in the main .git
            common = (gitdir / (gitdir / "commondir").read_text().strip()).resolve()
        head = (gitdir / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head if sha.fullmatch(head) else None
        ref = head[4:].strip()
        for base in (gitdir, common):
            if (base / ref).is_file():
                value = (base / ref).read_text().strip()
                return value if sha.fullmatch(value) else None
        if (common / "packed-refs").is_file():
            for line in (common / "packed-refs").read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref and sha.fullmatch(parts[0]):
                    return parts[0]
    except (OSError, UnicodeDecodeError):
        return None
    return None


def _meta(cfg: Any, path: Path, device: torch.device) -> dict[str, Any]:
    import platform

    import hybridsim

    return {
        "hybridsim": hybridsim.__version__,
        "git_sha": git_sha(Path(hybridsim.__file__).resolve().parent),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "device": str(device),
        "host": platform.node(),
        "cpu": _cpu_name(),
        "pid": os.getpid(),  # with host and started: `hybridsim report` tells running from dead
        "data": str(path),
        "data_hash": path.stem.rsplit("-", 1)[-1],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _cpu_name() -> str:
    """The processor's model name (``platform.processor()`` is often just the architecture)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _write_meta(run_dir: Path, meta: dict[str, Any], status: str, error: str | None = None) -> None:
    from hybridsim.evaluate import write_json_atomic

    meta["status"] = status
    if error:
        meta["error"] = error
    meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json_atomic(meta, run_dir / "meta.json")


def _plot_training_curve(run_dir: Path) -> None:
    """plots/training.png: training and validation loss per model against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return
    rows = read_metrics(path)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, model in enumerate(dict.fromkeys(r["model"] for r in rows)):
        for key, style in (("train/loss", "-"), ("val/loss", "o--")):
            pts = [
                (r["step"], r[key])
                for r in rows
                if r["model"] == model and isinstance(r.get(key), int | float)
            ]
            if pts:
                ax.semilogy(
                    *zip(*pts, strict=True),
                    style,
                    color=f"C{i}",
                    ms=3,
                    label=f"{model} {key.split('/')[0]}",
                )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    (run_dir / "plots").mkdir(exist_ok=True)
    fig.savefig(run_dir / "plots" / "training.png", dpi=110)
    plt.close(fig)
