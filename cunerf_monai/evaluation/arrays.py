"""Array conversion shared by the evaluation modules."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["as_volume"]


def as_volume(x, name: str, dtype=None) -> np.ndarray:
    """Convert ``x`` (numpy array, torch tensor, MetaTensor) to a 3D numpy array ``(X, Y, Z)``.

    Args:
        x: array-like of shape ``(X, Y, Z)`` or ``(1, X, Y, Z)`` (a leading singleton channel is dropped).
        name: argument name used in error messages.
        dtype: output dtype (``None`` keeps the input's).
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3:
        raise ValueError(f"{name} must be a 3D volume (X, Y, Z) (or (1, X, Y, Z)), got shape {x.shape}.")
    return x if dtype is None else x.astype(dtype, copy=False)
