"""The forward model decided from the scan itself: profiles, widths, samples, kernel, step size, overrides."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from cunerf_monai.forward_model import (
    ForwardModel,
    choose_kernel,
    dicom_slice_thickness,
    estimate_forward_model,
    resolve_forward_model,
    spline_step_size,
)
from cunerf_monai.transforms.array import SimulateLowResolution


def random_field(shape, alpha=3.0, seed=0) -> np.ndarray:
    """An isotropic Gaussian random field with a ``1/|k|^alpha`` power spectrum, in ``[0, 1]``."""
    rng = np.random.default_rng(seed)
    k = np.sqrt(sum(np.meshgrid(*[np.fft.fftfreq(n) ** 2 for n in shape], indexing="ij")))
    k[0, 0, 0] = 1.0
    f = np.real(np.fft.ifftn(np.fft.fftn(rng.standard_normal(shape)) * k ** (-alpha / 2)))
    return ((f - f.min()) / (f.max() - f.min())).astype(np.float32)


@pytest.fixture(scope="module")
def hr_field() -> MetaTensor:
    return MetaTensor(torch.tensor(random_field((64, 64, 128))[None]), affine=torch.eye(4))


def _lr(hr: MetaTensor, mode: str, factors) -> tuple[np.ndarray, np.ndarray]:
    lr = SimulateLowResolution(factors, mode)(hr)
    return lr[0].numpy(), np.abs(np.diag(np.asarray(lr.affine))[:3])


@pytest.mark.parametrize("mode, profile", [("nearest", "point"), ("box", "box"), ("gaussian", "gaussian")])
def test_thick_slice_profile_is_recovered(hr_field, mode, profile):
    vol, spacing = _lr(hr_field, mode, (1, 1, 2))
    model = estimate_forward_model(vol, spacing)
    assert model.profiles == ("point", "point", profile), model.evidence
    assert model.widths[2] == (0.0 if profile == "point" else pytest.approx(2.0))
    assert model.samples == (1, 1, 1 if profile == "point" else 2)  # one sample per fine (1 mm) voxel across 2 mm


def test_box_of_four_slices_is_a_box_with_four_samples(hr_field):
    vol, spacing = _lr(hr_field, "box", (1, 1, 4))
    model = estimate_forward_model(vol, spacing)
    assert model.profiles == ("point", "point", "box") and model.samples == (1, 1, 4)
    assert model.cube_size == [1.0, 1.0, pytest.approx(1.0)] and model.num_samples == 4


@pytest.mark.parametrize("mode", ["nearest", "box", "gaussian"])
def test_isotropic_volume_is_modelled_as_points(hr_field, mode):
    """With no sharper axis to compare with, the volume cannot tell a partial-volume average from a point sample:
    the safe point model is chosen, and the evidence says why."""
    vol, spacing = _lr(hr_field, mode, (2, 2, 2))
    model = estimate_forward_model(vol, spacing)
    assert model.profiles == ("point",) * 3
    assert "no sharper axis" in model.evidence["axis2"]


@pytest.mark.parametrize("factor", [2, 4])
def test_an_isotropic_box_lr_is_the_point_lr_of_the_box_blurred_volume(hr_field, factor):
    """Why an isotropic axis cannot be recognised: the LR that box voxels make of a volume is, voxel for voxel and in
    its affine, the LR that point samples make of the same volume blurred by that box (and shifted by its half-width),
    so a blind method sees one file where the two answers differ."""
    hr = hr_field[:, :32, :32, :32]
    box = SimulateLowResolution((factor,) * 3, "box")(hr)
    blurred = hr[0].numpy()
    for axis in range(3):  # the mean of voxels i … i + f − 1, placed at their centre i + (f − 1) / 2
        moved = np.moveaxis(blurred, axis, -1)
        windows = np.lib.stride_tricks.sliding_window_view(moved, factor, axis=-1).mean(-1)
        blurred = np.moveaxis(windows, -1, axis)
    affine = np.eye(4)
    affine[:3, 3] = (factor - 1) / 2.0
    point = SimulateLowResolution((factor,) * 3, "nearest")(MetaTensor(torch.tensor(blurred[None]), affine=torch.tensor(affine)))
    n = box.shape[1]
    assert box.shape[1:] == (n, n, n) and point.shape[1] >= n
    np.testing.assert_allclose(point[0, :n, :n, :n].numpy(), box[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(point.affine), np.asarray(box.affine), atol=1e-9)
    m = blurred.shape[0]  # the blur is real: the two volumes differ by more than the LR's rounding
    assert float(np.abs(blurred - hr[0, :m, :m, :m].numpy()).max()) > 0.05


def test_kernel_follows_the_data():
    smooth = random_field((48, 48, 48), alpha=4.0, seed=1)
    rng = np.random.default_rng(2)
    blocks = np.kron(rng.random((6, 6, 6)), np.ones((8, 8, 8))) + 0.15 * rng.standard_normal((48, 48, 48))
    assert choose_kernel(smooth)[0] == "bspline"
    kernel, scores = choose_kernel(blocks)
    assert kernel == "linear" and scores["linear"] > scores["bspline"] + 0.3


def test_given_profiles_and_thickness_win(hr_field):
    vol, spacing = _lr(hr_field, "nearest", (1, 1, 2))
    model = estimate_forward_model(vol, spacing, forward_model=["point", "point", "gaussian"], slice_thickness=3.0)
    assert model.profiles == ("point", "point", "gaussian") and model.widths[2] == 3.0
    assert model.samples[2] == 3 and model.source == "given"
    every = estimate_forward_model(vol, spacing, forward_model="box", kernel="linear")
    assert every.profiles == ("box",) * 3 and every.kernel == "linear"
    assert every.widths == (1.0, 1.0, 2.0)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"forward_model": "cubic"}, "forward_model must be one of"),
        ({"forward_model": ["box", "point"]}, "one value or three"),
        ({"slice_thickness": -2.0}, "slice_thickness must be a positive number"),
        ({"slice_thickness": "thick"}, "slice_thickness must be a positive number"),
        ({"kernel": "lanczos"}, "kernel must be one of"),
    ],
)
def test_nonsense_overrides_are_named(kwargs, words):
    with pytest.raises(ValueError, match=words):
        estimate_forward_model(np.random.rand(8, 8, 4), (1.0, 1.0, 2.0), **kwargs)


def test_dicom_slice_thickness_differs_from_spacing(tmp_path):
    """A series whose slices are 4 mm thick but 3 mm apart (overlapping) is fitted with a 4 mm footprint."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("io_formats", Path(__file__).parents[1] / "io" / "test_io_formats.py")
    formats = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(formats)
    SPACING, write_dicom_series = formats.SPACING, formats.write_dicom_series

    vol = (np.random.default_rng(0).random((16, 12, 10)) * 1000).astype(np.int16)
    folder = tmp_path / "series"
    write_dicom_series(folder, vol, slice_thickness=4.0)
    assert SPACING[2] != 4.0
    assert dicom_slice_thickness(folder) == pytest.approx(4.0)
    from cunerf_monai.io import load_normalized

    image = load_normalized(folder)
    model = resolve_forward_model(image, ["point", "point", "box"], None, folder)
    assert model.widths[2] == pytest.approx(4.0)
    assert dicom_slice_thickness(tmp_path / "nothing.nii.gz") is None


def test_step_size_is_stable_for_every_profile():
    """c < 1/λ_max for point, box and Gaussian footprints and every kernel; a point model takes the one-step 1/2."""
    for kernel in ("bspline", "keys", "linear"):
        point = ForwardModel(("point",) * 3, (0.0,) * 3, (1, 1, 1), kernel, (1.0, 1.0, 1.0))
        assert spline_step_size(point) == pytest.approx(0.5, abs=1e-6)
        for profile in ("box", "gaussian"):
            for k in (2, 4, 8):
                model = ForwardModel(("point", "point", profile), (0.0, 0.0, 4.0), (1, 1, k), kernel, (1.0, 1.0, 4.0))
                c = spline_step_size(model)
                assert 0.5 <= c <= 0.75 + 1e-9
