"""Numbers of :mod:`cunerf_monai.geometry`: index ⇄ world ⇄ field maps, target grids, footprints, Rodrigues
rotations and oblique planes, on anisotropic and oblique (rotated, shear-free) affines."""

from __future__ import annotations


import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from conftest import make_affine, parametrize_named
from cunerf_monai.geometry import (
    VolumeGeometry,
    grid_for_scale,
    grid_for_shape,
    grid_for_spacing,
    grid_index_points,
    oblique_plane,
    rodrigues,
    voxel_footprint_in_index,
)


OBLIQUE_ROT = Rotation.from_euler("zyx", [30.0, -20.0, 10.0], degrees=True).as_matrix()

# (name, shape, affine, padding)
GEOMETRIES = [
    ("isotropic", (6, 5, 4), make_affine((1.0, 1.0, 1.0)), 1.0),
    ("anisotropic", (8, 6, 5), make_affine((0.7, 0.9, 3.0), origin=(-10.0, 5.0, 2.5)), (1.0, 2.0, 0.5)),
    ("oblique", (7, 6, 5), make_affine((1.2, 0.8, 2.5), OBLIQUE_ROT, origin=(3.0, -4.0, 12.0)), 1.0),
    ("flipped", (5, 7, 4), make_affine((1.0, 1.5, 2.0), np.diag([-1.0, -1.0, 1.0]), origin=(40.0, 60.0, -8.0)), 2.0),
]

SCALES = [
    ("int2", 2),
    ("int3", 3),
    ("float_per_axis", (2.5, 1.5, 3.0)),
    ("slice_only", (1.0, 1.0, 4.0)),
    ("downscale", 0.5),
]


def geometry_cases():
    return [(name, VolumeGeometry(shape, affine, padding)) for name, shape, affine, padding in GEOMETRIES]


def geometry_scale_cases():
    return [(f"{g}_{s}", geo, scale) for g, geo in geometry_cases() for s, scale in SCALES]


