"""The paper's coordinate MLP (Fig. 6): positional encoding, 9 × 256 ReLU layers, input skips, two heads."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .encodings import PositionalEncoding
from .layers import LinearReLU
from .utils import channel_last_call

__all__ = ["PositionalMLPField"]


class PositionalMLPField(nn.Module):
    """Coordinate MLP field: points ``(..., 3)`` → raw ``(intensity, density)`` ``(..., 2)``.

    ``num_layers`` fully connected layers of width ``hidden_features`` with ReLU; the encoded input is
    concatenated to the output of the hidden layers listed in ``skips`` (1-based; paper: 4 and 8). A linear
    head gives ``out_channels`` raw values (channel 0: intensity logit, channel 1: density); activations are
    the renderer's business. With the defaults this has 575,490 parameters (paper: ≈ 0.58 M).

    Args:
        num_frequencies: positional-encoding octaves ``L`` (paper: 10).
        hidden_features: layer width (paper: 256).
        num_layers: number of hidden layers (paper: 9).
        skips: hidden layers after which the encoded input is concatenated.
        out_channels: raw outputs (2).
        channel_dim: ``-1`` for points ``(..., 3)``; ``1`` for channel-first grids ``(B, 3, *S) → (B, C, *S)``
            (the layout MONAI's bundle checks use).

    Examples::

        >>> net = PositionalMLPField()
        >>> net(torch.zeros(4, 3)).shape
        torch.Size([4, 2])
        >>> sum(p.numel() for p in net.parameters())
        575490
    """

    def __init__(
        self,
        num_frequencies: int = 10,
        hidden_features: int = 256,
        num_layers: int = 9,
        skips: Sequence[int] = (4, 8),
        out_channels: int = 2,
        channel_dim: int = -1,
    ) -> None:
        super().__init__()
        if hidden_features < 1 or num_layers < 1 or out_channels < 1:
            raise ValueError("hidden_features, num_layers and out_channels must be positive.")
        skips = tuple(int(s) for s in skips)
        if any(s < 1 or s >= num_layers for s in skips):
            raise ValueError(f"skips must lie in 1 … num_layers - 1 = {num_layers - 1}, got {skips}.")
        if channel_dim not in (-1, 1):
            raise ValueError(f"channel_dim must be -1 (points) or 1 (channel-first grids), got {channel_dim}.")
        self.encoding = PositionalEncoding(num_frequencies)
        self.skips = skips
        self.channel_dim = channel_dim
        width_in = self.encoding.out_features
        layers = []
        for i in range(num_layers):
            fan_in = width_in if i == 0 else hidden_features + (width_in if i in skips else 0)
            layers.append(LinearReLU(fan_in, hidden_features))
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(hidden_features, out_channels)

    def _forward_points(self, x: torch.Tensor) -> torch.Tensor:
        enc = self.encoding(x)
        h = enc
        for i, layer in enumerate(self.layers):
            if i in self.skips:
                h = torch.cat([h, enc], dim=-1)
            h = layer(h)
        return self.head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw outputs for coordinates; see ``channel_dim`` for the layouts."""
        return channel_last_call(self._forward_points, x, self.channel_dim)
