"""Self-evaluation: HR volume → simulated LR → fit on LR only → render on the HR grid → PSNR/SSIM against the HR
volume, beside correctly aligned interpolation baselines (and, labelled, a misaligned one)."""

from __future__ import annotations

import logging
import os
import platform
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from monai.data import MetaTensor

from ..geometry import TargetGrid
from ..io import load_normalized, save_nifti
from ..transforms.array import SimulateLowResolution, degradation_factors, denormalize_intensity
from ..utils import atomic_path, write_json
from .baselines import MISALIGNED_KEY, run_baselines
from ..slice_prior import UNCERTAINTY_FILE, fitted_prior, grid_model, prior_state, render_uncertainty
from .figures import comparison_figure, uncertainty_figure
from .metrics import foreground_mask, format_table, psnr, score

__all__ = ["self_evaluate", "machine_description", "uncertainty_summary", "OURS", "OURS_COARSE", "OURS_PROPOSAL"]

logger = logging.getLogger(__name__)

OURS = "cunerf"
#: the coarse network's render alone (scored beside ours when the model renders a fine pass)
OURS_COARSE = "cunerf_coarse"
#: the thick-slice prior's proposal alone, before the consistency correction (scored beside ours with a prior)
OURS_PROPOSAL = "prior_proposal"


