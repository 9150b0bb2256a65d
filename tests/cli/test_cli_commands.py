"""The ``cunerf`` command line: help texts (arguments and units) and a tiny fit → render → slices chain.

Commands run in-process through ``cunerf_monai.cli.main`` (the console script's entry point) to keep the suite
fast; ``cunerf --help`` also runs as the installed script.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_SHAPE, TINY_SPACING, tiny_affine
from cunerf_monai.cli import main

SHAPE, SPACING = TINY_SHAPE, TINY_SPACING


def _help(argv: list[str], capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    cap = capsys.readouterr()
    return cap.out + cap.err  # fire prints some help pages on stdout, others on stderr


HELP_WORDS = {
    "fit": ["--input", "--out", "--config", "--iterations", "--batch_size", "--channel", "--seed", "NIfTI", "DICOM",
            "NRRD", "--forward_model", "--slice_thickness"],
    "render": ["MODEL_DIR", "--out", "--scale", "--spacing", "--reference", "--normalized", "--dtype", "float32",
               "mm"],
    "slices": ["MODEL_DIR", "--out", "--axis", "--angles", "--asteps", "--zpos", "--zoom", "--plane", "--size",
               "--pixel_size", "degrees", "mm"],
    "evaluate": ["--hr", "--out", "--scale", "--slice_axis", "--degradation", "--config", "--iterations",
                 "--channel", "nearest", "box", "gaussian", "--forward_model", "--slice_thickness"],
    "batch": ["--inputs", "--out", "--scale", "--iterations", "--batch_size", "--config", "--seed", "--forward_model",
              "--slice_thickness", "--timeout_hours", "--fail_on_error", "--summarize_only", "torchrun"],
}


@pytest.mark.parametrize("command", list(HELP_WORDS))
def test_command_help(command, capsys):
    text = _help([command, "--help"], capsys)
    assert f"cunerf {command}" in text
    missing = [w for w in HELP_WORDS[command] if w not in text]
    assert not missing, f"`cunerf {command} --help` does not mention {missing}:\n{text}"


def _flag_help(text: str, flag: str) -> str:
    """The help block of one flag (from ``--flag=VALUE`` to the next flag)."""
    assert f"{flag}=" in text, text
    return text.split(f"{flag}=", 1)[1].split("\n    -", 1)[0]


@pytest.mark.parametrize(
    "command, flag, unit",
    [("slices", "--angles", "degree"), ("slices", "--asteps", "degree"), ("slices", "--zpos", "mm"),
     ("render", "--spacing", "mm")],
)
def test_units_are_documented(command, flag, unit, capsys):
    block = _flag_help(_help([command, "--help"], capsys), flag)
    assert unit in block, f"{flag} of `cunerf {command}` has no unit:\n{block}"


def test_fit_input_help_is_complete(capsys):
    block = _flag_help(_help(["fit", "--help"], capsys), "--input")
    assert "Colin27" in block, block


def test_console_script_help():
    res = subprocess.run(["cunerf", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "cunerf" in res.stdout + res.stderr and "super-resolution" in res.stdout + res.stderr


def test_top_level_help_lists_the_commands(capsys):
    text = _help(["--help"], capsys)
    assert "COMMAND" in text
    for command in ("fit", "render", "slices", "evaluate", "batch"):
        assert f"\n     {command}\n" in text, text


def test_fit_render_slices_chain(tiny_nifti, tiny_overlay, tmp_path, capsys):
    model = tmp_path / "model"
    main(["fit", "--input", str(tiny_nifti), "--out", str(model), "--config", str(tiny_overlay), "--iterations", "2"])
    assert sorted(p.name for p in model.iterdir() if p.is_file()) == ["fit.json", "model.pt"]
    info = json.loads((model / "fit.json").read_text())
    assert info["input"] == str(tiny_nifti)
    assert info["overlays"] == [str(tiny_overlay.resolve())]
    assert info["overrides"]["num_iterations"] == 2
    assert isinstance(info["forward_model"], dict)  # the forward model the fit used
    ckpt = torch.load(model / "model.pt", map_location="cpu", weights_only=False)
    assert ckpt["trainer"]["iteration"] == 2
    assert ckpt["volume"]["geometry"]["shape"] == list(SHAPE)

    sr_path = tmp_path / "out" / "sr_x2.nii.gz"
    capsys.readouterr()
    main(["render", str(model), "--out", str(sr_path), "--scale", "2"])
    assert "[24, 28, 20]" in capsys.readouterr().out
    sr = nib.load(str(sr_path))
    assert sr.shape == (24, 28, 20)
    np.testing.assert_allclose(np.linalg.norm(sr.affine[:3, :3], axis=0), np.asarray(SPACING) / 2, atol=1e-5)
    # input voxel i sits at output voxel 2i: same world position
    idx = np.array([[0, 0, 0], [11, 13, 9], [3, 7, 2]], dtype=np.float64)
    lr = tiny_affine()
    np.testing.assert_allclose(
        (2 * idx) @ sr.affine[:3, :3].T + sr.affine[:3, 3], idx @ lr[:3, :3].T + lr[:3, 3], atol=1e-4
    )
    data = np.asarray(sr.dataobj)
    vol = np.asarray(nib.load(str(tiny_nifti)).dataobj)
    assert np.isfinite(data).all() and vol.min() - 1e-3 <= data.min() and data.max() <= vol.max() + 1e-3
    assert sorted(p.name for p in sr_path.parent.iterdir()) == ["sr_x2.nii.gz"]  # no temporary files left
    # an int16 input renders to int16 by default (rounded), to float32 on request or when normalised
    assert sr.get_data_dtype() == np.int16 and data.dtype == np.int16
    main(["render", str(model), "--out", str(tmp_path / "f32.nii.gz"), "--dtype", "float32"])
    as_float = nib.load(str(tmp_path / "f32.nii.gz"))
    assert as_float.get_data_dtype() == np.float32
    np.testing.assert_array_equal(data, np.rint(np.asarray(as_float.dataobj)))
    main(["render", str(model), "--out", str(tmp_path / "unit.nii.gz"), "--normalized"])
    unit = nib.load(str(tmp_path / "unit.nii.gz"))
    assert unit.get_data_dtype() == np.float32 and float(np.asarray(unit.dataobj).max()) <= 1.0
    with pytest.raises(SystemExit) as bad:
        main(["render", str(model), "--out", str(tmp_path / "x.nii.gz"), "--dtype", "int3"])
    assert bad.value.code == 2 and "dtype" in capsys.readouterr().err

    out = tmp_path / "slices"
    main(["slices", str(model), "--out", str(out), "--asteps", "180"])
    names = sorted(p.name for p in out.iterdir())
    assert names == ["slice_axial_angle0000.0.png", "slice_axial_angle0180.0.png", "sweep.gif"]
    # default size: the axial field of view (12 x 1.5 mm by 14 x 1.2 mm) at the finest spacing (1.2 mm)
    h, w = int(np.ceil(12 * 1.5 / 1.2)), int(np.ceil(14 * 1.2 / 1.2 - 1e-6))
    for name in names[:2]:
        with Image.open(out / name) as png:
            assert png.mode == "L" and png.size == (h, w)  # u (H) across, v (W) upwards
    with Image.open(out / "sweep.gif") as gif:
        assert gif.n_frames == 2 and gif.size == (h, w)

    # the bundle's inference step draws the slices of a x2 render at the render's finest spacing (0.6 mm)
    from cunerf_monai.cli import _inference_workflow

    wf = _inference_workflow(str(model), output_dir=str(tmp_path / "bundle"), **{"slices#asteps": 180.0})
    summary = wf.parser.get_parsed_content("renderer").run()
    assert summary["shape"] == [24, 28, 20] and summary["dtype"] == "int16"
    with Image.open(summary["slices"][0]) as png:
        assert png.size == (int(np.ceil(12 * 1.5 / 0.6 - 1e-6)), int(np.ceil(14 * 1.2 / 0.6 - 1e-6))) == (30, 28)


def _stub_fit(monkeypatch) -> dict:
    """Replace the fit by one that records its overrides and stops (``cunerf`` then exits with status 2)."""
    import cunerf_monai.fitting as fitting

    seen: dict = {}

    def fake_fit(image_path, output_dir, overrides=None, config_files=None):
        seen.update(files=list(config_files), overrides=dict(overrides or {}))
        raise RuntimeError("stop after configuration")

    monkeypatch.setattr(fitting, "fit", fake_fit)
    return seen


@pytest.mark.parametrize("command", ["fit", "evaluate", "batch"])
def test_forward_model_and_slice_thickness_are_config_overrides(command, tiny_nifti, tmp_path, monkeypatch):
    seen = _stub_fit(monkeypatch)
    source = {"fit": "--input", "evaluate": "--hr", "batch": "--inputs"}[command]
    argv = [command, source, str(tiny_nifti), "--out", str(tmp_path / "o"), "--iterations", "2"]
    with pytest.raises(SystemExit):
        main([*argv, "--forward_model", "box", "--slice_thickness", "1,1,4"])
    assert seen["overrides"]["forward_model"] == "box"
    assert seen["overrides"]["slice_thickness"] == [1.0, 1.0, 4.0]
    seen.clear()
    with pytest.raises(SystemExit):
        main(argv)
    assert "forward_model" not in seen["overrides"] and "slice_thickness" not in seen["overrides"]
    with pytest.raises(SystemExit) as bad:
        main([*argv, "--forward_model", "cubic"])
    assert bad.value.code == 2


def test_fit_iterations_is_the_number_of_training_iterations(tiny_nifti, tmp_path, monkeypatch):
    """What ``cunerf fit --iterations N`` configures, checked without training (the fit itself is stubbed)."""
    from monai.bundle import ConfigParser

    seen = _stub_fit(monkeypatch)
    with pytest.raises(SystemExit):
        main(["fit", "--input", str(tiny_nifti), "--out", str(tmp_path / "m"), "--iterations", "2"])
    parser = ConfigParser()
    parser.read_config(seen["files"])
    parser.update(seen["overrides"])
    epochs = parser.get_parsed_content("train#trainer#max_epochs")
    length = parser.get_parsed_content("train#trainer#epoch_length")
    assert epochs * length == 2, f"{epochs} epochs x {length} iterations"
