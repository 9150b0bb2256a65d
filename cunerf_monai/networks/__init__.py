"""Fields (coordinate networks) and their encodings. Fields map points ``(..., 3)`` to raw outputs ``(..., C)``."""

from .cunerf import CuNeRFModel
from .encodings import PositionalEncoding
from .layers import LinearReLU
from .hashgrid import HashGridEncoding, HashGridField, hashgrid_level_resolutions
from .mlp import PositionalMLPField
from .prior import BSplineVolume, ResidualField
from .splinegrid import BSplineGridField

__all__ = [
    "BSplineGridField",
    "BSplineVolume",
    "ResidualField",
    "CuNeRFModel",
    "HashGridEncoding",
    "HashGridField",
    "LinearReLU",
    "PositionalEncoding",
    "PositionalMLPField",
    "hashgrid_level_resolutions",
]
