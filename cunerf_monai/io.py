"""Reading volumes (NIfTI, DICOM series folders, NRRD through MONAI's readers) and writing results atomically
(NIfTI with the grid's affine, PNG slices, animated GIFs)."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage
from PIL import Image

from .enums import OutputDtype, check_option
from .transforms.array import NormalizeToUnitRange, check_volume
from .utils import atomic_path

__all__ = [
    "load_volume", "load_normalized", "save_nifti", "save_png", "save_gif", "to_uint8", "output_dtype",
    "STORED_DTYPE_KEY",
]

#: meta key of the type the volume's values were stored with (``"int16"``, ``"uint8"``, ``"float32"``…)
STORED_DTYPE_KEY = "stored_dtype"


_ITK_SUFFIXES = (".nrrd", ".nhdr", ".dcm", ".mha", ".mhd")
_NIFTI_HEADER_BYTES = 348  # sizeof_hdr of NIfTI-1 (NIfTI-2: 540)
_FORMATS = "NIfTI (.nii/.nii.gz), a DICOM series folder or NRRD (.nrrd/.nhdr)"


def _first_line(exc: BaseException) -> str:
    """The first line of an exception message (MONAI appends installation advice that does not apply here)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()


def _gzip_problem(p: Path) -> str | None:
    """Why a ``.gz`` file cannot be a gzip-compressed NIfTI, or ``None`` when its gzip stream is complete."""
    with open(p, "rb") as f:
        magic = f.read(2)
    if magic != b"\x1f\x8b":
        named = "".join(p.suffixes[-2:]) or p.suffix
        return f"{p} is named {named} but is not gzip-compressed: it is not a NIfTI .nii.gz file"
    size = 0
    try:
        with gzip.open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                size += len(chunk)
    except (EOFError, OSError, zlib.error) as exc:
        return f"{p} is truncated or corrupt: its gzip stream is incomplete ({_first_line(exc)})"
    if size < _NIFTI_HEADER_BYTES:
        return (
            f"{p} is truncated: it holds {size} bytes once decompressed, less than a NIfTI header "
            f"({_NIFTI_HEADER_BYTES})"
        )
    return None


def _nifti_problem(p: Path) -> str | None:
    """Why an uncompressed ``.nii`` file cannot be read, or ``None`` when its size matches its header."""
    size = p.stat().st_size
    if size < _NIFTI_HEADER_BYTES:
        return f"{p} is truncated: {size} bytes, less than a NIfTI header ({_NIFTI_HEADER_BYTES})"
    try:
        img = nib.load(str(p))
    except Exception:
        return f"{p} is not a NIfTI file (its header is not a valid NIfTI-1/NIfTI-2 header)"
    hdr = img.header
    needed = int(hdr.get_data_offset()) + int(np.prod(img.shape)) * np.dtype(hdr.get_data_dtype()).itemsize
    if size < needed:
        return f"{p} is truncated: {size} bytes, but its header describes {needed} bytes of image"
    return None


def _dicom_series(p: Path) -> list[str]:
    """The DICOM series UIDs in folder ``p`` (the way MONAI's ITKReader groups them)."""
    import itk

    warn = itk.Object.GetGlobalWarningDisplay()
    itk.Object.SetGlobalWarningDisplay(False)  # "No Series were found" is reported by the caller, in words
    try:
        names = itk.GDCMSeriesFileNames.New()
        names.SetUseSeriesDetails(True)
        names.AddSeriesRestriction("0008|0021")  # series date, as MONAI's ITKReader
        names.SetDirectory(str(p))
        return [str(uid) for uid in names.GetSeriesUIDs()]
    finally:
        itk.Object.SetGlobalWarningDisplay(warn)


