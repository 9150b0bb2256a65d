"""Fields (coordinate networks) and their encodings. Fields map points ``(..., 3)`` to raw outputs ``(..., C)``."""

from .cunerf import CuNeRFModel
from .encodings import PositionalEncoding
from .mlp import PositionalMLPField

__all__ = ["CuNeRFModel", "PositionalEncoding", "PositionalMLPField"]
