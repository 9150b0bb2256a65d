"""Tests of the evaluation figures (cunerf_monai.evaluation.figures)."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from PIL import Image

from cunerf_monai.evaluation import figures
from cunerf_monai.evaluation.baselines import run_baselines
from cunerf_monai.evaluation.figures import comparison_figure, plot_curve, slice_psnr, take_slice


def phantom(shape=(40, 44, 36)) -> np.ndarray:
    g = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = g[0] ** 2 / 0.8 + g[1] ** 2 + g[2] ** 2 / 0.7
    vol = np.where(r2 < 0.7, 0.6, 0.0) + np.where((g[0] - 0.2) ** 2 + g[1] ** 2 + g[2] ** 2 < 0.1, 0.4, 0.0)
    return vol.astype(np.float32)


@pytest.fixture(scope="module")
def case():
    """An HR phantom ``(40, 44, 36)``, its 2x decimation and the aligned baselines on the HR grid."""
    hr = phantom()
    a_hr = np.diag([1.0, 1.0, 1.5, 1.0])
    s = 2
    lr = hr[::s, ::s, ::s]
    a_lr = a_hr @ np.diag([s, s, s, 1.0])
    return {"hr": hr, "a_hr": a_hr, "lr": lr, "a_lr": a_lr, "base": run_baselines(lr, a_lr, hr.shape, a_hr)}


def _temp_files(directory) -> list[str]:
    return [f for f in os.listdir(directory) if ".part" in f or f.startswith(".tmp_")]


def check_png(path, min_w=300, min_h=200):
    assert os.path.isfile(path)
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        w, h = im.size
        arr = np.asarray(im.convert("L"), dtype=np.float32)
    assert w >= min_w
    assert h >= min_h
    assert arr.std() > 5.0  # not a blank canvas
    assert _temp_files(os.path.dirname(path)) == []
    return w, h


def test_comparison_figure(case, tmp_path):
    base, hr = case["base"], case["hr"]
    vols = {"trilinear": base["trilinear"], "keys": base["keys"], "ours": hr * 0.98, "HR": hr}
    path = os.path.join(tmp_path, "sub", "cmp.png")
    out = comparison_figure(
        path, vols, lr=case["lr"], lr_affine=case["a_lr"], hr_affine=case["a_hr"], title="x2",
        slice_index={"axial": 10},
    )
    assert out == path
    w, h = check_png(path, min_w=1000, min_h=400)
    # 3 rows (planes); 1 LR + 3 methods + HR + 3 error columns = 8 columns
    assert w / h > 2.0


def test_pre_resampled_lr_and_subset(case, tmp_path):
    vols = {**case["base"], "HR": case["hr"], "LR": case["base"]["nearest"]}
    path = os.path.join(tmp_path, "cmp2.png")
    comparison_figure(path, vols, methods=["bspline"], planes=("coronal",))
    w, h = check_png(path, min_w=400, min_h=150)
    assert w / h > 2.0  # one row, LR + bspline + HR + 1 error column


def test_overwrite_is_atomic(case, tmp_path, monkeypatch):
    """A figure that fails midway leaves the old file and no temporary file; a reader polling the name while
    figures are rewritten only ever sees the old bytes or a whole PNG."""
    path = os.path.join(tmp_path, "cmp.png")
    with open(path, "wb") as f:
        f.write(b"old")
    vols = {"trilinear": case["base"]["trilinear"], "HR": case["hr"]}

    real_savefig = figures.Figure.savefig

    def half_then_fail(fig, fname, *args, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n half")  # a partial PNG under the temporary name
        raise OSError("disk full")

    monkeypatch.setattr(figures.Figure, "savefig", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        comparison_figure(path, vols)
    with open(path, "rb") as f:
        assert f.read() == b"old"
    assert _temp_files(tmp_path) == []
    monkeypatch.setattr(figures.Figure, "savefig", real_savefig)

    seen: list[bytes] = []
    done = threading.Event()

    def read_while_writing():
        while not done.is_set():
            with open(path, "rb") as f:
                seen.append(f.read())

    reader = threading.Thread(target=read_while_writing)
    reader.start()
    try:
        for _ in range(2):
            comparison_figure(path, vols)
    finally:
        done.set()
        reader.join()
    with open(path, "rb") as f:
        final = f.read()
    assert seen, "the reader never ran"
    for content in seen:
        assert content == b"old" or (content.startswith(b"\x89PNG") and content.endswith(final[-12:])), (
            f"a reader saw a partial file ({len(content)} bytes)"
        )
    check_png(path, min_w=300, min_h=300)


def test_render_is_shareable_under_umask_022(case, tmp_path):
    old = os.umask(0o022)
    try:
        path = comparison_figure(os.path.join(tmp_path, "cmp.png"), {"trilinear": case["base"]["trilinear"], "HR": case["hr"]})
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_errors_and_warning(case, tmp_path):
    hr, lr, base = case["hr"], case["lr"], case["base"]
    path = os.path.join(tmp_path, "bad.png")
    with pytest.raises(ValueError, match="lr_affine"):
        comparison_figure(path, {"HR": hr, "trilinear": base["trilinear"]}, lr=lr)
    with pytest.raises(ValueError):
        comparison_figure(path, {"trilinear": base["trilinear"]})
    with pytest.raises(ValueError):
        comparison_figure(path, {"HR": hr, "x": lr})
    assert not os.path.exists(path)
    many = {f"m{i}": hr for i in range(6)}
    with pytest.warns(UserWarning):
        comparison_figure(path, {**many, "HR": hr}, planes=("axial",))


def test_slice_helpers():
    vol = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert take_slice(vol, "axial", 1).shape == (2, 3)
    assert take_slice(vol, "coronal", 1).shape == (2, 4)
    assert take_slice(vol, "sagittal", 1).shape == (3, 4)
    np.testing.assert_array_equal(take_slice(vol, "axial", 3), vol[:, :, 3])
    assert slice_psnr(np.full((4, 4), 0.1), np.zeros((4, 4))) == pytest.approx(20.0, abs=1e-6)


def test_plot_curve(tmp_path):
    path = os.path.join(tmp_path, "curve.png")
    it = np.arange(0, 1000, 50)
    curves = {"ours": 20 + np.log1p(it), "trilinear": np.full(it.shape, 24.0)}
    plot_curve(path, it, curves, "iteration", "PSNR", "t")
    check_png(path, min_w=400, min_h=300)
    path2 = os.path.join(tmp_path, "curve2.png")
    plot_curve(path2, {"a": [1, 2, 3], "b": [0.5, 1.0]}, {"a": [1, 2, np.nan], "b": [3, 4]}, "s", "dB", "")
    check_png(path2, min_w=400, min_h=300)
    path3 = os.path.join(tmp_path, "curve3.png")
    plot_curve(path3, {"a": [1, 2, 3], "b": [0.5, 1.0]}, {"a": [1, 2, np.nan], "b": [3, 4]}, "s", "dB", "",
               hlines={"baseline": 2.5})
    check_png(path3, min_w=400, min_h=300)
    with open(path2, "rb") as a, open(path3, "rb") as b:
        assert a.read() != b.read()  # the reference line is drawn
    with pytest.raises(ValueError):
        plot_curve(path2, [1, 2], {"a": [1, 2, 3]}, "x", "y", "t")
