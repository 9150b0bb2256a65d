"""The cross-scale prior of scans without a thick axis: which prior a scan gets, pairs one scale up, the gate, the
consistency of the composed per-axis corrections, and a measured gain on repeated structure."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from conftest import blocks
from cunerf_monai.cross_scale_prior import CrossScalePrior, held_out_slab
from cunerf_monai.evaluation import psnr, run_baselines
from cunerf_monai.forward_model import ForwardModel
from cunerf_monai.slice_prior import PriorSettings, SlicePrior, field_grid, prior_for, render_forward, run_prior
from cunerf_monai.transforms.array import SimulateLowResolution


def forward(spacing, profile="box") -> ForwardModel:
    """A forward model of one profile over whole voxels, sampled once."""
    widths = tuple(0.0 if profile == "point" else s for s in spacing)
    return ForwardModel((profile,) * 3, widths, (1, 1, 1), spacing=tuple(spacing))


def degraded(hr: np.ndarray, mode: str = "box", factor: int = 2) -> MetaTensor:
    return SimulateLowResolution((factor,) * 3, mode)(MetaTensor(torch.from_numpy(hr)[None], affine=torch.eye(4, dtype=torch.float64)))


def test_a_scan_gets_the_thick_slice_prior_or_the_cross_scale_prior_by_its_shape():
    assert type(prior_for(forward((1.0, 1.0, 4.0)))) is SlicePrior
    assert prior_for(forward((2.0, 2.0, 2.0))) is None  # no finer spacing stated: the field alone
    cross = prior_for(forward((2.0, 2.0, 2.0)), target_spacing=1.0)
    assert type(cross) is CrossScalePrior and cross.axes == [0, 1, 2]
    assert prior_for(forward((2.0, 2.0, 2.0)), target_spacing=[1.0, 1.5, 1.5]).axes == [0]  # ×2 on axis 0 only
    assert prior_for(forward((2.0, 2.0, 2.0)), target_spacing=1.5) is None  # not half the spacing anywhere
    assert prior_for(forward((2.0, 2.0, 2.0)), mode="none", target_spacing=1.0) is None
    assert prior_for(forward((2.0, 2.0, 2.0), "point"), target_spacing=1.0) is None  # point samples: the field alone
    assert type(prior_for(forward((2.0, 2.0, 2.0), "gaussian"), target_spacing=1.0)) is CrossScalePrior
    mixed = SimpleNamespace(spacing=(2.0,) * 3, profiles=("box", "box", "point"), widths=(2.0, 2.0, 0.0))
    assert prior_for(mixed, target_spacing=1.0) is None  # one profile is needed for pairs of every orientation
    with pytest.raises(ValueError, match="prior_spacing"):
        prior_for(forward((2.0, 2.0, 2.0)), target_spacing=[1.0, 1.0])


def test_pairs_are_the_lr_planes_degraded_once_more_by_the_output_factor():
    """Box voxels of 2 mm rendered at 1 mm: the pairs' inputs are 4 mm box means (every phase) Keys-interpolated back
    onto the LR grid, their targets the LR planes."""
    prior = CrossScalePrior((2.0, 2.0, 2.0), "box", (2.0, 2.0, 2.0), 1.0, PriorSettings(steps=1))
    lr = np.zeros((16, 12, 10), np.float32)
    lr[:, :6] = 1.0  # a step along axis 1 between LR voxels 5 and 6
    lr += np.arange(10, dtype=np.float32)[None, None, :] * 0.01
    groups = prior._pairs(lr, prior.grids_for(lr.shape))
    # axis 1 degraded, W along axis 2, stacked across axis 0 (the longest: its central slab is held out)
    first = next(g for g in groups if g.held.any() and g.inputs.shape[1] == 12)
    assert first.inputs.shape == first.targets.shape == (32, 12, 10)  # 16 planes × 2 phases
    np.testing.assert_array_equal(first.targets[3], lr[3])
    # phase 0 averages LR voxels (0, 1), …, (4, 5), (6, 7): the step falls between two 4 mm samples and only the
    # interpolation blurs it; phase 1 averages (5, 6): that sample straddles the step, which spreads further
    phase0, phase1 = first.inputs[0, :, 0], first.inputs[16, :, 0]
    np.testing.assert_allclose(phase0[:3], lr[0, :3, 0], atol=1e-5)  # far from the step: the LR itself
    assert abs(phase1[5] - phase1[6]) < abs(phase0[5] - phase0[6]) < 1.0 - 0.2
    # a ramp along the degraded axis survives box means and interior Keys interpolation
    ramp = np.broadcast_to(np.arange(12, dtype=np.float32)[None, :, None], (16, 12, 10)).copy()
    pairs = next(g for g in prior._pairs(ramp, prior.grids_for(ramp.shape)) if g.held.any() and g.inputs.shape[1] == 12)
    np.testing.assert_allclose(pairs.inputs[:, 4:-4], pairs.targets[:, 4:-4], atol=1e-4)
    # ×3: a degraded sample is the mean of 3 LR voxels (6 mm over 2 mm voxels), not one voxel of the LR footprint:
    # a plane of 3.0 at voxel 4 reads 1.0 at the sample centred on it (phase 0: samples at voxels 1, 4, 7, 10)
    third = CrossScalePrior((2.0, 2.0, 2.0), "box", (2.0, 2.0, 2.0), [2.0, 2.0 / 3.0, 2.0], PriorSettings(steps=1))
    impulse = np.zeros((16, 12, 10), np.float32)
    impulse[:, 4] = 3.0
    held = next(g for g in third._pairs(impulse, third.grids_for(impulse.shape)) if g.held.any())
    assert held.inputs.shape == (48, 12, 10)  # 16 planes × 3 phases
    np.testing.assert_allclose(held.inputs[0, 4], 1.0, atol=1e-5)


def test_no_training_plane_holds_a_voxel_of_the_held_out_slab():
    """The gate's slab (the central eighth across the longest axis) is in no training pair, in any orientation:
    a marked slab never reaches a training input or target, and the gate's planes are the slab's."""
    prior = CrossScalePrior((2.0, 2.0, 2.0), "box", (2.0, 2.0, 2.0), 1.0, PriorSettings(steps=1))
    lr = np.zeros((12, 24, 10), np.float32)
    lo, hi = held_out_slab(24)
    assert (lo, hi) == (10, 13)
    lr[:, lo:hi] = 100.0
    groups = prior._pairs(lr, prior.grids_for(lr.shape))
    for pairs in groups:
        inputs, targets = pairs.training()
        assert float(np.abs(inputs).max(initial=0.0)) < 1.0 and float(targets.max(initial=0.0)) == 0.0
    held = [pairs.targets[pairs.held] for pairs in groups if pairs.held.any()]
    assert len(held) == 2 and all(float(t.min()) == 100.0 for t in held)  # axes 0 and 2 degraded, across axis 1


@pytest.mark.parametrize("profile", ["box", "point"])
def test_composed_corrections_reproduce_the_lr_along_every_axis(profile):
    """Whatever the network proposes, the per-axis corrections compose: the output, degraded along every axis as
    the LR was made, is the LR (an untrained network, one step)."""
    rng = np.random.default_rng(0)
    lr = torch.from_numpy(rng.random((12, 10, 8)).astype(np.float32))
    prior = CrossScalePrior((2.0, 2.0, 2.0), profile, (2.0, 2.0, 2.0), 1.0, PriorSettings(steps=1, patch=8))
    grids = prior.grids_for(lr.shape)
    prior.train([g.training() for g in prior._pairs(lr.numpy(), grids)])
    with torch.no_grad():  # a proposal far from the LR: the corrections must do the work
        prior.network.body[-1].conv.bias.fill_(0.3)
    fused, proposal, uncertainty = prior.apply(lr, grids)
    assert fused.shape == proposal.shape == uncertainty.shape == (24, 20, 16)
    assert prior.consistency_psnr(fused, lr, grids) >= 100.0
    assert prior.consistency_psnr(proposal, lr, grids) < 30.0
    assert bool((uncertainty >= 0).all())
    if profile == "point":  # point samples stay on the grid: every 2nd output voxel is an LR voxel
        torch.testing.assert_close(fused[::2, ::2, ::2].float(), lr, atol=1e-5, rtol=0)


def test_the_field_holds_the_output_grid_of_every_upsampled_axis():
    prior = CrossScalePrior((2.0, 2.0, 2.0), "box", (2.0, 2.0, 2.0), [1.0, 2.0, 0.5], PriorSettings(steps=1))
    grids = prior.grids_for((10, 10, 10))
    assert [g.axis for g in grids] == [0, 2] and [g.subdivision for g in grids] == [2, 4]
    result = SimpleNamespace(grids=grids)
    assert field_grid(result) == {"origin": [-0.25, 0.0, -0.375], "step": [0.5, 1.0, 0.25]}
    assert render_forward(forward((2.0, 2.0, 2.0)), result).samples == (2, 1, 4)
    assert render_forward(forward((2.0, 2.0, 2.0), "point"), result).samples == (1, 1, 1)


def test_cross_scale_prior_beats_cubic_interpolation_on_repeated_structure():
    """Blocks at many sizes repeat their edges across scales: what the network learns one scale up sharpens the
    render ≥ 0.5 dB beyond the best aligned interpolation, and the output reproduces the LR to ≥ 45 dB."""
    hr = blocks(48, count=120)
    lr = degraded(hr, "box")
    settings = PriorSettings(steps=300, patch=24)
    prior = CrossScalePrior((2.0, 2.0, 2.0), "box", (2.0, 2.0, 2.0), 1.0, settings)
    result = prior.run(lr[0].numpy())
    assert result.inplane_gain >= settings.min_gain and result.consistency_psnr >= 45.0
    bases = run_baselines(lr[0].numpy(), np.asarray(lr.affine), hr.shape, np.eye(4), include_misaligned=False)
    best = max(psnr(np.clip(v, 0, 1), hr) for k, v in bases.items() if k != "nearest")
    assert result.fused.shape == hr.shape
    assert psnr(np.clip(result.fused.numpy(), 0, 1), hr) >= best + 0.5


def test_prior_steps_aside_where_nothing_repeats_across_scales():
    """White noise holds no structure one scale up: the network cannot beat interpolation on held-out planes and
    the fit keeps the field alone (run_prior returns None, the verdict is kept)."""
    noise = np.random.default_rng(1).random((32, 32, 32)).astype(np.float32)
    lr = degraded(noise, "box")
    prior = CrossScalePrior((2.0, 2.0, 2.0), "box", (2.0, 2.0, 2.0), 1.0, PriorSettings(steps=60, patch=16))
    assert run_prior(prior, lr) is None
    assert prior.result is not None and prior.result.fused is None and prior.result.inplane_gain < 0.1


@pytest.mark.parametrize("profile, width", [("gaussian", 4.0), ("box", 3.0)])
def test_times_four_output_reproduces_a_footprint_that_is_not_the_cells(profile, width):
    """A Gaussian voxel, or a box narrower than the spacing, is not the box of cells a second stage assumes: the
    composed output is still made exactly consistent with the scan's own footprint."""
    lr = torch.from_numpy(degraded(blocks(48, count=80), "box", 4)[0].numpy())
    prior = CrossScalePrior((4.0,) * 3, profile, (width,) * 3, 1.0, PriorSettings(steps=2, patch=16, min_gain=-100.0))
    result = prior.run(lr)
    assert len(result.stages) == 2 and result.fused.shape == (48, 48, 48)
    assert result.consistency_psnr >= 100.0


