"""Where to evaluate the field: cube samples (Eq. 8), radius-PDF resampling (Eq. 12) and sphere directions (Eq. 15).

All samples are produced in *cube-local* coordinates: the cube around a target is ``[-1, 1]^3`` whatever its size
in voxels or mm; the inferer scales local offsets by the cube's half-extent and adds the target centre. The
distance ``r`` of the isotropic renderer is measured in these units (the reference code's ``ρ = r / r̂`` up to
a constant), so ``r ∈ [0, √3]`` for the ℓ2 norm and ``r ∈ [0, 1]`` for ℓ∞.

Fixes of the reference code: samples are uniform in the cube (no corner bias), directions are uniform on the
sphere (not in θ), the hierarchical bins are monotone edges between sorted radii, and the test-time pass is
deterministic and centred: its cube points and fine directions are point-symmetric sets (every sample has its
mirror image about the target), so a render is not shifted off the target.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .enums import CubeSampling, Norm, Profile, check_option

__all__ = [
    "uniform_cube_offsets",
    "stratified_cube_offsets",
    "grid_cube_offsets",
    "profile_ticks",
    "qmc_cube_offsets",
    "cube_offsets",
    "distance",
    "max_distance",
    "uniform_sphere_directions",
    "fibonacci_sphere_directions",
    "antipodal_sphere_directions",
    "directions",
    "radius_bin_edges",
    "shell_bins",
    "sample_pdf",
    "ray_offsets",
]

def uniform_cube_offsets(
    batch: int, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Independent uniform points in ``[-1, 1]^3``, shape ``(batch, n, 3)``."""
    return torch.rand(batch, n, 3, generator=generator, device=device) * 2.0 - 1.0


