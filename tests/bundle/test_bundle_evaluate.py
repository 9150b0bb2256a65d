"""The bundle's evaluate workflow end to end on a tiny HR volume: metrics, table and figure are written and hold
honest numbers (the aligned baselines beat the misaligned one; our fit is scored on the same grid)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigWorkflow
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("degradation,slice_axis", [("nearest", None), ("box", 2)])
def test_evaluate_workflow(tmp_path, degradation, slice_axis):
    i, j, k = np.meshgrid(np.arange(24), np.arange(20), np.arange(16), indexing="ij")
    hr = 100 + 60 * np.sin(i / 3.0) * np.cos(j / 4.0) + 20 * np.cos(k / 3.0)
    hr_path = tmp_path / "hr.nii.gz"
    nib.save(nib.Nifti1Image(hr.astype(np.float32), np.diag([0.9, 0.9, 1.2, 1.0])), str(hr_path))
    out = tmp_path / "eval"
    wf = ConfigWorkflow(
        config_file=str(ROOT / "bundle" / "configs" / "evaluate.json"),
        workflow_type=None,
        run_id="evaluate",
        hr_image=str(hr_path),
        output_dir=str(out),
        scale=2,
        slice_axis=slice_axis,
        degradation=degradation,
        # the field alone (its thick-slice prior, which would run on the slice-axis case, has its own tests)
        train_overrides={"num_iterations": 6, "epoch_length": 3, "batch_size": 128, "progress": False, "prior": "none"},
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    metrics = json.loads((out / "metrics.json").read_text())
    expected_lr = [12, 10, 8] if slice_axis is None else [24, 20, 8]
    assert metrics["lr_shape"] == expected_lr and metrics["hr_shape"] == [24, 20, 16]
    results = metrics["results"]
    assert {"nearest", "trilinear", "bspline", "keys", "bicubic_misaligned", "cunerf"} <= set(results)
    assert "cunerf_coarse" not in results  # the default config renders no fine pass
    for scores in results.values():
        assert 0.0 < scores["ssim"] <= 1.0 and np.isfinite(scores["psnr"])
    psnr = {k: v["psnr"] for k, v in results.items()}
    if degradation == "nearest":
        # the misaligned resize reads every voxel half an LR voxel off: each aligned smooth baseline beats it by
        # several dB (measured: trilinear 33.5, B-spline 34.3, Keys 34.4, misaligned 27.1)
        for name in ("trilinear", "bspline", "keys"):
            assert psnr[name] > psnr["bicubic_misaligned"] + 3.0, (name, psnr)
    else:
        # a ×2 box average is the one case where the pixel-centre convention is the true geometry: the careless
        # resize then *is* the aligned cubic B-spline interpolant
        assert psnr["bicubic_misaligned"] == pytest.approx(psnr["bspline"], abs=0.05)
    # a smooth volume: aligned cubic interpolation is far better than nearest
    assert psnr["bspline"] > psnr["nearest"] + 3.0
    best = metrics["best_aligned_baseline"]
    assert best == max(("nearest", "trilinear", "bspline", "keys"), key=psnr.get)
    # the default field starts at the B-spline interpolant of the LR volume and fits its forward model: six steps
    # take it clear of every aligned baseline (measured: +1.6 dB under nearest, +2.3 dB under box); a fit that does
    # not run, or runs the wrong way, stays at or falls below the interpolant
    assert psnr["cunerf"] > psnr[best] + 0.8, psnr
    assert metrics["margin_psnr_db"] == pytest.approx(psnr["cunerf"] - psnr[best])
    assert metrics["budget"]["iterations"] == 6 and metrics["budget"]["fit_seconds"] > 0
    assert "| cunerf |" in (out / "table.md").read_text().replace("  ", " ")
    with Image.open(out / "figure.png") as fig:
        assert fig.size[0] > 300 and fig.size[1] > 200
    sr = nib.load(str(out / "sr.nii.gz"))
    np.testing.assert_allclose(sr.affine, np.diag([0.9, 0.9, 1.2, 1.0]), atol=1e-6)
