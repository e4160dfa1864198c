"""The corrections' schemas, one per ``correction.kind``: each holds only the settings its network
reads, with that network's defaults, so ``conf/correction/<name>.yaml`` lists only what differs
(``resnet_paper``: 5 blocks of 5x5 kernels). A key a kind lacks (``correction.activation`` on a
resnet) is refused at composition, naming the key.

Run directories written before these schemas existed hold every key of the one shared schema
in their ``config_resolved.yaml`` (and perhaps an override of one in ``.hydra/overrides.yaml``);
:func:`upgrade_saved_correction` reads them back, ``resume`` skips such overrides
(:func:`legacy_keys`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from hybridsim.schemas.checks import MISSING, ConfigError, _non_negative, _one_of, _positive

# The names nn/mlp.py and nn/convnet.py know (kept here: this module imports no torch).
MLP_ACTIVATIONS = ("tanh", "relu", "gelu", "silu", "softplus", "rbf")
CONV_ACTIVATIONS = ("relu", "prelu", "tanh", "gelu", "silu")
# Convolution padding: auto (circular on a periodic domain, zeros otherwise) | zeros | circular.
PADDINGS = ("auto", "zeros", "circular")


@dataclass
class CorrectionConfig:
    """What every correction config has: its option name (``correction=<name>``) and its kind,
    which picks the network and so the schema (:data:`CORRECTION_SCHEMAS`)."""

    name: str = MISSING
    kind: str = MISSING


@dataclass
class NoCorrectionConfig(CorrectionConfig):
    """``kind: none``: no network, the solver alone (the physics-only baseline)."""

    name: str = "none"
    kind: str = "none"


@dataclass
class NetworkConfig(CorrectionConfig):
    """What every network has: its widths and the scale of its last layer's initial weights
    (small corrections keep early unrolls stable; 0 starts exactly at the solver alone)."""

    width: list[int] = field(default_factory=lambda: [32, 32])
    init_scale: float = 0.1

    def __post_init__(self) -> None:
        _non_negative("correction", init_scale=self.init_scale)
        for w in self.width:
            _positive("correction", width=w)


def _odd_kernel(kernel_size: int) -> None:
    _positive("correction", kernel_size=kernel_size)
    if kernel_size % 2 != 1:
        raise ConfigError(
            f"correction.kernel_size must be odd (size-preserving), got {kernel_size}"
        )


@dataclass
class MLPConfig(NetworkConfig):
    """``kind: mlp``: a fully connected network on a vector state (``nn.mlp.GroupedMLP``)."""

    name: str = "mlp"
    kind: str = "mlp"
    width: list[int] = field(default_factory=lambda: [32, 32])
    activation: str = "tanh"
    init_scale: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        _one_of("correction.activation", self.activation, MLP_ACTIVATIONS)


@dataclass
class ConvNetConfig(NetworkConfig):
    """``kind: convnet``: plain 2D convolutions with zero padding (``nn.convnet.ConvNet``), the
    learned-gradient network of Adler & Öktem (2017)."""

    name: str = "convnet"
    kind: str = "convnet"
    width: list[int] = field(default_factory=lambda: [32, 32])
    kernel_size: int = 3
    activation: str = "relu"
    init_scale: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        _odd_kernel(self.kernel_size)
        _one_of("correction.activation", self.activation, CONV_ACTIVATIONS)


@dataclass
class ResNetConfig(NetworkConfig):
    """``kind: resnet``: residual blocks of ReLU convolutions, 1D/2D/3D (``nn.resnet.ResNet``):
    one block per ``width`` entry, or an input convolution and ``blocks`` blocks of
    ``width[0]`` channels; Xavier-initialised with gain 0.1, the last layer ``init_scale`` x."""

    name: str = "resnet"
    kind: str = "resnet"
    width: list[int] = field(default_factory=lambda: [32, 32, 32])
    kernel_size: int = 3
    blocks: int = 0
    init_scale: float = 1.0
    padding: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        _odd_kernel(self.kernel_size)
        _non_negative("correction", blocks=self.blocks)
        _one_of("correction.padding", self.padding, PADDINGS)


@dataclass
class UNetConfig(NetworkConfig):
    """``kind: unet``: a U-Net with one level per ``width`` entry, 2D/3D (``nn.unet.UNet``)."""

    name: str = "unet"
    kind: str = "unet"
    width: list[int] = field(default_factory=lambda: [16, 32, 64])
    kernel_size: int = 3
    init_scale: float = 0.01
    padding: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        _odd_kernel(self.kernel_size)
        if not self.width:
            raise ConfigError("correction.width of a unet must list at least one level")
        _one_of("correction.padding", self.padding, PADDINGS)


# kind -> schema (stored as ``schema/correction/<kind>``).
CORRECTION_SCHEMAS: dict[str, type[CorrectionConfig]] = {
    "none": NoCorrectionConfig,
    "mlp": MLPConfig,
    "convnet": ConvNetConfig,
    "resnet": ResNetConfig,
    "unet": UNetConfig,
}

# The one schema that every kind shared before (up to hybridsim commit 07544ef): its keys and
# defaults; a run saved then holds all of them, whatever its kind.
LEGACY_DEFAULTS: dict[str, Any] = {
    "width": [32, 32],
    "activation": "tanh",
    "init_scale": 0.1,
    "kernel_size": 3,
    "blocks": 0,
    "padding": "auto",
}


def correction_schema(kind: Any) -> type[CorrectionConfig]:
    """The schema of ``correction.kind``; ConfigError listing the kinds otherwise."""
    if kind not in CORRECTION_SCHEMAS:
        raise ConfigError(
            f"correction.kind={kind} is not a kind of correction; choose one of: "
            + ", ".join(CORRECTION_SCHEMAS)
        )
    return CORRECTION_SCHEMAS[kind]


def legacy_keys(kind: Any) -> set[str]:
    """The keys of the old shared schema that the schema of ``kind`` lacks (its network never
    read them: a run saved with any value of them is the same run without them)."""
    known = {f.name for f in fields(correction_schema(kind))}
    return set(LEGACY_DEFAULTS) - known


def upgrade_saved_correction(section: dict[str, Any]) -> dict[str, Any]:
    """A saved correction section in the schema of its kind. A run saved before one schema per
    kind holds every key of the shared schema (``kernel_size``, ``blocks``, ``padding`` on an
    mlp; a ``width`` on ``none``, even ``[8]`` when a sweep set it for every job): the keys its
    kind lacks are dropped, whatever their value, because that kind never read them (the old
    ``build_correction`` and every problem used only the keys the new schema has), so the run
    is exactly the same without them. Any other key stays, for the schema check to refuse."""
    drop = legacy_keys(section.get("kind"))
    return {k: v for k, v in section.items() if k not in drop}
