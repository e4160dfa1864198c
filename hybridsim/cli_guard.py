"""What ``hybridsim train`` checks and holds before and around Hydra's job: the validation of
a whole config, :class:`RunGuard` (the Hydra callback that validates and locks a single train's
run directory before Hydra creates or changes anything), the session state of one ``main()``
call, the one-line error format, and the summary of a sweep. See docs/reliability.md.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridsim import parallel

EXIT_USAGE, EXIT_ERROR = 2, 1


@dataclass
class Session:
    """What one ``main()`` call holds: the guard (lock, snapshot) of a single train's run
    directory, the locks it took, the sweep directory of a multirun."""

    guard: Any = None  # rundir.Guard of a single train
    guards: list[Any] = field(default_factory=list)  # every lock taken, released at the end
    sweep_dir: Path | None = None
    sweep_started: float = 0.0

    def close(self) -> None:
        for g in self.guards:
            g.release()
        self.guards.clear()


SESSION = Session()


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def _job_num() -> str:
    from hydra.core.hydra_config import HydraConfig

    try:
        return str(HydraConfig.get().job.num)
    except (ValueError, AttributeError):
        return "?"


def _undo_single_run() -> bool:
    """A single train that failed before its training started: leave its run directory as it
    was (remove it when this command created it). True when it did so."""
    guard = SESSION.guard
    if guard is None or guard.training_started():
        return False
    guard.undo()
    return True


class Rejected(BaseException):
    """A command refused before Hydra started its job (raised through Hydra's callback
    machinery, which would swallow an Exception); ``error`` is the reason."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class RunGuard:
    """Hydra callback (``hydra.callbacks.guard`` in ``conf/train.yaml``).

    ``on_run_start`` runs after composition and before Hydra creates the run directory or writes
    ``.hydra/``: it validates the whole config, then locks the run directory (created here if
    new) and, when it holds a run already, checks that this continues that run
    (``rundir.check_continuation``) and takes a snapshot to put back if the command fails.
    ``on_multirun_start`` notes the sweep directory for the summary.
    """

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        from hybridsim.rundir import guard_run_dir

        try:
            run_dir = Path(os.path.abspath(str(OmegaConf.select(config, "hydra.run.dir"))))
            container = _validate_train(_task_config(config))
            guard = guard_run_dir(run_dir, container)
        except Exception as e:  # noqa: BLE001
            # Hydra turns a callback's Exception into a warning and runs the job anyway.
            raise Rejected(e) from e
        SESSION.guard = guard
        SESSION.guards.append(guard)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        SESSION.sweep_dir = Path(os.path.abspath(str(OmegaConf.select(config, "hydra.sweep.dir"))))
        SESSION.sweep_started = time.time()

    def __getattr__(self, name: str) -> Any:  # the other callback hooks: nothing to do
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)


def _task_config(config: Any) -> Any:
    """The job's config without the ``hydra`` node (as the task function receives it)."""
    import copy

    from omegaconf import open_dict, read_write

    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def _validate_train(cfg: Any) -> dict:
    """Everything checkable without doing work: types, ranges, finite values, unknown keys, the
    solver/correction/coupling choices. Returns the resolved config as plain containers."""
    from omegaconf import OmegaConf

    from hybridsim.config import resolve_device, to_typed
    from hybridsim.nn import accelerate
    from hybridsim.problems.base import registered
    from hybridsim.tracking import check_installed

    typed = to_typed(cfg)
    accelerate.check(typed.amp, resolve_device(typed.device), typed.dtype)
    problem = registered()[typed.problem.name](typed.problem)
    if parallel.world().active:
        parallel.check_supported(problem, typed.recipe)
    problem.check_run(typed.solver.name, typed.correction.name, typed.coupling, typed.recipe)
    check_installed(list(typed.logger.enabled()))
    return OmegaConf.to_container(cfg, resolve=True)


