"""Corrections: plain nn.Modules that know nothing about physics, and the one factory that
builds them from a correction config (``correction=…``) for every problem."""

from __future__ import annotations

from typing import Any

from torch import nn

from hybridsim.nn.convnet import ConvNet
from hybridsim.nn.mlp import GroupedMLP
from hybridsim.nn.resnet import ResNet
from hybridsim.nn.unet import UNet

NETWORKS = (ConvNet, GroupedMLP, ResNet, UNet)  # what amp / compile apply to (nn.accelerate)

# The spatial dimensions each kind works on (0: a vector, no grid).
DIMS = {"none": (0, 1, 2, 3), "mlp": (0,), "convnet": (2,), "resnet": (1, 2, 3), "unet": (2, 3)}


def build_correction(
    cfg: Any,
    in_channels: int,
    out_channels: int,
    dim: int,
    *,
    groups: int = 1,
    periodic: bool = False,
    copies: int = 1,
) -> nn.Module | None:
    """The network of a correction config (``hybridsim.schemas.corrections``: the schema of
    its kind), ``None`` for ``kind == "none"`` (the solver alone).

    ``in_channels``/``out_channels``: features (``dim = 0``) or channels of a ``dim``-dimensional
    field ``(batch, channels, *spatial)``; ``groups``: independent MLPs side by side (one per
    output group, ``mlp`` only); ``periodic``: the field's domain wraps around (``padding=auto``
    then pads circularly); ``copies > 1``: one network per iteration (an ``nn.ModuleList``,
    built in order). ValueError naming the kind when it does not work on ``dim``.
    """
    kind = cfg.kind
    if kind not in DIMS:
        raise ValueError(f"correction.kind={kind} unknown; choose one of: {', '.join(DIMS)}")
    if dim not in DIMS[kind]:
        where = "a vector state" if dim == 0 else f"{dim}D fields"
        raise ValueError(
            f"correction={cfg.name} (kind {kind}) does not work on {where}; it takes "
            + ", ".join("vectors" if d == 0 else f"{d}D fields" for d in DIMS[kind])
        )
    if kind == "none":
        return None
    # Only the kinds with a padding setting (resnet, unet) have the key.
    padding = getattr(cfg, "padding", "zeros")
    if padding == "auto":
        padding = "circular" if periodic else "zeros"

    def make() -> nn.Module:
        if kind == "mlp":
            return GroupedMLP(
                in_channels, out_channels, cfg.width, groups, cfg.activation, cfg.init_scale
            )
        if kind == "convnet":
            return ConvNet(
                in_channels,
                out_channels,
                cfg.width,
                cfg.kernel_size,
                cfg.activation,
                cfg.init_scale,
            )
        if kind == "resnet":
            return ResNet(
                in_channels,
                out_channels,
                cfg.width,
                cfg.kernel_size,
                cfg.blocks,
                dim,
                final_scale=cfg.init_scale,
                padding_mode=padding,
            )
        return UNet(
            in_channels,
            out_channels,
            cfg.width,
            cfg.kernel_size,
            dim,
            final_scale=cfg.init_scale,
            padding_mode=padding,
        )

    return make() if copies == 1 else nn.ModuleList(make() for _ in range(copies))


__all__ = ["DIMS", "NETWORKS", "ConvNet", "GroupedMLP", "ResNet", "UNet", "build_correction"]
