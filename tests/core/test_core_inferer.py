"""Numbers of :class:`cunerf_monai.inferers.CuNeRFInferer` with an analytic field.

The "network" :class:`LinearField` returns raw outputs whose activations are known functions of the point:
``sigmoid(intensity) = a + b·x`` (linear in field coordinates) and a constant density. A cube (or the sorted
sample set of the isotropic renderer, whose weights depend only on the distance) centred at ``x0`` is symmetric
about ``x0``, so its rendered value is ``a + b·x0`` up to the sampling error; whole-grid and plane renders must
therefore return the analytic values at the world positions of their voxels mapped through the geometry.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from torch import nn

from conftest import make_affine, parametrize_named
from cunerf_monai.geometry import VolumeGeometry, grid_for_scale, grid_index_points, oblique_plane
from cunerf_monai.inferers import CuNeRFInferer, field_device
from cunerf_monai.networks import CuNeRFModel, PositionalMLPField


pytestmark = pytest.mark.usefixtures("one_thread")


class QuadraticField(nn.Module):
    """``sigmoid(raw[..., 0]) = 0.2 + 0.5 ‖x‖²``, density 1: a cube's mean depends on its size,
    ``0.2 + 0.5 (‖x0‖² + Σ_k h_k² E[o_k²])`` for offsets ``o`` scaled by half-extents ``h``."""

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return 0.2 + 0.5 * (x**2).sum(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.value(x).clamp(1e-6, 1 - 1e-6)
        return torch.stack([torch.logit(v), torch.ones_like(v)], dim=-1)


class LinearField(nn.Module):
    """Analytic field: ``sigmoid(raw[..., 0]) = a + b·x`` and ``relu(raw[..., 1]) = density``."""

    def __init__(self, a: float = 0.5, b=(0.3, 0.15, -0.2), density: float = 2.0) -> None:
        super().__init__()
        self.a = float(a)
        self.register_buffer("b", torch.tensor(b, dtype=torch.float32))
        self.density = float(density)

    def value(self, x) -> np.ndarray | torch.Tensor:
        if isinstance(x, np.ndarray):
            return self.a + x @ self.b.double().numpy()
        return self.a + x @ self.b.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.value(x).clamp(1e-6, 1 - 1e-6)
        return torch.stack([torch.logit(v), torch.full_like(v, self.density)], dim=-1)


OBLIQUE = make_affine((1.2, 0.8, 2.5), Rotation.from_euler("zyx", [30, -20, 10], degrees=True).as_matrix(), (3, -4, 12))
GEOMETRIES = [
    ("anisotropic", VolumeGeometry((6, 5, 3), make_affine((1.0, 1.0, 3.0), origin=(-5, 2, 0)), 1.0)),
    ("oblique", VolumeGeometry((6, 5, 4), OBLIQUE, (1.0, 2.0, 1.0))),
]
SCALES = [("x2", 2), ("slice3", (1, 1, 3)), ("float", (1.5, 2.0, 2.5))]

# Settings whose render is exact for a linear field: a symmetric 2×2×2 cube grid, equal weights, no fine pass.
EXACT = dict(weighting="uniform", eval_cube_sampling="grid", num_coarse_eval=8, num_fine_eval=0)
# Settings of the method (isotropic weights, QMC coarse points, Fibonacci fine points): a small symmetric bias.
# A one-HR-voxel shift at ×2 changes the analytic value by ≥ 0.01 here, so 0.003 still pins the positions.
METHOD_TOL = 3e-3
RENDER_SETTINGS = [
    ("exact", EXACT, 1e-5),
    ("isotropic_l2", dict(), METHOD_TOL),
    ("isotropic_linf", dict(norm="linf"), METHOD_TOL),
    ("uniform_qmc", dict(weighting="uniform"), METHOD_TOL),
]


def grid_world(grid) -> np.ndarray:
    idx = grid_index_points(grid.shape)
    return idx @ grid.affine[:3, :3].T + grid.affine[:3, 3]


def small_mlp(seed: int = 0, gain: float = 1.0) -> CuNeRFModel:
    torch.manual_seed(seed)
    fields = [PositionalMLPField(num_frequencies=3, hidden_features=16, num_layers=2, skips=()) for _ in range(2)]
    with torch.no_grad():
        for f in fields:
            f.head.weight.mul_(gain)
            f.head.bias.mul_(gain)
    return CuNeRFModel(*fields)


class TestCubeRender:
    @parametrize_named(
        "kwargs",
        [
            ("uniform_stratified", dict(weighting="uniform", cube_sampling="stratified")),
            ("uniform_uniform", dict(weighting="uniform", cube_sampling="uniform")),
            ("isotropic_l2", dict(weighting="isotropic", norm="l2")),
            ("isotropic_linf", dict(weighting="isotropic", norm="linf")),
            ("isotropic_unnormalised_density", dict(weighting="isotropic", density_activation="softplus")),
        ],
    )
    def test_cube_value_is_centre_value(self, kwargs):
        field = LinearField()
        gen = torch.Generator().manual_seed(0)
        centres = torch.rand(16, 3, generator=gen) - 0.5
        inferer = CuNeRFInferer(num_coarse=2048, num_fine=1024, **kwargs)
        # a big cube (0.2 field units per side): a corner-biased sampler (mean offset −0.375 of the half edge)
        # would be off by ≈ 0.375 · 0.2 · Σ b ≈ 0.019
        out = inferer(centres, field, half_extent=torch.tensor([0.2, 0.2, 0.2]), generator=gen)
        expected = field.value(centres)
        torch.testing.assert_close(out["coarse"], expected, atol=5e-3, rtol=0)
        torch.testing.assert_close(out["fine"], expected, atol=5e-3, rtol=0)

    def test_constant_field_renders_constant(self):
        field = LinearField(a=0.3, b=(0.0, 0.0, 0.0), density=5.0)
        for kwargs in (dict(), dict(norm="linf"), dict(sampling="ray"), dict(weighting="uniform")):
            inferer = CuNeRFInferer(num_coarse=16, num_fine=16, **kwargs)
            out = inferer(torch.zeros(4, 3), field, half_extent=torch.full((3,), 0.1))
            torch.testing.assert_close(out["coarse"], torch.full((4,), 0.3), atol=1e-5, rtol=0)
            torch.testing.assert_close(out["fine"], torch.full((4,), 0.3), atol=1e-5, rtol=0)

    def test_fine_pass_uses_fine_field(self):
        model = CuNeRFModel(LinearField(a=0.2, b=(0, 0, 0)), LinearField(a=0.7, b=(0, 0, 0)))
        out = CuNeRFInferer(num_coarse=8, num_fine=8)(torch.zeros(3, 3), model, half_extent=torch.full((3,), 0.1))
        torch.testing.assert_close(out["coarse"], torch.full((3,), 0.2), atol=1e-5, rtol=0)
        torch.testing.assert_close(out["fine"], torch.full((3,), 0.7), atol=1e-5, rtol=0)
        torch.testing.assert_close(out["value"], out["fine"], rtol=0, atol=0)  # the final render is the fine one
        out0 = CuNeRFInferer(num_coarse=8, num_fine=0)(torch.zeros(3, 3), model, half_extent=torch.full((3,), 0.1))
        assert "fine" not in out0
        torch.testing.assert_close(out0["coarse"], torch.full((3,), 0.2), atol=1e-5, rtol=0)

    def test_per_target_half_extent(self):
        # (B, 3) half-extents: a zero-size cube renders the centre value exactly, whatever the sampler
        field = LinearField()
        centres = torch.tensor([[0.1, -0.2, 0.3], [0.4, 0.0, -0.5]])
        half = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.3, 0.3]])
        out = CuNeRFInferer(num_coarse=64, num_fine=0, cube_sampling="uniform")(centres, field, half_extent=half)
        assert float(out["coarse"][0]) == pytest.approx(float(field.value(centres[0])), abs=0.5e-6)

    def test_cube_size_matters_for_curved_field(self):
        # 2×2×2 grid offsets o ∈ {±½}³: E[o_k²] = ¼, so the render is 0.2 + 0.5 (‖x0‖² + ¼ Σ_k h_k²)
        field = QuadraticField()
        centres = torch.tensor([[0.1, -0.2, 0.3], [0.4, 0.0, -0.5]])
        half = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.2, 0.1]])
        inferer = CuNeRFInferer(**EXACT)
        out = inferer.render_targets(centres, field, half, 8, 0, deterministic=True)["coarse"]
        expected = 0.2 + 0.5 * ((centres**2).sum(-1) + 0.25 * (half**2).sum(-1))
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)

    def test_per_axis_grid_counts(self):
        # (2, 1, 1) ticks: offsets (±½, 0, 0) → only axis 0 averages: 0.2 + 0.5 (‖x0‖² + ¼ h_0²)
        field = QuadraticField()
        centres = torch.tensor([[0.1, -0.2, 0.3]])
        half = torch.tensor([[0.3, 0.2, 0.1]])
        inferer = CuNeRFInferer(num_coarse=2, num_fine=0, cube_sampling="grid", eval_cube_sampling="grid",
                                grid_counts=(2, 1, 1), weighting="uniform")
        for deterministic in (True, False):
            out = inferer.render_targets(centres, field, half, 2, 0, deterministic=deterministic)["coarse"]
            expected = 0.2 + 0.5 * ((centres**2).sum(-1) + 0.25 * half[:, 0] ** 2)
            torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
        with pytest.raises(ValueError):  # 2 samples without per-axis counts is not a grid
            CuNeRFInferer(num_coarse=2, cube_sampling="grid")
        with pytest.raises(ValueError):
            CuNeRFInferer(num_coarse=2, cube_sampling="grid", grid_counts=(2, 0, 1))

    def test_volume_weighting_composites_outward(self):
        # opaque samples: NeRF compositing in order of distance keeps only the nearest one, the 3×3×3 grid's centre
        class Opaque(QuadraticField):
            def forward(self, x):
                raw = super().forward(x)
                return torch.stack([raw[..., 0], torch.full_like(raw[..., 1], 1e4)], dim=-1)

        centres = torch.tensor([[0.1, -0.2, 0.3], [0.4, 0.0, -0.5]])
        half = torch.full((3,), 0.3)
        volume = CuNeRFInferer(num_coarse=27, num_fine=0, weighting="volume", eval_cube_sampling="grid")
        out = volume.render_targets(centres, Opaque(), half, 27, 0, deterministic=True)["coarse"]
        torch.testing.assert_close(out, Opaque().value(centres), atol=1e-5, rtol=0)
        # the box mean of the same cube is not the centre value (the quadratic field curves): ticks {0, ±2/3} give
        # E[o_k²] = 8/27, so the mean is 0.2 + 0.5 (‖x0‖² + 3 · 0.09 · 8/27) = centre value + 0.04
        box = CuNeRFInferer(num_coarse=27, num_fine=0, weighting="uniform", eval_cube_sampling="grid")
        out_box = box.render_targets(centres, Opaque(), half, 27, 0, deterministic=True)["coarse"]
        torch.testing.assert_close(out_box, Opaque().value(centres) + 0.04, atol=1e-5, rtol=0)

    def test_eval_mode_renders_deterministically(self):
        field = LinearField().eval()
        centres = torch.rand(10, 3) - 0.5
        half = torch.full((3,), 0.05)
        inferer = CuNeRFInferer(num_coarse=16, num_fine=16, chunk_size=4)
        out = inferer(centres, field, half_extent=half)
        assert set(out) == {"value"}
        expected = inferer.render_targets(centres, field, half, 8, 8, deterministic=True)["fine"]
        torch.testing.assert_close(out["value"], expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(out["value"], field.value(centres), atol=METHOD_TOL, rtol=0)
        torch.testing.assert_close(inferer(centres, field, half_extent=half)["value"], out["value"], rtol=0, atol=0)
        assert not field.training

    def test_eval_mode_per_target_half_extent(self):
        field = QuadraticField().eval()
        centres = torch.tensor([[0.1, -0.2, 0.3], [0.4, 0.0, -0.5]])
        half = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.2, 0.1]])
        out = CuNeRFInferer(**EXACT)(centres, field, half_extent=half)["value"]
        expected = 0.2 + 0.5 * ((centres**2).sum(-1) + 0.25 * (half**2).sum(-1))
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)

    def test_gradients_reach_network(self):
        model = small_mlp(1)
        inferer = CuNeRFInferer(num_coarse=16, num_fine=16)
        out = inferer(torch.rand(8, 3) - 0.5, model, half_extent=torch.full((3,), 0.05))
        (out["coarse"].sum() + out["fine"].sum()).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None, name
            assert float(p.grad.abs().sum()) > 0.0, name

    def test_seeded_training_call_reproducible(self):
        model, centres = small_mlp(2), torch.rand(8, 3) - 0.5
        inferer = CuNeRFInferer(num_coarse=16, num_fine=16)
        half = torch.full((3,), 0.05)
        a = inferer(centres, model, half_extent=half, generator=torch.Generator().manual_seed(4))
        b = inferer(centres, model, half_extent=half, generator=torch.Generator().manual_seed(4))
        torch.testing.assert_close(a["fine"], b["fine"], rtol=0, atol=0)

    @parametrize_named("mode", [("cube", "cube"), ("ray", "ray")])
    def test_bounded_outputs(self, mode):
        # sigmoid intensity and normalised weights: a convex combination of values in (0, 1), even for a
        # network with huge raw outputs (large densities and saturated intensities)
        for gain in (1.0, 200.0):
            model = small_mlp(3, gain)
            inferer = CuNeRFInferer(num_coarse=16, num_fine=16, num_coarse_eval=8, num_fine_eval=8, sampling=mode)
            out = inferer(torch.rand(64, 3) * 2 - 1, model, half_extent=torch.full((3,), 0.1))
            for v in out.values():
                assert bool(torch.isfinite(v).all())
                assert bool((v >= 0).all() and (v <= 1).all()), (float(v.min()), float(v.max()))
            geo = GEOMETRIES[1][1]
            vol = inferer.render_grid(model, geo, grid_for_scale(geo, 1.5))
            assert bool(torch.isfinite(vol).all() and (vol >= 0).all() and (vol <= 1).all())

    def test_ray_mode(self):
        field = LinearField()
        inferer = CuNeRFInferer(num_coarse=32, num_fine=32, sampling="ray")
        centres = torch.rand(16, 3) - 0.5
        out = inferer(centres, field, half_extent=torch.full((3,), 0.05))
        # the ray passes through the centre with |t| ≤ 1, so its samples stay within 0.05·√3·‖b‖₁ of f(x0)
        bound = 0.05 * float(field.b.abs().sum())
        for v in out.values():
            assert bool(((v - field.value(centres)).abs() <= bound + 1e-6).all())
        geo = GEOMETRIES[0][1]
        a = inferer.render_grid(field, geo, grid_for_scale(geo, 2))
        b = inferer.render_grid(field, geo, grid_for_scale(geo, 2))
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert bool((a >= 0).all() and (a <= 1).all())

    def test_missing_half_extent(self):
        with pytest.raises(ValueError, match="half_extent"):
            CuNeRFInferer()(torch.zeros(2, 3), LinearField())
        with pytest.raises(ValueError):
            CuNeRFInferer().render_targets(torch.zeros(2, 2), LinearField(), torch.ones(3), 8, 0)

    @parametrize_named(
        "kwargs",
        [
            ("coarse", dict(num_coarse=0)),
            ("fine", dict(num_fine=-1)),
            ("sampling", dict(sampling="cone")),
            ("weighting", dict(weighting="max")),
            ("norm", dict(norm="l1")),
            ("cube_sampling", dict(cube_sampling="sobol")),
            ("eval_sampling", dict(eval_cube_sampling="uniform")),
            ("cube_size", dict(render_cube_size=0.0)),
            ("activation", dict(intensity_activation="tanh")),
            ("chunk", dict(chunk_size=0)),
        ],
    )
    def test_bad_arguments(self, kwargs):
        with pytest.raises(ValueError):
            CuNeRFInferer(**kwargs)

    def test_field_device(self):
        assert field_device(nn.Identity()) == torch.device("cpu")
        assert field_device(LinearField()) == torch.device("cpu")


def grid_cases():
    return [
        (f"{g}_{s}_{r}", geo, scale, settings, tol)
        for g, geo in GEOMETRIES
        for s, scale in SCALES
        for r, settings, tol in RENDER_SETTINGS
    ]


class TestRenderGrid:
    @parametrize_named("geo, scale, settings, tol", grid_cases())
    def test_analytic_values_at_output_voxels(self, geo, scale, settings, tol):
        field = LinearField()
        grid = grid_for_scale(geo, scale)
        out = CuNeRFInferer(**settings).render_grid(field, geo, grid)
        assert tuple(out.shape) == grid.shape
        assert out.dtype == torch.float32
        expected = field.value(geo.world_to_field(grid_world(grid)))
        np.testing.assert_allclose(out.numpy(), expected, atol=tol, rtol=0)

    @parametrize_named("geo", GEOMETRIES)
    def test_lr_voxels_kept(self, geo):
        # output voxel s·i of a ×2 render is LR voxel i: its value is the field at LR voxel i's centre
        field = LinearField()
        out = CuNeRFInferer(**EXACT).render_grid(field, geo, grid_for_scale(geo, 2))
        lr_values = field.value(geo.voxel_field_grid())
        np.testing.assert_allclose(out.numpy()[::2, ::2, ::2], lr_values, atol=1e-5, rtol=0)

    def test_chunk_size_and_determinism(self):
        geo = GEOMETRIES[1][1]
        grid = grid_for_scale(geo, (2.0, 1.5, 1.0))
        model = small_mlp(5)
        model.train()
        big = CuNeRFInferer(chunk_size=100_000).render_grid(model, geo, grid)
        again = CuNeRFInferer(chunk_size=100_000).render_grid(model, geo, grid)
        small = CuNeRFInferer(chunk_size=7).render_grid(model, geo, grid)
        torch.testing.assert_close(big, again, rtol=0, atol=0)
        torch.testing.assert_close(small, big, rtol=0, atol=1e-6)
        assert model.training  # the render restores the training flag

    def test_render_points_matches_grid(self):
        geo, field = GEOMETRIES[1][1], LinearField()
        grid = grid_for_scale(geo, 2)
        inferer = CuNeRFInferer()
        centres = torch.as_tensor(geo.world_to_field(grid_world(grid)).reshape(-1, 3), dtype=torch.float32)
        half = inferer._render_half_extent(geo, grid.affine)
        # the rendered cube of a ×2 voxel is half an LR voxel: quarter LR voxel half-extent in field units
        np.testing.assert_allclose(half.numpy(), 0.25 * geo.field_per_voxel, rtol=1e-6)
        pts = inferer.render_points(field, centres, centres.shape[0], half).reshape(grid.shape)
        torch.testing.assert_close(pts, inferer.render_grid(field, geo, grid), rtol=0, atol=1e-6)

    def test_render_cube_size(self):
        geo = GEOMETRIES[0][1]
        inferer = CuNeRFInferer(render_cube_size=2.0)
        half = inferer._render_half_extent(geo, grid_for_scale(geo, 4).affine)
        np.testing.assert_allclose(half.numpy(), geo.field_per_voxel, rtol=1e-6)  # 1 LR voxel half-size


class TestRenderPlane:
    @parametrize_named(
        "geo, settings, tol",
        [(f"{g}_{r}", geo, s, tol) for g, geo in GEOMETRIES for r, s, tol in RENDER_SETTINGS],
    )
    def test_axial_plane(self, geo, settings, tol):
        field = LinearField()
        plane = oblique_plane(geo, size=geo.shape[:2])
        out = CuNeRFInferer(**settings).render_plane(field, geo, plane)
        assert tuple(out.shape) == geo.shape[:2]
        expected = field.value(geo.world_to_field(plane.world))
        np.testing.assert_allclose(out.numpy(), expected, atol=tol, rtol=0)
        # the axial plane through the centre: for an odd slice count it is the middle LR slice
        if geo.shape[2] % 2 == 1:
            lr = field.value(geo.voxel_field_grid())[:, :, geo.shape[2] // 2]
            np.testing.assert_allclose(out.numpy(), lr, atol=tol, rtol=0)

    @parametrize_named("geo", GEOMETRIES)
    def test_oblique_plane_and_outside(self, geo):
        field = LinearField()
        plane = oblique_plane(geo, axis=(1, 1, 0), angle=30.0, zoom=0.5, size=(12, 10))
        out = CuNeRFInferer(**EXACT).render_plane(field, geo, plane, outside_value=-1.0).numpy()
        index = geo.world_to_index(plane.world)
        inside = np.all((index >= -0.5) & (index <= np.asarray(geo.shape) - 0.5), axis=-1)
        assert inside.any() and (~inside).any()
        np.testing.assert_allclose(out[~inside], -1.0)
        np.testing.assert_allclose(out[inside], field.value(geo.world_to_field(plane.world))[inside], atol=1e-5)

    def test_plane_deterministic(self):
        geo, model = GEOMETRIES[1][1], small_mlp(6)
        plane = oblique_plane(geo, axis=(0, 1, 0), angle=20.0, size=(6, 6))
        inferer = CuNeRFInferer(chunk_size=5)
        torch.testing.assert_close(
            inferer.render_plane(model, geo, plane), inferer.render_plane(model, geo, plane), rtol=0, atol=0
        )