def stratified_cube_offsets(
    batch: int, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Latin-hypercube jittered points in ``[-1, 1]^3``, shape ``(batch, n, 3)``.

    Each axis is cut into ``n`` strata holding exactly one point each (strata shuffled independently per axis
    and per target), so every point is still uniform in the cube while the set covers it more evenly.
    """
    jitter = torch.rand(batch, n, 3, generator=generator, device=device)
    keys = torch.rand(batch, 3, n, generator=generator, device=device)
    strata = keys.argsort(dim=-1).transpose(1, 2).to(jitter.dtype)  # (batch, n, 3) a permutation per axis
    return (strata + jitter) / n * 2.0 - 1.0


_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def profile_ticks(profile: str, k: int) -> torch.Tensor:
    """``k`` equal-weight sample positions ``(k,)`` across a footprint, in units of its half-width.

    ``"box"``: the midpoints ``(j + ½)/k · 2 − 1`` (the midpoint rule over ``[−1, 1]``). ``"gaussian"``: the
    ``(j + ½)/k`` quantiles of a Gaussian whose FWHM spans ``[−1, 1]`` (equal weights then integrate the Gaussian
    profile). One tick is the centre for either; ``"point"`` has that one tick only.

    Examples::

        >>> profile_ticks("box", 2)
        tensor([-0.5000,  0.5000])
    """
    if k < 1:
        raise ValueError(f"A footprint needs at least one sample, got {k}.")
    profile = check_option(profile, Profile, "grid profile")
    u = (torch.arange(k, dtype=torch.float64) + 0.5) / k
    if profile == Profile.POINT:
        if k != 1:
            raise ValueError(f"A point footprint has one sample, got {k}.")
        ticks = torch.zeros(1, dtype=torch.float64)
    elif profile == Profile.BOX:
        ticks = u * 2.0 - 1.0
    else:
        ticks = math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0) * (2.0 / _FWHM_PER_SIGMA)
    return ticks.to(torch.float32)


def grid_cube_offsets(
    n: int,
    device: torch.device | str | None = None,
    counts: tuple[int, int, int] | None = None,
    profiles: Sequence[str] | None = None,
) -> torch.Tensor:
    """Deterministic midpoint samples: centres of a sub-grid of the cube, ``(n, 3)``.

    Without ``counts`` the sub-grid is ``k×k×k`` with ``k = round(n^(1/3))`` (``n`` must be a perfect cube: 1, 8,
    27, 64 …). With ``counts = (k0, k1, k2)`` (``n = k0·k1·k2``) it has ``k_a`` ticks along axis ``a``; an axis with
    one tick is sampled at the centre only (a point along that axis), e.g. ``(2, 2, 1)`` for a voxel averaged over
    a ×2 footprint in-plane and a point through-plane. ``profiles`` (one per axis, default ``"box"``) places the
    ticks of an axis by :func:`profile_ticks`: midpoints of a box, or quantiles of a Gaussian slice profile.
    """
    if counts is None:
        k = int(round(n ** (1.0 / 3.0)))
        if k**3 != n:
            raise ValueError(
                f"A deterministic cube grid needs a perfect cube number of points (1, 8, 27, 64 …), got {n}."
            )
        counts = (k, k, k)
    counts = tuple(int(c) for c in counts)
    if len(counts) != 3 or min(counts) < 1 or math.prod(counts) != n:
        raise ValueError(f"Grid counts per axis must be three positive integers with product {n}, got {counts}.")
    profiles = tuple(profiles) if profiles is not None else (Profile.BOX,) * 3
    if len(profiles) != 3:
        raise ValueError(f"Grid profiles must be one per axis, got {profiles}.")
    ticks = [profile_ticks(p, k).to(device) for p, k in zip(profiles, counts)]
    grid = torch.stack(torch.meshgrid(*ticks, indexing="ij"), dim=-1)
    return grid.reshape(-1, 3)


def qmc_cube_offsets(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Deterministic, point-symmetric low-discrepancy points in ``[-1, 1]^3`` for any ``n``, ``(n, 3)``.

    ``m = ⌊n/2⌋`` points of Roberts' R3 sequence, ``p_k = 2·frac(0.5 + k·α) − 1``, ``k = 1 … m``, with
    ``α = (1/g, 1/g², 1/g³)`` and ``g`` the positive root of ``g⁴ = g + 1``, each followed by its mirror image
    ``−p_k``; an odd ``n`` starts with the cube centre. The set is symmetric about the centre (its mean is exactly
    0, so with weights that depend only on the distance a linear field renders to its centre value). A point and
    its mirror share a distance; the renderer composites them as one shell
    (:func:`cunerf_monai.rendering.isotropic_weights`). ``n = 1`` gives the cube centre (a point query).

    Examples::

        >>> pts = qmc_cube_offsets(5)
        >>> pts.shape, bool((pts[1::2] == -pts[2::2]).all()), pts[0].tolist()
        (torch.Size([5, 3]), True, [0.0, 0.0, 0.0])
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}.")
    g = 1.2207440846057596
    alpha = torch.tensor([1.0 / g, 1.0 / g**2, 1.0 / g**3], dtype=torch.float64)
    k = torch.arange(1, n // 2 + 1, dtype=torch.float64).unsqueeze(-1)
    half = torch.frac(0.5 + k * alpha) * 2.0 - 1.0
    pts = torch.stack([half, -half], dim=1).reshape(-1, 3)
    if n % 2:
        pts = torch.cat([torch.zeros(1, 3, dtype=torch.float64), pts])
    return pts.to(dtype=torch.float32, device=device)


def cube_offsets(
    batch: int,
    n: int,
    mode: str = CubeSampling.STRATIFIED,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    grid_counts: tuple[int, int, int] | None = None,
    grid_profiles: Sequence[str] | None = None,
) -> torch.Tensor:
    """Cube samples ``(batch, n, 3)`` by ``mode``: random ``"uniform"`` or ``"stratified"``, or the deterministic
    ``"qmc"`` (any ``n``) or ``"grid"`` (``n`` a perfect cube, or ``grid_counts`` per axis with product ``n``; ticks
    per axis by ``grid_profiles``, see :func:`grid_cube_offsets`)."""
    mode = check_option(mode, CubeSampling, "cube sampling mode")
    if mode == CubeSampling.UNIFORM:
        return uniform_cube_offsets(batch, n, generator, device)
    if mode == CubeSampling.STRATIFIED:
        return stratified_cube_offsets(batch, n, generator, device)
    if mode == CubeSampling.GRID:
        return grid_cube_offsets(n, device, grid_counts, grid_profiles).unsqueeze(0).expand(batch, n, 3)
    return qmc_cube_offsets(n, device).unsqueeze(0).expand(batch, n, 3)


def distance(offsets: torch.Tensor, norm: str = Norm.L2) -> torch.Tensor:
    """Distance of local offsets ``(..., 3)`` from the cube centre, ``(...)``: ℓ2 or ℓ∞ (Table 4)."""
    if check_option(norm, Norm, "norm") == Norm.L2:
        return offsets.norm(dim=-1)
    return offsets.abs().amax(dim=-1)


def max_distance(norm: str = Norm.L2) -> float:
    """Largest distance a point of the cube ``[-1, 1]^3`` can have: ``√3`` (ℓ2) or ``1`` (ℓ∞)."""
    return math.sqrt(3.0) if check_option(norm, Norm, "norm") == Norm.L2 else 1.0


def uniform_sphere_directions(
    batch: int, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Unit vectors uniform on the sphere (Eq. 15 with ``cos φ`` uniform), shape ``(batch, n, 3)``.

    ``φ = arccos(1 − 2u)`` and ``θ = 2πv`` with ``u, v ~ U(0, 1)``; sampling ``φ`` uniformly instead would
    crowd the poles (a defect of the reference code).
    """
    u = torch.rand(batch, n, generator=generator, device=device)
    v = torch.rand(batch, n, generator=generator, device=device)
    cos_phi = 1.0 - 2.0 * u
    sin_phi = (1.0 - cos_phi**2).clamp_min(0.0).sqrt()
    theta = 2.0 * math.pi * v
    return torch.stack([sin_phi * torch.cos(theta), sin_phi * torch.sin(theta), cos_phi], dim=-1)


def fibonacci_sphere_directions(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Deterministic, nearly even unit vectors (Fibonacci lattice), shape ``(n, 3)``."""
    i = torch.arange(n, dtype=torch.float32, device=device) + 0.5
    cos_phi = 1.0 - 2.0 * i / n
    sin_phi = (1.0 - cos_phi**2).clamp_min(0.0).sqrt()
    theta = math.pi * (1.0 + math.sqrt(5.0)) * i
    return torch.stack([sin_phi * torch.cos(theta), sin_phi * torch.sin(theta), cos_phi], dim=-1)


def antipodal_sphere_directions(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Deterministic, nearly even unit vectors in antipodal pairs, shape ``(n, 3)``.

    ``m = ⌊n/2⌋`` directions of a Fibonacci lattice on the upper hemisphere (``cos φ_k = 1 − (k + ½)/m``,
    ``θ_k = π(1 + √5)k``), each followed by its opposite ``−d_k``, so the set is symmetric about the centre and
    covers the whole sphere evenly. An odd ``n`` starts with ``+z``, the one unpaired direction (the renderer puts
    it at radius 0, the centre).

    Examples::

        >>> d = antipodal_sphere_directions(6)
        >>> bool((d[0::2] == -d[1::2]).all()), bool(torch.allclose(d.sum(0), torch.zeros(3)))
        (True, True)
    """
    m = n // 2
    i = torch.arange(m, dtype=torch.float32, device=device) + 0.5
    cos_phi = 1.0 - i / max(m, 1)
    sin_phi = (1.0 - cos_phi**2).clamp_min(0.0).sqrt()
    theta = math.pi * (1.0 + math.sqrt(5.0)) * (i - 0.5)
    half = torch.stack([sin_phi * torch.cos(theta), sin_phi * torch.sin(theta), cos_phi], dim=-1)
    d = torch.stack([half, -half], dim=1).reshape(-1, 3)
    if n % 2:
        d = torch.cat([torch.tensor([[0.0, 0.0, 1.0]], device=device), d])
    return d


def directions(
    batch: int,
    n: int,
    norm: str = Norm.L2,
    deterministic: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Directions ``(batch, n, 3)`` of unit ``norm``: a point ``r · d`` then has distance exactly ``r``.

    For ℓ2 the directions are uniform on the sphere; for ℓ∞ they are projected onto the cube's surface
    (``d / ‖d‖_∞``). ``deterministic`` uses antipodal pairs of a Fibonacci lattice (the same for every target,
    :func:`antipodal_sphere_directions`).
    """
    norm = check_option(norm, Norm, "norm")
    if deterministic:
        d = antipodal_sphere_directions(n, device).unsqueeze(0).expand(batch, n, 3)
    else:
        d = uniform_sphere_directions(batch, n, generator, device)
    if norm == Norm.LINF:
        d = d / d.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12)
    return d


def radius_bin_edges(radii: torch.Tensor, r_max: float) -> torch.Tensor:
    """Monotone bin edges around sorted radii ``(B, N)`` → ``(B, N + 1)``.

    Edges are ``0``, the midpoints between consecutive radii, and ``r_max``; bin ``i`` holds radius ``i``.
    """
    mids = 0.5 * (radii[..., 1:] + radii[..., :-1])
    zeros = torch.zeros_like(radii[..., :1])
    top = torch.full_like(radii[..., :1], float(r_max))
    return torch.cat([zeros, mids, torch.maximum(top, radii[..., -1:])], dim=-1)


def shell_bins(radii: torch.Tensor, weights: torch.Tensor, r_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Bins of :func:`radius_bin_edges` over *distinct* sorted radii, with the weights of equal radii summed.

    Samples at one radius (a point and its mirror image) are one shell: their bin is the shell's, between the
    midpoints to the neighbouring shells, and holds their summed weight. Unused trailing bins (a row with fewer
    distinct radii than samples) are empty and sit at ``r_max``. Without ties this is
    ``(radius_bin_edges(radii, r_max), weights)``.

    Args:
        radii: sorted radii ``(B, N)``.
        weights: non-negative weights ``(B, N)`` of the samples.
        r_max: outer edge.

    Returns:
        ``(edges (B, N + 1), bin weights (B, N))``.

    Examples::

        >>> edges, w = shell_bins(torch.tensor([[0.2, 0.5, 0.5, 0.9]]), torch.tensor([[1.0, 2.0, 3.0, 4.0]]), 1.0)
        >>> edges, w
        (tensor([[0.0000, 0.3500, 0.7000, 1.0000, 1.0000]]), tensor([[1., 5., 4., 0.]]))
    """
    new = torch.ones_like(radii, dtype=torch.long)
    new[..., 1:] = (radii[..., 1:] > radii[..., :-1]).long()
    idx = new.cumsum(dim=-1) - 1
    shells = idx[..., -1:] + 1
    used = torch.arange(radii.shape[-1], device=radii.device).expand_as(idx) < shells
    top = max(float(r_max), float(radii.max())) if radii.numel() else float(r_max)
    shell_r = torch.full_like(radii, top).scatter(-1, idx, radii)
    shell_w = torch.zeros_like(weights).scatter_add(-1, idx, weights)
    edges = radius_bin_edges(shell_r, r_max)
    beyond = torch.arange(edges.shape[-1], device=radii.device).expand_as(edges) >= shells  # the last shell ends at top
    edges = torch.where(beyond, torch.full_like(edges, top), edges)
    return edges, torch.where(used, shell_w, torch.zeros_like(shell_w))


def sample_pdf(
    edges: torch.Tensor,
    weights: torch.Tensor,
    n: int,
    deterministic: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Inverse-transform sampling of a piecewise-constant PDF (Eq. 12).

    Args:
        edges: bin edges ``(B, N + 1)``, non-decreasing.
        weights: non-negative bin weights ``(B, N)`` (need not sum to 1; a small floor keeps empty PDFs valid).
        n: samples per row.
        deterministic: use the midpoints ``u = (k + 0.5) / n`` instead of uniform random ``u``.
        generator: random stream.

    Returns:
        samples ``(B, n)`` in ``[edges[:, 0], edges[:, -1]]``, sorted ascending.
    """
    w = weights.detach() + 1e-5
    pdf = w / w.sum(dim=-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[..., :1]), pdf.cumsum(dim=-1)], dim=-1)
    cdf[..., -1] = 1.0
    batch = weights.shape[0]
    if deterministic:
        u = (torch.arange(n, dtype=pdf.dtype, device=pdf.device) + 0.5) / n
        u = u.expand(batch, n).contiguous()
    else:
        u = torch.rand(batch, n, generator=generator, device=pdf.device, dtype=pdf.dtype).sort(dim=-1).values
    idx = torch.searchsorted(cdf, u, right=True).clamp(1, cdf.shape[-1] - 1)
    lo, hi = idx - 1, idx
    cdf_lo, cdf_hi = cdf.gather(-1, lo), cdf.gather(-1, hi)
    e_lo, e_hi = edges.gather(-1, lo), edges.gather(-1, hi)
    denom = (cdf_hi - cdf_lo).clamp_min(1e-12)
    t = ((u - cdf_lo) / denom).clamp(0.0, 1.0)
    return e_lo + t * (e_hi - e_lo)


def ray_offsets(
    batch: int,
    n: int,
    deterministic: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Samples along a ray through the target for the NeRF-style baseline ("NeRF†" of Table 3).

    The ray runs through the cube centre in a random direction (uniform on the sphere; the ``z`` axis when
    deterministic), from ``t = -1`` to ``t = 1`` in cube-local units, with ``n`` stratified depths.

    Returns:
        ``(offsets (batch, n, 3), t (batch, n), direction (batch, 1, 3))`` with ``t`` ascending.
    """
    edges = torch.linspace(-1.0, 1.0, n + 1, device=device)
    if deterministic:
        t = (0.5 * (edges[1:] + edges[:-1])).expand(batch, n).contiguous()
        d = torch.tensor([0.0, 0.0, 1.0], device=device).expand(batch, 1, 3)
    else:
        jitter = torch.rand(batch, n, generator=generator, device=device)
        t = edges[:-1] + jitter * (edges[1:] - edges[:-1])
        d = uniform_sphere_directions(batch, 1, generator, device)
    d = d.expand(batch, 1, 3)
    return t.unsqueeze(-1) * d, t, d
