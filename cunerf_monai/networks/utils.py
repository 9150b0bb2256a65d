"""Small helpers shared by the fields."""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["channel_last_call"]


def channel_last_call(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Evaluate a point-wise ``fn: (..., 3) → (..., C)`` on ``x`` laid out with channels at ``channel_dim``.

    ``channel_dim = -1``: ``x`` is ``(..., 3)`` and the result ``(..., C)``. ``channel_dim = 1``: ``x`` is
    ``(B, 3, *S)`` and the result ``(B, C, *S)``.
    """
    if channel_dim == -1:
        return fn(x)
    moved = torch.movedim(x, 1, -1)
    return torch.movedim(fn(moved), -1, 1)
