"""A model directory: ``model.pt`` (the fitted checkpoint) and ``fit.json`` (the input, config overlays and
overrides it was fitted with), written by ``cunerf fit`` and ``cunerf batch`` and read back by ``cunerf render``
and ``cunerf slices``, which re-apply the overlays; ``prior_model.pt`` beside them when the fit learned a prior."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from .slice_prior import PRIOR_MODEL_FILE
from .utils import atomic_path, write_json

__all__ = ["MODEL_FILE", "FIT_INFO_FILE", "save_model_dir", "checkpoint_of", "overlays_of"]

MODEL_FILE = "model.pt"
FIT_INFO_FILE = "fit.json"


def save_model_dir(
    model_dir: str | os.PathLike,
    result: Any,
    source: str | os.PathLike,
    overlays: Sequence[str],
    overrides: Mapping[str, Any],
) -> dict[str, Any]:
    """Copy a fit's final checkpoint to ``MODEL_DIR/model.pt`` (and its prior's network to ``prior_model.pt``, for
    ``--prior MODEL_DIR`` on other scans) and write ``MODEL_DIR/fit.json``; returns the fit.json content.

    Args:
        model_dir: the model directory (created).
        result: a :class:`~cunerf_monai.fitting.FitResult` (``checkpoint``, ``seconds``, ``history``, and
            ``forward_model`` when it has one).
        source: the fitted volume.
        overlays: the config overlay files it was fitted with (absolute paths).
        overrides: the config overrides it was fitted with (``None`` values are left out).
    """
    mdir = Path(model_dir)
    with atomic_path(mdir / MODEL_FILE) as tmp:
        shutil.copyfile(result.checkpoint, tmp)
    info: dict[str, Any] = {
        "input": str(source),
        "overlays": list(overlays),
        "overrides": {k: v for k, v in overrides.items() if v is not None},
        "fit_seconds": round(result.seconds, 1),
        "validation_psnr": result.history,
    }
    forward_model = getattr(result, "forward_model", None)
    if forward_model is not None:
        info["forward_model"] = forward_model
    prior = getattr(result, "prior", None)
    if prior is not None:
        info["prior"] = prior
    trained = Path(result.checkpoint).parent / PRIOR_MODEL_FILE  # the fit's prior network, reusable on other scans
    if prior is not None and trained.is_file():
        with atomic_path(mdir / PRIOR_MODEL_FILE) as tmp:
            shutil.copyfile(trained, tmp)
        info["prior_model"] = PRIOR_MODEL_FILE
    write_json(mdir / FIT_INFO_FILE, info)
    return info


def checkpoint_of(model_dir: str | os.PathLike) -> str:
    """The checkpoint of a model directory (``model.pt`` inside it), or the path itself when it is a file."""
    mdir = Path(model_dir)
    return str(mdir / MODEL_FILE if mdir.is_dir() else mdir)


def overlays_of(model_dir: str | os.PathLike) -> list[str]:
    """The config overlays a model directory was fitted with (from its ``fit.json``; none without one)."""
    info = Path(model_dir) / FIT_INFO_FILE
    return list(json.loads(info.read_text(encoding="utf-8")).get("overlays", [])) if info.is_file() else []
