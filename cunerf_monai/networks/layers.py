"""A linear layer with its ReLU fused into the matrix product on the CPU.

:class:`LinearReLU` is ``relu(linear(x))`` with the state dict of :class:`torch.nn.Linear`. On a CPU with
oneDNN (float32, not tracing) the forward pass is one oneDNN matrix product with the ReLU applied as it writes
its output, and the backward pass masks the incoming gradient once and skips the input gradient when the input
needs none (the first layer of a field). That saves a full read and write of every ``points × width``
activation per layer and per pass; elsewhere (GPU, other dtypes, CPU autocast, oneDNN disabled, tracing,
``torch.compile``/export) it is plain ``F.linear`` + ReLU. ``torch.func`` transforms are not supported on the
fused path.
Both paths give the same values and gradients (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LinearReLU", "fused_linear_relu_available"]


def fused_linear_relu_available(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :class:`LinearReLU` can use the fused oneDNN path for this input and weight."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and not torch.is_autocast_enabled("cpu")
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
        and not torch.compiler.is_compiling()
    )


class _FusedLinearReLU(torch.autograd.Function):
    """``relu(x @ w.T + b)`` for 2-D ``x`` ``(N, C_in)``, ``w`` ``(C_out, C_in)``, ``b`` ``(C_out,)``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        y = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "relu", [], "")
        ctx.save_for_backward(x, weight, y)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, weight, y = ctx.saved_tensors
        g = torch.ops.aten.threshold_backward(grad, y, 0)
        gx = g.mm(weight) if ctx.needs_input_grad[0] else None
        gw = g.t().mm(x) if ctx.needs_input_grad[1] else None
        gb = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


class LinearReLU(nn.Linear):
    """``relu(linear(x))``: ``(..., in_features) → (..., out_features)``, fused on the CPU (see the module).

    Examples::

        >>> layer = LinearReLU(4, 3)
        >>> x = torch.randn(5, 4)
        >>> torch.allclose(layer(x), torch.relu(torch.nn.functional.linear(x, layer.weight, layer.bias)), atol=1e-6)
        True
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not fused_linear_relu_available(x, self.weight):
            return torch.relu(F.linear(x, self.weight, self.bias))
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1]).contiguous()
        return _FusedLinearReLU.apply(flat, self.weight, self.bias).reshape(*lead, self.out_features)
