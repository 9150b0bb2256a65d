"""Reading volumes (NIfTI, DICOM series folders, NRRD through MONAI's readers) and writing results atomically
(NIfTI with the grid's affine, PNG slices, animated GIFs)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage
from PIL import Image

from .transforms.array import NormalizeToUnitRange, check_volume
from .utils import atomic_path

__all__ = ["load_volume", "load_normalized", "save_nifti", "save_png", "save_gif", "to_uint8"]


def load_volume(path: str | os.PathLike, channel: int | None = None) -> MetaTensor:
    """Read a 3D volume as a channel-first MetaTensor ``(1, X, Y, Z)`` with its RAS affine.

    Args:
        path: a NIfTI file (``.nii``, ``.nii.gz``), a DICOM series folder, or an NRRD file (``.nrrd``, ``.nhdr``).
        channel: for a 4D image (several channels or time points), the one to use.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is not a readable image, is not 3D, or is 4D without a ``channel`` choice.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"Input volume not found: {p}")
    if p.is_dir() and not any(f.is_file() for f in p.iterdir()):
        raise ValueError(f"The folder {p} is empty: expected a DICOM series.")
    reader = "ITKReader" if p.is_dir() or p.suffix.lower() in (".nrrd", ".nhdr", ".dcm", ".mha", ".mhd") else None
    try:
        img = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)(str(p))
    except Exception as exc:  # MONAI wraps reader errors in several types; name the file and the cause
        raise ValueError(f"Could not read {p} as a medical image (NIfTI, DICOM series or NRRD): {exc}") from exc
    if not isinstance(img, MetaTensor):
        img = MetaTensor(img)
    if img.ndim == 3:
        raise ValueError(f"{p} is a 2D image (shape {tuple(img.shape[1:])}); a 3D volume is needed.")
    if img.ndim == 5:
        # (C, X, Y, Z, T) when the channel axis was not recognised: time or channels last
        img = img.squeeze(0) if img.shape[0] == 1 else img
        if img.ndim == 5:
            raise ValueError(f"{p} has shape {tuple(img.shape)}: not a 3D or 4D image.")
        img = MetaTensor(torch.movedim(img.as_tensor(), -1, 0), affine=img.affine, meta=img.meta)
    if img.ndim != 4:
        raise ValueError(f"{p} has {img.ndim - 1} spatial dimensions (shape {tuple(img.shape)}); expected 3.")
    if img.shape[0] > 1:
        if channel is None:
            raise ValueError(
                f"{p} is a 4D image with {img.shape[0]} channels/time points; choose one with channel=N "
                f"(0 … {img.shape[0] - 1})."
            )
        if not 0 <= channel < img.shape[0]:
            raise ValueError(f"channel {channel} does not exist: {p} has {img.shape[0]} channels.")
        img = img[channel : channel + 1]
    check_volume(img, str(p))
    return img


def load_normalized(path: str | os.PathLike, channel: int | None = None) -> MetaTensor:
    """:func:`load_volume` then :class:`~cunerf_monai.transforms.NormalizeToUnitRange` (range kept in meta)."""
    return NormalizeToUnitRange()(load_volume(path, channel))


def save_nifti(path: str | os.PathLike, volume: np.ndarray | torch.Tensor, affine: np.ndarray) -> str:
    """Write a 3D volume ``(X, Y, Z)`` as NIfTI with ``affine`` (voxel index → RAS mm), atomically.

    The spacing, origin and direction all come from ``affine``, so the file overlays the input in a viewer.
    """
    arr = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    if arr.ndim != 3:
        raise ValueError(f"save_nifti expects a 3D volume, got shape {arr.shape}.")
    img = nib.Nifti1Image(arr.astype(np.float32), np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    img.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return str(path)


def to_uint8(image: np.ndarray | torch.Tensor, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """Clip to ``[vmin, vmax]`` and scale to uint8 (no wrap-around of values above the range)."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    arr = (np.clip((arr - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0) * 255.0).round()
    return arr.astype(np.uint8)


def _display(image: np.ndarray) -> np.ndarray:
    """A plane ``(H, W)`` indexed ``[u, v]`` shown with ``u`` across and ``v`` upwards (radiological-ish view)."""
    return np.flipud(np.asarray(image).T)


def save_png(path: str | os.PathLike, image: np.ndarray | torch.Tensor, vmin: float = 0.0, vmax: float = 1.0) -> str:
    """Write a plane ``(H, W)`` of normalised intensities as an 8-bit PNG, atomically."""
    pic = Image.fromarray(_display(to_uint8(image, vmin, vmax)))
    with atomic_path(path) as tmp:
        pic.save(tmp, format="PNG")
    return str(path)


def save_gif(
    path: str | os.PathLike,
    frames: Sequence[np.ndarray | torch.Tensor],
    duration_ms: int = 150,
    vmin: float = 0.0,
    vmax: float = 1.0,
) -> str:
    """Write planes ``(H, W)`` as a looping animated GIF, atomically."""
    if not frames:
        raise ValueError("save_gif needs at least one frame.")
    pics = [Image.fromarray(_display(to_uint8(f, vmin, vmax))) for f in frames]
    with atomic_path(path) as tmp:
        pics[0].save(tmp, format="GIF", save_all=True, append_images=pics[1:], duration=duration_ms, loop=0)
    return str(path)
