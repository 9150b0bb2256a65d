"""Mixed precision for training: which autocast dtype a run uses, and TF32 matrix products on the GPU.

The training config's ``amp`` switch (``train.json``: ``"amp": true``, ``"amp_dtype": "bfloat16"`` or ``"float16"``)
evaluates the fields of the training forward pass under :func:`torch.autocast` on the run's device (bf16 works on
the CPU and on recent GPUs; fp16 on a GPU, where the trainer also scales the loss with a ``GradScaler``). The
rendering (weights, transmittance, loss) stays in float32: the field outputs are cast back before compositing,
since ``exp`` and cumulative sums of optical depths lose too much in 8 mantissa bits. With ``amp`` on a CUDA device
TF32 matrix products and convolutions are allowed as well. Test-time rendering keeps float32.
"""

from __future__ import annotations

import torch

from .enums import AmpDtype, check_option

__all__ = ["AMP_DTYPES", "autocast_dtype"]

AMP_DTYPES = {AmpDtype.BFLOAT16.value: torch.bfloat16, AmpDtype.FLOAT16.value: torch.float16}


def autocast_dtype(device: torch.device | str, amp: bool, dtype: str = "bfloat16") -> torch.dtype | None:
    """The autocast dtype of a training run on ``device`` (``None`` when ``amp`` is off).

    With ``amp`` on a CUDA device this also allows TF32 (``torch.backends.cuda.matmul.allow_tf32`` and
    ``torch.backends.cudnn.allow_tf32``).

    Args:
        device: the training device.
        amp: the config's ``amp`` switch.
        dtype: ``"bfloat16"`` or ``"float16"`` (fp16 only on a GPU: the CPU has no loss scaling here).

    Returns:
        ``torch.bfloat16``, ``torch.float16`` or ``None``.

    Examples::

        >>> autocast_dtype("cpu", False) is None, autocast_dtype("cpu", True)
        (True, torch.bfloat16)
    """
    if not amp:
        return None
    dtype = check_option(dtype, AmpDtype, "amp_dtype")
    device = torch.device(device)
    if dtype == AmpDtype.FLOAT16 and device.type != "cuda":
        raise ValueError("amp_dtype 'float16' needs a CUDA device (loss scaling); use 'bfloat16' on the CPU.")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return AMP_DTYPES[dtype]
