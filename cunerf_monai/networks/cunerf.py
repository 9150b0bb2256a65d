"""The coarse + fine pair of fields that CuNeRF trains together."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CuNeRFModel"]


class CuNeRFModel(nn.Module):
    """Separate coarse and fine fields (paper: two networks of the same kind).

    Both fields map points ``(..., 3)`` (or channel-first grids) to raw ``(intensity, density)``. Calling the
    model evaluates the fine field (the coarse one when there is no fine field), so the pair can stand
    wherever MONAI expects one network (checkpoints, TorchScript export, bundle checks).

    Args:
        coarse: the coarse field.
        fine: the fine field, or ``None`` to render the hierarchical pass with the coarse field.

    Examples::

        >>> from cunerf_monai.networks import PositionalMLPField
        >>> model = CuNeRFModel(PositionalMLPField(num_layers=2, skips=()), PositionalMLPField(num_layers=2, skips=()))
        >>> model(torch.zeros(7, 3)).shape
        torch.Size([7, 2])
    """

    def __init__(self, coarse: nn.Module, fine: nn.Module | None = None) -> None:
        super().__init__()
        if not isinstance(coarse, nn.Module) or (fine is not None and not isinstance(fine, nn.Module)):
            raise TypeError("coarse and fine must be torch.nn.Module fields (fine may be None).")
        self.coarse = coarse
        self.fine = fine

    @property
    def fine_field(self) -> nn.Module:
        """The field used for the hierarchical (fine) pass."""
        return self.fine if self.fine is not None else self.coarse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw outputs of the fine field for coordinates ``x``."""
        return self.fine_field(x)
