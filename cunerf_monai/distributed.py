"""Helpers for training one volume on several GPUs/processes (``bundle/configs/multi_gpu_train.json``).

The overlay wraps the model in :class:`torch.nn.parallel.DistributedDataParallel` (DDP). What DDP alone does
not cover is collected here:

* :class:`PerRankState`: the random streams (data, cube samples, global RNGs) differ per rank; a checkpoint
  written by rank 0 holds every rank's stream, and each rank gets its own back on resume (which
  :func:`cunerf_monai.checkpoints.resume_training` does on every rank from rank 0's ``last.pt``).
* :func:`rank0_logging`, :func:`quiet_other_ranks`: ranks other than 0 drop the logging handlers
  (``StatsHandler``, progress bar) and log warnings and errors only.

Why the model goes through ``DDP.forward``: DDP all-reduces the gradients of the parameters used in its own
``forward`` (its autograd hooks are armed there). :class:`~cunerf_monai.inferers.CuNeRFInferer` therefore calls a
wrapped model as ``network(points, field="coarse"|"fine", channel_dim=-1)`` — two forward calls before one
backward. That works with ``find_unused_parameters=False`` for a shared field (``fine: null``) and for separate
coarse/fine fields; with separate fields ``find_unused_parameters=True`` fails ("Expected to mark a variable
ready only once": the second forward's graph search does not see the coarse field and marks it unused), so the
overlay turns it on only when the fine field is never called (``num_fine == 0``). Rendering (validation,
pictures, inference) unwraps the model: no collective runs there, so any subset of ranks may render.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import ignite.distributed as idist
import torch
import torch.distributed as dist

__all__ = [
    "is_distributed",
    "get_rank",
    "get_world_size",
    "launcher_ranks",
    "local_rank",
    "local_device",
    "default_backend",
    "PerRankState",
    "rank0_logging",
    "quiet_other_ranks",
]

logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's global rank (0 without a process group): Ignite's ``idist.get_rank``, the one rank check of
    the package (handlers, checkpoints and the datasets' random streams use it)."""
    return idist.get_rank()


def get_world_size() -> int:
    """Number of processes in the group (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def launcher_ranks() -> tuple[int, int, int]:
    """``(rank, world size, local rank)`` that ``torchrun`` gave this process, from its environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``; ``0, 1, 0`` without it): known before any process group exists (the
    many-volume job shares its volumes by them and forms a group only for its final gather)."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK`` set by ``torchrun``; 0 otherwise)."""
    return launcher_ranks()[2]


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    return torch.device(f"cuda:{local_rank()}") if torch.cuda.is_available() else torch.device("cpu")


def default_backend() -> str:
    """``nccl`` for GPUs, ``gloo`` for CPU processes."""
    return "nccl" if torch.cuda.is_available() else "gloo"


class PerRankState:
    """Checkpoint every rank's state of an object whose state differs per rank (a random stream).

    ``state_dict()`` is a collective (``all_gather_object``): Ignite's ``Checkpoint`` calls it on every rank (and
    writes on rank 0 only), so rank 0's file holds ``{"per_rank": [state of rank 0, state of rank 1, …]}``.
    ``load_state_dict`` gives each rank its own entry. A checkpoint of a single-process run (a plain state) is
    loaded by rank 0 only; when the world size changed, ranks beyond the saved ones keep their fresh stream.

    Args:
        obj: an object with ``state_dict``/``load_state_dict`` (dataset, prepare-batch, RNG states).
    """

    def __init__(self, obj: Any) -> None:
        if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
            raise TypeError(f"{type(obj).__name__} has no state_dict/load_state_dict.")
        self.obj = obj

    def state_dict(self) -> dict[str, Any]:
        state = self.obj.state_dict()
        if not is_distributed():
            return {"per_rank": [state]}
        states: list[Any] = [None] * get_world_size()
        dist.all_gather_object(states, state)
        return {"per_rank": states}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        rank = get_rank()
        if "per_rank" not in state:  # a single-process checkpoint: its stream belongs to rank 0
            if rank == 0:
                self.obj.load_state_dict(state)
            return
        states = list(state["per_rank"])
        if len(states) != get_world_size():
            logger.warning(
                f"checkpoint holds the random streams of {len(states)} rank(s), this run has {get_world_size()}: "
                "ranks without a saved stream start fresh ones (the run does not replay exactly)."
            )
        if rank < len(states) and states[rank] is not None:
            self.obj.load_state_dict(states[rank])


def rank0_logging(handlers: Sequence[Any] | None) -> list[Any] | None:
    """The handler list without logging handlers (MONAI ``StatsHandler``, Ignite ``ProgressBar``) on ranks > 0."""
    if handlers is None or get_rank() == 0:
        return None if handlers is None else list(handlers)
    from ignite.handlers import ProgressBar
    from monai.handlers import StatsHandler

    return [h for h in handlers if not isinstance(h, (StatsHandler, ProgressBar))]


def quiet_other_ranks(level: int = logging.WARNING) -> None:
    """On ranks > 0, raise the root logger's level (default: warnings and errors only); rank 0 logs as set up."""
    if get_rank() > 0:
        logging.getLogger().setLevel(level)
        for name in ("ignite", "monai"):  # engines and handlers log through their own named loggers
            logging.getLogger(name).setLevel(level)
