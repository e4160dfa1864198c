"""Guarding a run directory: one writer at a time, only safe changes to an existing run, and the
directory left as it was found when a ``train`` fails before its training starts.

A run directory may be data someone sent you: training into one that already holds a run
(``train resume=D``, or ``hydra.run.dir=D``) may change only what does not change what the run
is (:data:`SAFE_KEYS`) and let the training budget grow (:data:`GROWING_KEYS`, while the phase
that uses it is still running); everything else is refused, naming the key. Plain dicts and
files only: the CLI turns Hydra's config into the container compared here.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hybridsim.atomic import NotARegularFile, remove_stale_temps, require_regular_file
from hybridsim.locks import Lock, lock_run_dir
from hybridsim.schemas import ConfigError, upgrade_saved_correction

# Keys a resume may change: how the run is shown, where it runs, whether it is evaluated, where
# its (content-addressed) data file is looked for.
SAFE_KEYS = ("evaluate", "progress", "device", "data_dir", "recipe.log_every")
# Keys a resume may increase: the budget of a phase that has not finished.
GROWING_KEYS = ("recipe.steps", "recipe.polish_steps")
ALLOWED = ", ".join([*SAFE_KEYS, "logger.*", *(f"{k} (larger)" for k in GROWING_KEYS)])

# What Hydra and ``train`` write into a run directory before the training itself starts.
_RECORD_FILES = (
    ".hydra/config.yaml",
    ".hydra/hydra.yaml",
    ".hydra/overrides.yaml",
    "config_resolved.yaml",
    "meta.json",
)


class RunDirError(ValueError):
    """A run directory that this command may not use as asked (the message says why)."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"recipe": {"lr": 1}}`` -> ``{"recipe.lr": 1}`` (lists are values)."""
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def load_saved_config(run_dir: Path) -> dict[str, Any]:
    """``run_dir/config_resolved.yaml`` as a dict; RunDirError naming the file otherwise."""
    path = run_dir / "config_resolved.yaml"
    try:
        require_regular_file(path, "run config")
        saved = yaml.safe_load(path.read_text())
    except (FileNotFoundError, NotARegularFile, yaml.YAMLError, UnicodeDecodeError) as e:
        raise RunDirError(f"cannot use {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("problem"), dict):
        raise RunDirError(
            f"cannot use {path}: it is empty or has no 'problem' section (it is not the config "
            "that hybridsim train saved)"
        )
    if isinstance(saved.get("correction"), dict):
        # A run saved before one schema per correction kind: its correction in its kind's schema.
        try:
            saved["correction"] = upgrade_saved_correction(saved["correction"])
        except ConfigError as e:
            raise RunDirError(f"cannot use {path}: {e}") from None
    return saved


def changes(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Every dotted key whose value differs: key -> (saved, new); a missing side is ``None``."""
    a, b = flatten(saved), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_continuation(run_dir: Path, saved: dict[str, Any], new: dict[str, Any]) -> None:
    """RunDirError unless training ``new`` into ``run_dir`` (which holds ``saved``) continues
    the same run: only :data:`SAFE_KEYS` changed, and :data:`GROWING_KEYS` grew while the phase
    they budget is still running. Every checkpoint must be readable."""
    from hybridsim.checkpoint import CheckpointError, load_checkpoint

    diff = changes(saved, new)
    for key, (old, value) in diff.items():
        if key in SAFE_KEYS or key == "logger" or key.startswith("logger."):
            continue  # trackers: see hybridsim.tracking (a resume may add or drop one)
        grows = (
            key in GROWING_KEYS and isinstance(old, int) and isinstance(value, int) and value > old
        )
        if not grows:
            why = "can only grow" if key in GROWING_KEYS else "would change what the run is"
            raise RunDirError(
                f"{run_dir} already holds a run with {key}={_show(old)}; {key}={_show(value)} "
                f"{why}. A resume may change only: {ALLOWED}; start a new run for anything else"
            )
    checkpoints = sorted((run_dir / "checkpoints").glob("**/last.pt"))
    states = {}
    for path in checkpoints:
        try:
            ck = load_checkpoint(path)
        except CheckpointError as e:
            raise RunDirError(f"cannot resume {run_dir}: {e}") from None
        states[path] = ck
    grown = [k for k in GROWING_KEYS if k in diff]
    for path, ck in states.items():
        where = f"{path.relative_to(run_dir)} (step {ck.get('step')})"
        if grown and ck.get("done"):
            raise RunDirError(
                f"cannot resume {run_dir} with more {' and '.join(grown)}: {where} has finished "
                "training; start a new run with the budget you want"
            )
        if "recipe.steps" in diff and ck.get("phase") != "adam":
            raise RunDirError(
                f"cannot resume {run_dir} with more recipe.steps: {where} is past its "
                "first-order phase (L-BFGS polish); only recipe.polish_steps can still grow"
            )


def _show(value: Any) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


@dataclass
class Snapshot:
    """The files of a run's record before a command touches them, to put back if it fails."""

    run_dir: Path
    files: dict[str, bytes | None] = field(default_factory=dict)
    logs: dict[str, int | None] = field(default_factory=dict)
    had_hydra_dir: bool = False

    @classmethod
    def take(cls, run_dir: Path) -> Snapshot:
        snap = cls(run_dir, had_hydra_dir=(run_dir / ".hydra").is_dir())
        for name in _RECORD_FILES:
            p = run_dir / name
            snap.files[name] = p.read_bytes() if p.is_file() else None
        for log in ("train.log", *(p.name for p in run_dir.glob("*.log"))):
            p = run_dir / log
            snap.logs[log] = p.stat().st_size if p.is_file() else None
        return snap

    def training_started(self) -> bool:
        """Whether ``meta.json`` was (re)written since: the training wrote its own record."""
        p = self.run_dir / "meta.json"
        now = p.read_bytes() if p.is_file() else None
        return now != self.files.get("meta.json")

    def restore(self) -> None:
        from hybridsim.atomic import atomic_path

        for name, data in self.files.items():
            p = self.run_dir / name
            if data is None:
                p.unlink(missing_ok=True)
            elif not p.is_file() or p.read_bytes() != data:
                with atomic_path(p) as tmp:
                    tmp.write_bytes(data)
        for name, size in self.logs.items():
            p = self.run_dir / name
            if size is None:
                p.unlink(missing_ok=True)
            elif p.is_file() and p.stat().st_size != size:
                with p.open("r+b") as f:
                    f.truncate(size)
        hydra_dir = self.run_dir / ".hydra"
        if not self.had_hydra_dir and hydra_dir.is_dir() and not any(hydra_dir.iterdir()):
            hydra_dir.rmdir()


@dataclass
class Guard:
    """A locked run directory; :meth:`undo` leaves it as this command found it (or removes it,
    if this command created it), as long as the training has not started."""

    run_dir: Path
    lock: Lock
    created: bool
    snapshot: Snapshot

    def training_started(self) -> bool:
        return self.snapshot.training_started()

    def undo(self) -> None:
        if self.training_started():
            return
        if self.created:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        else:
            self.snapshot.restore()

    def release(self) -> None:
        self.lock.release()


def guard_run_dir(run_dir: Path, new: dict[str, Any]) -> Guard:
    """Lock ``run_dir`` for training the resolved config ``new`` into it, after checking that
    this continues the run already there (if any). Creates the directory when missing (then
    :meth:`Guard.undo` removes it). Removes temporary files that killed writers left in it."""
    created = False
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"the run directory {run_dir} exists and is not a folder")
    if not run_dir.exists():
        run_dir.mkdir(parents=True)
        created = True
    try:
        lock = lock_run_dir(run_dir, "being trained or evaluated")
    except BaseException:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    try:
        if (run_dir / "config_resolved.yaml").exists():
            check_continuation(run_dir, load_saved_config(run_dir), new)
        remove_stale_temps(run_dir, recursive=True)  # left by a killed writer of this run
        snapshot = Snapshot.take(run_dir)
    except BaseException:
        lock.release()
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return Guard(run_dir, lock, created, snapshot)


# ------------------------------------------------------------------- a sweep run again
# What a job of a sweep run again in the same sweep directory does with the run it finds.
SWEEP_ACTIONS = ("new", "skipped", "resumed", "rerun")
# Kept in place when a failed job is rerun: what Hydra and this job wrote for the new attempt.
_KEPT_ON_RERUN = (".hydra", "config_resolved.yaml", ".attempts")


def sweep_action(run_dir: Path) -> tuple[str, dict[str, Any]]:
    """The action for a sweep job's directory (locked, its config checked to continue the run):
    ``new`` (no run yet), ``skipped`` (completed), ``resumed`` (interrupted, or killed while
    running: from ``last.pt``) or ``rerun`` (failed or diverged: from the start, the failed
    attempt set aside by :func:`set_attempt_aside`); with what meta.json records of it."""
    import json

    try:
        meta = json.loads((run_dir / "meta.json").read_text())
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict):
        return "new", {"action": "new"}
    status = str(meta.get("status"))
    if status == "completed":
        return "skipped", {"action": "skipped"}
    record: dict[str, Any] = {"previous_status": status}
    if status in ("interrupted", "running"):
        from hybridsim.checkpoint import CheckpointError, load_checkpoint

        try:
            record["from_step"] = int(load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"])
        except CheckpointError:
            record["from_step"] = 0
        return "resumed", {"action": "resumed", **record}
    if meta.get("error"):
        record["previous_error"] = str(meta["error"])[:300]
    return "rerun", {"action": "rerun", **record}


def set_attempt_aside(run_dir: Path) -> Path:
    """Move a failed attempt's outputs (checkpoints, metrics, meta.json, plots, eval, tracker
    files) into ``run_dir/.attempts/<k>/`` (hidden: ``hybridsim report`` does not read it), and
    its log there too (the log file itself is emptied, Hydra appends to it); returns that
    folder. Nothing is deleted."""
    base = run_dir / ".attempts"
    k = 1
    while (base / str(k)).exists():
        k += 1
    dest = base / str(k)
    dest.mkdir(parents=True)
    for path in sorted(run_dir.iterdir()):
        if path.name in _KEPT_ON_RERUN or path.suffix == ".log":
            continue
        path.replace(dest / path.name)
    for log in run_dir.glob("*.log"):
        shutil.copy2(log, dest / log.name)
        with log.open("r+b") as f:
            f.truncate(0)
    return dest
