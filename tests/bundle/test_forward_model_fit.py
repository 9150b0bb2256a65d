"""The default fit with the forward model: the step converges from any start, and the chosen model is recorded."""

from __future__ import annotations

import numpy as np
import nibabel as nib
import pytest
import torch

from cunerf_monai.fitting import fit

SHORT = {"num_iterations": 8, "epoch_length": 8, "chunk_size": 4096, "progress": False, "prior": "none"}


@pytest.fixture(scope="module")
def thick_volume(tmp_path_factory):
    """A smooth 20 × 18 × 8 volume with 1 × 1 × 3 mm voxels (a thick-slice scan)."""
    path = tmp_path_factory.mktemp("thick") / "thick.nii.gz"
    i, j, k = np.meshgrid(np.arange(20), np.arange(18), np.arange(8), indexing="ij")
    vol = 100 + 60 * np.sin(i / 3.0) * np.cos(j / 4.0) + 15 * np.sin(k / 2.0)
    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.diag([1.0, 1.0, 3.0, 1.0])), str(path))
    return path


def _offset_after(path, out, forward_model, learning_rate=None) -> tuple[float, float]:
    """Fit from the LR volume + 0.2 (normalised units) and return the mean offset of the fitted samples from
    the LR volume before and after the fit."""
    overrides = dict(SHORT, forward_model=forward_model, batch_size=20 * 18 * 8)
    overrides["field_volume"] = "$@train#image[0] + 0.2"
    if learning_rate is not None:
        overrides["learning_rate"] = learning_rate
    result = fit(path, out, overrides)
    image = result.workflow.parser.get_parsed_content("train#image")[0]
    samples = result.network.coarse.samples.detach()
    return 0.2, float((samples - image).mean())


@pytest.mark.parametrize("profiles", [["point", "point", "box"], ["box", "box", "box"], ["point", "point", "gaussian"]])
def test_offset_decays_with_the_default_step(thick_volume, tmp_path, profiles):
    start, end = _offset_after(thick_volume, tmp_path, profiles)
    assert abs(end) < 0.02 * start, f"offset {start} → {end}"


def test_offset_is_not_damped_by_a_step_at_the_stability_limit(thick_volume, tmp_path):
    """The old rule (a step of one voxel update, c = 1, for a footprint of several samples) leaves the offset mode
    undamped: this is why the default step is derived from the forward model."""
    voxels = 20 * 18 * 8
    start, end = _offset_after(thick_volume, tmp_path, ["box", "box", "box"], learning_rate=float(voxels))
    assert abs(end) > 0.5 * start


def test_chosen_model_is_recorded(thick_volume, tmp_path):
    result = fit(thick_volume, tmp_path, dict(SHORT, slice_thickness=4.5, forward_model=["point", "point", "box"]))
    fm = result.forward_model
    assert fm["profiles"] == ["point", "point", "box"] and fm["widths"] == [0.0, 0.0, 4.5]
    assert fm["samples"] == [1, 1, 4] and fm["kernel"] in ("bspline", "keys", "linear")
    ckpt = torch.load(result.checkpoint, map_location="cpu", weights_only=False)
    assert ckpt["settings"]["forward_model"] == fm
    assert ckpt["settings"]["grid_counts"] == [1, 1, 4] and ckpt["settings"]["cube_size"] == [1.0, 1.0, 1.5]
    assert int(ckpt["model"]["coarse.kernel_id"]) == ["bspline", "keys", "linear"].index(fm["kernel"])


def test_resume_with_another_forward_model_is_refused(thick_volume, tmp_path):
    fit(thick_volume, tmp_path, dict(SHORT, forward_model="point"))
    with pytest.raises(Exception) as refused:
        fit(thick_volume, tmp_path, dict(SHORT, num_iterations=12, forward_model="box"))
    message = f"{refused.value} {refused.value.__cause__}"
    assert "other settings" in message and "forward_model" in message


@pytest.mark.parametrize("degradation, slice_axis", [("nearest", None), ("box", 2)])
def test_self_evaluation_reports_data_consistency(tmp_path, degradation, slice_axis):
    """The blind default reproduces its input: the SR volume, degraded as the LR was made, matches the LR (dB)."""
    from cunerf_monai.evaluation.selfeval import self_evaluate

    i, j, k = np.meshgrid(np.arange(32), np.arange(30), np.arange(24), indexing="ij")
    hr = 100 + 60 * np.sin(i / 3.0) * np.cos(j / 4.0) + 20 * np.sin(k / 2.5) * np.cos(i / 5.0)
    path = tmp_path / "hr.nii.gz"
    nib.save(nib.Nifti1Image(hr.astype(np.float32), np.eye(4)), str(path))
    metrics = self_evaluate(path, tmp_path / "eval", 2, slice_axis, degradation,
                            {"num_iterations": 40, "epoch_length": 40, "progress": False, "prior_steps": 20},
                            save_volumes=False)
    assert metrics["data_consistency_psnr_db"] > 45.0
    assert metrics["forward_model"]["source"] == "auto"
