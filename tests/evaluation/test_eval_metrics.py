"""Tests of the evaluation metrics (cunerf_monai.evaluation.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import SSIMMetric
from monai.metrics.regression import compute_ssim_and_cs

from cunerf_monai.evaluation.metrics import (
    PLANE_AXES,
    SCORE_KEYS,
    foreground_mask,
    format_table,
    otsu_threshold,
    psnr,
    score,
    ssim,
)


def smooth_phantom(shape=(30, 26, 22), seed=0) -> np.ndarray:
    """A structured volume in [0, 1]: smooth blobs plus texture."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum(g**2 for g in grids)
    vol = 0.6 * np.exp(-2 * r2) + 0.2 * np.sin(4 * grids[0]) * np.cos(3 * grids[1]) + 0.2
    vol += 0.1 * rng.random(shape)
    return np.clip(vol, 0, 1).astype(np.float32)


def noisy(vol: np.ndarray, sigma=0.05, seed=1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(vol + sigma * rng.standard_normal(vol.shape), 0, 1).astype(np.float32)


class TestPSNR:
    def test_constant_error(self):
        target = np.zeros((8, 9, 10), dtype=np.float32)
        assert psnr(target + 0.1, target) == pytest.approx(20.0, abs=0.5e-5)
        assert psnr(target + 0.01, target) == pytest.approx(40.0, abs=0.5e-4)
        assert psnr(target + 0.2, target, data_range=2.0) == pytest.approx(20.0, abs=0.5e-5)

    def test_identical_is_inf(self):
        v = smooth_phantom()
        assert psnr(v, v) == math.inf

    def test_masked(self):
        target = np.zeros((10, 10, 10), dtype=np.float32)
        mask = np.zeros(target.shape, dtype=bool)
        mask[2:6, 3:7, 1:9] = True
        pred = np.where(mask, 0.1, 0.5).astype(np.float32)
        assert psnr(pred, target, mask=mask) == pytest.approx(20.0, abs=0.5e-5)
        n_in, n = mask.sum(), mask.size
        expected = 10 * math.log10(1.0 / ((0.01 * n_in + 0.25 * (n - n_in)) / n))
        assert psnr(pred, target) == pytest.approx(expected, abs=0.5e-4)
        # voxels outside the mask do not matter at all
        pred2 = pred.copy()
        pred2[~mask] = 0.9
        assert psnr(pred2, target, mask=mask) == pytest.approx(20.0, abs=0.5e-5)
        assert math.isnan(psnr(pred, target, mask=np.zeros_like(mask)))

    def test_shape_mismatch(self):
        with pytest.raises(ValueError):
            psnr(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))


