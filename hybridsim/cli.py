"""The ``hybridsim`` console script: ``generate | train | eval``, each a Hydra application, and
``report`` (plain arguments: directories; see ``hybridsim.report``).

This module and ``config.py`` are the only ones that touch Hydra/OmegaConf. Errors are turned
into one line on stderr and a non-zero exit (``HYBRIDSIM_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

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
  hybridsim train --help          (config groups and options of a command)
  hybridsim train --cfg job       (the composed config, without running)
  hybridsim report --help         (grouping and the files it writes)

Set HYBRIDSIM_DEBUG=1 to see full tracebacks.
"""

HYDRA_COMMANDS = ("generate", "train", "eval")
COMMANDS = (*HYDRA_COMMANDS, "report")
EXIT_USAGE, EXIT_ERROR = 2, 1


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
        try:
            return task(cfg)
        except Exception as e:  # noqa: BLE001
            # Report here: past this point Hydra would print its own multi-line notice.
            if os.environ.get("HYBRIDSIM_DEBUG"):
                raise
            line = f"hybridsim {command}: error: {_one_line(e)}"
            print(line, file=sys.stderr)
            _log_to_file(line)
            raise SystemExit(EXIT_ERROR) from None

    return app


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


def _train(cfg) -> str:
    import logging

    from omegaconf import OmegaConf

    from hybridsim.config import to_typed
    from hybridsim.data import write_text_atomic
    from hybridsim.evaluate import print_table, run_eval
    from hybridsim.problems.base import registered
    from hybridsim.train import run_training

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    typed = to_typed(cfg)
    problem = registered()[typed.problem.name](typed.problem)
    problem.check_choices(typed.solver.name, typed.correction.name, typed.coupling)
    run_dir = _output_dir()
    container = OmegaConf.to_container(cfg, resolve=True)
    write_text_atomic(run_dir / "config_resolved.yaml", OmegaConf.to_yaml(container))
    print(f"run directory: {run_dir}", flush=True)
    run_training(typed, run_dir, container)
    if typed.evaluate:
        print_table(run_eval(run_dir, device=typed.device))
        print(f"evaluation: {run_dir / 'eval' / 'metrics.json'}")
    print(run_dir)
    return str(run_dir)


def _eval(cfg) -> dict:
    from omegaconf import OmegaConf

    from hybridsim.config import ConfigError, to_typed
    from hybridsim.evaluate import print_table, run_eval

    if OmegaConf.is_missing(cfg, "run"):
        raise ConfigError("eval needs run=<run directory printed by hybridsim train>")
    typed = to_typed(cfg)
    result = run_eval(typed.run, typed.ckpt, typed.device, typed.data_dir)
    print_table(result)
    print(f"evaluation: {Path(typed.run) / 'eval' / 'metrics.json'}")
    return result


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


def _rewrite_resume(argv: list[str]) -> list[str]:
    """``train resume=DIR``: rerun DIR's own overrides into DIR (continues from last.pt)."""
    resume = [a for a in argv if a.startswith("resume=")]
    if not resume:
        return argv
    import yaml

    run_dir = Path(resume[0].split("=", 1)[1])
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not (run_dir / "config_resolved.yaml").exists() or not saved.exists():
        raise FileNotFoundError(f"cannot resume: {run_dir} is not a hybridsim train run directory")
    overrides = yaml.safe_load(saved.read_text()) or []
    rest = [a for a in argv if not a.startswith("resume=")]
    return [*overrides, *rest, f"hydra.run.dir={run_dir}"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
    try:
        if command == "train":
            rest = _rewrite_resume(rest)
        app = _hydra_app(command)
        sys.argv = ["hybridsim", *rest]  # shell completion registers for this name
        app()
    except SystemExit as e:  # Hydra's own exits (--help, argparse errors) keep their code
        return e.code if isinstance(e.code, int) else EXIT_ERROR
    except KeyboardInterrupt:
        print("hybridsim: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  (every error becomes one line for the user)
        if debug:
            raise
        print(f"hybridsim {command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    return 0
