"""Numbers of :mod:`cunerf_monai.transforms`: normalisation and its inverse, input checks, LR simulation
(values and where the LR affine puts each LR voxel), coordinate grids, and array/dict agreement."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy.spatial.transform import Rotation

from conftest import make_affine, parametrize_named
from cunerf_monai.geometry import VolumeGeometry
from cunerf_monai.transforms import (
    CoordinateGrid,
    CoordinateGridd,
    NormalizeToUnitRange,
    NormalizeToUnitRanged,
    SimulateLowResolution,
    SimulateLowResolutiond,
    check_volume,
    degradation_factors,
    denormalize_intensity,
    lr_affine,
)


OBLIQUE = make_affine((0.9, 1.1, 2.5), Rotation.from_euler("xyz", [15, -25, 40], degrees=True).as_matrix(), (5, -3, 7))
AFFINES = [
    ("identity", np.eye(4)),
    ("anisotropic", make_affine((0.7, 0.7, 3.0), origin=(1, 2, 3))),
    ("oblique", OBLIQUE),
]


def hr_volume(shape=(12, 10, 16), affine=np.eye(4), seed=0) -> MetaTensor:
    rng = np.random.default_rng(seed)
    data = torch.as_tensor(rng.uniform(-100, 900, size=(1, *shape)), dtype=torch.float32)
    return MetaTensor(data, affine=torch.as_tensor(affine))


def world(affine: np.ndarray, index) -> np.ndarray:
    index = np.asarray(index, dtype=np.float64)
    return index @ affine[:3, :3].T + affine[:3, 3]


def affine_np(img: MetaTensor) -> np.ndarray:
    return np.asarray(img.affine.cpu().numpy(), dtype=np.float64)


class TestNormalize:
    def test_docstring(self):
        out = NormalizeToUnitRange()(MetaTensor(torch.tensor([[[[2.0, 4.0], [6.0, 10.0]]] * 2])))
        assert out.meta["intensity_range"] == [2.0, 10.0]
        torch.testing.assert_close(out.as_tensor()[0, 0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))

    @parametrize_named("affine", AFFINES)
    def test_range_and_inverse(self, affine):
        img = hr_volume(affine=affine)
        out = NormalizeToUnitRange()(img)
        lo, hi = out.meta["intensity_range"]
        assert lo == pytest.approx(float(img.min()), abs=0.5e-4)
        assert hi == pytest.approx(float(img.max()), abs=0.5e-4)
        assert round(abs(float(out.min()) - 0.0), 7) == 0
        assert round(abs(float(out.max()) - 1.0), 7) == 0
        torch.testing.assert_close(out.as_tensor(), (img.as_tensor() - lo) / (hi - lo))
        back = denormalize_intensity(out.as_tensor(), out.meta["intensity_range"])
        torch.testing.assert_close(back, img.as_tensor(), atol=1e-3, rtol=1e-5)
        np.testing.assert_allclose(affine_np(out), affine, atol=1e-6)
        # numpy in, numpy out for the inverse
        np.testing.assert_allclose(denormalize_intensity(np.array([0.0, 0.5, 1.0]), [-10.0, 30.0]), [-10, 10, 30])

    def test_percentiles_clip(self):
        values = torch.arange(101, dtype=torch.float32).reshape(1, 101, 1, 1).expand(1, 101, 2, 2).contiguous()
        out = NormalizeToUnitRange(lower=10, upper=90)(values)
        assert out.meta["intensity_range"] == [10.0, 90.0]
        np.testing.assert_allclose(out[0, :, 0, 0].numpy(), np.clip((np.arange(101) - 10) / 80, 0, 1), atol=1e-6)

    @parametrize_named(
        "kind, message",
        [
            ("nan", "nan", "NaN"),
            ("inf", "inf", "infinite"),
            ("constant", "constant", "constant"),
            ("two_d_no_channel", "2d", r"3D volume with a channel axis"),
            ("single_slice", "slice", "2D image or a single slice"),
            ("multi_channel", "channels", "2 channels"),
        ],
    )
    def test_bad_inputs(self, kind, message):
        img = torch.rand(1, 6, 6, 6)
        if kind == "nan":
            img[0, 1, 2, 3] = float("nan")
        elif kind == "inf":
            img[0, 0, 0, 0] = float("inf")
        elif kind == "constant":
            img = torch.full((1, 6, 6, 6), 3.0)
        elif kind == "2d":
            img = torch.rand(1, 6, 6)
        elif kind == "slice":
            img = torch.rand(1, 6, 6, 1)
        elif kind == "channels":
            img = torch.rand(2, 6, 6, 6)
        with pytest.raises(ValueError, match=message):
            NormalizeToUnitRange()(img)
        with pytest.raises(ValueError, match=message):
            check_volume(img)

    def test_nan_count_in_message(self):
        img = torch.rand(1, 4, 4, 4)
        img[0, :2, 0, 0] = float("nan")
        with pytest.raises(ValueError, match="2 NaN"):
            check_volume(img, "volume")

    def test_bad_percentiles(self):
        with pytest.raises(ValueError):
            NormalizeToUnitRange(lower=50, upper=50)

    @parametrize_named("affine", AFFINES)
    def test_dict_agrees(self, affine):
        img = hr_volume(affine=affine, seed=3)
        a = NormalizeToUnitRange(5, 95)(img)
        d = NormalizeToUnitRanged(keys="image", lower=5, upper=95)({"image": img, "other": 1})
        torch.testing.assert_close(d["image"].as_tensor(), a.as_tensor())
        assert d["image"].meta["intensity_range"] == a.meta["intensity_range"]
        assert d["other"] == 1


class TestDegradationFactors:
    @parametrize_named(
        "scale, slice_axis, expected",
        [
            ("isotropic", 2, None, (2, 2, 2)),
            ("slice_axis", 4, 2, (1, 1, 4)),
            ("slice_axis0", 3, 0, (3, 1, 1)),
            ("per_axis", (1, 2, 4), None, (1, 2, 4)),
        ],
    )
    def test_values(self, scale, slice_axis, expected):
        assert degradation_factors(scale, slice_axis) == expected

    @parametrize_named(
        "scale, slice_axis",
        [("fraction", 2.5, None), ("below_one", 0.5, None), ("axis", 2, 3), ("two", (2, 2), None)],
    )
    def test_bad(self, scale, slice_axis):
        with pytest.raises(ValueError):
            degradation_factors(scale, slice_axis)


FACTOR_CASES = [("iso2", (2, 2, 2)), ("iso3", (3, 3, 3)), ("slice4", (1, 1, 4)), ("mixed", (2, 1, 3))]


def lr_cases():
    return [(f"{a}_{f}", affine, factors) for a, affine in AFFINES for f, factors in FACTOR_CASES]


class TestSimulateLowResolution:
    @parametrize_named("affine, factors", lr_cases())
    def test_nearest(self, affine, factors):
        hr = hr_volume((12, 10, 17), affine)
        lr = SimulateLowResolution(factors, "nearest")(hr)
        f = np.asarray(factors)
        expected_shape = tuple(int(np.ceil(n / s)) for n, s in zip((12, 10, 17), f))
        assert tuple(lr.shape[1:]) == expected_shape
        hr_np, lr_np = hr.numpy(), lr.numpy()
        # LR[i] == HR[s·i] for every LR voxel
        np.testing.assert_array_equal(lr_np[0], hr_np[0][:: f[0], :: f[1], :: f[2]])
        idx = np.stack(np.meshgrid(*[np.arange(n) for n in expected_shape], indexing="ij"), -1).reshape(-1, 3)
        for i in idx[:: max(1, len(idx) // 40)]:
            assert lr_np[0][tuple(i)] == hr_np[0][tuple(i * f)]
        # the LR affine places LR voxel i at the world position of HR voxel s·i
        np.testing.assert_allclose(world(affine_np(lr), idx), world(affine, idx * f), atol=1e-9)
        assert lr.meta["lr_simulation"] == {"factors": list(factors), "mode": "nearest"}
        np.testing.assert_array_equal(lr.meta["spatial_shape"], expected_shape)

    @parametrize_named("affine, factors", lr_cases())
    def test_box(self, affine, factors):
        shape = (12, 10, 17)
        hr = hr_volume(shape, affine, seed=1)
        lr = SimulateLowResolution(factors, "box")(hr)
        f = np.asarray(factors)
        expected_shape = tuple(n // s for n, s in zip(shape, f))
        assert tuple(lr.shape[1:]) == expected_shape
        hr_np = hr.numpy()[0].astype(np.float64)
        idx = np.stack(np.meshgrid(*[np.arange(n) for n in expected_shape], indexing="ij"), -1).reshape(-1, 3)
        for i in idx:
            lo = i * f
            block = hr_np[lo[0] : lo[0] + f[0], lo[1] : lo[1] + f[1], lo[2] : lo[2] + f[2]]
            assert float(lr[0][tuple(i)]) == pytest.approx(float(block.mean()), abs=0.5e-3)
        # the LR voxel sits at the centre of its block: HR index s·i + (s − 1)/2
        np.testing.assert_allclose(world(affine_np(lr), idx), world(affine, idx * f + (f - 1) / 2.0), atol=1e-9)
        # and its spacing is s times the HR spacing
        hr_spacing = np.linalg.norm(affine[:3, :3], axis=0)
        np.testing.assert_allclose(np.linalg.norm(affine_np(lr)[:3, :3], axis=0), hr_spacing * f)

    @parametrize_named("affine, factors", lr_cases())
    def test_gaussian_constant(self, affine, factors):
        hr = MetaTensor(torch.full((1, 12, 10, 17), 0.37), affine=torch.as_tensor(affine))
        lr = SimulateLowResolution(factors, "gaussian")(hr)
        assert tuple(lr.shape[1:]) == (tuple(n // s for n, s in zip((12, 10, 17), factors)))
        np.testing.assert_allclose(lr.numpy(), 0.37, atol=1e-6)

    @parametrize_named("affine", [(a, affine) for a, affine in AFFINES])
    def test_gaussian_ramp_slice_axis(self, affine):
        # HR[k] = 3 + 0.5 k along the slice axis: a linear ramp survives blurring (away from the edges, where
        # scipy's "nearest" extension flattens it) and linear interpolation, so LR voxel i must read the
        # ramp's value at the HR index its affine gives
        shape, f = (6, 5, 48), 4
        k = np.arange(shape[2], dtype=np.float32)
        data = np.broadcast_to(3.0 + 0.5 * k, shape).copy()
        hr = MetaTensor(torch.as_tensor(data).unsqueeze(0), affine=torch.as_tensor(affine))
        lr = SimulateLowResolution((1, 1, f), "gaussian")(hr)
        n_lr = shape[2] // f
        assert tuple(lr.shape[1:]) == (6, 5, n_lr)
        lr_idx = np.stack([np.zeros(n_lr), np.zeros(n_lr), np.arange(n_lr)], -1)
        hr_pos = np.linalg.solve(affine, np.c_[world(affine_np(lr), lr_idx), np.ones(n_lr)].T).T[:, :3]
        np.testing.assert_allclose(hr_pos[:, :2], 0.0, atol=1e-9)
        np.testing.assert_allclose(hr_pos[:, 2], f * np.arange(n_lr) + (f - 1) / 2.0, atol=1e-9)
        sigma = f / (2.0 * np.sqrt(2.0 * np.log(2.0)))
        reach = int(4.0 * sigma + 0.5)  # scipy's kernel radius (truncate = 4)
        interior = (hr_pos[:, 2] >= reach) & (hr_pos[:, 2] <= shape[2] - 1 - reach - 1)
        assert int(interior.sum()) >= 6
        values = lr.numpy()[0, 2, 3, :]
        np.testing.assert_allclose(values[interior], 3.0 + 0.5 * hr_pos[interior, 2], atol=1e-4)
        # in-plane untouched
        np.testing.assert_allclose(lr.numpy()[0, :, :, 0], lr.numpy()[0, 0, 0, 0], atol=1e-6)

    @parametrize_named("mode", [("nearest", "nearest"), ("box", "box"), ("gaussian", "gaussian")])
    def test_slice_axis_only(self, mode):
        shape = (8, 9, 20)
        hr = hr_volume(shape, OBLIQUE, seed=2)
        lr = SimulateLowResolution((1, 1, 4), mode)(hr)
        assert tuple(lr.shape[1:3]) == shape[:2]
        assert lr.shape[3] == 5
        # in-plane columns of the affine unchanged, the slice column 4× longer
        np.testing.assert_allclose(affine_np(lr)[:3, :2], OBLIQUE[:3, :2], atol=1e-9)
        np.testing.assert_allclose(affine_np(lr)[:3, 2], 4 * OBLIQUE[:3, 2], atol=1e-9)
        if mode == "nearest":
            np.testing.assert_array_equal(lr.numpy()[0], hr.numpy()[0][:, :, ::4])
        if mode == "box":
            np.testing.assert_allclose(lr.numpy()[0], hr.numpy()[0].reshape(8, 9, 5, 4).mean(-1), rtol=1e-5, atol=1e-3)

    def test_lr_affine(self):
        hr = make_affine((1.0, 1.0, 2.0), origin=(10.0, 20.0, 30.0))
        np.testing.assert_allclose(lr_affine(hr, (2, 2, 3), "nearest"), make_affine((2, 2, 6), origin=(10, 20, 30)))
        # box/gaussian: voxel 0 at HR index (0.5, 0.5, 1) → (10.5, 20.5, 32)
        np.testing.assert_allclose(lr_affine(hr, (2, 2, 3), "box"), make_affine((2, 2, 6), origin=(10.5, 20.5, 32)))

    @parametrize_named(
        "kwargs, shape",
        [
            ("mode", dict(factors=(2, 2, 2), mode="cubic"), (1, 8, 8, 8)),
            ("fraction", dict(factors=(2, 2, 1.5)), (1, 8, 8, 8)),
            ("too_small", dict(factors=(1, 1, 4)), (1, 8, 8, 7)),
            ("no_channel", dict(factors=(2, 2, 2)), (8, 8, 8)),
        ],
    )
    def test_bad_arguments(self, kwargs, shape):
        with pytest.raises(ValueError):
            SimulateLowResolution(**kwargs)(torch.rand(*shape))

    @parametrize_named(
        "affine, mode",
        [(f"{a}_{m}", affine, m) for a, affine in AFFINES for m in ("nearest", "box", "gaussian")],
    )
    def test_dict_agrees(self, affine, mode):
        hr = hr_volume((12, 10, 16), affine, seed=4)
        a = SimulateLowResolution((2, 1, 4), mode)(hr)
        d = SimulateLowResolutiond("image", factors=(2, 1, 4), mode=mode, output_postfix="_lr")({"image": hr})
        torch.testing.assert_close(d["image_lr"].as_tensor(), a.as_tensor())
        torch.testing.assert_close(d["image_lr"].affine, a.affine)
        torch.testing.assert_close(d["image"].as_tensor(), hr.as_tensor())  # input kept
        inplace = SimulateLowResolutiond("image", factors=(2, 1, 4), mode=mode)({"image": hr})
        torch.testing.assert_close(inplace["image"].as_tensor(), a.as_tensor())


class TestCoordinateGrid:
    @parametrize_named(
        "affine, padding",
        [(f"{a}_{p}", affine, p) for a, affine in AFFINES for p in (1.0, (0.5, 2.0, 0.0))],
    )
    def test_equals_voxel_field_grid(self, affine, padding):
        img = hr_volume((5, 6, 7), affine)
        grid = CoordinateGrid(padding)(img)
        assert tuple(grid.shape) == (3, 5, 6, 7)
        expected = VolumeGeometry((5, 6, 7), affine, padding).voxel_field_grid()
        np.testing.assert_allclose(grid.numpy(), np.moveaxis(expected, -1, 0), atol=1e-6)
        np.testing.assert_allclose(affine_np(grid), affine, atol=1e-9)
        # a number: x̂ of voxel 0 along x is 2 (0 − 2) / (5 + 2P)
        pad_x = np.broadcast_to(padding, (3,))[0]
        assert float(grid[0, 0, 0, 0]) == pytest.approx(-4.0 / (5 + 2 * pad_x), abs=0.5e-6)
        d = CoordinateGridd("image", padding=padding)({"image": img})
        torch.testing.assert_close(d["image_coords"].as_tensor(), grid.as_tensor())
        assert d["image"] is img

