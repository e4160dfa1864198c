"""The ``hybridsim`` console script: ``generate | train | eval``, each a Hydra application, and
``report`` (plain arguments: directories; see ``hybridsim.report``).

This module and ``config.py`` are the only ones that touch Hydra/OmegaConf. Errors are turned
into one line on stderr and a non-zero exit (``HYBRIDSIM_DEBUG=1`` shows the traceback);
SIGINT/SIGTERM into one line and exit 130/143. A single ``train`` is validated completely
(config, and the run directory it would write into) before Hydra creates or changes anything:
:class:`RunGuard`, a Hydra callback, does it in ``on_run_start``. In a sweep, a failing job is
recorded (its error line in its ``train.log``) and the sweep goes on; it ends with a summary.
See docs/reliability.md.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridsim import interrupts, parallel

USAGE = """\
usage: hybridsim <command> [overrides ...] [--help] [--cfg job] [-m]
       hybridsim report DIR [DIR ...] [by=KEY,...] [ignore=KEY,...] [out=DIR]

Hybrid differentiable-physics models: a classical solver with a neural network in its loop,
trained end to end through the unrolled solver.

commands:
  generate   write a problem's reference data (train/val/test) to HDF5
  train      train a hybrid model (generates missing data first), then evaluate it
  eval       score a trained run against the solver alone, the baselines and the reference
  report     aggregate runs (a sweep, several sweeps) into tables and plots: median, range, n

examples:
  hybridsim train problem=lv
  hybridsim train -m problem=lv correction=none,mlp seed=0,1
  hybridsim eval run=outputs/train/<date>/<time>
  hybridsim report outputs/train-multirun/<date>/<time>
  hybridsim train problem=lv logger=[tensorboard,mlflow]      (trackers, docs/tracking.md)
  hybridsim train -m +sweep=lv_optuna                         (Optuna search, docs/scaling.md)
  hybridsim train -m hydra/launcher=slurm seed=1,2,3          (SLURM through submitit)
  torchrun --nproc_per_node=2 -m hybridsim train problem=ct   (one run data-parallel, DDP)
  hybridsim train --help          (config groups and options of a command)
  hybridsim train --cfg job       (the composed config, without running)
  hybridsim report --help         (grouping and the files it writes)

