"""A small 2D residual CNN that sharpens one axis of a plane: the learned prior of thick-slice scans.

:class:`PlaneResidualNet` maps an image ``(B, 1, H, W)`` whose first spatial axis was interpolated from thick
samples to its sharp version, as ``x + body(x)``: at initialisation it is (close to) the identity, and it learns
only what interpolation misses. Built from MONAI's :class:`~monai.networks.blocks.Convolution` (conv + PReLU, no
normalisation: intensities keep their meaning). Borders are replicate-padded by the receptive field before the
convolutions and cropped after, so the edge of a volume is not darkened by zero padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

__all__ = ["PlaneResidualNet"]


class PlaneResidualNet(nn.Module):
    """Residual plane CNN ``y = x + body(x)``.

    Args:
        channels: feature channels of the hidden layers.
        layers: number of 3×3 convolutions (≥ 2); the receptive field is ``2 · layers + 1`` pixels.
        act: activation of the hidden layers (a MONAI activation name).

    Input ``(B, 1, H, W)``; output ``(B, 1, H, W)``.

    Examples::

        >>> net = PlaneResidualNet(channels=8, layers=3)
        >>> net(torch.zeros(2, 1, 16, 12)).shape
        torch.Size([2, 1, 16, 12])
    """

    def __init__(self, channels: int = 32, layers: int = 8, act: str = "PRELU") -> None:
        super().__init__()
        if int(layers) < 2:
            raise ValueError(f"layers must be at least 2, got {layers}.")
        if int(channels) < 1:
            raise ValueError(f"channels must be positive, got {channels}.")
        self.channels, self.layers = int(channels), int(layers)
        blocks: list[nn.Module] = [Convolution(2, 1, self.channels, act=act, norm=None, padding=0)]
        for _ in range(self.layers - 2):
            blocks.append(Convolution(2, self.channels, self.channels, act=act, norm=None, padding=0))
        last = Convolution(2, self.channels, 1, conv_only=True, padding=0)
        nn.init.zeros_(last.conv.weight)  # start at the identity: the output is the interpolated input
        nn.init.zeros_(last.conv.bias)
        blocks.append(last)
        self.body = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"PlaneResidualNet takes (B, 1, H, W) images, got {tuple(x.shape)}.")
        pad = self.layers  # one pixel per valid 3×3 convolution
        padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        return x + self.body(padded)
