"""Reading NIfTI, DICOM series, NRRD and MetaImage volumes with their geometry, and rendering back onto them.

Every format is written with a known oblique, anisotropic geometry. ITK files (DICOM, NRRD, MetaImage) store it
in LPS; :func:`cunerf_monai.io.load_volume` must give the RAS affine ``diag(-1, -1, 1) · LPS`` so that every
voxel index lands on the same world point as in the file. A model fitted on a DICOM or NRRD input and rendered
with ``--reference`` the input itself must be written with exactly the input's RAS affine (it overlays the input).
"""

from __future__ import annotations

from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import TINY_DIRECTION, TINY_ORIGIN, TINY_SHAPE, TINY_SPACING, tiny_affine, tiny_array
from cunerf_monai.cli import main
from cunerf_monai.io import load_volume

SHAPE, SPACING, ORIGIN, DIRECTION = TINY_SHAPE, TINY_SPACING, TINY_ORIGIN, TINY_DIRECTION
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _volume(dtype=np.int16) -> np.ndarray:
    """A smooth, non-symmetric test volume ``(X, Y, Z)`` (so a flipped or transposed axis would show)."""
    return tiny_array(dtype=dtype, cross=0.5)


def _index_points() -> np.ndarray:
    """A few voxel indices, including the corners, shape ``(N, 3)``."""
    corners = np.array([[x, y, z] for x in (0, SHAPE[0] - 1) for y in (0, SHAPE[1] - 1) for z in (0, SHAPE[2] - 1)])
    return np.concatenate([corners, [[3, 5, 7], [11, 0, 4]]]).astype(np.float64)


def _to_world(affine: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return idx @ np.asarray(affine, dtype=np.float64)[:3, :3].T + np.asarray(affine, dtype=np.float64)[:3, 3]


def _itk_image(vol: np.ndarray):
    """An ITK image of ``vol`` ``(X, Y, Z)`` with the test geometry (ITK stores it as LPS)."""
    img = itk.image_from_array(np.ascontiguousarray(vol.transpose(2, 1, 0)))  # numpy view of ITK is (z, y, x)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(itk.matrix_from_array(np.ascontiguousarray(DIRECTION)))
    return img


def write_dicom_series(
    folder: Path, vol: np.ndarray, series_uid: str = "1.2.826.0.1.3680043.2.1125.7.1", slice_thickness: float | None = None
) -> list[Path]:
    """Write ``vol`` ``(X, Y, Z)`` (int16) as a DICOM series, one file per slice ``k``, with the test geometry.

    ``slice_thickness`` (mm, default the slice spacing) is written as SliceThickness (0018,0050).

    Slice geometry goes in Image Position/Orientation (Patient) and Pixel Spacing (LPS, as DICOM defines it).
    File names run opposite to the slice order, so a reader must sort by position, not by name.
    """
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = series_uid + ".0"
    orientation = "\\".join(f"{v:.10f}" for v in [*DIRECTION[:, 0], *DIRECTION[:, 1]])
    paths = []
    for k in range(vol.shape[2]):
        plane = itk.image_from_array(np.ascontiguousarray(vol[:, :, k].T.astype(np.int16)))  # ITK size (X, Y)
        plane.SetSpacing(SPACING[:2])
        position = np.asarray(ORIGIN) + k * SPACING[2] * DIRECTION[:, 2]
        meta = itk.MetaDataDictionary()
        tags = {
            "0008|0060": "CT",
            "0010|0010": "Phantom^Test",
            "0020|000d": study_uid,
            "0020|000e": series_uid,
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.8f}" for v in position),
            "0020|0037": orientation,
            "0028|0030": f"{SPACING[1]:.8f}\\{SPACING[0]:.8f}",  # row spacing (along Y) \ column spacing (along X)
            "0018|0050": f"{SPACING[2] if slice_thickness is None else slice_thickness:.8f}",
        }
        for tag, value in tags.items():
            meta[tag] = value
        plane.SetMetaDataDictionary(meta)
        io = itk.GDCMImageIO.New()
        io.KeepOriginalUIDOn()
        path = folder / f"IM{vol.shape[2] - k:04d}.dcm"
        writer = itk.ImageFileWriter[type(plane)].New(Input=plane, FileName=str(path), ImageIO=io)
        writer.Update()
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("formats")