Set HYBRIDSIM_DEBUG=1 to see full tracebacks.
"""

HYDRA_COMMANDS = ("generate", "train", "eval")
COMMANDS = (*HYDRA_COMMANDS, "report")
EXIT_USAGE, EXIT_ERROR = 2, 1

# The settings of a run (TrainConfig's fields and the config groups): all that `resume` replays.
RUN_KEYS = frozenset(
    {"problem", "solver", "correction", "recipe", "coupling", "seed", "device", "dtype"}
    | {"data_dir", "evaluate", "progress", "experiment", "logger"}
)
GROUPS = frozenset({"problem", "solver", "correction", "recipe", "experiment", "logger"})
# Tracker settings that send a run's data somewhere else: never replayed from a run directory.
REMOTE_TRACKING = ("logger.mlflow.tracking_uri", "logger.wandb.mode", "logger.wandb.entity")


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


_SESSION = Session()


def config_path() -> str:
    """Where the shipped configs are: ``conf/`` beside the imported ``hybridsim`` package when it
    is a source checkout (so a checkout on PYTHONPATH never reads another checkout's configs
    through an editable install's ``hybridsim.conf`` mapping), else the ``hybridsim.conf``
    package of an installed wheel (the top-level ``conf/`` is packaged under that name)."""
    import importlib.util

    beside = Path(__file__).resolve().parent.parent / "conf"
    if (beside / "train.yaml").is_file():
        return str(beside)
    try:
        if importlib.util.find_spec("hybridsim.conf") is not None:
            return "pkg://hybridsim.conf"
    except ModuleNotFoundError:
        pass
    return str(Path(__file__).resolve().parent.parent / "conf")


def _hydra_app(command: str):
    import hydra
    from omegaconf import DictConfig

    from hybridsim.config import register_schemas

    register_schemas()
    task = {"generate": _generate, "train": _train, "eval": _eval}[command]

    @hydra.main(version_base="1.3", config_path=config_path(), config_name=command)
    def app(cfg: DictConfig) -> Any:
        multirun = _in_multirun()
        try:
            return task(cfg)
        except KeyboardInterrupt:
            _undo_single_run()
            raise
        except Exception as e:  # noqa: BLE001
            # Report here: past this point Hydra would print its own multi-line notice.
            if os.environ.get("HYBRIDSIM_DEBUG"):
                raise
            line = f"hybridsim {command}: error: {_one_line(e)}"
            if multirun:
                # The job is recorded (its directory, its train.log, its meta.json) and the
                # sweep goes on; main() prints the summary and exits non-zero.
                num = _job_num()
                print(f"hybridsim {command}: job {num} failed: {_one_line(e)}", file=sys.stderr)
                _log_to_file(line)
                # A sweeper reads the return value: +inf is the worst loss to Optuna (NaN
                # would stop its sweep), so the search goes on past a failed trial.
                return float("inf") if command == "train" else None
            print(line, file=sys.stderr)
            if not _undo_single_run():
                _log_to_file(line)
            raise SystemExit(EXIT_ERROR) from None

    return app


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
    guard = _SESSION.guard
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
        _SESSION.guard = guard
        _SESSION.guards.append(guard)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        _SESSION.sweep_dir = Path(os.path.abspath(str(OmegaConf.select(config, "hydra.sweep.dir"))))
        _SESSION.sweep_started = time.time()

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


def _output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _generate(cfg) -> str:
    from hybridsim.config import to_typed
    from hybridsim.data import ensure_dataset
    from hybridsim.problems.base import registered

    typed = to_typed(cfg)
    problem = registered()[typed.problem.name](typed.problem)
    path, generated = ensure_dataset(problem, typed.data_dir, force=typed.force)
    print(f"{path} ({'generated' if generated else 'exists, config matches: reused'})")
    return str(path)


def _train(cfg) -> float:
    import logging

    from hybridsim.config import to_typed
    from hybridsim.rundir import guard_run_dir

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    run_dir = _output_dir()
    container = _validate_train(cfg)
    typed = to_typed(cfg)
    local = None
    if _SESSION.guard is None or _SESSION.guard.run_dir != run_dir:
        # A sweep job (Hydra made its directory already), or a run without RunGuard (the
        # callback removed from the config): lock and check here, for this job only.
        local = guard_run_dir(run_dir, container)
    try:
        attempt = _sweep_job_attempt(run_dir) if _in_multirun() else None
        return _train_into(run_dir, typed, container, attempt)
    finally:
        if local is not None:
            local.release()


def _sweep_job_attempt(run_dir: Path) -> dict[str, Any]:
    """A sweep job in a directory that may hold a run from an earlier launch of the same sweep
    (docs/scaling.md): skip it if completed, resume it if interrupted, rerun it if it failed."""
    from hybridsim.rundir import set_attempt_aside, sweep_action

    action, attempt = sweep_action(run_dir)
    where = f"sweep job {_job_num()}"
    if action == "resumed":
        print(f"{where}: resumed from step {attempt['from_step']} ({run_dir})", flush=True)
    elif action == "rerun":
        aside = set_attempt_aside(run_dir)
        attempt["previous_attempt"] = str(aside.relative_to(run_dir))
        print(f"{where}: rerun (it had {attempt['previous_status']}; kept in {aside})", flush=True)
    elif action == "skipped":
        print(f"{where}: skipped (completed before: {run_dir})", flush=True)
    return attempt


def _train_into(run_dir: Path, typed: Any, container: dict, attempt: dict | None = None) -> float:
    """Train (and evaluate) into ``run_dir``; returns the objective of a sweep: the best
    validation loss of the main model (``hybrid``). A sweep job skipped as completed is neither
    trained, nor evaluated again (when its evaluation is there), nor tracked."""
    from omegaconf import OmegaConf

    from hybridsim.data import write_text_atomic
    from hybridsim.evaluate import print_table, run_eval
    from hybridsim.tracking import Trackers
    from hybridsim.train import run_training

    write_text_atomic(run_dir / "config_resolved.yaml", OmegaConf.to_yaml(container))
    print(f"run directory: {run_dir}", flush=True)
    if attempt and attempt["action"] == "skipped":
        if not typed.evaluate or (run_dir / "eval" / "metrics.json").is_file():
            # Checks that it is complete (then writes nothing); else it goes on from last.pt.
            run_training(typed, run_dir, container, attempt={"action": "resumed"})
            print(run_dir)
            return objective(run_dir)
    enabled = typed.logger.enabled() if not (attempt and attempt["action"] == "skipped") else {}
    trackers = Trackers.open(run_dir, enabled, container) if enabled else None
    status = "failed"
    try:
        if parallel.world().active:  # the other ranks of torchrun train beside this one
            parallel.send_job({"run_dir": str(run_dir), "config": container})
        run_training(typed, run_dir, container, tracker=trackers, attempt=attempt)
        if typed.evaluate:
            result = run_eval(run_dir, device=typed.device)
            print_table(result)
            print(f"evaluation: {run_dir / 'eval' / 'metrics.json'}")
            if trackers is not None:
                trackers.log_eval(result)
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        if trackers is not None:
            trackers.close(status)
    print(run_dir)
    return objective(run_dir)


def objective(run_dir: Path) -> float:
    """The best validation loss of the run's main model, from its ``meta.json`` (+inf when it
    has none or it is not finite: the worst value, to a sweeper that minimises)."""
    import json

    try:
        meta = json.loads((run_dir / "meta.json").read_text())
        value = float(meta["fits"]["hybrid"]["best_val_loss"])
    except (OSError, ValueError, KeyError, TypeError):
        return float("inf")
    return value if math.isfinite(value) else float("inf")


def _eval(cfg) -> dict:
    from omegaconf import OmegaConf

    from hybridsim.atomic import remove_stale_temps
    from hybridsim.config import ConfigError, to_typed
    from hybridsim.evaluate import load_run_config, print_table, run_eval
    from hybridsim.locks import lock_run_dir

    if OmegaConf.is_missing(cfg, "run"):
        raise ConfigError("eval needs run=<run directory printed by hybridsim train>")
    typed = to_typed(cfg)
    load_run_config(Path(typed.run))  # a clear error for a directory that is not a run
    lock = lock_run_dir(typed.run, "being trained or evaluated")
    _SESSION.guards.append(lock)
    remove_stale_temps(Path(typed.run) / "eval", recursive=True)
    result = run_eval(typed.run, typed.ckpt, typed.device, typed.data_dir)
    print_table(result)
    print(f"evaluation: {Path(typed.run) / 'eval' / 'metrics.json'}")
    _track_eval(Path(typed.run), result)
    return result


def _track_eval(run_dir: Path, result: dict) -> None:
    """Send a new evaluation to the trackers the run was trained with (their runs continue)."""
    import yaml

    from hybridsim.evaluate import load_run_config
    from hybridsim.tracking import Trackers, TrackingError, check_installed

    enabled = load_run_config(run_dir).logger.enabled()
    if not enabled:
        return
    try:
        check_installed(list(enabled))
    except TrackingError as e:
        print(f"hybridsim eval: warning: not tracked: {e}", file=sys.stderr)
        return
    container = yaml.safe_load((run_dir / "config_resolved.yaml").read_text())
    trackers = Trackers.open(run_dir, enabled, container)
    try:
        trackers.log_eval(result)
    finally:
        trackers.close("completed")


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


def _quote(value: str) -> str:
    """``value`` as a quoted Hydra override value that parses back to exactly ``value`` (paths
    with ``,``, ``'``, spaces, ``=``, ``${``)."""
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    text = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text)
    return "'" + text.replace("${", "\\${") + "'"


