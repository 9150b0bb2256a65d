"""Geometry: voxel index ⇄ world (mm) ⇄ field coordinates, target grids and oblique planes.

Conventions used everywhere in the project:

* A volume is an array of shape ``(X, Y, Z)`` (voxel axes ``i, j, k``) with a 4×4 ``affine`` mapping the voxel
  index ``(i, j, k, 1)`` of a voxel *centre* to world coordinates in mm (the NIfTI / MONAI convention).
* The *field* is the coordinate network's domain. It is defined by the low-resolution (LR) volume that the
  network is fitted to: the volumetric normalisation of the paper (Eq. 6–7) maps the LR voxel index ``x`` of
  an axis with ``S`` voxels and padding ``P`` (in LR voxels) to

  .. math:: \\hat{x} = \\frac{2\\,(x - (S - 1)/2)}{S + 2P},

  so the whole LR footprint (indices ``-0.5 … S - 0.5``) sits inside the open box ``(-1, 1)`` with ``P`` voxels
  of margin. Each axis is normalised on its own. Any other grid (another scale, spacing, an oblique plane) is
  taken to the field through world coordinates, so every grid lands where its voxels really are.
* Target grids made "by scale" keep LR voxel ``i`` at output index ``s·i`` (the output's voxel 0 is the LR's
  voxel 0, output spacing = LR spacing / s); this is the convention of nearest decimation used by the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .enums import Plane, check_option

__all__ = [
    "VolumeGeometry",
    "TargetGrid",
    "grid_for_scale",
    "grid_for_spacing",
    "grid_for_shape",
    "grid_index_points",
    "voxel_footprint_in_index",
    "rodrigues",
    "oblique_plane",
    "ObliquePlane",
    "geometry_of",
]


def _as3(value: float | Sequence[float], name: str) -> np.ndarray:
    """Broadcast a scalar or a length-3 sequence to a float64 array of shape ``(3,)``."""
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, 3)
    if arr.size != 3:
        raise ValueError(f"{name} must be one number or three (one per axis), got {list(arr)}.")
    return arr


def _apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4×4 affine to points of shape ``(..., 3)``."""
    return points @ affine[:3, :3].T + affine[:3, 3]


