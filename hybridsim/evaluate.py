"""Scoring saved checkpoints: rebuild the models from the run's own config, evaluate them, the
solver alone and the baselines on the test split, write ``eval/metrics.json`` and plots.

:func:`evaluate_models` is the one evaluation loop of every problem: the device and dtype are the
run's, each model's prediction is made under ``torch.no_grad()`` through the problem's hooks
(``hybridsim.problems.base.Problem``: ``eval_case``, ``predict_case``, ``metrics``,
``summarise``, ``plots``), the gain over the solver alone is computed here, and the figures are
saved here.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from hybridsim.checkpoint import CheckpointError, load_checkpoint, write_json_atomic
from hybridsim.config import (
    ConfigError,
    TrainConfig,
    correction_config,
    resolve_device,
    typed_train_config,
)
from hybridsim.data import (
    NotARegularFile,
    SplitData,
    data_path,
    read_split,
    require_regular_file,
    write_text_atomic,
)
from hybridsim.problems.base import Problem, registered


class EvalError(RuntimeError):
    """A run directory or checkpoint that cannot be evaluated."""


def load_run_config(run_dir: Path) -> TrainConfig:
    path = run_dir / "config_resolved.yaml"
    if not run_dir.is_dir():
        raise EvalError(f"run directory {run_dir} does not exist")
    try:
        require_regular_file(path, "run config")
    except FileNotFoundError:
        raise EvalError(
            f"{run_dir} is not a hybridsim run directory (no config_resolved.yaml)"
        ) from None
    except NotARegularFile as e:
        raise EvalError(str(e)) from None
    try:
        container = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise EvalError(f"{path} is not readable YAML ({type(e).__name__})") from None
    if not isinstance(container, dict):
        raise EvalError(
            f"{path} is empty or not a mapping of settings; it should be the config that "
            "hybridsim train saved (start the run again)"
        )
    try:
        return typed_train_config(container)
    except (ConfigError, ValueError, TypeError) as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EvalError(f"{path} is not a usable run config: {detail}") from None


def run_eval(
    run_dir: str | Path,
    ckpt: str | Path | None = None,
    device: str = "auto",
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Evaluate a run; returns the metrics dict (also written to ``<run>/eval/metrics.json``)."""
    cpu_start = time.process_time()
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    ckpt_path = Path(ckpt) if ckpt else run_dir / "checkpoints" / "best.pt"
    if not ckpt_path.exists():
        raise EvalError(f"checkpoint {ckpt_path} does not exist (did training finish?)")
    try:
        require_regular_file(ckpt_path, "checkpoint")
    except NotARegularFile as e:
        raise EvalError(str(e)) from None
    dev = torch.device(resolve_device(device))
    dtype = getattr(torch, cfg.dtype)
    like = {"device": dev, "dtype": dtype}
    problem: Problem = registered()[cfg.problem.name](cfg.problem)
    path = data_path(problem, data_dir or cfg.data_dir)
    train, test = read_split(path, "train"), read_split(path, "test")
    coupling = problem.check_choices(cfg.solver.name, cfg.correction.name, cfg.coupling)
    models = problem.model_set(
        cfg.solver,
        cfg.correction,
        coupling,
        train,
        baselines=True,
        untrained=True,
        correction_config=lambda name: correction_config(name, cfg.problem),
    )
    untrained = {c.name for c in problem.comparators if not c.trained}
    loaded = {}
    for name, model in models.items():
        if name in untrained and name != "hybrid":
            loaded[name] = model.to(**like).eval()
            continue
        file = ckpt_path if name == "hybrid" else run_dir / "checkpoints" / name / ckpt_path.name
        if not file.exists():
            continue  # a baseline that this run did not train
        try:
            state = load_checkpoint(file)["model"]
            model.load_state_dict(state)
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001  (any unreadable checkpoint is the user's error)
            raise EvalError(
                f"checkpoint {file} cannot be loaded ({type(e).__name__}: {e})"
            ) from None
        loaded[name] = model.to(**like).eval()
    out_dir = run_dir / "eval"
    val = read_split(path, "val")
    result = evaluate_models(problem, loaded, test, train, val, out_dir / "plots", like)
    result["checkpoint"] = str(ckpt_path)
    result["data"] = str(path)
    # CPU seconds (run-level metrics in `hybridsim report`): this evaluation, and the training
    # (data generation when not cached, every fit) as meta.json recorded it
    result["cpu_seconds_eval"] = round(time.process_time() - cpu_start, 2)
    train_cpu = _train_cpu_seconds(run_dir)
    if train_cpu is not None:
        result["cpu_seconds_train"] = train_cpu
    write_json_atomic(result, out_dir / "metrics.json")
    if result.get("discovery", {}).get("equations"):
        write_text_atomic(
            out_dir / "equations.txt", "\n".join(result["discovery"]["equations"]) + "\n"
        )
    return result


def evaluate_models(
    problem: Problem,
    models: Mapping[str, torch.nn.Module],
    test: SplitData,
    train: SplitData,
    val: SplitData,
    plot_dir: Path,
    like: dict[str, Any],
) -> dict[str, Any]:
    """Score ``models`` (on ``like``'s device and dtype, in eval mode), the problem's extra
    models before them, on ``test``; save the plots under ``plot_dir``.

    Returns ``{"table": {model: {metric: value}}, **summary}`` (plus ``tuned_on_validation``
    when the problem chose a comparator's setting on ``val``). With ``problem.headline_error``
    every row but the solver alone's gets ``gain_over_solver`` (:func:`gain_over_solver`)."""
    tuned = problem.tune_baselines(models, val, like)
    case = problem.eval_case(test, train, like)
    extra = problem.extra_models(models)
    if set(extra) & set(models):
        raise ValueError(f"extra models {sorted(set(extra) & set(models))} shadow loaded ones")
    table: dict[str, dict[str, float]] = {}
    preds: dict[str, Any] = {}
    for name, model in {**extra, **models}.items():
        with torch.no_grad():
            preds[name] = problem.predict_case(model, case)
            table[name] = problem.metrics(preds[name], case)
    if problem.headline_error is not None:
        gain_over_solver(table, problem.headline_error, problem.solver_alone())
    result: dict[str, Any] = {"table": table}
    result.update(problem.summarise(table, preds, case, models))
    if tuned:
        result["tuned_on_validation"] = tuned
    save_figures(problem.plots(preds, case, result), plot_dir)
    return result


def gain_over_solver(table: dict[str, dict[str, float]], metric: str, solver: str | None) -> None:
    """Add ``gain_over_solver`` = the solver alone's ``metric`` over the model's (lower is
    better, so > 1: the model beats the solver; ``inf`` for an exact model) to every row but
    the solver alone's (named ``solver``: :meth:`Problem.solver_alone`), in place; nothing
    without that row."""
    if solver not in table:
        return
    src = table[solver][metric]
    for name, row in table.items():
        if name != solver:
            own = row[metric]
            row["gain_over_solver"] = src / own if own != 0 else math.inf


def save_figures(figures: Mapping[str, Any], out_dir: Path) -> None:
    """Each ``{file name: matplotlib Figure}`` as ``out_dir/<file name>`` at the figure's dpi."""
    if figures:
        out_dir.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        fig.savefig(out_dir / name, dpi=fig.dpi)


def _train_cpu_seconds(run_dir: Path) -> float | None:
    try:
        value = json.loads((run_dir / "meta.json").read_text())["cpu_seconds"]["total"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def print_table(result: dict[str, Any]) -> None:
    """The ``table`` entry as a rich table (models as rows), plus any discovered equations."""
    from rich.console import Console
    from rich.table import Table

    table_data: dict[str, dict[str, float]] = result["table"]
    metrics = list(dict.fromkeys(m for row in table_data.values() for m in row))
    table = Table(title="hybridsim eval (test split)")
    table.add_column("metric")
    for name in table_data:
        table.add_column(name, justify="right")
    for m in metrics:
        table.add_row(m, *(_fmt(row.get(m)) for row in table_data.values()))
    console = Console(width=max(100, 16 * (len(table_data) + 2)))
    console.print(table)
    discovery = result.get("discovery", {})
    for eq in discovery.get("equations", []):
        console.print(f"discovered: {eq}")
    if "structure_found" in discovery:
        console.print(
            "structure: found (the true terms and only those)"
            if discovery["structure_found"]
            else "structure: NOT found; true: " + "; ".join(discovery["true_equations"])
        )


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3e}" if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e4) else f"{v:.4f}"
    return str(v)
