"""The thick-slice prior inside a fit: it runs by default on a thick-slice scan, the field holds its output grid,
the choice is recorded, a resumed fit reuses it, and the model renders through the inference config."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from cunerf_monai.cli import Commands, model_overrides
from cunerf_monai.fitting import fit
from cunerf_monai.slice_prior import PRIOR_FILE
from cunerf_monai.utils import telling_error

SHORT = {"num_iterations": 2, "epoch_length": 2, "batch_size": 256, "chunk_size": 4096, "progress": False,
         "prior_steps": 4, "prior_min_gain": -100.0, "forward_model": ["point", "point", "box"]}


@pytest.fixture(scope="module")
def thick_scan(tmp_path_factory):
    """A 24 × 20 × 6 volume of 1 × 1 × 4 mm voxels with sharp in-plane edges."""
    path = tmp_path_factory.mktemp("thick") / "thick.nii.gz"
    i, j, k = np.meshgrid(np.arange(24), np.arange(20), np.arange(6), indexing="ij")
    vol = 100.0 + 50.0 * ((i - 12) ** 2 + (j - 10) ** 2 < (20 + 6 * k)) + 5.0 * np.sin(i / 2.0)
    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.diag([1.0, 1.0, 4.0, 1.0])), str(path))
    return path


@pytest.fixture(scope="module")
def fitted(thick_scan, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit")
    return fit(thick_scan, out / "run", dict(SHORT)), out


def test_prior_runs_by_default_and_the_field_holds_its_output_grid(fitted):
    result, _ = fitted
    assert result.prior is not None and result.prior["axis"] == 2 and result.prior["applied"] is True
    assert result.prior["grids"][0]["subdivision"] == 4  # 4 mm slices at the 1 mm in-plane spacing
    samples = result.network.coarse.samples
    assert tuple(samples.shape) == (24, 20, 24)
    # the samples are the fused volume, and it reproduces the LR: each LR voxel is the mean of its 4 sub-slabs
    lr = result.workflow.parser.get_parsed_content("train#image")[0]
    means = samples.detach().reshape(24, 20, 6, 4).mean(-1)
    assert float((means - lr).abs().max()) < 1e-3
    assert result.prior["consistency_psnr_db"] >= 45.0


def test_the_field_renders_lr_voxel_centres_on_its_fine_grid(fitted):
    """Field coordinates map onto the fine grid: at the sub-slab centres the field returns the fused samples."""
    result, _ = fitted
    geometry = result.record.geometry
    field = result.network.coarse
    k = np.arange(24, dtype=np.float64)
    lr_index = np.stack([np.full_like(k, 5.0), np.full_like(k, 7.0), (k - 1.5) / 4.0], axis=-1)
    points = torch.as_tensor(geometry.index_to_field(lr_index)).float()
    with torch.no_grad():
        values = field(points)[..., 0]
    torch.testing.assert_close(values, field.samples.detach()[5, 7], atol=1e-4, rtol=0)


def test_prior_choice_is_recorded_in_fit_json_and_checkpoint(fitted, thick_scan):
    from cunerf_monai.modeldir import save_model_dir

    result, out = fitted
    info = save_model_dir(out / "model", result, thick_scan, [], dict(SHORT))
    assert json.loads((out / "model" / "fit.json").read_text())["prior"] == info["prior"] == result.prior
    ckpt = torch.load(result.checkpoint, map_location="cpu", weights_only=True)  # plain tensors (model-zoo export)
    assert ckpt["settings"]["prior"]["kind"] == "slices" and ckpt["settings"]["prior"]["steps"] == 4
    assert type(ckpt["prior"]["uncertainty"]) is torch.Tensor


def test_model_renders_through_the_inference_config(fitted, thick_scan, tmp_path):
    from cunerf_monai.modeldir import save_model_dir

    result, out = fitted
    save_model_dir(tmp_path / "model", result, thick_scan, [], dict(SHORT))
    # a reference grid on the prior's sub-slabs: output slice j at LR slice (j − 1.5) / 4
    sub = np.eye(4)
    sub[2, 2], sub[2, 3] = 0.25, -1.5 / 4.0
    reference = tmp_path / "grid.nii.gz"
    lr_affine = nib.load(str(thick_scan)).affine
    nib.save(nib.Nifti1Image(np.zeros((24, 20, 24), np.float32), lr_affine @ sub), str(reference))
    path = Commands().render(str(tmp_path / "model"), out=str(tmp_path / "sr.nii.gz"), reference=str(reference))
    img = nib.load(path)
    assert img.shape == (24, 20, 24)
    np.testing.assert_allclose(np.sqrt((img.affine[:3, :3] ** 2).sum(0)), [1.0, 1.0, 1.0], atol=1e-6)
    # rendered on the prior's own grid, the output is the fused volume (in the input's intensity units, clipped to
    # the input's range as every render is)
    lo, hi = result.record.intensity_range
    fused = np.clip(result.network.coarse.samples.detach().numpy(), 0.0, 1.0) * (hi - lo) + lo
    np.testing.assert_allclose(np.asarray(img.dataobj, dtype=np.float64), fused, atol=2e-3 * (hi - lo))
    # the uncertainty map is written beside it, on the same grid, in intensity units
    unc = nib.load(str(tmp_path / "uncertainty.nii.gz"))
    assert unc.shape == img.shape
    np.testing.assert_allclose(unc.affine, img.affine, atol=1e-6)
    expected = result.workflow.parser.get_parsed_content("prior_result").uncertainty.numpy() * (hi - lo)
    np.testing.assert_allclose(np.asarray(unc.dataobj), expected, atol=1e-3 * (hi - lo))


def test_resumed_fit_reuses_the_stored_prior(thick_scan, tmp_path):
    first = fit(thick_scan, tmp_path / "run", dict(SHORT))
    stored = tmp_path / "run" / "checkpoints" / PRIOR_FILE
    written = stored.stat().st_mtime_ns
    again = fit(thick_scan, tmp_path / "run", dict(SHORT, num_iterations=4))  # resumes: same prior, more steps
    assert stored.stat().st_mtime_ns == written
    assert again.prior["seconds"] == first.prior["seconds"]  # the stored stage times: it was not trained again
    assert again.network.coarse.samples.shape == first.network.coarse.samples.shape


def test_resume_with_another_prior_is_refused_before_it_trains(thick_scan, tmp_path):
    fit(thick_scan, tmp_path / "run", dict(SHORT))
    stored = tmp_path / "run" / "checkpoints" / PRIOR_FILE
    written = stored.stat().st_mtime_ns
    with pytest.raises(RuntimeError) as refused:  # MONAI wraps the config's errors
        fit(thick_scan, tmp_path / "run", dict(SHORT, prior_steps=5))
    message = str(telling_error(refused.value))
    assert "other settings (prior:" in message and "'steps': 5" in message
    assert stored.stat().st_mtime_ns == written  # refused before training the new prior (which would rewrite it)


def test_prior_none_keeps_the_field_on_the_lr_grid(thick_scan, tmp_path):
    result = fit(thick_scan, tmp_path / "run", dict(SHORT, prior="none"))
    assert result.prior is None and tuple(result.network.coarse.samples.shape) == (24, 20, 6)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"prior": "always"}, "prior must be auto, none or a saved prior .* got .always.: no such file"),
     ({"prior_spacing": -1}, "prior_spacing must be a positive")],
)
def test_bad_prior_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        model_overrides(**kwargs)


def test_prior_overrides_pass_through():
    assert model_overrides(prior="none", prior_spacing=2) == {"prior": "none", "prior_spacing": 2.0}


def test_self_evaluation_with_the_prior_writes_uncertainty_and_stays_consistent(tmp_path):
    from cunerf_monai.evaluation.selfeval import self_evaluate
    from cunerf_monai.slice_prior import UNCERTAINTY_FILE

    i, j, k = np.meshgrid(np.arange(32), np.arange(30), np.arange(24), indexing="ij")
    hr = 100 + 60 * ((i - 16) ** 2 + (j - 15) ** 2 + (k - 12) ** 2 < 80) + 20 * np.sin(i / 2.5) * np.cos(k / 3.0)
    path = tmp_path / "hr.nii.gz"
    nib.save(nib.Nifti1Image(hr.astype(np.float32), np.eye(4)), str(path))
    metrics = self_evaluate(path, tmp_path / "eval", 4, 2, "box",
                            {"num_iterations": 2, "epoch_length": 2, "progress": False, "prior_steps": 10,
                             "prior_min_gain": -100.0,
                             "forward_model": ["point", "point", "box"]},
                            save_volumes=False)
    assert metrics["prior"]["grids"][0]["subdivision"] == 4 and metrics["prior"]["grids"][0]["spacing_mm"] == 1.0
    assert metrics["data_consistency_psnr_db"] >= 45.0
    unc = nib.load(str(tmp_path / "eval" / UNCERTAINTY_FILE))
    assert unc.shape == (32, 30, 24) and np.all(np.asarray(unc.dataobj) >= 0)
    assert (tmp_path / "eval" / "uncertainty.png").stat().st_size > 1000
    assert set(metrics["uncertainty"]) == {"mean", "mean_abs_error", "pearson", "spearman"}
    # the prior alone (before the correction) is scored beside the result, never as a baseline
    assert "prior_proposal" in metrics["results"] and metrics["best_aligned_baseline"] != "prior_proposal"
    assert 0 < metrics["budget"]["prior_seconds"] < metrics["budget"]["fit_seconds"]


def test_bundle_run_tracks_the_prior_in_mlflow(thick_scan, tmp_path):
    """``monai.bundle run training`` on a thick-slice scan: the prior's settings are an MLflow param, its stage
    times, loss and consistency MLflow metrics."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
           str(root / "bundle" / "configs" / "train.json"), "--input_image", str(thick_scan), "--output_dir",
           str(tmp_path), "--tracking", "mlflow", "--num_iterations", "2", "--epoch_length", "2", "--batch_size", "64",
           "--prior_steps", "3", "--prior_min_gain", "-100", "--progress", "False"]
    env = dict(os.environ, CUNERF_BUNDLE_ROOT=str(root / "bundle"), OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1
    data = runs[0].data
    assert "'kind': 'slices'" in data.params["prior"] and "'steps': 3" in data.params["prior"]
    assert {"prior_train_l1", "prior_consistency_psnr_db", "prior_seconds_train"} <= set(data.metrics)
    assert data.metrics["prior_consistency_psnr_db"] >= 45.0


def test_prior_falls_back_to_the_field_alone_when_it_cannot_help(tmp_path):
    """A thick-slice volume too small to learn from, and an output spacing as coarse as the slices: the field alone,
    not an error (a fit that worked without the prior still works)."""
    small = tmp_path / "small.nii.gz"
    i, j, k = np.meshgrid(np.arange(12), np.arange(12), np.arange(4), indexing="ij")
    nib.save(nib.Nifti1Image((np.sin(i / 2.0) + k).astype(np.float32), np.diag([1.0, 1.0, 8.0, 1.0])), str(small))
    result = fit(small, tmp_path / "small", dict(SHORT))
    assert result.prior["applied"] is False and "grids" not in result.prior
    assert tuple(result.network.coarse.samples.shape) == (12, 12, 4)


def test_coarse_prior_spacing_means_no_prior(thick_scan, tmp_path):
    result = fit(thick_scan, tmp_path / "coarse", dict(SHORT, prior_spacing=3.5))  # one sample per 4 mm slice
    assert result.prior is None


def test_a_new_prior_setting_trains_a_new_prior_in_the_same_folder(thick_scan, tmp_path):
    first = fit(thick_scan, tmp_path / "run", dict(SHORT))
    stored = tmp_path / "run" / "checkpoints" / PRIOR_FILE
    before = stored.read_bytes()
    again = fit(thick_scan, tmp_path / "run", dict(SHORT, prior_steps=5, resume=False))
    assert again.prior["steps"] == 5 and stored.read_bytes() != before
    assert first.prior["steps"] == 4


def test_thick_first_axis_point_samples_stay_on_the_grid(tmp_path):
    """Thick axis 0, point-sampled: the output grid holds the LR samples at every r-th position and the field
    returns them at the LR voxel centres."""
    path = tmp_path / "axis0.nii.gz"
    i, j, k = np.meshgrid(np.arange(6), np.arange(22), np.arange(20), indexing="ij")
    vol = 100.0 + 40.0 * ((j - 11) ** 2 + (k - 10) ** 2 < 30 + 5 * i) + 3.0 * i
    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.diag([3.0, 1.0, 1.0, 1.0])), str(path))
    result = fit(path, tmp_path / "run", dict(SHORT, forward_model=["point", "point", "point"]))
    assert result.prior["axis"] == 0 and result.prior["grids"][0]["subdivision"] == 3
    samples = result.network.coarse.samples.detach()
    lr = result.workflow.parser.get_parsed_content("train#image")[0]
    torch.testing.assert_close(samples[::3], lr, atol=1e-4, rtol=0)
    index = np.stack(np.meshgrid(np.arange(6.0), [4.0], [7.0], indexing="ij"), axis=-1).reshape(-1, 3)
    points = torch.as_tensor(result.record.geometry.index_to_field(index)).float()
    with torch.no_grad():
        torch.testing.assert_close(result.network.coarse(points)[..., 0], lr[:, 4, 7], atol=1e-4, rtol=0)


