"""Reading run directories for ``hybridsim report``: discovery, status, metrics, settings.

A train run directory holds ``.hydra/{config,overrides,hydra}.yaml``, ``config_resolved.yaml``,
``meta.json`` (``status``: running, completed, failed, diverged, ...) and, once evaluated,
``eval/metrics.json`` = ``{"table": {model: {metric: value}}, ...}``. Plain YAML and JSON
reading: no Hydra, no torch.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

RUN_MARKERS = (".hydra/overrides.yaml", "config_resolved.yaml", "meta.json")
NOT_SEARCHED = frozenset({"checkpoints", "eval"})  # and hidden folders (.hydra, .git)
USED = "ok"  # the status of a run that the report uses
MISSING = object()  # the value of a setting that a run does not have


class ReportError(ValueError):
    """Input that cannot be reported on (a missing directory, a malformed file, a bad option)."""


class UsageError(ReportError):
    """Wrong command-line syntax."""


@dataclass
class Run:
    """One run directory as read from disk."""

    path: Path
    status: str  # "ok" when used, else why not (failed, no evaluation, running, ...)
    error: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # key -> parsed value
    config: dict[str, Any] | None = None
    choices: dict[str, Any] = field(default_factory=dict)  # config group -> chosen option
    meta: dict[str, Any] = field(default_factory=dict)
    values: dict[tuple[str, str], Any] = field(default_factory=dict)  # (model, metric) -> value
    headline: list[str] = field(default_factory=list)
    group: str = ""  # the group's full name
    label: str = ""  # the group's name in tables: only the keys that differ between runs


# ---------------------------------------------------------------- reading runs


def find_runs(root: Path) -> list[Path]:
    """``root`` if it is a run directory, else every run directory below it (not inside runs,
    ``checkpoints/``, ``eval/`` or hidden folders), in natural order (``2/`` before ``10/``)."""
    if _is_run(root):
        return [root]
    found = []
    for here, dirs, _ in os.walk(root):
        keep = []
        for name in dirs:
            if name in NOT_SEARCHED or name.startswith("."):
                continue
            sub = Path(here, name)
            if _is_run(sub):
                found.append(sub)
            else:
                keep.append(name)
        dirs[:] = keep
    return sorted(found, key=lambda p: _natural(p.relative_to(root)))


def _is_run(path: Path) -> bool:
    return any((path / m).is_file() for m in RUN_MARKERS)


def _natural(path: Path) -> list[Any]:
    return [
        [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", part) if t]
        for part in path.parts
    ]


def _load(path: Path, kind: str) -> Any:
    """A YAML or JSON file, or ReportError naming it."""
    try:
        text = path.read_text()
        return yaml.safe_load(text) if kind == "yaml" else json.loads(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, json.JSONDecodeError) as e:
        if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
            reason = f"{e.problem} (line {e.problem_mark.line + 1})"
        else:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ReportError(f"cannot read {path}: {reason}") from None


def key_name(raw: str) -> str:
    return raw.lstrip("+")  # +seed=1 and ++seed=1 set the key seed


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        return text


def read_run(path: Path) -> Run:
    """Everything the report needs from one run directory; ReportError for a malformed file."""
    run = Run(path=path, status="")
    ovr = path / ".hydra" / "overrides.yaml"
    if ovr.is_file():
        items = _load(ovr, "yaml") or []
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ReportError(f"cannot read {ovr}: expected a list of key=value strings")
        for item in items:
            k, _, v = item.partition("=")
            run.overrides[key_name(k)] = _parse_value(v)
    for name in ("config_resolved.yaml", ".hydra/config.yaml"):
        if (path / name).is_file():
            cfg = _load(path / name, "yaml")
            if not isinstance(cfg, dict):
                raise ReportError(f"cannot read {path / name}: expected a mapping")
            run.config = cfg
            break
    hydra_yaml = path / ".hydra" / "hydra.yaml"
    if hydra_yaml.is_file():
        choices = _dig(_load(hydra_yaml, "yaml"), "hydra.runtime.choices")
        run.choices = choices if isinstance(choices, dict) else {}
    if (path / "meta.json").is_file():
        meta = _load(path / "meta.json", "json")
        if not isinstance(meta, dict):
            raise ReportError(f"cannot read {path / 'meta.json'}: expected a JSON object")
        run.meta = meta
    metrics = path / "eval" / "metrics.json"
    if metrics.is_file():
        run.values, run.headline = _read_metrics(metrics)
    done = run.meta.get("status") == "completed" and metrics.is_file()
    run.error = None if done else _error_line(run)
    run.status = _status(run, metrics.is_file())
    return run


def _read_metrics(path: Path) -> tuple[dict[tuple[str, str], Any], list[str]]:
    data = _load(path, "json")
    table = data.get("table") if isinstance(data, dict) else None
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise ReportError(f"cannot read {path}: expected {{'table': {{model: {{metric: value}}}}}}")
    values: dict[tuple[str, str], Any] = {}
    for model, row in table.items():
        for metric, v in _leaves(row):
            values[(str(model), metric)] = v
    for name, v in data.items():
        if name != "table" and _is_metric(v):
            values[("run", name)] = _clean(v)
    headline = data.get("headline", [])
    if not isinstance(headline, list) or not all(isinstance(h, str) for h in headline):
        raise ReportError(f"cannot read {path}: 'headline' must be a list of metric names")
    return values, headline


def _is_metric(v: Any) -> bool:
    return v is None or isinstance(v, bool | int | float)


def _clean(v: Any) -> Any:
    """bool, finite number, or None (JSON null, NaN, Infinity: counted as non-finite)."""
    if isinstance(v, bool) or v is None:
        return v
    return v if math.isfinite(v) else None


def _leaves(row: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in row.items():
        if isinstance(v, dict):
            out += _leaves(v, f"{prefix}{k}.")
        elif _is_metric(v):
            out.append((f"{prefix}{k}", _clean(v)))
    return out


def _status(run: Run, has_eval: bool) -> str:
    if not run.meta:
        return "failed before training" if run.error else "not started"
    status = str(run.meta.get("status") or "unknown")
    if status == "completed":
        return USED if has_eval else "no evaluation"
    if status == "running":
        return _running_or_not(run.meta)
    return status


def _running_or_not(meta: dict[str, Any]) -> str:
    """meta.json says running: is its process alive? Known for sure only on the same host with
    /proc: the pid must exist and have started before meta's ``started`` (else it was reused)."""
    pid, started = meta.get("pid"), meta.get("started")
    if meta.get("host") != platform.node() or not isinstance(pid, int) or pid <= 0:
        return "running or incomplete"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "incomplete"
    except OSError:
        pass  # exists (another user's process)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        btime = next(
            int(ln.split()[1])
            for ln in Path("/proc/stat").read_text().splitlines()
            if ln.startswith("btime")
        )
        began = btime + int(stat.rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        t0 = datetime.strptime(str(started), "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except (OSError, ValueError, IndexError, StopIteration):
        return "running or incomplete"
    return "running" if began <= t0 + 2 else "incomplete"


def _error_line(run: Run) -> str | None:
    """Why the run failed: meta.json's ``error``, else the last ERROR line of its Hydra job log
    (``train.log``), where the CLI records its one-line error."""
    line = run.meta.get("error") if isinstance(run.meta.get("error"), str) else None
    for log in [] if line else sorted(run.path.glob("*.log")):
        try:
            with log.open("rb") as f:
                f.seek(max(0, log.stat().st_size - 65536))
                tail = f.read().decode(errors="replace")
        except OSError:
            continue
        for ln in tail.splitlines():
            if "][ERROR] - " in ln:
                line = ln.split("][ERROR] - ", 1)[1].strip()
    return re.sub(r"^hybridsim \w+: error: ", "", line) if line else None


def _dig(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(cfg, dict) or part not in cfg:
            return MISSING
        cfg = cfg[part]
    return cfg


def setting(run: Run, key: str) -> Any:
    """The run's value for ``key``: its config group choice, else its config's value, else its
    override; ``MISSING`` when the run has none."""
    if key in run.choices:
        return run.choices[key]
    value = _dig(run.config, key) if run.config is not None else MISSING
    if value is not MISSING and not isinstance(value, dict):
        return value
    return run.overrides.get(key, MISSING)


def show(value: Any) -> str | None:
    """A value as an override would write it (``0.05``, ``true``, ``[8]``); equal values give
    equal text (``0`` and ``0.0`` both ``0``). None for a missing key."""
    if value is MISSING:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return f"{value:.15g}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(show(v) or "" for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)
