"""MLflow through its client (no global state): a local SQLite store by default
(``outputs/mlflow.db`` under the working directory, artifacts in ``outputs/mlartifacts``)."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

from hybridsim.tracking import Backend, eval_table, flat_params, markdown_table, run_label

STATUS = {"completed": "FINISHED", "interrupted": "KILLED"}


class MLflowBackend(Backend):
    name = "mlflow"

    def __init__(self, run_dir: Path, settings: Any, config: dict[str, Any], state: dict) -> None:
        super().__init__(run_dir, settings, config, state)
        for noisy in ("mlflow", "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the SQL store's dependencies deprecate things
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient

        outputs = Path.cwd() / "outputs"
        uri = state.get("tracking_uri") or settings.tracking_uri
        artifacts = None
        if uri is None:
            outputs.mkdir(exist_ok=True)
            uri = f"sqlite:///{outputs / 'mlflow.db'}"
            artifacts = (outputs / "mlartifacts").as_uri()
        self.lock_path = Path(uri[len("sqlite:///") :] + ".lock") if _sqlite(uri) else None
        with self._exclusive(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.client = MlflowClient(tracking_uri=uri)
            run_id = state.get("run_id")
            if run_id:
                self.client.update_run(run_id, status="RUNNING")
            else:
                exp_id = self._experiment(settings.experiment, artifacts)
                run = self.client.create_run(
                    exp_id,
                    run_name=settings.run_name or run_label(run_dir),
                    tags={"hybridsim.run_dir": str(run_dir.resolve())},
                )
                run_id = run.info.run_id
                state.update(tracking_uri=uri, run_id=run_id)
                params = [Param(k, str(v)[:6000]) for k, v in flat_params(config).items()]
                for i in range(0, len(params), 100):
                    self.client.log_batch(run_id, params=params[i : i + 100])
                if (run_dir / "config_resolved.yaml").is_file():
                    self.client.log_artifact(run_id, str(run_dir / "config_resolved.yaml"))
        self.run_id = run_id

    def _exclusive(self) -> Any:
        """One writer at a time on a SQLite store: the jobs of a parallel sweep share it, and
        two of them creating its tables at once, or writing at once, would wait on SQLite's
        lock or fail ("database is locked")."""
        import contextlib

        if self.lock_path is None:
            return contextlib.nullcontext()
        from hybridsim.locks import Lock

        lock = Lock(self.lock_path, directory=False)
        lock.acquire(blocking=True)
        return lock

    def _experiment(self, name: str, artifacts: str | None) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            location = f"{artifacts}/{name}" if artifacts else None
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:  # another job of the sweep created it meanwhile
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def log_row(self, model: str, step: int, values: dict[str, float], row: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(f"{model}/{k}", v, now, step) for k, v in values.items()]
        if metrics:
            with self._exclusive():
                self.client.log_batch(self.run_id, metrics=metrics)

    def log_eval(self, result: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        table = eval_table(result)
        metrics = [
            Metric(f"eval/{model}/{metric}", value, now, step)
            for model, row in table.items()
            for metric, value in row.items()
        ]
        with self._exclusive():
            for i in range(0, len(metrics), 1000):
                self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])
            self.client.log_text(self.run_id, markdown_table(table), "eval/table.md")
            if (self.run_dir / "eval").is_dir():
                self.client.log_artifacts(self.run_id, str(self.run_dir / "eval"), "eval")
            if (self.run_dir / "plots").is_dir():
                self.client.log_artifacts(self.run_id, str(self.run_dir / "plots"), "plots")

    def close(self, status: str) -> None:
        with self._exclusive():
            if (self.run_dir / "metrics.jsonl").is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / "metrics.jsonl"))
            self.client.set_terminated(self.run_id, STATUS.get(status, "FAILED"))


def _sqlite(uri: str) -> bool:
    return uri.startswith("sqlite:///")
