"""Numbers of :mod:`cunerf_monai.sampling`: cube samples are uniform (no corner bias), stratified samples fill
their strata, sphere directions are uniform on the sphere, PDF resampling concentrates where the weights are,
and ray samples lie on one line through the centre."""

from __future__ import annotations

import math

import pytest
import torch

from cunerf_monai import sampling

# A uniform coordinate on [-1, 1]: mean 0 (var 1/3), E[x²] = 1/3 (var E[x⁴] − 1/9 = 1/5 − 1/9 = 4/45).
VAR_X = 1.0 / 3.0
VAR_X2 = 4.0 / 45.0
SIGMAS = 5.0  # tolerance in standard errors

RANDOM_CUBE_CASES = [
    ("uniform", sampling.uniform_cube_offsets, 64, 512),
    ("stratified", sampling.stratified_cube_offsets, 64, 512),
    ("stratified_small_n", sampling.stratified_cube_offsets, 4096, 8),
    ("cube_offsets_uniform", lambda b, n, g: sampling.cube_offsets(b, n, "uniform", g), 64, 512),
    ("cube_offsets_stratified", lambda b, n, g: sampling.cube_offsets(b, n, "stratified", g), 64, 512),
]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("case, fn, batch, n", RANDOM_CUBE_CASES)
def test_uniform_moments(case, fn, batch, n):
    pts = fn(batch, n, gen(1)).double()
    assert tuple(pts.shape) == (batch, n, 3)
    assert bool((pts >= -1).all() and (pts <= 1).all())
    count = batch * n
    flat = pts.reshape(-1, 3)
    # no corner bias: the mean offset is 0 (the reference code's was −0.375 of the half edge)
    se_mean = math.sqrt(VAR_X / count)
    assert float(flat.mean(0).abs().max()) < SIGMAS * se_mean
    se_sq = math.sqrt(VAR_X2 / count)
    assert float((flat.pow(2).mean(0) - 1.0 / 3.0).abs().max()) < SIGMAS * se_sq
    # every octant equally likely
    octant = ((flat > 0).long() * torch.tensor([1, 2, 4])).sum(-1)
    freq = torch.bincount(octant, minlength=8).double() / count
    assert float((freq - 0.125).abs().max()) < SIGMAS * math.sqrt(0.125 * 0.875 / count)
    # no cross-axis correlation
    cov = (flat[:, 0] * flat[:, 1]).mean()
    assert abs(float(cov)) < SIGMAS * VAR_X / math.sqrt(count)


@pytest.mark.parametrize("case, n", [("n8", 8), ("n5", 5), ("n64", 64)])
def test_stratified_one_point_per_stratum(case, n):
    pts = sampling.stratified_cube_offsets(32, n, gen(2)).double()
    values = pts.transpose(1, 2).sort(dim=-1).values  # (B, 3, n), each axis sorted
    lower = torch.arange(n, dtype=torch.float64) / n * 2.0 - 1.0
    upper = lower + 2.0 / n
    # the k-th smallest coordinate of each axis lies in stratum k: exactly one point per stratum
    assert bool((values >= lower - 1e-6).all())
    assert bool((values <= upper + 1e-6).all())
    # and the strata are shuffled independently per axis (not all points on the diagonal)
    strata = ((pts + 1.0) / 2.0 * n).floor().clamp(0, n - 1)
    assert not bool((strata[..., 0] == strata[..., 1]).all())


def test_seeded_reproducible():
    for fn in (sampling.uniform_cube_offsets, sampling.stratified_cube_offsets):
        torch.testing.assert_close(fn(4, 16, gen(5)), fn(4, 16, gen(5)), rtol=0, atol=0)
        assert not torch.equal(fn(4, 16, gen(5)), fn(4, 16, gen(6)))


