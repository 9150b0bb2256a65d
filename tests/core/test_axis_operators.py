"""One-axis operators: footprints, interpolation, consistent interpolation and the exact consistency correction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cunerf_monai import axis_operators as ops

apply_along_axis, box_resampling_matrix = ops.apply_along_axis, ops.box_resampling_matrix
consistent_correction, consistent_interpolation = ops.consistent_correction, ops.consistent_interpolation
footprint_matrix, interpolation_matrix = ops.footprint_matrix, ops.interpolation_matrix


def test_box_footprint_of_integer_factor_is_the_mean_of_its_sub_slabs():
    fine = np.arange(8, dtype=np.float64)  # fine centres 0..7, spacing 1
    centres = np.array([1.5, 5.5])  # LR voxels of width 4: fine 0-3 and 4-7
    a = footprint_matrix(centres, fine, 1.0, "box", 4.0)
    expected = np.zeros((2, 8))
    expected[0, :4] = expected[1, 4:] = 0.25
    np.testing.assert_allclose(a, expected, atol=1e-12)


def test_box_footprint_of_fractional_width_weights_partial_overlaps():
    a = footprint_matrix([0.0], [-1.0, 0.0, 1.0], 1.0, "box", 2.0)  # covers half of each outer box
    np.testing.assert_allclose(a, [[0.25, 0.5, 0.25]], atol=1e-12)


def test_point_footprint_interpolates_linearly_and_clamps_beyond_the_grid():
    a = footprint_matrix([0.25, 2.0, 5.0], [0.0, 1.0, 2.0], 1.0, "point", 0.0)
    np.testing.assert_allclose(a, [[0.75, 0.25, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]], atol=1e-12)


def test_gaussian_footprint_is_symmetric_with_the_right_second_moment():
    fine = np.arange(-40, 41, dtype=np.float64) * 0.1
    a = footprint_matrix([0.0], fine, 0.1, "gaussian", 1.0)[0]
    np.testing.assert_allclose(a, a[::-1], atol=1e-12)
    sigma = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    # the variance of box-integrated samples is σ² plus the box's own d²/12
    np.testing.assert_allclose((a * fine**2).sum(), sigma**2 + 0.1**2 / 12.0, rtol=1e-3)


def test_footprint_rejects_unknown_profiles_and_unreachable_footprints():
    with pytest.raises(ValueError, match="profile"):
        footprint_matrix([0.0], [0.0, 1.0], 1.0, "sinc", 1.0)
    with pytest.raises(ValueError, match="covers no fine sample"):
        footprint_matrix([10.0], [0.0, 1.0], 1.0, "box", 1.0)


def test_keys_interpolation_passes_through_samples_and_reproduces_quadratics_inside():
    src = np.arange(10, dtype=np.float64) * 2.0
    u = interpolation_matrix(src, src)
    np.testing.assert_allclose(u, np.eye(10), atol=1e-12)
    dst = np.linspace(4.0, 14.0, 23)  # away from the clamped ends
    f = lambda x: 0.3 * x**2 - x + 2.0  # noqa: E731
    np.testing.assert_allclose(interpolation_matrix(src, dst) @ f(src), f(dst), atol=1e-9)


@pytest.mark.parametrize("profile,width", [("box", 4.0), ("gaussian", 4.0), ("point", 0.0), ("box", 5.0)])
def test_consistent_interpolation_has_footprint_means_equal_to_the_samples(profile, width):
    lr = 1.5 + 4.0 * np.arange(12)
    fine = np.arange(48, dtype=np.float64)
    a = footprint_matrix(lr, fine, 1.0, profile, width)
    c = consistent_interpolation(interpolation_matrix(lr, fine), a)
    np.testing.assert_allclose(a @ c, np.eye(12), atol=1e-8)


def test_consistent_interpolation_of_a_point_profile_is_the_plain_interpolation():
    lr = 4.0 * np.arange(6)
    fine = np.arange(24, dtype=np.float64)
    np.testing.assert_allclose(
        consistent_interpolation(interpolation_matrix(lr, fine), footprint_matrix(lr, fine, 1.0, "point", 0.0)),
        interpolation_matrix(lr, fine),
        atol=1e-10,
    )


@pytest.mark.parametrize("width", [0.0, 1.5])
def test_consistent_correction_reproduces_the_lr_samples_exactly(width):
    rng = np.random.default_rng(0)
    fine = np.arange(40, dtype=np.float64)
    a = footprint_matrix(1.5 + 4.0 * np.arange(10), fine, 1.0, "box", 4.0)
    p = consistent_correction(a, width)
    x, y = rng.normal(size=40), rng.normal(size=10)
    corrected = x + p @ (y - a @ x)
    np.testing.assert_allclose(a @ corrected, y, atol=1e-9)
    # an already consistent x is left alone
    np.testing.assert_allclose(corrected + p @ (y - a @ corrected), corrected, atol=1e-9)


def test_even_correction_spreads_each_residual_evenly_over_its_footprint():
    a = footprint_matrix([1.5], np.arange(4, dtype=np.float64), 1.0, "box", 4.0)
    np.testing.assert_allclose(consistent_correction(a, 0.0)[:, 0], [1.0, 1.0, 1.0, 1.0], atol=1e-6)


def test_box_resampling_averages_source_boxes():
    b = box_resampling_matrix(np.arange(6, dtype=np.float64), 1.0, [0.5, 2.5, 4.5], 2.0)
    np.testing.assert_allclose(b @ np.arange(6.0), [0.5, 2.5, 4.5], atol=1e-12)


def test_apply_along_axis_acts_on_that_axis_only():
    vol = torch.arange(24, dtype=torch.float64).reshape(2, 3, 4)
    m = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    out = apply_along_axis(m, vol, 1)
    assert out.shape == (2, 2, 4)
    torch.testing.assert_close(out[:, 0], vol[:, 0])
    torch.testing.assert_close(out[:, 1], (vol[:, 1] + vol[:, 2]) / 2)
    with pytest.raises(ValueError, match="axis 0 has 2 samples"):
        apply_along_axis(m, vol, 0)


def test_bspline_interpolation_is_the_aligned_baseline_along_one_axis():
    """Edge-padded by 12, prefiltered, clamped beyond the ends: scipy's cubic B-spline on the padded samples."""
    from scipy import ndimage

    y = np.random.default_rng(1).normal(size=20)
    dst = np.linspace(-1.0, 20.0, 85)
    coeff = ndimage.spline_filter1d(np.pad(y, 12, mode="edge"), 3, mode="mirror")
    expected = ndimage.map_coordinates(coeff, [np.clip(dst, 0, 19) + 12], order=3, prefilter=False, mode="mirror")
    np.testing.assert_allclose(ops.bspline_interpolation_matrix(np.arange(20.0), dst) @ y, expected, atol=1e-12)


@pytest.mark.parametrize("name", ["trilinear", "keys", "bspline"])
def test_baseline_matrices_are_the_aligned_baselines_along_one_axis(name):
    """Each 1D operator equals the aligned baseline of that name resampling a 1-voxel-wide volume along x."""
    from cunerf_monai.evaluation import resample_to_grid

    y = np.random.default_rng(2).normal(size=(17, 1, 1))
    lr_affine = np.diag([3.0, 1.0, 1.0, 1.0])
    hr_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    hr_affine[0, 3] = -2.0  # starts before the first LR sample: the clamped edge is compared too
    dst = (np.arange(55) - 2.0) / 3.0  # HR positions in LR index units
    expected = resample_to_grid(y, lr_affine, (55, 1, 1), hr_affine, method=name)[:, 0, 0]
    matrix = ops.baseline_interpolation_matrices(np.arange(17.0), dst)[name]
    np.testing.assert_allclose(matrix @ y[:, 0, 0], expected, atol=1e-5)
