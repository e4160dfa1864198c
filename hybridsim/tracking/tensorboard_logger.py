"""TensorBoard: event files in ``<run>/<dir>`` (one writer; tags ``<model>/<metric>``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hybridsim.tracking import Backend, eval_images, eval_table, flat_params, markdown_table


class TensorBoardBackend(Backend):
    name = "tensorboard"

    def __init__(self, run_dir: Path, settings: Any, config: dict[str, Any], state: dict) -> None:
        super().__init__(run_dir, settings, config, state)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / settings.dir), flush_secs=30)
        if not state.get("hparams"):
            import yaml
            from torch.utils.tensorboard.summary import hparams

            # The hparams plugin shows each run's config beside the last value of these tags.
            exp, ssi, sei = hparams(flat_params(config), {"hybrid/val/loss": 0.0})
            for summary in (exp, ssi, sei):
                self.writer.file_writer.add_summary(summary)
            text = yaml.safe_dump(config, sort_keys=False)
            self.writer.add_text("config", "```yaml\n" + text + "\n```", 0)
            state["hparams"] = True

    def log_row(self, model: str, step: int, values: dict[str, float], row: dict) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"{model}/{key}", value, step)
        if any(k.startswith("val/") for k in values):
            self.writer.flush()

    def log_eval(self, result: dict[str, Any], step: int) -> None:
        import matplotlib.image

        table = eval_table(result)
        for model, row in table.items():
            for metric, value in row.items():
                self.writer.add_scalar(f"eval/{model}/{metric}", value, step)
        self.writer.add_text("eval/table", markdown_table(table), step)
        for tag, path in eval_images(self.run_dir):
            image = matplotlib.image.imread(path)
            self.writer.add_image(tag, image[..., :3], step, dataformats="HWC")
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()