def machine_description() -> str:
    """One line naming the machine the numbers come from (CPU model, cores, torch threads, device)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), {gpu}"


def data_consistency(sr: np.ndarray, hr: torch.Tensor, lr: np.ndarray, factors, degradation: str) -> float:
    """PSNR (dB) of the SR volume ``(X, Y, Z)`` on the HR grid, degraded by the operator that made the LR, against
    the LR volume ``(x, y, z)``: how exactly the output reproduces its input (higher is more consistent)."""
    as_image = MetaTensor(torch.as_tensor(np.asarray(sr, dtype=np.float32)[None]), affine=hr.affine)
    again = SimulateLowResolution(factors, degradation)(as_image)[0].numpy()
    return psnr(np.clip(again, 0.0, 1.0), lr)


def self_evaluate(
    hr_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    scale: float | Sequence[float] = 2,
    slice_axis: int | None = None,
    degradation: str = "nearest",
    overrides: Mapping[str, Any] | None = None,
    config_files: Sequence[str] | None = None,
    channel: int | None = None,
    save_volumes: bool = True,
) -> dict[str, Any]:
    """Run the whole evaluation protocol on one HR volume and write ``metrics.json``, ``table.md`` and
    ``figure.png`` (plus ``lr.nii.gz`` and ``sr.nii.gz``) into ``output_dir``.

    Our result (``"cunerf"``) is the config's test-time render: the fine network's when the config renders a fine
    pass (``num_fine_eval > 0``, e.g. ``train_paper.json``: 8 + 8 samples), as the paper scores it; the coarse
    network's render alone is then scored beside it as ``"cunerf_coarse"``. Every prediction is clipped to the HR
    range ``[0, 1]`` before scoring.

    Args:
        hr_path: the high-resolution volume (NIfTI, DICOM folder, NRRD); min–max normalised to ``[0, 1]``.
        output_dir: output folder.
        scale: degradation factor (one integer, or one per axis).
        slice_axis: degrade only this axis ("volumetric" MISR) when ``scale`` is one number.
        degradation: ``"nearest"`` (paper), ``"box"`` or ``"gaussian"`` (see
            :class:`~cunerf_monai.transforms.SimulateLowResolution`).
        overrides: training-config overrides (iterations, batch size, field …).
        config_files: training config files (default: the bundle's ``train.json``).
        channel: channel of a 4D input.
        save_volumes: also write the LR and SR volumes.

    Returns:
        the metrics dictionary written to ``metrics.json``.
    """
    from ..fitting import fit

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    factors = degradation_factors(scale, slice_axis)
    hr = load_normalized(hr_path, channel)
    hr_np = hr[0].numpy()
    hr_affine = np.asarray(hr.affine, dtype=np.float64)
    lr = SimulateLowResolution(factors, degradation)(hr)
    lr_np, lr_affine = lr[0].numpy(), np.asarray(lr.affine, dtype=np.float64)
    lr_path = save_nifti(out / "lr.nii.gz", lr_np, lr_affine)
    logger.info(f"HR {hr_np.shape} → LR {lr_np.shape} ({degradation}, factors {factors})")

    # the output grid is the HR grid: a prior works at its spacing (unless the overrides say otherwise)
    hr_spacing = [round(float(v), 6) for v in np.sqrt((hr_affine[:3, :3] ** 2).sum(axis=0))]
    fitted = fit(lr_path, out / "fit", {"prior_spacing": hr_spacing, **dict(overrides or {})}, config_files)
    grid = TargetGrid(tuple(hr_np.shape), hr_affine)  # type: ignore[arg-type]
    start = time.perf_counter()
    sr = fitted.inferer.render_grid(fitted.network, fitted.record.geometry, grid)
    render_seconds = time.perf_counter() - start
    sr_np = np.asarray(denormalize_intensity(sr, fitted.record.intensity_range).numpy(), dtype=np.float32)
    if save_volumes:
        save_nifti(out / "sr.nii.gz", sr_np, hr_affine)
    prior = fitted_prior(fitted.workflow)
    uncertainty = render_uncertainty(prior_state(prior), fitted.network, fitted.inferer, fitted.record, grid)

    predictions = run_baselines(lr_np, lr_affine, hr_np.shape, hr_affine, include_misaligned=True)
    predictions[OURS] = sr_np
    consistency = data_consistency(sr_np, hr, lr_np, factors, degradation)
    if prior is not None:  # the prior alone: its proposal before the consistency correction, on the same grid
        model = grid_model(fitted.network, prior.proposal, kernel=fitted.network.coarse.kernel)
        proposal = fitted.inferer.coarse_only().render_grid(model, fitted.record.geometry, grid)
        predictions[OURS_PROPOSAL] = denormalize_intensity(proposal, fitted.record.intensity_range).numpy()
    if fitted.inferer.num_fine_eval > 0:  # a fine pass: its render is ours; the coarse network's alone beside it
        coarse = fitted.inferer.coarse_only().render_grid(fitted.network, fitted.record.geometry, grid)
        predictions[OURS_COARSE] = denormalize_intensity(coarse, fitted.record.intensity_range).numpy()
    mask = foreground_mask(hr_np)
    results = {name: score(np.clip(pred, 0.0, 1.0), hr_np, mask) for name, pred in predictions.items()}
    aligned = [k for k in results if k not in (OURS, OURS_COARSE, OURS_PROPOSAL, MISALIGNED_KEY)]
    best = max(aligned, key=lambda k: results[k]["psnr"])
    settings = fitted.workflow.parser
    batch_size = int(settings.get_parsed_content("batch_size"))
    budget = {
        "iterations": int(settings.get_parsed_content("fit_iterations" if "fit_iterations" in settings else "num_iterations")),
        "batch_size": batch_size,
        "points_per_iteration": batch_size * fitted.inferer.points_per_target(),
        "fit_seconds": round(fitted.seconds, 1),
        "render_seconds": round(render_seconds, 1),
    }
    budget["peak_rss_mb"] = peak_rss_mb()
    prior_seconds = sum((fitted.prior or {}).get("seconds", {}).values())  # the prior's stages are not training
    if prior_seconds:
        budget["prior_seconds"] = round(prior_seconds, 1)
    budget["train_points_per_second"] = round(
        budget["iterations"] * budget["points_per_iteration"] / max(fitted.seconds - prior_seconds, 1e-9)
    )
    metrics = {
        "input": str(hr_path),
        "degradation": degradation,
        "factors": list(factors),
        "hr_shape": list(hr_np.shape),
        "lr_shape": list(lr_np.shape),
        "results": results,
        "best_aligned_baseline": best,
        "margin_psnr_db": results[OURS]["psnr"] - results[best]["psnr"],
        "margin_ssim": results[OURS]["ssim"] - results[best]["ssim"],
        "data_consistency_psnr_db": consistency,
        "uncertainty": None if uncertainty is None else uncertainty_summary(uncertainty.numpy(), np.clip(sr_np, 0.0, 1.0) - hr_np, mask),
        "budget": budget,
        "forward_model": fitted.forward_model,
        "prior": fitted.prior,
        "renderer": {  # what the fit trained and rendered with (the ablation rows differ only here)
            "sampling": fitted.inferer.sampling,
            "weighting": fitted.inferer.weighting,
            "loss": type(settings.get_parsed_content("loss")).__name__,
            "num_coarse_eval": fitted.inferer.num_coarse_eval,
            "num_fine_eval": fitted.inferer.num_fine_eval,
        },
        "validation_history": fitted.history,
        "machine": machine_description(),
    }
    write_json(out / "metrics.json", metrics)
    table = format_table({(f"{k} (misaligned)" if k == MISALIGNED_KEY else k): v for k, v in results.items()})
    with atomic_path(out / "table.md") as tmp:
        Path(tmp).write_text(table + "\n", encoding="utf-8")
    comparison_figure(
        out / "figure.png",
        {"HR": hr_np, best: predictions[best], OURS: sr_np},
        reference_key="HR",
        lr=lr_np,
        lr_affine=lr_affine,
        hr_affine=hr_affine,
        title=f"{Path(str(hr_path)).name}: {degradation} ×{'/'.join(str(f) for f in factors)}",
    )
    if uncertainty is not None:
        save_nifti(out / UNCERTAINTY_FILE, uncertainty, hr_affine)
        uncertainty_figure(out / "uncertainty.png", np.abs(np.clip(sr_np, 0.0, 1.0) - hr_np), uncertainty.numpy(),
                           hr_affine, title="prior: |error| and uncertainty (orientation disagreement)")
    logger.info("\n" + table)
    return metrics


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB; run one evaluation per process for a per-run figure)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)  # bytes on macOS, KiB on Linux


def uncertainty_summary(uncertainty: np.ndarray, error: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """How well the uncertainty map ``(X, Y, Z)`` flags the error ``(X, Y, Z)`` inside ``mask``: its mean, the mean
    ``|error|``, and their Pearson and Spearman (rank) correlations over the masked voxels."""
    from scipy.stats import pearsonr, spearmanr

    u, e = uncertainty[mask].astype(np.float64), np.abs(error[mask]).astype(np.float64)
    if u.size < 3 or np.ptp(u) == 0 or np.ptp(e) == 0:
        return {"mean": float(u.mean()) if u.size else 0.0, "mean_abs_error": float(e.mean()) if e.size else 0.0,
                "pearson": float("nan"), "spearman": float("nan")}
    return {
        "mean": float(u.mean()),
        "mean_abs_error": float(e.mean()),
        "pearson": float(pearsonr(u, e)[0]),
        "spearman": float(spearmanr(u, e)[0]),
    }
