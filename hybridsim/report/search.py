"""The result of a hyper-parameter search (Hydra's Optuna sweeper): the sweep directory's
``optimization_results.yaml`` (best parameters, best value) and every trial's objective (the
best validation loss of its main model, ``meta.json``), best first."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from hybridsim.report.runs import find_runs


def search_results(dirs: list[str]) -> list[dict[str, Any]]:
    """One entry per DIR that holds ``optimization_results.yaml``."""
    out = []
    for d in dirs:
        path = Path(d) / "optimization_results.yaml"
        try:
            data = yaml.safe_load(path.read_text()) if path.is_file() else None
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("best_params"), dict):
            continue
        params = list(data["best_params"])
        trials = []
        for run in find_runs(Path(d)):
            trials.append({"trial": run.name, "objective": _objective(run), **_params(run, params)})
        trials.sort(key=lambda t: (t["objective"] is None, t["objective"] or 0.0))
        out.append(
            {
                "dir": str(d),
                "best_value": data.get("best_value"),
                "best_params": data["best_params"],
                "trials": trials,
            }
        )
    return out


def _objective(run: Path) -> float | None:
    try:
        value = json.loads((run / "meta.json").read_text())["fits"]["hybrid"]["best_val_loss"]
        value = float(value)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if math.isfinite(value) else None


def _params(run: Path, keys: list[str]) -> dict[str, Any]:
    try:
        items = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) or []
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        items = []
    found = {}
    for item in items if isinstance(items, list) else []:
        k, _, v = str(item).partition("=")
        if k in keys:
            found[k] = v
    return {k: found.get(k, "?") for k in keys}


def search_markdown(results: list[dict[str, Any]]) -> str:
    """A section per search: the best value and parameters, then the trials, best first."""
    lines = []
    for r in results:
        keys = list(r["best_params"])
        best = ", ".join(f"{k}={v}" for k, v in r["best_params"].items())
        lines += [
            f"## Optuna search: {r['dir']}",
            "",
            f"best objective (best validation loss of the main model): {r['best_value']:.6g} "
            f"with {best}",
            "",
            "| trial | objective | " + " | ".join(keys) + " |",
            "|---" * (len(keys) + 2) + "|",
        ]
        for t in r["trials"]:
            value = "failed" if t["objective"] is None else f"{t['objective']:.6g}"
            lines.append(
                f"| {t['trial']} | {value} | " + " | ".join(str(t[k]) for k in keys) + " |"
            )
        lines.append("")
    return "\n".join(lines)