def test_grid_offsets():
    grid = sampling.grid_cube_offsets(27)
    assert tuple(grid.shape) == (27, 3)
    ticks = torch.tensor([-2.0 / 3.0, 0.0, 2.0 / 3.0])
    for axis in range(3):
        torch.testing.assert_close(grid[:, axis].unique(), ticks)
    torch.testing.assert_close(grid.mean(0), torch.zeros(3), atol=1e-7, rtol=0)
    torch.testing.assert_close(grid[0], torch.tensor([-2 / 3, -2 / 3, -2 / 3]))
    torch.testing.assert_close(grid, sampling.grid_cube_offsets(27), rtol=0, atol=0)
    torch.testing.assert_close(sampling.grid_cube_offsets(1), torch.zeros(1, 3))
    torch.testing.assert_close(sampling.grid_cube_offsets(8).abs(), torch.full((8, 3), 0.5))
    assert len({tuple(p) for p in sampling.grid_cube_offsets(64).tolist()}) == 64
    with pytest.raises(ValueError):
        sampling.grid_cube_offsets(10)


def test_grid_per_axis_counts():
    # (4, 1, 2): x at ±0.25, ±0.75; y at the centre only; z at ±0.5
    pts = sampling.grid_cube_offsets(8, counts=(4, 1, 2))
    assert tuple(pts.shape) == (8, 3)
    assert sorted(set(pts[:, 0].tolist())) == [-0.75, -0.25, 0.25, 0.75]
    assert set(pts[:, 1].tolist()) == {0.0}
    assert sorted(set(pts[:, 2].tolist())) == [-0.5, 0.5]
    torch.testing.assert_close(pts.mean(0), torch.zeros(3))
    torch.testing.assert_close(sampling.grid_cube_offsets(8, counts=(2, 2, 2)), sampling.grid_cube_offsets(8))
    with pytest.raises(ValueError):
        sampling.grid_cube_offsets(8, counts=(2, 2, 1))


@pytest.mark.parametrize("case, n", [("n8", 8), ("n9", 9), ("n100", 100), ("n4096", 4096)])
def test_qmc_offsets(case, n):
    pts = sampling.qmc_cube_offsets(n)
    assert tuple(pts.shape) == (n, 3)
    torch.testing.assert_close(pts, sampling.qmc_cube_offsets(n), rtol=0, atol=0)
    assert bool((pts >= -1).all() and (pts <= 1).all())
    odd = n % 2
    if odd:
        torch.testing.assert_close(pts[0], torch.zeros(3), rtol=0, atol=0)  # the centre
    pairs = pts[odd:]
    # point-symmetric: every R3 point is followed by its mirror image, so the mean is exactly 0
    torch.testing.assert_close(pairs[1::2], -pairs[0::2], rtol=0, atol=0)
    assert float(pts.double().sum(0).abs().max()) == 0.0
    # first point: frac(0.5 + α) · 2 − 1 with α = (1/g, 1/g², 1/g³)
    g = 1.2207440846057596
    first = [((0.5 + g**-p) % 1.0) * 2.0 - 1.0 for p in (1, 2, 3)]
    torch.testing.assert_close(pairs[0].double(), torch.tensor(first, dtype=torch.float64), atol=1e-6, rtol=0)
    # a point and its mirror share a distance; distinct pairs have distinct distances
    r = pairs[0::2].double().norm(dim=-1)
    torch.testing.assert_close(pairs[1::2].norm(dim=-1), pairs[0::2].norm(dim=-1), rtol=0, atol=0)
    if n <= 256:  # (at render-time sizes; with thousands of float32 points two norms can coincide)
        assert r.unique().numel() == n // 2
    if n >= 100:
        # low discrepancy: the second moments are those of the uniform cube (1/3 per axis)
        assert float((pts.pow(2).mean(0) - 1 / 3).abs().max()) < 8.0 / n
    expanded = sampling.cube_offsets(3, n, "qmc")
    torch.testing.assert_close(expanded, pts.expand(3, n, 3))
    assert tuple(sampling.qmc_cube_offsets(1).tolist()[0]) == (0.0, 0.0, 0.0)


def test_cube_offsets_bad_mode():
    with pytest.raises(ValueError):
        sampling.cube_offsets(2, 8, "sobol")


