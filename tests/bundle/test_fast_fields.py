"""The hash-grid overlays train and render through the same bundle commands as the default field."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from cunerf_monai.geometry import TargetGrid
from cunerf_monai.networks import ResidualField

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundle" / "configs"
TINY = {"num_iterations": 6, "epoch_length": 3, "batch_size": 128, "chunk_size": 512, "progress": False}
#: smaller tables than the overlays' (2^17 / 2^21 rows per level): a tiny volume needs few, and checkpoints stay small
SMALL_TABLE = {"hashgrid.json": {"field#encoding#log2_hashmap_size": 12},
               "hashgrid_residual.json": {"field#field#encoding#log2_hashmap_size": 12}}


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> Path:
    """A 10 x 12 x 8 volume with texture finer than its voxels, 2 mm isotropic."""
    path = tmp_path_factory.mktemp("fast") / "vol.nii.gz"
    i, j, k = np.meshgrid(np.arange(10), np.arange(12), np.arange(8), indexing="ij")
    vol = 200 + 100 * np.sin(i * 1.3) * np.cos(j * 0.9) + 30 * np.sin(k * 2.1)
    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    return path


def _train(overlay: str, volume: Path, out: Path, **overrides) -> ConfigWorkflow:
    wf = ConfigWorkflow(config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "fields" / overlay)],
                        workflow_type="train", input_image=str(volume), output_dir=str(out),
                        **{**TINY, **overrides}, **SMALL_TABLE[overlay])
    wf.initialize()
    return wf


@pytest.mark.parametrize("overlay, field_name", [("hashgrid.json", "hashgrid"),
                                                 ("hashgrid_residual.json", "hashgrid_residual")])
def forward_model_error(wf: ConfigWorkflow) -> float:
    """Mean squared error between the volume and the fit's training forward model (each voxel rendered as its
    cube, with the training sample counts, deterministically): what the training loss lowers."""
    network = wf.parser.get_parsed_content("network")
    inferer = wf.parser.get_parsed_content("inferer").with_training_forward_model()
    geometry = wf.parser.get_parsed_content("volume_record").geometry
    image = wf.parser.get_parsed_content("train#image")[0].as_tensor().float()
    rendered = inferer.render_grid(network, geometry, TargetGrid(tuple(geometry.shape), np.asarray(geometry.affine)))
    return float(((rendered - image) ** 2).mean())


@pytest.mark.parametrize("overlay, field_name", [("hashgrid.json", "hashgrid"),
                                                 ("hashgrid_residual.json", "hashgrid_residual")])
def test_overlay_trains_and_renders(overlay, field_name, volume, tmp_path):
    # 40 steps (the overlay's learning-rate decay compressed into them), one validation at the end
    # the residual field starts at the interpolant, which already fits point samples exactly (what `auto` takes this
    # isotropic volume for): it has something to learn under a box footprint
    footprint = {"forward_model": "box"} if overlay == "hashgrid_residual.json" else {}
    wf = _train(overlay, volume, tmp_path / "train", num_iterations=40, epoch_length=40, **footprint)
    before = forward_model_error(wf)
    wf.run()
    wf.finalize()
    after = forward_model_error(wf)
    # it trained towards the volume (measured: 0.052 → 0.010 for the hash grid, 6.1e-4 → 9.7e-5 on the B-spline
    # prior); a loss of the wrong sign, or steps that do not reach the field, leave it at or above the start
    assert after < 0.5 * before, (before, after)
    ckpt = tmp_path / "train" / "checkpoints" / "model.pt"
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["volume"]["field"] == field_name
    inf = ConfigWorkflow(config_file=[str(CONFIGS / "inference.json"), str(CONFIGS / "fields" / overlay)],
                         workflow_type="inference", checkpoint=str(ckpt), output_dir=str(tmp_path / "inf"),
                         scale=2.0, slices=None, progress=False, chunk_size=512, **SMALL_TABLE[overlay])
    inf.initialize()
    inf.run()
    inf.finalize()
    sr = nib.load(str(tmp_path / "inf" / "sr.nii.gz"))
    assert sr.shape == (20, 24, 16)
    np.testing.assert_allclose(np.diag(sr.affine)[:3], [1.0, 1.0, 1.0])
    assert np.isfinite(sr.get_fdata()).all()


def test_residual_overlay_starts_at_the_cubic_interpolant(volume, tmp_path):
    """Before training, the residual field is exactly the B-spline interpolant: it reproduces every LR voxel and
    its finest hash-grid level has vertices on the HR voxel centres of a ×2 render (padding 0.75)."""
    wf = _train("hashgrid_residual.json", volume, tmp_path)
    network = wf.parser.get_parsed_content("network")
    field = network.coarse
    assert isinstance(field, ResidualField)
    shape = wf.parser.get_parsed_content("volume_shape")
    assert field.field.encoding.resolutions[-1] == tuple(2 * s + 3 for s in shape)  # 2 · (S + 2P), P = 0.75
    geometry = wf.parser.get_parsed_content("volume_record").geometry
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3).astype(float)
    pts = torch.as_tensor(geometry.index_to_field(idx), dtype=torch.float32)
    with torch.no_grad():
        values = field(pts)[:, 0].reshape(shape)
    image = wf.parser.get_parsed_content("train#image")[0]
    assert torch.allclose(values, image.as_tensor().float(), atol=2e-3)
