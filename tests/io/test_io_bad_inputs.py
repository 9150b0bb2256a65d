"""Bad inputs are refused with a message naming the problem, and leave no output behind.

Each case runs the ``cunerf`` command line in-process (``cunerf_monai.cli.main``, the console script's entry
point): exit status 2, ``cunerf: error: …`` on stderr, no model/volume/slice written. Input-file cases are also
checked at the library level (``load_volume`` raises ``ValueError`` / ``FileNotFoundError``). One case runs the
installed ``cunerf`` script in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import TINY_SHAPE, tiny_affine, tiny_array
from cunerf_monai.cli import main
from cunerf_monai.io import load_volume

SHAPE = TINY_SHAPE
# a model fitted with another hash-table size: its checkpoint does not fit the default network
OTHER_NETWORK_OVERLAY = {"field#prefilter_half_width": 2}

def _volume(shape=SHAPE) -> np.ndarray:
    return tiny_array(shape)


def _save(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, tiny_affine()), str(path))
    return path


def _real_gz(d: Path) -> Path:
    return _save(d / "real.nii.gz", _volume())


def _with(value: float) -> np.ndarray:
    vol = _volume()
    vol[3, 4, 5] = value
    return vol


def _write(path: Path, content: bytes | str) -> Path:
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    return path


def _folder(path: Path, files: dict[str, str] | None = None) -> Path:
    path.mkdir()
    for name, text in (files or {}).items():
        (path / name).write_text(text)
    return path


def _stack(n: int) -> np.ndarray:
    return np.stack([(c + 1) * _volume() for c in range(n)], axis=-1)


# name -> (builder of the bad input in a folder, extra fit arguments, expected words of the message, error type)
INPUT_CASES: dict[str, tuple[Callable[[Path], Path], list[str], str, type]] = {
    "missing_path": (lambda d: d / "nope.nii.gz", [], "not found", FileNotFoundError),
    "text_named_nii_gz": (
        lambda d: _write(d / "notes.nii.gz", "not an image\n"), [], "not gzip-compressed", ValueError
    ),
    "truncated_nii_gz_header": (
        lambda d: _write(d / "cut.nii.gz", _real_gz(d).read_bytes()[:100]), [], "truncated", ValueError
    ),
    "truncated_nii_gz_data": (
        lambda d: _write(d / "half.nii.gz", _real_gz(d).read_bytes()[:-200]), [], "truncated", ValueError
    ),
    "empty_nii_gz": (lambda d: _write(d / "empty.nii.gz", b""), [], "empty file", ValueError),
    "truncated_nii": (
        lambda d: _write(d / "cut.nii", _save(d / "real.nii", _volume()).read_bytes()[:1000]), [], "truncated",
        ValueError,
    ),
    "image_2d": (lambda d: _save(d / "plane.nii.gz", _volume()[:, :, 0]), [], "2D image", ValueError),
    "single_slice": (lambda d: _save(d / "slice.nii.gz", _volume()[:, :, :1]), [], "single slice", ValueError),
    "too_small_1x5x5": (lambda d: _save(d / "small.nii.gz", _volume((1, 5, 5))), [], "(1, 5, 5)", ValueError),
    "4d_without_channel": (lambda d: _save(d / "four.nii.gz", _stack(3)), [], "4D image with 3 channels", ValueError),
    "4d_channel_out_of_range": (
        lambda d: _save(d / "four.nii.gz", _stack(2)), ["--channel", "5"], "channel 5 does not exist", ValueError
    ),
    "nan_voxels": (lambda d: _save(d / "nan.nii.gz", _with(np.nan)), [], "NaN", ValueError),
    "inf_voxels": (lambda d: _save(d / "inf.nii.gz", _with(np.inf)), [], "infinite", ValueError),
    "constant_volume": (lambda d: _save(d / "flat.nii.gz", np.full(SHAPE, 7, np.float32)), [], "constant", ValueError),
    "empty_folder": (lambda d: _folder(d / "dicom"), [], "empty", ValueError),
    "folder_without_dicom": (lambda d: _folder(d / "notes", {"a.txt": "x"}), [], "No DICOM series", ValueError),
    "text_named_nrrd": (lambda d: _write(d / "volume.nrrd", "not an image\n"), [], "Could not read", ValueError),
}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad_inputs")


@pytest.fixture(scope="module")
def fitted(work, tiny_overlay) -> Path:
    """A model directory fitted (2 iterations) on a tiny NIfTI volume."""
    src = _save(work / "tiny.nii.gz", _volume())
    out = work / "model"
    main(["fit", "--input", str(src), "--out", str(out), "--config", str(tiny_overlay), "--iterations", "2"])
    return out


@pytest.fixture(scope="module")
def fitted_other(work, tiny_overlay) -> Path:
    """A model fitted with another hash-table size, on channel 1 of a 4D image (``--channel 1``)."""
    src = _save(work / "four.nii.gz", _stack(3))
    overlay = work / "other_network.json"
    overlay.write_text(json.dumps(OTHER_NETWORK_OVERLAY))
    out = work / "model_other"
    main([
        "fit", "--input", str(src), "--out", str(out), "--config", f"{tiny_overlay},{overlay}",
        "--iterations", "2", "--channel", "1",
    ])
    return out


def _cli_error(argv: list[str], capsys) -> str:
    """Run the CLI in-process; it must exit with status 2 and print one ``cunerf: error:`` line. Returns it."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("cunerf: error:")]
    assert len(lines) == 1, err[-2000:]
    assert "Traceback" not in err
    return lines[0]


