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
    "two_way_ray_weights",
    "shell_index",
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


def shell_index(r: torch.Tensor) -> torch.Tensor:
    """Shell of every sample: samples with equal sorted distances share one shell, numbered from 0 outwards.

    Args:
        r: sorted distances ``(B, N)``.

    Returns:
        ``(B, N)`` int64, non-decreasing along the last axis; row ``b`` has ``index[b, -1] + 1`` shells.

    Examples::

        >>> shell_index(torch.tensor([[0.2, 0.5, 0.5, 0.9]]))
        tensor([[0, 1, 1, 2]])
    """
    new = torch.ones_like(r, dtype=torch.long)
    new[..., 1:] = (r[..., 1:] > r[..., :-1]).long()
    return new.cumsum(dim=-1) - 1


def _shell_weights(sigma: torch.Tensor, r: torch.Tensor, area: bool) -> torch.Tensor:
    """Composite by shells (groups of equal distance) and split each shell's weight equally among its samples.

    A shell ``s`` of ``m_s`` samples at distance ``R_s`` has the mean density ``σ̄_s`` of its samples and the gap
    ``Δ_s = R_{s+1} − R_s`` to the next shell (the last gap repeated; ``1`` for a single shell). With
    ``A_s = 4π R_s²`` (``area``) or ``1`` (alpha compositing):

    .. math::

        W_s = A_s \\bigl(1 - e^{-\\bar\\sigma_s \\Delta_s}\\bigr)
              \\exp\\Bigl(-\\sum_{t<s} A_t \\bar\\sigma_t \\Delta_t\\Bigr), \\qquad w_i = W_{s(i)} / m_{s(i)}

    With distinct distances every shell holds one sample and this is the per-sample formula.

    Args:
        sigma: densities ``(B, N)``.
        r: sorted distances ``(B, N)``.
        area: multiply by the shell area ``4π R²`` (isotropic rendering) or not (ray compositing).

    Returns:
        weights ``(B, N)``.
    """
    n = r.shape[-1]
    idx = shell_index(r)
    zeros = torch.zeros_like(r)
    count = zeros.scatter_add(-1, idx, torch.ones_like(r))  # m_s, 0 for unused trailing shells
    mean_sigma = zeros.scatter_add(-1, idx, sigma) / count.clamp_min(1.0)
    radius = zeros.scatter(-1, idx, r)  # R_s (every sample of a shell writes the same value)
    shells = idx[..., -1:] + 1  # (B, 1)
    lo = torch.minimum(torch.arange(n, device=r.device).expand_as(idx), shells - 2).clamp(0, max(n - 2, 0))
    gap = (radius.gather(-1, (lo + 1).clamp_max(n - 1)) - radius.gather(-1, lo)).clamp_min(0.0)
    gap = torch.where(shells == 1, torch.ones_like(gap), gap)
    factor = 4.0 * math.pi * radius**2 if area else torch.ones_like(radius)
    depth = factor * mean_sigma * gap
    trans = torch.exp(-(torch.cumsum(depth, dim=-1) - depth))
    shell_w = factor * (1.0 - torch.exp(-mean_sigma * gap)) * trans / count.clamp_min(1.0)
    return shell_w.gather(-1, idx)


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
    code; the paper writes ``j ≤ i``). Eq. 10–11 integrate over spheres, so samples at the *same* distance are one
    sphere: they are composited as one shell (mean density, the gap to the next distinct distance) whose weight
    is split equally among them (see :func:`_shell_weights`); with ``δ_i = r_{i+1} − r_i`` per sample, one of two
    samples at one radius would get ``δ = 0`` and no weight, and a point-symmetric sample set would render
    off-centre. With ``normalize`` the weights are divided by their sum, see the module docstring.

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
        >>> isotropic_weights(torch.ones(1, 3), torch.tensor([[0.5, 1.0, 1.0]]), normalize=False)  # one shell of 2
        tensor([[1.2361, 0.5139, 0.5139]])
    """
    w = _shell_weights(sigma, r, area=True)
    return normalize_weights(w, eps) if normalize else w


def uniform_weights(r: torch.Tensor) -> torch.Tensor:
    """Equal weights ``1/N`` ``(B, N)``: the render is the plain cube mean (a box filter over the cube)."""
    return torch.full_like(r, 1.0 / r.shape[-1])


def ray_weights(sigma: torch.Tensor, t: torch.Tensor, normalize: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """NeRF alpha compositing along a ray (Eq. 3–4), for the ray baseline.

    .. math:: w_i = \\bigl(1 - e^{-\\sigma_i \\delta_i}\\bigr) \\exp\\Bigl(-\\sum_{j<i} \\sigma_j \\delta_j\\Bigr)

    Samples at equal depths (for cube samples composited in order of distance: a point and its mirror image) are
    one shell with a shared weight, as in :func:`isotropic_weights`.

    Args:
        sigma: non-negative densities ``(B, N)``.
        t: depths ``(B, N)`` sorted ascending.
        normalize: divide by the weights' sum.
        eps: floor used by the normalisation.

    Returns:
        weights ``(B, N)`` with ``Σ w ≤ 1``.
    """
    w = _shell_weights(sigma, t, area=False)
    return normalize_weights(w, eps) if normalize else w


def two_way_ray_weights(
    sigma: torch.Tensor, t: torch.Tensor, normalize: bool = False, eps: float = 1e-6
) -> torch.Tensor:
    """Alpha compositing along a ray from both ends, averaged: the deterministic (test-time) ray render.

    .. math:: w_i = \\tfrac12 \\bigl(w^{\\rightarrow}_i + w^{\\leftarrow}_i\\bigr)

    where ``w^→`` composites from the smallest depth and ``w^←`` from the largest (:func:`ray_weights` of the
    reversed samples). Training draws ray directions uniformly on the sphere, so a ray and its reverse are equally
    likely and the rendered value is symmetric about the target on average; a single fixed direction at test time
    would weight the near half of the ray and shift the render. Both passes reuse the same field evaluations.

    Args:
        sigma: non-negative densities ``(B, N)``.
        t: depths ``(B, N)`` sorted ascending.
        normalize: divide each direction's weights by their sum before averaging.
        eps: floor used by the normalisation.

    Returns:
        weights ``(B, N)``; a density symmetric about the ray's midpoint gives symmetric weights.

    Examples::

        >>> w = two_way_ray_weights(torch.ones(1, 4), torch.tensor([[0.0, 1.0, 2.0, 3.0]]))
        >>> torch.allclose(w, w.flip(-1))
        True
    """
    forward = ray_weights(sigma, t, normalize, eps)
    backward = ray_weights(sigma.flip(-1), -t.flip(-1), normalize, eps).flip(-1)
    return 0.5 * (forward + backward)


def composite(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Rendered value ``Ĉ = Σ_i w_i c_i``: weights ``(B, N)``, values ``(B, N)`` → ``(B,)``."""
    return (weights * values).sum(dim=-1)