def test_distance_values():
    off = torch.tensor([[0.6, -0.8, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, -0.25]])
    torch.testing.assert_close(sampling.distance(off, "l2"), torch.tensor([1.0, math.sqrt(3.0), 0.25]))
    torch.testing.assert_close(sampling.distance(off, "linf"), torch.tensor([0.8, 1.0, 0.25]))
    assert sampling.max_distance("l2") == pytest.approx(math.sqrt(3.0), abs=0.5e-7)
    assert sampling.max_distance("linf") == 1.0
    with pytest.raises(ValueError):
        sampling.distance(off, "l1")
    with pytest.raises(ValueError):
        sampling.max_distance("l1")


def test_uniform_on_sphere():
    n = 200_000
    d = sampling.uniform_sphere_directions(1, n, gen(3)).double().reshape(-1, 3)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(n, dtype=torch.float64), atol=1e-6, rtol=0)
    # E[d] = 0 (var 1/3 per component), E[d_k²] = 1/3 (var E[z⁴] − 1/9 = 4/45 for z uniform on [−1, 1])
    assert float(d.mean(0).abs().max()) < SIGMAS * math.sqrt(VAR_X / n)
    assert float((d.pow(2).mean(0) - 1 / 3).abs().max()) < SIGMAS * math.sqrt(VAR_X2 / n)
    # Archimedes: z is uniform on [−1, 1], so a polar cap |z| > 0.9 holds 10 % of the directions
    # (uniform θ ∈ [0, π] would put arccos(0.9)·2/π ≈ 28.7 % there and give E[z²] = 1/2)
    cap = float((d[:, 2].abs() > 0.9).double().mean())
    assert abs(cap - 0.1) < SIGMAS * math.sqrt(0.1 * 0.9 / n)
    hist = torch.histc(d[:, 2], bins=10, min=-1, max=1) / n
    assert float((hist - 0.1).abs().max()) < SIGMAS * math.sqrt(0.1 * 0.9 / n)


@pytest.mark.parametrize("case, deterministic", [("random", False), ("fibonacci", True)])
def test_linf_directions(case, deterministic):
    d = sampling.directions(8, 50, norm="linf", deterministic=deterministic, generator=gen(4))
    torch.testing.assert_close(d.abs().amax(-1), torch.ones(8, 50))
    # same direction as the unit-ℓ2 one
    d2 = sampling.directions(8, 50, norm="l2", deterministic=deterministic, generator=gen(4))
    torch.testing.assert_close(d / d.norm(dim=-1, keepdim=True), d2, atol=1e-6, rtol=0)


def test_l2_directions():
    d = sampling.directions(4, 30, norm="l2", generator=gen(5))
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(4, 30))
    with pytest.raises(ValueError):
        sampling.directions(2, 3, norm="l1")


def test_fibonacci_deterministic():
    n = 2000
    d = sampling.directions(3, n, deterministic=True)
    torch.testing.assert_close(d[0], d[1], rtol=0, atol=0)
    torch.testing.assert_close(d, sampling.directions(3, n, deterministic=True), rtol=0, atol=0)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(3, n))
    # nearly even: the lattice's mean and second moments are those of the uniform sphere
    torch.testing.assert_close(d[0].mean(0), torch.zeros(3), atol=5e-3, rtol=0)
    torch.testing.assert_close(d[0].pow(2).mean(0), torch.full((3,), 1 / 3), atol=5e-3, rtol=0)


@pytest.mark.parametrize("case, n", [("n8", 8), ("n9", 9), ("n2000", 2000)])
def test_antipodal_directions(case, n):
    d = sampling.antipodal_sphere_directions(n)
    assert tuple(d.shape) == (n, 3)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(n))
    odd = n % 2
    if odd:
        torch.testing.assert_close(d[0], torch.tensor([0.0, 0.0, 1.0]), rtol=0, atol=0)
    pairs = d[odd:]
    torch.testing.assert_close(pairs[1::2], -pairs[0::2], rtol=0, atol=0)
    assert bool((pairs[0::2, 2] > 0).all())  # one of each pair on the upper hemisphere
    if n >= 1000:  # nearly even: the second moments of the uniform sphere
        torch.testing.assert_close(d.pow(2).mean(0), torch.full((3,), 1 / 3), atol=5e-3, rtol=0)
    torch.testing.assert_close(sampling.directions(2, n, deterministic=True)[1], d, rtol=0, atol=0)


