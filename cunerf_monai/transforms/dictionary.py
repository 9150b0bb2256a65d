"""Dictionary wrappers of :mod:`cunerf_monai.transforms.array` (MONAI ``MapTransform`` style)."""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform

from .array import CoordinateGrid, NormalizeToUnitRange, SimulateLowResolution

__all__ = [
    "NormalizeToUnitRanged",
    "NormalizeToUnitRangeD",
    "NormalizeToUnitRangeDict",
    "SimulateLowResolutiond",
    "SimulateLowResolutionD",
    "SimulateLowResolutionDict",
    "CoordinateGridd",
    "CoordinateGridD",
    "CoordinateGridDict",
]


class NormalizeToUnitRanged(MapTransform):
    """Dictionary version of :class:`NormalizeToUnitRange`."""

    backend = NormalizeToUnitRange.backend

    def __init__(
        self, keys: KeysCollection, lower: float = 0.0, upper: float = 100.0, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = NormalizeToUnitRange(lower, upper)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class SimulateLowResolutiond(MapTransform):
    """Dictionary version of :class:`SimulateLowResolution`; writes the LR image to ``key + output_postfix``
    (or in place when ``output_postfix`` is empty)."""

    backend = SimulateLowResolution.backend

    def __init__(
        self,
        keys: KeysCollection,
        factors: Sequence[int] = (2, 2, 2),
        mode: str = "nearest",
        output_postfix: str = "",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = SimulateLowResolution(factors, mode)
        self.output_postfix = output_postfix

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[f"{key}{self.output_postfix}" if self.output_postfix else key] = self.transform(d[key])
        return d


class CoordinateGridd(MapTransform):
    """Dictionary version of :class:`CoordinateGrid`; writes the grid to ``key + "_" + coords_postfix``."""

    backend = CoordinateGrid.backend

    def __init__(
        self,
        keys: KeysCollection,
        padding: float | Sequence[float] = 1.0,
        coords_postfix: str = "coords",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = CoordinateGrid(padding)
        self.coords_postfix = coords_postfix

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[f"{key}_{self.coords_postfix}"] = self.transform(d[key])
        return d


NormalizeToUnitRangeD = NormalizeToUnitRangeDict = NormalizeToUnitRanged
SimulateLowResolutionD = SimulateLowResolutionDict = SimulateLowResolutiond
CoordinateGridD = CoordinateGridDict = CoordinateGridd
