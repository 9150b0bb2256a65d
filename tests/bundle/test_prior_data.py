"""A prior trained with HR volumes a user already has (prior_data), saved with the fit (prior_model.pt) and applied
to other scans (prior: PATH), with the errors of each setting."""

from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from conftest import blocks
from cunerf_monai.cli import Commands, model_overrides
from cunerf_monai.fitting import fit
from cunerf_monai.slice_prior import PRIOR_MODEL_FILE, SlicePrior, load_prior_data, load_prior_model
from cunerf_monai.transforms.array import SimulateLowResolution
from cunerf_monai.utils import telling_error

SHORT = {"num_iterations": 2, "epoch_length": 2, "batch_size": 256, "chunk_size": 4096, "progress": False,
         "prior_steps": 30, "prior_min_gain": -100.0, "forward_model": "box", "prior_spacing": 1.0}


def lr_scan(path, seed: int, factor: int = 2):
    """A box-degraded ×``factor`` blocks volume (2 mm voxels for ×2) written as NIfTI."""
    hr = blocks(32, count=50, seed=seed)
    lr = SimulateLowResolution((factor,) * 3, "box")(MetaTensor(torch.from_numpy(hr)[None], affine=torch.eye(4, dtype=torch.float64)))
    nib.save(nib.Nifti1Image(lr[0].numpy(), np.asarray(lr.affine)), str(path))
    return path


@pytest.fixture(scope="module")
def hr_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hr")
    nib.save(nib.Nifti1Image(blocks(32, count=50, seed=7), np.eye(4)), str(folder / "atlas.nii.gz"))
    (folder / "notes.txt").write_text("not a volume: skipped")
    return folder


@pytest.fixture(scope="module")
def trained(hr_folder, tmp_path_factory):
    """A fit whose prior also learned from the HR folder, saved as a model folder by the CLI."""
    tmp = tmp_path_factory.mktemp("trained")
    overlay = tmp / "short.json"
    overlay.write_text(json.dumps({k: v for k, v in SHORT.items() if k not in ("forward_model", "prior_spacing")}))
    scan = lr_scan(tmp / "scan.nii.gz", seed=1)
    Commands().fit(str(scan), out=str(tmp / "model"), config=str(overlay), forward_model="box", prior_spacing=1.0,
                   prior_data=str(hr_folder))
    return tmp / "model"


def test_prior_data_volumes_are_read_from_a_folder(hr_folder):
    volumes = load_prior_data(hr_folder)
    assert [v.name for v in volumes] == ["atlas.nii.gz"] and volumes[0].spacing == (1.0, 1.0, 1.0)
    assert float(volumes[0].volume.min()) == 0.0 and float(volumes[0].volume.max()) == 1.0


def test_fit_with_prior_data_trains_on_its_pairs_and_saves_the_prior(trained):
    info = json.loads((trained / "fit.json").read_text())
    assert info["prior"]["kind"] == "cross-scale" and info["prior"]["data"] == ["atlas.nii.gz"]
    assert info["prior_model"] == PRIOR_MODEL_FILE
    saved = load_prior_model(trained)  # a model folder names its prior
    assert saved["learned"]["stages"] == [[[2, 2.0]]] and saved["learned"]["profile"] == "box"


def test_more_training_pairs_come_from_the_hr_volumes(hr_folder, tmp_path, monkeypatch):
    planes = []
    train = SlicePrior.train

    def counting(self, groups, steps=None):
        planes.append(sum(inputs.shape[0] for inputs, _ in groups))
        return train(self, groups, steps)

    monkeypatch.setattr(SlicePrior, "train", counting)
    scan = lr_scan(tmp_path / "scan.nii.gz", seed=1)
    fit(scan, tmp_path / "alone", dict(SHORT))
    fit(scan, tmp_path / "with", dict(SHORT, prior_data=str(hr_folder)))
    assert planes[1] - planes[0] == 6 * 32 * 2  # 6 orientations × 32 planes × 2 phases of the 32³ atlas at 1 mm


def test_saved_prior_is_applied_to_another_volume_without_training(trained, tmp_path):
    saved = load_prior_model(trained / PRIOR_MODEL_FILE)
    other = lr_scan(tmp_path / "other.nii.gz", seed=2)
    result = fit(other, tmp_path / "run", dict(SHORT, prior=str(trained)))
    assert result.prior["applied"] is True and result.prior["pretrained"].endswith(PRIOR_MODEL_FILE)
    assert result.prior["train_l1"] is None  # loaded, not trained
    network = result.workflow.parser.get_parsed_content("learned_prior").network
    for name, value in network.state_dict().items():
        torch.testing.assert_close(value, saved["networks"][0][name])
    assert result.prior["consistency_psnr_db"] >= 45.0


def test_saved_prior_of_another_task_is_refused_by_name(trained, tmp_path):
    coarser = lr_scan(tmp_path / "x4.nii.gz", seed=2, factor=4)  # 4 mm voxels at 1 mm: ×4, not the saved ×2
    with pytest.raises(RuntimeError) as refused:  # MONAI wraps the config's error: the fit names it
        fit(coarser, tmp_path / "run", dict(SHORT, prior=str(trained)))
    error = telling_error(refused.value)
    assert isinstance(error, ValueError)
    # ×4 is taken as two ×2 stages: the saved single ×2 stage is not that task
    assert re.search(r"learned .*'stages': \[\[\[2, 2\.0\]\]\].*needs .*'stages': \[\[\[2, 2\.0\]\], \[\[2, 2\.0\]\]\]",
                     str(error))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prior": "no/such/prior_model.pt"}, "no such file or folder"),
        ({"prior_data": "no/such/folder"}, "prior_data must be a folder"),
    ],
)
def test_bad_prior_sources_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        model_overrides(**kwargs)


def test_a_checkpoint_or_an_empty_folder_is_not_a_prior_source(trained, tmp_path):
    with pytest.raises(ValueError, match="not a saved prior"):
        load_prior_model(trained / "model.pt")
    with pytest.raises(ValueError, match="holds no volume"):
        load_prior_data(tmp_path)
    with pytest.raises(ValueError, match="holds no prior_model.pt"):
        load_prior_model(tmp_path)