def test_times_four_is_two_times_two_stages_composed_on_the_lr_grid():
    """×4 box voxels: two ×2 stages, the second trained on the first's output; the output grid is the ×4 tiling grid
    of the LR and the output reproduces every LR voxel (4 × 4 × 4 box means)."""
    lr = torch.from_numpy(degraded(blocks(48, count=80), "box", 4)[0].numpy())  # 12³ voxels of 4 mm
    prior = CrossScalePrior((4.0,) * 3, "box", (4.0,) * 3, 1.0, PriorSettings(steps=3, patch=16, min_gain=-100.0))
    result = prior.run(lr)
    assert [r["factors"] for r in result.stages] == [{"0": 2, "1": 2, "2": 2}] * 2
    assert [(g.subdivision, g.origin) for g in result.grids] == [(4, -0.375)] * 3
    assert result.fused.shape == result.uncertainty.shape == (48, 48, 48) and len(result.networks) == 2
    means = result.fused.reshape(12, 4, 12, 4, 12, 4).mean((1, 3, 5))
    assert float((means - lr).abs().max()) < 1e-5 and result.consistency_psnr >= 100.0
    assert result.learned["stages"] == [[[2, 2.0]], [[2, 2.0]]]
    assert [r["train_steps"] for r in result.stages] == [3, 3]  # steps per ×2 stage, not per ×4


