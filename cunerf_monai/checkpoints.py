"""Checkpoints and run state: what a training checkpoint holds beside the networks (the run's settings, the global
random states), writing it atomically, resuming a run from it (on every rank of a distributed run), and reading a
fitted checkpoint back for rendering.

A training run writes ``last.pt`` every epoch and ``model.pt`` at the end into its checkpoint folder
(:class:`AtomicCheckpoints`); :func:`resume_training` continues from ``last.pt`` only when it belongs to the same
volume and settings; :func:`load_checkpoint` loads ``model.pt`` (or any checkpoint) into a network for rendering.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from ignite.handlers.checkpoint import BaseSaveHandler
from torch import nn

from .distributed import get_rank, is_distributed
from .inferers import field_device
from .records import VolumeRecord
from .utils import atomic_path

__all__ = [
    "LAST",
    "FINAL",
    "RandomStates",
    "RunSettings",
    "AtomicSaver",
    "AtomicCheckpoints",
    "resume_training",
    "read_checkpoint",
    "fitted_shape",
    "load_checkpoint",
]

logger = logging.getLogger(__name__)

#: the checkpoint written every epoch (and resumed from).
LAST = "last.pt"
#: the checkpoint written when training completes (the fitted model).
FINAL = "model.pt"


class RandomStates:
    """torch's, numpy's and Python's global random states as a checkpointable object, so that a resumed run draws
    exactly the samples the interrupted one would have drawn."""

    def state_dict(self) -> dict[str, Any]:
        import random

        import numpy as np

        name, keys, pos, has_gauss, cached = np.random.get_state()
        numpy_state = [name, torch.as_tensor(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
        # only tensors and plain Python values, so `torch.load(weights_only=True)` can read the checkpoint
        return {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        import random

        import numpy as np

        torch.set_rng_state(state["torch"])
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
        random.setstate(tuple(state["python"]))


class RunSettings:
    """The settings that shape a fit (field, batch, learning rate, sampling, loss …) as a checkpointable object.

    Checkpoints carry them, and :func:`resume_training` refuses to continue a run whose settings differ, so rerunning
    into an old ``output_dir`` with new settings fails clearly instead of silently continuing the old experiment.
    ``num_iterations`` is deliberately not a setting: a finished run can be extended.

    Args:
        settings: names and JSON-like values (numbers, strings, lists, dicts, ``None``): the config's one ``settings``
            dict, and/or keywords.
    """

    def __init__(self, settings: Mapping[str, Any] | None = None, **more: Any) -> None:
        import json

        self.settings = json.loads(json.dumps({**dict(settings or {}), **more}, default=str))

    def state_dict(self) -> dict[str, Any]:
        return dict(self.settings)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore: the comparison happens before loading (:meth:`differences`)."""

    def differences(self, saved: Mapping[str, Any]) -> list[str]:
        """``"name: saved → current"`` for every setting that differs from ``saved``."""
        keys = sorted(set(self.settings) | set(saved))
        return [
            f"{k}: {saved.get(k, '(unset)')!r} → {self.settings.get(k, '(unset)')!r}"
            for k in keys
            if saved.get(k) != self.settings.get(k)
        ]


class AtomicSaver(BaseSaveHandler):
    """Ignite save handler writing checkpoints into ``save_dir`` with :func:`~cunerf_monai.utils.atomic_path`
    (temporary file, then rename): the file gets the user's umask like every other output (0644 under umask 022),
    and only rank 0 writes.

    Ignite's ``Checkpoint`` asks to remove the previous file before it saves the next; a removed name is deleted
    only after the next save, and not at all when that save rewrites it (``last.pt`` every epoch), so a run killed
    at any moment leaves its last complete checkpoint in place.
    """

    def __init__(self, save_dir: str | os.PathLike) -> None:
        self.save_dir = Path(save_dir)
        self._stale: set[str] = set()

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if get_rank() != 0:
            return
        with atomic_path(self.save_dir / filename) as tmp:
            torch.save(checkpoint, tmp)
        for name in self._stale - {filename}:
            (self.save_dir / name).unlink(missing_ok=True)
        self._stale.clear()

    def remove(self, filename: str) -> None:
        self._stale.add(filename)


