"""The records of a training run: the progress display, ``metrics.jsonl`` (one JSON object per
logged step, the source of truth for every tracker), ``meta.json`` (versions, git SHA, data,
status) and ``plots/training.png``."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from hybridsim.atomic import atomic_path, require_regular_file
from hybridsim.checkpoint import write_json_atomic


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


def _json_value(v: Any) -> Any:
    """A float that JSON can hold: non-finite values become null."""
    return v if not isinstance(v, float) or math.isfinite(v) else None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl``, skipping lines that do not parse (a line torn by a kill)."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


class MetricsLog:
    """``metrics.jsonl``: one JSON object per logged step; on resume, later lines (and a line
    torn by a kill) are dropped."""

    def __init__(self, path: Path, model: str, resume_step: int | None, sink: Any = None) -> None:
        self.path, self.model, self.sink = path, model, sink
        if path.exists():
            require_regular_file(path, "metrics file")
        if resume_step is not None and path.exists():
            keep = [
                {k: _json_value(v) for k, v in row.items()}
                for row in read_metrics(path)
                if row.get("model") != model or row.get("step", 0) <= resume_step
            ]
            text = "".join(json.dumps(row, allow_nan=False) + "\n" for row in keep)
            with atomic_path(path) as tmp:
                tmp.write_text(text)
            if sink is not None:
                sink.resumed(model, resume_step)

    def write(self, step: int, phase: str, values: Mapping[str, float]) -> None:
        row = {"step": step, "model": self.model, "phase": phase, **values}
        row = {k: _json_value(v) for k, v in row.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(row, allow_nan=False) + "\n")
        if self.sink is not None:  # the trackers (hybridsim.tracking): after the file has it
            self.sink.row(row)


class _NoLog:
    """The metrics log of a rank other than 0 (which writes nothing)."""

    def write(self, step: int, phase: str, values: Mapping[str, float]) -> None:
        pass


def git_sha(start: Path) -> str | None:
    """The commit checked out in the git repository holding ``start``, read from ``.git``
    itself: running ``git`` would execute whatever a changed PATH (or a run's config, through
    Hydra's ``env_set``) puts first on it."""
    import re

    sha = re.compile(r"[0-9a-f]{40}")
    try:
        for folder in (start, *start.parents):
            dot = folder / ".git"
            if dot.is_dir():
                gitdir = dot
                break
            if dot.is_file() and dot.read_text().startswith("gitdir:"):
                gitdir = (folder / dot.read_text().split(":", 1)[1].strip()).resolve()
                break
        else:
            return None
        common = gitdir
        if (gitdir / "commondir").is_file():  # a worktree: its refs live in the main .git
            common = (gitdir / (gitdir / "commondir").read_text().strip()).resolve()
        head = (gitdir / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head if sha.fullmatch(head) else None
        ref = head[4:].strip()
        for base in (gitdir, common):
            if (base / ref).is_file():
                value = (base / ref).read_text().strip()
                return value if sha.fullmatch(value) else None
        if (common / "packed-refs").is_file():
            for line in (common / "packed-refs").read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref and sha.fullmatch(parts[0]):
                    return parts[0]
    except (OSError, UnicodeDecodeError):
        return None
    return None


def _meta(cfg: Any, path: Path, device: torch.device) -> dict[str, Any]:
    import platform

    import hybridsim

    return {
        "hybridsim": hybridsim.__version__,
        "git_sha": git_sha(Path(hybridsim.__file__).resolve().parent),
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


def _write_meta(run_dir: Path, meta: dict[str, Any], status: str, error: str | None = None) -> None:
    meta["status"] = status
    if error:
        meta["error"] = error
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
    rows = read_metrics(path)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, model in enumerate(dict.fromkeys(r["model"] for r in rows)):
        for key, style in (("train/loss", "-"), ("val/loss", "o--")):
            pts = [
                (r["step"], r[key])
                for r in rows
                if r["model"] == model and isinstance(r.get(key), int | float)
            ]
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