class TestSSIM:
    def test_identical_is_one(self):
        v = smooth_phantom()
        mask = v > 0.5
        res = ssim(v, v, mask=mask)
        for k, val in res.items():
            assert val == pytest.approx(1.0, abs=0.5e-5), k

    @pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
    def test_planes_equal_monai(self, plane):
        target = smooth_phantom()
        pred = noisy(target)
        res = ssim(pred, target)
        assert res[f"ssim_{plane}"] < 0.99
        ax = PLANE_AXES[plane]
        p = torch.from_numpy(np.moveaxis(pred, ax, 0).copy())[:, None]
        t = torch.from_numpy(np.moveaxis(target, ax, 0).copy())[:, None]
        ref = SSIMMetric(spatial_dims=2, data_range=1.0, win_size=11, kernel_sigma=1.5, k1=0.01, k2=0.03)(p, t)
        assert res[f"ssim_{plane}"] == pytest.approx(float(ref.mean()), abs=0.5e-5)

    def test_plane_convention(self):
        # axial = slices along the last axis, i.e. the 2D images vol[:, :, k] of shape (X, Y).
        target = smooth_phantom((24, 20, 16))
        pred = noisy(target)
        p = torch.from_numpy(np.ascontiguousarray(pred.transpose(2, 0, 1)))[:, None]  # (Z, 1, X, Y)
        t = torch.from_numpy(np.ascontiguousarray(target.transpose(2, 0, 1)))[:, None]
        ref = SSIMMetric(spatial_dims=2)(p, t).mean()
        assert ssim(pred, target)["ssim_axial"] == pytest.approx(float(ref), abs=0.5e-5)

    def test_3d_equal_monai(self):
        target = smooth_phantom()
        pred = noisy(target)
        res = ssim(pred, target)
        ref = SSIMMetric(spatial_dims=3)(torch.from_numpy(pred)[None, None], torch.from_numpy(target)[None, None])
        assert res["ssim_3d"] == pytest.approx(float(ref), abs=0.5e-5)
        assert res["ssim_3d"] < 0.99
        planes = [res[f"ssim_{p}"] for p in PLANE_AXES]
        assert res["ssim"] == pytest.approx(sum(planes) / 3, abs=0.5e-10)

    def test_masked_equals_mean_of_monai_map(self):
        target = smooth_phantom()
        pred = noisy(target)
        mask = np.zeros(target.shape, dtype=bool)
        mask[5:20, 4:18, 3:15] = True
        res = ssim(pred, target, mask=mask)
        # axial: MONAI map of every slice (valid conv) restricted to the mask cropped by 5 on X and Y
        p = torch.from_numpy(np.ascontiguousarray(pred.transpose(2, 0, 1)))[:, None]
        t = torch.from_numpy(np.ascontiguousarray(target.transpose(2, 0, 1)))[:, None]
        smap, _ = compute_ssim_and_cs(p, t, spatial_dims=2, kernel_size=(11, 11), kernel_sigma=(1.5, 1.5))
        m = torch.from_numpy(np.ascontiguousarray(mask.transpose(2, 0, 1)[:, 5:-5, 5:-5]))
        assert res["ssim_axial_fg"] == pytest.approx(float(smap[:, 0][m].mean()), abs=0.5e-5)
        # 3D map
        smap3, _ = compute_ssim_and_cs(
            torch.from_numpy(pred)[None, None],
            torch.from_numpy(target)[None, None],
            spatial_dims=3,
            kernel_size=(11, 11, 11),
            kernel_sigma=(1.5, 1.5, 1.5),
        )
        m3 = torch.from_numpy(mask[5:-5, 5:-5, 5:-5].copy())
        assert res["ssim_3d_fg"] == pytest.approx(float(smap3[0, 0][m3].mean()), abs=0.5e-5)
        # all-true mask = unmasked
        full = ssim(pred, target, mask=np.ones_like(mask))
        assert full["ssim_fg"] == pytest.approx(full["ssim"], abs=0.5e-6)
        assert full["ssim_3d_fg"] == pytest.approx(full["ssim_3d"], abs=0.5e-6)

    def test_masked_ignores_outside(self):
        target = smooth_phantom()
        pred = noisy(target)
        mask = np.zeros(target.shape, dtype=bool)
        mask[10:20, 10:16, 8:14] = True
        pred2 = pred.copy()
        far = np.ones(target.shape, dtype=bool)
        far[4:26, 4:22, 2:20] = False  # > 5 voxels (half window) away from the mask
        pred2[far] = 0.0
        a, b = ssim(pred, target, mask=mask), ssim(pred2, target, mask=mask)
        assert a["ssim_fg"] == pytest.approx(b["ssim_fg"], abs=0.5e-6)
        assert a["ssim"] != pytest.approx(b["ssim"], abs=0.5e-3)

    def test_small_volume_nan_planes(self):
        target = smooth_phantom((20, 18, 6))
        pred = noisy(target)
        res = ssim(pred, target)
        assert math.isnan(res["ssim_coronal"])
        assert math.isnan(res["ssim_sagittal"])
        assert math.isnan(res["ssim_3d"])
        assert not math.isnan(res["ssim_axial"])
        assert round(abs(res["ssim"] - res["ssim_axial"]), 7) == 0

    def test_fused_sweep_equals_per_plane_path(self):
        import cunerf_monai.evaluation.metrics as metrics

        target = smooth_phantom((25, 23, 21))
        pred = noisy(target)
        mask = torch.from_numpy(target > 0.45)
        p, t = torch.from_numpy(pred), torch.from_numpy(target)
        fused = metrics._fused_ssim(p, t, mask, 1.0)
        for plane, axis in PLANE_AXES.items():
            ref = metrics._plane_ssim(p, t, mask, axis, 1.0)
            assert fused[plane][0] == pytest.approx(ref[0], abs=0.5e-6), plane
            assert fused[plane][1] == pytest.approx(ref[1], abs=0.5e-6), plane
        ref3 = metrics._volume_ssim(p, t, mask, 1.0)
        assert fused["3d"][0] == pytest.approx(ref3[0], abs=0.5e-6)
        assert fused["3d"][1] == pytest.approx(ref3[1], abs=0.5e-6)

    def test_slab_batching_is_invisible(self):
        import cunerf_monai.evaluation.metrics as metrics

        target = smooth_phantom((40, 30, 24))
        pred = noisy(target)
        mask = target > 0.4
        full = ssim(pred, target, mask=mask)
        old = metrics._SLAB_VOXELS
        try:
            metrics._SLAB_VOXELS = 700  # forces tiny slabs (1 slice / few rows per slab)
            small = ssim(pred, target, mask=mask)
        finally:
            metrics._SLAB_VOXELS = old
        for k in full:
            assert full[k] == pytest.approx(small[k], abs=0.5e-6), k


