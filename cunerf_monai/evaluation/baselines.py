"""Interpolation baselines for arbitrary-scale volume super-resolution, aligned through the affines.

Every baseline here maps an LR volume onto an HR grid using *only* the two voxel-to-world affines
(NIfTI / MONAI convention: an affine maps the voxel index ``(i, j, k, 1)`` of a voxel centre to world
millimetres). The continuous LR index of the HR voxel centre ``(i, j, k)`` is::

    inv(A_lr) @ A_hr @ [i, j, k, 1]

so the degradation convention (nearest decimation, box averaging, ...) is entirely encoded in the LR affine
and never assumed here. For example nearest decimation by ``s`` (HR voxel ``s*i`` kept as LR voxel ``i``)
gives ``A_lr = A_hr @ diag(s, s, s, 1)``; a box average of HR voxels ``s*i .. s*i+s-1`` puts LR voxel ``i``
at HR index ``s*i + (s-1)/2``, i.e. ``A_lr = A_hr @ T((s-1)/2) @ diag(s, s, s, 1)``.

Points of the HR grid that fall outside the LR grid are *clamped to the edge* (their coordinate is clipped
to ``[0, n-1]`` along each LR axis) so that the baselines are not penalised by zero padding.

When the LR-index map is axis aligned (a diagonal, optionally axis-permuted, linear part plus a shift, which
is the case for every decimation of an HR grid) all methods are evaluated exactly and fast as a sequence of
1D interpolation matrices applied along each axis. General (oblique) maps are supported for ``"nearest"``,
``"trilinear"`` and ``"bspline"`` through :func:`scipy.ndimage.map_coordinates`, processed in slabs to bound
memory; ``"keys"`` requires an axis-aligned map.

:func:`misaligned_resize` is the *careless* baseline that ignores the affines altogether and resizes the
array with the pixel-centre (``align_corners=False``) convention; it is only correct when that convention
happens to coincide with the true geometry and is reported to show why alignment matters.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ..enums import Baseline, check_option, option_names
from .arrays import as_volume

__all__ = [
    "BASELINES",
    "MISALIGNED_KEY",
    "lr_index_map",
    "resample_to_grid",
    "misaligned_resize",
    "run_baselines",
    "keys_kernel",
]

#: names of the affine-aligned baselines, in display order.
BASELINES = option_names(Baseline)
#: key of the misaligned (affine-ignoring) bicubic baseline in :func:`run_baselines`.
MISALIGNED_KEY = "bicubic_misaligned"

_KEYS_A = -0.5
# tolerance (in LR voxels, accumulated over the grid) under which an off-diagonal term is treated as zero.
_ALIGN_TOL = 1e-5
# coordinates closer than this (in LR voxels) to an integer or half-integer are snapped onto it so that
# round-off in inv(A_lr) @ A_hr does not flip nearest-neighbour ties.
_SNAP_TOL = 1e-7
# number of output voxels per map_coordinates call in the general (oblique) path.
_CHUNK_VOXELS = 1 << 21


def _as_volume(x, name: str) -> np.ndarray:
    """See :func:`cunerf_monai.evaluation.arrays.as_volume`."""
    return as_volume(x, name)


def _as_affine(a, name: str) -> np.ndarray:
    """Validate a 4x4 voxel-to-world affine and return it as float64.

    Args:
        a: array-like ``(4, 4)``.
        name: argument name used in error messages.
    """
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"{name} must be a 4x4 affine, got shape {a.shape}.")
    if not np.allclose(a[3], [0.0, 0.0, 0.0, 1.0]):
        raise ValueError(f"{name} last row must be [0, 0, 0, 1], got {a[3]}.")
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise ValueError(f"{name} is singular.")
    return a


def lr_index_map(lr_affine, out_affine) -> np.ndarray:
    """The 4x4 matrix mapping an output-grid voxel index to the continuous LR voxel index.

    Args:
        lr_affine: ``(4, 4)`` voxel-to-world affine of the LR volume.
        out_affine: ``(4, 4)`` voxel-to-world affine of the output (HR) grid.

    Returns:
        ``(4, 4)`` float64 matrix ``inv(lr_affine) @ out_affine``.
    """
    a_lr = _as_affine(lr_affine, "lr_affine")
    a_out = _as_affine(out_affine, "out_affine")
    return np.linalg.solve(a_lr, a_out)


def _axis_aligned(m: np.ndarray, out_shape: Sequence[int]):
    """Detect an axis-aligned (diagonal up to an axis permutation) LR index map.

    Args:
        m: ``(4, 4)`` output-index -> LR-index matrix.
        out_shape: ``(X, Y, Z)`` output shape, used to scale the tolerance.

    Returns:
        ``perm`` (tuple, output axis ``a`` reads LR axis ``perm[a]``) or ``None`` when the map is oblique.
    """
    lin = m[:3, :3]
    extent = np.maximum(np.asarray(out_shape, dtype=np.float64) - 1.0, 1.0)
    perm = [-1, -1, -1]
    for r in range(3):
        contrib = np.abs(lin[r]) * extent  # max displacement (LR voxels) induced by each output axis
        a = int(np.argmax(contrib))
        if abs(lin[r, a]) < 1e-12 or contrib.sum() - contrib[a] > _ALIGN_TOL:
            return None
        perm[a] = r
    if sorted(perm) != [0, 1, 2]:
        return None
    return tuple(perm)


def _snap(c: np.ndarray) -> np.ndarray:
    """Snap coordinates within ``_SNAP_TOL`` of a multiple of 0.5 onto it (float64, any shape)."""
    half = np.round(c * 2.0) / 2.0
    return np.where(np.abs(c - half) < _SNAP_TOL, half, c)


def keys_kernel(x: np.ndarray, a: float = _KEYS_A) -> np.ndarray:
    """Keys (1981) cubic convolution kernel.

    Args:
        x: array of any shape, signed distances in samples.
        a: free parameter, ``-0.5`` (default) gives third-order accuracy and reproduces quadratics.

    Returns:
        Kernel weights, same shape as ``x``.
    """
    ax = np.abs(np.asarray(x, dtype=np.float64))
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (a + 2.0) * ax3 - (a + 3.0) * ax2 + 1.0
    far = a * ax3 - 5.0 * a * ax2 + 8.0 * a * ax - 4.0 * a
    return np.where(ax <= 1.0, near, np.where(ax < 2.0, far, 0.0))


def _weights_1d(coords: np.ndarray, n_in: int, method: str) -> np.ndarray:
    """Dense 1D interpolation matrix for clamped coordinates.

    Args:
        coords: ``(n_out,)`` continuous input indices, already clamped to ``[0, n_in - 1]``.
        n_in: input length along this axis.
        method: ``"trilinear"`` (linear), ``"keys"`` or ``"bspline"``.

    Returns:
        ``(n_out, n_in)`` float64 matrix ``W`` such that ``out = W @ in`` along this axis.
    """
    n_out = coords.shape[0]
    w = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    if n_in == 1:
        w[:, 0] = 1.0
        return w
    if method == "trilinear":
        f = np.clip(np.floor(coords), 0, n_in - 2).astype(np.int64)
        t = coords - f
        np.add.at(w, (rows, f), 1.0 - t)
        np.add.at(w, (rows, f + 1), t)
    elif method == "keys":
        f = np.floor(coords).astype(np.int64)
        t = coords - f
        for off in (-1, 0, 1, 2):
            idx = np.clip(f + off, 0, n_in - 1)  # replicate boundary
            np.add.at(w, (rows, idx), keys_kernel(t - off))
    elif method == "bspline":
        # Columns = response of scipy's prefiltered cubic B-spline (mode "nearest") to each unit impulse; the
        # N-D scipy interpolation on a tensor grid factorises exactly into these 1D operators.
        basis = np.eye(n_in, dtype=np.float64)
        for m in range(n_in):
            w[:, m] = ndi.map_coordinates(basis[m], coords[None], order=3, mode="nearest", prefilter=True)
    else:  # pragma: no cover - guarded by callers
        raise ValueError(f"unknown method {method!r}")
    return w


def _apply_separable(vol: np.ndarray, mats: Sequence[np.ndarray | None]) -> np.ndarray:
    """Apply one 1D linear operator per axis.

    Args:
        vol: ``(n0, n1, n2)`` float64 array.
        mats: three ``(m_a, n_a)`` matrices (``None`` = identity, skipped).

    Returns:
        ``(m0, m1, m2)`` float64 array.
    """
    out = vol
    # cheapest first: axes that grow the array least are applied first.
    order = sorted(
        (a for a in range(3) if mats[a] is not None), key=lambda a: mats[a].shape[0] / max(mats[a].shape[1], 1)
    )
    for a in order:
        out = np.moveaxis(np.tensordot(mats[a], out, axes=([1], [a])), 0, a)
    return out


def _method_check(method: str) -> str:
    return check_option(str(method).lower(), Baseline, "method").value


def resample_to_grid(lr, lr_affine, out_shape: Sequence[int], out_affine, method: str = "trilinear") -> np.ndarray:
    """Resample an LR volume onto an output (HR) grid, aligned through the affines.

    The output voxel ``(i, j, k)`` takes the LR value interpolated at the continuous LR index
    ``inv(lr_affine) @ out_affine @ [i, j, k, 1]``; coordinates outside ``[0, n-1]`` are clamped to the edge.

    Args:
        lr: LR volume ``(x, y, z)`` (numpy array or torch tensor; a leading singleton channel is accepted).
        lr_affine: ``(4, 4)`` voxel-to-world affine of ``lr``.
        out_shape: ``(X, Y, Z)`` shape of the output grid.
        out_affine: ``(4, 4)`` voxel-to-world affine of the output grid.
        method: ``"nearest"`` (round half up, like scipy order 0), ``"trilinear"``, ``"bspline"`` (cubic B-spline
            with prefilter, i.e. ``scipy.ndimage.map_coordinates(order=3, mode="nearest")``) or ``"keys"``
            (Keys cubic convolution, ``a = -0.5``, replicate boundary; axis-aligned maps only).

    Returns:
        float32 array of shape ``out_shape``.

    Raises:
        ValueError: unknown method, bad shapes/affines, or ``"keys"`` with an oblique index map.
    """
    method = _method_check(method)
    vol = _as_volume(lr, "lr").astype(np.float64, copy=False)
    out_shape = tuple(int(s) for s in out_shape)
    if len(out_shape) != 3 or min(out_shape) < 1:
        raise ValueError(f"out_shape must be three positive ints, got {out_shape}.")
    m = lr_index_map(lr_affine, out_affine)
    perm = _axis_aligned(m, out_shape)

    if perm is not None:
        vol_t = np.transpose(vol, perm)  # output axis a <-> LR axis perm[a]
        coords = []
        for a in range(3):
            r = perm[a]
            c = m[r, a] * np.arange(out_shape[a], dtype=np.float64) + m[r, 3]
            coords.append(np.clip(_snap(c), 0.0, vol_t.shape[a] - 1.0))
        if method == "nearest":
            idx = [np.clip(np.floor(c + 0.5), 0, vol_t.shape[a] - 1).astype(np.int64) for a, c in enumerate(coords)]
            out = vol_t[np.ix_(*idx)]
        else:
            mats = []
            for a in range(3):
                n_in = vol_t.shape[a]
                c = coords[a]
                if n_in == out_shape[a] and np.allclose(c, np.arange(n_in), atol=1e-12):
                    mats.append(None)  # identity along this axis
                else:
                    mats.append(_weights_1d(c, n_in, method))
            out = _apply_separable(vol_t, mats)
        return np.ascontiguousarray(out, dtype=np.float32)

    if method == "keys":
        raise ValueError(
            "method 'keys' requires an axis-aligned LR index map inv(lr_affine) @ out_affine (diagonal up to an "
            f"axis permutation, plus a shift); got linear part\n{m[:3, :3]}"
        )
    order = {"nearest": 0, "trilinear": 1, "bspline": 3}[method]
    src = ndi.spline_filter(np.pad(vol, 12, mode="edge"), 3, output=np.float64, mode="nearest") if order == 3 else vol
    pad = 12 if order == 3 else 0
    out = np.empty(out_shape, dtype=np.float32)
    hi = np.asarray(vol.shape, dtype=np.float64) - 1.0
    rows = max(1, _CHUNK_VOXELS // (out_shape[1] * out_shape[2]))
    jj, kk = np.meshgrid(np.arange(out_shape[1]), np.arange(out_shape[2]), indexing="ij")
    for r0 in range(0, out_shape[0], rows):
        ii = np.arange(r0, min(r0 + rows, out_shape[0]), dtype=np.float64)
        grid = np.stack(np.broadcast_arrays(ii[:, None, None], jj[None], kk[None]), 0).reshape(3, -1)
        c = m[:3, :3] @ grid + m[:3, 3:4]
        c = np.clip(_snap(c), 0.0, hi[:, None]) + pad
        vals = ndi.map_coordinates(src, c, order=order, mode="nearest", prefilter=False)
        out[r0 : r0 + len(ii)] = vals.reshape(len(ii), out_shape[1], out_shape[2])
    return out


def misaligned_resize(lr, out_shape: Sequence[int], method: str = "cubic") -> np.ndarray:
    """MISALIGNED baseline: resize the LR array to ``out_shape`` ignoring the affines.

    Uses the pixel-centre / ``align_corners=False`` convention of image-resize libraries: along each axis the
    output index ``d`` reads the input at ``(d + 0.5) * n_in / n_out - 0.5`` (clamped to the edge). This is
    what a careless pipeline does (e.g. ``F.interpolate(..., align_corners=False)``); it only matches the true
    geometry when the degradation happens to follow that convention with an exact integer factor (box averaging
    with ``n_out == s * n_in``); for nearest decimation or non-integer shape ratios it is shifted by up to half
    an LR voxel. Reported only to show why alignment matters.

    Args:
        lr: LR volume ``(x, y, z)`` (numpy array or torch tensor; a leading singleton channel is accepted).
        out_shape: ``(X, Y, Z)`` target shape.
        method: ``"cubic"`` (prefiltered cubic B-spline, ``map_coordinates(order=3, mode="nearest")`` on those
            coordinates) or ``"trilinear"`` (``torch.nn.functional.interpolate`` with ``align_corners=False``).

    Returns:
        float32 array of shape ``out_shape``.
    """
    vol = _as_volume(lr, "lr")
    out_shape = tuple(int(s) for s in out_shape)
    if len(out_shape) != 3 or min(out_shape) < 1:
        raise ValueError(f"out_shape must be three positive ints, got {out_shape}.")
    method = str(method).lower()
    if method == "trilinear":
        t = torch.as_tensor(np.ascontiguousarray(vol, dtype=np.float32))[None, None]
        with torch.no_grad():
            out = F.interpolate(t, size=out_shape, mode="trilinear", align_corners=False)
        return out[0, 0].numpy().astype(np.float32, copy=False)
    if method not in ("cubic", "bicubic", "bspline"):
        raise ValueError(f"misaligned_resize method must be 'cubic' or 'trilinear', got {method!r}.")
    mats = []
    for a in range(3):
        n_in, n_out = vol.shape[a], out_shape[a]
        if n_in == n_out:
            mats.append(None)
            continue
        c = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        mats.append(_weights_1d(np.clip(c, 0.0, n_in - 1.0), n_in, "bspline"))
    out = _apply_separable(vol.astype(np.float64, copy=False), mats)
    return np.ascontiguousarray(out, dtype=np.float32)


def run_baselines(
    lr, lr_affine, hr_shape: Sequence[int], hr_affine, include_misaligned: bool = True
) -> dict[str, np.ndarray]:
    """Run every aligned baseline (and optionally the misaligned bicubic resize).

    Args:
        lr: LR volume ``(x, y, z)``.
        lr_affine: ``(4, 4)`` affine of ``lr``.
        hr_shape: ``(X, Y, Z)`` HR grid shape.
        hr_affine: ``(4, 4)`` affine of the HR grid.
        include_misaligned: also return ``"bicubic_misaligned"`` (:func:`misaligned_resize`, cubic).

    Returns:
        dict ``{name: float32 array (X, Y, Z)}`` with keys ``BASELINES`` (+ ``"bicubic_misaligned"``).
        ``"keys"`` is omitted (with a warning) if the index map is oblique.
    """
    out: dict[str, np.ndarray] = {}
    for name in BASELINES:
        try:
            out[name] = resample_to_grid(lr, lr_affine, hr_shape, hr_affine, method=name)
        except ValueError as e:
            if name != "keys" or "axis-aligned" not in str(e):
                raise
            warnings.warn(f"skipping 'keys' baseline: {e}", stacklevel=2)
    if include_misaligned:
        out[MISALIGNED_KEY] = misaligned_resize(lr, hr_shape, method="cubic")
    return out
