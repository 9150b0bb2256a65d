"""MONAI transforms of the project: intensity normalisation, LR simulation, coordinate grids."""

from .array import (
    DEGRADATIONS,
    CoordinateGrid,
    NormalizeToUnitRange,
    SimulateLowResolution,
    check_volume,
    degradation_factors,
    denormalize_intensity,
    lr_affine,
)
from .dictionary import (
    CoordinateGridd,
    CoordinateGridD,
    CoordinateGridDict,
    NormalizeToUnitRanged,
    NormalizeToUnitRangeD,
    NormalizeToUnitRangeDict,
    SimulateLowResolutiond,
    SimulateLowResolutionD,
    SimulateLowResolutionDict,
)

__all__ = [
    "DEGRADATIONS",
    "CoordinateGrid",
    "CoordinateGridd",
    "CoordinateGridD",
    "CoordinateGridDict",
    "NormalizeToUnitRange",
    "NormalizeToUnitRanged",
    "NormalizeToUnitRangeD",
    "NormalizeToUnitRangeDict",
    "SimulateLowResolution",
    "SimulateLowResolutiond",
    "SimulateLowResolutionD",
    "SimulateLowResolutionDict",
    "check_volume",
    "degradation_factors",
    "denormalize_intensity",
    "lr_affine",
]