def _read_problem(p: Path, exc: BaseException) -> str:
    """A message naming what is wrong with ``p`` after a reader failed with ``exc``."""
    try:
        if p.is_file() and p.name.lower().endswith(".gz"):
            problem = _gzip_problem(p)
            if problem:
                return problem
        if p.is_file() and p.suffix.lower() == ".nii":
            problem = _nifti_problem(p)
            if problem:
                return problem
    except OSError as os_exc:
        return f"Could not read {p}: {_first_line(os_exc)}"
    kinds = {".nrrd": "an NRRD image", ".nhdr": "an NRRD image", ".mha": "a MetaImage", ".mhd": "a MetaImage"}
    kinds[".dcm"] = "a DICOM file"
    kind = kinds.get(p.suffix.lower(), f"a medical image ({_FORMATS})")
    cause = _first_line(exc)
    if "suitable reader" in cause:  # MONAI: every reader refused the file
        cause = "no reader accepts it (damaged, or not the format its name says)"
    return f"Could not read {p} as {kind}: {cause}"


def _stored_dtype(p: Path) -> str | None:
    """The value type of a NIfTI file as its header stores it (``float32`` when a slope or intercept rescales the
    values), or ``None`` for other formats (their type is read off the loaded array; MONAI widens unsigned 16-
    and 32-bit types to signed 32- and 64-bit ones)."""
    if not (p.is_file() and p.name.lower().endswith((".nii", ".nii.gz"))):
        return None
    try:
        proxy = nib.load(str(p)).dataobj
        slope, inter = float(getattr(proxy, "slope", 1.0)), float(getattr(proxy, "inter", 0.0))
        rescaled = not (np.isnan(slope) or slope == 1.0) or not (np.isnan(inter) or inter == 0.0)
        return "float32" if rescaled else np.dtype(proxy.dtype).name
    except Exception:
        return None


