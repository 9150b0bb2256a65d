"""A cubic B-spline interpolant of the LR volume as a field, and a field that learns a residual on top of it.

:class:`BSplineVolume` evaluates the cubic B-spline interpolant of a volume at field coordinates, using the
"eight trilinear fetches" factorisation of the cubic B-spline (each axis' four taps are merged into two
linear fetches), so it runs through ``torch.nn.functional.grid_sample`` on any device and is differentiable.

:class:`ResidualField` adds a learned field's first output to the interpolant: the fitted model starts exactly
at the cubic interpolation of its input and the cube-rendering loss only has to learn what interpolation
misses (e.g. undoing the partial-volume blur of thick slices). Its parameters stay in the learned field; the
interpolant's coefficients are a buffer saved with the model.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from ..enums import Boundary, check_option
from .bspline import bspline_fetches

__all__ = ["BSplineVolume", "ResidualField"]


class BSplineVolume(nn.Module):
    """Cubic B-spline interpolant of a volume, evaluated at field coordinates.

    Args:
        shape: voxel shape ``(X, Y, Z)`` of the volume (the coefficient buffer's shape).
        padding: field padding ``P`` (Eq. 7) of the geometry the field coordinates refer to.
        volume: optional values ``(X, Y, Z)`` to interpolate (else zeros; load them from a checkpoint).
        boundary: ``"nearest"`` (default) reproduces the aligned ``bspline`` baseline exactly: the prefilter
            sees the volume edge-padded by 12 voxels and points beyond the outermost voxel centres are clamped
            onto them; ``"mirror"`` prefilters with mirror boundaries and continues the interpolant by
            mirroring (it scores ≈0.3 dB lower than the baseline on Colin27 box ×2, mostly on the outermost
            HR slices, which lie beyond the last LR voxel centre).

    Input points ``(..., 3)`` in field coordinates; output ``(...)``.
    """

    edge_pad = 12  # voxels of edge padding before the prefilter (as in the baselines)

    def __init__(
        self,
        shape: Sequence[int],
        padding: float | Sequence[float] = 1.0,
        volume: np.ndarray | torch.Tensor | None = None,
        boundary: str = Boundary.NEAREST,
    ) -> None:
        super().__init__()
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 2:
            raise ValueError(f"BSplineVolume needs a 3D shape with at least 2 voxels per axis, got {shape}.")
        self.boundary = check_option(boundary, Boundary, "boundary").value
        self.shape = shape
        self._pad = self.edge_pad if self.boundary == Boundary.NEAREST else 0
        pad = np.broadcast_to(np.asarray(padding, dtype=np.float64), (3,))
        n = np.asarray(shape, dtype=np.float64)
        self.register_buffer("coefficients", torch.zeros(1, 1, *(s + 2 * self._pad for s in shape)))
        # field → continuous index: u = f · (S + 2P) / 2 + (S − 1) / 2
        self.register_buffer("index_scale", torch.as_tensor((n + 2.0 * pad) / 2.0, dtype=torch.float32))
        self.register_buffer("index_shift", torch.as_tensor((n - 1.0) / 2.0, dtype=torch.float32))
        self.register_buffer("size", torch.as_tensor(n, dtype=torch.float32))
        if volume is not None:
            self.set_volume(volume)

    def set_volume(self, volume: np.ndarray | torch.Tensor) -> None:
        """Compute the B-spline coefficients of ``volume`` ``(X, Y, Z)`` (or ``(1, X, Y, Z)``)."""
        arr = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
        arr = np.asarray(arr, dtype=np.float64).reshape(self.shape)
        if self.boundary == Boundary.NEAREST:
            coeff = ndimage.spline_filter(np.pad(arr, self._pad, mode="edge"), order=3, mode="nearest")
        else:
            coeff = ndimage.spline_filter(arr, order=3, mode="mirror")
        self.coefficients.copy_(torch.as_tensor(coeff, dtype=torch.float32)[None, None])

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Interpolated values ``(...)`` at field coordinates ``(..., 3)``."""
        lead = points.shape[:-1]
        u = points.reshape(-1, 3) * self.index_scale + self.index_shift
        if self.boundary == Boundary.NEAREST:
            u = torch.minimum(torch.maximum(u, torch.zeros_like(u)), self.size - 1.0) + float(self._pad)
        g0, g1, h0, h1 = bspline_fetches(u)
        # grid_sample (align_corners=True): normalised coordinate of index h is 2 h / (S − 1) − 1; order (z, y, x)
        scale = 2.0 / (self.size + 2.0 * self._pad - 1.0)
        n0, n1 = h0 * scale - 1.0, h1 * scale - 1.0
        out = torch.zeros(u.shape[0], dtype=points.dtype, device=points.device)
        coeff = self.coefficients.to(points.dtype)
        grids, weights = [], []
        for a in range(2):
            for b in range(2):
                for c in range(2):
                    x = (n0, n1)[a][:, 0]
                    y = (n0, n1)[b][:, 1]
                    z = (n0, n1)[c][:, 2]
                    grids.append(torch.stack([z, y, x], dim=-1))
                    weights.append((g0, g1)[a][:, 0] * (g0, g1)[b][:, 1] * (g0, g1)[c][:, 2])
        grid = torch.stack(grids, dim=0).reshape(1, 8, -1, 1, 3)
        padding_mode = "border" if self.boundary == Boundary.NEAREST else "reflection"
        vals = F.grid_sample(coeff, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)
        vals = vals.reshape(8, -1)
        out = (vals * torch.stack(weights, dim=0)).sum(dim=0)
        return out.reshape(lead)


class ResidualField(nn.Module):
    """A learned field plus the cubic B-spline interpolant of the LR volume on its first output channel.

    ``raw(x) = field(x) + [prior(x), 0, …]``: use it with ``intensity_activation="identity"`` so that the
    rendered intensity is the interpolant plus a learned correction.

    Args:
        field: the learned field (points ``(..., 3)`` → ``(..., C)``); the intensity row of its last linear
            layer is zeroed so the model starts exactly at the interpolant.
        shape: LR voxel shape ``(X, Y, Z)``.
        padding: field padding ``P`` of the LR geometry.
        volume: the normalised LR volume ``(X, Y, Z)`` or ``(1, X, Y, Z)`` (optional at construction: the
            coefficients are a buffer restored from checkpoints).
        residual_scale: multiplies the learned field's intensity output (small values keep the start at the
            interpolant).
        boundary: the interpolant's boundary handling (see :class:`BSplineVolume`).
    """

    def __init__(
        self,
        field: nn.Module,
        shape: Sequence[int],
        padding: float | Sequence[float] = 1.0,
        volume: np.ndarray | torch.Tensor | None = None,
        residual_scale: float = 1.0,
        boundary: str = Boundary.NEAREST,
    ) -> None:
        super().__init__()
        self.field = field
        self.prior = BSplineVolume(shape, padding, volume, boundary)
        self.residual_scale = float(residual_scale)
        linears = [m for m in field.modules() if isinstance(m, nn.Linear)]
        if linears:  # start exactly at the interpolant: zero the intensity row of the field's output layer
            with torch.no_grad():
                linears[-1].weight[0].zero_()
                if linears[-1].bias is not None:
                    linears[-1].bias[0] = 0.0

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Raw outputs ``(..., C)`` for points ``(..., 3)``."""
        raw = self.field(points)
        base = self.prior(points).unsqueeze(-1)
        return torch.cat([base + self.residual_scale * raw[..., :1], raw[..., 1:]], dim=-1)
