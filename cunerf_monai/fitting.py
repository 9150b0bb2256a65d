"""Fit a model from Python through the bundle's own training config (one code path for bundle, CLI and API)."""

from __future__ import annotations

import math

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from monai.bundle import ConfigWorkflow
from torch import nn

from .checkpoints import FINAL
from .inferers import CuNeRFInferer
from .records import VolumeRecord
from .utils import bundle_root, resolve_overlays

__all__ = ["FitResult", "check_settings", "fit", "fit_overrides", "train_config_files"]


@dataclass
class FitResult:
    """What a fit returns.

    Attributes:
        network: the fitted :class:`~cunerf_monai.networks.CuNeRFModel`.
        inferer: the configured :class:`~cunerf_monai.inferers.CuNeRFInferer`.
        record: the fitted volume's geometry and intensity range.
        checkpoint: path of the final checkpoint.
        history: validation PSNR per validation round, ``[(iteration, psnr), ...]``.
        seconds: wall time of the fit (the prior, when there is one, and the training run).
        workflow: the MONAI ``ConfigWorkflow`` (for anything else in the config).
        forward_model: the forward model the fit used (:meth:`cunerf_monai.forward_model.ForwardModel.as_dict`),
            ``None`` for a config without one.
        prior: the thick-slice prior's settings, output grid, times and consistency; ``None`` without one.
    """

    network: nn.Module
    inferer: CuNeRFInferer
    record: VolumeRecord
    checkpoint: str
    history: list[tuple[int, float]]
    seconds: float
    workflow: ConfigWorkflow
    forward_model: dict[str, Any] | None = None
    prior: dict[str, Any] | None = None


def train_config_files(extra: Sequence[str] | str | None = None) -> list[str]:
    """``configs/train.json`` of the bundle plus optional overlay files (see :func:`~cunerf_monai.utils.resolve_overlays`:
    names relative to ``configs/`` allowed; a missing overlay raises ``FileNotFoundError``)."""
    return [str(Path(bundle_root()) / "configs" / "train.json"), *resolve_overlays(extra)]


_INTEGERS = ("num_iterations", "epoch_length", "batch_size", "num_coarse", "num_coarse_eval")
_NON_NEGATIVE = ("num_fine", "num_fine_eval", "seed")


def check_settings(**settings: Any) -> bool:
    """Check the training config's scalar settings before anything is built, naming any of wrong type or range.

    Integers (``num_iterations``, ``epoch_length``, ``batch_size``, ``num_coarse``…) must be whole positive numbers
    (``num_fine``, ``num_fine_eval`` and ``seed`` may be 0); ``cube_size`` is one positive number or three;
    ``learning_rate`` and ``lr_final`` are positive numbers. Other settings (names, the forward model …) are checked
    where they are used. Returns ``True`` (for use in a config expression).
    """
    import numpy as np

    for name, value in settings.items():
        if name == "cube_size":
            try:
                cube = np.asarray(value, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise ValueError(f"cube_size must be one number or three (LR voxels), got {value!r}.") from None
            if cube.size not in (1, 3) or not np.all(np.isfinite(cube)) or np.any(cube <= 0):
                raise ValueError(f"cube_size must be one positive number or three (LR voxels), got {value!r}.")
        elif name in ("learning_rate", "lr_final"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}.")
        elif name in _INTEGERS or name in _NON_NEGATIVE:
            low = 0 if name in _NON_NEGATIVE else 1
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                kind = "a non-negative" if low == 0 else "a positive"
                raise ValueError(f"{name} must be {kind} integer, got {value!r} ({type(value).__name__}).")
    return True


def fit_overrides(
    seed: int = 0, iterations: int | None = None, batch_size: int | None = None, **extra: Any
) -> dict[str, Any]:
    """Training-config overrides from command-line style settings, checked (positive integers)."""
    overrides: dict[str, Any] = {"seed": int(seed), **extra}
    for key, value in (("num_iterations", iterations), ("batch_size", batch_size)):
        if value is None:
            continue
        if int(value) < 1 or int(value) != float(value):
            name = "iterations" if key == "num_iterations" else key
            raise ValueError(f"{name} must be a positive integer, got {value}.")
        overrides[key] = int(value)
    return overrides


def fit(
    image_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    overrides: Mapping[str, Any] | None = None,
    config_files: Sequence[str] | None = None,
) -> FitResult:
    """Fit a field to one volume with the bundle's training workflow.

    Args:
        image_path: the LR volume (NIfTI, DICOM folder, NRRD).
        output_dir: where checkpoints and logs go.
        overrides: config overrides, e.g. ``{"num_iterations": 500, "batch_size": 2048}``.
        config_files: training config files (default :func:`train_config_files`).

    Returns:
        a :class:`FitResult`.
    """
    import time

    files = list(config_files) if config_files else train_config_files()
    settings = {"input_image": str(image_path), "output_dir": str(output_dir)}
    settings.update(dict(overrides or {}))
    start = time.perf_counter()  # the prior (when there is one) runs while the config is initialised
    workflow = ConfigWorkflow(config_file=files, workflow_type="train", **settings)
    workflow.initialize()
    history: list[tuple[int, float]] = []
    trainer = workflow.parser.get_parsed_content("train#trainer")
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")

    from ignite.engine import Events

    @evaluator.on(Events.COMPLETED)
    def _remember(engine: Any) -> None:
        history.append((int(trainer.state.iteration), float(engine.state.metrics.get("val_psnr", float("nan")))))

    workflow.run()
    seconds = time.perf_counter() - start
    workflow.finalize()
    return FitResult(
        network=workflow.parser.get_parsed_content("network"),
        inferer=workflow.parser.get_parsed_content("inferer"),
        record=workflow.parser.get_parsed_content("volume_record"),
        checkpoint=str(Path(workflow.parser.get_parsed_content("ckpt_dir")) / FINAL),
        history=history,
        seconds=seconds,
        workflow=workflow,
        forward_model=workflow.parser.get_parsed_content("forward").as_dict() if "forward" in workflow.parser else None,
        prior=_prior_of(workflow),
    )


def _prior_of(workflow: ConfigWorkflow) -> dict[str, Any] | None:
    """What the fit's thick-slice prior was and did (``None`` when the fit has none): its settings, whether it was
    applied (``applied``: false when it stepped aside), its output grid, stage times, training loss, held-out in-plane
    gain and the consistency of its output (see :mod:`cunerf_monai.slice_prior`)."""
    from .slice_prior import describe, fitted_prior

    prior = workflow.parser.get_parsed_content("learned_prior") if "learned_prior" in workflow.parser else None
    if prior is None:
        return None
    out: dict[str, Any] = {**describe(prior), "applied": fitted_prior(workflow) is not None}  # type: ignore[dict-item]
    result = prior.result
    if result is None:  # the volume was too small to learn from
        return out
    out.update({
        "grids": [grid.as_dict() for grid in result.grids],
        "seconds": {k: round(v, 1) for k, v in result.seconds.items()},
        "train_l1": round(result.train_loss, 6) if math.isfinite(result.train_loss) else None,  # None: loaded
        "inplane_gain_db": round(result.inplane_gain, 3) if math.isfinite(result.inplane_gain) else None,
        "stages": result.stages,
    })
    if out["applied"]:
        out["consistency_psnr_db"] = round(min(result.consistency_psnr, 999.0), 1)
    return out
