"""Training data: endless batches of random target cubes drawn from one LR volume, and the PrepareBatch that
hands them to :class:`~cunerf_monai.inferers.CuNeRFInferer` inside Ignite's ``SupervisedTrainer``."""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from monai.engines.utils import PrepareBatch
from monai.utils import convert_to_tensor
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from .distributed import get_rank
from .enums import BatchKeys
from .geometry import VolumeGeometry, geometry_of
from .transforms.array import check_volume

__all__ = ["RandomCubeDataset", "SlabDataset", "CubePrepareBatch", "geometry_of"]


class RandomCubeDataset(IterableDataset):
    """An endless stream of batches of random target cubes from one normalised LR volume.

    Each item is one batch (use ``DataLoader(dataset, batch_size=None)``):

    * ``"centre"``: target centres in field coordinates ``(B, 3)`` (LR voxel centres);
    * ``"target"``: the LR intensities there ``(B,)``;
    * ``"half_extent"``: the cube half-size in field units ``(3,)`` (``cube_size / 2`` LR voxels per axis).

    Each process (rank) and dataloader worker draws from its own stream, ``seed + 1000 · rank + worker``,
    so distributed ranks see different cubes and a run replays exactly from the same seed.

    Targets come in passes: a random permutation of all voxels is consumed batch by batch, and the next pass starts
    when it runs out. A batch therefore never repeats a voxel (or, when ``batch_size`` exceeds the voxel count, holds
    every voxel equally often, ±1): every voxel's gradient has the same weight, which the default step size of the
    grid field relies on (a voxel drawn twice would take a double step).

    Args:
        image: channel-first normalised LR volume ``(1, X, Y, Z)`` (a MetaTensor carries the affine).
        batch_size: cubes per batch (paper: 2048).
        cube_size: cube edge in LR voxels (paper default 1: the LR voxel's footprint), one value or one per
            axis (e.g. ``(ε, ε, 1)`` for thick slices whose in-plane voxels are point-like).
        padding: field padding ``P`` in LR voxels (Eq. 7).
        seed: base seed of the random stream.
    """

    def __init__(
        self,
        image: torch.Tensor,
        batch_size: int = 2048,
        cube_size: float | Sequence[float] = 1.0,
        padding: float | Sequence[float] = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_volume(image, "training image")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r} ({type(batch_size).__name__}).")
        try:
            cube = np.broadcast_to(np.asarray(cube_size, dtype=np.float64).reshape(-1), (3,))
        except (TypeError, ValueError):
            raise ValueError(f"cube_size must be one number or three (LR voxels), got {cube_size!r}.") from None
        if not np.all(np.isfinite(cube)) or np.any(cube <= 0):
            raise ValueError(f"cube_size must be positive (LR voxels), one value or one per axis, got {cube_size}.")
        self.geometry = geometry_of(image, padding)
        self.values = convert_to_tensor(image, track_meta=False, dtype=torch.float32).reshape(-1).contiguous()
        self.batch_size = int(batch_size)
        self.cube_size = tuple(float(v) for v in cube)
        self.seed = int(seed)
        self.half_extent = torch.as_tensor(self.geometry.field_per_voxel * cube / 2.0, dtype=torch.float32)
        shape = torch.tensor(self.geometry.shape)
        self._strides = torch.tensor([shape[1] * shape[2], shape[2], 1])
        self._dims = shape
        self._to_field = torch.as_tensor(self.geometry.affine_to_field(self.geometry.affine), dtype=torch.float32)
        self.generator: torch.Generator | None = None
        self._order: torch.Tensor | None = None  # the current pass's permutation of the voxels
        self._order_state: torch.Tensor | None = None  # the generator state it was drawn from (for checkpoints)
        self._cursor = 0

    def stream_seed(self) -> int:
        """Seed of this process's and worker's stream."""
        info = get_worker_info()
        return self.seed + 1000 * get_rank() + (info.id if info is not None else 0)

    def _next_voxels(self, generator: torch.Generator) -> torch.Tensor:
        """The next ``batch_size`` voxel indices ``(B,)`` of the pass stream (new passes drawn with ``generator``)."""
        n, parts, need = self.values.numel(), [], self.batch_size
        while need > 0:
            if self._order is None or self._cursor >= n:
                self._order_state = generator.get_state()
                self._order, self._cursor = torch.randperm(n, generator=generator), 0
            take = min(need, n - self._cursor)
            parts.append(self._order[self._cursor : self._cursor + take])
            self._cursor, need = self._cursor + take, need - take
        return torch.cat(parts)

    def sample(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One batch drawn with ``generator``."""
        flat = self._next_voxels(generator)
        index = ((flat.unsqueeze(-1) // self._strides) % self._dims).float()
        centre = index @ self._to_field[:3, :3].T + self._to_field[:3, 3]
        return {BatchKeys.CENTRE: centre, BatchKeys.TARGET: self.values[flat], BatchKeys.HALF_EXTENT: self.half_extent}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(self.stream_seed())
        while True:
            yield self.sample(self.generator)

    def state_dict(self) -> dict[str, Any]:
        """The random stream's state (and the place in the current pass), so a resumed run draws the batches it
        would have drawn."""
        return {
            "generator": None if self.generator is None else self.generator.get_state(),
            "order_state": self._order_state,
            "cursor": self._cursor,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (the current pass's permutation is drawn again from its saved state)."""
        if state.get("generator") is not None:
            self.generator = torch.Generator()
            self.generator.set_state(state["generator"])
        self._order, self._order_state, self._cursor = None, None, 0
        if state.get("order_state") is not None:
            replay = torch.Generator()
            replay.set_state(state["order_state"])
            self._order_state = state["order_state"]
            self._order = torch.randperm(self.values.numel(), generator=replay)
            self._cursor = int(state.get("cursor", 0))


class SlabDataset(Dataset):
    """Validation data: the central slab of an LR volume as one batch of targets (its own voxels).

    The single item has the keys of :class:`RandomCubeDataset` (``"centre" (M, 3)``, ``"target" (M,)``,
    ``"half_extent" (3,)``) with ``M = num_slices`` slices of voxels along ``axis``; rendering them and comparing
    with ``"target"`` measures how well the field reproduces its input.

    Args:
        image: channel-first normalised LR volume ``(1, X, Y, Z)``.
        num_slices: slab thickness in slices.
        axis: slab axis (0, 1, 2; default the last, axial for RAS volumes).
        padding: field padding ``P`` in LR voxels.
    """

    def __init__(
        self, image: torch.Tensor, num_slices: int = 1, axis: int = 2, padding: float | Sequence[float] = 1.0
    ) -> None:
        check_volume(image, "validation image")
        geometry = geometry_of(image, padding)
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis}.")
        n = geometry.shape[axis]
        num_slices = max(1, min(int(num_slices), n))
        start = (n - num_slices) // 2
        index = torch.as_tensor(geometry.voxel_field_grid(), dtype=torch.float32)
        values = convert_to_tensor(image, track_meta=False, dtype=torch.float32)[0]
        sl = [slice(None)] * 3
        sl[axis] = slice(start, start + num_slices)
        self.item = {
            BatchKeys.CENTRE: index[tuple(sl)].reshape(-1, 3).contiguous(),
            BatchKeys.TARGET: values[tuple(sl)].reshape(-1).contiguous(),
            BatchKeys.HALF_EXTENT: torch.as_tensor(geometry.field_per_voxel / 2.0, dtype=torch.float32),
        }

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if index != 0:
            raise IndexError(index)
        return self.item


