"""Rendering math as pure functions: isotropic volume rendering (Eq. 10–11) and NeRF ray compositing (Eq. 3–4).

Nothing here knows about networks or samplers: functions take densities ``σ``, distances and intensities and
return weights or rendered values. Shapes use ``B`` targets and ``N`` samples per target.

Bounding the weights. Eq. 11 puts a factor ``4π r²`` in front of every sample and nothing bounds ``Σ w``, so the
paper's rendered value can leave the intensity range (the reference code outputs above 1). Here the weights are,
by default, normalised to sum to one (``normalize=True``): the rendered value is a convex combination of the
sampled intensities, hence inside their range, and the density only decides *which* points of the cube count
(a learned, isotropic filter kernel over the cube). A small floor ``eps`` spread evenly over the samples keeps
the weights defined when every density is zero, where the render becomes the plain cube mean.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "deltas",
    "isotropic_weights",
    "uniform_weights",
    "ray_weights",
    "composite",
    "normalize_weights",
]


def deltas(r: torch.Tensor) -> torch.Tensor:
    """Gaps between consecutive sorted distances, ``δ_i = r_{i+1} − r_i``, the last one repeated.

    Args:
        r: sorted distances ``(B, N)``.

    Returns:
        ``(B, N)``, non-negative.

    Examples::

        >>> deltas(torch.tensor([[0.1, 0.3, 0.6]]))
        tensor([[0.2000, 0.3000, 0.3000]])
    """
    if r.shape[-1] == 1:
        return torch.ones_like(r)
    d = r[..., 1:] - r[..., :-1]
    return torch.cat([d, d[..., -1:]], dim=-1).clamp_min(0.0)


def normalize_weights(weights: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``(w_i + ε/N) / (Σ_j w_j + ε)``: weights ``(B, N)`` that sum to one, uniform when all ``w`` are zero."""
    n = weights.shape[-1]
    return (weights + eps / n) / (weights.sum(dim=-1, keepdim=True) + eps)


def isotropic_weights(
    sigma: torch.Tensor, r: torch.Tensor, normalize: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """Isotropic volume-rendering weights of samples sorted by distance from the cube centre (Eq. 10–11).

    .. math::

        a_i = 4\\pi r_i^2 \\sigma_i \\delta_i, \\qquad
        w_i = 4\\pi r_i^2 \\bigl(1 - e^{-\\sigma_i \\delta_i}\\bigr) \\exp\\Bigl(-\\sum_{j<i} a_j\\Bigr)

    The transmittance uses the exclusive sum (a sample does not shadow itself, as in NeRF and the reference
    code; the paper writes ``j ≤ i``). With ``normalize`` the weights are divided by their sum, see the module
    docstring.

    Args:
        sigma: non-negative densities ``(B, N)``.
        r: distances ``(B, N)`` sorted ascending (cube-local units).
        normalize: return weights that sum to one.
        eps: floor used by the normalisation.

    Returns:
        weights ``(B, N)``.

    Examples::

        >>> r = torch.tensor([[0.5, 1.0]]); s = torch.tensor([[1.0, 1.0]])
        >>> isotropic_weights(s, r, normalize=False)  # δ = (0.5, 0.5)
        tensor([[1.2361, 1.0279]])
    """
    d = deltas(r)
    shell = 4.0 * math.pi * r**2
    alpha = 1.0 - torch.exp(-sigma * d)
    depth = shell * sigma * d
    trans = torch.exp(-(torch.cumsum(depth, dim=-1) - depth))
    w = shell * alpha * trans
    return normalize_weights(w, eps) if normalize else w


def uniform_weights(r: torch.Tensor) -> torch.Tensor:
    """Equal weights ``1/N`` ``(B, N)``: the render is the plain cube mean (a box filter over the cube)."""
    return torch.full_like(r, 1.0 / r.shape[-1])


def ray_weights(sigma: torch.Tensor, t: torch.Tensor, normalize: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """NeRF alpha compositing along a ray (Eq. 3–4), for the ray baseline.

    .. math:: w_i = \\bigl(1 - e^{-\\sigma_i \\delta_i}\\bigr) \\exp\\Bigl(-\\sum_{j<i} \\sigma_j \\delta_j\\Bigr)

    Args:
        sigma: non-negative densities ``(B, N)``.
        t: depths ``(B, N)`` sorted ascending.
        normalize: divide by the weights' sum.
        eps: floor used by the normalisation.

    Returns:
        weights ``(B, N)`` with ``Σ w ≤ 1``.
    """
    d = deltas(t)
    depth = sigma * d
    trans = torch.exp(-(torch.cumsum(depth, dim=-1) - depth))
    w = (1.0 - torch.exp(-depth)) * trans
    return normalize_weights(w, eps) if normalize else w


def composite(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Rendered value ``Ĉ = Σ_i w_i c_i``: weights ``(B, N)``, values ``(B, N)`` → ``(B,)``."""
    return (weights * values).sum(dim=-1)
