"""The combined prior of thick-slice scans rendered finer in-plane too: which scans get it, its grids, the exact
consistency of the composed parts, each part's gate, a saved combined prior, and a measured gain over the thick-slice
prior alone."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from conftest import blocks
from cunerf_monai.combined_prior import SliceCrossScalePrior
from cunerf_monai.cross_scale_prior import CrossScalePrior
from cunerf_monai.evaluation import psnr, run_baselines
from cunerf_monai.forward_model import ForwardModel
from cunerf_monai.slice_prior import PriorResult, PriorSettings, SlicePrior, field_grid, prior_for, render_forward
from cunerf_monai.transforms.array import SimulateLowResolution

SPACING = (2.0, 2.0, 4.0)
TARGET = [1.0, 1.0, 2.0]


def forward(profiles=("box", "box", "box"), spacing=SPACING) -> ForwardModel:
    widths = tuple(0.0 if p == "point" else s for p, s in zip(profiles, spacing))
    return ForwardModel(tuple(profiles), widths, (1, 1, 1), spacing=tuple(spacing))


def thick_lr(seed: int = 0, n: int = 48) -> MetaTensor:
    """Blocks of 1 mm voxels box-averaged to 2 × 2 × 4 mm."""
    image = MetaTensor(torch.from_numpy(blocks(n, count=120, seed=seed))[None], affine=torch.eye(4, dtype=torch.float64))
    return SimulateLowResolution((2, 2, 4), "box")(image)


def combined(settings: PriorSettings) -> SliceCrossScalePrior:
    """What :func:`prior_for` builds for :func:`forward` and :data:`TARGET`, with ``settings``."""
    return SliceCrossScalePrior(SlicePrior(SPACING, "box", 4.0, 2.0, settings),
                                CrossScalePrior((2.0, 2.0, 2.0), "box", (2.0, 2.0, 2.0), TARGET, settings))


def test_a_thick_scan_told_a_finer_in_plane_spacing_gets_both_priors():
    prior = prior_for(forward(), target_spacing=TARGET)
    assert type(prior) is SliceCrossScalePrior and prior.axis == 2 and prior.cross.axes == [0, 1]
    assert prior.slices.settings is prior.cross.settings is prior.settings
    # the cross-scale part works on the thick-slice output: 2 mm along the thick axis, not upsampled again
    assert prior.cross.spacing == [2.0, 2.0, 2.0] and prior.cross.target_spacings == [1.0, 1.0, 2.0]
    grids = prior.grids_for((24, 24, 12))
    assert [(g.axis, g.subdivision, g.count) for g in grids] == [(2, 2, 24), (0, 2, 48), (1, 2, 48)]
    assert field_grid(SimpleNamespace(grids=grids)) == {"origin": [-0.25, -0.25, -0.25], "step": [0.5, 0.5, 0.5]}
    assert render_forward(forward(), SimpleNamespace(grids=grids)).samples == (2, 2, 2)
    assert prior.as_dict()["kind"] == "slices+cross-scale" and prior.as_dict()["cross_scale"]["axes"] == [0, 1]
    # the thick-slice prior alone: no finer in-plane spacing asked, point-sampled or mixed in-plane voxels
    assert type(prior_for(forward())) is SlicePrior
    assert type(prior_for(forward(), target_spacing=[1.5, 1.5, 2.0])) is SlicePrior
    assert type(prior_for(forward(("point", "point", "box")), target_spacing=TARGET)) is SlicePrior
    assert type(prior_for(forward(("box", "point", "box")), target_spacing=TARGET)) is SlicePrior
    assert type(prior_for(forward(("gaussian", "gaussian", "box")), target_spacing=TARGET)) is SliceCrossScalePrior
    with pytest.raises(ValueError, match="in-plane axes"):
        SliceCrossScalePrior(prior.slices, CrossScalePrior(SPACING, "box", SPACING, 1.0))


def test_composed_parts_reproduce_the_lr_along_every_axis():
    """Whatever the networks propose, the output degraded as the scan was made (4 mm box along z, 2 mm in-plane) is
    the LR: each LR voxel is the mean of its 2 × 2 × 2 output voxels."""
    lr = thick_lr()[0]
    prior = combined(PriorSettings(steps=2, patch=16, min_gain=-100.0))
    result = prior.run(lr)
    assert result.fused.shape == result.uncertainty.shape == (48, 48, 24)
    means = result.fused.reshape(24, 2, 24, 2, 12, 2).mean((1, 3, 5))
    assert float((means - lr).abs().max()) < 1e-5 and result.consistency_psnr >= 100.0
    assert [r["factors"] for r in result.stages] == [{"2": 2}, {"0": 2, "1": 2}]
    assert [r["stage"] for r in result.stages] == [1, 2] and len(result.networks) == 2
    assert [r["train_steps"] for r in result.stages] == [2, 2]
    assert [g.axis for g in result.grids] == [2, 0, 1]
    assert result.learned == {"slices": prior.slices.learned(result.grids[:1]),
                              "cross_scale": prior.cross.learned(result.grids[1:])}


def test_the_parts_uncertainties_add_in_quadrature_on_the_output_grid():
    """The thick-slice part's spread (0.3, on its 24 × 24 × 24 grid) is carried onto the in-plane output grid and
    added in quadrature to the cross-scale part's (0.4): 0.5 everywhere on 48 × 48 × 24."""
    lr = thick_lr()[0]
    prior = combined(PriorSettings(steps=1))
    after = (24, 24, 24)

    def part(shape, spread, grids):
        return PriorResult(torch.zeros(shape), torch.zeros(shape), torch.full(shape, spread), grids, 100.0, 0.01,
                           {"train": 1.0}, 0.5, [{}], {}, [{"factors": {}}])

    first = part(after, 0.3, prior.slices.grids_for(lr.shape))
    second = part((48, 48, 24), 0.4, prior.cross.grids_for(after))
    result = prior._compose(lr, first, second)
    assert result.uncertainty.shape == (48, 48, 24)
    torch.testing.assert_close(result.uncertainty, torch.full((48, 48, 24), 0.5))
    assert result.seconds == {"train": 2.0} and len(result.networks) == 2