def test_radius_bin_edges():
    r = torch.tensor([[0.1, 0.3, 0.4, 1.2], [0.0, 0.0, 0.5, 2.0]])
    edges = sampling.radius_bin_edges(r, math.sqrt(3.0))
    expected = torch.tensor([[0.0, 0.2, 0.35, 0.8, math.sqrt(3.0)], [0.0, 0.0, 0.25, 1.25, 2.0]])
    torch.testing.assert_close(edges, expected)


def test_radius_bin_edges_monotone():
    r = sampling.stratified_cube_offsets(64, 32, gen(6)).norm(dim=-1).sort(-1).values
    edges = sampling.radius_bin_edges(r, math.sqrt(3.0))
    assert tuple(edges.shape) == (64, 33)
    assert bool((edges[:, 1:] >= edges[:, :-1]).all())
    # radius i lies in bin i
    assert bool((edges[:, :-1] <= r).all() and (r <= edges[:, 1:]).all())
    assert bool((edges[:, 0] == 0).all())
    torch.testing.assert_close(edges[:, -1], torch.full((64,), math.sqrt(3.0)))


@pytest.mark.parametrize("case, deterministic", [("random", False), ("deterministic", True)])
def test_all_weight_in_one_bin(case, deterministic):
    edges = torch.linspace(0.0, 1.6, 9).expand(16, 9).contiguous()  # 8 bins of 0.2
    weights = torch.zeros(16, 8)
    weights[:, 5] = 100.0
    s = sampling.sample_pdf(edges, weights, 256, deterministic, gen(7))
    assert bool((s >= 1.0).all() and (s <= 1.2).all()), (s.min(), s.max())
    # spread evenly over the bin (inverse CDF is linear inside it)
    assert abs(float(s.mean()) - 1.1) < 0.01


def test_weights_three_to_one():
    n, b = 4000, 8
    edges = torch.tensor([0.0, 1.0, 2.0]).expand(b, 3).contiguous()
    weights = torch.tensor([3.0, 1.0]).expand(b, 2).contiguous()
    s = sampling.sample_pdf(edges, weights, n, False, gen(8))
    frac = float((s < 1.0).double().mean())
    assert abs(frac - 0.75) < SIGMAS * math.sqrt(0.75 * 0.25 / (n * b))
    det = sampling.sample_pdf(edges, weights, 100, True)
    assert int((det < 1.0).sum(-1)[0]) == 75
    # deterministic quantiles: u = (k + 0.5)/100 → r = u / 0.75 below 0.75, 1 + (u − 0.75)/0.25 above
    u = (torch.arange(100, dtype=torch.float32) + 0.5) / 100
    expected = torch.where(u < 0.75, u / 0.75, 1.0 + (u - 0.75) / 0.25)
    torch.testing.assert_close(det[0], expected, atol=1e-4, rtol=0)


def test_uneven_edges():
    # equal weights on unequal bins: probability per bin is its weight, not its width
    edges = torch.tensor([[0.0, 0.1, 1.0]])
    s = sampling.sample_pdf(edges, torch.tensor([[1.0, 1.0]]), 1000, True)
    assert int((s < 0.1).sum()) == 500


def test_zero_weights_give_uniform():
    edges = torch.linspace(0.0, 1.0, 5).unsqueeze(0)
    s = sampling.sample_pdf(edges, torch.zeros(1, 4), 8, True)
    torch.testing.assert_close(s, (torch.arange(8.0) + 0.5).unsqueeze(0) / 8, atol=1e-6, rtol=0)


