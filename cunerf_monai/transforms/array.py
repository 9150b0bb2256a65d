"""Array transforms (channel-first images ``(C, X, Y, Z)``, MONAI style): intensity normalisation, LR simulation,
coordinate grids."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import Transform
from monai.utils import TransformBackends, convert_to_tensor
from scipy import ndimage

from ..enums import Degradation, check_option, option_names
from ..geometry import VolumeGeometry

__all__ = [
    "NormalizeToUnitRange",
    "SimulateLowResolution",
    "CoordinateGrid",
    "check_volume",
    "denormalize_intensity",
    "lr_affine",
    "degradation_factors",
    "DEGRADATIONS",
]

DEGRADATIONS = option_names(Degradation)
INTENSITY_RANGE_KEY = "intensity_range"


def _affine_of(img: NdarrayOrTensor) -> np.ndarray:
    """The 4×4 affine of a MetaTensor (identity for plain arrays)."""
    if isinstance(img, MetaTensor):
        return np.asarray(convert_to_tensor(img.affine, track_meta=False).cpu().numpy(), dtype=np.float64)
    return np.eye(4)


def check_volume(img: NdarrayOrTensor, name: str = "image") -> None:
    """Raise a ``ValueError`` naming the problem if ``img`` is not a usable channel-first 3D volume.

    Checks: ``(C, X, Y, Z)`` layout with one channel, every axis at least 2 voxels, finite values, not constant.
    """
    shape = tuple(img.shape)
    if len(shape) != 4:
        raise ValueError(f"{name} must be a 3D volume with a channel axis (C, X, Y, Z); got shape {shape}.")
    if shape[0] != 1:
        raise ValueError(
            f"{name} has {shape[0]} channels (a 4D image?); choose one channel (e.g. the 'channel' option) first."
        )
    if min(shape[1:]) < 2:
        raise ValueError(f"{name} has shape {shape[1:]}: a 2D image or a single slice cannot be super-resolved in 3D.")
    t = convert_to_tensor(img, track_meta=False)
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        raise ValueError(f"{name} contains {int((~finite).sum())} NaN or infinite voxels.")
    if float(t.max()) == float(t.min()):
        raise ValueError(f"{name} is constant (every voxel is {float(t.min())}): there is nothing to super-resolve.")


class NormalizeToUnitRange(Transform):
    """Min–max normalisation to ``[0, 1]`` that remembers the original range (the paper's protocol).

    The range ``(lo, hi)`` is taken at the ``lower`` / ``upper`` percentiles (0 and 100: min and max); values
    outside are clipped. It is stored in ``img.meta["intensity_range"]`` so renders can be mapped back with
    :func:`denormalize_intensity`. NaN/Inf voxels and constant volumes raise a ``ValueError``.

    Args:
        lower: lower percentile of the range.
        upper: upper percentile of the range.

    Examples::

        >>> out = NormalizeToUnitRange()(MetaTensor(torch.tensor([[[[2.0, 4.0], [6.0, 10.0]]] * 2])))
        >>> out.meta["intensity_range"], float(out.max())
        ([2.0, 10.0], 1.0)
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, lower: float = 0.0, upper: float = 100.0) -> None:
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"Percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}.")
        self.lower, self.upper = float(lower), float(upper)

    def __call__(self, img: NdarrayOrTensor) -> MetaTensor:
        check_volume(img)
        t = convert_to_tensor(img, track_meta=False, dtype=torch.float32)
        if self.lower == 0.0 and self.upper == 100.0:
            lo, hi = float(t.min()), float(t.max())
        else:
            q = np.percentile(t.cpu().numpy(), [self.lower, self.upper])
            lo, hi = float(q[0]), float(q[1])
        if hi <= lo:
            raise ValueError(f"The intensity range between the {self.lower} and {self.upper} percentiles is empty.")
        out = ((t - lo) / (hi - lo)).clamp(0.0, 1.0)
        meta = dict(img.meta) if isinstance(img, MetaTensor) else {}
        meta.pop("affine", None)
        meta[INTENSITY_RANGE_KEY] = [lo, hi]
        return MetaTensor(out, affine=torch.as_tensor(_affine_of(img)), meta=meta)


def denormalize_intensity(values: NdarrayOrTensor, intensity_range: Sequence[float]) -> NdarrayOrTensor:
    """Map normalised values back to the original range ``(lo, hi)``: ``lo + v · (hi − lo)``."""
    lo, hi = float(intensity_range[0]), float(intensity_range[1])
    return values * (hi - lo) + lo


def degradation_factors(scale: float | Sequence[float], slice_axis: int | None = None) -> tuple[int, int, int]:
    """Per-axis integer factors: ``scale`` on every axis (3D), or only on ``slice_axis`` (volumetric MISR)."""
    s = np.asarray(scale, dtype=np.float64).reshape(-1)
    if s.size == 3:
        factors = s
    elif s.size == 1:
        factors = np.ones(3) if slice_axis is not None else np.repeat(s, 3)
        if slice_axis is not None:
            if slice_axis not in (0, 1, 2):
                raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}.")
            factors[slice_axis] = s[0]
    else:
        raise ValueError(f"scale must be one number or three, got {list(s)}.")
    if np.any(factors < 1) or np.any(factors != np.round(factors)):
        raise ValueError(f"Degradation factors must be integers >= 1, got {list(factors)}.")
    return tuple(int(f) for f in factors)  # type: ignore[return-value]


