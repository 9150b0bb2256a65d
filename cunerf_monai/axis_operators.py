"""Linear operators along one axis of a volume: how LR samples are made from a finer grid, how they are
interpolated back, and the exact correction that makes a fine volume reproduce its LR samples.

Every operator is a small dense matrix acting on one axis (a few hundred samples at most), applied to a whole
volume with :func:`apply_along_axis`. Positions are plain numbers in one unit per call (mm or voxels): a fine
grid is a list of sample centres with one spacing (each fine sample stands for a box of that width, the
partial-volume model of a voxel), LR samples are centres with a footprint.

* :func:`footprint_matrix` ``A`` ``(n_lr, n_fine)``: the LR sample ``k`` as the mean of the fine grid under its
  profile (``"box"`` of a width, ``"gaussian"`` of a FWHM, ``"point"`` = linear interpolation at the centre);
  this is the forward model of the fit along that axis.
* :func:`interpolation_matrix` ``U`` ``(n_dst, n_src)``: Keys cubic convolution from uniform samples to
  positions, the edge sample repeated beyond the ends.
* :func:`consistent_interpolation` ``C = U (A U)⁻¹`` ``(n_fine, n_lr)``: the cubic interpolant whose footprint
  means are the LR samples (Unser's consistent sampling along one axis: what the grid field converges to when
  fitted through the forward model). For a point profile it is ``U`` itself.
* :func:`consistent_correction` ``P`` ``(n_fine, n_lr)``: ``x + P (y − A x)`` reproduces ``y`` exactly
  (``A P = I``) and changes ``x`` as little as possible in the norm of a smooth covariance ``W``:
  ``P = W Aᵀ (A W Aᵀ)⁻¹`` (the minimum-``W⁻¹``-norm correction; ``W = I`` spreads each residual evenly over
  its footprint, a Gaussian ``W`` spreads it smoothly).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

__all__ = [
    "PROFILES",
    "footprint_matrix",
    "interpolation_matrix",
    "consistent_correction",
    "consistent_interpolation",
    "bspline_interpolation_matrix",
    "box_resampling_matrix",
    "apply_along_axis",
    "keys_weights",
    "baseline_interpolation_matrices",
]

PROFILES = ("point", "box", "gaussian")
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr

    return ndtr(x)


def footprint_matrix(
    lr_positions: Sequence[float] | np.ndarray,
    fine_positions: Sequence[float] | np.ndarray,
    fine_spacing: float,
    profile: str,
    width: float,
) -> np.ndarray:
    """The LR samples as weighted means of a fine grid: ``A`` ``(n_lr, n_fine)``, rows summing to one.

    Args:
        lr_positions: LR sample centres ``(n_lr,)``.
        fine_positions: fine sample centres ``(n_fine,)``, uniformly spaced by ``fine_spacing``; fine sample ``j``
            is the mean of its box ``[x_j − d/2, x_j + d/2]``.
        fine_spacing: ``d``, the fine grid's spacing (same unit as the positions).
        profile: ``"box"`` (weight = overlap of ``[c − w/2, c + w/2]`` with each fine box), ``"gaussian"`` (the
            Gaussian of FWHM ``width`` integrated over each fine box) or ``"point"`` (linear interpolation of the
            fine samples at the centre ``c``).
        width: box length or Gaussian FWHM (ignored for a point).

    Rows are renormalised to one, so a footprint that reaches beyond the fine grid averages what it covers
    (the LR edge voxel of a volume whose fine grid ends inside it).

    Example::

        >>> footprint_matrix([1.0], [0.0, 1.0, 2.0], 1.0, "box", 2.0).round(3).tolist()
        [[0.25, 0.5, 0.25]]
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}.")
    c = np.asarray(lr_positions, dtype=np.float64).reshape(-1, 1)
    x = np.asarray(fine_positions, dtype=np.float64).reshape(1, -1)
    d = float(fine_spacing)
    if d <= 0:
        raise ValueError(f"fine_spacing must be positive, got {fine_spacing}.")
    if profile == "point" or width <= 0:
        w = np.clip(1.0 - np.abs(c - x) / d, 0.0, None)
        # a centre beyond the grid: the nearest end sample (the grid's edge is continued)
        out = (c < x.min()) | (c > x.max())
        w[out[:, 0]] = 0.0
        ends = np.where(c[:, 0] < x.min(), 0, x.shape[1] - 1)
        w[out[:, 0], ends[out[:, 0]]] = 1.0
    elif profile == "box":
        lo = np.maximum(c - width / 2.0, x - d / 2.0)
        hi = np.minimum(c + width / 2.0, x + d / 2.0)
        w = np.clip(hi - lo, 0.0, None)
    else:
        sigma = width / _FWHM_PER_SIGMA
        w = _normal_cdf((x + d / 2.0 - c) / sigma) - _normal_cdf((x - d / 2.0 - c) / sigma)
    total = w.sum(axis=1, keepdims=True)
    if np.any(total <= 0):
        raise ValueError("an LR footprint covers no fine sample: the fine grid does not reach it.")
    return w / total