@dataclass(frozen=True)
class VolumeGeometry:
    """Where an (LR) volume's voxels are, and how they map to field coordinates.

    Args:
        shape: voxel counts ``(X, Y, Z)``.
        affine: ``(4, 4)`` voxel-index → world (mm) matrix.
        padding: margin ``P`` in LR voxels per axis (Eq. 7), a scalar or three values.

    Examples::

        >>> geo = VolumeGeometry((4, 4, 2), np.diag([2.0, 2.0, 5.0, 1.0]), padding=1.0)
        >>> geo.index_to_field(np.array([[0.0, 0.0, 0.0]]))
        array([[-0.5 , -0.5 , -0.25]])
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    padding: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"A volume geometry needs three positive voxel counts, got {self.shape}.")
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise ValueError(f"The affine must be a finite 4x4 matrix, got shape {affine.shape}.")
        if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ValueError("The affine is singular (a voxel axis has zero length or two axes coincide).")
        padding = _as3(self.padding, "padding")
        if not np.all(np.isfinite(padding)) or np.any(padding < 0):
            raise ValueError(f"padding must be finite and non-negative (LR voxels), got {[float(v) for v in padding]}.")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "padding", tuple(float(p) for p in padding))

    # -- basic properties -------------------------------------------------------------------------------------
    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along each voxel axis, ``(3,)``."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def field_per_voxel(self) -> np.ndarray:
        """Field-coordinate length of one LR voxel along each axis, ``2 / (S + 2P)``, shape ``(3,)``."""
        return 2.0 / (np.asarray(self.shape, dtype=np.float64) + 2.0 * np.asarray(self.padding))

    @property
    def centre_index(self) -> np.ndarray:
        """Continuous index of the volume centre, ``(S - 1) / 2``, shape ``(3,)``."""
        return (np.asarray(self.shape, dtype=np.float64) - 1.0) / 2.0

    @property
    def centre_world(self) -> np.ndarray:
        """World position (mm) of the volume centre, ``(3,)``."""
        return _apply_affine(self.affine, self.centre_index)

    # -- index ⇄ world ⇄ field (numpy, float64) ---------------------------------------------------------------
    def index_to_world(self, index: np.ndarray) -> np.ndarray:
        """Continuous voxel indices ``(..., 3)`` → world mm ``(..., 3)``."""
        return _apply_affine(self.affine, np.asarray(index, dtype=np.float64))

    def world_to_index(self, world: np.ndarray) -> np.ndarray:
        """World mm ``(..., 3)`` → continuous voxel indices ``(..., 3)``."""
        return _apply_affine(np.linalg.inv(self.affine), np.asarray(world, dtype=np.float64))

    def index_to_field(self, index: np.ndarray) -> np.ndarray:
        """Continuous LR indices ``(..., 3)`` → field coordinates ``(..., 3)`` (Eq. 6–7)."""
        return (np.asarray(index, dtype=np.float64) - self.centre_index) * self.field_per_voxel

    def field_to_index(self, field: np.ndarray) -> np.ndarray:
        """Field coordinates ``(..., 3)`` → continuous LR indices ``(..., 3)``."""
        return np.asarray(field, dtype=np.float64) / self.field_per_voxel + self.centre_index

    def world_to_field(self, world: np.ndarray) -> np.ndarray:
        """World mm ``(..., 3)`` → field coordinates ``(..., 3)``."""
        return self.index_to_field(self.world_to_index(world))

    def field_to_world(self, field: np.ndarray) -> np.ndarray:
        """Field coordinates ``(..., 3)`` → world mm ``(..., 3)``."""
        return self.index_to_world(self.field_to_index(field))

    def affine_to_field(self, affine: np.ndarray) -> np.ndarray:
        """4×4 matrix taking indices of a grid with ``affine`` straight to this volume's field coordinates."""
        to_index = np.linalg.inv(self.affine) @ np.asarray(affine, dtype=np.float64)
        scale = np.diag(np.append(self.field_per_voxel, 1.0))
        shift = np.eye(4)
        shift[:3, 3] = -self.centre_index
        return scale @ shift @ to_index

    def voxel_field_grid(self) -> np.ndarray:
        """Field coordinates of this volume's own voxel centres, shape ``(X, Y, Z, 3)``."""
        return self.index_to_field(grid_index_points(self.shape))

    def to_dict(self) -> dict:
        """JSON-friendly description (for checkpoints and metadata)."""
        return {"shape": list(self.shape), "affine": self.affine.tolist(), "padding": list(self.padding)}

    @classmethod
    def from_dict(cls, data: dict) -> "VolumeGeometry":
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(data["shape"]), np.asarray(data["affine"]), tuple(data["padding"]))


def geometry_of(image: torch.Tensor, padding: float | Sequence[float] = 1.0) -> VolumeGeometry:
    """:class:`VolumeGeometry` of a channel-first image ``(1, X, Y, Z)``: its ``affine`` (a MetaTensor's), the
    identity for a plain tensor."""
    affine = getattr(image, "affine", None)
    if affine is None:
        affine_np = np.eye(4)
    else:
        affine_np = np.asarray(affine.detach().cpu().numpy() if isinstance(affine, torch.Tensor) else affine)
    return VolumeGeometry(tuple(image.shape[-3:]), np.asarray(affine_np, dtype=np.float64), padding)  # type: ignore[arg-type]


