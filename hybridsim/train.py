"""The training loop: unroll curriculum, optimiser and schedule, clipping, checkpoints, metrics.

One plain loop (after nanoGPT): draw a batch from the problem, backpropagate the problem's loss
through the unrolled solver, clip, step. Checkpoints (``last.pt`` every validation, ``best.pt``
on the best validation loss) hold the model, optimiser, scheduler, step, best metric, RNG states
and the resolved config as plain containers, written atomically; resuming from ``last.pt``
continues the run bit for bit on CPU. An optional L-BFGS polish on the full horizon follows.
"""

from __future__ import annotations

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

from hybridsim.config import RecipeConfig
from hybridsim.data import atomic_path
from hybridsim.numerics.rollout import GradientMode
from hybridsim.problems.base import Problem


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the last good checkpoint is kept."""


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file and a rename (see ``data.atomic_path``)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


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


class MetricsLog:
    """``metrics.jsonl``: one JSON object per logged step; on resume, later lines are dropped."""

    def __init__(self, path: Path, model: str, resume_step: int | None) -> None:
        self.path, self.model = path, model
        if resume_step is not None and path.exists():
            keep = [
                line
                for line in path.read_text().splitlines()
                if line
                and (
                    json.loads(line).get("model") != model
                    or json.loads(line)["step"] <= resume_step
                )
            ]
            path.write_text("".join(line + "\n" for line in keep))

    def write(self, step: int, phase: str, values: Mapping[str, float]) -> None:
        row = {"step": step, "model": self.model, "phase": phase, **values}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


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
) -> FitResult:
    """Train ``model`` by ``recipe``; checkpoints go to ``run_dir/checkpoints[/<name>]``.

    Resumes from ``last.pt`` when it exists (and returns at once if that run had finished).
    """
    ckpt_dir = run_dir / "checkpoints" if name == "hybrid" else run_dir / "checkpoints" / name
    last, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    run_dir.mkdir(parents=True, exist_ok=True)
    params = [p for p in model.parameters() if p.requires_grad]
    t0 = time.perf_counter()
    if not params:  # nothing to learn (e.g. the solver alone with fixed physics)
        save_atomic(_state(model, None, None, 0, "done", float("nan"), None, config, True), last)
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
    log = MetricsLog(run_dir / "metrics.jsonl", name, step if last.exists() else None)
    total = recipe.steps + (recipe.polish_steps if recipe.polish == "lbfgs" else 0)
    bar = Progress(progress, total, name)

    def checkpoint(done: bool = False) -> None:
        nonlocal best
        metrics = problem.validate(model, val_data)
        log.write(step, phase, {f"val/{k}": v for k, v in metrics.items()})
        ck = _state(model, opt, sched, step, phase, best, gen, config, done, polish_opt)
        ck["polish_prev"], ck["polish_stage"] = polish_prev, polish_stage
        if math.isfinite(metrics["loss"]) and metrics["loss"] < best:
            best = metrics["loss"]
            ck["best"] = best
            save_atomic(ck, best_path)
        save_atomic(ck, last)

    try:
        while phase == "adam" and step < recipe.steps:
            model.train()
            unroll = unroll_at(recipe, step)
            batch = problem.batch(train_data, recipe.batch_size, unroll, gen)
            loss = problem.loss(model, batch)
            _check_finite(loss, step, name, last)
            value = float(loss.detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = nn.utils.clip_grad_norm_(params, recipe.grad_clip or float("inf"))
            opt.step()
            sched.step()
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
                _check_finite(loss, step, name, last)
                value = float(loss.detach())
                # No decrease since the previous iteration: the line search found none, the
                # stage has converged to float precision; go on to the next stage.
                stalled = polish_prev is not None and value >= polish_prev
                polish_prev = value
                step += 1
                if stalled:
                    log.write(step, phase, {"polish/stage_converged": stage})
                    step = max(
                        step, recipe.steps + -(-(stage + 1) * recipe.polish_steps // len(stages))
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
    return FitResult(step, best, time.perf_counter() - t0)


def _lbfgs(params: list[nn.Parameter]) -> torch.optim.LBFGS:
    # One iteration per outer step (so progress, checkpoints and resume work per iteration);
    # max_eval must be set explicitly: its default (max_iter * 5 // 4 = 1) leaves the line
    # search no evaluation, and L-BFGS then never moves.
    return torch.optim.LBFGS(
        params, lr=1.0, max_iter=1, max_eval=25, history_size=50, line_search_fn="strong_wolfe"
    )


def _check_finite(loss: torch.Tensor, step: int, name: str, last: Path) -> None:
    if not torch.isfinite(loss.detach()):
        kept = f"last good checkpoint: {last}" if last.exists() else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"training of {name} stopped: non-finite loss ({float(loss.detach())}) at step {step}; "
            f"{kept}. "
            "Try a smaller recipe.lr, a shorter recipe.unroll or correction.init_scale."
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


def run_training(cfg: Any, run_dir: Path, config: dict[str, Any]) -> dict[str, FitResult]:
    """The ``train`` command below the CLI: data, models, one fit per model, meta.json.

    ``cfg`` is a typed TrainConfig; ``config`` its plain resolved form (saved in checkpoints).
    """
    from hybridsim.config import resolve_device
    from hybridsim.data import ensure_dataset, read_split
    from hybridsim.problems.base import registered

    torch.manual_seed(cfg.seed)
    device = torch.device(resolve_device(cfg.device))
    dtype = getattr(torch, cfg.dtype)
    problem = registered()[cfg.problem.name](cfg.problem)
    coupling = problem.check_choices(cfg.solver.name, cfg.correction.name, cfg.coupling)
    path, generated = ensure_dataset(problem, cfg.data_dir)
    print(f"data: {path} ({'generated' if generated else 'cached'})", flush=True)
    train_split, val_split = read_split(path, "train"), read_split(path, "val")
    models = problem.model_set(
        cfg.solver, cfg.correction, coupling, train_split, cfg.recipe.baselines
    )
    train_data = train_split.tensors(device, dtype)
    val_data = val_split.tensors(device, dtype)
    meta = _meta(cfg, path, device)
    _write_meta(run_dir, meta, "running")
    results: dict[str, FitResult] = {}
    try:
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
            )
    except TrainingDiverged:
        _write_meta(run_dir, meta, "diverged")
        raise
    except BaseException:
        _write_meta(run_dir, meta, "failed")
        raise
    meta["fits"] = {
        k: {"steps": v.step, "best_val_loss": v.best, "seconds": round(v.seconds, 2)}
        for k, v in results.items()
    }
    _write_meta(run_dir, meta, "completed")
    _plot_training_curve(run_dir)
    return results


def _meta(cfg: Any, path: Path, device: torch.device) -> dict[str, Any]:
    import platform
    import subprocess

    import hybridsim

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(hybridsim.__file__).parent,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return {
        "hybridsim": hybridsim.__version__,
        "git_sha": sha or None,
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


def _write_meta(run_dir: Path, meta: dict[str, Any], status: str) -> None:
    from hybridsim.evaluate import write_json_atomic

    meta["status"] = status
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
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, model in enumerate(dict.fromkeys(r["model"] for r in rows)):
        for key, style in (("train/loss", "-"), ("val/loss", "o--")):
            pts = [(r["step"], r[key]) for r in rows if r["model"] == model and key in r]
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
