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
2. **Gate**: a central slab of the volume (:func:`held_out_slab`) is held out of every training plane; the network
   must beat the best aligned interpolation (trilinear, Keys, B-spline) on the slab's planes' degraded samples by
   ``min_gain`` dB, else the fit uses the field alone.
3. **Apply**: along each upsampled axis in turn (:meth:`~cunerf_monai.slice_prior.SlicePrior.apply`): the volume so
   far interpolated along the axis, the network on the planes that contain it in both orientations (their mean the
   proposal, half their difference the uncertainty), and the exact consistency correction along the axis. The
   corrections compose: the result, degraded along every axis as the LR was made, reproduces the LR voxels.
4. **Stages**: a factor of 4 is taken as two ×2 stages (:func:`stage_factors`), each a cross-scale prior of its own
   trained on the previous stage's output, whose voxels are the sub-voxels of the stage before (box widths divided
   by the stage's factor). Measured on Colin27 3D box ×4: one ×4 stage +0.69 dB over B-spline (the ×4 scale shift
   from 16 mm to 4 mm does not hold), two ×2 stages +1.48 dB. Stages stop at the first that misses its gate; the
   output then holds the stages before it.

The same mechanism as the thick-slice prior (:class:`~cunerf_monai.slice_prior.SlicePrior`): other pairs, more axes.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch

from .axis_operators import apply_along_axis, consistent_correction
from .slice_prior import (
    HOLDOUT_EVERY,
    PlanePairs,
    PriorResult,
    PriorSettings,
    SlicePrior,
    ThickAxisGrid,
    carry_along,
    degraded_pairs,
    in_quadrature,
    merged_runs,
    prior_volume,
)

__all__ = ["CrossScalePrior", "stage_factors", "held_out_slab"]

logger = logging.getLogger(__name__)