def _log_to_file(line: str) -> None:
    """Put the error line into the job's log file as well (``<run>/train.log``, Hydra's file
    handler; not the console, which has it already): the one place a failed job of a sweep
    keeps why it failed, for ``hybridsim report``."""
    import logging

    record = logging.LogRecord("hybridsim", logging.ERROR, __file__, 0, line, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _unknown_key(text: str) -> str | None:
    """Hydra's "Could not override 'correction.activation'. To append to your config use
    +correction.activation=... Key 'activation' not in 'ResNetConfig'" (whose advice, ``+``,
    fails as well) as the line the generic key check gives: the key, its schema, its keys."""
    override = re.search(r"Could not override '([\w.]+)'", text)
    missing = re.search(r"Key '(\w+)' not in '(\w+)'", text)
    if not (override and missing):
        return None
    from dataclasses import fields, is_dataclass

    import hybridsim.schemas
    from hybridsim.config import PROBLEM_SCHEMAS, SOLVER_SCHEMAS, load_schemas

    load_schemas()
    name = missing.group(2)
    known = [*PROBLEM_SCHEMAS.values(), *SOLVER_SCHEMAS.values()]
    known += [getattr(hybridsim.schemas, n) for n in hybridsim.schemas.__all__]
    schema = next((c for c in known if is_dataclass(c) and c.__name__ == name), None)
    key = override.group(1)
    where = f"this {key.split('.', 1)[0]}" if "." in key else "this command"
    line = f"{key} is not a setting of {where} ({name})"
    if schema is not None:
        line += f"; its settings: {', '.join(sorted(f.name for f in fields(schema)))}"
    return line


def _one_line(e: BaseException) -> str:
    """A readable single line from any exception (Hydra's are multi-line)."""
    if isinstance(e, OSError) and e.filename:
        return f"cannot use {e.filename}: {e.strerror or type(e).__name__}"
    text = str(e).strip() or type(e).__name__
    text = text.replace(
        "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.", ""
    )
    cause = e.__cause__
    if cause is not None and str(cause).strip() and str(cause).strip() not in text:
        text += f": {str(cause).strip()}"
    unknown = _unknown_key(text)
    if unknown:
        return unknown
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    joined, i = [], 0
    while i < len(lines):  # "Available options in 'problem':" + tab-indented names -> one list
        if lines[i].startswith("Available options") and lines[i].endswith(":"):
            header, opts = lines[i][:-1].lower(), []
            i += 1
            while i < len(lines) and re.fullmatch(r"[\w./-]+", lines[i]):
                opts.append(lines[i])
                i += 1
            joined.append(f"{header}: {', '.join(opts)}")
            continue
        if lines[i].startswith(
            ("full_key:", "object_type=", "Config search path", "provider=", "- provider=")
        ):
            i += 1
            continue
        joined.append(lines[i])
        i += 1
    return "; ".join(joined)


def _sweep_summary(command: str) -> int:
    """After a multirun: one line for the sweep, one per failed job; EXIT_ERROR if any failed.
    Reads each job's record from disk (so it works with any launcher): this sweep's jobs are the
    job directories whose ``.hydra/hydra.yaml`` was written after it started. A sweep run again
    in the same directory says how many jobs it skipped (completed before), resumed and rerun."""
    from hybridsim.report.runs import ReportError, read_run

    root = SESSION.sweep_dir
    if root is None or not root.is_dir():
        return 0
    started = SESSION.sweep_started - 1
    jobs = []
    for hydra_yaml in root.glob("*/.hydra/hydra.yaml"):
        if hydra_yaml.stat().st_mtime >= started:
            jobs.append(hydra_yaml.parent.parent)
    done, failed, actions = [], [], dict.fromkeys(("skipped", "resumed", "rerun"), 0)
    for job in sorted(jobs, key=lambda p: (len(p.name), p.name)):
        meta = None
        try:
            run = read_run(job)
            meta = run.meta
            status = run.meta.get("status") if run.meta else None
            error = run.error
        except ReportError as e:
            status, error = None, str(e)
        action = _job_action(job, meta)
        if action in actions:
            actions[action] += 1
        if status == "completed" and not error:
            done.append(job)
        else:
            failed.append((job, error or status or "did not start"))
    names = {"skipped": "skipped (completed before)", "resumed": "resumed", "rerun": "rerun"}
    again = ", ".join(f"{n} {names[a]}" for a, n in actions.items() if n)
    again = f" ({again})" if again else ""
    if not failed:
        print(f"sweep {root}: {len(done)} of {len(jobs)} jobs done{again}")
        return 0
    print(
        f"hybridsim {command}: sweep {root}: {len(jobs)} jobs, {len(done)} done, "
        f"{len(failed)} failed{again}; run the same command again to rerun the failed jobs "
        "(and resume interrupted ones, skipping the rest)",
        file=sys.stderr,
    )
    for job, why in failed:
        print(f"  job {job.name} failed ({job}): {why}", file=sys.stderr)
    return EXIT_ERROR


def _job_action(job: Path, meta: dict | None) -> str:
    """What this launch did with a job: the record in its meta.json when this launch wrote it
    (after Hydra wrote the job's ``.hydra/hydra.yaml``); a meta.json older than that was left
    untouched: a job skipped as completed before."""
    path = job / "meta.json"
    if not meta or not path.is_file():
        return "new"
    if path.stat().st_mtime_ns < (job / ".hydra" / "hydra.yaml").stat().st_mtime_ns:
        return "skipped" if meta.get("status") == "completed" else "new"
    attempt = meta.get("attempt")
    return str(attempt.get("action", "new")) if isinstance(attempt, dict) else "new"
