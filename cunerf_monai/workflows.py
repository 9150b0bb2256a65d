"""Rendering workflows shared by the bundle's inference config and the CLI: render a fitted volume (loaded with
:func:`cunerf_monai.checkpoints.load_checkpoint`) on a target grid (scale, spacing or a reference image) to NIfTI,
render oblique slices to PNG and GIF."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch import nn

from .geometry import TargetGrid, geometry_of, grid_for_scale, grid_for_spacing, oblique_plane
from .checkpoints import load_checkpoint
from .inferers import CuNeRFInferer
from .io import load_volume, output_dtype, save_gif, save_nifti, save_png
from .records import VolumeRecord
from .slice_prior import UNCERTAINTY_FILE, write_uncertainty
from .transforms.array import denormalize_intensity
from .utils import write_json

__all__ = ["target_grid", "render_volume", "render_slices", "VolumeRenderer", "sweep_angles"]

logger = logging.getLogger(__name__)


def target_grid(
    record: VolumeRecord,
    scale: float | Sequence[float] | None = None,
    spacing: float | Sequence[float] | None = None,
    reference: str | os.PathLike | None = None,
) -> TargetGrid:
    """The output grid: exactly one of ``scale`` (per axis allowed), ``spacing`` (mm) or ``reference`` (an image
    whose grid — shape and affine — is reproduced)."""
    given = [v is not None for v in (scale, spacing, reference)]
    if sum(given) != 1:
        raise ValueError("Give exactly one of scale, spacing (mm) or reference (an image) for the output grid.")
    if record.geometry is None:
        raise ValueError("The checkpoint has no volume geometry.")
    if scale is not None:
        return grid_for_scale(record.geometry, scale)
    if spacing is not None:
        return grid_for_spacing(record.geometry, spacing)
    ref = load_volume(reference, validate=False) if reference is not None else None
    geo = geometry_of(ref)
    return TargetGrid(geo.shape, geo.affine)


def render_volume(
    network: nn.Module,
    inferer: CuNeRFInferer,
    record: VolumeRecord,
    output: str | os.PathLike,
    grid: TargetGrid,
    original_range: bool = True,
    max_voxels: int = 2**31,
    dtype: str | None = None,
) -> str:
    """Render ``grid`` and write it as NIfTI (atomically) with the grid's affine.

    Args:
        network: the fitted model.
        inferer: the renderer (test-time sample counts, chunk size).
        record: the fitted volume's record (geometry, intensity range).
        output: output path (``.nii`` or ``.nii.gz``).
        grid: output grid, e.g. from :func:`target_grid`.
        original_range: map intensities back to the input's range (else keep ``[0, 1]``). Either way values are
            clipped to the input's range (a deconvolving field can overshoot near edges).
        max_voxels: refuse larger outputs before allocating anything.
        dtype: the written type: ``None`` or ``"input"`` for the input's stored integer type (``record.dtype``;
            values rounded and clipped to its range), ``"float32"`` on request. Inputs stored as floats, records
            without a stored type (older checkpoints) and normalised renders (``original_range=False``) are
            written as float32.
    """
    kind = output_dtype(record.dtype if original_range else None, dtype)
    if grid.num_voxels > max_voxels:
        raise ValueError(
            f"The output grid {grid.shape} has {grid.num_voxels:,} voxels (> {max_voxels:,}); "
            "use a smaller scale or a coarser spacing."
        )
    if not str(output).endswith((".nii", ".nii.gz")):
        raise ValueError(f"The output must be a NIfTI file name (.nii or .nii.gz), got {output}.")
    values = inferer.render_grid(network, record.geometry, grid).clamp_(0.0, 1.0)  # the input's range
    if original_range:
        values = denormalize_intensity(values, record.intensity_range)
    return save_nifti(output, values, grid.affine, kind)


def sweep_angles(angles: Sequence[float] = (0.0, 360.0), asteps: float = 45.0) -> list[float]:
    """Angles of a sweep ``start, start + asteps, …`` below ``stop`` (the paper's ``--angles 0 360 --asteps 45``);
    one angle when ``angles`` has one value."""
    a = [float(v) for v in np.atleast_1d(angles)]
    if len(a) == 1:
        return a
    if len(a) != 2 or asteps <= 0:
        raise ValueError("angles must be one angle or (start, stop), and asteps positive (degrees).")
    return [float(v) for v in np.arange(a[0], a[1], asteps)]


def render_slices(
    network: nn.Module,
    inferer: CuNeRFInferer,
    record: VolumeRecord,
    output_dir: str | os.PathLike,
    axis: Sequence[float] = (1.0, 1.0, 0.0),
    angles: Sequence[float] = (0.0, 360.0),
    asteps: float = 45.0,
    zpos: float = 0.0,
    zoom: float = 1.0,
    plane: str = "axial",
    size: Sequence[int] | None = None,
    gif_duration_ms: int = 200,
    pixel_size: float | None = None,
) -> list[str]:
    """Render oblique slices over an angle sweep: one PNG per angle plus ``sweep.gif``.

    Args:
        axis: rotation axis in the volume's voxel-axis frame.
        angles: one angle or ``(start, stop)`` in degrees.
        asteps: angle step in degrees.
        zpos: offset along the plane normal in mm from the volume centre.
        zoom: magnification (> 1 zooms in).
        plane: base plane (``axial``, ``coronal``, ``sagittal``).
        size: pixels ``(H, W)`` (default: the volume's extent at ``pixel_size``).
        pixel_size: pixel edge in mm before zooming (default: the fitted volume's finest spacing;
            :class:`VolumeRenderer` passes its render's finest spacing).

    Returns:
        the written file paths (PNGs then the GIF).
    """
    out = Path(output_dir)
    frames, paths = [], []
    for angle in sweep_angles(angles, asteps):
        pl = oblique_plane(record.geometry, axis, angle, zpos, zoom, size, plane, pixel_size)
        img = inferer.render_plane(network, record.geometry, pl)
        frames.append(img)
        paths.append(save_png(out / f"slice_{plane}_angle{angle:06.1f}.png", img))
    paths.append(save_gif(out / "sweep.gif", frames, gif_duration_ms))
    return paths


class VolumeRenderer:
    """The bundle's inference step: checkpoint → NIfTI at a scale/spacing/reference grid (+ optional slices).

    Args:
        network: the model (architecture must match the checkpoint).
        inferer: the renderer.
        checkpoint: path of the fitted checkpoint.
        output_dir: folder for the outputs.
        scale: output scale (one float or per axis); ignored when ``spacing`` or ``reference`` is given.
        spacing: output voxel size in mm.
        reference: render onto this image's grid.
        output_name: NIfTI file name inside ``output_dir``.
        slices: keyword arguments of :func:`render_slices`, or ``None`` to skip the slices. Without a
            ``pixel_size`` the slices are drawn at the render's finest spacing.
        original_range: write intensities in the input's range.
        dtype: the volume's written type (see :func:`render_volume`): ``None``/``"input"`` for the input's
            stored integer type, ``"float32"`` on request.
        summary_name: file name of the JSON summary inside ``output_dir``, or ``None`` to write none.
    """

    def __init__(
        self,
        network: nn.Module,
        inferer: CuNeRFInferer,
        checkpoint: str,
        output_dir: str,
        scale: float | Sequence[float] | None = 2.0,
        spacing: float | Sequence[float] | None = None,
        reference: str | None = None,
        output_name: str = "sr.nii.gz",
        slices: dict[str, Any] | None = None,
        original_range: bool = True,
        dtype: str | None = None,
        summary_name: str | None = "render.json",
    ) -> None:
        self.network, self.inferer = network, inferer
        self.checkpoint, self.output_dir = checkpoint, output_dir
        self.scale = None if (spacing is not None or reference is not None) else scale
        self.spacing, self.reference = spacing, reference
        self.output_name, self.slices, self.original_range = output_name, slices, original_range
        self.dtype, self.summary_name = dtype, summary_name
        output_dtype(None, dtype)  # a wrong dtype name fails before the checkpoint is read

    def run(self) -> dict[str, Any]:
        """Render and write everything; returns a summary (also written as ``summary_name``)."""
        record = load_checkpoint(self.checkpoint, self.network)
        grid = target_grid(record, self.scale, self.spacing, self.reference)
        out = Path(self.output_dir)
        logger.info(f"rendering {grid.shape} voxels at spacing {np.round(grid.spacing, 4).tolist()} mm")
        volume = render_volume(
            self.network, self.inferer, record, out / self.output_name, grid, self.original_range, dtype=self.dtype
        )
        summary: dict[str, Any] = {
            "volume": volume,
            "shape": list(grid.shape),
            "spacing_mm": grid.spacing.tolist(),
            "affine": grid.affine.tolist(),
            "dtype": output_dtype(record.dtype if self.original_range else None, self.dtype).name,
        }
        uncertainty = write_uncertainty(
            self.checkpoint, self.network, self.inferer, record, grid, out / UNCERTAINTY_FILE, self.original_range
        )
        if uncertainty is not None:  # a fit with the thick-slice prior: where its detail was inferred
            summary["uncertainty"] = uncertainty
        if self.slices is not None:
            slices = dict(self.slices)
            if slices.get("pixel_size") is None:
                slices["pixel_size"] = float(grid.spacing.min())  # the render's resolution
            summary["slices"] = render_slices(self.network, self.inferer, record, out / "slices", **slices)
        if self.summary_name:
            write_json(out / self.summary_name, summary)
        logger.info(f"wrote {volume}")
        return summary
