"""A model directory (cunerf_monai.modeldir): model.pt and fit.json as `cunerf fit` and `cunerf batch` write them."""

from __future__ import annotations

import json
from types import SimpleNamespace

from cunerf_monai.modeldir import checkpoint_of, overlays_of, save_model_dir


def _result(tmp_path, **extra):
    ckpt = tmp_path / "run" / "model.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(b"weights")
    return SimpleNamespace(checkpoint=str(ckpt), seconds=12.345, history=[(2, 30.5)], **extra)


def test_fit_json_records_the_fit_and_its_forward_model(tmp_path):
    mdir = tmp_path / "model"
    info = save_model_dir(mdir, _result(tmp_path, forward_model="box"), "in.nii.gz", ["/o/a.json"],
                          {"seed": 0, "num_iterations": 2, "batch_size": None})
    assert (mdir / "model.pt").read_bytes() == b"weights"
    stored = json.loads((mdir / "fit.json").read_text())
    assert stored == json.loads(json.dumps(info))
    assert stored == {"input": "in.nii.gz", "overlays": ["/o/a.json"], "overrides": {"seed": 0, "num_iterations": 2},
                      "fit_seconds": 12.3, "validation_psnr": [[2, 30.5]], "forward_model": "box"}
    assert overlays_of(mdir) == ["/o/a.json"]
    assert checkpoint_of(mdir) == str(mdir / "model.pt")
    assert checkpoint_of(mdir / "model.pt") == str(mdir / "model.pt")


def test_fit_json_leaves_out_an_absent_forward_model(tmp_path):
    for extra in ({}, {"forward_model": None}):
        save_model_dir(tmp_path / "m", _result(tmp_path, **extra), "in.nii.gz", [], {})
        assert "forward_model" not in json.loads((tmp_path / "m" / "fit.json").read_text())
    assert overlays_of(tmp_path / "elsewhere") == []