@pytest.fixture(scope="module")
def dicom_dir(data_dir) -> Path:
    folder = data_dir / "series"
    write_dicom_series(folder, _volume())
    return folder


@pytest.fixture(scope="module")
def nrrd_path(data_dir) -> Path:
    path = data_dir / "volume.nrrd"
    itk.imwrite(_itk_image(_volume(np.float32)), str(path))
    return path


def _assert_same_world(affine, expected_ras: np.ndarray, atol: float = 1e-5) -> None:
    aff = np.asarray(affine, dtype=np.float64)
    idx = _index_points()
    np.testing.assert_allclose(_to_world(aff, idx), _to_world(expected_ras, idx), atol=atol)
    np.testing.assert_allclose(aff, expected_ras, atol=atol)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_oblique_anisotropic(tmp_path, suffix):
    vol = _volume()
    ras = tiny_affine()  # NIfTI stores RAS directly
    path = tmp_path / f"volume{suffix}"
    nib.save(nib.Nifti1Image(vol, ras), str(path))
    img = load_volume(path)
    assert tuple(img.shape) == (1, *SHAPE)
    assert img.dtype == torch.float32
    np.testing.assert_array_equal(np.asarray(img[0]), vol.astype(np.float32))
    _assert_same_world(img.affine, nib.load(str(path)).affine)
    _assert_same_world(img.affine, ras)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(img.affine)[:3, :3], axis=0), SPACING, atol=1e-6)


def test_nrrd_lps_geometry_becomes_ras(nrrd_path):
    img = load_volume(nrrd_path)
    assert tuple(img.shape) == (1, *SHAPE)
    np.testing.assert_allclose(np.asarray(img[0]), _volume(np.float32), atol=1e-6)
    _assert_same_world(img.affine, LPS_TO_RAS @ tiny_affine())
    # independently of our formula: ITK's own index → physical point (LPS) of the file, flipped to RAS
    back = itk.imread(str(nrrd_path))
    for idx in _index_points().astype(int):
        lps = np.asarray(back.TransformIndexToPhysicalPoint([int(v) for v in idx]), dtype=np.float64)
        ras = lps * np.array([-1.0, -1.0, 1.0])
        np.testing.assert_allclose(_to_world(np.asarray(img.affine), idx[None].astype(float))[0], ras, atol=1e-5)


def test_metaimage_lps_geometry_becomes_ras(tmp_path):
    path = tmp_path / "volume.mha"
    itk.imwrite(_itk_image(_volume(np.float32)), str(path))
    img = load_volume(path)
    assert tuple(img.shape) == (1, *SHAPE)
    np.testing.assert_allclose(np.asarray(img[0]), _volume(np.float32), atol=1e-6)
    _assert_same_world(img.affine, LPS_TO_RAS @ tiny_affine())


def test_dicom_series_folder(dicom_dir):
    assert len(list(dicom_dir.glob("*.dcm"))) == SHAPE[2]
    img = load_volume(dicom_dir)
    assert tuple(img.shape) == (1, *SHAPE)
    np.testing.assert_array_equal(np.asarray(img[0]), _volume().astype(np.float32))
    _assert_same_world(img.affine, LPS_TO_RAS @ tiny_affine(), atol=1e-5)


def test_dicom_folder_with_two_series_is_refused(tmp_path):
    folder = tmp_path / "two"
    write_dicom_series(folder / "a", _volume(), "1.2.826.0.1.3680043.2.1125.7.1")
    write_dicom_series(folder / "b", _volume(), "1.2.826.0.1.3680043.2.1125.7.2")
    for sub in ("a", "b"):
        for i, f in enumerate(sorted((folder / sub).iterdir())):
            f.rename(folder / f"{sub}{i:03d}.dcm")
    with pytest.raises(ValueError, match="2 DICOM series"):
        load_volume(folder)


