"""The shared cubic B-spline kernel: the merged fetches reproduce the four-tap B-spline sum."""

from __future__ import annotations

import torch

from cunerf_monai.networks.bspline import bspline_fetches


def _beta3(x: torch.Tensor) -> torch.Tensor:
    a = x.abs()
    return torch.where(a < 1, (4 - 6 * a**2 + 3 * a**3) / 6, torch.where(a < 2, (2 - a) ** 3 / 6, torch.zeros_like(a)))


def test_two_linear_fetches_equal_the_four_tap_sum():
    gen = torch.Generator().manual_seed(0)
    c = torch.rand(12, generator=gen, dtype=torch.float64)
    u = torch.rand(200, generator=gen, dtype=torch.float64) * 6 + 3  # away from the ends (no clamping needed)
    k = torch.arange(12, dtype=torch.float64)
    direct = (c * _beta3(u[:, None] - k)).sum(-1)

    def lerp(h):
        i = h.floor().long()
        t = h - i
        return c[i] * (1 - t) + c[i + 1] * t

    g0, g1, h0, h1 = bspline_fetches(u)
    torch.testing.assert_close(g0 + g1, torch.ones_like(u))
    torch.testing.assert_close(g0 * lerp(h0) + g1 * lerp(h1), direct)
