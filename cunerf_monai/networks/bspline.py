"""The cubic B-spline kernel shared by the grid field (:mod:`~cunerf_monai.networks.splinegrid`) and the B-spline
prior (:mod:`~cunerf_monai.networks.prior`): the "eight trilinear fetches" factorisation, in which each axis' four
B-spline taps are merged into two linear fetches, so the interpolant runs through
``torch.nn.functional.grid_sample`` (or any linear interpolation) on any device and is differentiable."""

from __future__ import annotations

import torch

__all__ = ["bspline_fetches"]


def bspline_fetches(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-axis merged taps of the cubic B-spline at continuous indices ``u``: weights ``g0, g1`` and fetch
    positions ``h0, h1`` such that ``Σ_k c_k β³(u − k) = g0 · lerp(c, h0) + g1 · lerp(c, h1)``.

    Examples::

        >>> g0, g1, h0, h1 = bspline_fetches(torch.tensor([2.0]))  # on a sample: weights 1/6, 4/6, 1/6
        >>> [round(float(v), 6) for v in (g0, g1, h0, h1)]  # fetches between samples 1 and 2, and at 3
        [0.833333, 0.166667, 1.8, 3.0]
    """
    i = torch.floor(u)
    t = u - i
    t2, t3 = t * t, t * t * t
    w0 = (1.0 - t) ** 3 / 6.0
    w1 = (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0
    w2 = (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0
    w3 = t3 / 6.0
    g0, g1 = w0 + w1, w2 + w3
    h0 = i - 1.0 + w1 / g0
    h1 = i + 1.0 + w3 / g1
    return g0, g1, h0, h1
