"""Tests of the learnable cubic B-spline grid field and the baseline-exact B-spline prior."""

import numpy as np
import torch

from cunerf_monai.evaluation.baselines import resample_to_grid
from cunerf_monai.geometry import VolumeGeometry
from cunerf_monai.networks.prior import BSplineVolume
from cunerf_monai.networks.splinegrid import BSplineGridField, bspline_prefilter_taps


def _hr_points(vol_shape, lr_affine, hr_shape):
    geo = VolumeGeometry(vol_shape, lr_affine, 1.0)
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in hr_shape], indexing="ij"), -1).reshape(-1, 3)
    return torch.as_tensor(geo.world_to_field(idx.astype(np.float64)), dtype=torch.float32)


def test_prefilter_taps_invert_bspline_sampling():
    taps = bspline_prefilter_taps(8).double()
    conv = np.convolve(taps.numpy(), [1 / 6, 4 / 6, 1 / 6])
    delta = np.zeros_like(conv)
    delta[len(conv) // 2] = 1.0
    assert np.abs(conv - delta).max() < 1e-4
    assert abs(float(taps.sum()) - 1.0) < 1e-6


def test_prior_nearest_boundary_matches_bspline_baseline():
    rng = np.random.default_rng(0)
    vol = rng.random((9, 11, 7))
    lr_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    lr_affine[:3, 3] = 0.5  # box ×2: LR voxel i sits at HR index 2i + 0.5
    hr_shape = (19, 23, 15)  # the last HR row lies beyond the last LR centre (clamped extrapolation)
    ref = resample_to_grid(vol, lr_affine, hr_shape, np.eye(4), "bspline")
    out = BSplineVolume(vol.shape, 1.0, vol)(_hr_points(vol.shape, lr_affine, hr_shape)).reshape(hr_shape)
    assert np.abs(out.numpy() - ref).max() < 1e-4


def test_spline_grid_starts_at_interpolant_and_is_differentiable():
    rng = np.random.default_rng(1)
    vol = rng.random((8, 9, 10))
    lr_affine = np.eye(4)
    field = BSplineGridField(vol.shape, 1.0, vol, prefilter_half_width=8)
    pts = _hr_points(vol.shape, lr_affine, vol.shape)  # the LR voxel centres themselves
    out = field(pts)
    assert out.shape == (pts.shape[0], 2)
    assert torch.allclose(out[:, 1], torch.ones(pts.shape[0]))
    # interpolates its samples (up to the FIR truncation and the replicated boundary, exact inside)
    inner = out[:, 0].reshape(vol.shape)[3:-3, 3:-3, 3:-3].detach().numpy()
    assert np.abs(inner - vol[3:-3, 3:-3, 3:-3]).max() < 1e-3
    # off-grid values agree with the baseline's cubic B-spline inside the volume
    hr_affine = np.diag([0.5, 0.5, 0.5, 1.0])
    hr_shape = (15, 17, 19)
    geo = VolumeGeometry(vol.shape, lr_affine, 1.0)
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in hr_shape], indexing="ij"), -1).reshape(-1, 3)
    hr_pts = torch.as_tensor(geo.world_to_field(idx @ hr_affine[:3, :3].T), dtype=torch.float32)
    ref = resample_to_grid(vol, lr_affine, hr_shape, hr_affine, "bspline")
    val = field(hr_pts)[:, 0].reshape(hr_shape).detach().numpy()
    assert np.abs(val[6:-6, 6:-6, 6:-6] - ref[6:-6, 6:-6, 6:-6]).max() < 2e-3
    out[:, 0].sum().backward()
    assert field.samples.grad is not None and torch.isfinite(field.samples.grad).all()


def test_box_fit_converges_to_consistent_spline_1d_profile():
    """Fitting box averages of the field (2 midpoint samples per LR voxel along z, ×2 box) to the LR data drives
    the box-averaged field onto the data (consistency), which plain interpolation does not satisfy."""
    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    vol = rng.random((4, 4, 24)).astype(np.float32)
    field = BSplineGridField(vol.shape, 1.0, vol)
    geo = VolumeGeometry(vol.shape, np.eye(4), 1.0)
    centres = torch.as_tensor(geo.voxel_field_grid().reshape(-1, 3), dtype=torch.float32)
    dz = float(geo.field_per_voxel[2]) * 0.25
    offsets = torch.tensor([[0.0, 0.0, -dz], [0.0, 0.0, dz]])
    target = torch.as_tensor(vol.reshape(-1))

    def box_render():
        return field(centres[:, None, :] + offsets[None])[..., 0].mean(-1)

    start = float(((box_render() - target) ** 2).mean().detach())
    opt = torch.optim.SGD(field.parameters(), lr=target.numel() / 2.0)
    for _ in range(60):
        loss = ((box_render() - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = float(((box_render() - target) ** 2).mean().detach())
    assert start > 1e-3
    assert end < 1e-4 * start


def test_cache_is_invalidated_when_samples_change():
    field = BSplineGridField((4, 4, 4), 1.0, np.zeros((4, 4, 4)))
    pts = torch.zeros(1, 3)
    with torch.no_grad():
        assert abs(float(field(pts)[0, 0])) < 1e-6
        field.samples.add_(1.0)
        assert abs(float(field(pts)[0, 0]) - 1.0) < 1e-5