def _files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


@pytest.mark.parametrize("case", list(INPUT_CASES))
def test_load_volume_refuses(case, tmp_path):
    build, extra, words, error = INPUT_CASES[case]
    path = build(tmp_path)
    channel = int(extra[1]) if extra else None
    with pytest.raises(error) as info:
        load_volume(path, channel=channel)
    assert words in str(info.value)
    assert path.name in str(info.value)


@pytest.mark.parametrize("case", list(INPUT_CASES))
def test_cli_fit_refuses_bad_input(case, tmp_path, tiny_overlay, capsys):
    build, extra, words, _ = INPUT_CASES[case]
    path = build(tmp_path)
    out = tmp_path / "model_out"
    line = _cli_error(
        ["fit", "--input", str(path), "--out", str(out), "--config", str(tiny_overlay), "--iterations", "2", *extra],
        capsys,
    )
    assert words in line and path.name in line, line
    assert _files_under(out) == []


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--iterations", "0"], "iterations must be a positive integer"),
        (["--batch_size", "0"], "batch_size must be a positive integer"),
        (["--config", "no_such_overlay.json"], "Config overlay not found"),
    ],
    ids=["iterations_0", "batch_size_0", "missing_overlay"],
)
def test_cli_fit_refuses_bad_settings(extra, words, tmp_path, capsys):
    src = _save(tmp_path / "ok.nii.gz", _volume())
    out = tmp_path / "model_out"
    line = _cli_error(["fit", "--input", str(src), "--out", str(out), *extra], capsys)
    assert words in line, line
    assert _files_under(out) == []


RENDER_CASES = {
    "scale_zero": (["--scale", "0"], "scale must be positive"),
    "scale_negative": (["--scale=-1"], "scale must be positive"),
    "scale_nan": (["--scale", "nan"], "scale must be positive"),
    "scale_absurd_1e6": (["--scale", "1e6"], "absurdly large"),
    "scale_two_values": (["--scale", "2,2"], "one number or three"),
    "scale_not_a_number": (["--scale", "big"], "scale must be a number"),
    "spacing_zero": (["--spacing", "0"], "spacing must be positive (mm)"),
    "spacing_negative": (["--spacing=-0.5"], "spacing must be positive (mm)"),
    "spacing_one_axis_zero": (["--spacing", "1,0,1"], "spacing must be positive (mm)"),
    "reference_missing": (["--reference", "{tmp}/no_reference.nii.gz"], "not found"),
}


@pytest.mark.parametrize(
    "case", RENDER_CASES
)
def test_cli_render_refuses_bad_grid(case, fitted, tmp_path, capsys):
    extra, words = RENDER_CASES[case]
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    out_dir = tmp_path / "render_out"
    start = time.perf_counter()
    line = _cli_error(["render", str(fitted), "--out", str(out_dir / "sr.nii.gz"), *extra], capsys)
    assert words in line, line
    assert time.perf_counter() - start < 20.0  # refused up front, nothing rendered or allocated
    assert _files_under(out_dir) == []


def test_cli_render_refuses_non_nifti_output(fitted, tmp_path, capsys):
    line = _cli_error(["render", str(fitted), "--out", str(tmp_path / "sr.png")], capsys)
    assert "NIfTI" in line and "sr.png" in line
    assert _files_under(tmp_path) == []


def test_cli_render_refuses_missing_checkpoint(tmp_path, capsys):
    empty_model = tmp_path / "empty_model"
    empty_model.mkdir()
    for model in (empty_model, tmp_path / "no_such_model"):
        line = _cli_error(["render", str(model), "--out", str(tmp_path / "out" / "sr.nii.gz")], capsys)
        assert "Checkpoint not found" in line and model.name in line, line
    assert _files_under(tmp_path / "out") == []