class AtomicCheckpoints:
    """Save ``to_save`` atomically (:class:`AtomicSaver`) as ``last.pt`` every ``every`` epochs and as
    ``model.pt`` when training completes. Only rank 0 writes under ``torch.distributed``.

    Args:
        save_dir: checkpoint folder.
        to_save: objects with ``state_dict`` (networks, optimizer, scheduler, trainer, volume record, data).
        every: epochs between ``last.pt`` saves.
        final: also write ``model.pt`` at the end.
    """

    def __init__(self, save_dir: str, to_save: Mapping[str, Any], every: int = 1, final: bool = True) -> None:
        self.save_dir, self.to_save, self.every, self.final = str(save_dir), dict(to_save), int(every), bool(final)

    def _checkpoint(self, name: str) -> Checkpoint:
        return Checkpoint(self.to_save, AtomicSaver(self.save_dir), filename_pattern=name, n_saved=1)

    def attach(self, engine: Engine) -> None:
        """Register on ``engine``'s epoch and completion events."""
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.every), self._checkpoint(LAST))
        if self.final:
            engine.add_event_handler(Events.COMPLETED, self._checkpoint(FINAL))


def check_resumable(save_dir: str | os.PathLike | None, enabled: bool = True, **settings: Any) -> None:
    """Refuse early a resume whose ``settings`` (a few of :class:`RunSettings`' names, e.g. the prior's, known before
    the expensive stages that build the rest) differ from those of ``save_dir/last.pt``; nothing to check without
    that checkpoint or with ``enabled`` false.

    Raises:
        ValueError: naming each differing setting, as :func:`resume_training` would after the expensive stages.
    """
    path = None if save_dir is None else Path(save_dir) / LAST
    if not enabled or path is None or not path.is_file():
        return
    # memory-mapped: only the settings are read here; the tensors are loaded once, by the resume itself
    saved = torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("settings")
    if not isinstance(saved, Mapping):
        return
    diffs = RunSettings(settings).differences({k: saved.get(k, "(unset)") for k in settings})
    if diffs:
        raise ValueError(
            f"{path} belongs to a run with other settings ({'; '.join(diffs)}); use a new output_dir for a new "
            "experiment, or pass --resume False to start this one over."
        )


def _resume_from(save_dir: str | os.PathLike, to_load: Mapping[str, Any], record: VolumeRecord, enabled: bool = True) -> bool:
    """Load ``save_dir/last.pt`` into ``to_load`` if it exists (iteration, optimizer, scheduler, random streams).

    Raises:
        ValueError: the checkpoint belongs to a run on another volume (other shape, affine or range), or to a run
            with other settings (when ``to_load`` has a :class:`RunSettings` under ``"settings"``).
    Returns:
        whether a checkpoint was loaded.
    """
    path = Path(save_dir) / LAST
    if not enabled or not path.is_file():
        return False
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    mine, theirs = record.state_dict(), ckpt.get("volume", {})
    if mine.get("geometry") != theirs.get("geometry") or mine.get("intensity_range") != theirs.get("intensity_range"):
        raise ValueError(
            f"{path} belongs to a run on another volume ({theirs.get('source', '?')}); use another output_dir, "
            "or pass --resume False to start over."
        )
    settings = to_load.get("settings")
    if isinstance(settings, RunSettings) and "settings" in ckpt:
        diffs = settings.differences(ckpt["settings"])
        if diffs:
            raise ValueError(
                f"{path} belongs to a run with other settings ({'; '.join(diffs)}); use a new output_dir for a new "
                "experiment, or pass --resume False to start this one over."
            )
    model = to_load.get("model")
    if model is not None and "model" in ckpt:
        model.load_state_dict(ckpt["model"])  # wrapped networks (DDP) accept the plain keys here
    trainer = to_load.get("trainer")
    wanted_epochs = getattr(getattr(trainer, "state", None), "max_epochs", None)
    Checkpoint.load_objects({k: v for k, v in to_load.items() if k != "model" and k in ckpt}, ckpt)
    if wanted_epochs is not None and wanted_epochs > trainer.state.epoch:
        trainer.state.max_epochs = wanted_epochs  # a longer num_iterations extends the run
    logger.info(f"resumed from {path} at iteration {ckpt.get('trainer', {}).get('iteration', '?')}")
    return True