def held_out_slab(count: int, every: int = HOLDOUT_EVERY) -> tuple[int, int]:
    """``(lo, hi)``: the central slab of ``count // every`` slices (at least one; none for a single slice) that the
    cross-scale prior holds out of training to judge its network."""
    if count < 2:
        return 0, 0
    size = max(1, count // every)
    lo = (count - size) // 2
    return lo, lo + size


def stage_factors(subdivisions: Sequence[int]) -> list[list[int]]:
    """The factor per axis of each stage: ×2 while an axis' remaining factor is even, then the rest at once
    (``4 → [2], [2]``; ``3 → [3]``; ``6 → [2], [3]``; ``1``: the axis is not upsampled)."""
    remaining, stages = [int(r) for r in subdivisions], []
    while any(r > 1 for r in remaining):
        factors = [2 if r % 2 == 0 else r for r in remaining]
        stages.append(factors)
        remaining = [r // f for r, f in zip(remaining, factors)]
    return stages


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
        self._start_runs(settings, device, progress)

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
        """Pairs from the LR planes, ``H`` along a degraded axis ``a`` on the LR grid, degraded by ``r_a`` times the
        footprint, in both orientations of planes containing ``a``.

        The gate's planes are a slab (:func:`held_out_slab`) across the axis ``h`` with the most voxels, and no
        training plane holds a voxel of it: planes stacked across ``h`` hold out the slab's (the gate scores them);
        planes spanning ``h`` are cut into the parts before and after the slab (along ``W``, or along ``H`` when
        ``a`` is ``h``), every part its own group.
        """
        h = int(np.argmax(lr.shape))
        lo, hi = held_out_slab(lr.shape[h])
        groups = []
        for grid in grids:
            a, r = grid.axis, grid.subdivision
            s, w = self.spacing[a], self.widths[a]

            def add(planes: np.ndarray, held: np.ndarray) -> None:
                pairs = degraded_pairs(planes, s, s, r * s, self.profile, r * w, self._start_matrix, held)
                if pairs is not None:
                    groups.append(pairs)

            for b in range(3):
                if b == a:
                    continue
                c = 3 - a - b
                planes = np.moveaxis(lr, (c, a, b), (0, 1, 2))  # (n_c, n_a, n_b)
                if c == h:  # stacked across h: the slab's planes are the held-out ones
                    held = np.zeros(planes.shape[0], dtype=bool)
                    held[lo:hi] = True
                    add(planes, held)
                    continue
                cut = 1 if a == h else 2  # the axis of the planes (H or W) that spans h
                for part in (planes.take(range(0, lo), axis=cut), planes.take(range(hi, planes.shape[cut]), axis=cut)):
                    if min(part.shape[1:]) >= 2:
                        add(part, np.zeros(part.shape[0], dtype=bool))
        if not groups:
            raise ValueError("the volume is too small to make cross-scale training pairs for the prior.")
        return groups

    # ------------------------------------------------------------------ stages
    def _stage_priors(self, lr_shape: Sequence[int]) -> list[tuple["CrossScalePrior", tuple[int, ...]]]:
        """One single-stage prior per stage (:func:`stage_factors`) with the LR shape it takes: after the first, its
        voxels are the previous stage's outputs, box means of their cells (spacing divided by the factor)."""
        grids = {g.axis: g.subdivision for g in self.grids_for(lr_shape)}
        plan = stage_factors([grids.get(a, 1) for a in range(3)])
        spacing, widths, shape, out = list(self.spacing), list(self.widths), [int(n) for n in lr_shape], []
        profile = self.profile
        for k, factors in enumerate(plan):
            stage = CrossScalePrior(spacing, profile, widths, [s / f for s, f in zip(spacing, factors)],
                                    self.settings, self.device, self.progress)
            stage.use(self.data, self.pretrained)
            stage.stage_index, stage.check_stages = k, len(plan) == 1
            out.append((stage, tuple(shape)))
            spacing = [s / f for s, f in zip(spacing, factors)]
            # a stage's output voxels are the means of their cells (the fine grid of the forward model)
            profile, widths = "box", list(spacing)
            shape = [n * f for n, f in zip(shape, factors)]
        return out

    def learned(self, grids: Sequence[ThickAxisGrid]) -> dict[str, Any]:
        """As :meth:`SlicePrior.learned`, with one entry of ``stages`` per stage."""
        lr_shape = [1, 1, 1]
        for g in grids:
            lr_shape[g.axis] = g.lr_count
        stages = self._stage_priors(lr_shape)
        if len(stages) == 1:
            return super().learned(grids)
        tasks = [stage.learned(stage.grids_for(shape))["stages"][0] for stage, shape in stages]
        return {**super().learned(grids), "stages": tasks}

    def run(self, lr: torch.Tensor | np.ndarray) -> PriorResult:
        """Train (or load) and apply the stages in turn on ``lr`` ``(X, Y, Z)``; the output grids are those of the
        stages applied (their factors multiplied), the fused volume the last applied stage's."""
        vol = prior_volume(lr)
        stages = self._stage_priors(tuple(vol.shape))
        if len(stages) == 1:
            return self._single(vol)
        if self.pretrained is not None:
            self.check_pretrained(self.learned(self.grids_for(vol.shape)))
        current, results = vol, []
        for k, (stage, _) in enumerate(stages):
            logger.info(f"prior: stage {k + 1} of {len(stages)}")
            result = stage._single(current)
            results.append(result)
            if result.fused is None:
                break
            current = result.fused
        return self._compose(vol, stages, results)

    def make_exact(self, x: torch.Tensor, lr: torch.Tensor, grids: Sequence[ThickAxisGrid]) -> torch.Tensor:
        """``x + P (y − A x)`` with ``A`` the forward model from ``grids`` to the LR along every axis at once and
        ``P`` its exact right inverse per axis: the stages are each consistent with their input, and this makes the
        whole consistent with the scan's own profile (a Gaussian, or a box other than the voxel, is not the box
        of cells a later stage assumes)."""
        residual = lr.to(x.dtype) - self.degrade(x, grids)
        for grid in grids:
            correction = consistent_correction(self.forward_operator(grid), self.settings.covariance_width)
            residual = apply_along_axis(correction, residual, grid.axis)
        return x + residual.to(x.dtype)

    def _single(self, vol: torch.Tensor) -> PriorResult:
        """One stage: the mechanism's run (:meth:`SlicePrior.run`)."""
        return SlicePrior.run(self, vol)

    def _compose(self, vol: torch.Tensor, stages: list, results: list[PriorResult]) -> PriorResult:
        """The staged result: applied stages' factors multiplied into output grids of the LR, uncertainties carried
        onto the last grid (linear interpolation) and added in quadrature, stage times summed."""
        applied = [r for r in results if r.fused is not None]
        seconds, loss, records = merged_runs(results)
        networks = [w for r in results for w in r.networks]
        trained = [stage.learned(stage.grids_for(shape))["stages"][0] for (stage, shape), _ in zip(stages, results)]
        learned = {**SlicePrior.learned(self, self.grids_for(vol.shape)), "stages": trained}
        if not applied:
            first = results[0]
            return PriorResult(None, None, None, first.grids, float("nan"), loss, seconds, first.inplane_gain,
                               networks, learned, records)
        total = [1, 1, 1]
        for r in applied:
            for g in r.grids:
                total[g.axis] *= g.subdivision
        grids = tuple(
            ThickAxisGrid.for_profile(a, int(vol.shape[a]), self.spacing[a], self.spacing[a] / total[a], self.profile)
            for a in range(3) if total[a] > 1
        )
        uncertainty = applied[0].uncertainty
        for r in applied[1:]:
            uncertainty = in_quadrature(carry_along(uncertainty, r.grids), r.uncertainty)
        fused = self.make_exact(applied[-1].fused, vol, grids)
        gain = min(r.inplane_gain for r in applied)
        consistency = self.consistency_psnr(fused, vol, grids)
        logger.info(f"prior: {len(applied)} of {len(results)} stages applied, consistency {consistency:.1f} dB")
        return PriorResult(fused, applied[-1].proposal, uncertainty, grids, consistency, loss, seconds, gain,
                           networks, learned, records)

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
