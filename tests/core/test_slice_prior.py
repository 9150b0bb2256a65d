"""The thick-slice prior on its own: grids, pairs matched in millimetres, consistency, and a measured gain."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from cunerf_monai.evaluation import psnr, run_baselines
from cunerf_monai.networks.planenet import PlaneResidualNet
from cunerf_monai.slice_prior import (
    PlanePairs,
    PriorSettings,
    SlicePrior,
    ThickAxisGrid,
    field_grid,
    held_out_slices,
    thick_axis,
)
from cunerf_monai.transforms.array import SimulateLowResolution, lr_affine
from conftest import blocks


@pytest.mark.parametrize(
    "spacing, axis",
    [((1.0, 1.0, 4.0), 2), ((5.0, 0.8, 0.8), 0), ((1.0, 1.0, 1.2), None), ((1.0, 2.0, 4.0), None)],
)
def test_thick_axis_needs_one_coarse_axis_over_a_sharp_plane(spacing, axis):
    assert thick_axis(spacing) == axis


@pytest.mark.parametrize("mode, profile", [("box", "box"), ("nearest", "point")])
def test_output_grid_lies_on_the_hr_voxels_the_lr_was_simulated_from(mode, profile):
    """The grid's positions (LR index) are where the HR voxels sit in the simulated LR's index space."""
    grid = ThickAxisGrid.for_profile(2, 10, 4.0, 1.0, profile)
    hr_to_lr = np.linalg.inv(lr_affine(np.eye(4), (1, 1, 4), mode))
    hr_k = np.arange(grid.count, dtype=np.float64)
    expected = (hr_to_lr @ np.stack([np.zeros_like(hr_k), np.zeros_like(hr_k), hr_k, np.ones_like(hr_k)]))[2]
    np.testing.assert_allclose(grid.positions(), expected, atol=1e-12)
    assert grid.spacing == 1.0 and grid.subdivision == 4


def test_output_grid_rounds_the_subdivision_and_field_grid_places_it():
    grid = ThickAxisGrid.for_profile(0, 12, 5.0, 1.3, "box")  # 5 / 1.3 ≈ 3.85 → 4 sub-slabs of 1.25 mm
    assert grid.subdivision == 4 and grid.spacing == pytest.approx(1.25)

    class Result:  # the part of a PriorResult field_grid reads
        pass

    result = Result()
    result.grids = (grid,)
    assert field_grid(result) == {"origin": [-0.375, 0.0, 0.0], "step": [0.25, 1.0, 1.0]}
    assert field_grid(None) == {"origin": [0.0, 0.0, 0.0], "step": [1.0, 1.0, 1.0]}


def test_pairs_are_matched_in_millimetres():
    """In-plane pairs of a 3.2 mm box over 0.8 mm pixels at a 1.6 mm output spacing: targets are 2-pixel means
    (the output voxel), inputs are 4-pixel means (the slice) interpolated back onto the 1.6 mm grid."""
    prior = SlicePrior((0.8, 0.8, 3.2), "box", 3.2, target_spacing=1.6, settings=PriorSettings(steps=1))
    grid = prior.grid_for((32, 12, 5))
    assert grid.subdivision == 2
    ramp = np.broadcast_to(np.arange(32, dtype=np.float32)[:, None, None], (32, 12, 5)).copy()
    groups = prior._pairs(ramp, (grid,))
    inputs, targets = groups[0].inputs, groups[0].targets  # axis 0 degraded
    assert targets.shape[1:] == (16, 12) and inputs.shape == targets.shape
    assert inputs.shape[0] == 2 * 5  # every phase of the 1.6 mm grid (2) for each of the 5 in-plane slices
    np.testing.assert_allclose(targets[0, :, 0], np.arange(16) * 2 + 0.5, atol=1e-5)
    # a linear ramp survives box averaging and (interior) Keys interpolation: inputs equal targets inside
    np.testing.assert_allclose(inputs[0, 5:-5, 0], targets[0, 5:-5, 0], atol=1e-4)
    # a step does not: the input is blurred over the 3.2 mm slice
    step = np.zeros((32, 12, 5), np.float32)
    step[16:] = 1.0
    pairs = prior._pairs(step, (grid,))[0]
    inputs, targets = pairs.inputs, pairs.targets
    assert np.abs(inputs[0] - targets[0]).max() > 0.2


@pytest.mark.parametrize("profile, width", [("box", 4.0), ("gaussian", 4.0), ("point", 0.0)])
def test_correction_makes_any_proposal_reproduce_the_lr(profile, width):
    prior = SlicePrior((1.0, 1.0, 4.0), profile, width, settings=PriorSettings(steps=1, covariance_width=1.5))
    lr = torch.rand(6, 5, 8)
    grid = prior.grid_for(lr.shape)
    proposal = torch.rand(6, 5, grid.count)
    fused, consistency = prior.make_consistent(proposal, lr, grid)
    again = torch.as_tensor(prior.forward_operator(grid), dtype=torch.float32) @ fused.reshape(-1, grid.count).T
    torch.testing.assert_close(again.T.reshape(lr.shape), lr, atol=1e-5, rtol=0)
    assert consistency > 90.0


def test_settings_are_checked_with_their_names():
    with pytest.raises(ValueError, match="prior steps"):
        PriorSettings(steps=0)
    with pytest.raises(ValueError, match="prior start"):
        PriorSettings(start="cubic")
    with pytest.raises(ValueError, match="thick axis"):
        SlicePrior((1.0, 1.0, 1.0), "box", 1.0)


def test_prior_beats_cubic_interpolation_through_plane_and_reproduces_the_lr():
    """Blocks box-averaged ×4 along z: the prior, trained on the LR's own in-plane slices, beats the aligned
    cubic B-spline by ≥ 1 dB on the HR grid, and its output reproduces the LR to ≥ 45 dB."""
    torch.manual_seed(0)
    hr = blocks()
    image = MetaTensor(torch.from_numpy(hr)[None], affine=torch.eye(4, dtype=torch.float64))
    lr = SimulateLowResolution((1, 1, 4), "box")(image)
    settings = PriorSettings(steps=400, channels=16, layers=6, patch=32, batch_size=8, learning_rate=3e-3)
    result = SlicePrior((1.0, 1.0, 4.0), "box", 4.0, settings=settings).run(lr[0])
    assert result.fused.shape == hr.shape
    cubic = run_baselines(lr[0].numpy(), np.asarray(lr.affine), hr.shape, np.eye(4))["bspline"]
    gain = psnr(np.clip(result.fused.numpy(), 0, 1), hr) - psnr(np.clip(cubic, 0, 1), hr)
    assert gain >= 1.0, f"prior gains only {gain:.2f} dB over cubic B-spline"
    assert result.consistency_psnr >= 45.0
    # the uncertainty is half the gap between the two orientations: non-negative, zero nowhere near everywhere
    assert float(result.uncertainty.min()) >= 0.0 and float(result.uncertainty.mean()) > 0.0


def test_every_eighth_slice_is_held_out_of_training_with_its_baselines():
    assert np.flatnonzero(held_out_slices(20)).tolist() == [4, 12]
    assert np.flatnonzero(held_out_slices(5)).tolist() == [2] and not held_out_slices(1).any()
    prior = SlicePrior((0.8, 0.8, 3.2), "box", 3.2, target_spacing=1.6, settings=PriorSettings(steps=1))
    vol = np.random.default_rng(0).random((32, 12, 9)).astype(np.float32)
    pairs = prior._pairs(vol, prior.grids_for(vol.shape))[0]
    assert pairs.held.tolist() == [i % 9 == 4 for i in range(18)]  # 2 phases × 9 slices, slice 4 held out
    inputs, targets = pairs.training()
    assert inputs.shape[0] == targets.shape[0] == 16 and sorted(pairs.baselines) == ["bspline", "keys", "trilinear"]
    # the start of a box profile is Keys: its baseline is the held-out input itself
    np.testing.assert_allclose(pairs.baselines["keys"], pairs.inputs[pairs.held], atol=1e-6)


def test_gate_measures_the_network_against_the_best_interpolation_not_its_start():
    """Point samples of a sinusoid of 3 LR samples per period: cubic B-spline interpolates it far better than Keys.
    An untrained network on a Keys start (its input, unchanged) ties its start but loses to B-spline, so the gate
    sees a loss."""
    prior = SlicePrior((1.0, 1.0, 4.0), "point", 0.0, settings=PriorSettings(steps=1, start="keys"))
    wave = np.sin(2.0 * np.pi * np.arange(64) / 12.0)  # 12 voxels = 3 LR samples of 4 voxels
    vol = np.broadcast_to(wave[:, None, None] * np.linspace(0.5, 1.0, 64)[None, :, None], (64, 64, 16))
    groups = prior._pairs(np.ascontiguousarray(vol, dtype=np.float32), prior.grids_for((64, 64, 16)))
    prior.network = PlaneResidualNet(8, 2).eval()  # zero-initialised last layer: the identity
    gains = prior.inplane_gain(groups)
    assert gains["start"] == pytest.approx(0.0, abs=1e-6)
    assert gains["best_baseline"] == "bspline" and gains["best"] < -2.0


def test_gate_scores_only_the_held_out_planes():
    """An identity network: its error is its input's. Held-out planes are off by 0.1, the rest by 0.5, and the one
    baseline by 0.2 on the held-out planes: +6.02 dB over the baseline, 0 over the input, from held-out planes alone."""
    prior = SlicePrior((1.0, 1.0, 4.0), "box", 4.0, settings=PriorSettings(steps=1))
    prior.network = PlaneResidualNet(8, 2).eval()
    held = np.array([False, True, False, True])
    inputs = np.where(held[:, None, None], 0.1, 0.5) * np.ones((4, 8, 6), np.float32)
    pairs = PlanePairs(inputs.astype(np.float32), np.zeros((4, 8, 6), np.float32), held,
                       {"trilinear": np.full((2, 8, 6), 0.2, np.float32)})
    gains = prior.inplane_gain([pairs])
    assert gains["best_baseline"] == "trilinear"
    assert gains["best"] == pytest.approx(10 * np.log10(4.0), abs=1e-4) and gains["start"] == pytest.approx(0.0, abs=1e-6)


def test_network_trains_on_the_planes_not_held_out(monkeypatch):
    prior = SlicePrior((1.0, 1.0, 4.0), "box", 4.0, settings=PriorSettings(steps=1, min_gain=100.0))
    seen = []
    original = SlicePrior.train

    def spy(self, groups, steps=None):
        seen.extend(g[0].shape[0] for g in groups)
        return original(self, groups, steps)

    monkeypatch.setattr(SlicePrior, "train", spy)
    result = prior.run(np.random.default_rng(0).random((24, 20, 9)).astype(np.float32))
    # 9 slices, slice 4 held out; 4 phases of the 1 mm grid per 4 mm slice; both in-plane axes
    assert seen == [8 * 4, 8 * 4] and result.fused is None  # min_gain 100: stepped aside, not applied


@pytest.mark.parametrize("slice_mm, factor, steps", [(2.0, 2, 3), (3.0, 3, 5), (4.0, 4, 6)])
def test_a_wider_thick_axis_trains_steps_per_times_two(slice_mm, factor, steps, monkeypatch):
    """``steps`` per ×2 of the thick axis' factor (``steps · log2 r``): ×2 trains 3, ×3 5, ×4 6; the stage record
    holds the steps the network ran, and the learning rate decays over those steps."""
    schedules = []
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR

    def recording(optimizer, T_max, **kwargs):
        schedules.append(T_max)
        return cosine(optimizer, T_max, **kwargs)

    monkeypatch.setattr(torch.optim.lr_scheduler, "CosineAnnealingLR", recording)
    prior = SlicePrior((1.0, 1.0, slice_mm), "box", slice_mm, settings=PriorSettings(steps=3, patch=16, min_gain=100.0))
    result = prior.run(np.random.default_rng(0).random((20, 18, 6)).astype(np.float32))
    assert [g.subdivision for g in result.grids] == [factor]
    assert [r["train_steps"] for r in result.stages] == [steps] and schedules == [steps]


def test_a_run_whose_steps_were_a_total_is_not_resumed(tmp_path):
    """A checkpoint of a release whose ``prior_steps`` was a total (no ``steps_per``) is refused, naming the prior."""
    from cunerf_monai.checkpoints import LAST, check_resumable
    from cunerf_monai.slice_prior import describe

    settings = describe(SlicePrior((1.0, 1.0, 4.0), "box", 4.0))
    earlier = {k: v for k, v in settings.items() if k != "steps_per"}
    torch.save({"settings": {"prior": earlier}}, tmp_path / LAST)
    with pytest.raises(ValueError, match="prior"):
        check_resumable(tmp_path, prior=settings)
    check_resumable(tmp_path, prior=earlier)  # the same settings resume
