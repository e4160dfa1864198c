"""CSV: ``metrics.jsonl`` mirrored as a table (one column per key, rows in the same order), and
the evaluation table as ``eval/table.csv`` (model, metric, value)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from hybridsim.tracking import ROW_KEYS, Backend, eval_table


class CSVBackend(Backend):
    name = "csv"
    watermarked = False  # rebuilt from metrics.jsonl, so never out of step with it

    def __init__(self, run_dir: Path, settings: Any, config: dict[str, Any], state: dict) -> None:
        super().__init__(run_dir, settings, config, state)
        from hybridsim.runlog import read_metrics

        self.path = run_dir / settings.file
        source = run_dir / "metrics.jsonl"
        self.rows: list[dict[str, Any]] = read_metrics(source) if source.is_file() else []
        self.columns: list[str] = []
        self._rewrite()

    def _columns(self) -> list[str]:
        keys = dict.fromkeys(k for row in self.rows for k in row if k not in ROW_KEYS)
        return [*ROW_KEYS, *keys]

    def _rewrite(self) -> None:
        self.columns = self._columns()
        buf = io.StringIO()
        writer = csv.DictWriter(buf, self.columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(_cells(r) for r in self.rows)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(buf.getvalue())
        tmp.replace(self.path)

    def log_row(self, model: str, step: int, values: dict[str, float], row: dict) -> None:
        self.rows.append(row)
        if any(k not in self.columns for k in row):
            self._rewrite()
            return
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.columns, restval="", lineterminator="\n").writerow(_cells(row))

    def resumed(self, model: str, step: int) -> None:
        self.rows = [r for r in self.rows if r.get("model") != model or r.get("step", 0) <= step]
        self._rewrite()

    def log_eval(self, result: dict[str, Any], step: int) -> None:
        out = self.run_dir / "eval" / "table.csv"
        out.parent.mkdir(exist_ok=True)
        with out.open("w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["model", "metric", "value"])
            for model, row in eval_table(result).items():
                for metric, value in row.items():
                    w.writerow([model, metric, repr(value)])


def _cells(row: dict[str, Any]) -> dict[str, Any]:
    return {k: ("" if v is None else v) for k, v in row.items()}
