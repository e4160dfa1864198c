"""Convolutional residual networks for field-to-field corrections (1D, 2D or 3D).

Two layouts, both as in Um et al. (NeurIPS 2020) and its pbdl-book re-implementation:

- ``ResNet(width=[32, 32, 32], kernel_size=3)``: PhiFlow's ``res_net(in, out, [32, 32, 32])``,
  one residual block per entry (two convolutions and a skip), a 1x1 output convolution;
  ~47k parameters with 3x3 kernels (the book's network; 5x5 kernels give ~131k).
- ``ResNet(width=[32], kernel_size=5, blocks=5)``: the paper's network, an input convolution
  followed by ``blocks`` residual blocks of two 5x5x32 convolutions; ~260k parameters.

All weights are Xavier-uniform with gain 0.1 (Um et al.'s code) and the output layer is scaled
further by ``final_scale``: an untrained correction is small, so early unrolls stay stable;
``final_scale = 0`` gives an exactly-zero correction. Input ``(batch, c_in, *spatial)``, output
``(batch, c_out, *spatial)``; ``padding = kernel_size // 2`` keeps the spatial shape, with zeros
(bounded domains) or wrapped around (``padding_mode="circular"``, periodic domains, so that the
correction is translation-equivariant across the periodic boundary).
The network knows nothing about physics.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

PADDING_MODES = ("zeros", "circular")


CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _conv(dim: int) -> type[nn.Module]:
    if dim not in CONVS:
        raise ValueError(f"ResNet supports 1D, 2D and 3D fields, got dim={dim}")
    return CONVS[dim]


class ResBlock(nn.Module):
    """``y = relu(conv2(relu(conv1(x))) + skip(x))``; ``skip`` is 1x1 when the width changes."""

    def __init__(
        self, c_in: int, c_out: int, kernel_size: int, dim: int = 2, padding_mode: str = "zeros"
    ) -> None:
        super().__init__()
        conv = _conv(dim)
        pad = kernel_size // 2
        self.conv1 = conv(c_in, c_out, kernel_size, padding=pad, padding_mode=padding_mode)
        self.conv2 = conv(c_out, c_out, kernel_size, padding=pad, padding_mode=padding_mode)
        self.skip = conv(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + self.skip(x))


class ResNet(nn.Module):
    """Residual CNN ``(batch, in_channels, *spatial) -> (batch, out_channels, *spatial)``.

    Args:
        in_channels, out_channels: channel counts.
        width: channels of the residual blocks, one block per entry (``blocks == 0``), or the
            width of an input convolution followed by ``blocks`` equal blocks (``blocks > 0``).
        kernel_size: odd kernel size of every non-skip convolution.
        blocks: number of equal residual blocks after an input convolution (0: see ``width``).
        dim: 1, 2 or 3 spatial dimensions.
        gain: Xavier gain of every convolution (0.1 in Um et al.'s code).
        final_scale: extra factor on the output layer's initial weights (0: zero output).
        padding_mode: ``zeros`` or ``circular`` (periodic fields).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        width: Sequence[int] = (32, 32, 32),
        kernel_size: int = 3,
        blocks: int = 0,
        dim: int = 2,
        gain: float = 0.1,
        final_scale: float = 1.0,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (shape-preserving), got {kernel_size}")
        if not width:
            raise ValueError("width must list at least one channel count")
        conv = _conv(dim)
        layers: list[nn.Module] = []
        if blocks > 0:
            c = width[0]
            layers.append(
                conv(
                    in_channels,
                    c,
                    kernel_size,
                    padding=kernel_size // 2,
                    padding_mode=padding_mode,
                )
            )
            layers.append(nn.ReLU())
            layers += [ResBlock(c, c, kernel_size, dim, padding_mode) for _ in range(blocks)]
            last = c
        else:
            chans = [in_channels, *width]
            layers += [
                ResBlock(a, b, kernel_size, dim, padding_mode)
                for a, b in zip(chans[:-1], chans[1:], strict=True)
            ]
            last = width[-1]
        self.body = nn.Sequential(*layers)
        self.out = conv(last, out_channels, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
                nn.init.xavier_uniform_(m.weight, gain=gain)
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.out.weight.mul_(final_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


def n_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
