"""Experiment trackers beside ``metrics.jsonl``: TensorBoard, MLflow (local SQLite store), W&B
(offline) and CSV, chosen with the ``logger`` config group (``conf/logger/``).

``metrics.jsonl`` stays the run's record; a tracker receives each row as it is written there
(keys ``<model>/<metric>`` against that model's step), the resolved config as hyper-parameters
when its run is created, and after evaluation the table and the plots. A tracker that fails
while logging is switched off for the rest of the command with one line on stderr: training
never stops because a tracker did.

Resume: each tracker keeps ``<run>/tracking/<name>.json`` (its run id, and per model the last row
it was sent). A resumed run logs into the same TensorBoard directory, MLflow run and W&B run id;
rows it has sent already (those between the last checkpoint and the interruption, recomputed
after the resume) are not sent again, and rows it has never seen (a tracker added on resume) are
sent from ``metrics.jsonl`` first. The CSV file mirrors ``metrics.jsonl`` exactly (its rows
after the checkpoint are dropped with them). Only the process of rank 0 tracks (DDP).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

# backend -> (module that must be importable, what to install, extra)
REQUIREMENTS = {
    "tensorboard": ("tensorboard", "TensorBoard", "tensorboard"),
    "mlflow": ("mlflow", "MLflow", "mlflow"),
    "wandb": ("wandb", "Weights & Biases (wandb)", "wandb"),
    "csv": (None, None, None),
}
ROW_KEYS = ("step", "model", "phase")


class TrackingError(RuntimeError):
    """A tracker that cannot be used as configured (the message says what to install)."""


def check_installed(names: list[str]) -> None:
    """TrackingError naming the extra to install for the first chosen tracker whose library is
    missing (checked at composition, before anything is written)."""
    for name in names:
        module, what, extra = REQUIREMENTS[name]
        if module is not None and importlib.util.find_spec(module) is None:
            raise TrackingError(
                f"logger={name} needs {what}, which is not installed: "
                f"pip install -e '.[{extra}]' (or '.[tracking]' for every tracker)"
            )


def row_order(row: dict[str, Any]) -> tuple[int, int]:
    """Where a row stands in its model's sequence: (step, kind) with kind 0 for a polish-stage
    note, 1 for a training row, 2 for a validation row (the order the trainer writes them)."""
    keys = [k for k in row if k not in ROW_KEYS]
    kind = (
        2
        if any(k.startswith("val/") for k in keys)
        else 0
        if any(k.startswith("polish/") for k in keys)
        else 1
    )
    return int(row.get("step", 0)), kind


def numeric(values: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a row (not its step/model/phase)."""
    out = {}
    for k, v in values.items():
        if k in ROW_KEYS or isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if math.isfinite(v):
            out[k] = float(v)
    return out


def flat_params(config: dict[str, Any]) -> dict[str, Any]:
    """The resolved config as ``{"recipe.lr": 0.005, "recipe.unroll": "[10, 20, 40]"}``."""
    from hybridsim.rundir import flatten

    out: dict[str, Any] = {}
    for k, v in flatten(config).items():
        out[k] = v if isinstance(v, bool | int | float | str) else json.dumps(v)
    return out


def eval_images(run_dir: Path) -> list[tuple[str, Path]]:
    """(tag, file) of the plots: ``plots/*.png`` and ``eval/plots/**/*.png``."""
    files = sorted((run_dir / "plots").glob("*.png")) + sorted(
        (run_dir / "eval" / "plots").glob("**/*.png")
    )
    return [(str(p.relative_to(run_dir).with_suffix("")), p) for p in files]


