"""Evaluation toolkit: affine-aligned interpolation baselines, PSNR/SSIM metrics and comparison figures.

Volumes are 3D arrays ``(X, Y, Z)`` with 4x4 voxel-to-world affines (NIfTI / MONAI convention); the LR-to-HR
alignment is always derived from the two affines (see :mod:`cunerf_monai.evaluation.baselines`).
"""

from .baselines import (
    BASELINES,
    MISALIGNED_KEY,
    keys_kernel,
    lr_index_map,
    misaligned_resize,
    resample_to_grid,
    run_baselines,
)
from .figures import MAX_IMAGE_COLUMNS, comparison_figure, plot_curve, slice_psnr, take_slice
from .metrics import (
    PLANE_AXES,
    SCORE_KEYS,
    foreground_mask,
    format_table,
    otsu_threshold,
    psnr,
    score,
    ssim,
)

__all__ = [
    "BASELINES",
    "MISALIGNED_KEY",
    "keys_kernel",
    "lr_index_map",
    "misaligned_resize",
    "resample_to_grid",
    "run_baselines",
    "MAX_IMAGE_COLUMNS",
    "comparison_figure",
    "plot_curve",
    "slice_psnr",
    "take_slice",
    "PLANE_AXES",
    "SCORE_KEYS",
    "foreground_mask",
    "format_table",
    "otsu_threshold",
    "psnr",
    "score",
    "ssim",
]
