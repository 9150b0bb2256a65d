"""The package's names: the string modes of its settings as :class:`~monai.utils.StrEnum` classes, and the keys
of its batches and renders as constants.

A mode is a ``StrEnum``: each member *is* its string (``SamplingMode.CUBE == "cube"``, hashes like it, prints and
serialises as it), so configs keep their plain strings (``"sampling": "cube"``). Settings are checked with
MONAI's :func:`~monai.utils.look_up_option` through :func:`check_option`, which names the setting and the bad value.
Keys are plain string constants (dictionaries keyed by them stay plain, also in checkpoints).
This module imports nothing from the package (the core, the engine and the CLI all use it).

Examples::

    >>> check_option("ray", SamplingMode, "sampling") == SamplingMode.RAY == "ray"
    True
    >>> check_option("cubes", SamplingMode, "sampling")
    Traceback (most recent call last):
    ...
    ValueError: sampling must be one of ('cube', 'ray'), got 'cubes'. By 'cubes', did you mean 'cube'?
"""

from __future__ import annotations

from typing import Any, TypeVar

from monai.utils import StrEnum, look_up_option

__all__ = [
    "Activation",
    "AmpDtype",
    "BatchKeys",
    "Baseline",
    "Boundary",
    "CubeSampling",
    "Degradation",
    "EvalCubeSampling",
    "FieldPass",
    "ForwardModelName",
    "Kernel",
    "Norm",
    "OutputDtype",
    "Plane",
    "PriorMode",
    "PriorStart",
    "Profile",
    "RenderKeys",
    "SamplingMode",
    "Weighting",
    "check_option",
    "option_names",
]


class _Names(StrEnum):
    """A ``StrEnum`` whose ``repr`` is the quoted string, so a tuple of members prints like a tuple of strings
    (``('cube', 'ray')``) in messages."""

    def __repr__(self) -> str:
        return repr(self.value)


class SamplingMode(_Names):
    """Where a target's samples lie: in its cube (CuNeRF) or on a ray through it (the NeRF baseline of Table 3)."""

    CUBE, RAY = "cube", "ray"


class Weighting(_Names):
    """How samples are weighted: isotropic rendering (Eq. 11), NeRF alpha compositing (Eq. 4) or the plain mean."""

    ISOTROPIC, VOLUME, UNIFORM = "isotropic", "volume", "uniform"


class Norm(_Names):
    """Distance of a cube sample from the target: ℓ2 (the paper) or ℓ∞ (Table 4)."""

    L2, LINF = "l2", "linf"


class CubeSampling(_Names):
    """Training cube samples: random (uniform, Latin-hypercube stratified) or fixed (quasi-Monte Carlo, grid)."""

    UNIFORM, STRATIFIED, QMC, GRID = "uniform", "stratified", "qmc", "grid"


class EvalCubeSampling(_Names):
    """Rendering cube samples: the deterministic, point-symmetric ones."""

    QMC, GRID = "qmc", "grid"


class Activation(_Names):
    """Activation of a field's raw intensity or density output."""

    SIGMOID, RELU, SOFTPLUS, IDENTITY = "sigmoid", "relu", "softplus", "identity"


class Profile(_Names):
    """Footprint of an LR voxel along one axis (the forward model), and the placement of grid samples across it."""

    POINT, BOX, GAUSSIAN = "point", "box", "gaussian"


class ForwardModelName(_Names):
    """A forward-model setting of one axis: decided from the scan (``auto``) or a given :class:`Profile`."""

    AUTO, POINT, BOX, GAUSSIAN = "auto", "point", "box", "gaussian"


class Kernel(_Names):
    """Interpolation kernel of the grid field: cubic B-spline, Keys' cubic convolution or linear."""

    BSPLINE, KEYS, LINEAR = "bspline", "keys", "linear"


class PriorMode(_Names):
    """Whether a fit learns the thick-slice prior: when the scan has a thick axis (``auto``) or never (``none``)."""

    AUTO, NONE = "auto", "none"


class PriorStart(_Names):
    """The prior network's input along the thick axis: by profile (``auto``), Keys or cubic B-spline interpolation, or
    the consistent spline."""

    AUTO, KEYS, BSPLINE, CONSISTENT = "auto", "keys", "bspline", "consistent"


class Boundary(_Names):
    """Boundary of the B-spline prior volume: edge voxels repeated, or the volume mirrored."""

    NEAREST, MIRROR = "nearest", "mirror"


class FieldPass(_Names):
    """The field of a :class:`~cunerf_monai.networks.CuNeRFModel` a call evaluates."""

    COARSE, FINE = "coarse", "fine"


class Degradation(_Names):
    """How a simulated LR voxel is made from the HR volume: decimation, box average or Gaussian slice profile."""

    NEAREST, BOX, GAUSSIAN = "nearest", "box", "gaussian"


class Plane(_Names):
    """Anatomical base planes of slices and per-plane scores (of RAS volumes)."""

    AXIAL, CORONAL, SAGITTAL = "axial", "coronal", "sagittal"


class Baseline(_Names):
    """The interpolation baselines a fit is compared with."""

    NEAREST, TRILINEAR, BSPLINE, KEYS = "nearest", "trilinear", "bspline", "keys"


class AmpDtype(_Names):
    """Reduced precision of mixed-precision (amp) field evaluations."""

    BFLOAT16, FLOAT16 = "bfloat16", "float16"


class OutputDtype(_Names):
    """The written type of a render: the input's stored integer type, or float32."""

    INPUT, FLOAT32 = "input", "float32"


class BatchKeys:
    """Keys of a batch of targets (:class:`~cunerf_monai.data.RandomCubeDataset`,
    :class:`~cunerf_monai.data.SlabDataset`): target centres in field coordinates ``(B, 3)``, the intensities there
    ``(B,)`` and the cube half-size in field units ``(3,)``."""

    CENTRE, TARGET, HALF_EXTENT = "centre", "target", "half_extent"


class RenderKeys:
    """Keys of a render of targets (:class:`~cunerf_monai.inferers.CuNeRFInferer`): the coarse and fine passes and
    the final value (the fine one, or the coarse one without a fine pass)."""

    COARSE, FINE, VALUE = "coarse", "fine", "value"


E = TypeVar("E", bound=StrEnum)


def option_names(options: type[StrEnum]) -> tuple[str, ...]:
    """The plain strings of an enum's members, in order."""
    return tuple(m.value for m in options)


def check_option(value: Any, options: type[E], name: str) -> E:
    """``value`` as a member of ``options`` (MONAI's :func:`~monai.utils.look_up_option`).

    Raises:
        ValueError: naming the setting ``name``, the allowed values and the bad value (with MONAI's guess at a
            misspelling).
    """
    try:
        return look_up_option(value, options)
    except ValueError as exc:
        guess = str(exc).splitlines()[0] if "did you mean" in str(exc) else ""
        message = f"{name} must be one of {option_names(options)}, got {value!r}."
        raise ValueError(f"{message} {guess}".strip()) from None
