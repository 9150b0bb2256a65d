"""What a fitted model must remember about the volume it was fitted to (saved inside every checkpoint)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from monai.data import MetaTensor

from .geometry import VolumeGeometry, geometry_of

__all__ = ["VolumeRecord"]


class VolumeRecord:
    """The LR volume's geometry, intensity range, stored value type and source, with ``state_dict``/
    ``load_state_dict`` so that Ignite's checkpoint handlers save it beside the networks (key ``"volume"``).

    ``dtype`` is the type the input's values were stored with (``"int16"``…; ``None`` when unknown, as in
    checkpoints written before it was recorded): renders are written in it when it is an integer type.

    Args:
        image: the normalised training image ``(1, X, Y, Z)`` (MetaTensor with ``affine``,
            ``meta["intensity_range"]`` and ``meta["stored_dtype"]``), or ``None`` for an empty record to load into.
        padding: field padding ``P`` in LR voxels (Eq. 7).
        field: a short name of the field class (checked when a checkpoint is loaded into another network).
    """

    def __init__(
        self, image: torch.Tensor | None = None, padding: float | Sequence[float] = 1.0, field: str = ""
    ) -> None:
        self.geometry: VolumeGeometry | None = None
        self.intensity_range: list[float] = [0.0, 1.0]
        self.source = ""
        self.dtype: str | None = None
        self.field = field
        if image is not None:
            self.geometry = geometry_of(image, padding)
            meta = image.meta if isinstance(image, MetaTensor) else {}
            self.intensity_range = [float(v) for v in meta.get("intensity_range", [0.0, 1.0])]
            self.source = str(meta.get("filename_or_obj", ""))
            stored = meta.get("stored_dtype")
            self.dtype = None if stored is None else str(stored)

    def state_dict(self) -> dict[str, Any]:
        """JSON-like content saved in checkpoints."""
        if self.geometry is None:
            raise RuntimeError("This VolumeRecord holds no volume yet.")
        return {
            "geometry": self.geometry.to_dict(),
            "intensity_range": list(self.intensity_range),
            "source": self.source,
            "field": self.field,
            "dtype": self.dtype,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` content."""
        self.geometry = VolumeGeometry.from_dict(state["geometry"])
        self.intensity_range = [float(v) for v in state["intensity_range"]]
        self.source = str(state.get("source", ""))
        self.field = str(state.get("field", ""))
        dtype = state.get("dtype")
        self.dtype = None if dtype is None else str(dtype)

    @property
    def spacing(self) -> np.ndarray:
        """LR voxel size in mm ``(3,)``."""
        if self.geometry is None:
            raise RuntimeError("This VolumeRecord holds no volume yet.")
        return self.geometry.spacing
