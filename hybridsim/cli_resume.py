"""``hybridsim train resume=DIR``: the run's own saved overrides replayed into DIR, only the
settings of the run itself (never Hydra's, a package, a resolver or a sweep); RunGuard then
checks that the result continues DIR's run (``rundir.check_continuation``)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

# The settings of a run (TrainConfig's fields and the config groups): all that `resume` replays.
RUN_KEYS = frozenset(
    {"problem", "solver", "correction", "recipe", "coupling", "seed", "device", "dtype"}
    | {"data_dir", "evaluate", "progress", "experiment", "logger"}
)
GROUPS = frozenset({"problem", "solver", "correction", "recipe", "experiment", "logger"})
# Tracker settings that send a run's data somewhere else: never replayed from a run directory.
REMOTE_TRACKING = ("logger.mlflow.tracking_uri", "logger.wandb.mode", "logger.wandb.entity")


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
    replay = _without_legacy_correction_keys(replay, run_dir / "config_resolved.yaml")
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


def _without_legacy_correction_keys(replay: list[str], resolved: Path) -> list[str]:
    """A run saved before one schema per correction kind may have set a key that its kind
    never read (``correction.width=[8]`` on ``correction=none``, from a sweep over kinds): the
    schema of its kind has no such key now, so that override is not replayed (the run is the
    same without it; ``rundir`` drops the key from the saved config alike)."""
    import yaml

    from hybridsim.config import ConfigError
    from hybridsim.schemas import legacy_keys

    try:
        kind = (yaml.safe_load(resolved.read_text()) or {}).get("correction", {}).get("kind")
        drop = legacy_keys(kind)
    except (yaml.YAMLError, UnicodeDecodeError, AttributeError, ConfigError):
        return replay  # an unreadable saved config: the run-directory guard says why
    return [item for item in replay if _override_key(item) not in {f"correction.{k}" for k in drop}]
