"""A prior learned from the scan itself for its thick axis: its sharp in-plane detail teaches a plane CNN what thick
slices hide, and the forward model keeps the result consistent with every LR voxel.

A thick-slice scan (voxel spacing ``s`` along one axis ``t``, in-plane spacing ``p`` ≪ ``s``) is sharp in-plane.
The pairs come from its in-plane slices, degraded along one in-plane axis exactly as the scanner degraded ``t``,
matched in millimetres (the idea of SMORE, Zhao et al. 2021, and ECLARE, Remedios et al. 2025; written anew here):

1. **Target grid** along ``t``: spacing ``q = s / r`` (``r`` whole; ``q`` the requested output spacing, else the
   in-plane spacing), placed as the forward model implies (:class:`ThickAxisGrid`). A target in-plane image is the
   slice resampled along its axis ``a`` to spacing ``q`` by partial volume (unchanged when ``q = p``).
2. **Pairs**: the target degraded along ``a`` by the thick axis' profile (box / Gaussian of the slice width, or a
   point) at spacing ``s``, every phase of the ``q`` grid, then Keys-interpolated back to the ``q`` grid (the same
   operators, :mod:`~cunerf_monai.axis_operators`, that act along ``t``).
3. **Network**: :class:`~cunerf_monai.networks.planenet.PlaneResidualNet` learns ``target ≈ input + body(input)``.
4. **Proposal**: the LR volume Keys-interpolated along ``t`` to the ``q`` grid; the network applied to the planes
   that contain ``t`` in both orientations (``t`` with either in-plane axis); their mean is the proposal, half
   their difference the per-voxel **uncertainty** (where the two orientations disagree, detail was inferred).
5. **Consistency**: the proposal corrected by ``x + P (y − A x)``, ``A`` the forward model along ``t`` and ``P``
   its smooth exact right inverse (:func:`~cunerf_monai.axis_operators.consistent_correction`): the result,
   degraded as the LR was made, reproduces the LR voxels to float precision.

The fused volume becomes the grid field's samples (one per output voxel), so the field renders it at any scale,
spacing, reference grid or oblique plane like any fitted field.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .axis_operators import (
    apply_along_axis,
    baseline_interpolation_matrices,
    box_resampling_matrix,
    consistent_correction,
    bspline_interpolation_matrix,
    consistent_interpolation,
    footprint_matrix,
    interpolation_matrix,
)
from .enums import PriorMode, PriorStart, check_option, option_names
from .networks.planenet import PlaneResidualNet

__all__ = [
    "ThickAxisGrid",
    "PriorSettings",
    "PriorResult",
    "SlicePrior",
    "thick_axis",
    "prior_for",
    "describe",
    "run_prior",
    "field_grid",
    "render_forward",
    "field_iterations",
    "prior_metrics",
    "FIELD_ITERATIONS_AFTER_PRIOR",
    "THICK_RATIO",
    "PRIOR_MODES",
    "START_OPERATORS",
    "PRIOR_FILE",
    "PRIOR_MODEL_FILE",
    "PriorVolume",
    "load_prior_data",
    "load_prior_model",
    "save_prior_model",
    "degraded_pairs",
    "carry_along",
    "in_quadrature",
    "PlanePairs",
    "HOLDOUT_EVERY",
    "held_out_slices",
    "PriorRecord",
    "UNCERTAINTY_FILE",
    "render_uncertainty",
    "write_uncertainty",
    "grid_model",
    "fitted_prior",
    "prior_state",
]

logger = logging.getLogger(__name__)

#: an axis is thick when its spacing is at least this many times the finest spacing (as in the forward model)
THICK_RATIO = 1.5
#: ``auto``: the prior runs when the scan has a thick axis; ``none``: never (the field alone)
PRIOR_MODES = option_names(PriorMode)
#: test-time flips of the planes (dims of ``(B, 1, H, W)``) averaged per setting of :attr:`PriorSettings.flips`
FLIP_SETS = {1: [()], 2: [(), (2, 3)], 4: [(), (2,), (3,), (2, 3)]}
#: the network's input along the thick axis (see :class:`PriorSettings`)
START_OPERATORS = option_names(PriorStart)
#: every this-many-th in-plane slice is held out of training to judge the network (:meth:`SlicePrior.inplane_gain`)
HOLDOUT_EVERY = 8


class PlanePairs(NamedTuple):
    """The pairs of one degraded in-plane axis (``H`` along it on the output grid, ``W`` along the other axis).

    Attributes:
        inputs: degraded and interpolated back by the network's start ``(N, H, W)``.
        targets: the in-plane slices on the output grid ``(N, H, W)``.
        held: ``(N,)`` bool, planes of the slices held out of training (every :data:`HOLDOUT_EVERY`-th).
        baselines: ``{name: (N_held, H, W)}``, the held-out planes' degraded samples interpolated by each aligned
            baseline (:func:`~cunerf_monai.axis_operators.baseline_interpolation_matrices`).
    """

    inputs: np.ndarray
    targets: np.ndarray
    held: np.ndarray
    baselines: dict[str, np.ndarray]

    def training(self) -> tuple[np.ndarray, np.ndarray]:
        """``(inputs, targets)`` of the planes not held out."""
        return self.inputs[~self.held], self.targets[~self.held]


#: planes per orientation taken from each HR volume of ``prior_data`` (evenly spread; bounds memory and time)
DATA_PLANES = 32


class PriorVolume(NamedTuple):
    """An HR volume of ``prior_data``: ``name`` (its file), ``volume`` ``(X, Y, Z)`` min–max normalised, ``spacing``
    (mm per axis)."""

    name: str
    volume: np.ndarray
    spacing: tuple[float, float, float]


def held_out_slices(count: int, every: int = HOLDOUT_EVERY) -> np.ndarray:
    """``(count,)`` bool: the slices held out of training, every ``every``-th from the middle of the first run (the
    middle slice when there are fewer than ``every``, none for a single slice)."""
    held = np.zeros(count, dtype=bool)
    if count >= every:
        held[every // 2 :: every] = True
    elif count >= 2:
        held[count // 2] = True
    return held


def thick_axis(spacing: Sequence[float], ratio: float = THICK_RATIO) -> int | None:
    """The thick axis of a voxel spacing: the coarsest axis if it is at least ``ratio`` × the finest *and* the two
    other axes are within ``ratio`` of each other (a plane to learn from); else ``None`` (isotropic-like)."""
    s = np.asarray(spacing, dtype=np.float64)
    order = np.argsort(s)
    if s[order[2]] < ratio * s[order[0]] or s[order[1]] >= ratio * s[order[0]]:
        return None
    return int(order[2])


@dataclass(frozen=True)
class ThickAxisGrid:
    """The output grid along the thick axis, in LR index units of that axis.

    Attributes:
        axis: the thick axis (0, 1 or 2).
        lr_count: LR voxels along it.
        subdivision: ``r``, output samples per LR spacing.
        origin: LR index of output sample 0.
        count: output samples.
        lr_spacing: the LR spacing ``s`` along the axis (mm).
    """

    axis: int
    lr_count: int
    subdivision: int
    origin: float
    count: int
    lr_spacing: float

    @classmethod
    def for_profile(cls, axis: int, lr_count: int, lr_spacing: float, target_spacing: float, profile: str) -> "ThickAxisGrid":
        """``r = round(s / target)`` output samples per LR voxel. A box or Gaussian LR voxel is split into its
        ``r`` sub-slabs (the tiling grid: output samples at LR index ``k + (j − (r − 1)/2) / r``); a point-sampled
        LR keeps its samples on the grid (output samples at ``k + j / r``, the LR centres among them)."""
        r = max(1, int(round(float(lr_spacing) / float(target_spacing))))
        origin = 0.0 if profile == "point" else -(r - 1) / (2.0 * r)
        return cls(int(axis), int(lr_count), r, origin, int(lr_count) * r, float(lr_spacing))

    @property
    def step(self) -> float:
        """Output spacing in LR voxels, ``1 / r``."""
        return 1.0 / self.subdivision

    @property
    def spacing(self) -> float:
        """Output spacing in mm, ``s / r``."""
        return self.lr_spacing / self.subdivision

    def positions(self) -> np.ndarray:
        """Output sample positions ``(count,)`` in LR index units."""
        return self.origin + self.step * np.arange(self.count, dtype=np.float64)

    def as_dict(self) -> dict[str, Any]:
        return {"axis": self.axis, "subdivision": self.subdivision, "origin": self.origin, "count": self.count,
                "spacing_mm": round(self.spacing, 4)}


@dataclass
class PriorSettings:
    """How the prior is trained and applied.

    Attributes:
        steps: training steps of the plane network per ×2 of upsampling (:meth:`SlicePrior.training_steps`): a
            ×2 stage trains ``steps``, a ×4 thick-slice prior twice as many (on the ×4 slice-axis box rows 600 steps
            left Colin27 at +2.19 dB and the chest CT at +0.89 dB, 1200 steps gave +3.11 and +1.21).
        batch_size: patches per step.
        patch: patch edge (pixels).
        channels, layers: the network's size (:class:`~cunerf_monai.networks.planenet.PlaneResidualNet`).
        learning_rate: Adam's initial rate (cosine decay to 1 % of it).
        covariance_width: smoothness of the consistency correction, in output samples (``0``: an even spread).
        chunk: planes per network call when applying it.
        seed: seed of the patch draws and the network's initialisation.
        flips: test-time flips averaged per plane: 1 (none), 2 (none and both axes) or 4 (each axis, both).
        start: the network's input along the thick axis: ``"auto"`` (cubic B-spline interpolation for a point
            profile, Keys for a box or Gaussian), ``"keys"``, ``"bspline"`` or ``"consistent"`` (the cubic
            interpolant whose footprint means are the LR voxels, what the grid field alone converges to). Measured
            on Colin27 slice-axis rows (600 steps): box ×4, ``keys`` +2.0 dB over B-spline, ``consistent`` +0.5 dB
            (the deconvolved start amplifies aliasing the network then cannot undo); point ×2, ``keys`` −0.66 dB:
            Keys starts 1 dB below B-spline on this MRI, so the point profile starts from B-spline.
        min_gain: the prior steps aside (the field alone) unless the trained network beats the best aligned
            interpolation (trilinear, Keys or B-spline) by at least this many dB on in-plane planes held out of its
            training (:meth:`SlicePrior.inplane_gain`).
    """

    steps: int = 600
    batch_size: int = 16
    patch: int = 64
    channels: int = 32
    layers: int = 8
    learning_rate: float = 1e-3
    covariance_width: float = 1.0
    chunk: int = 16
    seed: int = 0
    start: str = "auto"
    min_gain: float = 0.1
    flips: int = 1

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "patch", "channels", "layers", "chunk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"prior {name} must be a positive integer, got {value!r}.")
        if self.layers < 2:
            raise ValueError(f"prior layers must be at least 2, got {self.layers}.")
        if not self.learning_rate > 0:
            raise ValueError(f"prior learning_rate must be positive, got {self.learning_rate!r}.")
        if self.flips not in FLIP_SETS:
            raise ValueError(f"prior flips must be one of {sorted(FLIP_SETS)}, got {self.flips!r}.")
        self.start = check_option(self.start, PriorStart, "prior start")
        if not self.covariance_width >= 0:
            raise ValueError(f"prior covariance_width must be non-negative, got {self.covariance_width!r}.")


@dataclass
class PriorResult:
    """What :meth:`SlicePrior.run` returns (volumes with the upsampled axes on their output grids; ``None`` when the
    network missed ``min_gain`` and the prior was not applied).

    Attributes:
        fused: the consistent result ``(X', Y', Z')``.
        proposal: the network's proposal before the (last) correction ``(X', Y', Z')``.
        uncertainty: half the disagreement of the two orientations ``(X', Y', Z')``.
        grids: the output grids of the axes the prior upsampled, in the order it upsampled them.
        consistency_psnr: PSNR (dB) of the fused volume degraded by the forward model against the LR volume.
        train_loss: mean L1 loss of the last tenth of the training steps.
        seconds: wall time per stage (``pairs``, ``train``, ``apply``).
        inplane_gain: PSNR gain (dB) of the network over the best aligned interpolation on held-out in-plane planes
            (:meth:`SlicePrior.inplane_gain`).
        networks: the plane networks' weights (CPU), one per stage (the cross-scale prior upsamples ×4 as two ×2
            stages), what a saved prior (:data:`PRIOR_MODEL_FILE`) holds.
        learned: what the networks map, in output pixels (:meth:`SlicePrior.learned`).
        stages: per stage: its factors, held-out gain, training loss and steps (``train_steps``; ``None`` for a loaded
            network; one stage for the thick-slice prior).
    """

    fused: torch.Tensor | None
    proposal: torch.Tensor | None
    uncertainty: torch.Tensor | None
    grids: tuple[ThickAxisGrid, ...]
    consistency_psnr: float
    train_loss: float
    seconds: dict[str, float] = field(default_factory=dict)
    inplane_gain: float = float("nan")
    networks: list[dict[str, torch.Tensor]] = field(default_factory=list)
    learned: dict[str, Any] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)


def degraded_pairs(
    images: np.ndarray,
    pixel: float,
    target: float,
    lr_spacing: float,
    profile: str,
    width: float,
    start_matrix: Any,
    held: np.ndarray,
) -> PlanePairs | None:
    """Pairs from sharp planes degraded along their first axis as the LR was made along the axis to upsample.

    Args:
        images: ``(N, n, W)`` sharp planes, spacing ``pixel`` (mm) along axis 1.
        pixel: their spacing along the degraded axis (mm).
        target: the output spacing ``q`` (mm): the targets are the planes resampled to it by partial volume
            (unchanged when ``q`` equals ``pixel``).
        lr_spacing: ``s``, the spacing of the degraded samples (mm), ``r = round(s / q)`` output samples apart.
        profile, width: the footprint of a degraded sample (``point``, ``box`` or ``gaussian``; width in mm).
        start_matrix: ``(centres, positions, spacing, width) → (n_out, n_lr)``, the network's input operator.
        held: ``(N,)`` bool, the planes held out of training.

    Returns:
        :class:`PlanePairs` over every phase of the ``q`` grid (``H`` = the ``q`` grid), or ``None`` when a plane is
        shorter than two degraded samples.
    """
    s, q = float(lr_spacing), float(target)
    r = max(1, int(round(s / q)))
    n = images.shape[1]
    src = pixel * np.arange(n)
    count = max(2, int(math.floor(n * pixel / q + 1e-6)))
    dst = src[0] - pixel / 2.0 + q / 2.0 + q * np.arange(count)  # the q grid tiling the plane's extent
    resample = np.eye(n) if abs(q - pixel) < 1e-6 * pixel else box_resampling_matrix(src, pixel, dst, q)
    targets = np.einsum("ij,sjw->siw", resample, images)
    offset = 0.0 if profile == "point" else (r - 1) * q / 2.0
    inputs, outs, holds = [], [], []
    baselines: dict[str, list[np.ndarray]] = {}
    for phase in range(r):
        first = dst[0] + offset + phase * q
        centres = first + s * np.arange(int(math.floor((dst[-1] - first) / s)) + 1)
        if centres.size < 2:
            continue
        a_mat = footprint_matrix(centres, dst, q, profile, width)
        inputs.append(np.einsum("ij,sjw->siw", start_matrix(centres, dst, q, width) @ a_mat, targets))
        outs.append(targets)
        holds.append(held)
        for name, b_mat in baseline_interpolation_matrices(centres, dst).items():
            baselines.setdefault(name, []).append(np.einsum("ij,sjw->siw", b_mat @ a_mat, targets[held]))
    if not inputs:
        return None
    return PlanePairs(
        np.concatenate(inputs).astype(np.float32),
        np.concatenate(outs).astype(np.float32),
        np.concatenate(holds),
        {name: np.concatenate(v).astype(np.float32) for name, v in baselines.items()},
    )


def carry_along(values: torch.Tensor, grids: Sequence[ThickAxisGrid]) -> torch.Tensor:
    """``values`` on the LR grid of ``grids`` carried onto their output grids by linear interpolation along each
    grid's axis (an uncertainty map onto a finer grid)."""
    for grid in grids:
        linear = baseline_interpolation_matrices(np.arange(grid.lr_count, dtype=np.float64), grid.positions())["trilinear"]
        values = apply_along_axis(linear, values, grid.axis)
    return values