class TestMaskAndScore:
    def _head(self, shape=(40, 44, 36), seed=0):
        rng = np.random.default_rng(seed)
        g = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
        r2 = g[0] ** 2 + g[1] ** 2 + g[2] ** 2
        vol = np.where(r2 < 0.6, 0.7, 0.0)
        vol = np.where(r2 < 0.05, 0.05, vol)  # dark enclosed "ventricle"
        vol = vol + 0.02 * np.abs(rng.standard_normal(shape))  # background noise
        return np.clip(vol, 0, 1).astype(np.float32), r2

    def test_foreground_mask(self):
        vol, r2 = self._head()
        thr = otsu_threshold(vol)
        assert 0.1 < thr < 0.6, thr
        mask = foreground_mask(vol)
        assert mask.dtype == bool
        assert mask[r2 < 0.05].all()  # enclosed dark region filled
        assert not (mask[r2 > 0.75].any())  # background excluded
        assert ((mask == (r2 < 0.6)).mean()) > 0.99
        assert foreground_mask(np.zeros((5, 5, 5))).all()
        assert foreground_mask(vol, threshold=0.9).sum() == 0

    def test_foreground_touching_border(self):
        vol = np.zeros((20, 20, 20), dtype=np.float32)
        vol[:, :, :12] = 0.8
        mask = foreground_mask(vol)
        np.testing.assert_array_equal(mask, vol > 0.4)

    def test_score(self):
        target, _ = self._head()
        pred = noisy(target, 0.03)
        res = score(pred, target)
        assert tuple(res) == SCORE_KEYS
        for k, v in res.items():
            assert isinstance(v, float), k
            assert math.isfinite(v), k
        assert res["psnr"] == pytest.approx(psnr(pred, target), abs=0.5e-10)
        mask = foreground_mask(target)
        assert res["psnr_fg"] == pytest.approx(psnr(pred, target, mask=mask), abs=0.5e-10)
        s = ssim(pred, target, mask=mask)
        assert res["ssim_fg"] == pytest.approx(s["ssim_fg"], abs=0.5e-10)
        assert res["ssim_3d"] == pytest.approx(s["ssim_3d"], abs=0.5e-10)
        # explicit mask
        res2 = score(pred, target, mask=np.ones(target.shape, bool))
        assert res2["psnr_fg"] == pytest.approx(res2["psnr"], abs=0.5e-6)
        perfect = score(target, target)
        assert perfect["psnr"] == math.inf
        assert perfect["ssim"] == pytest.approx(1.0, abs=0.5e-6)

    def test_format_table(self):
        results = {
            "trilinear": {"psnr": 30.123456, "ssim": 0.912345, "time_s": 1.5},
            "ours": {"psnr": 33.0, "ssim": 0.95, "ssim_3d": float("nan")},
        }
        table = format_table(results)
        lines = table.strip().splitlines()
        assert len(lines) == 4
        assert lines[0] == "| method | psnr | ssim | ssim_3d | time_s |"
        assert lines[1].startswith("|---|")
        assert lines[2] == "| trilinear | 30.12 | 0.9123 | – | 1.5 |"
        assert lines[3] == "| ours | 33.00 | 0.9500 | nan | – |"
        assert format_table(results, columns=["ssim"]).splitlines()[2] == "| trilinear | 0.9123 |"