class TestFieldMaps:
    def test_docstring_numbers(self):
        geo = VolumeGeometry((4, 4, 2), np.diag([2.0, 2.0, 5.0, 1.0]), padding=1.0)
        # x̂ = 2 (x − (S − 1)/2) / (S + 2P): x: 2 (0 − 1.5)/6 = −0.5, z: 2 (0 − 0.5)/4 = −0.25
        np.testing.assert_allclose(geo.index_to_field(np.zeros((1, 3))), [[-0.5, -0.5, -0.25]])
        np.testing.assert_allclose(geo.index_to_field(np.array([3.0, 3.0, 1.0])), [0.5, 0.5, 0.25])
        np.testing.assert_allclose(geo.field_per_voxel, [2 / 6, 2 / 6, 2 / 4])
        np.testing.assert_allclose(geo.centre_index, [1.5, 1.5, 0.5])
        np.testing.assert_allclose(geo.centre_world, [3.0, 3.0, 2.5])
        np.testing.assert_allclose(geo.spacing, [2.0, 2.0, 5.0])

    @parametrize_named("geo", geometry_cases())
    def test_index_to_field_formula(self, geo):
        idx = np.random.default_rng(0).uniform(-1, 8, size=(50, 3))
        shape = np.asarray(geo.shape, dtype=float)
        pad = np.asarray(geo.padding)
        expected = 2.0 * (idx - (shape - 1.0) / 2.0) / (shape + 2.0 * pad)
        np.testing.assert_allclose(geo.index_to_field(idx), expected, rtol=0, atol=1e-12)

    @parametrize_named("geo", geometry_cases())
    def test_round_trips(self, geo):
        rng = np.random.default_rng(1)
        idx = rng.uniform(-0.5, 7.5, size=(4, 5, 3))
        world = geo.index_to_world(idx)
        # the world map is the affine itself
        np.testing.assert_allclose(world, idx @ geo.affine[:3, :3].T + geo.affine[:3, 3], atol=1e-12)
        field = geo.world_to_field(world)
        np.testing.assert_allclose(field, geo.index_to_field(idx), atol=1e-12)
        np.testing.assert_allclose(geo.field_to_index(field), idx, atol=1e-10)
        np.testing.assert_allclose(geo.world_to_index(world), idx, atol=1e-10)
        np.testing.assert_allclose(geo.field_to_world(field), world, atol=1e-10)
        f = rng.uniform(-1, 1, size=(30, 3))
        np.testing.assert_allclose(geo.world_to_field(geo.field_to_world(f)), f, atol=1e-12)

    @parametrize_named("geo", geometry_cases())
    def test_affine_to_field_agrees_with_composition(self, geo):
        rng = np.random.default_rng(2)
        rot = Rotation.from_rotvec(rng.normal(size=3)).as_matrix()
        other = make_affine((0.4, 0.6, 1.1), rot, origin=rng.normal(size=3) * 5)
        for grid_affine in (geo.affine, other, grid_for_scale(geo, (2.5, 1.5, 3.0)).affine):
            m = geo.affine_to_field(grid_affine)
            np.testing.assert_allclose(m[3], [0, 0, 0, 1], atol=1e-15)
            idx = rng.uniform(0, 10, size=(40, 3))
            via_world = geo.world_to_field(idx @ grid_affine[:3, :3].T + grid_affine[:3, 3])
            np.testing.assert_allclose(idx @ m[:3, :3].T + m[:3, 3], via_world, atol=1e-10)

    @parametrize_named("geo", geometry_cases())
    def test_voxel_field_grid(self, geo):
        grid = geo.voxel_field_grid()
        assert grid.shape == (*geo.shape, 3)
        np.testing.assert_allclose(grid[2, 1, 3], geo.index_to_field(np.array([2.0, 1.0, 3.0])))
        # centred: the voxel grid is symmetric about 0 on every axis
        np.testing.assert_allclose(grid.reshape(-1, 3).mean(0), 0.0, atol=1e-12)

    @parametrize_named("geo", geometry_cases())
    def test_footprint_inside_open_box(self, geo):
        shape = np.asarray(geo.shape, dtype=float)
        pad = np.asarray(geo.padding)
        corners = np.stack(np.meshgrid(*[[-0.5, n - 0.5] for n in shape], indexing="ij"), -1).reshape(-1, 3)
        field = geo.index_to_field(corners)
        assert np.all(np.abs(field) < 1.0)
        # the footprint's face sits exactly S / (S + 2P) from the centre
        np.testing.assert_allclose(np.abs(field).max(0), shape / (shape + 2 * pad), atol=1e-12)
        # the world positions of those corners map to the same field points
        np.testing.assert_allclose(geo.world_to_field(geo.index_to_world(corners)), field, atol=1e-12)

    def test_zero_padding_touches_the_box(self):
        geo = VolumeGeometry((4, 6, 3), np.eye(4), padding=0.0)
        field = geo.index_to_field(np.array([[-0.5, -0.5, -0.5], [3.5, 5.5, 2.5]]))
        np.testing.assert_allclose(field, [[-1, -1, -1], [1, 1, 1]], atol=1e-12)

    @parametrize_named("geo", geometry_cases())
    def test_dict_round_trip(self, geo):
        back = VolumeGeometry.from_dict(geo.to_dict())
        assert back.shape == geo.shape
        assert back.padding == geo.padding
        np.testing.assert_array_equal(back.affine, geo.affine)


