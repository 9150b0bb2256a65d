"""Figures for super-resolution evaluation: slice comparison grids (CuNeRF Fig. 3/7 style) and curves.

Matplotlib is used through its object API with the Agg canvas (no pyplot, no global backend switch, safe in
worker threads). Every file is written atomically with :func:`cunerf_monai.utils.atomic_path` (a temporary file in
the destination directory moved over the target), so a reader never sees a half-written PNG.

Slices of an ``(X, Y, Z)`` volume (see :data:`cunerf_monai.evaluation.metrics.PLANE_AXES`) are shown with the
first remaining axis horizontal and the second vertical, origin at the lower left: axial ``vol[:, :, k]``
(X right, Y up), coronal ``vol[:, j, :]`` (X right, Z up), sagittal ``vol[i, :, :]`` (Y right, Z up).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Mapping, Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..enums import Plane, check_option
from ..utils import atomic_path
from .arrays import as_volume
from .baselines import resample_to_grid
from .metrics import PLANE_AXES

__all__ = ["comparison_figure", "plot_curve", "take_slice", "slice_psnr", "uncertainty_figure", "MAX_IMAGE_COLUMNS"]

#: soft limit on the number of image columns (LR + methods + reference) of :func:`comparison_figure`.
MAX_IMAGE_COLUMNS = 6


def _vol(x, name: str) -> np.ndarray:
    """A float32 3D volume ``(X, Y, Z)`` (see :func:`cunerf_monai.evaluation.arrays.as_volume`)."""
    return as_volume(x, name, np.float32)


def take_slice(vol: np.ndarray, plane: str, index: int) -> np.ndarray:
    """One 2D slice of a volume.

    Args:
        vol: ``(X, Y, Z)`` array.
        plane: ``"axial"`` (``vol[:, :, index]``), ``"coronal"`` (``vol[:, index, :]``) or ``"sagittal"``
            (``vol[index]``).
        index: slice index along the plane's axis.

    Returns:
        2D array, ``(X, Y)``, ``(X, Z)`` or ``(Y, Z)``.
    """
    return np.take(vol, int(index), axis=PLANE_AXES[check_option(plane, Plane, "plane")])


def slice_psnr(pred: np.ndarray, target: np.ndarray, data_range: float = 1.0) -> float:
    """PSNR (dB) of two arrays of equal shape (e.g. 2D slices ``(H, W)``); ``inf`` if identical.

    Args:
        pred: predicted array.
        target: reference array, same shape.
        data_range: peak value.
    """
    mse = float(np.mean((np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2))
    return float("inf") if mse == 0.0 else float(10.0 * math.log10(data_range**2 / mse))


def _atomic_savefig(fig: Figure, path, dpi: int) -> str:
    """Save ``fig`` as PNG to ``path`` atomically (see :func:`cunerf_monai.utils.atomic_path`)."""
    path = os.fspath(path)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def _spacing(hr_affine, spacing) -> np.ndarray:
    if spacing is not None:
        return np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,)).copy()
    if hr_affine is not None:
        a = hr_affine.detach().cpu().numpy() if isinstance(hr_affine, torch.Tensor) else np.asarray(hr_affine)
        return np.linalg.norm(np.asarray(a, dtype=np.float64)[:3, :3], axis=0)
    return np.ones(3)


def comparison_figure(
    path,
    volumes: Mapping[str, np.ndarray],
    reference_key: str = "HR",
    lr=None,
    lr_affine=None,
    hr_affine=None,
    slice_index: Mapping[str, int] | None = None,
    planes: Sequence[str] = ("axial", "coronal", "sagittal"),
    methods: Sequence[str] | None = None,
    lr_label: str = "LR",
    error_max: float | None = None,
    intensity_range: tuple[float, float] | None = None,
    spacing: Sequence[float] | None = None,
    title: str | None = None,
    panel_size: float = 2.4,
    dpi: int = 100,
) -> str:
    """Slice comparison grid: one row per plane; columns LR, methods, reference, then |method - reference| maps.

    Each image panel is titled with its name and the PSNR of that slice against the reference (data range 1).
    Error maps use the ``inferno`` colormap with one colour scale shared by all error panels (``error_max``,
    default the 99.5th percentile of all shown errors), with a colour bar per row. Intensities share one
    grey scale (``intensity_range``, default min/max of the reference).

    Args:
        path: output PNG path (parent directories are created; written atomically).
        volumes: ``{name: (X, Y, Z) array}``; must contain ``reference_key``; insertion order = column order.
        reference_key: key of the HR reference in ``volumes``.
        lr: optional LR volume. If it already has the reference shape it is shown as is (e.g. pre-resampled);
            otherwise it is nearest-resampled to the reference grid with
            :func:`~cunerf_monai.evaluation.baselines.resample_to_grid`, which needs ``lr_affine`` and
            ``hr_affine``. If ``None`` and ``volumes`` has a ``lr_label`` entry, that entry is used as the LR
            column (it must have the reference shape).
        lr_affine: ``(4, 4)`` affine of ``lr`` (when it must be resampled).
        hr_affine: ``(4, 4)`` affine of the reference grid (for resampling ``lr``; also gives the pixel aspect).
        slice_index: ``{plane: index}``; missing planes default to the middle slice.
        planes: rows, any of ``"axial"``, ``"coronal"``, ``"sagittal"``.
        methods: keys of ``volumes`` to show (in this order); default all except the reference and LR.
            Keep LR + methods + reference within :data:`MAX_IMAGE_COLUMNS` (a warning is issued otherwise).
        lr_label: column title / ``volumes`` key of the LR column.
        error_max: upper limit of the shared error colour scale.
        intensity_range: ``(vmin, vmax)`` of the grey scale.
        spacing: voxel size ``(sx, sy, sz)`` for the pixel aspect (default from ``hr_affine``, else isotropic).
        title: optional figure title.
        panel_size: panel size in inches.
        dpi: output resolution.

    Returns:
        ``path`` as a string.
    """
    if reference_key not in volumes:
        raise ValueError(f"volumes has no reference {reference_key!r}; keys: {list(volumes)}.")
    ref = _vol(volumes[reference_key], reference_key)
    if methods is None:
        methods = [k for k in volumes if k not in (reference_key, lr_label)]
    methods = list(methods)
    for k in methods:
        if k not in volumes:
            raise ValueError(f"method {k!r} not in volumes (keys: {list(volumes)}).")
    preds = {k: _vol(volumes[k], k) for k in methods}
    for k, v in preds.items():
        if v.shape != ref.shape:
            raise ValueError(f"{k!r} has shape {v.shape}, reference has {ref.shape}.")

    lr_vol = None
    if lr is None and lr_label in volumes:
        lr = volumes[lr_label]
    if lr is not None:
        lr_vol = _vol(lr, "lr")
        if lr_vol.shape != ref.shape:
            if lr_affine is None or hr_affine is None:
                raise ValueError(
                    f"lr has shape {lr_vol.shape} != reference {ref.shape}: pass lr_affine and hr_affine to "
                    "resample it, or pass an LR already resampled to the reference grid."
                )
            lr_vol = resample_to_grid(lr_vol, lr_affine, ref.shape, hr_affine, method="nearest")

    planes = list(planes)
    for pl in planes:
        check_option(pl, Plane, "plane")
    slice_index = dict(slice_index or {})
    idx = {}
    for pl in planes:
        n = ref.shape[PLANE_AXES[pl]]
        i = int(slice_index.get(pl, n // 2))
        if not 0 <= i < n:
            raise ValueError(f"slice index {i} out of range for plane {pl!r} (size {n}).")
        idx[pl] = i

    image_cols = ([lr_label] if lr_vol is not None else []) + methods + [reference_key]
    if len(image_cols) > MAX_IMAGE_COLUMNS:
        warnings.warn(
            f"{len(image_cols)} image columns (> {MAX_IMAGE_COLUMNS}); pass `methods=` to keep the figure readable.",
            stacklevel=2,
        )
    n_cols = len(image_cols) + len(methods)
    shown = {**({lr_label: lr_vol} if lr_vol is not None else {}), **preds, reference_key: ref}

    if intensity_range is None:
        vmin, vmax = float(np.nanmin(ref)), float(np.nanmax(ref))
        if vmax <= vmin:
            vmax = vmin + 1.0
    else:
        vmin, vmax = (float(v) for v in intensity_range)
    if error_max is None:
        errs = [
            np.abs(take_slice(preds[k], pl, idx[pl]) - take_slice(ref, pl, idx[pl])) for pl in planes for k in methods
        ]
        error_max = max((float(np.percentile(e, 99.5)) for e in errs), default=0.0)
        error_max = error_max if error_max > 0 else 1e-3
    sp = _spacing(hr_affine, spacing)

    figsize = (panel_size * n_cols + (0.8 if methods else 0.0), panel_size * len(planes) + 0.4)
    fig = Figure(figsize=figsize, layout="constrained")
    axes = np.asarray(fig.subplots(len(planes), n_cols, squeeze=False))
    gray, inferno = colormaps["gray"], colormaps["inferno"]
    for r, pl in enumerate(planes):
        ax_h, ax_v = [a for a in range(3) if a != PLANE_AXES[pl]]
        aspect = sp[ax_v] / sp[ax_h]
        ref_s = take_slice(ref, pl, idx[pl])
        for c, name in enumerate(image_cols):
            ax = axes[r, c]
            s = take_slice(shown[name], pl, idx[pl])
            ax.imshow(s.T, cmap=gray, vmin=vmin, vmax=vmax, origin="lower", aspect=aspect, interpolation="nearest")
            label = name if name == reference_key else f"{name}\n{slice_psnr(s, ref_s):.2f} dB"
            ax.set_title(label, fontsize=9)
        err_im = None
        for c, name in enumerate(methods, start=len(image_cols)):
            ax = axes[r, c]
            e = np.abs(take_slice(preds[name], pl, idx[pl]) - ref_s)
            err_im = ax.imshow(
                e.T, cmap=inferno, vmin=0.0, vmax=error_max, origin="lower", aspect=aspect, interpolation="nearest"
            )
            ax.set_title(f"|{name} − {reference_key}|", fontsize=9)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(f"{pl} [{idx[pl]}]", fontsize=9)
        if err_im is not None:
            cb = fig.colorbar(err_im, ax=list(axes[r, len(image_cols) :]), shrink=0.85, pad=0.02)
            cb.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    return _atomic_savefig(fig, path, dpi)


def plot_curve(
    path,
    xs,
    ys_by_label: Mapping[str, Sequence[float]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
    logy: bool = False,
    figsize: tuple[float, float] = (6.0, 4.0),
    dpi: int = 120,
    hlines: Mapping[str, float] | None = None,
) -> str:
    """Line plot of one or more curves (e.g. PSNR vs iteration or wall time), written atomically as PNG.

    Args:
        path: output PNG path (parent directories are created).
        xs: shared x values ``(N,)`` for every curve, or ``{label: (N_label,)}`` per curve.
        ys_by_label: ``{label: (N_label,)}`` y values; non-finite points are skipped.
        xlabel: x-axis label.
        ylabel: y-axis label.
        title: plot title.
        logx: logarithmic x axis.
        logy: logarithmic y axis.
        figsize: figure size in inches.
        dpi: output resolution.
        hlines: ``{label: y}`` horizontal reference lines (e.g. a baseline's PSNR), dashed.

    Returns:
        ``path`` as a string.
    """
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.subplots()
    for label, ys in ys_by_label.items():
        x = np.asarray(xs[label] if isinstance(xs, Mapping) else xs, dtype=np.float64).ravel()
        y = np.asarray(ys, dtype=np.float64).ravel()
        if x.shape != y.shape:
            raise ValueError(f"curve {label!r}: {x.size} x values but {y.size} y values.")
        ok = np.isfinite(x) & np.isfinite(y)
        ax.plot(x[ok], y[ok], label=str(label), marker="o" if ok.sum() <= 30 else None, markersize=3)
    for label, y in (hlines or {}).items():
        ax.axhline(float(y), linestyle="--", color="0.4", linewidth=1.0, label=str(label))
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if ys_by_label or hlines:
        ax.legend(fontsize=8)
    return _atomic_savefig(fig, path, dpi)


def uncertainty_figure(
    path,
    error: np.ndarray,
    uncertainty: np.ndarray,
    hr_affine=None,
    planes: Sequence[str] = ("axial", "coronal", "sagittal"),
    title: str | None = None,
    panel_size: float = 2.6,
    dpi: int = 100,
) -> str:
    """Where detail was inferred vs where it is wrong: one row per plane (middle slices), columns ``|error|`` and
    the uncertainty map, both ``(X, Y, Z)`` on one grid, each column on its own ``inferno`` scale (0 to its 99.5th
    percentile) with a colour bar. Written atomically; returns ``path``."""
    error, uncertainty = _vol(error, "error"), _vol(uncertainty, "uncertainty")
    if error.shape != uncertainty.shape:
        raise ValueError(f"error {error.shape} and uncertainty {uncertainty.shape} must share one grid.")
    sp = _spacing(hr_affine, None)
    fig = Figure(figsize=(2 * panel_size + 1.0, len(planes) * panel_size), layout="constrained")
    axes = np.asarray(fig.subplots(len(planes), 2, squeeze=False))
    columns = (("|error|", error), ("uncertainty", uncertainty))
    tops = [float(np.percentile(v, 99.5)) or 1.0 for _, v in columns]
    for row, plane in enumerate(planes):
        ax_h, ax_v = [a for a in range(3) if a != PLANE_AXES[plane]]
        index = error.shape[PLANE_AXES[plane]] // 2
        for col, (name, vol) in enumerate(columns):
            ax = axes[row, col]
            im = ax.imshow(take_slice(vol, plane, index).T, cmap=colormaps["inferno"], vmin=0.0, vmax=tops[col],
                           origin="lower", aspect=sp[ax_v] / sp[ax_h], interpolation="nearest")
            ax.set_title(f"{name} ({plane})", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _atomic_savefig(fig, path, dpi)
