"""Training losses: the adaptive rendering loss L_A (Eq. 13) and the plain NeRF loss (Eq. 5)."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from .enums import RenderKeys

__all__ = ["AdaptiveRenderingLoss", "RenderingLoss"]


def _unpack(pred: Mapping[str, torch.Tensor] | list) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Accept the inferer's ``{"coarse": (B,), "fine": (B,)}`` or a decollated list of such dicts."""
    if isinstance(pred, (list, tuple)):
        coarse = torch.stack([p[RenderKeys.COARSE] for p in pred])
        fine = torch.stack([p[RenderKeys.FINE] for p in pred]) if RenderKeys.FINE in pred[0] else None
        return coarse, fine
    return pred[RenderKeys.COARSE], pred.get(RenderKeys.FINE)


def _flatten_target(target: torch.Tensor | list) -> torch.Tensor:
    if isinstance(target, (list, tuple)):
        target = torch.stack(list(target))
    return target.reshape(-1)


class RenderingLoss(nn.Module):
    """Plain rendering loss (Eq. 5): ``mean[(g − Ĉ_c)² + (g − Ĉ_f)²]`` (the fine term only if rendered).

    Inputs: ``pred = {"coarse": (B,), "fine": (B,)}`` and ``target (B,)``; returns a scalar.
    """

    def forward(self, pred: Mapping[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        coarse, fine = _unpack(pred)
        g = _flatten_target(target).to(coarse.dtype)
        loss = (g - coarse) ** 2
        if fine is not None:
            loss = loss + (g - fine) ** 2
        return loss.mean()


class AdaptiveRenderingLoss(nn.Module):
    """Adaptive rendering loss L_A (Eq. 13): ``mean[λ (g − Ĉ_c)² + (g − Ĉ_f)²]``, ``λ = |g − Ĉ_f|^{1/2}``.

    ``λ`` is computed per target and detached (as in the reference code): the coarse network is pushed
    hardest where the fine render is still wrong. Without a fine render it reduces to the plain loss.
    Inputs: ``pred = {"coarse": (B,), "fine": (B,)}`` and ``target (B,)``; returns a scalar.

    Examples::

        >>> loss = AdaptiveRenderingLoss()
        >>> pred = {"coarse": torch.tensor([0.0]), "fine": torch.tensor([0.75])}
        >>> float(loss(pred, torch.tensor([1.0])))  # λ = 0.5: 0.5 · 1 + 0.0625
        0.5625
    """

    def forward(self, pred: Mapping[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        coarse, fine = _unpack(pred)
        g = _flatten_target(target).to(coarse.dtype)
        if fine is None:
            return ((g - coarse) ** 2).mean()
        lam = (fine - g).abs().detach().sqrt()
        return (lam * (g - coarse) ** 2 + (g - fine) ** 2).mean()
