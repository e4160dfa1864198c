"""Small convolutional networks for image-to-image corrections (learned gradient descent)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class PReLU(nn.PReLU):
    """One learned negative slope, starting at 0 (a ReLU), as the learned primal-dual code of
    Adler & Öktem (2018)."""

    def __init__(self) -> None:
        super().__init__(num_parameters=1, init=0.0)


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "prelu": PReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


# The memory layout of the convolutions: channels_last (NHWC) measured faster for the CT
# learned-GD training step on the CPU (docs/benchmarks.md, bench_ct_train.py's A/B rows); the
# results agree with NCHW to float rounding (a different summation order), not bit for bit.
CHANNELS_LAST = True


class ConvNet(nn.Module):
    """``in_channels -> width[0] -> ... -> out_channels`` convolutions with ``kernel_size``
    kernels and zero padding that keeps the size: ``(batch, in, ny, nx) -> (batch, out, ny, nx)``.

    With ``width=(32, 32)``, ``kernel_size=3``, ReLU this is the network of one learned
    gradient iteration in Adler & Öktem (2017), Inverse Problems 33, 124007, Sec. 4 (8 -> 32 ->
    32 -> 6 channels, ~12.9k parameters). ``final_scale`` multiplies the last layer's initial
    weights (its bias starts at zero): 0 gives an exact zero output at initialisation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        width: Sequence[int] = (32, 32),
        kernel_size: int = 3,
        activation: str = "relu",
        final_scale: float = 1.0,
        channels_last: bool = CHANNELS_LAST,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}"
            )
        if kernel_size % 2 != 1:
            raise ValueError(
                f"kernel_size must be odd (size-preserving padding), got {kernel_size}"
            )
        sizes = [in_channels, *width, out_channels]
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Conv2d(n_in, n_out, kernel_size, padding=kernel_size // 2))
            if i < len(sizes) - 2:
                layers.append(ACTIVATIONS[activation]())
        last = layers[-1]
        assert isinstance(last, nn.Conv2d)
        with torch.no_grad():
            last.weight.mul_(final_scale)
            last.bias.zero_()
        self.net = nn.Sequential(*layers)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.channels_last = channels_last
        if channels_last:
            self.net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.channels_last:
            return self.net(x)
        # the convolutions in NHWC (oneDNN's native layout on the CPU), the caller's NCHW back
        y = self.net(x.contiguous(memory_format=torch.channels_last))
        return y.contiguous()
