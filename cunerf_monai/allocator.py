"""Keep freed CPU memory in the process, so large training tensors are not page-faulted in again every step.

A training step of a coordinate MLP allocates activations of ``points × width`` floats (hundreds of MB) and frees
them at the end of the step. glibc serves blocks that large with ``mmap`` and returns them to the kernel on
``free``, so the next step touches every page again: page faults and zeroing take about a third of a CPU
training step (``benchmarks/side_by_side.py`` measures it). :func:`retain_freed_memory` tells glibc to serve
them from its heap and to keep freed memory there for reuse. The price is that the process's resident memory
stays at its peak until it exits, which is what a long fit needs anyway.

It changes nothing on other platforms or C libraries, and nothing for CUDA tensors (PyTorch caches GPU memory
itself).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

import torch

__all__ = ["retain_freed_memory"]

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_INT_MAX = 2**31 - 1
_state = {"applied": False}


def retain_freed_memory(device: torch.device | str | None = None, enabled: bool = True) -> bool:
    """Make glibc keep freed memory for reuse (no ``mmap`` for large blocks, no trimming of the heap's top).

    Args:
        device: the device the work runs on; only ``cpu`` (or ``None``) applies the setting.
        enabled: ``False`` does nothing (the configs' switch).

    Returns:
        whether the setting is in effect in this process (it is process-wide and applied once).

    Examples::

        >>> retain_freed_memory("cuda:0")  # GPU runs keep the default allocator behaviour
        False
    """
    if not enabled or (device is not None and torch.device(device).type != "cpu"):
        return _state["applied"]
    if _state["applied"] or not sys.platform.startswith("linux"):
        return _state["applied"]
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # musl and other C libraries: no mallopt
        logging.getLogger(__name__).debug("mallopt is not available in %s; allocator left as is.", name)
        return False
    ok = all(mallopt(p, v) == 1 for p, v in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX), (_M_TOP_PAD, 64 << 20)))
    _state["applied"] = ok
    return ok
