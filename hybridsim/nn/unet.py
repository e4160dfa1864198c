"""A small U-Net (Ronneberger et al., 2015) for field-to-field corrections, 2D or 3D.

``width = [c0, c1, ..., cL]``: level ``l`` runs two ``kernel_size`` convolutions with ``c_l``
channels (ReLU); levels are joined by 2x average pooling down and nearest-neighbour upsampling
with skip concatenation up; a 1x1 output convolution. Inputs of any spatial size: the field is
zero-padded at the upper end to a multiple of ``2^L`` and the output cropped back. Output layer
weights are scaled by ``final_scale`` (0: zero output). ``padding_mode="circular"`` wraps the
convolutions around (periodic fields; exact when every size is a multiple of ``2^L``, else the
zero padding up to that multiple breaks the period). Knows nothing about physics.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _double_conv(
    c_in: int, c_out: int, kernel_size: int, conv: type[nn.Module], padding_mode: str
) -> nn.Module:
    pad = kernel_size // 2
    return nn.Sequential(
        conv(c_in, c_out, kernel_size, padding=pad, padding_mode=padding_mode),
        nn.ReLU(),
        conv(c_out, c_out, kernel_size, padding=pad, padding_mode=padding_mode),
        nn.ReLU(),
    )


class UNet(nn.Module):
    """``(batch, in_channels, *spatial) -> (batch, out_channels, *spatial)``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        width: Sequence[int] = (16, 32, 64),
        kernel_size: int = 3,
        dim: int = 2,
        final_scale: float = 1.0,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        if padding_mode not in ("zeros", "circular"):
            raise ValueError(f"padding_mode must be zeros or circular, got {padding_mode!r}")
        if dim not in (2, 3):
            raise ValueError(f"UNet supports 2D and 3D fields, got dim={dim}")
        if kernel_size % 2 != 1 or not width:
            raise ValueError("UNet needs an odd kernel_size and at least one width")
        conv = nn.Conv2d if dim == 2 else nn.Conv3d
        self.dim, self.levels = dim, len(width) - 1
        self.down = nn.ModuleList()
        c_prev = in_channels
        for c in width:
            self.down.append(_double_conv(c_prev, c, kernel_size, conv, padding_mode))
            c_prev = c
        self.up = nn.ModuleList(
            _double_conv(width[i + 1] + width[i], width[i], kernel_size, conv, padding_mode)
            for i in reversed(range(self.levels))
        )
        self.out = conv(width[0], out_channels, 1)
        with torch.no_grad():
            self.out.weight.mul_(final_scale)
            self.out.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        m = 2**self.levels
        pad: list[int] = []
        for n in reversed(spatial):
            pad += [0, (-n) % m]
        x = F.pad(x, pad)
        pool = F.avg_pool2d if self.dim == 2 else F.avg_pool3d
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else pool(skips[-1], 2))
            skips.append(x)
        x = skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = block(torch.cat([F.interpolate(x, size=skip.shape[2:], mode="nearest"), skip], 1))
        x = self.out(x)
        for d, n in enumerate(spatial):
            x = x.narrow(2 + d, 0, n)
        return x
