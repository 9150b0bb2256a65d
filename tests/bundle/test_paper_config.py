"""``train_paper.json`` (the paper's MLP, isotropic rendering, coarse and fine networks, Adam) trains through the bundle:
a short run on a tiny volume lowers the loss and brings both the coarse and the fine render closer to the volume;
the same run with ``amp`` (bf16 autocast on the CPU) evaluates the fields in bf16 and still lowers a finite loss."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

from cunerf_monai.geometry import TargetGrid

CONFIGS = Path(__file__).resolve().parents[2] / "bundle" / "configs"
#: the paper's networks and schedule, with small sample counts and batch so a few dozen steps take seconds
SHORT = {"num_iterations": 40, "epoch_length": 40, "batch_size": 64, "num_coarse": 8, "num_fine": 8,
         "chunk_size": 4096, "progress": False, "seed": 0}


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> Path:
    """An 8 x 8 x 6 volume (intensities 100–300), 2 mm isotropic."""
    path = tmp_path_factory.mktemp("paper") / "vol.nii.gz"
    i, j, k = np.meshgrid(np.arange(8), np.arange(8), np.arange(6), indexing="ij")
    vol = 200 + 80 * np.sin(i / 2.0) * np.cos(j / 3.0) + 20 * k / 5.0
    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    return path


def _workflow(volume: Path, out: Path, **overrides) -> ConfigWorkflow:
    wf = ConfigWorkflow(config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "train_paper.json")],
                        workflow_type="train", input_image=str(volume), output_dir=str(out), **{**SHORT, **overrides})
    wf.initialize()
    return wf


def _render_errors(wf: ConfigWorkflow) -> tuple[float, float]:
    """Mean squared error of the test-time coarse render (coarse field alone) and of the final (fine) render
    against the fitted volume at its own voxel centres."""
    network, inferer = wf.parser.get_parsed_content("network"), wf.parser.get_parsed_content("inferer")
    geometry = wf.parser.get_parsed_content("volume_record").geometry
    target = wf.parser.get_parsed_content("train#image")[0].as_tensor().float()
    grid = TargetGrid(tuple(geometry.shape), np.asarray(geometry.affine))
    fine = inferer.render_grid(network, geometry, grid)
    coarse = inferer.coarse_only().render_grid(network, geometry, grid)
    return float(((coarse - target) ** 2).mean()), float(((fine - target) ** 2).mean())


def _losses(wf: ConfigWorkflow) -> list[float]:
    trainer = wf.parser.get_parsed_content("train#trainer")
    losses: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output[0]["loss"])))
    return losses


def test_short_paper_run_fits_coarse_and_fine(volume, tmp_path):
    wf = _workflow(volume, tmp_path)
    inferer = wf.parser.get_parsed_content("inferer")
    assert (inferer.num_coarse_eval, inferer.num_fine_eval, inferer.weighting) == (8, 8, "isotropic")
    assert wf.parser.get_parsed_content("network").fine is not None  # a separate fine network
    coarse_before, fine_before = _render_errors(wf)
    losses = _losses(wf)
    wf.run()
    wf.finalize()
    assert len(losses) == SHORT["num_iterations"] and np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    coarse_after, fine_after = _render_errors(wf)
    # (measured: coarse 0.048 → 0.028, fine 0.046 → 0.016)
    assert coarse_after < 0.75 * coarse_before, (coarse_before, coarse_after)
    assert fine_after < 0.6 * fine_before, (fine_before, fine_after)


def test_amp_bf16_training_step_on_cpu(volume, tmp_path):
    wf = _workflow(volume, tmp_path, amp=True, amp_dtype="bfloat16", device=torch.device("cpu"))
    network = wf.parser.get_parsed_content("network")
    assert wf.parser.get_parsed_content("train#inferer").autocast_dtype == torch.bfloat16
    assert wf.parser.get_parsed_content("inferer").autocast_dtype is None  # test-time rendering stays float32
    seen: set[torch.dtype] = set()
    hook = network.coarse.head.register_forward_hook(lambda m, i, o: seen.add(o.dtype) if m.training else None)
    losses = _losses(wf)
    wf.run()
    wf.finalize()
    hook.remove()
    assert seen == {torch.bfloat16}  # the training forward pass ran the field in bf16
    assert all(p.dtype == torch.float32 for p in network.parameters())  # master weights stay float32
    assert np.isfinite(losses).all() and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


def test_amp_settings_are_checked():
    from cunerf_monai.precision import autocast_dtype

    assert autocast_dtype("cpu", False, "float16") is None
    assert autocast_dtype("cpu", True, "bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="CUDA"):
        autocast_dtype("cpu", True, "float16")
    with pytest.raises(ValueError, match="amp_dtype"):
        autocast_dtype("cpu", True, "float8")