def eval_table(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The evaluation table as finite numbers: {model: {metric: value}}."""
    return {m: numeric(row) for m, row in (result.get("table") or {}).items()}


def markdown_table(table: dict[str, dict[str, float]]) -> str:
    metrics = list(dict.fromkeys(k for row in table.values() for k in row))
    lines = ["| metric | " + " | ".join(table) + " |", "|---" * (len(table) + 1) + "|"]
    for m in metrics:
        cells = [f"{table[model][m]:.6g}" if m in table[model] else "-" for model in table]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


class Backend:
    """One tracker. ``watermarked``: rows it was sent are remembered, and not sent again."""

    name = "?"
    watermarked = True

    def __init__(self, run_dir: Path, settings: Any, config: dict[str, Any], state: dict) -> None:
        self.run_dir, self.settings, self.config, self.state = run_dir, settings, config, state

    def log_row(self, model: str, step: int, values: dict[str, float], row: dict) -> None:
        raise NotImplementedError

    def resumed(self, model: str, step: int) -> None:  # metrics.jsonl dropped later rows
        pass

    def log_eval(self, result: dict[str, Any], step: int) -> None:
        raise NotImplementedError

    def close(self, status: str) -> None:
        pass


def _backend_class(name: str) -> type[Backend]:
    if name == "tensorboard":
        from hybridsim.tracking.tensorboard_logger import TensorBoardBackend as cls
    elif name == "mlflow":
        from hybridsim.tracking.mlflow_logger import MLflowBackend as cls
    elif name == "wandb":
        from hybridsim.tracking.wandb_logger import WandbBackend as cls
    else:
        from hybridsim.tracking.csv_logger import CSVBackend as cls
    return cls


class Trackers:
    """Every chosen tracker of one run; the sink of ``runlog.MetricsLog``."""

    def __init__(self, run_dir: Path, backends: dict[str, Backend]) -> None:
        self.run_dir, self.backends = run_dir, backends
        self.last_step: dict[str, int] = {}

    @classmethod
    def open(cls, run_dir: Path, enabled: dict[str, Any], config: dict[str, Any]) -> Trackers:
        """Open (or, for a run that has one already, reopen) each tracker, then send it the
        rows of ``metrics.jsonl`` it has not seen."""
        backends: dict[str, Backend] = {}
        out = cls(run_dir, backends)
        for name, settings in enabled.items():
            state = _read_state(run_dir, name)
            try:
                backends[name] = _backend_class(name)(run_dir, settings, config, state)
            except Exception as e:  # noqa: BLE001
                _warn(name, "could not start", e)
                continue
            if backends[name].watermarked:
                _write_state(run_dir, name, state)
        path = run_dir / "metrics.jsonl"
        if path.is_file():
            from hybridsim.runlog import read_metrics

            for row in read_metrics(path):
                out.row(row, catch_up=True)
        return out

    def row(self, row: dict[str, Any], catch_up: bool = False) -> None:
        model, step = str(row.get("model", "hybrid")), int(row.get("step", 0))
        self.last_step[model] = max(step, self.last_step.get(model, 0))
        values = numeric(row)
        order = list(row_order(row))
        for name, backend in list(self.backends.items()):
            if catch_up and not backend.watermarked:
                continue
            sent = backend.state.setdefault("sent", {})
            if backend.watermarked and model in sent and order <= sent[model]:
                continue
            if self._call(name, backend.log_row, model, step, values, row):
                if backend.watermarked:
                    sent[model] = order
                    _write_state(self.run_dir, name, backend.state)

    def resumed(self, model: str, step: int) -> None:
        for name, backend in list(self.backends.items()):
            self._call(name, backend.resumed, model, step)

    def log_eval(self, result: dict[str, Any]) -> None:
        step = self.last_step.get("hybrid", max(self.last_step.values(), default=0))
        for name, backend in list(self.backends.items()):
            self._call(name, backend.log_eval, result, step)

    def close(self, status: str) -> None:
        for name, backend in list(self.backends.items()):
            self._call(name, backend.close, status)
        self.backends.clear()

    def _call(self, name: str, fn: Any, *args: Any) -> bool:
        try:
            fn(*args)
            return True
        except Exception as e:  # noqa: BLE001  (a tracker never stops the training)
            _warn(name, "failed", e)
            backend = self.backends.pop(name, None)
            if backend is not None and fn.__name__ != "close":
                try:
                    backend.close("failed")
                except Exception:  # noqa: BLE001
                    pass
            return False


def _warn(name: str, what: str, e: BaseException) -> None:
    line = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    print(
        f"hybridsim: warning: logger {name} {what} ({type(e).__name__}: {line}); it is off for "
        "the rest of this command (metrics.jsonl is complete)",
        file=sys.stderr,
    )


def _state_path(run_dir: Path, name: str) -> Path:
    return run_dir / "tracking" / f"{name}.json"


def _read_state(run_dir: Path, name: str) -> dict[str, Any]:
    try:
        state = json.loads(_state_path(run_dir, name).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _write_state(run_dir: Path, name: str, state: dict[str, Any]) -> None:
    """Written at every row (small, not fsynced: a lost update only re-sends a row)."""
    path = _state_path(run_dir, name)
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def run_label(run_dir: Path) -> str:
    """A run's name in a tracker: its path below the nearest ``outputs/``, else its own."""
    parts = run_dir.resolve().parts
    if "outputs" in parts:
        i = len(parts) - 1 - parts[::-1].index("outputs")
        if i + 1 < len(parts):
            return "/".join(parts[i + 1 :])
    return run_dir.name