class TestTargetGrids:
    @parametrize_named("geo, scale", geometry_scale_cases())
    def test_grid_for_scale_keeps_lr_voxels(self, geo, scale):
        grid = grid_for_scale(geo, scale)
        s = np.broadcast_to(np.asarray(scale, dtype=float), (3,))
        assert grid.shape == (tuple(max(1, int(round(n * f))) for n, f in zip(geo.shape, s)))
        lr_idx = grid_index_points(geo.shape).reshape(-1, 3)
        out_idx = lr_idx * s
        world_out = out_idx @ grid.affine[:3, :3].T + grid.affine[:3, 3]
        np.testing.assert_allclose(world_out, geo.index_to_world(lr_idx), atol=1e-10)
        np.testing.assert_allclose(grid.spacing, geo.spacing / s, rtol=1e-12)
        # orientation kept: unit column directions are the same
        np.testing.assert_allclose(
            grid.affine[:3, :3] / grid.spacing, geo.affine[:3, :3] / geo.spacing, atol=1e-12
        )
        assert grid.num_voxels == int(np.prod(grid.shape))

    def test_grid_for_scale_numbers(self):
        geo = VolumeGeometry((4, 5, 6), make_affine((2.0, 2.0, 4.0), origin=(10.0, 0.0, -3.0)))
        grid = grid_for_scale(geo, 2)
        assert grid.shape == (8, 10, 12)
        np.testing.assert_allclose(grid.affine, make_affine((1.0, 1.0, 2.0), origin=(10.0, 0.0, -3.0)))
        # output voxel 6 along x lies at LR index 3 → 10 + 3 · 2 mm
        np.testing.assert_allclose(grid.affine @ [6, 0, 0, 1], [16.0, 0.0, -3.0, 1.0])
        assert grid_for_scale(geo, (2.5, 1.5, 0.1)).shape == (10, 8, 1)

    @parametrize_named("geo", geometry_cases())
    def test_grid_for_shape(self, geo):
        shape = tuple(2 * n for n in geo.shape)
        a, b = grid_for_shape(geo, shape), grid_for_scale(geo, 2)
        assert a.shape == b.shape
        np.testing.assert_allclose(a.affine, b.affine, atol=1e-12)

    @parametrize_named(
        "geo, spacing",
        [(f"{g}_{i}", geo, sp) for g, geo in geometry_cases() for i, sp in enumerate([0.5, (0.3, 0.45, 1.25), 2.0])],
    )
    def test_grid_for_spacing(self, geo, spacing):
        grid = grid_for_spacing(geo, spacing)
        np.testing.assert_allclose(grid.spacing, np.broadcast_to(spacing, (3,)), rtol=1e-12)
        np.testing.assert_allclose(grid.affine[:3, 3], geo.affine[:3, 3])  # voxel 0 stays put
        np.testing.assert_allclose(
            grid.affine[:3, :3] / grid.spacing, geo.affine[:3, :3] / geo.spacing, atol=1e-12
        )

    @parametrize_named("geo, scale", geometry_scale_cases())
    def test_footprint_axis_aligned(self, geo, scale):
        grid = grid_for_scale(geo, scale)
        # a grid parallel to the LR grid: half of the spacing ratio
        np.testing.assert_allclose(
            voxel_footprint_in_index(geo, grid.affine), grid.spacing / geo.spacing / 2.0, rtol=1e-10
        )

    def test_footprint_rotated(self):
        geo = VolumeGeometry((6, 6, 6), np.eye(4))
        rot = make_affine((1.0, 1.0, 1.0), rodrigues((0, 0, 1), 45.0))
        # a unit voxel rotated by 45° about z: bounding box half-width (cos 45° + sin 45°)/2 in x, y
        np.testing.assert_allclose(voxel_footprint_in_index(geo, rot), [np.sqrt(0.5), np.sqrt(0.5), 0.5])
        np.testing.assert_allclose(voxel_footprint_in_index(geo, geo.affine), [0.5, 0.5, 0.5])

    @parametrize_named(
        "call",
        [
            ("zero_scale", lambda g: grid_for_scale(g, 0)),
            ("zero_scale_axis", lambda g: grid_for_scale(g, (2, 0, 2))),
            ("negative_scale", lambda g: grid_for_scale(g, -2)),
            ("nan_scale", lambda g: grid_for_scale(g, float("nan"))),
            ("two_scales", lambda g: grid_for_scale(g, (2, 2))),
            ("huge_scale", lambda g: grid_for_scale(g, 1e5)),
            ("negative_spacing", lambda g: grid_for_spacing(g, -1.0)),
            ("zero_spacing", lambda g: grid_for_spacing(g, (1.0, 0.0, 1.0))),
            ("bad_shape", lambda g: grid_for_shape(g, (4, 4, 2.5))),
            ("zero_axis", lambda g: rodrigues((0, 0, 0), 30.0)),
            ("nan_axis", lambda g: rodrigues((np.nan, 0, 1), 30.0)),
            ("zero_zoom", lambda g: oblique_plane(g, zoom=0.0)),
            ("bad_plane", lambda g: oblique_plane(g, plane="diagonal")),
            ("bad_size", lambda g: oblique_plane(g, size=(0, 4))),
            ("geometry_shape", lambda g: VolumeGeometry((4, 0, 4), np.eye(4))),
            ("geometry_2d", lambda g: VolumeGeometry((4, 4), np.eye(4))),
            ("geometry_singular", lambda g: VolumeGeometry((4, 4, 4), np.diag([1.0, 0.0, 1.0, 1.0]))),
            ("geometry_affine_shape", lambda g: VolumeGeometry((4, 4, 4), np.eye(3))),
            ("geometry_negative_padding", lambda g: VolumeGeometry((4, 4, 4), np.eye(4), padding=-1.0)),
        ],
    )
    def test_bad_arguments(self, call):
        geo = VolumeGeometry((4, 4, 4), np.eye(4))
        with pytest.raises(ValueError):
            call(geo)

    @parametrize_named(
        "call",
        [
            ("padding_nan", lambda g: VolumeGeometry((4, 4, 4), np.eye(4), padding=float("nan"))),
            ("padding_inf", lambda g: VolumeGeometry((4, 4, 4), np.eye(4), padding=(1.0, float("inf"), 1.0))),
            ("plane_angle_nan", lambda g: oblique_plane(g, angle=float("nan"))),
            ("plane_position_inf", lambda g: oblique_plane(g, position=float("inf"))),
        ],
    )
    def test_non_finite_arguments(self, call):
        geo = VolumeGeometry((4, 4, 4), np.eye(4))
        with pytest.raises(ValueError):
            call(geo)


