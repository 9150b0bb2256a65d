"""Keep freed CPU memory in the process, so large training tensors are not page-faulted in again every step.

A training step of a coordinate MLP allocates activations of ``points × width`` floats (hundreds of MB) and frees
them at the end of the step. glibc serves blocks that large with ``mmap`` and returns them to the kernel on
``free``, so the next step touches every page again: on the authors' training step this setting alone saves a
fifth of the time (``benchmarks/side_by_side.py``). :func:`retain_freed_memory` tells glibc to serve
them from its heap and to keep freed memory there for reuse. The price is memory: the process's resident memory
stays at its peak until it exits, and that peak is higher (heap fragmentation; +56 % for the authors' step in
``benchmarks/side_by_side.py``). Only the main thread's allocations are covered (glibc still maps very large blocks
of other threads), which is where PyTorch's CPU training allocates. With another allocator preloaded (tcmalloc,
jemalloc) ``mallopt`` may do nothing.

It changes nothing on other platforms or C libraries, and nothing for CUDA tensors (PyTorch caches GPU memory
itself).
"""

from __future__ import annotations

import ctypes
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
    libc = ctypes.CDLL(None)  # the C library this process runs on
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):  # musl etc.: not glibc
        logging.getLogger(__name__).debug("not glibc: the allocator is left as is.")
        return False
    mallopt = libc.mallopt
    ok = all(mallopt(p, v) == 1 for p, v in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX), (_M_TOP_PAD, 64 << 20)))
    _state["applied"] = ok
    return ok
