"""The MONAI bundle: model-zoo checks, a tiny training run and inference with a correct output affine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from conftest import TINY_OVERLAY, tiny_affine

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundle" / "configs"
SCHEMA = ROOT / "tests" / "data" / "meta_schema_20240725.json"  # MONAI model-zoo schema, kept offline
TINY = {  # the tiny overlay's training settings, 4 iterations, the configs' own test-time sample counts
    "num_iterations": 4,
    **{k: TINY_OVERLAY[k] for k in ("epoch_length", "batch_size", "num_coarse", "num_fine", "progress", "prior")},
    "chunk_size": 512,
}


@pytest.fixture(scope="module")
def trained(tiny_nifti, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train")
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"),
        workflow_type="train",
        input_image=str(tiny_nifti),
        output_dir=str(out),
        **TINY,
    )
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    return out / "checkpoints" / "model.pt"


def test_metadata_is_valid():
    pytest.importorskip("jsonschema")
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA))
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    assert meta["pytorch_version"] == torch.__version__.split("+")[0]


def test_training_writes_checkpoint_with_volume_record(trained, tiny_nifti):
    ckpt = torch.load(trained, weights_only=False)
    assert {"model", "optimizer", "trainer", "volume", "lr_scheduler"} <= set(ckpt)
    assert ckpt["trainer"]["iteration"] == TINY["num_iterations"]
    geo = ckpt["volume"]["geometry"]
    assert geo["shape"] == [12, 14, 10]
    np.testing.assert_allclose(np.asarray(geo["affine"]), tiny_affine(), atol=1e-5)
    lo, hi = ckpt["volume"]["intensity_range"]
    vol = nib.load(str(tiny_nifti)).get_fdata()
    assert lo == pytest.approx(vol.min()) and hi == pytest.approx(vol.max())


def test_inference_writes_x2_nifti_with_correct_affine(trained, tiny_nifti, tmp_path):
    out = tmp_path / "inf"
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"),
        workflow_type="inference",
        checkpoint=str(trained),
        output_dir=str(out),
        scale=2.0,
        slices={"axis": [1.0, 1.0, 0.0], "angles": [0.0, 360.0], "asteps": 120.0, "size": [16, 16]},
        progress=False,
    )
    wf.initialize()
    assert wf.check_properties() == []
    renderer = wf.parser.get_parsed_content("renderer")
    assert type(renderer).__name__ == "VolumeRenderer"
    assert wf.parser.get_parsed_content("evaluator") is renderer  # MONAI's required inference property
    wf.run()
    wf.finalize()
    sr = nib.load(str(out / "sr.nii.gz"))
    assert sr.shape == (24, 28, 20)
    lr_aff = nib.load(str(tiny_nifti)).affine
    # the world position of every input voxel centre i is reproduced at output voxel 2·i
    idx = np.stack(np.meshgrid(np.arange(12), np.arange(14), np.arange(10), indexing="ij"), -1).reshape(-1, 3)
    world_in = idx @ lr_aff[:3, :3].T + lr_aff[:3, 3]
    world_out = (2 * idx) @ sr.affine[:3, :3].T + sr.affine[:3, 3]
    np.testing.assert_allclose(world_out, world_in, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(sr.affine[:3, :3], axis=0), [0.75, 0.6, 1.5], atol=1e-5)
    # intensities come back in the input's range
    data = sr.get_fdata()
    vol = nib.load(str(tiny_nifti)).get_fdata()
    assert np.isfinite(data).all()
    assert vol.min() - 1e-3 <= data.min() and data.max() <= vol.max() + 1e-3
    pngs = sorted((out / "slices").glob("*.png"))
    assert len(pngs) == 3 and (out / "slices" / "sweep.gif").is_file()
    summary = json.loads((out / "render.json").read_text())
    assert summary["shape"] == [24, 28, 20]


def _messages_of_failed_run(wf: ConfigWorkflow) -> list[str]:
    """Initialise and run ``wf``, which must fail; the messages of the exception and its causes."""
    with pytest.raises(Exception) as info:
        wf.initialize()
        wf.run()
    chain, exc = [], info.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__
    return chain


def test_inference_refuses_missing_checkpoint(tmp_path):
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"),
        workflow_type="inference",
        checkpoint=str(tmp_path / "nope.pt"),
        output_dir=str(tmp_path / "out"),
    )
    chain = _messages_of_failed_run(wf)
    assert any("Checkpoint not found" in m for m in chain), chain
    assert not (tmp_path / "out" / "sr.nii.gz").exists()


def _bundle_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUNERF_BUNDLE_ROOT=str(ROOT / "bundle"))
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_model_zoo_checks(trained, tmp_path):
    meta = str(CONFIGS / "metadata.json")
    cfg = str(CONFIGS / "inference.json")
    res = _bundle_cli(
        "verify_net_in_out", "network_def", "--meta_file", meta, "--config_file", cfg,
        "--checkpoint", str(trained), cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    ts = tmp_path / "model.ts"
    res = _bundle_cli(
        "ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file", str(trained), "--key_in_ckpt", "model",
        "--meta_file", meta, "--config_file", cfg, "--checkpoint", str(trained),
        "--use_trace", "True", "--input_shape", "[1, 3, 4, 4, 4]", cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    scripted = torch.jit.load(str(ts))
    x = torch.rand(1, 3, 5, 6, 7) * 2 - 1
    assert tuple(scripted(x).shape) == (1, 2, 5, 6, 7)


@pytest.mark.parametrize(
    "override, words",
    [({"batch_size": "many"}, "batch_size must be a positive integer"),
     ({"batch_size": 12.5}, "batch_size must be a positive integer"),
     ({"cube_size": "big"}, "cube_size must be one number or three")],
)
def test_config_override_of_wrong_type_is_named(tiny_nifti, tmp_path, override, words):
    wf = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), workflow_type="train", input_image=str(tiny_nifti),
                        output_dir=str(tmp_path), **{**TINY, **override})
    chain = _messages_of_failed_run(wf)
    assert any(words in m for m in chain), chain
    assert not (tmp_path / "checkpoints" / "model.pt").exists()


def test_shipped_model_loads_into_the_inference_network(tmp_path):
    """The shipped checkpoint predates the grid field's kernel_id buffer: it loads (as a cubic B-spline field)."""
    from cunerf_monai.checkpoints import load_checkpoint

    shipped = ROOT / "bundle" / "models" / "model.pt"
    assert "coarse.kernel_id" not in torch.load(shipped, map_location="cpu", weights_only=False)["model"]
    wf = ConfigWorkflow(config_file=str(CONFIGS / "inference.json"), workflow_type="inference",
                        checkpoint=str(shipped), output_dir=str(tmp_path), device="$torch.device('cpu')")
    wf.initialize()
    network = wf.parser.get_parsed_content("network")
    record = load_checkpoint(shipped, network)
    assert network.coarse.kernel == "bspline" and tuple(record.geometry.shape) == tuple(network.coarse.shape)
