"""Tests of the evaluation figures (cunerf_monai.evaluation.figures)."""

from __future__ import annotations

import os
import tempfile
import unittest

import numpy as np
from PIL import Image

from cunerf_monai.evaluation.baselines import run_baselines
from cunerf_monai.evaluation.figures import comparison_figure, plot_curve, slice_psnr, take_slice


def phantom(shape=(40, 44, 36)) -> np.ndarray:
    g = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = g[0] ** 2 / 0.8 + g[1] ** 2 + g[2] ** 2 / 0.7
    vol = np.where(r2 < 0.7, 0.6, 0.0) + np.where((g[0] - 0.2) ** 2 + g[1] ** 2 + g[2] ** 2 < 0.1, 0.4, 0.0)
    return vol.astype(np.float32)


class TestFigures(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        self.hr = phantom()
        self.a_hr = np.diag([1.0, 1.0, 1.5, 1.0])
        s = 2
        self.lr = self.hr[::s, ::s, ::s]
        self.a_lr = self.a_hr @ np.diag([s, s, s, 1.0])
        self.base = run_baselines(self.lr, self.a_lr, self.hr.shape, self.a_hr)

    def tearDown(self):
        self.tmp.cleanup()

    def _check_png(self, path, min_w=300, min_h=200):
        self.assertTrue(os.path.isfile(path))
        with Image.open(path) as im:
            self.assertEqual(im.format, "PNG")
            im.load()
            w, h = im.size
            arr = np.asarray(im.convert("L"), dtype=np.float32)
        self.assertGreaterEqual(w, min_w)
        self.assertGreaterEqual(h, min_h)
        self.assertGreater(arr.std(), 5.0)  # not a blank canvas
        leftovers = [f for f in os.listdir(os.path.dirname(path)) if f.startswith(".tmp_")]
        self.assertEqual(leftovers, [])
        return w, h

    def test_comparison_figure(self):
        vols = {"trilinear": self.base["trilinear"], "keys": self.base["keys"], "ours": self.hr * 0.98, "HR": self.hr}
        path = os.path.join(self.dir, "sub", "cmp.png")
        out = comparison_figure(
            path, vols, lr=self.lr, lr_affine=self.a_lr, hr_affine=self.a_hr, title="x2", slice_index={"axial": 10}
        )
        self.assertEqual(out, path)
        w, h = self._check_png(path, min_w=1000, min_h=400)
        # 3 rows (planes); 1 LR + 3 methods + HR + 3 error columns = 8 columns
        self.assertGreater(w / h, 2.0)

    def test_pre_resampled_lr_and_subset(self):
        vols = {**self.base, "HR": self.hr, "LR": self.base["nearest"]}
        path = os.path.join(self.dir, "cmp2.png")
        comparison_figure(path, vols, methods=["bspline"], planes=("coronal",))
        w, h = self._check_png(path, min_w=400, min_h=150)
        self.assertGreater(w / h, 2.0)  # one row, LR + bspline + HR + 1 error column

    def test_overwrite_is_atomic(self):
        path = os.path.join(self.dir, "cmp.png")
        with open(path, "wb") as f:
            f.write(b"old")
        comparison_figure(path, {"trilinear": self.base["trilinear"], "HR": self.hr})
        self._check_png(path, min_w=300, min_h=300)

    def test_errors_and_warning(self):
        path = os.path.join(self.dir, "bad.png")
        with self.assertRaisesRegex(ValueError, "lr_affine"):
            comparison_figure(path, {"HR": self.hr, "trilinear": self.base["trilinear"]}, lr=self.lr)
        with self.assertRaises(ValueError):
            comparison_figure(path, {"trilinear": self.base["trilinear"]})
        with self.assertRaises(ValueError):
            comparison_figure(path, {"HR": self.hr, "x": self.lr})
        self.assertFalse(os.path.exists(path))
        many = {f"m{i}": self.hr for i in range(6)}
        with self.assertWarns(UserWarning):
            comparison_figure(path, {**many, "HR": self.hr}, planes=("axial",))

    def test_slice_helpers(self):
        vol = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
        self.assertEqual(take_slice(vol, "axial", 1).shape, (2, 3))
        self.assertEqual(take_slice(vol, "coronal", 1).shape, (2, 4))
        self.assertEqual(take_slice(vol, "sagittal", 1).shape, (3, 4))
        np.testing.assert_array_equal(take_slice(vol, "axial", 3), vol[:, :, 3])
        self.assertAlmostEqual(slice_psnr(np.full((4, 4), 0.1), np.zeros((4, 4))), 20.0, places=6)

    def test_plot_curve(self):
        path = os.path.join(self.dir, "curve.png")
        it = np.arange(0, 1000, 50)
        curves = {"ours": 20 + np.log1p(it), "trilinear": np.full(it.shape, 24.0)}
        plot_curve(path, it, curves, "iteration", "PSNR", "t")
        self._check_png(path, min_w=400, min_h=300)
        path2 = os.path.join(self.dir, "curve2.png")
        plot_curve(path2, {"a": [1, 2, 3], "b": [0.5, 1.0]}, {"a": [1, 2, np.nan], "b": [3, 4]}, "s", "dB", "")
        self._check_png(path2, min_w=400, min_h=300)
        path3 = os.path.join(self.dir, "curve3.png")
        plot_curve(path3, {"a": [1, 2, 3], "b": [0.5, 1.0]}, {"a": [1, 2, np.nan], "b": [3, 4]}, "s", "dB", "",
                   hlines={"baseline": 2.5})
        self._check_png(path3, min_w=400, min_h=300)
        with open(path2, "rb") as a, open(path3, "rb") as b:
            self.assertNotEqual(a.read(), b.read())  # the reference line is drawn
        with self.assertRaises(ValueError):
            plot_curve(path2, [1, 2], {"a": [1, 2, 3]}, "x", "y", "t")


if __name__ == "__main__":
    unittest.main()