def test_prior_that_learnt_nothing_in_plane_steps_aside(thick_scan, tmp_path):
    """Its network must beat the best interpolation on held-out in-plane planes by prior_min_gain dB, else the field
    alone; a prior that steps aside is not applied (nothing stored but its verdict)."""
    result = fit(thick_scan, tmp_path / "run", dict(SHORT, prior_min_gain=100.0))
    assert result.prior["applied"] is False and result.prior["inplane_gain_db"] < 100.0  # the verdict is recorded
    assert tuple(result.network.coarse.samples.shape) == (24, 20, 6)
    stored = torch.load(tmp_path / "run" / "checkpoints" / "prior.pt", weights_only=False)["result"]
    assert stored.fused is None and stored.proposal is None and stored.inplane_gain < 100.0


def ball_scan(path, shape, spacing):
    """A ball of ``shape`` voxels of ``spacing`` mm with a ripple along axis 0, written as NIfTI at ``path``."""
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    centre = [n // 2 for n in shape]
    radius2 = sum((a - c) ** 2 for a, c in zip((i, j, k), centre))
    vol = 100.0 + 50.0 * (radius2 < 20) + 5.0 * np.sin(i / 2.0)
    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.diag([*spacing, 1.0])), str(path))
    return path


def halved_voxels_keep_the_lr(result):
    """Check the field holds the prior's grid of every axis halved and each LR voxel is the mean of its 2 × 2 × 2
    output voxels; returns the field's samples and the prior's fused volume."""
    lr = result.workflow.parser.get_parsed_content("train#image")[0]
    samples = result.network.coarse.samples.detach()
    assert tuple(samples.shape) == tuple(2 * n for n in lr.shape)
    fused = result.workflow.parser.get_parsed_content("prior_result").fused
    nx, ny, nz = lr.shape
    means = fused.reshape(nx, 2, ny, 2, nz, 2).mean((1, 3, 5))
    assert float((means - lr).abs().max()) < 1e-4 and result.prior["consistency_psnr_db"] >= 45.0
    return samples, fused