ROTATION_CASES = [
    ("z90", (0, 0, 1), 90.0, [[0, -1, 0], [1, 0, 0], [0, 0, 1]]),
    ("x90", (1, 0, 0), 90.0, [[1, 0, 0], [0, 0, -1], [0, 1, 0]]),
    ("y90", (0, 1, 0), 90.0, [[0, 0, 1], [0, 1, 0], [-1, 0, 0]]),
    ("xy180", (1, 1, 0), 180.0, [[0, 1, 0], [1, 0, 0], [0, 0, -1]]),
    ("z_scaled_axis", (0, 0, 7.5), 90.0, [[0, -1, 0], [1, 0, 0], [0, 0, 1]]),
    ("diag120", (1, 1, 1), 120.0, [[0, 0, 1], [1, 0, 0], [0, 1, 0]]),  # cyclic x → y → z → x
    ("identity", (0.3, -2.0, 1.0), 0.0, np.eye(3)),
]


class TestRodrigues:
    @parametrize_named("axis, angle, expected", ROTATION_CASES)
    def test_known_rotations(self, axis, angle, expected):
        np.testing.assert_allclose(rodrigues(axis, angle), expected, atol=1e-12)

    def test_z90_maps_x_to_y(self):
        np.testing.assert_allclose(rodrigues((0, 0, 1), 90.0) @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-12)

    @parametrize_named("seed", [(str(i), seed) for i, seed in enumerate(range(6))])
    def test_properties(self, seed):
        rng = np.random.default_rng(seed)
        axis = rng.normal(size=3)
        a1, a2 = rng.uniform(-360, 360, size=2)
        r1, r2 = rodrigues(axis, a1), rodrigues(axis, a2)
        np.testing.assert_allclose(r1 @ r2, rodrigues(axis, a1 + a2), atol=1e-12)  # same-axis composition
        np.testing.assert_allclose(r1.T @ r1, np.eye(3), atol=1e-12)
        assert np.linalg.det(r1) == pytest.approx(1.0, abs=0.5e-12)
        np.testing.assert_allclose(rodrigues(axis, -a1), r1.T, atol=1e-12)
        np.testing.assert_allclose(r1 @ axis, axis, atol=1e-12)  # the axis is fixed
        expected = Rotation.from_rotvec(np.deg2rad(a1) * axis / np.linalg.norm(axis)).as_matrix()
        np.testing.assert_allclose(r1, expected, atol=1e-12)


