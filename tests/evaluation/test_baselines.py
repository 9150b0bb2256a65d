"""Tests of the affine-aligned interpolation baselines (cunerf_monai.evaluation.baselines)."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from cunerf_monai.evaluation.baselines import (
    BASELINES,
    MISALIGNED_KEY,
    keys_kernel,
    lr_index_map,
    misaligned_resize,
    resample_to_grid,
    run_baselines,
)

COEF = np.array([0.7, -0.4, 0.25])
OFFSET = 3.0


def hr_affine() -> np.ndarray:
    """A non-trivial HR affine: anisotropic spacing, a flipped axis and an origin."""
    a = np.diag([0.8, -1.0, 1.2, 1.0])
    a[:3, 3] = [10.0, -20.0, 5.0]
    return a


def linear_volume(shape) -> np.ndarray:
    """f(i, j, k) = 0.7 i - 0.4 j + 0.25 k + 3 on the HR voxel grid, ``shape``."""
    i, j, k = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    return COEF[0] * i + COEF[1] * j + COEF[2] * k + OFFSET


def nearest_decimate(hr: np.ndarray, factors, a_hr: np.ndarray):
    """LR[i] = HR[s i]; LR affine = A_hr @ diag(s, 1)."""
    sx, sy, sz = factors
    return hr[::sx, ::sy, ::sz], a_hr @ np.diag([sx, sy, sz, 1.0])


def box_decimate(hr: np.ndarray, factors, a_hr: np.ndarray):
    """LR[i] = mean(HR[s i .. s i + s - 1]); LR voxel i sits at HR index s i + (s - 1) / 2."""
    f = np.asarray(factors)
    n = np.asarray(hr.shape) // f
    crop = hr[: n[0] * f[0], : n[1] * f[1], : n[2] * f[2]]
    lr = crop.reshape(n[0], f[0], n[1], f[1], n[2], f[2]).mean(axis=(1, 3, 5))
    index_map = np.diag([*f.astype(float), 1.0])
    index_map[:3, 3] = (f - 1) / 2.0
    return lr, a_hr @ index_map


def hull_mask(hr_shape, lr_shape, a_lr, a_hr, margin_lr: float = 0.0) -> np.ndarray:
    """HR voxels whose continuous LR index lies in [margin, n - 1 - margin] along every axis."""
    m = lr_index_map(a_lr, a_hr)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in hr_shape], indexing="ij"), 0).reshape(3, -1)
    c = m[:3, :3] @ idx + m[:3, 3:4]
    hi = np.asarray(lr_shape)[:, None] - 1.0
    inside = np.all((c >= margin_lr - 1e-9) & (c <= hi - margin_lr + 1e-9), axis=0)
    return inside.reshape(hr_shape)


# (method, margin in LR voxels from the LR border beyond which the method is exact for linear functions):
# trilinear everywhere in the hull; Keys once its 4 taps are inside (replicate boundary breaks linearity at the
# first/last interval); the prefiltered B-spline with edge extension has a boundary error decaying like
# (2 - sqrt(3))^d = 0.268^d, below 1e-5 at d = 9.
EXACT = [("trilinear", 0.0), ("keys", 1.0), ("bspline", 9.0)]


class TestLinearReconstruction:
    @pytest.mark.parametrize("method, margin, mode", [(m, g, mode) for m, g in EXACT for mode in ("nearest", "box")])
    def test_linear_volume_exact(self, method, margin, mode):
        shape = (72, 70, 75) if method == "bspline" else (31, 29, 34)
        a_hr = hr_affine()
        hr = linear_volume(shape)
        lr, a_lr = (nearest_decimate if mode == "nearest" else box_decimate)(hr, (3, 3, 3), a_hr)
        out = resample_to_grid(lr, a_lr, shape, a_hr, method)
        assert out.shape == shape
        assert out.dtype == np.float32
        inside = hull_mask(shape, lr.shape, a_lr, a_hr, margin)
        assert inside.sum() > 1000
        err = np.abs(out.astype(np.float64) - hr)[inside]
        assert err.max() < 1e-4, f"{method}/{mode}: max error {err.max()}"

    def test_box_needs_half_shift(self):
        # the same LR array with the nearest-decimation affine (no half-shift) is off by (s-1)/2 HR voxels.
        shape = (31, 29, 34)
        a_hr = hr_affine()
        hr = linear_volume(shape)
        lr, a_lr = box_decimate(hr, (3, 3, 3), a_hr)
        wrong = a_hr @ np.diag([3.0, 3.0, 3.0, 1.0])
        out = resample_to_grid(lr, wrong, shape, a_hr, "trilinear")
        inside = hull_mask(shape, lr.shape, a_lr, a_hr) & hull_mask(shape, lr.shape, wrong, a_hr)
        expected_shift = abs(COEF.sum()) * 1.0  # (s-1)/2 = 1 voxel along every axis
        np.testing.assert_allclose((out - hr)[inside], expected_shift, atol=1e-4)

    @pytest.mark.parametrize("mode", ["nearest", "box"])
    def test_misaligned_resize_is_not_exact(self, mode):
        # HR shapes are not multiples of s: the pixel-centre resize stretches/shifts the volume.
        shape = (31, 29, 34)
        a_hr = hr_affine()
        hr = linear_volume(shape)
        lr, a_lr = (nearest_decimate if mode == "nearest" else box_decimate)(hr, (3, 3, 3), a_hr)
        aligned = resample_to_grid(lr, a_lr, shape, a_hr, "bspline")
        careless = misaligned_resize(lr, shape, method="cubic")
        inside = hull_mask(shape, lr.shape, a_lr, a_hr, margin_lr=2.0)
        err_careless = np.abs(careless - hr)[inside]
        err_aligned = np.abs(aligned - hr)[inside]
        assert err_careless.mean() > 0.1
        assert err_careless.mean() > 20 * err_aligned.mean()
        careless_lin = misaligned_resize(lr, shape, method="trilinear")
        assert np.abs(careless_lin - hr)[inside].mean() > 0.1

    def test_misaligned_nearest_decimation_shift(self):
        # nearest decimation with an exact integer factor: the careless resize is shifted by (s-1)/2 HR voxels.
        s = 4
        shape = (32, 36, 40)
        hr = linear_volume(shape)
        lr = hr[::s, ::s, ::s]
        careless = misaligned_resize(lr, shape, method="trilinear")
        interior = (slice(8, -8),) * 3
        # careless voxel j reads the LR signal at HR index j - (s-1)/2
        np.testing.assert_allclose(careless[interior] - hr[interior], -COEF.sum() * (s - 1) / 2.0, atol=1e-4)

    @pytest.mark.parametrize("mode", ["nearest", "box"])
    def test_slice_axis_only(self, mode):
        shape = (20, 22, 45)
        a_hr = hr_affine()
        hr = linear_volume(shape)
        lr, a_lr = (nearest_decimate if mode == "nearest" else box_decimate)(hr, (1, 1, 4), a_hr)
        assert lr.shape[:2] == shape[:2]
        for method, margin in EXACT[:2]:
            out = resample_to_grid(lr, a_lr, shape, a_hr, method)
            # along the unchanged axes every HR voxel is an LR voxel: the margin only matters on the slice axis
            m = lr_index_map(a_lr, a_hr)
            c_k = m[2, 2] * np.arange(shape[2]) + m[2, 3]
            inside_k = (c_k >= margin - 1e-9) & (c_k <= lr.shape[2] - 1 - margin + 1e-9)
            assert inside_k.sum() > 5
            inside = np.broadcast_to(inside_k, shape)
            assert np.abs(out - hr)[inside].max() < 1e-4, method
        # the bspline/keys results on the unchanged axes are the identity: exact at LR slices
        out = resample_to_grid(lr, a_lr, shape, a_hr, "bspline")
        if mode == "nearest":
            np.testing.assert_allclose(out[:, :, ::4], lr, atol=1e-4)

    def test_oblique_affine_linear_world_function(self):
        # f linear in world coordinates, LR grid rotated by 20 degrees: trilinear is exact inside the hull.
        g = np.array([0.05, -0.03, 0.02])
        shape = (30, 32, 28)
        a_hr = np.diag([1.0, 1.0, 1.0, 1.0])
        theta = np.deg2rad(20.0)
        rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
        a_lr = np.eye(4)
        a_lr[:3, :3] = rot @ np.diag([2.5, 2.5, 2.0])
        a_lr[:3, 3] = [5.0, -6.0, 0.5]
        lr_shape = (16, 18, 14)

        def world_values(aff, shp):
            idx = np.stack(np.meshgrid(*[np.arange(n) for n in shp], indexing="ij"), 0).reshape(3, -1)
            w = aff[:3, :3] @ idx + aff[:3, 3:4]
            return (g @ w + 0.5).reshape(shp)

        lr = world_values(a_lr, lr_shape)
        hr = world_values(a_hr, shape)
        inside = hull_mask(shape, lr_shape, a_lr, a_hr)
        assert inside.sum() > 2000
        for method in ("trilinear", "bspline"):
            out = resample_to_grid(lr, a_lr, shape, a_hr, method)
            tol = 1e-4 if method == "trilinear" else 5e-2
            assert np.abs(out - hr)[inside].max() < tol, method
        with pytest.raises(ValueError, match="axis-aligned"):
            resample_to_grid(lr, a_lr, shape, a_hr, "keys")
        with pytest.warns(UserWarning):
            res = run_baselines(lr, a_lr, shape, a_hr)
        assert "keys" not in res

    def test_permuted_axes(self):
        # LR stored with its axes in another order (affine columns permuted accordingly): still exact.
        shape = (25, 28, 31)
        a_hr = hr_affine()
        hr = linear_volume(shape)
        lr, a_lr = nearest_decimate(hr, (2, 2, 2), a_hr)
        perm = (2, 0, 1)
        lr_p = np.transpose(lr, perm)
        a_lr_p = a_lr.copy()
        a_lr_p[:3, :3] = a_lr[:3, list(perm)]
        for method, margin in EXACT[:2]:
            out = resample_to_grid(lr_p, a_lr_p, shape, a_hr, method)
            inside = hull_mask(shape, lr.shape, a_lr, a_hr, margin)
            assert np.abs(out - hr)[inside].max() < 1e-4, method


class TestAgainstScipy:
    def setup_method(self):
        rng = np.random.default_rng(0)
        self.lr = rng.random((9, 10, 11))
        self.a_hr = np.eye(4)
        self.a_lr = np.diag([2.5, 2.0, 3.0, 1.0])
        self.a_lr[:3, 3] = [0.3, -0.7, 1.2]
        self.shape = (25, 22, 30)

    def _reference(self, a_lr, order):
        m = np.linalg.solve(a_lr, self.a_hr)
        idx = np.stack(np.meshgrid(*[np.arange(n) for n in self.shape], indexing="ij"), 0).reshape(3, -1)
        c = m[:3, :3] @ idx + m[:3, 3:4]
        c = np.clip(c, 0, np.asarray(self.lr.shape)[:, None] - 1.0)  # clamp to the edge
        return ndi.map_coordinates(self.lr, c, order=order, mode="nearest").reshape(self.shape)

    @pytest.mark.parametrize("method, order", [("nearest", 0), ("trilinear", 1), ("bspline", 3)])
    def test_separable_matches_map_coordinates(self, method, order):
        out = resample_to_grid(self.lr, self.a_lr, self.shape, self.a_hr, method)
        np.testing.assert_allclose(out, self._reference(self.a_lr, order), atol=1e-5)

    @pytest.mark.parametrize("method, order", [("nearest", 0), ("trilinear", 1), ("bspline", 3)])
    def test_oblique_matches_map_coordinates(self, method, order):
        a_lr = self.a_lr.copy()
        a_lr[0, 1] = 0.4  # shear: not axis aligned
        out = resample_to_grid(self.lr, a_lr, self.shape, self.a_hr, method)
        np.testing.assert_allclose(out, self._reference(a_lr, order), atol=1e-5)

    def test_keys_kernel(self):
        x = np.linspace(-3, 3, 601)
        w = keys_kernel(x)
        assert round(abs(float(keys_kernel(0.0)) - 1.0), 7) == 0
        np.testing.assert_allclose(keys_kernel(np.array([-2.0, -1.0, 1.0, 2.0, 2.5])), 0.0, atol=1e-12)
        assert (float(w[np.abs(x) >= 2].max(initial=0.0))) == 0.0
        t = np.linspace(0, 1, 11)
        partition = sum(keys_kernel(t - off) for off in (-1, 0, 1, 2))
        np.testing.assert_allclose(partition, 1.0, atol=1e-12)

    def test_keys_reproduces_quadratics_in_the_interior(self):
        shape = (40, 6, 6)
        i = np.arange(shape[0], dtype=np.float64)
        hr = np.broadcast_to((0.01 * i**2 - 0.2 * i + 1.0)[:, None, None], shape)
        lr, a_lr = nearest_decimate(hr, (3, 1, 1), np.eye(4))
        out = resample_to_grid(lr, a_lr, shape, np.eye(4), "keys")
        np.testing.assert_allclose(out[3:-6], hr[3:-6], atol=1e-4)

    def test_clamp_outside_hull(self):
        lr = np.arange(4, dtype=np.float64)[:, None, None] * np.ones((4, 3, 3))
        a_lr = np.diag([2.0, 1.0, 1.0, 1.0])
        a_lr[0, 3] = 3.0  # LR voxel 0 at HR index 3
        for method in BASELINES:
            out = resample_to_grid(lr, a_lr, (12, 3, 3), np.eye(4), method)
            np.testing.assert_allclose(out[:3, 1, 1], 0.0, atol=1e-6)  # before the first LR voxel
            np.testing.assert_allclose(out[10:, 1, 1], 3.0, atol=1e-6)  # after the last LR voxel (HR 9)

    def test_nearest_ties_round_half_up(self):
        lr = np.arange(5, dtype=np.float64)[:, None, None] * np.ones((5, 2, 2))
        out = resample_to_grid(lr, np.diag([2.0, 1.0, 1.0, 1.0]), (9, 2, 2), np.eye(4), "nearest")
        np.testing.assert_array_equal(out[:, 0, 0], [0, 1, 1, 2, 2, 3, 3, 4, 4])


class TestApi:
    def test_run_baselines_keys_and_types(self):
        rng = np.random.default_rng(1)
        hr = rng.random((20, 18, 16)).astype(np.float32)
        lr, a_lr = box_decimate(hr, (2, 2, 2), np.eye(4))
        res = run_baselines(torch.as_tensor(lr)[None], torch.as_tensor(a_lr), hr.shape, np.eye(4))
        assert set(res) == set(BASELINES) | {MISALIGNED_KEY}
        for v in res.values():
            assert v.shape == hr.shape
            assert v.dtype == np.float32
        assert MISALIGNED_KEY not in run_baselines(lr, a_lr, hr.shape, np.eye(4), include_misaligned=False)

    def test_misaligned_trilinear_matches_torch(self):
        rng = np.random.default_rng(2)
        lr = rng.random((7, 8, 9)).astype(np.float32)
        out = misaligned_resize(lr, (15, 19, 20), method="trilinear")
        ref = F.interpolate(torch.as_tensor(lr)[None, None], size=(15, 19, 20), mode="trilinear", align_corners=False)
        np.testing.assert_allclose(out, ref[0, 0].numpy(), atol=1e-6)

    def test_identity_grid(self):
        rng = np.random.default_rng(3)
        vol = rng.random((8, 9, 10))
        for method in BASELINES:
            np.testing.assert_allclose(resample_to_grid(vol, np.eye(4), vol.shape, np.eye(4), method), vol, atol=1e-6)
        np.testing.assert_allclose(misaligned_resize(vol, vol.shape), vol, atol=1e-6)

    def test_errors(self):
        vol = np.zeros((4, 4, 4))
        with pytest.raises(ValueError):
            resample_to_grid(vol, np.eye(4), (8, 8, 8), np.eye(4), "cubic")
        with pytest.raises(ValueError):
            resample_to_grid(np.zeros((4, 4)), np.eye(4), (8, 8, 8), np.eye(4))
        with pytest.raises(ValueError):
            resample_to_grid(vol, np.eye(3), (8, 8, 8), np.eye(4))
        with pytest.raises(ValueError):
            misaligned_resize(vol, (8, 8, 8), method="lanczos")