def lr_affine(hr_affine: np.ndarray, factors: Sequence[int], mode: str) -> np.ndarray:
    """Affine of an LR volume simulated from an HR volume with ``hr_affine``.

    ``nearest``: LR voxel ``i`` is HR voxel ``s·i``. ``box``/``gaussian``: LR voxel ``i`` covers HR voxels
    ``s·i … s·i + s − 1`` and sits at their centre, HR index ``s·i + (s − 1)/2``.
    """
    f = np.asarray(factors, dtype=np.float64)
    index_map = np.diag(np.append(f, 1.0))
    if check_option(mode, Degradation, "mode") != Degradation.NEAREST:
        index_map[:3, 3] = (f - 1.0) / 2.0
    return np.asarray(hr_affine, dtype=np.float64) @ index_map


class SimulateLowResolution(Transform):
    """Simulate the LR acquisition of an HR volume, with the LR affine of where the LR voxels really are.

    Modes (per axis with factor ``s > 1``):

    * ``"nearest"``: decimation of the paper, ``LR[i] = HR[s·i]``; LR size ``⌈S / s⌉``.
    * ``"box"``: a scanner voxel, the mean of HR voxels ``s·i … s·i + s − 1`` (partial volume); size ``⌊S / s⌋``.
    * ``"gaussian"``: a Gaussian slice profile of FWHM ``s`` HR voxels centred on the LR voxel; size ``⌊S / s⌋``.

    Args:
        factors: integer factor per axis, e.g. ``(2, 2, 2)`` (3D) or ``(1, 1, 4)`` (slice axis only).
        mode: one of ``"nearest"``, ``"box"``, ``"gaussian"``.

    Input ``(C, X, Y, Z)``; output ``(C, X', Y', Z')`` MetaTensor with the LR affine and
    ``meta["lr_simulation"] = {"factors": [...], "mode": ...}``.
    """

    backend = [TransformBackends.NUMPY]

    def __init__(self, factors: Sequence[int] = (2, 2, 2), mode: str = Degradation.NEAREST) -> None:
        self.factors = degradation_factors(factors)
        self.mode = check_option(mode, Degradation, "mode").value

    def __call__(self, img: NdarrayOrTensor) -> MetaTensor:
        arr = convert_to_tensor(img, track_meta=False).cpu().numpy().astype(np.float32)
        if arr.ndim != 4:
            raise ValueError(f"Expected a channel-first 3D image (C, X, Y, Z), got shape {arr.shape}.")
        for n, f in zip(arr.shape[1:], self.factors):
            if n // f < 2:
                raise ValueError(f"An axis of {n} voxels is too small to decimate by {f} (fewer than 2 LR voxels).")
        out = arr
        for axis, f in enumerate(self.factors, start=1):
            if f == 1:
                continue
            if self.mode == Degradation.NEAREST:
                out = np.take(out, np.arange(0, out.shape[axis], f), axis=axis)
            elif self.mode == Degradation.BOX:
                n = out.shape[axis] // f
                moved = np.moveaxis(out, axis, -1)[..., : n * f]
                out = np.moveaxis(moved.reshape(*moved.shape[:-1], n, f).mean(-1), -1, axis)
            else:
                sigma = f / (2.0 * np.sqrt(2.0 * np.log(2.0)))
                blurred = ndimage.gaussian_filter1d(out, sigma, axis=axis, mode="nearest")
                n = out.shape[axis] // f
                pos = f * np.arange(n) + (f - 1) / 2.0
                lo = np.floor(pos).astype(int)
                frac = (pos - lo).astype(np.float32)
                hi = np.minimum(lo + 1, out.shape[axis] - 1)
                shape = [1] * out.ndim
                shape[axis] = n
                frac = frac.reshape(shape)
                out = np.take(blurred, lo, axis=axis) * (1 - frac) + np.take(blurred, hi, axis=axis) * frac
        meta = dict(img.meta) if isinstance(img, MetaTensor) else {}
        meta["lr_simulation"] = {"factors": list(self.factors), "mode": self.mode}
        affine = lr_affine(_affine_of(img), self.factors, self.mode)
        meta.pop("affine", None)
        meta.pop("spatial_shape", None)
        out_t = MetaTensor(torch.as_tensor(np.ascontiguousarray(out)), affine=torch.as_tensor(affine), meta=meta)
        out_t.meta["spatial_shape"] = np.asarray(out.shape[1:])
        return out_t


class CoordinateGrid(Transform):
    """Field coordinates (Eq. 6–7) of every voxel of a channel-first image: ``(C, X, Y, Z)`` → ``(3, X, Y, Z)``.

    Args:
        padding: margin ``P`` in voxels per axis.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, padding: float | Sequence[float] = 1.0) -> None:
        self.padding = padding

    def __call__(self, img: NdarrayOrTensor) -> MetaTensor:
        geometry = VolumeGeometry(tuple(img.shape[1:]), _affine_of(img), self.padding)  # type: ignore[arg-type]
        grid = torch.as_tensor(geometry.voxel_field_grid(), dtype=torch.float32).permute(3, 0, 1, 2)
        return MetaTensor(grid, affine=torch.as_tensor(geometry.affine))