@dataclass(frozen=True)
class TargetGrid:
    """A regular output grid: ``shape (X', Y', Z')`` and ``affine (4, 4)`` (index → world mm)."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along each output axis, ``(3,)``."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def num_voxels(self) -> int:
        """Number of output voxels."""
        return int(np.prod(self.shape))


MAX_OUTPUT_VOXELS = 2**34


def grid_for_scale(geometry: VolumeGeometry, scale: float | Sequence[float]) -> TargetGrid:
    """Output grid with ``scale`` times as many voxels per axis (per-axis floats allowed).

    LR voxel ``i`` sits at output index ``s·i``; output spacing = LR spacing / s; shape = ``round(S·s)``
    (at least 1). Orientation and origin (voxel 0's centre) are kept.

    Args:
        geometry: the LR volume's geometry.
        scale: one positive factor or one per axis.

    Returns:
        the output :class:`TargetGrid`.
    """
    s = _as3(scale, "scale")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"scale must be positive and finite, got {[float(v) for v in s]}.")
    shape = tuple(max(1, int(round(n * f))) for n, f in zip(geometry.shape, s))
    if np.prod(np.asarray(shape, dtype=np.float64)) > MAX_OUTPUT_VOXELS:
        raise ValueError(f"scale {list(s)} asks for an output of {shape} voxels, which is absurdly large.")
    affine = geometry.affine @ np.diag(np.append(1.0 / s, 1.0))
    return TargetGrid(shape, affine)


def grid_for_spacing(geometry: VolumeGeometry, spacing: float | Sequence[float]) -> TargetGrid:
    """Output grid with the given voxel size in mm (per axis allowed); see :func:`grid_for_scale`."""
    sp = _as3(spacing, "spacing")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"target spacing must be positive (mm), got {[float(v) for v in sp]}.")
    return grid_for_scale(geometry, geometry.spacing / sp)


def grid_for_shape(geometry: VolumeGeometry, shape: Sequence[int]) -> TargetGrid:
    """Output grid with an explicit voxel count per axis, same convention as :func:`grid_for_scale`.

    The per-axis scale is ``shape / S`` so LR voxel ``i`` sits at output index ``i · shape / S``.
    """
    shp = np.asarray(shape, dtype=np.float64).reshape(-1)
    if shp.size != 3 or np.any(shp < 1) or np.any(shp != np.round(shp)):
        raise ValueError(f"shape must be three positive integers, got {list(shape)}.")
    grid = grid_for_scale(geometry, shp / np.asarray(geometry.shape, dtype=np.float64))
    return TargetGrid(tuple(int(v) for v in shp), grid.affine)


def grid_index_points(shape: Sequence[int]) -> np.ndarray:
    """All voxel indices of a grid, shape ``(*shape, 3)``, float64, ``ij`` order."""
    axes = [np.arange(n, dtype=np.float64) for n in shape]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def voxel_footprint_in_index(geometry: VolumeGeometry, affine: np.ndarray) -> np.ndarray:
    """Half-extent, in LR voxels per LR axis, of the box bounding one voxel of a grid with ``affine``.

    For an axis-aligned grid with spacing ``d`` this is ``d / (2 · LR spacing)``; for a rotated grid it is the
    bounding box of the rotated voxel. Shape ``(3,)``.
    """
    m = np.linalg.inv(geometry.affine[:3, :3]) @ np.asarray(affine, dtype=np.float64)[:3, :3]
    return 0.5 * np.abs(m).sum(axis=1)


def rodrigues(axis: Sequence[float], angle_deg: float) -> np.ndarray:
    """Rotation matrix ``(3, 3)`` by ``angle_deg`` degrees about ``axis`` (right-hand rule), Rodrigues' formula.

    .. math:: R = I + \\sin\\theta K + (1 - \\cos\\theta) K^2, \\quad K = [n]_\\times,\\ n = a / \\lVert a \\rVert.
    """
    a = np.asarray(axis, dtype=np.float64).reshape(3)
    norm = np.linalg.norm(a)
    if norm == 0 or not np.isfinite(norm):
        raise ValueError(f"The rotation axis must be a non-zero vector, got {list(a)}.")
    n = a / norm
    k = np.array([[0.0, -n[2], n[1]], [n[2], 0.0, -n[0]], [-n[1], n[0], 0.0]])
    theta = np.deg2rad(float(angle_deg))
    return np.eye(3) + np.sin(theta) * k + (1.0 - np.cos(theta)) * (k @ k)


@dataclass(frozen=True)
class ObliquePlane:
    """A rendered plane: ``world (H, W, 3)`` mm positions of its pixels and a 4×4 ``affine`` of the plane.

    The affine maps pixel ``(u, v, 0, 1)`` to world mm; its third column is the plane's unit normal times the
    pixel spacing, so the plane can be saved as a one-slice NIfTI that overlays the volume in a viewer.
    """

    world: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """Pixels ``(H, W)``."""
        return tuple(self.world.shape[:2])  # type: ignore[return-value]


def oblique_plane(
    geometry: VolumeGeometry,
    axis: Sequence[float] = (0.0, 0.0, 1.0),
    angle: float = 0.0,
    position: float = 0.0,
    zoom: float = 1.0,
    size: Sequence[int] | None = None,
    plane: str = "axial",
    pixel_size: float | None = None,
) -> ObliquePlane:
    """Plane through the volume (Eq. 14): base plane, rotation ``M_R``, translation ``M_T``, zoom ``M_S``.

    The base plane is the volume's ``plane`` (``"axial"``: voxel axes i, j; ``"coronal"``: i, k;
    ``"sagittal"``: j, k) through the volume centre, covering the volume's field of view with square pixels
    of ``pixel_size`` mm (default the smallest voxel spacing). It is rotated by ``angle`` degrees about ``axis``
    (given in the volume's voxel-axis frame, e.g. ``(1, 1, 0)``) around the volume centre, moved by ``position``
    mm along its (rotated) normal, and zoomed by ``zoom`` (``zoom > 1`` magnifies: the same pixel count covers a smaller
    area).

    Args:
        geometry: the volume the plane cuts.
        axis: rotation axis in voxel-axis coordinates, three numbers.
        angle: rotation angle in degrees.
        position: offset along the plane normal in mm from the volume centre.
        zoom: magnification, positive.
        size: pixels ``(H, W)``; default the volume's extent at ``pixel_size``.
        plane: base plane name.
        pixel_size: pixel edge in mm before zooming (e.g. a render's finest spacing); default the volume's
            smallest voxel spacing.

    Returns:
        an :class:`ObliquePlane` with world positions ``(H, W, 3)``.
    """
    if not np.isfinite(zoom) or zoom <= 0:
        raise ValueError(f"zoom must be positive, got {zoom}.")
    if not np.isfinite(angle) or not np.isfinite(position):
        raise ValueError(f"angle and position must be finite numbers, got {angle}, {position}.")
    axes_of = {Plane.AXIAL: (0, 1, 2), Plane.CORONAL: (0, 2, 1), Plane.SAGITTAL: (1, 2, 0)}
    a_u, a_v, a_n = axes_of[check_option(plane, Plane, "plane")]
    linear = geometry.affine[:3, :3]
    spacing = geometry.spacing
    # unit directions of the voxel axes in world space (orientation frame of the volume)
    frame = linear / spacing
    extent = np.asarray(geometry.shape, dtype=np.float64) * spacing
    base = float(spacing.min()) if pixel_size is None else float(pixel_size)
    if not np.isfinite(base) or base <= 0:
        raise ValueError(f"pixel_size must be a positive number of mm, got {pixel_size}.")
    pixel = base / float(zoom)
    if size is None:
        size = tuple(int(np.ceil(extent[a] / base - 1e-6)) for a in (a_u, a_v))
    h, w = (int(v) for v in size)
    if h < 1 or w < 1:
        raise ValueError(f"plane size must be positive, got {size}.")
    rot = frame @ rodrigues(axis, angle) @ np.linalg.inv(frame)
    u_dir = rot @ frame[:, a_u]
    v_dir = rot @ frame[:, a_v]
    n_dir = rot @ frame[:, a_n]
    centre = geometry.centre_world + float(position) * n_dir
    origin = centre - pixel * ((h - 1) / 2.0 * u_dir + (w - 1) / 2.0 * v_dir)
    affine = np.eye(4)
    affine[:3, 0] = pixel * u_dir
    affine[:3, 1] = pixel * v_dir
    affine[:3, 2] = pixel * n_dir
    affine[:3, 3] = origin
    uv = grid_index_points((h, w, 1))[..., 0, :]
    world = _apply_affine(affine, uv)
    return ObliquePlane(world=world, affine=affine)
