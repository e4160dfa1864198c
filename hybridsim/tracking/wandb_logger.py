"""Weights & Biases, offline by default: ``<run>/wandb/offline-run-*`` (``wandb sync`` uploads
them). One W&B run per hybridsim run (its id kept for resume); each model's rows against its own
step (``<model>/step``)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from hybridsim.tracking import Backend, eval_images, eval_table, run_label


class WandbBackend(Backend):
    name = "wandb"

    def __init__(self, run_dir: Path, settings: Any, config: dict[str, Any], state: dict) -> None:
        super().__init__(run_dir, settings, config, state)
        import wandb

        self.wandb = wandb
        run_id = state.get("run_id") or secrets.token_hex(6)  # W&B ids: [a-z0-9]
        self.run = wandb.init(
            project=settings.project,
            entity=settings.entity,
            mode=settings.mode,
            name=settings.name or run_label(run_dir),
            group=settings.group,
            tags=list(settings.tags) or None,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            config=config,
            settings=wandb.Settings(silent=True, console="off"),
            reinit="finish_previous",
        )
        state["run_id"] = run_id
        self.models: set[str] = set()

    def log_row(self, model: str, step: int, values: dict[str, float], row: dict) -> None:
        if model not in self.models:
            self.run.define_metric(f"{model}/step")
            self.run.define_metric(f"{model}/*", step_metric=f"{model}/step")
            self.models.add(model)
        self.run.log({f"{model}/step": step, **{f"{model}/{k}": v for k, v in values.items()}})

    def log_eval(self, result: dict[str, Any], step: int) -> None:
        table = eval_table(result)
        flat = {f"eval/{m}/{k}": v for m, row in table.items() for k, v in row.items()}
        metrics = list(dict.fromkeys(k for row in table.values() for k in row))
        data = [[m, *(row.get(k) for k in metrics)] for m, row in table.items()]
        images = {tag: self.wandb.Image(str(path)) for tag, path in eval_images(self.run_dir)}
        self.run.log(
            {
                **flat,
                "eval/table": self.wandb.Table(columns=["model", *metrics], data=data),
                **images,
            }
        )
        self.run.summary.update(flat)

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "completed" else 1)
