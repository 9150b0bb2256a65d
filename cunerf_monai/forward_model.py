"""The forward model of a fit: how each LR voxel was made from the continuous volume, per axis.

A voxel of a real scan is not a point sample: it is a weighted mean of the object over a footprint (a slice
profile along the slice axis, the point-spread function in-plane). The fit renders every LR voxel through the
same footprint (the "cube" of CuNeRF), so the footprint decides what the fit undoes. A footprint that is too wide
"deconvolves" blur that is not there and loses to plain interpolation; one that is too narrow leaves the blur in.

:class:`ForwardModel` holds, per axis, the **profile** (``"point"``, ``"box"`` or ``"gaussian"``), its **width**
in mm (the box length or the Gaussian FWHM), the number of **samples** the renderer takes across it, and the
interpolation **kernel** of the default grid field. :func:`estimate_forward_model` decides them from the scan
itself (``forward_model="auto"``):

* **width**: the slice thickness where the series states it (DICOM ``SliceThickness``, which may differ from the
  slice spacing), else the voxel spacing;
* **profile** of a *thick* axis (spacing ≥ 1.5 × the finest spacing): its power spectrum is compared with the
  spectrum of the sharp axes at the same physical frequencies, folded (aliased) as each candidate profile would
  fold it (the idea behind ESPRESO's slice-profile estimate). A blurring profile is chosen only when it explains
  the thick axis at least :data:`PROFILE_MARGIN` times better than a point sample; otherwise the axis is a point.
  Axes with no sharper axis to compare with (every axis of an isotropic volume, the in-plane axes of a thick-slice
  scan) are points: the volume alone does not tell a point sample from a partial-volume average there, and the
  point model is the safe choice (it can only reproduce the interpolation it starts from; a wrong box loses to it);
* **samples**: one for a point; for a box or Gaussian, one per finest voxel across the width (2 to 8);
* **kernel**: a cross-scale test predicts every other LR voxel from the rest with cubic B-spline, Keys and linear
  interpolation; noisy, edgy data (CT) favour the smoother kernels.

Users override any of this (``forward_model`` one profile or one per axis, ``slice_thickness`` in mm) and the
chosen model is logged, stored with the fit and tracked.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .enums import ForwardModelName, Kernel, Profile, option_names

__all__ = [
    "FORWARD_MODELS",
    "KERNELS",
    "PROFILES",
    "PROFILE_MARGIN",
    "ForwardModel",
    "check_thickness",
    "choose_kernel",
    "dicom_slice_thickness",
    "estimate_forward_model",
    "line_spectrum",
    "per_axis_setting",
    "profile_evidence",
    "resolve_forward_model",
    "spline_step_size",
]

logger = logging.getLogger(__name__)

PROFILES = option_names(Profile)
FORWARD_MODELS = option_names(ForwardModelName)
KERNELS = option_names(Kernel)
#: a blurring profile must fit the thick axis' spectrum this many times better (log-spectral residual) than a point.
PROFILE_MARGIN = 2.0
#: a Gaussian profile must fit this many times better than the best box (it deconvolves more when wrong).
GAUSSIAN_MARGIN = 1.5
#: an axis is thick when its spacing is at least this many times the finest spacing.
THICK_RATIO = 1.5
#: cross-scale kernel test: linear when it beats B-spline by more than this (dB), Keys above the second value.
KERNEL_LINEAR_DB, KERNEL_KEYS_DB = 0.30, 0.15
MAX_SAMPLES = 8
KERNEL_TEST_SIZE = 128  # voxels per axis of the central crop the kernel test reads
#: largest SGD step factor relative to the stability limit ``1/λ_max`` (see :func:`spline_step_size`).
STEP_CAP = 0.75
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_WIDTH_CANDIDATES = (0.5, 0.75, 1.0, 1.25, 1.5)  # profile widths tried, in units of the axis' spacing


@dataclass
class ForwardModel:
    """Per-axis footprint of the LR voxels and the grid field's kernel.

    Attributes:
        profiles: ``"point"``, ``"box"`` or ``"gaussian"`` per axis.
        widths: footprint width per axis in mm (box length, Gaussian FWHM; 0 for a point).
        samples: render samples across the footprint per axis (1 for a point).
        kernel: interpolation kernel of the grid field: ``"bspline"``, ``"keys"`` or ``"linear"``.
        spacing: voxel spacing per axis in mm.
        source: how it was decided: ``"auto"`` or ``"given"`` (and per-axis notes in ``evidence``).
        evidence: the numbers behind the choice (spectral residuals per axis, kernel test scores).
    """

    profiles: tuple[str, str, str]
    widths: tuple[float, float, float]
    samples: tuple[int, int, int]
    kernel: str = "bspline"
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    source: str = "auto"
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        """Samples per LR voxel: the product of the per-axis samples."""
        return int(math.prod(self.samples))

    @property
    def cube_size(self) -> list[float]:
        """Footprint extent per axis in LR voxels (the renderer's cube edge); 1 for a point (one centre sample)."""
        return [float(w / s) if p != "point" else 1.0 for p, w, s in zip(self.profiles, self.widths, self.spacing)]

    @property
    def grid_counts(self) -> list[int]:
        """Samples per axis (the renderer's ``grid_counts``)."""
        return [int(k) for k in self.samples]

    @property
    def grid_profiles(self) -> list[str]:
        """Tick placement per axis for the renderer's ``grid_profiles`` (``"point"``, ``"box"``, ``"gaussian"``)."""
        return list(self.profiles)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready description (for ``fit.json``, checkpoints and tracking)."""
        import json

        d = asdict(self)
        d["widths"] = [round(float(w), 4) for w in self.widths]
        d["spacing"] = [round(float(s), 4) for s in self.spacing]
        return json.loads(json.dumps(d))  # lists, not tuples: the same after a round trip through JSON

    def describe(self) -> str:
        """One line for the log."""
        axes = ", ".join(
            f"{p}" + (f" {w:.2f} mm ×{k}" if p != "point" else "")
            for p, w, k in zip(self.profiles, self.widths, self.samples)
        )
        return f"forward model ({self.source}): {axes}; kernel {self.kernel}"


# ---------------------------------------------------------------------------------------------------------------
# evidence from the volume
# ---------------------------------------------------------------------------------------------------------------
def line_spectrum(vol: np.ndarray, axis: int, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean power spectral density of the lines of ``vol`` ``(X, Y, Z)`` along ``axis``: ``(ν (F,), P (F,))``.

    ``ν`` in cycles/mm; lines that are (nearly) constant (background) are left out; each line is demeaned and
    Hann-windowed; ``P`` is scaled by the spacing so that axes of different spacing compare at equal ``ν``.
    """
    lines = np.moveaxis(vol, axis, -1).reshape(-1, vol.shape[axis]).astype(np.float64)
    spread = lines.std(axis=1)
    keep = spread > 0.05 * (spread.max() if spread.size else 0.0)
    lines = lines[keep] if keep.any() else lines
    if lines.shape[0] > 20000:  # plenty for a mean spectrum
        lines = lines[:: lines.shape[0] // 20000 + 1]
    # differences first: they flatten the steep (≈ 1/ν²) spectrum of anatomy, so the window's leakage from low
    # frequencies does not fill the top of a short thick axis; the difference filter is divided out afterwards
    lines = np.diff(lines, axis=1)
    n = lines.shape[1]
    lines = lines - lines.mean(axis=1, keepdims=True)
    window = np.hanning(n)
    power = (np.abs(np.fft.rfft(lines * window, axis=1)) ** 2).mean(axis=0) / (window**2).sum() * spacing
    nu = np.fft.rfftfreq(n, d=spacing)
    diff_gain = 4.0 * np.sin(np.pi * nu * spacing) ** 2
    return nu[1:], power[1:] / diff_gain[1:]


def _profile_power(profile: str, width: float, nu: np.ndarray) -> np.ndarray:
    """``|H(ν)|²`` of a profile of ``width`` mm (box length or Gaussian FWHM) at frequencies ``ν`` (cycles/mm)."""
    if profile == "point" or width <= 0:
        return np.ones_like(nu)
    if profile == "box":
        return np.sinc(width * nu) ** 2
    sigma = width / _FWHM_PER_SIGMA
    return np.exp(-((2.0 * math.pi * sigma * nu) ** 2))


def profile_evidence(vol: np.ndarray, spacing: Sequence[float], axis: int, sharp_axes: Sequence[int]) -> dict:
    """Log-spectral residual of each candidate profile of a thick ``axis``, against the ``sharp_axes``.

    The sharp axes' mean spectrum ``S(ν)`` stands for the object's (isotropic) spectrum. A profile ``H`` of the
    thick axis, sampled at its spacing ``d``, predicts ``P(ν) = Σ_k S(|ν + k/d|) |H(ν + k/d)|² / d`` (the folds of
    aliasing). The residual is the mean squared log-ratio of observed and predicted spectra after the best overall
    gain (anatomy need not have the same power along every axis).

    Args:
        vol: the volume ``(X, Y, Z)``.
        spacing: voxel spacing per axis (mm).
        axis: the thick axis.
        sharp_axes: the reference axes (finer spacing).

    Returns:
        ``{"point": r, "box 1.00": r, "gaussian 0.75": r, ...}`` (widths in units of the axis' spacing).
    """
    ref = [line_spectrum(vol, a, float(spacing[a])) for a in sharp_axes]
    nu_max = min(float(nu[-1]) for nu, _ in ref)
    grid = np.linspace(0.0, nu_max, 2048)
    s_ref = np.mean([np.interp(grid, nu, p) for nu, p in ref], axis=0)
    d = float(spacing[axis])
    nu_z, p_z = line_spectrum(vol, axis, d)
    keep = nu_z > 2.5 / (2.0 * len(nu_z) * d)  # the lowest bins hold the window's own leakage
    nu_z, p_z = nu_z[keep], np.maximum(p_z[keep], 1e-30)
    folds = int(math.ceil(nu_max * d)) + 1
    candidates = [("point", 0.0)] + [(p, f) for p in ("box", "gaussian") for f in _WIDTH_CANDIDATES]
    out: dict[str, float] = {}
    for profile, frac in candidates:
        pred = np.zeros_like(nu_z)
        for k in range(-folds, folds + 1):
            nu = np.abs(nu_z + k / d)
            pred += np.where(nu <= nu_max, np.interp(nu, grid, s_ref) * _profile_power(profile, frac * d, nu), 0.0) / d
        r = np.log(p_z) - np.log(np.maximum(pred, 1e-30))
        out["point" if profile == "point" else f"{profile} {frac:.2f}"] = float(np.mean((r - r.mean()) ** 2))
    return out


def _predict_every_other(vol: np.ndarray, axis: int, kernel: str) -> float:
    """Mean squared error of predicting the odd (even) samples along ``axis`` from the even (odd) ones."""
    from .evaluation.baselines import _weights_1d

    v = np.moveaxis(vol, axis, 0)
    n = v.shape[0]
    errors = []
    for phase in (0, 1):
        kept = np.arange(phase, n, 2)
        targets = np.arange(kept[0] + 1, kept[-1], 2)
        if len(kept) < 4 or len(targets) == 0:
            continue
        weights = _weights_1d((targets - phase) / 2.0, len(kept), {"linear": "trilinear"}.get(kernel, kernel))
        pred = np.tensordot(weights, v[kept], axes=([1], [0]))
        errors.append(float(np.mean((pred - v[targets]) ** 2)))
    return float(np.mean(errors)) if errors else float("nan")


def choose_kernel(vol: np.ndarray) -> tuple[str, dict[str, float]]:
    """The grid field's interpolation kernel, from a cross-scale test on the volume ``(X, Y, Z)`` in ``[0, 1]``.

    Every other voxel along each axis (of ≥ 8 voxels) is predicted from the others by each kernel; the scores are
    PSNRs (dB) of those predictions. At this coarser scale the signal is rougher than at the target scale, which
    favours the smoother kernels, so B-spline is kept unless linear interpolation wins by more than
    :data:`KERNEL_LINEAR_DB` (noisy, edgy data such as CT: linear), or by more than :data:`KERNEL_KEYS_DB` (Keys).

    Returns:
        ``(kernel, {"bspline": dB, "keys": dB, "linear": dB})``.
    """
    axes = [a for a in range(3) if vol.shape[a] >= 8]
    if not axes:
        return "bspline", {}
    crop = tuple(slice(max(0, (n - KERNEL_TEST_SIZE) // 2), max(0, (n - KERNEL_TEST_SIZE) // 2) + KERNEL_TEST_SIZE)
                 for n in vol.shape)
    vol = vol[crop]  # the central part is plenty and bounds the cost
    scores = {}
    for kernel in KERNELS:
        mse = np.nanmean([_predict_every_other(vol, a, kernel) for a in axes])
        scores[kernel] = float(10.0 * np.log10(1.0 / max(mse, 1e-20)))
    gap = scores["linear"] - scores["bspline"]
    kernel = "linear" if gap > KERNEL_LINEAR_DB else "keys" if gap > KERNEL_KEYS_DB else "bspline"
    return kernel, {k: round(v, 3) for k, v in scores.items()}


def dicom_slice_thickness(path: str | os.PathLike | None) -> float | None:
    """``SliceThickness`` (0018,0050) in mm of a DICOM series folder (or file), else ``None``.

    MONAI's ITK reader does not pass DICOM tags through, so the first file of the series is read with ITK's
    GDCM image IO. Any other input (NIfTI, NRRD, a missing tag) gives ``None``.
    """
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
    elif p.is_file() and p.suffix.lower() in (".dcm", ".ima", ""):
        files = [p]
    else:
        return None
    import itk

    for f in files[:5]:
        try:
            io = itk.GDCMImageIO.New()
            if not io.CanReadFile(str(f)):
                continue
            io.SetFileName(str(f))
            io.ReadImageInformation()
            meta = io.GetMetaDataDictionary()
            if meta.HasKey("0018|0050"):
                value = float(str(meta["0018|0050"]).strip().split("\\")[0])
                return value if value > 0 else None
        except (RuntimeError, ValueError):
            continue
    return None


# ---------------------------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------------------------
def per_axis_setting(value: Any, name: str, choices: Sequence[str] | None = None) -> list | None:
    """``None``, or the setting as a list of one value (every axis) or three (per axis), checked against
    ``choices``; anything else raises a ``ValueError`` naming ``name``."""
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(items) not in (1, 3):
        raise ValueError(f"{name} must be one value or three (one per axis), got {value!r}.")
    if choices is not None:
        for item in items:
            if item not in choices:
                raise ValueError(f"{name} must be one of {tuple(choices)} (or one per axis), got {item!r}.")
    return items


def check_thickness(value: Any, name: str = "slice_thickness") -> list[float] | None:
    """``None``, or a stated length per axis (slice thickness, output spacing) as a list of one or three positive
    numbers (mm); errors name the setting ``name``."""
    items = per_axis_setting(value, name)
    if items is None:
        return None
    try:
        numbers = [float(v) for v in items]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number of mm (or three), got {value!r}.") from None
    if not all(math.isfinite(v) and v > 0 for v in numbers):
        raise ValueError(f"{name} must be a positive number of mm (or three), got {value!r}.")
    return numbers


def _thickness(value: Any, spacing: np.ndarray) -> list[float | None]:
    """Per-axis stated thickness (mm): one number applies to the thickest axis, three to each axis."""
    numbers = check_thickness(value)
    out: list[float | None] = [None, None, None]
    if numbers is None:
        return out
    if len(numbers) == 1:
        out[int(np.argmax(spacing))] = numbers[0]
    else:
        out = list(numbers)
    return out


def _samples(profile: str, width: float, finest: float) -> int:
    if profile == "point":
        return 1
    return int(min(MAX_SAMPLES, max(2, round(width / finest))))


def estimate_forward_model(
    volume: np.ndarray,
    spacing: Sequence[float],
    forward_model: str | Sequence[str] = "auto",
    slice_thickness: float | Sequence[float] | None = None,
    kernel: str | None = None,
) -> ForwardModel:
    """Decide the per-axis forward model of a normalised LR volume (see the module docstring).

    Args:
        volume: the LR volume ``(X, Y, Z)`` in ``[0, 1]``.
        spacing: voxel spacing per axis (mm).
        forward_model: ``"auto"``, or a profile (``"point"``, ``"box"``, ``"gaussian"``) for every axis, or three
            (one per axis, ``"auto"`` allowed among them).
        slice_thickness: stated footprint width in mm: one number (the thickest axis) or three; ``None`` = spacing.
        kernel: the grid field's kernel, or ``None`` to choose it (:func:`choose_kernel`).

    Returns:
        the :class:`ForwardModel`.
    """
    vol = np.asarray(volume, dtype=np.float64)
    if vol.ndim != 3:
        raise ValueError(f"The forward model needs a 3D volume (X, Y, Z), got shape {vol.shape}.")
    sp = np.abs(np.asarray(spacing, dtype=np.float64).reshape(-1))
    if sp.size != 3 or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be three positive numbers (mm), got {spacing!r}.")
    requested = per_axis_setting(forward_model, "forward_model", FORWARD_MODELS) or ["auto"]
    requested = requested * 3 if len(requested) == 1 else requested
    if kernel is not None and kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}.")
    stated = _thickness(slice_thickness, sp)
    widths = [float(t) if t is not None else float(s) for t, s in zip(stated, sp)]
    finest = float(sp.min())
    thick = [a for a in range(3) if sp[a] >= THICK_RATIO * finest]
    sharp = [a for a in range(3) if a not in thick]
    profiles, evidence = [], {}
    for a in range(3):
        if requested[a] != "auto":
            profiles.append(requested[a])
            evidence[f"axis{a}"] = "given"
            continue
        if a not in thick or not sharp or vol.shape[a] < 4:
            profiles.append("point")
            evidence[f"axis{a}"] = "point: no sharper axis to compare with"
            continue
        res = profile_evidence(vol, sp, a, sharp)
        blurred = {k: v for k, v in res.items() if k != "point"}
        best = min(blurred, key=blurred.get)
        chosen = best.split()[0] if blurred[best] * PROFILE_MARGIN < res["point"] else "point"
        if chosen == "gaussian":  # a Gaussian of FWHM = width blurs more than a box: only when clearly better
            best_box = min(v for k, v in blurred.items() if k.startswith("box"))
            chosen = "gaussian" if blurred[best] * GAUSSIAN_MARGIN < best_box else "box"
        profiles.append(chosen)
        evidence[f"axis{a}"] = {"chosen": chosen, "residuals": {k: round(v, 5) for k, v in res.items()}}
    if kernel is None:
        kernel, scores = choose_kernel(vol)
        evidence["kernel_scores_db"] = scores
    widths = [0.0 if p == "point" else w for p, w in zip(profiles, widths)]
    samples = [_samples(p, w, finest) for p, w in zip(profiles, widths)]
    source = "auto" if all(r == "auto" for r in requested) else "given"
    return ForwardModel(
        profiles=tuple(profiles),  # type: ignore[arg-type]
        widths=tuple(widths),  # type: ignore[arg-type]
        samples=tuple(samples),  # type: ignore[arg-type]
        kernel=kernel,
        spacing=tuple(float(s) for s in sp),  # type: ignore[arg-type]
        source=source,
        evidence=evidence,
    )


def resolve_forward_model(
    image: Any,
    forward_model: str | Sequence[str] = "auto",
    slice_thickness: float | Sequence[float] | None = None,
    input_path: str | os.PathLike | None = None,
    kernel: str | None = None,
) -> ForwardModel:
    """The forward model of a training image ``(1, X, Y, Z)`` (a MetaTensor with its affine), logged.

    The stated thickness is ``slice_thickness`` when given, else the DICOM ``SliceThickness`` of ``input_path``
    (applied to the slice axis, the last one of a DICOM series), else the spacing.
    """
    from .geometry import geometry_of

    geometry = geometry_of(image)
    arr = np.asarray(image[0].detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)[0])
    thickness = slice_thickness
    stated = dicom_slice_thickness(input_path) if thickness is None else None
    if stated is not None:  # the series' slice axis; the in-plane footprint stays the pixel spacing
        thickness = [float(geometry.spacing[0]), float(geometry.spacing[1]), stated]
    model = estimate_forward_model(arr, geometry.spacing, forward_model, thickness, kernel)
    logger.info(model.describe())
    return model


def spline_step_size(model: ForwardModel) -> float:
    """SGD step factor ``c`` of the grid field (learning rate = ``c · min(batch, voxels)``) that converges for this
    forward model from any start.

    With the mean squared loss over a batch that covers the volume, plain SGD on the virtual samples ``v`` is
    ``v ← v − 2c Aᵀ(A v − y)``, where ``A`` renders every LR voxel through its footprint. A mode of ``A`` with
    gain ``g`` (``λ = g²``) shrinks by ``|1 − 2cλ|`` per step: it converges only when ``c < 1/λ_max``, and fastest
    overall when the slowest (``λ_min``) and the largest (``λ_max``) modes shrink alike, ``c = 1/(λ_max + λ_min)``.
    The constant (offset) mode always has ``λ = 1`` (every footprint is a weighted mean), which a step ``c = 1``
    would leave undamped; when ``λ_min`` is tiny (a wide footprint) the optimum approaches that limit, so ``c`` is
    capped at :data:`STEP_CAP` ``/ λ_max`` (the offset then halves every step at least). ``λ`` per axis is ``|mean_j Φ(f, d_j)|²`` for the kernel's frequency response ``Φ`` at
    the footprint's sample offsets ``d_j``, evaluated for ``f ∈ [0, ½]``.
    """
    lam_max, lam_min = 1.0, 1.0
    for profile, width, spacing, k in zip(model.profiles, model.widths, model.spacing, model.samples):
        gains = _axis_gain(model.kernel, _footprint_offsets(profile, width / spacing if spacing else 0.0, k))
        lam_max *= float(np.max(gains**2))
        lam_min *= float(np.min(gains**2))
    return min(1.0 / (lam_max + lam_min), STEP_CAP / lam_max)


def _footprint_offsets(profile: str, width_voxels: float, k: int) -> np.ndarray:
    """Sample offsets (LR voxels) of a footprint, as the renderer places them (see ``sampling.profile_ticks``)."""
    from .sampling import profile_ticks

    if profile == "point":
        return np.zeros(1)
    return profile_ticks(profile, k).numpy().astype(np.float64) * width_voxels / 2.0


def _axis_gain(kernel: str, offsets: np.ndarray, n: int = 64) -> np.ndarray:
    """``|mean_j Φ(f, d_j)|`` on ``f ∈ [0, ½]`` for a grid-field kernel (virtual-sample parametrisation)."""
    from .evaluation.baselines import _weights_1d

    name = {"linear": "trilinear"}.get(kernel, kernel)
    centre = n // 2
    row = np.mean([_weights_1d(np.array([centre + d]), n, name)[0] for d in offsets], axis=0)
    f = np.linspace(0.0, 0.5, 65)
    m = np.arange(n) - centre
    return np.abs((row[None, :] * np.exp(2j * np.pi * np.outer(f, m))).sum(axis=1))