def load_volume(path: str | os.PathLike, channel: int | None = None, validate: bool = True) -> MetaTensor:
    """Read a 3D volume as a float32 channel-first MetaTensor ``(1, X, Y, Z)`` with its RAS affine.

    The type the values were stored with (``int16`` for most CT, ``float32``…; ``float32`` when a NIfTI slope or
    intercept rescales them) is kept in ``meta["stored_dtype"]``, so renders can be written back in it.

    NIfTI files are read with nibabel; DICOM series folders and NRRD/MetaImage files with ITK (its LPS
    geometry converted to RAS, ``RAS = diag(-1, -1, 1) · LPS``), so the affine maps voxel indices to the same
    world positions as the file's own geometry.

    Args:
        path: a NIfTI file (``.nii``, ``.nii.gz``), a DICOM series folder, or an NRRD file (``.nrrd``, ``.nhdr``).
        channel: for a 4D image (several channels or time points), the one to use.
        validate: check the values too (finite, not constant, every axis >= 2 voxels; see
            :func:`~cunerf_monai.transforms.array.check_volume`). Turn off to read only a grid (a reference
            image); a multi-channel image then gives its first channel unless ``channel`` is set.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is not a readable image (empty, truncated, not the format its name says), a folder
            without exactly one DICOM series, not 3D, 4D without a ``channel`` choice, a degenerate geometry, or
            (``validate``) values that cannot be fitted.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"Input volume not found: {p}")
    if p.is_dir():
        if not any(f.is_file() for f in p.iterdir()):
            raise ValueError(f"The folder {p} is empty: expected a DICOM series.")
        series = _dicom_series(p)
        if not series:
            raise ValueError(f"No DICOM series found in the folder {p}: expected the .dcm files of one series.")
        if len(series) > 1:
            raise ValueError(
                f"The folder {p} holds {len(series)} DICOM series ({', '.join(series[:4])}"
                f"{' …' if len(series) > 4 else ''}); put the series to use in a folder of its own."
            )
    elif p.stat().st_size == 0:
        raise ValueError(f"{p} is an empty file (0 bytes): not an image.")
    reader = "ITKReader" if p.is_dir() or p.suffix.lower() in _ITK_SUFFIXES else None
    try:
        img = LoadImage(reader=reader, image_only=True, ensure_channel_first=True, dtype=None)(str(p))
    except Exception as exc:  # MONAI wraps reader errors in several types; name the file and the cause
        raise ValueError(_read_problem(p, exc)) from None  # the message names the cause; __context__ keeps it
    if not isinstance(img, MetaTensor):
        img = MetaTensor(img)
    if img.ndim == 3:
        hint = " (a single DICOM slice? pass the folder of the series)" if p.suffix.lower() == ".dcm" else ""
        raise ValueError(f"{p} is a 2D image (shape {tuple(img.shape[1:])}){hint}; a 3D volume is needed.")
    if img.ndim == 5:
        # (C, X, Y, Z, T) when the channel axis was not recognised: time or channels last
        img = img.squeeze(0) if img.shape[0] == 1 else img
        if img.ndim == 5:
            raise ValueError(f"{p} has shape {tuple(img.shape)}: not a 3D or 4D image.")
        img = MetaTensor(torch.movedim(img.as_tensor(), -1, 0), affine=img.affine, meta=img.meta)
    if img.ndim != 4:
        raise ValueError(f"{p} has {img.ndim - 1} spatial dimensions (shape {tuple(img.shape)}); expected 3.")
    if p.is_file() and p.suffix.lower() == ".dcm" and min(img.shape[1:]) < 2:
        raise ValueError(
            f"{p} is a single DICOM slice (shape {tuple(img.shape[1:])}); pass the folder of the series to read "
            "the volume."
        )
    n_channels = int(img.shape[0])
    if channel is not None:
        if not isinstance(channel, (int, np.integer)) or isinstance(channel, bool) or not 0 <= channel < n_channels:
            raise ValueError(
                f"channel {channel} does not exist: {p} has {n_channels} channel{'s' if n_channels > 1 else ''}"
                f" (0 … {n_channels - 1})."
            )
        channel = int(channel)
        img = img[channel : channel + 1]
    elif n_channels > 1:
        if validate:
            raise ValueError(
                f"{p} is a 4D image with {n_channels} channels/time points; choose one with channel=N "
                f"(0 … {n_channels - 1}; --channel N on the command line)."
            )
        img = img[:1]
    affine = np.asarray(img.affine.detach().cpu().numpy() if isinstance(img.affine, torch.Tensor) else img.affine)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError(
            f"{p} has a degenerate geometry (voxel-to-world matrix {np.round(affine, 4).tolist()}): "
            "a voxel size is zero or not finite, or two voxel axes coincide."
        )
    stored = _stored_dtype(p) or str(img.dtype).removeprefix("torch.")
    img = img.to(torch.float32)
    img.meta[STORED_DTYPE_KEY] = stored
    if validate:
        check_volume(img, str(p))
    return img


def load_normalized(path: str | os.PathLike, channel: int | None = None) -> MetaTensor:
    """:func:`load_volume` then :class:`~cunerf_monai.transforms.NormalizeToUnitRange` (range kept in meta)."""
    return NormalizeToUnitRange()(load_volume(path, channel))


def output_dtype(stored: str | None, dtype: str | None = None) -> np.dtype:
    """The type to write a render in: ``dtype="float32"`` on request, else (``None`` or ``"input"``) the input's
    ``stored`` type when it is an integer type, else float32."""
    if dtype is not None:
        dtype = check_option(dtype, OutputDtype, "dtype (the input's stored integer type, or float32)")
    if dtype is None or dtype == OutputDtype.INPUT:
        with_type = np.dtype(stored) if stored else None
        if with_type is not None and np.issubdtype(with_type, np.integer):
            return with_type
    return np.dtype(np.float32)


def save_nifti(
    path: str | os.PathLike, volume: np.ndarray | torch.Tensor, affine: np.ndarray, dtype: np.dtype | str = "float32"
) -> str:
    """Write a 3D volume ``(X, Y, Z)`` as NIfTI with ``affine`` (voxel index → RAS mm), atomically.

    The spacing, origin and direction all come from ``affine``, so the file overlays the input in a viewer.
    With an integer ``dtype`` the values are rounded and clipped to that type's range.
    """
    arr = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    if arr.ndim != 3:
        raise ValueError(f"save_nifti expects a 3D volume, got shape {arr.shape}.")
    kind = np.dtype(dtype)
    if np.issubdtype(kind, np.integer):
        info = np.iinfo(kind)
        arr = np.clip(np.rint(arr.astype(np.float64)), info.min, info.max)
    img = nib.Nifti1Image(arr.astype(kind), np.asarray(affine, dtype=np.float64))
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
