"""Ignite handlers the bundle needs beyond MONAI's: the trainer's output as a one-item list, a guard against
non-finite losses, a PSNR-vs-iteration plot and the MLflow extras. Checkpoints and resuming are in
:mod:`cunerf_monai.checkpoints`."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys

from .distributed import get_rank

__all__ = ["OutputAsList", "TrackingExtras", "NonFiniteLossGuard", "ValidationCurve"]

logger = logging.getLogger(__name__)


class OutputAsList:
    """After each iteration, wrap the trainer's output dictionary in a one-item list.

    The trainer runs with ``decollate=False``: a batch holds 10⁴–10⁶ targets, and decollating them into one Python
    dictionary per target (MONAI's default) took about ten times longer than the training step itself. MONAI's
    handlers (``StatsHandler``, the MLflow handler of ``--tracking mlflow``) read the loss with
    ``from_engine(["loss"], first=True)``, which expects a decollated list; a one-item list holding the whole output
    satisfies them without copying anything. Attach it before those handlers (first in ``train_handlers``).
    """

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if isinstance(engine.state.output, dict):
            engine.state.output = [engine.state.output]


class NonFiniteLossGuard:
    """Stop training with a clear error when the loss becomes NaN or infinite (the last good checkpoint stays)."""

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        out = engine.state.output
        key = CommonKeys.LOSS
        loss = out[0][key] if isinstance(out, list) else out[key] if isinstance(out, dict) else out
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        if not math.isfinite(value):
            raise FloatingPointError(
                f"The loss became {value} at iteration {engine.state.iteration}; training stopped. The last good "
                "checkpoint (last.pt) is kept. Lower the learning rate or check the input for extreme values."
            )


class ValidationCurve:
    """Record the validation metric after each validation round and plot it against the iteration (PNG).

    Args:
        trainer: the training engine (for the iteration count).
        path: output PNG.
        metric: the evaluator metric to record.
    """

    def __init__(self, trainer: Engine, path: str, metric: str = "val_psnr") -> None:
        self.trainer, self.path, self.metric = trainer, str(path), metric
        self.history: list[tuple[int, float]] = []

    def attach(self, evaluator: Engine) -> None:
        evaluator.add_event_handler(Events.COMPLETED, self._record)

    def _record(self, evaluator: Engine) -> None:
        value = evaluator.state.metrics.get(self.metric)
        if value is None:
            return
        self.history.append((int(self.trainer.state.iteration), float(value)))
        if get_rank() == 0:
            from .evaluation.figures import plot_curve

            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            xs = [h[0] for h in self.history]
            plot_curve(self.path, xs, {self.metric: [h[1] for h in self.history]}, "iteration", "PSNR (dB)",
                       title="validation PSNR of the fitted volume")


def _mlflow_handler(engine: Engine) -> Any | None:
    """The MONAI ``MLFlowHandler`` attached to ``engine`` (by ``--tracking mlflow``), if any."""
    from monai.handlers import MLFlowHandler

    for handlers in engine._event_handlers.values():
        for entry in handlers:
            func = entry[0]
            owner = getattr(func, "__self__", None)
            if isinstance(owner, MLFlowHandler):
                return owner
    return None


#: the longest parameter value MLflow keeps (longer values are cut)
MLFLOW_PARAM_CHARS = 500


def flat_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``params`` with every value that holds mappings split into one param per entry (``prior.slices``,
    ``prior.cross_scale``, …), so that no part of a nested setting is cut at :data:`MLFLOW_PARAM_CHARS`."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and any(isinstance(v, Mapping) for v in value.values()):
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = value
    return out


class TrackingExtras:
    """When the run is tracked with MLflow (``--tracking mlflow``), add what MONAI's handler does not log:
    the fit's parameters, a picture of the result (mid slices per plane: input, ×2 render, fit error) and the
    final checkpoint. Does nothing when tracking is off or on ranks other than 0.

    Args:
        trainer: the training engine (its MLflow handler's run is used).
        params: parameters to log (field, scale, sample counts, learning rate, …).
        network, inferer, image: the model, its renderer and the normalised training image ``(1, X, Y, Z)``.
        output_dir: where the picture is written before upload.
        checkpoint: the checkpoint to upload (the last epoch's, written just before).
        metrics: numbers measured before training to log as metrics (e.g. the thick-slice prior's stage times,
            training loss and consistency).
    """

    def __init__(
        self,
        trainer: Engine,
        params: Mapping[str, Any],
        network: torch.nn.Module,
        inferer: Any,
        image: torch.Tensor,
        output_dir: str,
        checkpoint: str,
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        self.trainer, self.params, self.metrics = trainer, dict(params), dict(metrics or {})
        self.network, self.inferer, self.image = network, inferer, image
        self.output_dir, self.checkpoint = str(output_dir), str(checkpoint)

    def attach(self, engine: Engine) -> None:
        # at the end of the last epoch: MLflow's run is still open then (it closes on COMPLETED)
        last = Events.EPOCH_COMPLETED(event_filter=lambda e, epoch: epoch == e.state.max_epochs)
        engine.add_event_handler(last, self)

    def __call__(self, engine: Engine) -> None:
        handler = _mlflow_handler(engine)
        if handler is None or get_rank() != 0 or getattr(handler, "cur_run", None) is None:
            return
        run_id = handler.cur_run.info.run_id
        client = handler.client
        for key, value in flat_params(self.params).items():
            client.log_param(run_id, key, str(value)[:MLFLOW_PARAM_CHARS])
        for key, value in self.metrics.items():
            client.log_metric(run_id, key, float(value))
        picture = self.picture(Path(self.output_dir) / "result_slices.png")
        client.log_artifact(run_id, picture, artifact_path="images")
        val_curve = Path(self.output_dir) / "val_psnr.png"
        if val_curve.is_file():
            client.log_artifact(run_id, str(val_curve), artifact_path="images")
        if Path(self.checkpoint).is_file():
            client.log_artifact(run_id, self.checkpoint, artifact_path="model")
        configs = sorted(Path(self.output_dir).glob("config_*.json"), key=lambda p: p.stat().st_mtime)
        if configs:  # the merged config that MONAI's tracking patch saved for this run
            client.log_artifact(run_id, str(configs[-1]), artifact_path="config")

    def picture(self, path: Path) -> str:
        """Mid slices per plane: input, ×2 render and |render − input| at the input's voxels; returns the path."""
        import numpy as np

        from .data import geometry_of
        from .evaluation.figures import comparison_figure
        from .geometry import TargetGrid

        model = getattr(self.network, "module", self.network)
        geometry = geometry_of(self.image)
        lr = self.image[0].detach().cpu().numpy()
        fit = self.inferer.render_grid(model, geometry, TargetGrid(geometry.shape, geometry.affine)).numpy()
        return comparison_figure(
            path, {"input": lr, "fit at input voxels": fit}, reference_key="input",
            hr_affine=np.asarray(geometry.affine), title="fitted field vs its input (mid slices)",
        )