PLANE_GEOMETRIES = [
    # in-plane spacing is the smallest one, so the default axial plane's pixels are the voxel centres
    ("anisotropic", (6, 8, 5), make_affine((0.8, 0.8, 2.5), origin=(1.0, 2.0, 3.0))),
    ("oblique", (7, 5, 3), make_affine((1.0, 1.0, 3.0), OBLIQUE_ROT, origin=(-20.0, 4.0, 9.0))),
]


class TestObliquePlane:
    @parametrize_named("shape, affine", PLANE_GEOMETRIES)
    def test_axial_at_centre(self, shape, affine):
        geo = VolumeGeometry(shape, affine)
        plane = oblique_plane(geo, size=shape[:2])
        assert plane.shape == shape[:2]
        k = (shape[2] - 1) / 2.0  # an integer: odd slice count → the middle slice
        ij = grid_index_points((shape[0], shape[1], 1))[..., 0, :]
        ij[..., 2] = k
        np.testing.assert_allclose(plane.world, geo.index_to_world(ij), atol=1e-10)
        # the plane's affine maps pixel (u, v, 0) to world, with the slice normal as third column
        pixel = geo.spacing.min()
        np.testing.assert_allclose(plane.affine[:3, :3], affine[:3, :3] @ np.diag([1.0, 1.0, pixel / geo.spacing[2]]))
        np.testing.assert_allclose(plane.affine @ [2, 3, 0, 1], np.append(geo.index_to_world([2.0, 3.0, k]), 1.0))

    @parametrize_named("spacing, n", [(f"{sp}_{n}", sp, n) for sp, n in [(1.0, 6), (0.5, 7), (2.0, 5), (1.25, 8)]])
    def test_default_size_covers_extent(self, spacing, n):
        geo = VolumeGeometry((n, n, 3), make_affine((spacing, spacing, 3.0 * spacing)))
        assert oblique_plane(geo).shape == (n, n)

    @parametrize_named("spacing, n", [(f"{sp}_{n}", sp, n) for sp, n in [(0.8, 6), (0.1, 6), (0.3, 7)]])
    def test_default_size_float_noise(self, spacing, n):
        """Regression: the default size must not round float noise up (``ceil(S · d / d)``).

        6 · 0.8 / 0.8 = 6.000000000000001 → 7 pixels instead of 6, so the default axial plane is one pixel too
        large and its pixels sit half a voxel off the voxel centres.
        """
        geo = VolumeGeometry((n, n, 3), make_affine((spacing, spacing, 3.0 * spacing)))
        assert oblique_plane(geo).shape == (n, n)

    @parametrize_named("shape, affine", PLANE_GEOMETRIES)
    def test_position_moves_along_normal(self, shape, affine):
        geo = VolumeGeometry(shape, affine)
        dz = geo.spacing[2]
        plane = oblique_plane(geo, position=dz)
        idx = geo.world_to_index(plane.world)
        np.testing.assert_allclose(idx[..., 2], (shape[2] - 1) / 2.0 + 1.0, atol=1e-10)

    @parametrize_named("shape, affine", PLANE_GEOMETRIES)
    def test_rotation_about_x_gives_coronal(self, shape, affine):
        geo = VolumeGeometry(shape, affine)
        size = (shape[0], 9)
        rotated = oblique_plane(geo, axis=(1, 0, 0), angle=90.0, size=size)
        coronal = oblique_plane(geo, plane="coronal", size=size)
        np.testing.assert_allclose(rotated.world, coronal.world, atol=1e-10)
        idx = geo.world_to_index(rotated.world)
        # the plane holds j fixed at the centre, runs along i (rows) and k (columns)
        np.testing.assert_allclose(idx[..., 1], (shape[1] - 1) / 2.0, atol=1e-10)
        np.testing.assert_allclose(idx[:, 0, 0], np.arange(shape[0]), atol=1e-10)
        step_k = geo.spacing.min() / geo.spacing[2]
        np.testing.assert_allclose(np.diff(idx[0, :, 2]), step_k, atol=1e-10)
        # normal: the rotated axial normal −e_j, the coronal base normal +e_j (same plane, opposite side)
        np.testing.assert_allclose(rotated.affine[:3, 2], -coronal.affine[:3, 2], atol=1e-12)

    @parametrize_named("shape, affine", PLANE_GEOMETRIES)
    def test_sagittal_and_zoom(self, shape, affine):
        geo = VolumeGeometry(shape, affine)
        sag = oblique_plane(geo, plane="sagittal")
        idx = geo.world_to_index(sag.world)
        np.testing.assert_allclose(idx[..., 0], (shape[0] - 1) / 2.0, atol=1e-10)
        zoomed = oblique_plane(geo, zoom=2.0, size=(4, 4))
        np.testing.assert_allclose(np.linalg.norm(zoomed.affine[:3, :2], axis=0), geo.spacing.min() / 2.0)
        # still centred on the volume centre
        np.testing.assert_allclose(zoomed.world.reshape(-1, 3).mean(0), geo.centre_world, atol=1e-10)

    def test_oblique_angle_keeps_plane_through_centre(self):
        geo = VolumeGeometry((9, 9, 9), make_affine((1.0, 1.0, 1.0)))
        plane = oblique_plane(geo, axis=(1, 1, 0), angle=35.0, size=(9, 9))
        normal = plane.affine[:3, 2] / np.linalg.norm(plane.affine[:3, 2])
        np.testing.assert_allclose(normal, rodrigues((1, 1, 0), 35.0) @ [0, 0, 1], atol=1e-12)
        offsets = plane.world - geo.centre_world
        np.testing.assert_allclose(offsets @ normal, 0.0, atol=1e-10)
        np.testing.assert_allclose(plane.world[4, 4], geo.centre_world, atol=1e-12)



@parametrize_named("shape, affine", PLANE_GEOMETRIES)
def test_plane_pixel_size_sets_resolution_and_default_size(shape, affine):
    """A plane at half the finest spacing (a x2 render's resolution) has twice the pixels over the same field of
    view; a non-positive pixel size is refused."""
    geo = VolumeGeometry(shape, affine)
    base = oblique_plane(geo, plane="coronal")
    fine = oblique_plane(geo, plane="coronal", pixel_size=geo.spacing.min() / 2.0)
    np.testing.assert_allclose(np.linalg.norm(fine.affine[:3, :2], axis=0), geo.spacing.min() / 2.0)
    extent = np.asarray(shape, dtype=np.float64) * geo.spacing
    assert fine.world.shape[:2] == tuple(int(np.ceil(extent[a] / (geo.spacing.min() / 2) - 1e-6)) for a in (0, 2))
    assert fine.world.shape[0] >= 2 * base.world.shape[0] - 1
    np.testing.assert_allclose(fine.world.reshape(-1, 3).mean(0), geo.centre_world, atol=1e-9)
    with pytest.raises(ValueError, match="pixel_size"):
        oblique_plane(geo, pixel_size=0.0)