def test_single_dicom_slice_points_to_the_folder(dicom_dir):
    with pytest.raises(ValueError, match="single DICOM slice.*folder of the series"):
        load_volume(next(dicom_dir.glob("*.dcm")))


def test_4d_nifti_channel_choice(tmp_path):
    vol = _volume(np.float32)
    path = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([vol, 2 * vol, 3 * vol], axis=-1), tiny_affine()), str(path))
    with pytest.raises(ValueError, match=r"4D image with 3 channels.*channel"):
        load_volume(path)
    img = load_volume(path, channel=1)
    assert tuple(img.shape) == (1, *SHAPE)
    np.testing.assert_allclose(np.asarray(img[0]), 2 * vol, rtol=1e-6)
    _assert_same_world(img.affine, tiny_affine())
    for bad in (3, -1):
        with pytest.raises(ValueError, match=f"channel {bad} does not exist"):
            load_volume(path, channel=bad)


def test_channel_of_a_3d_volume(tmp_path):
    path = tmp_path / "three.nii.gz"
    nib.save(nib.Nifti1Image(_volume(), tiny_affine()), str(path))
    assert tuple(load_volume(path, channel=0).shape) == (1, *SHAPE)
    with pytest.raises(ValueError, match="channel 1 does not exist.*1 channel"):
        load_volume(path, channel=1)


def test_reference_grid_without_value_checks(tmp_path):
    """A grid-only read (``validate=False``) accepts a constant image, e.g. an empty template or mask."""
    path = tmp_path / "zeros.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), tiny_affine()), str(path))
    with pytest.raises(ValueError, match="constant"):
        load_volume(path)
    img = load_volume(path, validate=False)
    assert tuple(img.shape) == (1, *SHAPE)
    _assert_same_world(img.affine, tiny_affine())


@pytest.mark.parametrize("fmt", ["dicom", "nrrd"])
def test_fit_and_render_onto_the_input_grid(fmt, dicom_dir, nrrd_path, tiny_overlay, tmp_path, capsys):
    """``cunerf fit`` on a DICOM/NRRD input, then ``cunerf render --reference INPUT``: the output overlays it."""
    source = dicom_dir if fmt == "dicom" else nrrd_path
    model = tmp_path / "model"
    main(["fit", "--input", str(source), "--out", str(model), "--config", str(tiny_overlay), "--iterations", "2"])
    ckpt = torch.load(model / "model.pt", map_location="cpu", weights_only=False)
    expected = LPS_TO_RAS @ tiny_affine()
    np.testing.assert_allclose(np.asarray(ckpt["volume"]["geometry"]["affine"]), expected, atol=1e-5)
    assert ckpt["volume"]["geometry"]["shape"] == list(SHAPE)
    lo, hi = ckpt["volume"]["intensity_range"]
    vol = _volume() if fmt == "dicom" else _volume(np.float32)
    assert lo == pytest.approx(float(vol.min())) and hi == pytest.approx(float(vol.max()))

    out = tmp_path / f"on_input_{fmt}.nii.gz"
    main(["render", str(model), "--out", str(out), "--reference", str(source)])
    assert "wrote" in capsys.readouterr().out
    sr = nib.load(str(out))
    assert sr.shape == SHAPE
    assert int(sr.header["sform_code"]) > 0 and int(sr.header["qform_code"]) > 0
    np.testing.assert_allclose(sr.affine, expected, atol=1e-4)  # header stores float32
    np.testing.assert_allclose(sr.affine, np.asarray(load_volume(source).affine), atol=1e-4)
    data = np.asarray(sr.dataobj)
    assert np.isfinite(data).all()
    assert float(data.min()) >= lo - 1e-3 and float(data.max()) <= hi + 1e-3
