"""The top-level schemas of the commands (``generate``, ``train``, ``eval``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hybridsim.schemas.checks import MISSING, _one_of
from hybridsim.schemas.logger import LoggerConfig

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float64")
AMP_CHOICES = ("none", "bf16", "fp16")


@dataclass
class GenerateConfig:
    problem: Any = MISSING
    solver: Any = None  # unused by generate (problem configs choose defaults for them)
    correction: Any = None
    recipe: Any = None
    dtype: str = "float32"  # unused: reference data are computed in float64
    data_dir: str = "data"
    force: bool = False


@dataclass
class TrainConfig:
    problem: Any = MISSING
    solver: Any = MISSING
    correction: Any = MISSING
    recipe: Any = MISSING
    coupling: str | None = None  # None: the problem's default
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    data_dir: str = "data"
    evaluate: bool = True  # run `eval` on the finished run
    progress: str = "auto"  # auto | rich | plain | none
    # The correction network only (never the solver): autocast to bf16/fp16, torch.compile.
    amp: str = "none"  # none | bf16 | fp16
    compile: bool = False
    logger: LoggerConfig = field(default_factory=LoggerConfig)

    def __post_init__(self) -> None:
        _one_of("device", self.device, DEVICES)
        _one_of("dtype", self.dtype, DTYPES)
        _one_of("progress", self.progress, ("auto", "rich", "plain", "none"))
        _one_of("amp", self.amp, AMP_CHOICES)


@dataclass
class EvalConfig:
    run: str = MISSING
    ckpt: str | None = None  # default: <run>/checkpoints/best.pt
    device: str = "auto"
    data_dir: str | None = None  # default: the run's own

    def __post_init__(self) -> None:
        _one_of("device", self.device, DEVICES)
