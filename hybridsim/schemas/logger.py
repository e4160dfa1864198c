"""The trackers' schemas (``logger=…``)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from hybridsim.schemas.checks import _one_of


@dataclass
class TensorBoardLoggerConfig:
    """TensorBoard event files in ``<run>/<dir>`` (``tensorboard --logdir outputs``)."""

    dir: str = "tensorboard"


@dataclass
class MLflowLoggerConfig:
    """An MLflow run; ``tracking_uri`` null: the SQLite store ``outputs/mlflow.db`` under the
    working directory (no server), artifacts in ``outputs/mlartifacts``."""

    tracking_uri: str | None = None
    experiment: str = "hybridsim"
    run_name: str | None = None  # null: the run directory's path below outputs/


@dataclass
class WandbLoggerConfig:
    """A Weights & Biases run, offline by default (files in ``<run>/wandb/``, no account;
    ``wandb sync`` uploads them later)."""

    project: str = "hybridsim"
    entity: str | None = None
    mode: str = "offline"  # offline | online | disabled
    name: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _one_of("logger.wandb.mode", self.mode, ("offline", "online", "disabled"))


@dataclass
class CSVLoggerConfig:
    """``metrics.jsonl`` as a CSV table (one column per key) and the evaluation table."""

    file: str = "metrics.csv"


@dataclass
class LoggerConfig:
    """The trackers beside ``metrics.jsonl`` (always written); a backend is on when its entry
    is set (``logger=tensorboard``, ``logger=[tensorboard,mlflow]``, ``logger=many``)."""

    tensorboard: TensorBoardLoggerConfig | None = None
    mlflow: MLflowLoggerConfig | None = None
    wandb: WandbLoggerConfig | None = None
    csv: CSVLoggerConfig | None = None

    def enabled(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}
