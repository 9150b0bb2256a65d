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
        train_overrides={"num_iterations": 6, "epoch_length": 3, "batch_size": 128, "progress": False},
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    metrics = json.loads((out / "metrics.json").read_text())
    expected_lr = [12, 10, 8] if slice_axis is None else [24, 20, 8]
    assert metrics["lr_shape"] == expected_lr and metrics["hr_shape"] == [24, 20, 16]
    results = metrics["results"]
    assert {"nearest", "trilinear", "bspline", "keys", "bicubic_misaligned", "cunerf"} <= set(results)
    for scores in results.values():
        assert 0.0 < scores["ssim"] <= 1.0 and np.isfinite(scores["psnr"])
    # a smooth volume: aligned cubic interpolation is far better than nearest
    assert results["bspline"]["psnr"] > results["nearest"]["psnr"] + 3.0
    assert metrics["best_aligned_baseline"] in ("nearest", "trilinear", "bspline", "keys")
    assert metrics["margin_psnr_db"] == pytest.approx(
        results["cunerf"]["psnr"] - results[metrics["best_aligned_baseline"]]["psnr"]
    )
    assert metrics["budget"]["iterations"] == 6 and metrics["budget"]["fit_seconds"] > 0
    assert "| cunerf |" in (out / "table.md").read_text().replace("  ", " ")
    with Image.open(out / "figure.png") as fig:
        assert fig.size[0] > 300 and fig.size[1] > 200
    sr = nib.load(str(out / "sr.nii.gz"))
    np.testing.assert_allclose(sr.affine, np.diag([0.9, 0.9, 1.2, 1.0]), atol=1e-6)
