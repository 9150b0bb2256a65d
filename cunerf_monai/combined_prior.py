"""A prior for scans with a thick axis whose in-plane voxels are also to be rendered finer: the thick-slice prior
along the thick axis, then the cross-scale prior along the in-plane axes of its output.

A chest CT of 1.7 × 1.7 × 10 mm box voxels rendered at 0.84 × 0.84 × 5 mm needs both: the thick-slice prior
(:class:`~cunerf_monai.slice_prior.SlicePrior`) learns from the in-plane slices what the 10 mm slabs hide, and its
output (1.7 × 1.7 × 5 mm) has no thick axis left, only in-plane voxels that average a footprint, which the cross-scale
prior (:class:`~cunerf_monai.cross_scale_prior.CrossScalePrior`) sharpens from the scan's own planes one scale up.

- Each part keeps its own gate. A thick-slice part that misses its gate leaves the field alone (nothing runs after
  it); a cross-scale part that misses its gate leaves the thick-slice output.
- Both parts are exactly consistent with their input along the axes they upsample and the forward model is separable,
  so the composed output, degraded as the scan was made along every axis, reproduces the scan.
- A saved combined prior holds the thick-slice network first, then the cross-scale stages' networks.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .cross_scale_prior import CrossScalePrior
from .slice_prior import (
    PriorResult,
    PriorVolume,
    SlicePrior,
    ThickAxisGrid,
    carry_along,
    in_quadrature,
    merged_runs,
    prior_volume,
)

__all__ = ["SliceCrossScalePrior"]

logger = logging.getLogger(__name__)


class SliceCrossScalePrior(SlicePrior):
    """The thick-slice prior ``slices`` along the thick axis, then the cross-scale prior ``cross`` along the in-plane
    axes of its output (see the module docstring).

    Args:
        slices: the thick-slice prior of the scan.
        cross: a cross-scale prior over the thick-slice output's voxels (the thick axis at the thick-slice output
            spacing, not upsampled; the in-plane axes as the scan's), with the same settings, device and progress.
    """

    kind = "slices+cross-scale"

    def __init__(self, slices: SlicePrior, cross: CrossScalePrior) -> None:
        if slices.axis in cross.axes:
            raise ValueError(f"the cross-scale part upsamples the thick axis {slices.axis}; it takes the in-plane axes.")
        self.slices, self.cross = slices, cross
        self.spacing, self.axis, self.inplane = slices.spacing, slices.axis, slices.inplane
        self._start_runs(slices.settings, slices.device, slices.progress)

    # ------------------------------------------------------------------ the two parts' grids
    def _after_slices(self, lr_shape: Sequence[int]) -> tuple[int, ...]:
        """The shape of the thick-slice output of an LR volume of ``lr_shape``."""
        grid = self.slices.grid_for(lr_shape)
        return tuple(grid.count if a == self.axis else int(n) for a, n in enumerate(lr_shape))

    def grids_for(self, lr_shape: Sequence[int]) -> tuple[ThickAxisGrid, ...]:
        """The thick axis' grid, then the in-plane axes' (their LR voxels are the scan's)."""
        return self.slices.grids_for(lr_shape) + self.cross.grids_for(self._after_slices(lr_shape))

    def too_small(self, lr_shape: Sequence[int]) -> bool:
        """Whether the thick-slice part cannot learn from a volume of ``lr_shape`` (a cross-scale part too small for
        its output is skipped by :meth:`run`: the thick-slice output alone)."""
        return self.slices.too_small(lr_shape)

    def footprint(self, axis: int) -> tuple[str, float]:
        return self.slices.footprint(axis) if axis == self.axis else self.cross.footprint(axis)

    def summary(self, grids: Sequence[ThickAxisGrid]) -> str:
        return f"{self.slices.summary(grids[:1])}, then {self.cross.summary(grids[1:])}"

    # ------------------------------------------------------------------ sources
    def use(self, data: Sequence[PriorVolume] = (), pretrained: Mapping[str, Any] | None = None) -> "SliceCrossScalePrior":
        """As :meth:`SlicePrior.use`; a saved combined prior is split between the parts (its first network and task
        to the thick-slice part, the rest to the cross-scale part)."""
        super().use(data, pretrained)
        parts: list[Mapping[str, Any] | None] = [None, None]
        if pretrained is not None:
            learned = dict(pretrained["learned"])
            if set(learned) == {"slices", "cross_scale"}:
                networks = list(pretrained["networks"])
                parts = [{**pretrained, "learned": learned["slices"], "networks": networks[:1]},
                         {**pretrained, "learned": learned["cross_scale"], "networks": networks[1:]}]
            else:  # another kind of prior: refused by run's check, which names both tasks
                parts = [pretrained, pretrained]
        self.slices.use(data, parts[0])
        self.cross.use(data, parts[1])
        return self

    def learned(self, grids: Sequence[ThickAxisGrid]) -> dict[str, Any]:
        """What each part's networks map (:meth:`SlicePrior.learned`), keyed ``slices`` and ``cross_scale``."""
        return {"slices": self.slices.learned(grids[:1]), "cross_scale": self.cross.learned(grids[1:])}

    # ------------------------------------------------------------------ run
    def run(self, lr: torch.Tensor | np.ndarray) -> PriorResult:
        """The thick-slice prior on ``lr`` ``(X, Y, Z)``, then (if it passed its gate, and the in-plane axes hold
        enough voxels) the cross-scale prior on its output; the result holds the output of the last part applied."""
        vol = prior_volume(lr)
        after = self._after_slices(vol.shape)
        if self.pretrained is not None:
            self.check_pretrained(self.learned(self.grids_for(vol.shape)))
        logger.info("prior: the thick axis first (thick-slice prior), then the in-plane axes (cross-scale prior)")
        first = self.slices.run(vol)
        if first.fused is None:
            return self._compose(vol, first, None)
        if self.cross.too_small(after):
            logger.warning(f"prior: the thick-slice output alone (in-plane {[after[a] for a in self.inplane]} voxels are "
                           f"too few for the cross-scale prior's pairs)")
            return self._compose(vol, first, None)
        return self._compose(vol, first, self.cross.run(first.fused))

    def _compose(self, vol: torch.Tensor, first: PriorResult, second: PriorResult | None) -> PriorResult:
        """One result of the parts run (``second`` ``None``: the cross-scale part did not run): the grids of the parts
        applied, the uncertainty of the thick-slice part carried onto the in-plane grids and added in quadrature,
        times summed, every network and stage record; ``learned`` names both parts' tasks, so a saved prior is one for
        scans needing both."""
        runs = [first] if second is None else [first, second]
        seconds, loss, records = merged_runs(runs)
        networks = [w for r in runs for w in r.networks]
        learned = {"slices": first.learned,
                   "cross_scale": self.cross.learned(self.cross.grids_for(self._after_slices(vol.shape)))}
        if first.fused is None or second is None or second.fused is None:  # the output of the thick-slice part, if any
            if second is not None:
                logger.info("prior: the cross-scale part missed its gate; the thick-slice output alone")
            return PriorResult(first.fused, first.proposal, first.uncertainty, first.grids, first.consistency_psnr, loss,
                               seconds, first.inplane_gain, networks, learned, records)
        grids = first.grids + second.grids
        uncertainty = in_quadrature(carry_along(first.uncertainty, second.grids), second.uncertainty)
        consistency = self.consistency_psnr(second.fused, vol, grids)
        logger.info(f"prior: both parts applied, consistency {consistency:.1f} dB")
        return PriorResult(second.fused, second.proposal, uncertainty, grids, consistency, loss, seconds,
                           min(first.inplane_gain, second.inplane_gain), networks, learned, records)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "slices": self.slices.as_dict(), "cross_scale": self.cross.as_dict()}