def test_isotropic_scan_told_a_finer_spacing_fits_through_the_cross_scale_prior(tmp_path):
    """No thick axis, prior_spacing half the voxel: the cross-scale prior runs, the field holds its output grid on
    every axis, and each LR voxel is the mean of its 2 × 2 × 2 output voxels (box voxels)."""
    path = ball_scan(tmp_path / "iso.nii.gz", (16, 14, 12), (2.0, 2.0, 2.0))
    result = fit(path, tmp_path / "run", dict(SHORT, forward_model="box", prior_spacing=1.0))
    assert result.prior["kind"] == "cross-scale" and result.prior["applied"] is True
    assert [g["subdivision"] for g in result.prior["grids"]] == [2, 2, 2] and result.prior["axes"] == [0, 1, 2]
    samples, fused = halved_voxels_keep_the_lr(result)
    assert float((samples - fused).abs().max()) < 5e-3  # the field starts at it and keeps it (2 iterations here)
    assert result.workflow.parser.get_parsed_content("settings")["prior"]["kind"] == "cross-scale"
    without = fit(path, tmp_path / "alone", dict(SHORT, forward_model="box"))  # no finer spacing: the field alone
    assert without.prior is None and tuple(without.network.coarse.samples.shape) == (16, 14, 12)


def test_thick_scan_told_a_finer_in_plane_spacing_fits_through_both_priors(tmp_path):
    """A thick axis and box voxels in-plane, prior_spacing half of every spacing: the thick-slice prior along z, then
    the cross-scale prior in-plane; the field holds the output grid of all three axes, each LR voxel is the mean of
    its 2 × 2 × 2 output voxels, and fit.json records both parts."""
    path = ball_scan(tmp_path / "thick.nii.gz", (16, 14, 8), (2.0, 2.0, 4.0))
    result = fit(path, tmp_path / "run", dict(SHORT, forward_model="box", prior_spacing=[1.0, 1.0, 2.0]))
    assert result.prior["kind"] == "slices+cross-scale" and result.prior["applied"] is True
    assert [(g["axis"], g["subdivision"]) for g in result.prior["grids"]] == [(2, 2), (0, 2), (1, 2)]
    assert result.prior["slices"]["axis"] == 2 and result.prior["cross_scale"]["axes"] == [0, 1]
    assert [s["stage"] for s in result.prior["stages"]] == [1, 2]
    halved_voxels_keep_the_lr(result)
    from cunerf_monai.modeldir import save_model_dir
    from cunerf_monai.slice_prior import PRIOR_MODEL_FILE, load_prior_model

    save_model_dir(tmp_path / "model", result, path, [], dict(SHORT))
    saved = json.loads((tmp_path / "model" / "fit.json").read_text())["prior"]
    assert saved["kind"] == "slices+cross-scale" and len(saved["grids"]) == 3
    model = load_prior_model(tmp_path / "model" / PRIOR_MODEL_FILE)  # one network per part, both tasks
    assert len(model["networks"]) == 2 and set(model["learned"]) == {"slices", "cross_scale"}