def resume_training(
    save_dir: str | os.PathLike, to_load: Mapping[str, Any], record: VolumeRecord, enabled: bool = True
) -> bool:
    """Load ``save_dir/last.pt`` into ``to_load`` if it exists (iteration, optimizer, scheduler, random streams).

    Under ``torch.distributed`` rank 0 reads the file and broadcasts its bytes; every rank loads the same
    checkpoint (or none), so the ranks never disagree on the iteration to resume from (nodes need not share a
    filesystem).

    Raises:
        ValueError: the checkpoint belongs to a run on another volume (other shape, affine or range), or to a run
            with other settings (when ``to_load`` has a :class:`RunSettings` under ``"settings"``).
    Returns:
        whether a checkpoint was loaded.
    """
    if not is_distributed():
        return _resume_from(save_dir, to_load, record, enabled)
    payload: list[bytes | None] = [None]
    if get_rank() == 0:
        path = Path(save_dir) / LAST
        payload[0] = path.read_bytes() if enabled and path.is_file() else None
    dist.broadcast_object_list(payload, src=0)
    if payload[0] is None:
        return False
    with tempfile.TemporaryDirectory(prefix="cunerf_resume_") as tmp:
        (Path(tmp) / LAST).write_bytes(payload[0])
        resumed = _resume_from(tmp, to_load, record, True)
    if get_rank() == 0:
        logger.info(f"every rank resumed from rank 0's {Path(save_dir) / LAST}")
    return resumed


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Read a project checkpoint, with clear errors for a missing or foreign file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {p}. Fit a model first (bundle 'training' or 'cunerf fit').")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise ValueError(f"{p} is not a readable PyTorch checkpoint: {exc}") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "volume" not in ckpt:
        keys = list(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{p} is not a cunerf-monai checkpoint (needs 'model' and 'volume' entries, found {keys}).")
    return ckpt


def fitted_shape(path: str | os.PathLike) -> list[int]:
    """Sample grid ``[X, Y, Z]`` of a checkpoint's grid field: the fitted volume's voxel shape, or the finer output
    grid of the thick-slice prior when the field holds one (fields tie their grids to it)."""
    ckpt = read_checkpoint(path)
    samples = ckpt["model"].get("coarse.samples")
    if samples is not None:
        return [int(v) for v in samples.shape]
    return [int(v) for v in ckpt["volume"]["geometry"]["shape"]]


def load_checkpoint(path: str | os.PathLike, network: nn.Module) -> VolumeRecord:
    """Load a fitted model's weights into ``network`` and return the fitted volume's :class:`VolumeRecord`.

    Raises:
        FileNotFoundError: no checkpoint at ``path`` (never silently renders untrained weights).
        ValueError: the file is not a checkpoint of this project, or was saved from another network/config.
    """
    p = Path(path)
    ckpt = read_checkpoint(p, field_device(network))
    try:  # the modules' load hooks fill entries older checkpoints lack (a grid field's kernel_id)
        network.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ValueError(_mismatch(p, network.state_dict(), ckpt, exc)) from None
    record = VolumeRecord()
    record.load_state_dict(ckpt["volume"])
    return record


def _mismatch(path: Path, own: dict, ckpt: dict, exc: Exception) -> str:
    """What differs between a network's state dict and a checkpoint's model that does not load into it."""
    theirs = ckpt["model"]
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    wrong = sorted(k for k in set(own) & set(theirs) if tuple(own[k].shape) != tuple(theirs[k].shape))
    detail = []
    if missing:
        detail.append(f"missing {missing[:4]}{' …' if len(missing) > 4 else ''}")
    if unexpected:
        detail.append(f"unexpected {unexpected[:4]}{' …' if len(unexpected) > 4 else ''}")
    if wrong:
        detail.append(
            "shape mismatch " + ", ".join(f"{k}: {tuple(theirs[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:3])
        )
    field = ckpt["volume"].get("field", "?") if isinstance(ckpt["volume"], dict) else "?"
    return (
        f"{path} was saved from another network or configuration (field {field!r}): "
        f"{'; '.join(detail) or str(exc).splitlines()[0]}. Use the config the model was fitted with."
    )
