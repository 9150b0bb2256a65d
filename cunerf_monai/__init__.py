"""cunerf-monai: zero-shot arbitrary-scale medical volume super-resolution (CuNeRF) as MONAI building blocks."""

__version__ = "0.6.1"
