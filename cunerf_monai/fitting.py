"""Fit a model from Python through the bundle's own training config (one code path for bundle, CLI and API)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from monai.bundle import ConfigWorkflow
from torch import nn

from .inferers import CuNeRFInferer
from .records import VolumeRecord
from .utils import bundle_root

__all__ = ["FitResult", "fit", "fit_overrides", "train_config_files"]


@dataclass
class FitResult:
    """What a fit returns.

    Attributes:
        network: the fitted :class:`~cunerf_monai.networks.CuNeRFModel`.
        inferer: the configured :class:`~cunerf_monai.inferers.CuNeRFInferer`.
        record: the fitted volume's geometry and intensity range.
        checkpoint: path of the final checkpoint.
        history: validation PSNR per validation round, ``[(iteration, psnr), ...]``.
        seconds: wall time of the training run.
        workflow: the MONAI ``ConfigWorkflow`` (for anything else in the config).
    """

    network: nn.Module
    inferer: CuNeRFInferer
    record: VolumeRecord
    checkpoint: str
    history: list[tuple[int, float]]
    seconds: float
    workflow: ConfigWorkflow


def train_config_files(extra: Sequence[str] | str | None = None) -> list[str]:
    """``configs/train.json`` of the bundle plus optional overlay files (names relative to ``configs/`` allowed)."""
    configs = Path(bundle_root()) / "configs"
    files = [str(configs / "train.json")]
    for f in [extra] if isinstance(extra, str) else list(extra or []):
        p = Path(f)
        files.append(str(p if p.is_file() else configs / p))
    return files


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
    workflow = ConfigWorkflow(config_file=files, workflow_type="train", **settings)
    workflow.initialize()
    history: list[tuple[int, float]] = []
    trainer = workflow.parser.get_parsed_content("train#trainer")
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")

    from ignite.engine import Events

    @evaluator.on(Events.COMPLETED)
    def _remember(engine: Any) -> None:
        history.append((int(trainer.state.iteration), float(engine.state.metrics.get("val_psnr", float("nan")))))

    start = time.perf_counter()
    workflow.run()
    seconds = time.perf_counter() - start
    workflow.finalize()
    return FitResult(
        network=workflow.parser.get_parsed_content("network"),
        inferer=workflow.parser.get_parsed_content("inferer"),
        record=workflow.parser.get_parsed_content("volume_record"),
        checkpoint=str(Path(workflow.parser.get_parsed_content("ckpt_dir")) / "model.pt"),
        history=history,
        seconds=seconds,
        workflow=workflow,
    )
