"""The coarse + fine pair of fields that CuNeRF trains together."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..enums import FieldPass, check_option

__all__ = ["CuNeRFModel"]


class CuNeRFModel(nn.Module):
    """Separate coarse and fine fields (paper: two networks of the same kind).

    Both fields map points ``(..., 3)`` to raw ``(intensity, density)`` ``(..., 2)``; the inferer calls them
    directly (``.coarse`` and ``.fine_field``). Calling the model itself evaluates the fine field (the coarse one
    when there is no fine field) on coordinates laid out with channels at ``channel_dim`` — by default MONAI's
    channel-first ``(B, 3, *S) → (B, 2, *S)`` — so the pair stands wherever MONAI expects one network
    (checkpoints, TorchScript export, the bundle's ``verify_net_in_out``).

    ``forward(x, field="coarse", channel_dim=-1)`` selects the field and the layout per call. A wrapper such as
    :class:`torch.nn.parallel.DistributedDataParallel` only synchronises the gradients of parameters used
    through its own ``forward``, so the inferer reaches both fields of a wrapped model this way
    (``network(points, field="coarse", channel_dim=-1)``) instead of through ``.coarse``/``.fine_field``.

    Args:
        coarse: the coarse field.
        fine: the fine field, or ``None`` to render the hierarchical pass with the coarse field.
        channel_dim: ``1`` (channel-first grids) or ``-1`` (points ``(..., 3)``) for :meth:`forward`.

    Examples::

        >>> from cunerf_monai.networks import PositionalMLPField
        >>> model = CuNeRFModel(PositionalMLPField(num_layers=2, skips=()), PositionalMLPField(num_layers=2, skips=()))
        >>> model(torch.zeros(1, 3, 4, 5, 6)).shape
        torch.Size([1, 2, 4, 5, 6])
    """

    def __init__(self, coarse: nn.Module, fine: nn.Module | None = None, channel_dim: int = 1) -> None:
        super().__init__()
        if not isinstance(coarse, nn.Module) or (fine is not None and not isinstance(fine, nn.Module)):
            raise TypeError("coarse and fine must be torch.nn.Module fields (fine may be None).")
        if channel_dim not in (-1, 1):
            raise ValueError(f"channel_dim must be 1 (channel-first) or -1 (points), got {channel_dim}.")
        self.coarse = coarse
        self.has_fine = fine is not None
        self.fine = fine if fine is not None else nn.Identity()
        self.channel_dim = channel_dim

    @property
    def fine_field(self) -> nn.Module:
        """The field used for the hierarchical (fine) pass."""
        return self.fine if self.has_fine else self.coarse

    def forward(self, x: torch.Tensor, field: str = FieldPass.FINE, channel_dim: Optional[int] = None) -> torch.Tensor:
        """Raw outputs of one field for coordinates ``x``.

        Args:
            x: coordinates with 3 channels at ``channel_dim``.
            field: ``"fine"`` (the fine pass's field, :attr:`fine_field`) or ``"coarse"``.
            channel_dim: ``1`` (channel-first grids) or ``-1`` (points ``(..., 3)``); ``None`` uses the model's.
        """
        field = check_option(field, FieldPass, "field")
        layout = self.channel_dim if channel_dim is None else channel_dim
        if layout not in (-1, 1):
            raise ValueError(f"channel_dim must be 1 (channel-first) or -1 (points), got {layout}.")
        if layout == 1:
            x = torch.movedim(x, 1, -1)
        if field == FieldPass.COARSE or not self.has_fine:
            y = self.coarse(x)
        else:
            y = self.fine(x)
        if layout == 1:
            y = torch.movedim(y, -1, 1)
        return y
