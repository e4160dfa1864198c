"""Config schemas: plain dataclasses, one per config group option kind, with their range checks.

Each YAML option in ``conf/<group>/`` extends one schema here (``defaults: [/schema/...]``); the
schemas are stored in Hydra's ConfigStore by :mod:`hybridsim.config`, the only module besides
``cli.py`` (and its ``cli_guard``, ``cli_resume``) that knows Hydra. This package imports
neither Hydra nor OmegaConf nor the problems, so the problems can take their typed configs from
it without loading either. Range checks (positive step sizes, non-negative noise, ...) run in
``__post_init__`` and name the key.

One module per group: :mod:`.problems`, :mod:`.solvers`, :mod:`.corrections`, :mod:`.recipe`,
:mod:`.logger`, and :mod:`.commands` (the top level of generate/train/eval); every name is
re-exported here.
"""

from __future__ import annotations

from hybridsim.schemas.checks import MISSING, ConfigError, _non_negative, _one_of, _positive
from hybridsim.schemas.commands import (
    AMP_CHOICES,
    DEVICES,
    DTYPES,
    EvalConfig,
    GenerateConfig,
    TrainConfig,
)
from hybridsim.schemas.corrections import (
    CORRECTION_SCHEMAS,
    LEGACY_DEFAULTS,
    ConvNetConfig,
    CorrectionConfig,
    MLPConfig,
    NetworkConfig,
    NoCorrectionConfig,
    ResNetConfig,
    UNetConfig,
    correction_schema,
    legacy_keys,
    upgrade_saved_correction,
)
from hybridsim.schemas.logger import (
    CSVLoggerConfig,
    LoggerConfig,
    MLflowLoggerConfig,
    TensorBoardLoggerConfig,
    WandbLoggerConfig,
)
from hybridsim.schemas.problems import (
    NS_INPUT_SCALES,
    NS_SCENARIO_DEFAULTS,
    NS_SCENARIOS,
    CTConfig,
    LVConfig,
    NSConfig,
    ns_scenario_default,
)
from hybridsim.schemas.recipe import RecipeConfig
from hybridsim.schemas.solvers import CTSolverConfig, FluidSolverConfig, ODESolverConfig

__all__ = [
    "AMP_CHOICES",
    "CORRECTION_SCHEMAS",
    "DEVICES",
    "DTYPES",
    "LEGACY_DEFAULTS",
    "MISSING",
    "NS_INPUT_SCALES",
    "NS_SCENARIOS",
    "NS_SCENARIO_DEFAULTS",
    "CSVLoggerConfig",
    "CTConfig",
    "CTSolverConfig",
    "ConfigError",
    "ConvNetConfig",
    "CorrectionConfig",
    "EvalConfig",
    "FluidSolverConfig",
    "GenerateConfig",
    "LVConfig",
    "LoggerConfig",
    "MLPConfig",
    "MLflowLoggerConfig",
    "NSConfig",
    "NetworkConfig",
    "NoCorrectionConfig",
    "ODESolverConfig",
    "RecipeConfig",
    "ResNetConfig",
    "TensorBoardLoggerConfig",
    "TrainConfig",
    "UNetConfig",
    "WandbLoggerConfig",
    "_non_negative",
    "_one_of",
    "_positive",
    "correction_schema",
    "legacy_keys",
    "ns_scenario_default",
    "upgrade_saved_correction",
]
