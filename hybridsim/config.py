"""Structured config schemas, registered in Hydra's ConfigStore, and validation.

Each YAML option in ``conf/<group>/`` extends one schema here (``defaults: [/schema/...]``), so a
wrong type or an unknown key fails at composition with OmegaConf's message naming the key.
Range checks (positive step sizes, non-negative noise, …) run in ``__post_init__`` when the
composed config is turned into these dataclasses by :func:`to_typed`, and name the key. Before
that, :func:`check_config` checks every value of every schema generically: no key the schema
does not declare, every number finite and at most ``MAX_MAGNITUDE`` in size, every seed an
integer in ``[0, MAX_SEED]``, and each group holding a config of its own kind.

Only ``cli.py`` (with ``cli_guard.py``, ``cli_resume.py``) and this module know about
Hydra/OmegaConf; everything below takes the typed dataclasses.
"""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from hybridsim.schemas import *  # noqa: F403  (the schemas, re-exported)
from hybridsim.schemas import (
    CORRECTION_SCHEMAS,
    ConfigError,
    CorrectionConfig,
    EvalConfig,
    GenerateConfig,
    LoggerConfig,
    RecipeConfig,
    TrainConfig,
    correction_schema,
    ns_scenario_default,
    upgrade_saved_correction,
)

# Filled from the problem registry (each problem's ``schema`` and ``solver_schemas``) on first
# use, so that a problem from an installed package brings its own.
PROBLEM_SCHEMAS: dict[str, type] = {}
SOLVER_SCHEMAS: dict[str, type] = {}


def load_schemas() -> None:
    """PROBLEM_SCHEMAS and SOLVER_SCHEMAS from the registered problems (idempotent)."""
    if PROBLEM_SCHEMAS:
        return
    from hybridsim.problems.base import registered

    for name, cls in registered().items():
        PROBLEM_SCHEMAS[name] = cls.schema
        SOLVER_SCHEMAS.update(cls.solver_schemas)