def test_cli_render_refuses_foreign_dict_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "random.pt"
    torch.save({"weights": torch.zeros(3), "epoch": 1}, ckpt)
    line = _cli_error(["render", str(ckpt), "--out", str(tmp_path / "out" / "sr.nii.gz")], capsys)
    assert "not a cunerf-monai checkpoint" in line and "random.pt" in line, line
    assert _files_under(tmp_path / "out") == []


def test_cli_render_refuses_checkpoint_of_another_network(fitted_other, tmp_path, capsys):
    """The checkpoint file alone (without the model directory's fit.json) is rendered with the default config."""
    line = _cli_error(
        ["render", str(fitted_other / "model.pt"), "--out", str(tmp_path / "out" / "sr.nii.gz")], capsys
    )
    assert "another network or configuration" in line and "model.pt" in line, line
    assert "shape mismatch" in line
    assert _files_under(tmp_path / "out") == []


def test_cli_4d_with_channel_fits_and_renders(fitted_other, tmp_path, capsys):
    """``--channel 1`` makes a 4D image usable; the model directory re-applies its config when rendering."""
    info = json.loads((fitted_other / "fit.json").read_text())
    assert info["overrides"]["channel"] == 1
    ckpt = torch.load(fitted_other / "model.pt", map_location="cpu", weights_only=False)
    lo, hi = ckpt["volume"]["intensity_range"]
    assert lo == pytest.approx(2 * float(_volume().min())) and hi == pytest.approx(2 * float(_volume().max()))
    out = tmp_path / "sr.nii.gz"
    main(["render", str(fitted_other), "--out", str(out), "--scale", "2"])
    assert nib.load(str(out)).shape == tuple(2 * s for s in SHAPE)


@pytest.mark.parametrize("kind", ["text", "truncated"])
def test_cli_render_refuses_unreadable_checkpoint(kind, fitted, tmp_path, capsys):
    ckpt = tmp_path / "broken.pt"
    if kind == "text":
        ckpt.write_text('{"not": "a checkpoint"}')
    else:
        ckpt.write_bytes((fitted / "model.pt").read_bytes()[:100])
    line = _cli_error(["render", str(ckpt), "--out", str(tmp_path / "out" / "sr.nii.gz")], capsys)
    assert "not a readable PyTorch checkpoint" in line and "broken.pt" in line, line
    assert _files_under(tmp_path / "out") == []


@pytest.mark.parametrize(
    "extra, words",
    [(["--asteps", "0"], "asteps positive (degrees)"), (["--zoom", "0"], "zoom must be positive")],
    ids=["asteps_0", "zoom_0"],
)
def test_cli_slices_refuses_bad_settings(extra, words, fitted, tmp_path, capsys):
    out = tmp_path / "slices"
    line = _cli_error(["slices", str(fitted), "--out", str(out), *extra], capsys)
    assert words in line, line
    assert _files_under(out) == []


def test_cli_render_onto_a_constant_reference_grid(fitted, tmp_path, capsys):
    ref = _save(tmp_path / "zeros.nii.gz", np.zeros((6, 7, 5), np.float32))
    out = tmp_path / "on_ref.nii.gz"
    main(["render", str(fitted), "--out", str(out), "--reference", str(ref)])
    assert nib.load(str(out)).shape == (6, 7, 5)


def test_load_volume_refuses_degenerate_geometry(tmp_path, monkeypatch):
    """A zero voxel size or coinciding axes (readers normally repair these; the check is the last line)."""
    import cunerf_monai.io as io_module
    from monai.data import MetaTensor

    path = _save(tmp_path / "ok.nii.gz", _volume())
    singular = np.diag([1.5, 0.0, 3.0, 1.0])
    monkeypatch.setattr(
        io_module, "LoadImage", lambda **kw: (lambda p: MetaTensor(torch.as_tensor(_volume())[None], affine=singular))
    )
    with pytest.raises(ValueError, match="degenerate geometry"):
        load_volume(path)


@pytest.mark.parametrize("channel", ["1", 1.5, True])
def test_load_volume_refuses_non_integer_channel(channel, tmp_path):
    path = _save(tmp_path / "four.nii.gz", _stack(2))
    with pytest.raises(ValueError, match=f"channel {channel} does not exist"):
        load_volume(path, channel=channel)


def test_console_script_reports_missing_input(tmp_path):
    """The installed ``cunerf`` script: non-zero exit, the message on stderr, no traceback, no output."""
    out = tmp_path / "model"
    res = subprocess.run(
        ["cunerf", "fit", "--input", str(tmp_path / "missing.nii.gz"), "--out", str(out), "--iterations", "2"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    assert res.returncode != 0
    assert "cunerf: error: Input volume not found" in res.stderr and "missing.nii.gz" in res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists()
