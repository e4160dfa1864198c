"""What every schema module shares: the mandatory-value marker, the error type and the range
checks that name the key."""

from __future__ import annotations

from typing import Any

MISSING: Any = "???"  # OmegaConf's marker of a mandatory value


class ConfigError(ValueError):
    """A config value out of range; the message names the offending key."""


def _positive(prefix: str, **values: float) -> None:
    for key, value in values.items():
        if value is None or not value > 0:
            raise ConfigError(f"{prefix}.{key} must be > 0, got {value}")


def _non_negative(prefix: str, **values: float) -> None:
    for key, value in values.items():
        if value is None or value < 0:
            raise ConfigError(f"{prefix}.{key} must be >= 0, got {value}")


def _one_of(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value} is not valid; choose one of: {', '.join(choices)}")