def register_schemas() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent)."""
    load_schemas()
    cs = ConfigStore.instance()
    cs.store(name="generate_schema", node=GenerateConfig)
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    for name, node in PROBLEM_SCHEMAS.items():
        cs.store(group="schema/problem", name=name, node=node)
    for name, node in SOLVER_SCHEMAS.items():
        cs.store(group="schema/solver", name=name, node=node)
    for name, node in CORRECTION_SCHEMAS.items():
        cs.store(group="schema/correction", name=name, node=node)
    cs.store(group="schema/recipe", name="base", node=RecipeConfig)
    if not OmegaConf.has_resolver("ns_scenario"):
        OmegaConf.register_new_resolver("ns_scenario", ns_scenario_default)
    _store_plugin_configs(cs)


def _store_plugin_configs(cs: ConfigStore) -> None:
    """The YAML files a problem from outside hybridsim ships (``Problem.config_files``, ``{"group/
    name": "package:path.yaml"}``), stored in the ConfigStore, which is on Hydra's search path:
    ``problem=<name>`` then composes as for a built-in problem."""
    from importlib.resources import files

    from hybridsim.problems.base import registered

    for cls in registered().values():
        for option, resource in cls.config_files.items():
            package, _, path = resource.partition(":")
            text = files(package).joinpath(path).read_text()
            group, _, name = option.rpartition("/")
            node = OmegaConf.create(text)
            header = text.lstrip().splitlines()[0] if text.strip() else ""
            pkg = "_global_" if header.replace(" ", "") == "#@package_global_" else None
            cs.store(group=group or None, name=name, node=node, package=pkg)


# ------------------------------------------------------------------ generic value checks
# Beyond any physical or numerical use: such a value only overflows the solver (x0 = 1e300 gives
# "float division by zero"; a 23-digit seed overflows int64 in torch and HDF5).
MAX_MAGNITUDE = 1e12
MAX_SEED = 2**32 - 1  # numpy, torch and every HDF5 attribute take it


def _is_seed(key: str) -> bool:
    last = key.rsplit(".", 1)[-1]
    return last == "seed" or last.startswith("seed_")


def check_value(key: str, value: Any) -> None:
    """ConfigError naming ``key`` unless ``value`` (and every entry of a list or mapping) is a
    finite number of sensible size, a seed in range, or not a number."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, dict):
        for k, v in value.items():
            check_value(f"{key}.{k}", v)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            check_value(f"{key}[{i}]", v)
    elif isinstance(value, int) and _is_seed(key):
        if not 0 <= value <= MAX_SEED:
            raise ConfigError(f"{key} must be an integer in [0, {MAX_SEED}], got {value}")
    elif isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be finite, got {value}")
        if abs(value) > MAX_MAGNITUDE:
            raise ConfigError(
                f"{key} must be at most {MAX_MAGNITUDE:.0e} in magnitude, got {value:.6g}"
            )


def _check_keys(node: Any, prefix: str) -> None:
    """ConfigError for a key that the node's schema does not declare (``+problem.foo=1``)."""
    if not isinstance(node, DictConfig):
        return
    schema = OmegaConf.get_type(node)
    known = {f.name for f in fields(schema)} if is_dataclass(schema) else None
    for key in node.keys():
        dotted = f"{prefix}{key}"
        if known is not None and key not in known:
            where = f"this {prefix.split('.', 1)[0]}" if prefix else "this command"
            raise ConfigError(
                f"{dotted} is not a setting of {where} ({schema.__name__}); "
                f"its settings: {', '.join(sorted(known))}"
            )
        if not OmegaConf.is_missing(node, key):
            _check_keys(node._get_node(key), f"{dotted}.")


GROUP_SCHEMAS = {
    "problem": lambda: tuple(PROBLEM_SCHEMAS.values()),
    "solver": lambda: tuple(SOLVER_SCHEMAS.values()),
    "correction": lambda: tuple(CORRECTION_SCHEMAS.values()),
    "recipe": lambda: (RecipeConfig,),
}


def _check_groups(typed: Any) -> None:
    """Each config group holds a config of its own kind (``problem=../solver/rk4`` does not)."""
    load_schemas()
    if not isinstance(typed, TrainConfig | GenerateConfig):
        return
    for group, schemas in GROUP_SCHEMAS.items():
        value = getattr(typed, group, None)
        if value is None and isinstance(typed, GenerateConfig) and group != "problem":
            continue
        if not isinstance(value, schemas()):
            what = (
                f"a {type(value).__name__} named {getattr(value, 'name', '?')!r}"
                if is_dataclass(value)
                else f"{type(value).__name__} {value!r}"[:80]
            )
            names = sorted(PROBLEM_SCHEMAS) if group == "problem" else None
            hint = f"; choose one of: {', '.join(names)}" if names else ""
            raise ConfigError(f"{group}: the chosen config is not a {group} config ({what}){hint}")
    if PROBLEM_SCHEMAS.get(typed.problem.name) is not type(typed.problem):
        raise ConfigError(
            f"problem.name={typed.problem.name} does not name this problem config; "
            f"choose one of: {', '.join(sorted(PROBLEM_SCHEMAS))}"
        )
    if isinstance(typed, TrainConfig) and (
        SOLVER_SCHEMAS.get(typed.solver.kind) is not type(typed.solver)
    ):
        raise ConfigError(
            f"solver.kind={typed.solver.kind} does not fit solver={typed.solver.name}"
        )
    if isinstance(typed, TrainConfig) and (
        CORRECTION_SCHEMAS.get(typed.correction.kind) is not type(typed.correction)
    ):
        raise ConfigError(
            f"correction.kind={typed.correction.kind} does not fit "
            f"correction={typed.correction.name} (a {type(typed.correction).__name__})"
        )


def check_config(cfg: DictConfig, prefix: str = "") -> None:
    """The generic checks on a composed config, before any ``__post_init__`` runs; ``prefix``
    (``problem.``) names the keys of a group checked on its own."""
    _check_keys(cfg, prefix)
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    for key, value in container.items():
        check_value(f"{prefix}{key}", value)


def to_typed(cfg: DictConfig | dict) -> Any:
    """The composed config as schema dataclasses: the generic checks of :func:`check_config`,
    then every ``__post_init__`` check, then each group's kind."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    check_config(cfg)
    typed = OmegaConf.to_object(cfg)
    _check_groups(typed)
    return typed


def typed_from_container(schema: type, container: dict, prefix: str = "") -> Any:
    """Rebuild a typed config from a plain dict (e.g. a run's saved ``config_resolved.yaml``)."""
    merged = OmegaConf.merge(OmegaConf.structured(schema), container)
    check_config(merged, prefix)
    return OmegaConf.to_object(merged)


def typed_train_config(container: dict) -> TrainConfig:
    """A TrainConfig from a plain dict (a run's ``config_resolved.yaml``), each group merged
    into its own schema (the solver's and the correction's picked by their ``kind``) so that
    types and ranges are checked again. A correction saved before one schema per kind is read
    through :func:`upgrade_saved_correction`."""
    if not isinstance(container, dict):
        raise ConfigError(f"expected a mapping of settings, got {type(container).__name__}")
    load_schemas()
    container = dict(container)
    logger = container.pop("logger", None) or {}
    if not isinstance(logger, dict):
        raise ConfigError("its 'logger' section is not a mapping")
    for group in ("problem", "solver", "correction", "recipe"):
        if not isinstance(container.get(group), dict):
            raise ConfigError(f"it has no {group!r} section")
    problem = container["problem"]
    if problem.get("name") not in PROBLEM_SCHEMAS:
        raise ConfigError(f"unknown problem {problem.get('name')!r} in saved config")
    solver_kind = container["solver"].get("kind", "ode")
    if solver_kind not in SOLVER_SCHEMAS:
        raise ConfigError(f"unknown solver kind {solver_kind!r} in saved config")
    correction = upgrade_saved_correction(container["correction"])
    top = {
        k: v for k, v in container.items() if k not in ("problem", "solver", "correction", "recipe")
    }
    unknown = sorted(set(top) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise ConfigError(f"{unknown[0]} is not a setting of train")
    for key, value in top.items():
        check_value(key, value)
    return TrainConfig(
        problem=typed_from_container(PROBLEM_SCHEMAS[problem["name"]], problem, "problem."),
        solver=typed_from_container(SOLVER_SCHEMAS[solver_kind], container["solver"], "solver."),
        correction=typed_from_container(
            correction_schema(correction.get("kind")), correction, "correction."
        ),
        recipe=typed_from_container(RecipeConfig, container["recipe"], "recipe."),
        logger=typed_from_container(LoggerConfig, logger, "logger."),
        **top,
    )


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available; use device=auto or cpu")
    return name


def conf_dir() -> Any:
    """The folder of the shipped configs: the checkout's ``conf/`` beside the package, else the
    installed package ``hybridsim.conf`` (a Traversable)."""
    from importlib.resources import files
    from pathlib import Path

    beside = Path(__file__).resolve().parent.parent / "conf"
    if (beside / "train.yaml").is_file():
        return beside
    return files("hybridsim.conf")


def correction_config(name: str, problem: Any) -> CorrectionConfig:
    """The correction config ``correction=<name>`` as its YAML defines it, typed and checked, in
    the context of ``problem`` (its interpolations may read ``problem.*``): what a comparator of
    another correction than the main model's is built from."""
    from dataclasses import asdict

    register_schemas()
    path = conf_dir() / "correction" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"correction={name} has no config file ({path})")
    node = OmegaConf.create(path.read_text())
    defaults = node.pop("defaults", None) or []
    kinds = [
        kind
        for entry in defaults
        if isinstance(entry, DictConfig)
        for key, kind in entry.items()
        if str(key).split("@")[0].strip("/") == "schema/correction"
    ]
    if len(kinds) != 1:
        raise ConfigError(f"{path} must extend one /schema/correction@_here_: <kind>")
    root = OmegaConf.create({"problem": asdict(problem)})
    root.correction = OmegaConf.merge(OmegaConf.structured(correction_schema(kinds[0])), node)
    check_config(root.correction, "correction.")
    return OmegaConf.to_object(root.correction)
