"""The ``hybridsim`` console script: ``generate | train | eval``, each a Hydra application, and
``report`` (plain arguments: directories; see ``hybridsim.report``).

This module (with ``cli_guard.py``: validation, the run-directory guard, the one-line errors;
``cli_resume.py``: ``train resume=DIR``) and ``config.py`` are the only ones that touch
Hydra/OmegaConf. Errors are turned
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
import sys
from pathlib import Path
from typing import Any

from hybridsim import cli_guard, interrupts, parallel
from hybridsim.cli_guard import (  # noqa: F401  (RunGuard: hybridsim.cli.RunGuard, as before)
    EXIT_ERROR,
    EXIT_USAGE,
    Rejected,
    RunGuard,
    _in_multirun,
    _job_num,
    _log_to_file,
    _one_line,
    _sweep_summary,
    _undo_single_run,
    _validate_train,
)
from hybridsim.cli_resume import _rewrite_resume

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
    if cli_guard.SESSION.guard is None or cli_guard.SESSION.guard.run_dir != run_dir:
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
    cli_guard.SESSION.guards.append(lock)
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
    guard = cli_guard.SESSION.guard
    if cli_guard.SESSION.sweep_dir is not None:
        return f"{line}; the jobs run so far are in {cli_guard.SESSION.sweep_dir}"
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
        cli_guard.SESSION.close()
        parallel.finish()
        interrupts.restore(previous)


def _main(argv: list[str]) -> int:
    cli_guard.SESSION = cli_guard.Session()
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