class CubePrepareBatch(PrepareBatch):
    """Turn a :class:`RandomCubeDataset` batch into ``(centres, targets, args, kwargs)`` for the trainer.

    The engine then calls ``inferer(centres, network, half_extent=..., generator=...)`` and
    ``loss(pred, targets)``. The random samples inside the cubes are drawn from this object's own generator
    (seeded ``seed + 1000 · rank``, on the batch's device), which checkpoints save and restore, so a resumed
    run repeats exactly the samples of an uninterrupted one.

    Args:
        seed: base seed of the sample stream.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self.generator: torch.Generator | None = None
        self._pending_state: torch.Tensor | None = None

    def _generator(self, device: torch.device) -> torch.Generator:
        if self.generator is None or self.generator.device != device:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(self.seed + 1000 * get_rank())
            if self._pending_state is not None:
                self.generator.set_state(self._pending_state)
                self._pending_state = None
        return self.generator

    def __call__(
        self,
        batchdata: Mapping[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        centre = batchdata[BatchKeys.CENTRE].to(device=device, non_blocking=non_blocking)
        target = batchdata[BatchKeys.TARGET].to(device=device, non_blocking=non_blocking)
        half = batchdata[BatchKeys.HALF_EXTENT].to(device=device, non_blocking=non_blocking)
        return centre, target, (), {"half_extent": half, "generator": self._generator(centre.device)}

    def state_dict(self) -> dict[str, Any]:
        """The sample stream's state."""
        if self.generator is not None:
            return {"generator": self.generator.get_state()}
        return {"generator": self._pending_state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (applied when the generator is next used)."""
        self._pending_state = state.get("generator")
        self.generator = None