def in_quadrature(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``sqrt(first² + second²)`` in ``second``'s dtype: two independent spreads combined."""
    return torch.sqrt(first.to(second.dtype) ** 2 + second**2)


def prior_volume(lr: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``lr`` as a float32 CPU tensor ``(X, Y, Z)``, what a prior's ``run`` takes.

    Raises:
        ValueError: not three-dimensional.
    """
    vol = torch.as_tensor(np.asarray(lr, dtype=np.float32)) if not isinstance(lr, torch.Tensor) else lr.float().cpu()
    if vol.ndim != 3:
        raise ValueError(f"the prior takes a 3D volume (X, Y, Z), got shape {tuple(vol.shape)}.")
    return vol


def merged_runs(results: Sequence[PriorResult]) -> tuple[dict[str, float], float, list[dict[str, Any]]]:
    """What the runs of several stages or parts add up to: their times per step summed, the mean of their training
    losses (NaN when one was loaded, not trained) and their stage records numbered ``stage`` 1, 2, … in turn."""
    seconds: dict[str, float] = {}
    for r in results:
        for key, value in r.seconds.items():
            seconds[key] = seconds.get(key, 0.0) + value
    losses = [r.train_loss for r in results]
    loss = float(np.mean(losses)) if all(math.isfinite(v) for v in losses) else float("nan")
    records = [{**record, "stage": k + 1} for k, record in enumerate(rec for r in results for rec in r.stages)]
    return seconds, loss, records


class SlicePrior:
    """Train the in-plane prior on one LR volume and apply it through-plane (see the module docstring). The base of
    :class:`~cunerf_monai.cross_scale_prior.CrossScalePrior` (one mechanism, other pairs).

    Args:
        spacing: LR voxel spacing per axis (mm).
        profile: the thick axis' profile, ``"point"``, ``"box"`` or ``"gaussian"``.
        width: its footprint width in mm (box length, Gaussian FWHM; ignored for a point).
        target_spacing: output spacing along the thick axis in mm (default: the finest in-plane spacing). The
            output grid has ``round(s / target)`` samples per LR voxel, at least one.
        settings: :class:`PriorSettings`.
        device: where the network runs (default: CPU).
        progress: show progress bars.
    """

    kind = "slices"

    def __init__(
        self,
        spacing: Sequence[float],
        profile: str,
        width: float,
        target_spacing: float | None = None,
        settings: PriorSettings | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
    ) -> None:
        self.spacing = [float(s) for s in spacing]
        axis = thick_axis(self.spacing)
        if axis is None:
            raise ValueError(f"the prior needs one thick axis (≥ {THICK_RATIO}× the in-plane spacing), got {self.spacing}.")
        self.axis = axis
        self.inplane = [a for a in range(3) if a != axis]
        self.profile = str(profile)
        self.width = float(width) if profile != "point" else 0.0
        finest = min(self.spacing[a] for a in self.inplane)
        self.target_spacing = max(float(target_spacing or finest), finest)
        self._start_runs(settings, device, progress)

    def _start_runs(self, settings: PriorSettings | None, device: torch.device | str | None, progress: bool) -> None:
        """How the network is trained and where it runs; no network and no result yet."""
        self.settings = settings or PriorSettings()
        self.device = torch.device(device or "cpu")
        self.progress = bool(progress)
        self.network: PlaneResidualNet | None = None
        #: the last result :func:`run_prior` got for this prior (applied or not; ``None`` before or if too small)
        self.result: PriorResult | None = None

    # ------------------------------------------------------------------ pairs
    def _pairs(self, lr: np.ndarray, grids: Sequence[ThickAxisGrid]) -> list[PlanePairs]:
        """Training pairs, one :class:`PlanePairs` per in-plane axis degraded (``H`` along it on the ``q`` grid,
        ``W`` along the other in-plane axis), every phase of the ``q`` grid; the planes of every
        :data:`HOLDOUT_EVERY`-th in-plane slice are held out, with their aligned-baseline interpolations."""
        slices = np.moveaxis(lr, self.axis, 0)  # (n_t, n_a, n_b): in-plane slices
        held = held_out_slices(slices.shape[0])
        groups = []
        for k, a in enumerate(self.inplane):
            images = slices if k == 0 else np.swapaxes(slices, 1, 2)  # degraded in-plane axis first
            pairs = degraded_pairs(images, self.spacing[a], grids[0].spacing, grids[0].lr_spacing, self.profile, self.width,
                                   self._start_matrix, held)
            if pairs is not None:
                groups.append(pairs)
        if not groups:
            raise ValueError("the in-plane slices are too small to make training pairs for the prior.")
        return groups

    def _start_matrix(self, lr_positions: np.ndarray, fine_positions: np.ndarray, fine_spacing: float, width: float) -> np.ndarray:
        """The network's input operator ``(n_fine, n_lr)`` from LR samples (positions and width in one unit)."""
        start = self.start
        if start == "keys":
            return interpolation_matrix(lr_positions, fine_positions)
        if start == "bspline":
            return bspline_interpolation_matrix(lr_positions, fine_positions)
        return consistent_interpolation(
            interpolation_matrix(lr_positions, fine_positions),
            footprint_matrix(lr_positions, fine_positions, fine_spacing, self.profile, width),
        )

    def as_dict(self) -> dict[str, Any]:
        """The prior's settings as JSON (see :func:`describe`)."""
        return {
            "kind": self.kind,
            "axis": self.axis,
            "profile": self.profile,
            "width_mm": round(self.width, 4),
            "target_spacing_mm": round(self.target_spacing, 4),
            **self._training_dict(),
            "gate": "held-out in-plane planes vs the best of trilinear/keys/bspline",
        }

    def _training_dict(self) -> dict[str, Any]:
        """How the network is trained and applied, as JSON."""
        st = self.settings
        return {
            # "steps_per": a run of an earlier release, whose steps were a total, is not resumed as if they were per ×2
            "steps": st.steps, "steps_per": "x2 of upsampling", "batch_size": st.batch_size, "patch": st.patch,
            "channels": st.channels,
            "layers": st.layers, "learning_rate": st.learning_rate, "covariance_width": st.covariance_width,
            "start": self.start, "min_gain": st.min_gain, "flips": st.flips, "seed": st.seed,
            **({"data": [item.name for item in self.data]} if self.data else {}),
            **({"pretrained": str(self.pretrained.get("path", ""))} if self.pretrained is not None else {}),
        }

    def footprint(self, axis: int) -> tuple[str, float]:
        """The profile and width (mm) of the LR voxels along ``axis``, an axis the prior upsamples."""
        return self.profile, self.width

    @property
    def start(self) -> str:
        """The network's input operator: ``settings.start``, where ``auto`` is cubic B-spline interpolation for a
        point-sampled thick axis and Keys interpolation for a box or Gaussian one (both measured best there)."""
        if self.settings.start != "auto":
            return str(self.settings.start)
        return "bspline" if self.profile == "point" else "keys"

    @torch.no_grad()
    def inplane_gain(self, groups: list[PlanePairs]) -> dict[str, float]:
        """PSNR gains (dB) of the trained network on the held-out in-plane planes: ``"best"`` over the best aligned
        interpolation of their degraded samples (one baseline for all of them, as a benchmark picks it; the gate),
        ``"start"`` over the network's own input, and ``"best_baseline"`` names that baseline. An empty hold-out
        (a single slice) gives NaN gains: the prior steps aside."""
        err_net = err_in = 0.0
        err_base: dict[str, float] = {}
        for pairs in groups:
            if not pairs.held.any():
                continue
            x = torch.from_numpy(pairs.inputs[pairs.held].copy())
            y = pairs.targets[pairs.held].astype(np.float64)
            err_net += float(((self._planes(x).numpy() - y) ** 2).sum())
            err_in += float(((x.numpy() - y) ** 2).sum())
            for name, interpolated in pairs.baselines.items():
                err_base[name] = err_base.get(name, 0.0) + float(((interpolated - y) ** 2).sum())
        if not err_base:
            return {"best": float("nan"), "start": float("nan"), "best_baseline": ""}
        best = min(err_base, key=err_base.get)

        def gain(reference: float) -> float:
            return 10.0 * math.log10(max(reference, 1e-30) / max(err_net, 1e-30))

        return {"best": gain(err_base[best]), "start": gain(err_in), "best_baseline": best}

    # ------------------------------------------------------------------ other sources: HR volumes, a saved prior
    #: HR volumes whose simulated LR versions add training pairs (:meth:`use`)
    data: Sequence[PriorVolume] = ()
    #: a saved prior (:func:`load_prior_model`) used instead of training one (:meth:`use`)
    pretrained: Mapping[str, Any] | None = None
    #: which stage of :attr:`pretrained` this prior applies, and whether it checks the saved task itself (a staged
    #: prior checks every stage at once)
    stage_index: int = 0
    check_stages: bool = True

    def use(self, data: Sequence["PriorVolume"] = (), pretrained: Mapping[str, Any] | None = None) -> "SlicePrior":
        """Train also on the pairs of HR volumes ``data`` (:func:`load_prior_data`), or apply the saved prior
        ``pretrained`` (:func:`load_prior_model`) instead of training; returns ``self``."""
        self.data, self.pretrained = tuple(data), pretrained
        return self

    def sources(self) -> dict[str, Any]:
        """Fingerprints of what the prior learns from besides the scan (for the reuse key): the ``prior_data``
        volumes' bytes and a saved prior's weights."""
        import hashlib

        out: dict[str, Any] = {}
        if self.data:
            out["data"] = [hashlib.sha256(np.ascontiguousarray(v.volume).tobytes() + repr(v.spacing).encode()).hexdigest()
                           for v in self.data]
        if self.pretrained is not None:
            digest = hashlib.sha256()
            for state in self.pretrained["networks"]:
                for name in sorted(state):
                    digest.update(name.encode() + state[name].detach().cpu().numpy().tobytes())
            out["pretrained"] = digest.hexdigest()
        return out

    def learned(self, grids: Sequence[ThickAxisGrid]) -> dict[str, Any]:
        """What the network maps, in output pixels: a plane whose ``H`` axis was sampled every ``factor`` pixels with
        a footprint ``width_px`` pixels wide (``stages``: one list of ``[factor, width_px]`` per stage, one entry per
        distinct upsampled axis), interpolated back by ``start``, to its sharp version. A saved prior applies to a
        scan that needs the same."""
        tasks = sorted({(g.subdivision, round(self.footprint(g.axis)[1] / g.spacing, 3)) for g in grids})
        st = self.settings
        return {"profile": self.profile, "start": self.start, "stages": [[list(t) for t in tasks]],
                "channels": st.channels, "layers": st.layers}

    def _data_pairs(self, grids: Sequence[ThickAxisGrid]) -> list[PlanePairs]:
        """Training pairs from the HR volumes of :attr:`data`: their planes in every orientation whose spacing along
        ``H`` is at least as fine as the output spacing (at most :data:`DATA_PLANES` planes per orientation, evenly
        spread), degraded as the scan's LR voxels along each upsampled axis (matched in mm; none held out)."""
        groups = []
        tasks = {(g.spacing, g.lr_spacing, self.footprint(g.axis)[1]) for g in grids}
        for item in self.data:
            for q, s, w in sorted(tasks):
                for a in range(3):
                    if item.spacing[a] > q * (1.0 + 1e-3):  # coarser than the output: nothing to teach along it
                        continue
                    for b in range(3):
                        if b == a:
                            continue
                        planes = np.moveaxis(item.volume, (3 - a - b, a, b), (0, 1, 2))
                        pick = np.unique(np.linspace(0, planes.shape[0] - 1, min(planes.shape[0], DATA_PLANES)).round())
                        pairs = degraded_pairs(planes[pick.astype(int)], item.spacing[a], q, s, self.profile, w,
                                               self._start_matrix, np.zeros(pick.size, dtype=bool))
                        if pairs is not None:
                            groups.append(pairs)
        if self.data and not groups:
            message = (f"prior_data: no volume holds planes as fine as the output spacing "
                       f"{min(t[0] for t in tasks):g} mm along any axis (and at least two samples long)")
            if self.stage_index == 0:
                raise ValueError(message + ".")
            logger.warning(message + f": stage {self.stage_index + 1} trains on the scan alone")
        return groups

    def check_pretrained(self, needed: Mapping[str, Any]) -> None:
        """Raise unless :attr:`pretrained` learned ``needed`` (:meth:`learned`)."""
        saved = dict(self.pretrained["learned"])
        if saved != dict(needed):
            raise ValueError(f"the saved prior {self.pretrained.get('path', '')} learned {saved}, but this scan needs "
                             f"{dict(needed)} (same profile, factors, footprint width in output pixels and network "
                             f"size).")

    def _load_network(self, grids: Sequence[ThickAxisGrid], stage: int = 0, check: bool = True) -> None:
        """Set the network from stage ``stage`` of :attr:`pretrained`, after checking (``check``) that it learned
        what this scan needs."""
        if check:
            self.check_pretrained(self.learned(grids))
        networks = self.pretrained["networks"]
        if stage >= len(networks):  # its training stopped before this stage (a stage before missed its gate)
            raise ValueError(f"the saved prior {self.pretrained.get('path', '')} holds {len(networks)} network(s) "
                             f"here, and this scan reaches stage {stage + 1}, which needs one more (the saved "
                             f"prior's training stopped before it: a stage missed its gate).")
        net = PlaneResidualNet(self.settings.channels, self.settings.layers)
        net.load_state_dict(networks[stage])
        self.network = net.to(self.device).eval()

    # ------------------------------------------------------------------ training
    def training_steps(self, grids: Sequence[ThickAxisGrid]) -> int:
        """Training steps for upsampling by ``grids``' factors: ``settings.steps`` per ×2 of the largest factor
        (``steps · log2 r``, at least ``steps``): 600 at ×2, 1200 at ×4, 951 at ×3. A wider gap between LR samples
        leaves more to learn per pair."""
        factor = max([2, *(g.subdivision for g in grids)])
        return int(round(self.settings.steps * math.log2(factor)))

    def train(self, groups: list[tuple[np.ndarray, np.ndarray]], steps: int | None = None) -> float:
        """Train a fresh network on the pairs for ``steps`` steps (default ``settings.steps``); returns the mean L1
        loss of the last tenth of the steps."""
        from ignite.engine import Engine, Events
        from ignite.handlers import ProgressBar

        st = self.settings
        steps = st.steps if steps is None else int(steps)
        gen = torch.Generator().manual_seed(st.seed)
        torch.manual_seed(st.seed)
        net = PlaneResidualNet(st.channels, st.layers).to(self.device)
        optimizer = torch.optim.Adam(net.parameters(), lr=st.learning_rate)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=0.01 * st.learning_rate)
        sizes = np.array([g[0].shape[0] for g in groups], dtype=np.float64)
        losses: list[float] = []

        def draw() -> tuple[torch.Tensor, torch.Tensor]:
            xs, ys = [], []
            picks = torch.multinomial(torch.as_tensor(sizes), st.batch_size, replacement=True, generator=gen)
            for g in picks.tolist():
                inputs, targets = groups[g]
                n, h, w = inputs.shape
                ph, pw = min(st.patch, h), min(st.patch, w)
                i = int(torch.randint(n, (1,), generator=gen))
                y0 = int(torch.randint(h - ph + 1, (1,), generator=gen))
                x0 = int(torch.randint(w - pw + 1, (1,), generator=gen))
                xi = torch.from_numpy(inputs[i, y0 : y0 + ph, x0 : x0 + pw])
                yi = torch.from_numpy(targets[i, y0 : y0 + ph, x0 : x0 + pw])
                flips = [d for d in (0, 1) if bool(torch.randint(2, (1,), generator=gen))]
                if flips:
                    xi, yi = xi.flip(flips), yi.flip(flips)
                # patches of one batch share a size: pad the rare short ones by replication
                pad = (0, st.patch - pw, 0, st.patch - ph)
                xs.append(F.pad(xi[None, None], pad, mode="replicate")[0])
                ys.append(F.pad(yi[None, None], pad, mode="replicate")[0])
            return torch.stack(xs).to(self.device), torch.stack(ys).to(self.device)

        def step(engine: Engine, _: Any) -> float:
            net.train()
            x, y = draw()
            loss = F.l1_loss(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            value = loss.detach().item()
            losses.append(value)
            return value

        engine = Engine(step)
        if self.progress:
            ProgressBar(persist=True, desc="prior: train").attach(engine, output_transform=lambda loss: {"l1": loss})
        engine.run(range(steps), max_epochs=1)
        self.network = net.eval()
        tail = losses[-max(1, len(losses) // 10) :]
        return float(np.mean(tail))

    # ------------------------------------------------------------------ application
    @torch.no_grad()
    def _planes(self, images: torch.Tensor) -> torch.Tensor:
        """The network over planes ``(N, H, W)`` in chunks (``H`` the thick axis); returns ``(N, H, W)``."""
        if self.network is None:
            raise RuntimeError("the prior is not trained: call train() (or run()) first.")
        out = torch.empty_like(images)
        chunk = self.settings.chunk
        starts = range(0, images.shape[0], chunk)
        if self.progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="prior: apply", leave=False)
        flips = FLIP_SETS[self.settings.flips]
        for i in starts:
            block = images[i : i + chunk].to(self.device)[:, None]
            mean = sum(self.network(block.flip(f) if f else block).flip(f) if f else self.network(block) for f in flips)
            out[i : i + chunk] = (mean / len(flips))[:, 0].to(out.device)
        return out

    def propose(self, lr: torch.Tensor, grid: ThickAxisGrid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(proposal, uncertainty, interpolated)``, each ``(X, Y, Z)`` with the thick axis on ``grid``."""
        axis, inplane = grid.axis, [a for a in range(3) if a != grid.axis]
        lr_positions = np.arange(grid.lr_count, dtype=np.float64)
        start = self._start_matrix(lr_positions, grid.positions(), grid.step, self.footprint(axis)[1] / grid.lr_spacing)
        upsampled = apply_along_axis(start, lr, axis)
        vol = torch.movedim(upsampled, (axis, *inplane), (2, 0, 1))  # (A, B, T')
        first = self._planes(vol.permute(0, 2, 1).contiguous()).permute(0, 2, 1)  # planes (T', B) over A
        second = self._planes(vol.permute(1, 2, 0).contiguous()).permute(2, 0, 1)  # planes (T', A) over B
        back = (2, 0, 1)
        proposal = torch.movedim((first + second) / 2.0, back, (axis, *inplane))
        uncertainty = torch.movedim((first - second).abs() / 2.0, back, (axis, *inplane))
        return proposal, uncertainty, upsampled

    def forward_operator(self, grid: ThickAxisGrid) -> np.ndarray:
        """``A`` ``(n_lr, n_out)``: the LR voxels along ``grid.axis`` from the output grid (the forward model)."""
        profile, width = self.footprint(grid.axis)
        positions = np.arange(grid.lr_count, dtype=np.float64)
        return footprint_matrix(positions, grid.positions(), grid.step, profile, width / grid.lr_spacing)  # LR voxels

    def make_consistent(self, proposal: torch.Tensor, lr: torch.Tensor, grid: ThickAxisGrid) -> tuple[torch.Tensor, float]:
        """``x + P (y − A x)`` along ``grid.axis``; returns the result and its consistency PSNR (dB, range 1)."""
        a_mat = self.forward_operator(grid)
        p_mat = consistent_correction(a_mat, self.settings.covariance_width)
        lr = lr.to(proposal.dtype)
        residual = lr - apply_along_axis(a_mat, proposal, grid.axis)  # LR-sized along grid.axis
        fused = proposal + apply_along_axis(p_mat, residual, grid.axis)
        mse = float(torch.mean((apply_along_axis(a_mat, fused, grid.axis) - lr).double() ** 2))
        return fused, (float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse))

    def grid_for(self, lr_shape: Sequence[int]) -> ThickAxisGrid:
        """The output grid along the thick axis of an LR volume of ``lr_shape``."""
        return ThickAxisGrid.for_profile(
            self.axis, int(lr_shape[self.axis]), self.spacing[self.axis], self.target_spacing, self.profile
        )

    def grids_for(self, lr_shape: Sequence[int]) -> tuple[ThickAxisGrid, ...]:
        """The output grids of the axes the prior upsamples, in the order it upsamples them (here: the thick axis)."""
        return (self.grid_for(lr_shape),)

    def too_small(self, lr_shape: Sequence[int]) -> bool:
        """Whether a volume of ``lr_shape`` is too small to learn from: fewer than 2 slices, or in-plane slices
        shorter than 2 slice spacings."""
        extent = [lr_shape[a] * self.spacing[a] for a in self.inplane]
        return lr_shape[self.axis] < 2 or min(extent) < 2.0 * self.spacing[self.axis]

    def summary(self, grids: Sequence[ThickAxisGrid]) -> str:
        """One line on what the prior learns (for the log)."""
        grid = grids[0]
        return (f"thick axis {self.axis} ({self.profile} {self.width:.2f} mm at {grid.lr_spacing:.2f} mm) → output "
                f"spacing {grid.spacing:.3f} mm (×{grid.subdivision})")

    def apply(self, lr: torch.Tensor, grids: Sequence[ThickAxisGrid]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(fused, proposal, uncertainty)`` on the output grids: along each grid's axis in turn the network's
        proposal (:meth:`propose`) made consistent with the volume so far (:meth:`make_consistent`). ``proposal`` is
        the last axis' proposal; the uncertainty of earlier axes is carried along later ones by linear
        interpolation and combined with theirs in quadrature."""
        fused, uncertainty, proposal = lr, None, lr
        for grid in grids:
            proposal, spread, _ = self.propose(fused, grid)
            uncertainty = spread if uncertainty is None else in_quadrature(carry_along(uncertainty, (grid,)), spread)
            fused, _ = self.make_consistent(proposal, fused, grid)
        return fused, proposal, uncertainty

    def degrade(self, x: torch.Tensor, grids: Sequence[ThickAxisGrid]) -> torch.Tensor:
        """``x`` on the output grids degraded along every grid's axis by the forward model onto the LR grid."""
        for grid in grids:
            x = apply_along_axis(self.forward_operator(grid), x, grid.axis)
        return x

    def consistency_psnr(self, fused: torch.Tensor, lr: torch.Tensor, grids: Sequence[ThickAxisGrid]) -> float:
        """PSNR (dB, range 1) of ``fused`` degraded along every grid's axis by the forward model against ``lr``."""
        mse = float(torch.mean((self.degrade(fused, grids).double() - lr.double()) ** 2))
        return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)

    def run(self, lr: torch.Tensor | np.ndarray) -> PriorResult:
        """Train on ``lr`` ``(X, Y, Z)`` (normalised intensities) and return the fused volume on the output grids."""
        vol = prior_volume(lr)
        grids = self.grids_for(vol.shape)
        seconds: dict[str, float] = {}
        start = time.perf_counter()
        groups = self._pairs(vol.numpy(), grids)
        extra = self._data_pairs(grids) if self.data and self.pretrained is None else []
        seconds["pairs"] = time.perf_counter() - start
        source = (f"the saved prior {self.pretrained.get('path', '')}" if self.pretrained is not None else
                  f"{sum(int((~g.held).sum()) for g in groups)} training planes"
                  + (f" + {sum(g.inputs.shape[0] for g in extra)} from {len(self.data)} HR volume(s)" if extra else ""))
        logger.info(f"prior: {self.summary(grids)}; {source}, {sum(int(g.held.sum()) for g in groups)} held out")
        start = time.perf_counter()
        steps = self.training_steps(grids) if self.pretrained is None else None  # None: loaded, not trained
        if steps is not None:
            loss = self.train([g.training() for g in groups] + [g.training() for g in extra], steps)
        else:
            self._load_network(grids, self.stage_index, check=self.stage_index == 0 and self.check_stages)
            loss = float("nan")
        gains = self.inplane_gain(groups)
        gain = gains["best"]
        seconds["train"] = time.perf_counter() - start
        summary = (f"prior: train L1 {loss:.4f}, held-out gain {gain:+.2f} dB over {gains['best_baseline']} "
                   f"({gains['start']:+.2f} dB over its input)")
        if not gain >= self.settings.min_gain:  # stepped aside: not applied (run_prior says so)
            logger.info(f"{summary}, seconds {seconds}")
            return PriorResult(None, None, None, grids, float("nan"), loss, seconds, gain, [self._weights()],
                               self.learned(grids), [self._stage(grids, gain, loss, steps)])
        start = time.perf_counter()
        fused, proposal, uncertainty = self.apply(vol, grids)
        consistency = self.consistency_psnr(fused, vol, grids)
        seconds["apply"] = time.perf_counter() - start
        logger.info(f"{summary}, consistency {consistency:.1f} dB, seconds {seconds}")
        return PriorResult(fused, proposal, uncertainty, grids, consistency, loss, seconds, gain, [self._weights()],
                           self.learned(grids), [self._stage(grids, gain, loss, steps)])

    @staticmethod
    def _stage(grids: Sequence[ThickAxisGrid], gain: float, loss: float, steps: int | None) -> dict[str, Any]:
        """One stage's record: factor per upsampled axis, held-out gain (dB), training L1 and steps (``None``:
        loaded)."""
        return {"factors": {str(g.axis): g.subdivision for g in grids},
                "gain_db": round(float(gain), 3) if math.isfinite(gain) else None,
                "train_l1": round(float(loss), 6) if math.isfinite(loss) else None, "train_steps": steps}

    def _weights(self) -> dict[str, torch.Tensor]:
        """The network's weights on the CPU."""
        return {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------------
# the prior inside a fit (called from the training config)
# ---------------------------------------------------------------------------------------------------------------
PRIOR_FILE = "prior.pt"
#: version of what ``prior.pt`` stores: a stored result of another version is not reused (the prior trains again)
STORE_FORMAT = 3
#: the trained network of a fit's prior and what it learned, reusable on other scans (``prior: PATH``)
PRIOR_MODEL_FILE = "prior_model.pt"
#: file endings of the volumes ``prior_data`` reads (folders are read as DICOM series)
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def load_prior_data(directory: str | os.PathLike) -> list[PriorVolume]:
    """The HR volumes in ``directory`` (NIfTI, NRRD, MetaImage files and DICOM series folders, sorted by name), each
    min–max normalised like the scan.

    Raises:
        ValueError: ``directory`` is not a folder or holds no volume.
    """
    from .geometry import geometry_of
    from .io import load_normalized

    folder = Path(directory)
    if not folder.is_dir():
        raise ValueError(f"prior_data must be a folder of HR volumes, got {str(directory)!r} (not a folder).")
    entries = [e for e in sorted(folder.iterdir()) if e.is_dir() or e.name.lower().endswith(VOLUME_SUFFIXES)]
    if not entries:
        raise ValueError(f"prior_data {str(directory)!r} holds no volume ({', '.join(VOLUME_SUFFIXES)} files or "
                         f"DICOM series folders).")
    out = []
    for entry in entries:
        image = load_normalized(entry)
        spacing = tuple(float(v) for v in geometry_of(image).spacing)
        out.append(PriorVolume(entry.name, image[0].numpy().astype(np.float32), spacing))
    logger.info(f"prior_data: {len(out)} HR volume(s) from {folder}: {[v.name for v in out]}")
    return out


def load_prior_model(path: str | os.PathLike) -> dict[str, Any]:
    """A saved prior (:data:`PRIOR_MODEL_FILE`, or a model or run folder holding one): ``learned``, ``networks``
    (one per stage) and ``path``.

    Raises:
        ValueError: no such file, or a file that is not a saved prior.
    """
    file = Path(path)
    if file.is_dir():
        found = [f for f in (file / PRIOR_MODEL_FILE, file / "checkpoints" / PRIOR_MODEL_FILE) if f.is_file()]
        if not found:
            raise ValueError(f"prior {str(path)!r}: the folder holds no {PRIOR_MODEL_FILE}.")
        file = found[0]
    if not file.is_file():
        raise ValueError(f"prior must be auto, none or a saved prior ({PRIOR_MODEL_FILE}), got {str(path)!r}: no such "
                         f"file or folder.")
    try:
        saved = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"prior {str(file)!r} is not a saved prior ({PRIOR_MODEL_FILE}): {exc}") from exc
    if not isinstance(saved, Mapping) or saved.get("format") != PRIOR_MODEL_FILE or "networks" not in saved:
        raise ValueError(f"prior {str(file)!r} is not a saved prior (no {PRIOR_MODEL_FILE} content; a model's "
                         f"checkpoint is model.pt).")
    return {"learned": saved["learned"], "networks": saved["networks"], "path": str(file)}


def save_prior_model(result: PriorResult, path: str | os.PathLike) -> str:
    """Write ``result``'s network and what it learned to ``path`` (atomically), for ``prior: PATH`` on other scans."""
    from .utils import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"format": PRIOR_MODEL_FILE, "learned": result.learned, "networks": result.networks,
                    "inplane_gain_db": float(result.inplane_gain)}, tmp)
    return str(path)


def prior_for(
    forward: Any,
    mode: str = "auto",
    target_spacing: float | Sequence[float] | None = None,
    steps: int = PriorSettings.steps,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
    min_gain: float = PriorSettings.min_gain,
    data: str | os.PathLike | None = None,
) -> SlicePrior | None:
    """The prior a fit uses, or ``None`` (the field alone).

    A scan with a thick axis (:func:`thick_axis`) gets the thick-slice prior (:class:`SlicePrior`); when
    ``target_spacing`` also asks for at least twice the in-plane resolution and the in-plane voxels average a
    footprint, the cross-scale prior follows it on the in-plane axes of its output
    (:class:`~cunerf_monai.combined_prior.SliceCrossScalePrior`). Any other scan
    whose voxels average a footprint (box or Gaussian) gets the cross-scale prior
    (:class:`~cunerf_monai.cross_scale_prior.CrossScalePrior`) when ``target_spacing`` asks for at least twice its
    resolution on some axis: it states no finer spacing of its own, so the fit is told where the render goes
    (``evaluate`` passes the HR grid's spacing); without one, the field alone. Point-sampled voxels get the field
    alone: on Colin27 point-sampled ×4 the cross-scale network, though it beat interpolation one scale up, lost
    2.6 dB at the output scale (aliasing at 16 mm does not teach aliasing at 4 mm).

    Args:
        forward: the fit's :class:`~cunerf_monai.forward_model.ForwardModel` (spacing, profile and width per axis).
        mode: ``"auto"`` (a prior as above), ``"none"``, or the path of a saved prior (:data:`PRIOR_MODEL_FILE`, or a
            model folder holding one): the prior as for ``auto``, its network loaded instead of trained.
        target_spacing: output spacing in mm, one number or three (the thick-slice prior uses the thick axis'
            value; ``None``: the finest in-plane spacing there, no cross-scale prior).
        steps, seed: training steps per ×2 of upsampling (:meth:`SlicePrior.training_steps`) and seed
            (:class:`PriorSettings`).
        device, progress: where the network runs; progress bars.
        min_gain: held-out gain (dB) the network must reach for the prior to be used (:class:`PriorSettings`).
        data: a folder of HR volumes whose simulated LR versions add training pairs (:func:`load_prior_data`).

    Raises:
        ValueError: a bad setting, or a saved prior given for a scan that gets no prior.
    """
    pretrained = None
    if str(mode).lower() not in PRIOR_MODES:
        pretrained, mode = load_prior_model(mode), PriorMode.AUTO
    mode = check_option(mode, PriorMode, "prior")
    if mode == "none":
        return None
    prior = _prior_of_shape(forward, target_spacing, PriorSettings(steps=int(steps), seed=int(seed), min_gain=float(min_gain)),
                            device, progress)
    if prior is None:
        if pretrained is not None:
            raise ValueError(f"prior {pretrained['path']!r}: this scan gets no learned prior (the log says why; an "
                             f"isotropic scan needs prior_spacing), so the saved prior cannot be applied.")
        return None
    return prior.use(load_prior_data(data) if data is not None else (), pretrained)


def _prior_of_shape(
    forward: Any, target_spacing: Any, settings: PriorSettings, device: Any, progress: bool
) -> SlicePrior | None:
    """:func:`prior_for`'s choice by the scan's shape (thick-slice, cross-scale or ``None``)."""
    values = None
    if target_spacing is not None:
        values = np.asarray(target_spacing, dtype=np.float64).reshape(-1)
        if values.size not in (1, 3) or not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise ValueError(f"prior_spacing must be one positive number or three (mm), got {target_spacing!r}.")
        values = np.broadcast_to(values, (3,))
    axis = thick_axis(forward.spacing)
    if axis is None:
        return _cross_scale_for(forward, values, settings, device, progress)
    target = None if values is None else float(values[axis])
    prior = SlicePrior(forward.spacing, forward.profiles[axis], forward.widths[axis], target, settings, device, progress)
    if target is not None and target < prior.target_spacing:
        logger.warning(f"prior: prior_spacing {target:g} mm is finer than the in-plane spacing; using "
                       f"{prior.target_spacing:g} mm (the finest the in-plane slices can teach)")
    subdivision = int(round(forward.spacing[axis] / prior.target_spacing))
    if subdivision < 2:  # the output grid would be the LR grid: nothing to add between the slices
        logger.warning(f"prior: none (prior_spacing {prior.target_spacing:g} mm gives one output sample per "
                       f"{forward.spacing[axis]:g} mm slice)")
        return None
    if values is None:
        return prior
    return _cross_scale_for(forward, values, settings, device, progress, thick=prior) or prior


def _cross_scale_for(
    forward: Any, targets: np.ndarray | None, settings: PriorSettings, device: Any, progress: bool,
    thick: SlicePrior | None = None,
) -> SlicePrior | None:
    """:func:`prior_for` on a scan without a thick axis: the cross-scale prior, or ``None`` (logged why). With the
    scan's thick-slice prior ``thick``: the cross-scale prior over its output's in-plane axes after it
    (:class:`~cunerf_monai.combined_prior.SliceCrossScalePrior`), or ``None`` (the thick-slice prior alone)."""
    from .combined_prior import SliceCrossScalePrior
    from .cross_scale_prior import CrossScalePrior

    axes = [a for a in range(3) if thick is None or a != thick.axis]
    spacing, widths = list(forward.spacing), list(forward.widths)
    profiles = [forward.profiles[a] for a in axes]
    rounded = [round(s, 3) for s in spacing]
    if targets is None:
        logger.info(f"prior: none (no thick axis in spacing {rounded}; prior_spacing names the output spacing the "
                    f"cross-scale prior works at)")
        return None
    targets = np.array(targets, dtype=np.float64)
    if thick is not None:  # the thick-slice output's spacing along the thick axis: not upsampled again (its width
        # is not used: pairs and corrections are made along upsampled axes only)
        a = thick.axis
        spacing[a] = targets[a] = forward.spacing[a] / round(forward.spacing[a] / thick.target_spacing)
        widths[a] = 0.0 if thick.profile == "point" else spacing[a]
    verdict, which = ("the thick-slice prior alone", "in-plane ") if thick is not None else ("none", "")
    if all(round(spacing[a] / targets[a]) < 2 for a in axes):
        logger.info(f"prior: {verdict} (prior_spacing {[float(t) for t in targets]} mm is not half the spacing "
                    f"{rounded} on any {which}axis)")
        return None
    if len(set(profiles)) > 1:
        logger.info(f"prior: {verdict} (the cross-scale prior needs one {which}voxel profile, got {profiles})")
        return None
    if profiles[0] == "point":  # measured: aliasing one scale up does not teach aliasing at the output scale
        logger.info(f"prior: {verdict} (point-sampled {which}voxels: the cross-scale prior is for voxels that average "
                    f"a footprint)")
        return None
    cross = CrossScalePrior(spacing, profiles[0], widths, targets, settings, device, progress)
    return cross if thick is None else SliceCrossScalePrior(thick, cross)


def describe(prior: SlicePrior | None) -> dict[str, Any] | str:
    """The prior's settings as JSON (for the checkpoint's settings, ``fit.json`` and the tracking params)."""
    return "none" if prior is None else prior.as_dict()


def run_prior(
    prior: SlicePrior | None, image: torch.Tensor, save_dir: str | None = None, reuse: bool = True
) -> PriorResult | None:
    """Run ``prior`` on the training image ``(1, X, Y, Z)``, or (``reuse``) take ``save_dir/prior.pt`` written by an
    earlier run of the same prior on the same volume (a resumed fit does not train it again). ``None`` for no prior,
    for a volume too small to learn from (:meth:`SlicePrior.too_small`)
    and for a prior that missed its gate (:func:`_accepted`): the field alone, with a warning.

    Under ``torch.distributed`` rank 0 trains (or reuses) the prior and writes ``prior.pt``; every rank gets its
    result (broadcast), so the ranks hold the same fused volume.

    Raises:
        ValueError: ``reuse`` and ``save_dir`` holds a resumable run with another prior (before training this one).
    """
    from .distributed import get_rank, is_distributed

    if not is_distributed():
        result = _train_or_reuse(prior, image, save_dir, reuse)
    else:
        import torch.distributed as dist

        payload: list[Any] = [None]
        if get_rank() == 0:
            try:
                payload[0] = ("result", _train_or_reuse(prior, image, save_dir, reuse))
            except Exception as exc:  # every rank raises rank 0's error instead of waiting for a result
                kind = type(exc) if isinstance(exc, (ValueError, OSError)) else RuntimeError
                payload[0] = ("error", kind(str(exc)))  # a plain copy: any exception object may not pickle
        dist.broadcast_object_list(payload, src=0)
        kind, value = payload[0]
        if kind == "error":
            raise value
        result = value
    if prior is not None:
        prior.result = result
    return None if result is None else _accepted(result, prior.settings.min_gain)


def _train_or_reuse(
    prior: SlicePrior | None, image: torch.Tensor, save_dir: str | None, reuse: bool
) -> PriorResult | None:
    """:func:`run_prior` in one process: the stored result of the same prior on the same volume, or a new one
    (written to ``save_dir/prior.pt``); ``None`` without a prior or for a volume too small to learn from."""
    import hashlib

    from .checkpoints import check_resumable
    from .utils import atomic_path

    check_resumable(save_dir, reuse, prior=describe(prior))
    model_path = None if save_dir is None else Path(save_dir) / PRIOR_MODEL_FILE
    if model_path is not None and model_path.is_file():  # only this run's prior may be left there
        model_path.unlink()
    if prior is None:
        return None
    vol = image[0].detach().float().cpu()
    vol = vol.as_tensor() if hasattr(vol, "as_tensor") else vol  # plain tensors: checkpoints load weights-only
    if prior.too_small(tuple(vol.shape)):
        logger.warning(f"prior: none (volume {tuple(vol.shape)} too small to learn from)")
        return None
    affine = np.asarray(getattr(image, "affine", np.eye(4)), dtype=np.float64)
    digest = hashlib.sha256(vol.numpy().tobytes() + affine.tobytes()).hexdigest()
    key = {"format": STORE_FORMAT, "settings": describe(prior), "sources": prior.sources(), "spacing": list(prior.spacing),
           "shape": list(vol.shape), "sha256": digest}
    path = None if save_dir is None else Path(save_dir) / PRIOR_FILE
    result = None
    if reuse and path is not None and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if saved.get("key") == key:
            logger.info(f"prior: reusing {path}")
            result = saved["result"]
    if result is None:
        result = prior.run(vol)
        if path is not None:
            with atomic_path(path) as tmp:
                torch.save({"key": key, "result": result}, tmp)
    if model_path is not None and result.networks:
        save_prior_model(result, model_path)
    return result


def _accepted(result: PriorResult, min_gain: float) -> PriorResult | None:
    """``result``, or ``None`` (the field alone, with a warning) when its network did not beat the best aligned
    interpolation on held-out in-plane planes by ``min_gain`` dB."""
    if result.fused is None or not result.inplane_gain >= min_gain:
        logger.warning(f"prior: none (its network gains {result.inplane_gain:+.2f} dB over the best interpolation "
                       f"on held-out in-plane planes, less than {min_gain:g} dB: the field alone)")
        return None
    return result


def field_grid(result: PriorResult | None) -> dict[str, list[float]]:
    """``origin`` and ``step`` per axis (LR voxels) of the grid field's samples: the prior's output grid along the
    thick axis, the LR voxels elsewhere (also without a prior)."""
    origin, step = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    for grid in () if result is None else result.grids:
        origin[grid.axis], step[grid.axis] = grid.origin, grid.step
    return {"origin": origin, "step": step}


def prior_metrics(result: PriorResult | None) -> dict[str, float]:
    """The prior's numbers for experiment tracking (empty without a prior): stage times (s), final training L1 and
    the consistency of its output with the LR (dB, capped at 999 for an exact match)."""
    if result is None:
        return {}
    out = {f"prior_seconds_{k}": float(v) for k, v in result.seconds.items()}
    out["prior_train_l1"] = float(result.train_loss)
    out["prior_inplane_gain_db"] = float(result.inplane_gain)
    out["prior_consistency_psnr_db"] = float(min(result.consistency_psnr, 999.0))
    return out


#: training iterations of the field after the prior: its fused start already reproduces the LR voxels through the
#: cube forward model (the loss starts at float precision), so a short run only reports that (one validation round)
FIELD_ITERATIONS_AFTER_PRIOR = 10


def field_iterations(num_iterations: int, result: PriorResult | None) -> int:
    """Training iterations of the field: ``num_iterations`` without a prior, at most
    :data:`FIELD_ITERATIONS_AFTER_PRIOR` with one."""
    return int(num_iterations) if result is None else min(int(num_iterations), FIELD_ITERATIONS_AFTER_PRIOR)


def render_forward(forward: Any, result: PriorResult | None) -> Any:
    """The forward model the field is fitted through: with a prior, ``r`` samples across a thick box or Gaussian
    voxel (on the output grid, where the fused volume is exactly consistent); else ``forward`` unchanged."""
    if result is None:
        return forward
    samples = list(forward.samples)
    for grid in result.grids:
        if forward.profiles[grid.axis] != "point":
            samples[grid.axis] = grid.subdivision
    return replace(forward, samples=tuple(samples))


# ---------------------------------------------------------------------------------------------------------------
# the uncertainty map: kept in the checkpoint, rendered beside every output
# ---------------------------------------------------------------------------------------------------------------
UNCERTAINTY_FILE = "uncertainty.nii.gz"


class PriorRecord:
    """The prior's per-voxel uncertainty on its output grid ``(X, Y, Z')`` (normalised intensity units), with
    ``state_dict``/``load_state_dict`` so that checkpoints carry it (key ``"prior"``); empty without a prior."""

    def __init__(self, result: PriorResult | None = None) -> None:
        self.uncertainty = None if result is None else torch.as_tensor(result.uncertainty).detach().float().cpu()

    def state_dict(self) -> dict[str, Any]:
        return {} if self.uncertainty is None else {"uncertainty": self.uncertainty}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.uncertainty = state.get("uncertainty")


def fitted_prior(workflow: Any) -> PriorResult | None:
    """The prior a fit's (initialised) training workflow used, ``None`` without one."""
    parser = workflow.parser
    return parser.get_parsed_content("prior_result") if "prior_result" in parser else None


def prior_state(result: PriorResult | None) -> dict[str, Any]:
    """The checkpoint entries of ``result`` (``{"prior": ...}``), for :func:`render_uncertainty` straight from a fit
    in this process instead of reading its checkpoint back."""
    return {"prior": PriorRecord(result).state_dict()}


def grid_model(network: torch.nn.Module, values: torch.Tensor, kernel: str = "linear") -> torch.nn.Module:
    """A model that renders ``values`` ``(X, Y, Z')`` (the uncertainty map, the proposal …) on the sample grid of
    ``network``'s grid field (LR shape, origin, step), interpolated with ``kernel``."""
    from .networks import BSplineGridField, CuNeRFModel

    fitted = getattr(network, "module", network).coarse
    if not isinstance(fitted, BSplineGridField) or tuple(fitted.samples.shape) != tuple(values.shape):
        raise ValueError("a map on the prior's grid needs the grid field it was made with (same sample grid).")
    field = BSplineGridField(tuple(values.shape), kernel=kernel, learnable=False)
    state = {k: v for k, v in fitted.state_dict().items() if k in ("index_scale", "index_shift", "size", "taps")}
    field.load_state_dict({**field.state_dict(), **state, "samples": values.float()})
    return CuNeRFModel(field.to(fitted.samples.device), None)


def render_uncertainty(
    checkpoint: Mapping[str, Any] | str | os.PathLike,
    network: torch.nn.Module,
    inferer: Any,
    record: Any,
    grid: Any,
    original_range: bool = True,
) -> torch.Tensor | None:
    """The prior's uncertainty rendered on ``grid`` ``(X', Y', Z')`` (in the input's intensity units unless
    ``original_range`` is false), or ``None`` when the checkpoint holds none (a fit without the prior)."""
    ckpt = checkpoint if isinstance(checkpoint, Mapping) else torch.load(checkpoint, map_location="cpu", weights_only=False)
    uncertainty = (ckpt.get("prior") or {}).get("uncertainty")
    if uncertainty is None:
        return None
    values = inferer.coarse_only().render_grid(grid_model(network, uncertainty), record.geometry, grid)
    values = values.clamp_(min=0.0)
    if original_range:
        lo, hi = record.intensity_range
        values = values * float(hi - lo)  # a spread: scaled, not shifted
    return values


def write_uncertainty(
    checkpoint: Mapping[str, Any] | str | os.PathLike,
    network: torch.nn.Module,
    inferer: Any,
    record: Any,
    grid: Any,
    path: str | os.PathLike,
    original_range: bool = True,
) -> str | None:
    """Render the prior's uncertainty on ``grid`` (:func:`render_uncertainty`) and write it as float32 NIfTI at
    ``path`` (atomically, with the grid's affine); ``None`` and no file for a model fitted without the prior."""
    from .io import save_nifti

    values = render_uncertainty(checkpoint, network, inferer, record, grid, original_range)
    return None if values is None else save_nifti(path, values, grid.affine)