def test_stages_stop_at_the_first_that_misses_its_gate(gate_verdicts):
    """The second stage misses its gate: the output holds the first stage (×2 grid), and the record says so."""
    lr = torch.from_numpy(degraded(blocks(48, count=80), "box", 4)[0].numpy())
    gate_verdicts([0.5, -1.0])  # the held-out verdicts of the two stages (the gate: 0.1 dB)
    prior = CrossScalePrior((4.0,) * 3, "box", (4.0,) * 3, 1.0, PriorSettings(steps=3, patch=16))
    result = prior.run(lr)
    assert [g.subdivision for g in result.grids] == [2, 2, 2] and result.fused.shape == (24, 24, 24)
    assert [r["gain_db"] for r in result.stages] == [0.5, -1.0] and result.inplane_gain == 0.5
    assert result.consistency_psnr >= 100.0


def test_a_saved_two_stage_prior_applies_each_stage_network_in_turn(loaded_networks):
    """Applied to another scan, a saved ×4 prior loads stage k's network into stage k and trains nothing; a scan
    that needs another task (here Gaussian voxels) is refused, naming both."""
    settings = PriorSettings(steps=2, patch=16, min_gain=-100.0)
    trained = CrossScalePrior((4.0,) * 3, "box", (4.0,) * 3, 1.0, settings).run(
        torch.from_numpy(degraded(blocks(48, count=80, seed=1), "box", 4)[0].numpy()))
    saved = {"learned": trained.learned, "networks": trained.networks, "path": "saved.pt"}
    other = torch.from_numpy(degraded(blocks(48, count=80, seed=2), "box", 4)[0].numpy())
    applied = CrossScalePrior((4.0,) * 3, "box", (4.0,) * 3, 1.0, settings).use(pretrained=saved).run(other)
    assert [id(s) for s in loaded_networks] == [id(n) for n in trained.networks]  # stage 1's, then stage 2's
    assert [r["train_l1"] for r in applied.stages] == [None, None] and applied.consistency_psnr >= 100.0
    assert [r["train_steps"] for r in applied.stages] == [None, None]  # loaded, not trained
    with pytest.raises(ValueError, match=r"learned .*'profile': 'box'.*needs .*'profile': 'gaussian'"):
        CrossScalePrior((4.0,) * 3, "gaussian", (4.0,) * 3, 1.0, settings).use(pretrained=saved).run(other)
