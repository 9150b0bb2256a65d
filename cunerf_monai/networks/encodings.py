"""Coordinate encodings: NeRF positional encoding (Eq. 1)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PositionalEncoding"]


class PositionalEncoding(nn.Module):
    """Positional encoding ``γ(x) = (x, sin 2^0 x, cos 2^0 x, …, sin 2^{L-1} x, cos 2^{L-1} x)`` (Eq. 1).

    Applied to each coordinate; the highest frequency ``2^{L-1}`` (radians per field unit) sets the finest
    detail the network can represent easily: with L = 10 its period is ``2π / 512 ≈ 0.012`` field units, about
    one voxel of a 180-voxel axis.

    Args:
        num_frequencies: ``L``, number of octaves (paper: 10).
        include_input: prepend the raw coordinates.
        input_dim: coordinate dimension (3).

    Examples::

        >>> enc = PositionalEncoding(num_frequencies=10)
        >>> enc(torch.zeros(5, 3)).shape
        torch.Size([5, 63])
    """

    def __init__(self, num_frequencies: int = 10, include_input: bool = True, input_dim: int = 3) -> None:
        super().__init__()
        if num_frequencies < 0:
            raise ValueError(f"num_frequencies must be >= 0, got {num_frequencies}.")
        if input_dim < 1:
            raise ValueError(f"input_dim must be positive, got {input_dim}.")
        if num_frequencies == 0 and not include_input:
            raise ValueError("An encoding with no frequencies must include the input.")
        self.num_frequencies = int(num_frequencies)
        self.include_input = bool(include_input)
        self.input_dim = int(input_dim)
        self.register_buffer("freqs", 2.0 ** torch.arange(self.num_frequencies, dtype=torch.float32), persistent=False)

    @property
    def out_features(self) -> int:
        """Encoded width: ``input_dim · (include_input + 2L)``."""
        return self.input_dim * (int(self.include_input) + 2 * self.num_frequencies)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode coordinates ``(..., input_dim)`` → ``(..., out_features)``."""
        parts = [x] if self.include_input else []
        if self.num_frequencies:
            xf = x.unsqueeze(-1) * self.freqs.to(x.dtype)  # (..., D, L)
            enc = torch.cat([torch.sin(xf), torch.cos(xf)], dim=-1)  # (..., D, 2L)
            parts.append(enc.flatten(-2))
        return torch.cat(parts, dim=-1)
