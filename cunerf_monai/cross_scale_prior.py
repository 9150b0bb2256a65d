"""A prior for scans without a thick axis: the scan's own planes, degraded once more by the output factor, teach the
plane CNN what its voxels hide (self-similarity across scales, the idea of ZSSR, Shocher et al. 2018, written anew
here for volumes and kept consistent by the forward model).

An LR volume of spacing ``s_a`` per axis is to be rendered at ``q_a = s_a / r_a``. There is no sharper axis to learn
from, but the scan itself holds the same kind of structure one scale up:

1. **Pairs**: the LR volume's planes in every orientation (``H`` along a degraded axis ``a``, ``W`` along another)
   degraded along ``a`` by the footprint scaled by ``r_a`` (width ``r_a · w_a`` at spacing ``r_a · s_a``, every
   phase), interpolated back by the network's start onto the LR grid; the targets are the LR planes themselves
   (:func:`~cunerf_monai.slice_prior.degraded_pairs`). What the network learns from ``r_a · s_a → s_a`` it applies
   at ``s_a → s_a / r_a``: that scale shift is the assumption, and the gate checks it.
2. **Gate**: every :data:`~cunerf_monai.slice_prior.HOLDOUT_EVERY`-th plane of each orientation is held out; the
   network must beat the best aligned interpolation (trilinear, Keys, B-spline) on their degraded samples by
   ``min_gain`` dB, else the fit uses the field alone.
3. **Apply**: along each upsampled axis in turn (:meth:`~cunerf_monai.slice_prior.SlicePrior.apply`): the volume so
   far interpolated along the axis, the network on the planes that contain it in both orientations (their mean the
   proposal, half their difference the uncertainty), and the exact consistency correction along the axis. The
   corrections compose: the result, degraded along every axis as the LR was made, reproduces the LR voxels.

The same mechanism as the thick-slice prior (:class:`~cunerf_monai.slice_prior.SlicePrior`): other pairs, more axes.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .slice_prior import PlanePairs, PriorSettings, SlicePrior, ThickAxisGrid, degraded_pairs, held_out_slices

__all__ = ["CrossScalePrior"]


class CrossScalePrior(SlicePrior):
    """Train the cross-scale prior on one LR volume and apply it along every axis it upsamples.

    Args:
        spacing: LR voxel spacing per axis (mm).
        profile: the LR voxels' profile on every axis, ``"point"``, ``"box"`` or ``"gaussian"``.
        widths: footprint width per axis in mm (box length, Gaussian FWHM; ignored for a point).
        target_spacing: output spacing in mm, one number or one per axis; an axis is upsampled when
            ``round(s / target) ≥ 2`` (at least one must be).
        settings: :class:`~cunerf_monai.slice_prior.PriorSettings`.
        device: where the network runs (default: CPU).
        progress: show progress bars.
    """

    kind = "cross-scale"

    def __init__(
        self,
        spacing: Sequence[float],
        profile: str,
        widths: Sequence[float],
        target_spacing: float | Sequence[float],
        settings: PriorSettings | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
    ) -> None:
        self.spacing = [float(s) for s in spacing]
        self.profile = str(profile)
        self.widths = [0.0 if self.profile == "point" else float(w) for w in widths]
        targets = np.broadcast_to(np.asarray(target_spacing, dtype=np.float64), (3,))
        self.target_spacings = [float(t) for t in targets]
        self.axes = [a for a in range(3) if round(self.spacing[a] / self.target_spacings[a]) >= 2]
        if not self.axes:
            raise ValueError(f"the cross-scale prior needs an output spacing at most half the voxel spacing on some "
                             f"axis, got {self.target_spacings} for spacing {self.spacing}.")
        self.settings = settings or PriorSettings()
        self.device = torch.device(device or "cpu")
        self.progress = bool(progress)
        self.network = None
        self.result = None

    def footprint(self, axis: int) -> tuple[str, float]:
        return self.profile, self.widths[axis]

    def grids_for(self, lr_shape: Sequence[int]) -> tuple[ThickAxisGrid, ...]:
        """The output grids of the upsampled axes (in axis order)."""
        return tuple(
            ThickAxisGrid.for_profile(a, int(lr_shape[a]), self.spacing[a], self.target_spacings[a], self.profile)
            for a in self.axes
        )

    def too_small(self, lr_shape: Sequence[int]) -> bool:
        """Whether an upsampled axis holds fewer than two degraded samples of its pairs (``2 r`` voxels)."""
        return any(grid.lr_count < 2 * grid.subdivision for grid in self.grids_for(lr_shape))

    def summary(self, grids: Sequence[ThickAxisGrid]) -> str:
        parts = ", ".join(f"axis {g.axis} {g.lr_spacing:.2f} → {g.spacing:.3f} mm (×{g.subdivision})" for g in grids)
        return f"cross-scale, {self.profile} voxels: {parts}"

    def _pairs(self, lr: np.ndarray, grids: Sequence[ThickAxisGrid]) -> list[PlanePairs]:
        """Pairs from the LR planes, one :class:`PlanePairs` per (degraded axis ``a``, in-plane axis ``b``): ``H``
        along ``a`` on the LR grid, ``W`` along ``b``, stacked over the third axis (every
        :data:`~cunerf_monai.slice_prior.HOLDOUT_EVERY`-th held out); degraded by ``r_a`` times the footprint."""
        groups = []
        for grid in grids:
            a, r = grid.axis, grid.subdivision
            s, w = self.spacing[a], self.widths[a]
            for b in range(3):
                if b == a:
                    continue
                c = 3 - a - b
                planes = np.moveaxis(lr, (c, a, b), (0, 1, 2))  # (n_c, n_a, n_b)
                pairs = degraded_pairs(planes, s, s, r * s, self.profile, r * w, self._start_matrix,
                                       held_out_slices(planes.shape[0]))
                if pairs is not None:
                    groups.append(pairs)
        if not groups:
            raise ValueError("the volume is too small to make cross-scale training pairs for the prior.")
        return groups

    def as_dict(self) -> dict[str, Any]:
        st = self.settings
        return {
            "kind": self.kind,
            "axes": list(self.axes),
            "profile": self.profile,
            "widths_mm": [round(w, 4) for w in self.widths],
            "target_spacing_mm": [round(t, 4) for t in self.target_spacings],
            **self._training_dict(),
            "gate": "held-out LR planes degraded once more vs the best of trilinear/keys/bspline",
        }