def test_a_cross_scale_part_that_misses_its_gate_leaves_the_thick_slice_output(gate_verdicts):
    gate_verdicts([0.5, -1.0])
    result = combined(PriorSettings(steps=2, patch=16)).run(thick_lr()[0])
    assert [g.axis for g in result.grids] == [2] and result.fused.shape == (24, 24, 24)
    assert [r["gain_db"] for r in result.stages] == [0.5, -1.0] and result.inplane_gain == 0.5
    assert result.consistency_psnr >= 100.0 and len(result.networks) == 2


def test_a_thick_slice_part_that_misses_its_gate_runs_nothing_after_it(gate_verdicts):
    gate_verdicts([-1.0])  # a second verdict would raise StopIteration
    result = combined(PriorSettings(steps=2, patch=16)).run(thick_lr()[0])
    assert result.fused is None and result.inplane_gain == -1.0 and len(result.stages) == 1
    assert set(result.learned) == {"slices", "cross_scale"}  # saved, it is a prior for scans needing both parts


def test_in_plane_axes_too_short_for_cross_scale_pairs_keep_the_thick_slice_output():
    """Six in-plane voxels at ×4 hold fewer than two degraded samples: the thick-slice part alone, not no prior."""
    lr = torch.rand(6, 6, 12)
    settings = PriorSettings(steps=2, patch=8, min_gain=-100.0)
    prior = SliceCrossScalePrior(SlicePrior(SPACING, "box", 4.0, 2.0, settings),
                                 CrossScalePrior((2.0, 2.0, 2.0), "box", (2.0, 2.0, 2.0), [0.5, 0.5, 2.0], settings))
    assert not prior.too_small(lr.shape) and prior.cross.too_small((6, 6, 24))
    result = prior.run(lr)
    assert [g.axis for g in result.grids] == [2] and result.fused.shape == (6, 6, 24) and len(result.stages) == 1


def test_a_saved_combined_prior_loads_each_part_network_in_turn(loaded_networks, gate_verdicts):
    """Applied to another scan, the thick-slice network goes to the thick-slice part and the next to the cross-scale
    part, nothing trains; a saved thick-slice prior alone is refused, naming both tasks."""
    settings = PriorSettings(steps=2, patch=16, min_gain=-100.0)
    trained = combined(settings).run(thick_lr(seed=1)[0])
    saved = {"learned": trained.learned, "networks": trained.networks, "path": "saved.pt"}
    other = thick_lr(seed=2)[0]
    applied = combined(settings).use(pretrained=saved).run(other)
    assert [id(s) for s in loaded_networks] == [id(n) for n in trained.networks]
    assert [r["train_l1"] for r in applied.stages] == [None, None] and applied.consistency_psnr >= 100.0
    # trained where the thick-slice part missed its gate: no cross-scale network to apply where it passes
    gate_verdicts([-1000.0])  # below this test's gate of -100 dB
    missed = combined(settings).run(thick_lr(seed=1)[0])
    stopped = {"learned": missed.learned, "networks": missed.networks, "path": "stopped.pt"}
    assert len(stopped["networks"]) == 1
    gate_verdicts([0.5])
    with pytest.raises(ValueError, match=r"holds 0 network\(s\) here, and this scan reaches stage 1"):
        combined(settings).use(pretrained=stopped).run(other)
    alone = {"learned": trained.learned["slices"], "networks": trained.networks[:1], "path": "slices.pt"}
    with pytest.raises(ValueError, match=r"learned \{'profile'.*needs \{'slices'"):
        combined(settings).use(pretrained=alone).run(other)


def test_the_cross_scale_part_adds_over_the_thick_slice_prior_alone():
    """Blocks at 2 × 2 × 4 mm rendered at 1 × 1 × 2 mm: the combined output beats the best aligned interpolation of
    the thick-slice prior's own output (2 mm isotropic) in-plane by ≥ 0.3 dB, against the HR box-averaged to 2 mm
    along z."""
    torch.manual_seed(0)
    hr = MetaTensor(torch.from_numpy(blocks(48, count=120))[None], affine=torch.eye(4, dtype=torch.float64))
    lr = SimulateLowResolution((2, 2, 4), "box")(hr)
    truth = SimulateLowResolution((1, 1, 2), "box")(hr)
    prior = combined(PriorSettings(steps=300, patch=24))
    first = prior.slices.run(lr[0])  # the parts one by one, to score the thick-slice output on its own
    result = prior._compose(lr[0], first, prior.cross.run(first.fused))
    assert len(result.grids) == 3, f"a part stepped aside: {result.stages}"
    on_slices = np.asarray(lr.affine).copy()  # the thick-slice output grid: ×2 along z, tiling the LR slices
    on_slices[:3, 3] += on_slices[:3, 2] * first.grids[0].origin
    on_slices[:3, 2] *= first.grids[0].step
    bases = run_baselines(first.fused.numpy(), on_slices, truth.shape[1:], np.asarray(truth.affine), include_misaligned=False)
    target = truth[0].numpy()
    best = max(psnr(np.clip(v, 0, 1), target) for k, v in bases.items() if k != "nearest")
    assert result.fused.shape == target.shape
    gain = psnr(np.clip(result.fused.numpy(), 0, 1), target) - best
    assert gain >= 0.3, f"the cross-scale part adds only {gain:.2f} dB"