def _override_parser() -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _replayable(item: Any, source: Path) -> str:
    """A saved override that ``resume`` may replay: a setting of the run itself, never a Hydra
    setting (``hydra.*``: environment, launcher, callbacks, output), a package, a config loaded
    from outside the config search path, a resolver (``${oc.env:...}``; a reference to another
    key such as ``${seed}`` is fine) or a sweep. ConfigError otherwise."""
    from hybridsim.config import ConfigError

    refuse = f"cannot resume: {source} holds {str(item)[:120]!r}, which resume does not replay"
    if not isinstance(item, str):
        raise ConfigError(f"{refuse} (not a key=value override)")
    try:
        override = _override_parser().parse_override(item)
    except Exception:  # noqa: BLE001  (any grammar error)
        raise ConfigError(f"{refuse} (not a valid override)") from None
    key = override.key_or_group
    root = re.split(r"[./@]", key, maxsplit=1)[0]
    if root not in RUN_KEYS or override.package is not None:
        raise ConfigError(
            f"{refuse}: {key} is not a setting of the run ({', '.join(sorted(RUN_KEYS))})"
        )
    if override.is_sweep_override():
        raise ConfigError(f"{refuse}: a sweep is not one run")
    if re.search(r"\$\{\s*[\w.-]+\s*:", item):  # ${seed} is replayed, ${oc.env:X} is not
        raise ConfigError(f"{refuse}: resolver interpolations are not replayed")
    if key in REMOTE_TRACKING:
        raise ConfigError(f"{refuse}: where a tracker sends data is given on the command line")
    if key in GROUPS:
        value = override.value()
        names = value if key == "logger" and isinstance(value, list) else [value]
        for name in names:
            if not (
                isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name)
            ) or (".." in name):
                raise ConfigError(f"{refuse}: {key} must name a config of its group")
    return item


