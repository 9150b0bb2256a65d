"""The stored value type: the loader keeps it, the volume record carries it into checkpoints, renders are written in
it (an integer type: rounded and clipped) unless float32 is asked for; records without it render float32."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import tiny_affine, tiny_array
from cunerf_monai.io import load_normalized, load_volume, output_dtype, save_nifti
from cunerf_monai.records import VolumeRecord


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.uint16, np.float32])
def test_loader_keeps_the_stored_type(dtype, tmp_path):
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(tiny_array(dtype=dtype), tiny_affine()), str(path))
    img = load_volume(path)
    assert img.dtype == torch.float32
    assert img.meta["stored_dtype"] == np.dtype(dtype).name
    record = VolumeRecord(load_normalized(path))
    assert record.dtype == np.dtype(dtype).name
    restored = VolumeRecord()
    restored.load_state_dict(record.state_dict())
    assert restored.dtype == np.dtype(dtype).name


def test_records_without_a_stored_type_render_float32():
    record = VolumeRecord(_normalized_image())
    state = record.state_dict()
    del state["dtype"]  # a checkpoint written before the type was recorded (like the shipped model)
    old = VolumeRecord()
    old.load_state_dict(state)
    assert old.dtype is None
    assert output_dtype(old.dtype) == np.float32


def _normalized_image():
    """A normalised training image ``(1, 4, 5, 6)`` that does not say how its values were stored."""
    from monai.data import MetaTensor

    return MetaTensor(torch.rand(1, 4, 5, 6), affine=torch.eye(4), meta={"intensity_range": [0.0, 9.0]})


@pytest.mark.parametrize(
    "stored, asked, expected",
    [("int16", None, np.int16), ("int16", "input", np.int16), ("int16", "float32", np.float32),
     ("uint8", None, np.uint8), ("float64", None, np.float32), (None, None, np.float32), ("bool", None, np.float32)],
)
def test_output_dtype(stored, asked, expected):
    assert output_dtype(stored, asked) == expected


def test_output_dtype_names_the_choices():
    with pytest.raises(ValueError, match="float32"):
        output_dtype("int16", "int8")


def test_integer_output_is_rounded_and_clipped_to_the_type(tmp_path):
    values = np.array([-1.6, 0.4, 0.6, 254.5, 300.0, 1e9], np.float32).reshape(1, 2, 3)
    out = nib.load(save_nifti(tmp_path / "u8.nii.gz", values, np.eye(4), "uint8"))
    assert out.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(out.dataobj).ravel(), [0, 0, 1, 254, 255, 255])
    as_float = nib.load(save_nifti(tmp_path / "f.nii.gz", values, np.eye(4)))
    assert as_float.get_data_dtype() == np.float32
    np.testing.assert_allclose(np.asarray(as_float.dataobj).ravel(), values.ravel())


def test_rescaled_nifti_counts_as_float(tmp_path):
    img = nib.Nifti1Image(tiny_array(dtype=np.int16), tiny_affine())
    img.header.set_slope_inter(0.5, -10.0)
    nib.save(img, str(tmp_path / "scaled.nii.gz"))
    assert load_volume(tmp_path / "scaled.nii.gz").meta["stored_dtype"] == "float32"