def test_deterministic_reproducible_and_sorted():
    r = sampling.stratified_cube_offsets(8, 16, gen(9)).norm(dim=-1).sort(-1).values
    edges = sampling.radius_bin_edges(r, math.sqrt(3.0))
    weights = torch.rand(8, 16, generator=gen(10))
    a = sampling.sample_pdf(edges, weights, 32, deterministic=True)
    b = sampling.sample_pdf(edges, weights, 32, deterministic=True)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert bool((a[:, 1:] >= a[:, :-1]).all())
    assert bool((a >= 0).all() and (a <= math.sqrt(3.0)).all())
    c = sampling.sample_pdf(edges, weights, 32, generator=gen(11))
    assert bool((c[:, 1:] >= c[:, :-1]).all())
    torch.testing.assert_close(c, sampling.sample_pdf(edges, weights, 32, generator=gen(11)), rtol=0, atol=0)


def test_weights_not_differentiated():
    edges = torch.linspace(0.0, 1.0, 5).unsqueeze(0)
    w = torch.rand(1, 4, requires_grad=True)
    s = sampling.sample_pdf(edges, w, 8, True)
    assert not s.requires_grad


@pytest.mark.parametrize("case, deterministic", [("random", False), ("deterministic", True)])
def test_points_on_line_through_centre(case, deterministic):
    b, n = 16, 12
    offsets, t, d = sampling.ray_offsets(b, n, deterministic, gen(12))
    assert tuple(offsets.shape) == (b, n, 3)
    assert tuple(d.shape) == (b, 1, 3)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(b, 1))
    torch.testing.assert_close(offsets, t.unsqueeze(-1) * d)
    # collinear with the centre: offset × direction = 0
    cross = torch.linalg.cross(offsets, d.expand_as(offsets), dim=-1)
    torch.testing.assert_close(cross, torch.zeros_like(cross), atol=1e-6, rtol=0)
    assert bool((t[:, 1:] > t[:, :-1]).all())
    # one depth per stratum of [−1, 1]
    lower = torch.linspace(-1.0, 1.0, n + 1)[:-1]
    assert bool((t >= lower - 1e-6).all() and (t <= lower + 2.0 / n + 1e-6).all())
    if deterministic:
        torch.testing.assert_close(d, torch.tensor([0.0, 0.0, 1.0]).expand(b, 1, 3))
        torch.testing.assert_close(t[0], lower + 1.0 / n)
    else:
        assert float(torch.cdist(d[:, 0], d[:, 0]).max()) > 0.5  # directions differ per target


def test_without_ties_it_is_radius_bin_edges():
    g = torch.Generator().manual_seed(7)
    r = (torch.rand(5, 9, generator=g) * 1.7).sort(-1).values
    w = torch.rand(5, 9, generator=g)
    edges, bins = sampling.shell_bins(r, w, math.sqrt(3))
    torch.testing.assert_close(edges, sampling.radius_bin_edges(r, math.sqrt(3)), rtol=0, atol=0)
    torch.testing.assert_close(bins, w, rtol=0, atol=0)


def test_mirror_pairs_are_one_bin():
    # each radius twice (a point and its mirror): the bins of the distinct radii, with summed weights
    r = torch.tensor([[0.3, 0.8, 1.2]])
    w = torch.tensor([[1.0, 2.0, 3.0]])
    edges, bins = sampling.shell_bins(r.repeat_interleave(2, -1), w.repeat_interleave(2, -1) / 2, 1.5)
    expected = sampling.radius_bin_edges(r, 1.5)
    torch.testing.assert_close(edges[:, :4], expected)
    torch.testing.assert_close(edges[:, 4:], torch.full((1, 3), 1.5))
    torch.testing.assert_close(bins, torch.tensor([[1.0, 2.0, 3.0, 0.0, 0.0, 0.0]]))
    # the deterministic samples of Eq. 12 are those of the de-duplicated PDF
    torch.testing.assert_close(sampling.sample_pdf(edges, bins, 6, deterministic=True),
                               sampling.sample_pdf(expected, w, 6, deterministic=True), atol=1e-4, rtol=0)