def box_resampling_matrix(
    src_positions: Sequence[float] | np.ndarray, src_spacing: float, dst_positions: Sequence[float] | np.ndarray, dst_spacing: float
) -> np.ndarray:
    """A coarser grid from a finer one by partial volume: ``B`` ``(n_dst, n_src)``, each destination sample the
    mean of the source boxes its own box ``[x − D/2, x + D/2]`` covers (fractional overlaps)."""
    return footprint_matrix(dst_positions, src_positions, src_spacing, "box", float(dst_spacing))


def keys_weights(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel at distances ``t`` (in sample spacings)."""
    t = np.abs(t)
    out = np.zeros_like(t)
    near, far = t <= 1.0, (t > 1.0) & (t < 2.0)
    out[near] = (a + 2.0) * t[near] ** 3 - (a + 3.0) * t[near] ** 2 + 1.0
    out[far] = a * t[far] ** 3 - 5.0 * a * t[far] ** 2 + 8.0 * a * t[far] - 4.0 * a
    return out


def _source_index(
    src_positions: Sequence[float] | np.ndarray, dst_positions: Sequence[float] | np.ndarray
) -> tuple[int, np.ndarray]:
    """``(n_src, u)``: the continuous source index ``u`` ``(n_dst,)`` of each destination position, clamped onto the
    outermost samples (all zeros for a single source sample)."""
    src = np.asarray(src_positions, dtype=np.float64)
    dst = np.asarray(dst_positions, dtype=np.float64).reshape(-1)
    if src.size == 1:
        return 1, np.zeros_like(dst)
    step = (src[-1] - src[0]) / (src.size - 1)
    return src.size, np.clip((dst - src[0]) / step, 0.0, src.size - 1.0)


def interpolation_matrix(
    src_positions: Sequence[float] | np.ndarray, dst_positions: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Keys cubic interpolation from uniform samples at ``src_positions`` ``(n_src,)`` to ``dst_positions``:
    ``U`` ``(n_dst, n_src)``. Beyond the outermost samples the edge sample is repeated (clamped), like the
    aligned baselines; with a single source sample every row is that sample."""
    n, u = _source_index(src_positions, dst_positions)
    if n == 1:
        return np.ones((u.size, 1))
    base = np.floor(u).astype(np.int64)
    mat = np.zeros((u.size, n))
    rows = np.arange(u.size)
    for tap in range(-1, 3):
        idx = base + tap
        w = keys_weights(u - idx)
        np.add.at(mat, (rows, np.clip(idx, 0, n - 1)), w)
    return mat / mat.sum(axis=1, keepdims=True)


def baseline_interpolation_matrices(
    src_positions: Sequence[float] | np.ndarray, dst_positions: Sequence[float] | np.ndarray
) -> dict[str, np.ndarray]:
    """The aligned interpolation baselines along one axis, ``{name: (n_dst, n_src)}`` for ``"trilinear"``,
    ``"keys"`` and ``"bspline"``: the 1D operators of :func:`cunerf_monai.evaluation.resample_to_grid`, positions
    beyond the outermost samples clamped onto them."""
    from .evaluation.baselines import _weights_1d  # here: the evaluation package imports the prior, which imports this

    n, u = _source_index(src_positions, dst_positions)
    return {name: _weights_1d(u, n, name) for name in ("trilinear", "keys", "bspline")}


def bspline_interpolation_matrix(
    src_positions: Sequence[float] | np.ndarray, dst_positions: Sequence[float] | np.ndarray, edge_pad: int = 12
) -> np.ndarray:
    """Cubic B-spline interpolation from uniform samples at ``src_positions`` ``(n_src,)`` to ``dst_positions``:
    ``(n_dst, n_src)``. As the aligned B-spline baseline: the samples are edge-padded by ``edge_pad`` before the
    interpolation prefilter, and positions beyond the outermost samples are clamped onto them."""
    n, u = _source_index(src_positions, dst_positions)
    if n == 1:
        return np.ones((u.size, 1))
    m = int(edge_pad)
    ext = n + 2 * m
    pad = np.zeros((ext, n))  # the padded samples from the samples (edges repeated)
    pad[np.arange(ext), np.clip(np.arange(ext) - m, 0, n - 1)] = 1.0
    k = np.arange(ext)
    basis = np.zeros((ext, ext))  # β³ at the integer positions: (1, 4, 1) / 6
    basis[k, k] = 4.0 / 6.0
    basis[k[1:], k[:-1]] = basis[k[:-1], k[1:]] = 1.0 / 6.0
    basis[0, 0] = basis[-1, -1] = 5.0 / 6.0  # the outermost coefficient mirrored (its value repeats beyond the end)
    t = np.abs(u[:, None] + m - k[None, :])
    beta = np.where(t < 1.0, 2.0 / 3.0 - t**2 + t**3 / 2.0, np.where(t < 2.0, (2.0 - t) ** 3 / 6.0, 0.0))
    return beta @ np.linalg.solve(basis, pad)


def consistent_interpolation(u: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``C = U (A U)⁻¹`` ``(n_fine, n_lr)``: interpolate "virtual samples" ``v = (A U)⁻¹ y`` so that the footprint
    means ``A C y`` of the interpolant are exactly ``y``, for ``U`` ``(n_fine, n_lr)`` an interpolation from the LR
    positions (:func:`interpolation_matrix`) and ``A`` ``(n_lr, n_fine)`` their footprints (:func:`footprint_matrix`).
    It undoes the footprint's blur below the LR Nyquist frequency."""
    return u @ np.linalg.inv(a @ u)


def consistent_correction(a: np.ndarray, covariance_width: float = 0.0, ridge: float = 1e-9) -> np.ndarray:
    """``P`` ``(n_fine, n_lr)`` with ``A P = I``: ``x + P (y − A x)`` reproduces the LR samples ``y`` exactly.

    Args:
        a: the footprint matrix ``(n_lr, n_fine)`` (:func:`footprint_matrix`).
        covariance_width: ``σ`` of the Gaussian covariance ``W_ij = exp(−(i − j)² / 2σ²)`` in fine samples; ``0``
            uses ``W = I`` (each residual spread evenly over its footprint).
        ridge: relative Tikhonov term on ``A W Aᵀ`` (numerical safety only; LR footprints are independent).
    """
    n_fine = a.shape[1]
    if covariance_width > 0:
        idx = np.arange(n_fine, dtype=np.float64)
        cov = np.exp(-((idx[:, None] - idx[None, :]) ** 2) / (2.0 * covariance_width**2))
    else:
        cov = np.eye(n_fine)
    gram = a @ cov @ a.T
    gram += ridge * np.trace(gram) / gram.shape[0] * np.eye(gram.shape[0])
    return cov @ a.T @ np.linalg.inv(gram)


def apply_along_axis(matrix: np.ndarray | torch.Tensor, volume: torch.Tensor, axis: int) -> torch.Tensor:
    """``M`` ``(m, n)`` applied to axis ``axis`` of ``volume`` (length ``n`` there): the result has length ``m``
    along that axis and the other axes unchanged (dtype and device of ``volume``)."""
    mat = torch.as_tensor(matrix, dtype=volume.dtype, device=volume.device)
    if volume.shape[axis] != mat.shape[1]:
        raise ValueError(f"axis {axis} has {volume.shape[axis]} samples, the operator takes {mat.shape[1]}.")
    moved = torch.movedim(volume, axis, -1)
    return torch.movedim(moved @ mat.T, -1, axis)