def _rewrite_resume(argv: list[str]) -> list[str]:
    """``train resume=DIR``: replay DIR's own settings (its ``.hydra/overrides.yaml``, only the
    run's keys, see :func:`_replayable`) and the new overrides into DIR, quoted; RunGuard then
    checks that the result continues DIR's run and may change only safe keys."""
    resume = [a for a in argv if a.startswith("resume=")]
    if not resume:
        return argv
    import yaml

    from hybridsim.atomic import NotARegularFile, require_regular_file
    from hybridsim.config import ConfigError

    if len(resume) > 1:
        raise ConfigError("give resume= once")
    value = resume[0].split("=", 1)[1]
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    if not value:
        raise ConfigError("resume= needs a run directory printed by hybridsim train")
    run_dir = Path(os.path.abspath(os.path.expanduser(value)))
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not run_dir.is_dir():
        raise FileNotFoundError(f"cannot resume: run directory {run_dir} does not exist")
    try:
        for f in (run_dir / "config_resolved.yaml", saved):
            require_regular_file(f, "run file")
    except FileNotFoundError:
        raise ConfigError(
            f"cannot resume: {run_dir} is not a hybridsim train run directory "
            "(no config_resolved.yaml and .hydra/overrides.yaml)"
        ) from None
    except NotARegularFile as e:
        raise ConfigError(f"cannot resume: {e}") from None
    try:
        overrides = yaml.safe_load(saved.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        raise ConfigError(f"cannot resume: {saved} is not readable YAML") from None
    if overrides is None:
        overrides = []
    if not isinstance(overrides, list):
        raise ConfigError(f"cannot resume: {saved} must be a list of key=value overrides")
    replay = [_replayable(item, saved) for item in overrides]
    rest = [a for a in argv if not a.startswith("resume=")]
    for a in rest:
        if a in ("-m", "--multirun"):
            raise ConfigError("resume continues one run; it cannot be a sweep (-m)")
        if not a.startswith("-") and re.split(r"[./@=]", a.lstrip("+~"), maxsplit=1)[0] == "hydra":
            raise ConfigError(
                f"resume refuses {a}: the run directory and Hydra's settings are the run's own"
            )
    # A new value replaces the saved one (instead of piling up in overrides.yaml).
    new_keys = {_override_key(a) for a in rest if not a.startswith("-")}
    replay = [item for item in replay if _override_key(item) not in new_keys]
    return [*replay, *rest, f"hydra.run.dir={_quote(str(run_dir))}"]


def _override_key(item: str) -> str:
    return item.split("=", 1)[0].lstrip("+~")


def _check_flags(command: str, argv: list[str]) -> Any:
    """Hydra's own argument parser on ``argv``: a wrong flag is one line (UsageError) instead of
    argparse's usage text. Returns the parsed namespace."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()

    def error(message: str) -> None:
        hint = ""
        if "unrecognized arguments" in message and any("=" in a for a in message.split()[2:]):
            hint = "; flags (-m, --cfg, ...) go before the overrides"
        raise UsageError(f"{message}{hint} (see hybridsim {command} --help)")

    parser.error = error  # type: ignore[method-assign]
    return parser.parse_args(argv)


class UsageError(ValueError):
    """Wrong command-line syntax (a flag)."""


def _sweep_summary(command: str) -> int:
    """After a multirun: one line for the sweep, one per failed job; EXIT_ERROR if any failed.
    Reads each job's record from disk (so it works with any launcher): this sweep's jobs are the
    job directories whose ``.hydra/hydra.yaml`` was written after it started. A sweep run again
    in the same directory says how many jobs it skipped (completed before), resumed and rerun."""
    from hybridsim.report.runs import ReportError, read_run

    root = _SESSION.sweep_dir
    if root is None or not root.is_dir():
        return 0
    started = _SESSION.sweep_started - 1
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


def _ddp_worker() -> int:
    """A rank other than 0 under torchrun: train the run rank 0 sends (no Hydra, no writes);
    errors are rank 0's to report, a worker adds one line naming its rank."""
    from hybridsim.config import typed_train_config
    from hybridsim.train import run_training

    rank = parallel.world().rank
    job = parallel.receive_job()
    if job is None:  # rank 0 stopped before training (and said why)
        parallel.barrier()
        return EXIT_ERROR
    try:
        run_training(typed_train_config(job["config"]), Path(job["run_dir"]), job["config"])
    except KeyboardInterrupt as e:
        return e.exit_code if isinstance(e, interrupts.Interrupted) else 130
    except Exception as e:  # noqa: BLE001
        if os.environ.get("HYBRIDSIM_DEBUG"):
            raise
        print(f"hybridsim train (rank {rank}): error: {_one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def _interrupted_line(command: str, e: KeyboardInterrupt) -> str:
    name = e.args[0] if isinstance(e, interrupts.Interrupted) else "SIGINT"
    line = f"hybridsim {command}: interrupted ({name})"
    guard = _SESSION.guard
    if _SESSION.sweep_dir is not None:
        return f"{line}; the jobs run so far are in {_SESSION.sweep_dir}"
    if command == "train" and guard is not None:
        if (guard.run_dir / "meta.json").is_file():
            world = parallel.world()
            launcher = f"torchrun --nproc_per_node={world.size} -m " if world.active else ""
            return f"{line}; continue with: {launcher}hybridsim train resume={guard.run_dir}"
        return f"{line}; nothing was kept"
    return line


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    previous = interrupts.install()
    try:
        return _main(argv)
    finally:
        _SESSION.close()
        parallel.finish()
        interrupts.restore(previous)


def _main(argv: list[str]) -> int:
    global _SESSION
    _SESSION = Session()
    debug = bool(os.environ.get("HYBRIDSIM_DEBUG"))
    completion = os.environ.get("COMP_LINE")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] in ("-V", "--version"):
        from hybridsim import __version__

        print(f"hybridsim {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        if any(a.startswith(("-sc", "--shell-completion")) for a in argv) and completion:
            # Completion queries call `hybridsim -sc query=bash` with the whole line in COMP_LINE:
            # move the command word out of the line and dispatch to that command's app.
            words = completion.split()
            cmd = next((w for w in words[1:] if w in HYDRA_COMMANDS), None)
            if cmd is None:
                print("\n".join(COMMANDS))
                return 0
            os.environ["COMP_LINE"] = completion.replace(f" {cmd}", "", 1)
            argv = [cmd, *argv]
        else:
            print(
                f"hybridsim: error: unknown command {argv[0]!r}; choose one of: "
                f"{', '.join(COMMANDS)} (see hybridsim --help)",
                file=sys.stderr,
            )
            return EXIT_USAGE
    command, rest = argv[0], argv[1:]
    if command == "report":  # not a Hydra app: its arguments are directories
        from hybridsim.report import main as report_main

        return report_main(rest)
    # We print errors ourselves, as one line; Hydra then re-raises instead of printing.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    import logging

    for noisy in ("alembic", "mlflow"):  # imported by the Optuna sweeper, the MLflow tracker
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        flags = _check_flags(command, rest)
    except UsageError as e:
        print(f"hybridsim {command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if command == "train" and parallel.launched():
        if flags.multirun:
            print(
                "hybridsim train: error: a sweep (-m) cannot run under torchrun: torchrun makes "
                "one run data-parallel; launch the sweep's jobs with hydra/launcher=... instead",
                file=sys.stderr,
            )
            return EXIT_USAGE
        if not parallel.init().main:
            return _ddp_worker()
    try:
        if command == "train":
            rest = _rewrite_resume(rest)
        app = _hydra_app(command)
        sys.argv = ["hybridsim", *rest]  # shell completion registers for this name
        app()
        interrupts.check()  # a signal that some finaliser swallowed
        if flags.multirun and not (flags.cfg or flags.help or flags.info):
            return _sweep_summary(command)
    except SystemExit as e:  # Hydra's own exits (--help, argparse errors) keep their code
        return e.code if isinstance(e.code, int) else EXIT_ERROR
    except Rejected as r:
        if debug:
            raise r.error from None
        print(f"hybridsim {command}: error: {_one_line(r.error)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as e:
        _undo_single_run()
        print(_interrupted_line(command, e), file=sys.stderr)
        return e.exit_code if isinstance(e, interrupts.Interrupted) else 130
    except Exception as e:  # noqa: BLE001  (every error becomes one line for the user)
        _undo_single_run()
        if debug:
            raise
        print(f"hybridsim {command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    return 0
