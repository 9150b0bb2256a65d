"""Budget rules and bookkeeping of the benchmark scripts (the numbers they report depend on them)."""

from __future__ import annotations

import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_time_to_quality_measures_at_doubling_times_up_to_the_budget():
    from time_to_quality import checkpoints_seconds

    assert checkpoints_seconds(1.0) == [15.0, 30.0, 60.0]
    assert checkpoints_seconds(10.0) == [15.0, 30.0, 60.0, 120.0, 240.0, 480.0, 600.0]


def test_passes_budget_scales_with_the_lr_voxels():
    from quality import matched_overrides, passes_to_iterations

    box = matched_overrides("box", (2, 2, 2))  # 8 samples per LR voxel → 32768 voxels per step
    assert box["grid_counts"] == [2, 2, 2] and box["batch_size"] == 32768
    # LR 20 × 20 × 10 = 4000 voxels; 6 passes = 24000 targets = 1 step of 32768
    assert passes_to_iterations(6, (41, 40, 20), (2, 2, 2), box) == 1
    slice_box = matched_overrides("box", (1, 1, 4))  # 4 samples along the slice axis only
    assert slice_box["grid_counts"] == [1, 1, 4] and slice_box["num_coarse"] == 4
    assert slice_box["forward_model"] == ["point", "point", "box"] and slice_box["kernel"] == "bspline"
    # LR 41 × 40 × 5 = 8200 voxels, batch 65536: 100 passes = 820000 targets = 13 steps
    assert passes_to_iterations(100, (41, 40, 20), (1, 1, 4), slice_box) == 13
    assert matched_overrides("nearest", (2, 2, 2))["num_coarse"] == 1


def test_side_by_side_refuses_a_folder_that_is_not_the_authors_code(tmp_path):
    import pytest
    from side_by_side import _authors_modules

    with pytest.raises(FileNotFoundError, match="not a CuNeRF checkout"):
        _authors_modules(tmp_path)


def test_side_by_side_table_ratios_are_points_per_second():
    from side_by_side import table

    rows = {
        "authors": {"points_per_iteration": 1000, "seconds_per_iteration": 2.0, "peak_rss_mb": 1024.0},
        "authors_retain": {"points_per_iteration": 1000, "seconds_per_iteration": 1.6, "peak_rss_mb": 2048.0},
        "ours": {"points_per_iteration": 1000, "seconds_per_iteration": 1.0, "peak_rss_mb": 1536.0},
    }
    lines = table(rows, "test machine", 3, 2).splitlines()
    assert lines[0].startswith("Machine: test machine; median of 3 timed iterations after one warm-up, best of 2")
    assert lines[4].split("|")[4:7] == [" 500 ", " 1.00 GB ", " 1.00× "]
    assert lines[5].split("|")[4:7] == [" 625 ", " 2.00 GB ", " 1.25× "]
    assert lines[6].split("|")[4:7] == [" 1,000 ", " 1.50 GB ", " 2.00× "]


def test_time_to_quality_keeps_the_other_fields_of_the_same_case(tmp_path):
    import json

    from time_to_quality import config_value, parse_args, stored_curves

    path = tmp_path / "time_to_quality.json"
    point = {"seconds": 15.0, "iteration": 7, "psnr": 30.5}
    path.write_text(json.dumps({"volume": "v.nii.gz", "degradation": "box", "factors": [2, 2, 2],
                                "curves": {"spline": [point], "hashgrid": [point]},
                                "scheduled_iterations": {"spline": 100, "hashgrid": 3000}}))
    args = parse_args(["--volume", "v.nii.gz", "--degradation", "box", "--fields", "hashgrid"])
    assert stored_curves(path, args) == ({"spline": [(15.0, 7, 30.5)]}, {"spline": 100})
    other = parse_args(["--volume", "v.nii.gz", "--degradation", "nearest", "--fields", "hashgrid"])
    assert stored_curves(path, other) == ({}, {})  # another case starts afresh
    assert config_value("hashgrid_residual", "num_iterations") == 1600  # the overlay's value wins over train.json
    assert config_value("spline", "num_iterations") == 150


def test_convergence_marks_and_data_folder(monkeypatch, tmp_path):
    from convergence import data_root, eval_marks

    assert eval_marks(20) == [0, 1, 2, 4, 8, 16, 20]
    assert eval_marks(16) == [0, 1, 2, 4, 8, 16]
    assert eval_marks(1) == [0, 1]
    monkeypatch.delenv("CUNERF_DATA", raising=False)
    assert data_root() == ROOT.parent / "shared" / "data"
    monkeypatch.setenv("CUNERF_DATA", str(tmp_path))
    assert data_root() == tmp_path and data_root("/elsewhere") == Path("/elsewhere")


def test_time_to_quality_headline_is_the_final_checkpoint(tmp_path):
    from time_to_quality import write_table

    curve = [{"seconds": 0.0, "iteration": 0, "psnr": 30.0}, {"seconds": 60.0, "iteration": 10, "psnr": 33.0},
             {"seconds": 120.0, "iteration": 20, "psnr": 31.5}]
    write_table(tmp_path, {"machine": "m", "volume": "v.nii.gz", "degradation": "box", "factors": [2, 2, 2],
                           "baselines_psnr": {"bspline": 32.0}, "best_baseline": "bspline",
                           "curves": {"hashgrid": curve}})
    row = (tmp_path / "time_to_quality.md").read_text(encoding="utf-8").splitlines()[-1].split("|")
    assert row[4].strip() == "31.50 (2.0 min, 20 it)"
    assert row[5].strip() == "-0.50"  # the final checkpoint against the baseline (the headline)
    assert row[6].strip() == "+1.00"  # the best measurement, picked on the HR volume, beside it


def test_prior_table_names_both_parts_of_a_combined_prior():
    """A row fitted with the thick-slice then cross-scale prior names both parts' profiles, and says when the
    cross-scale part stepped aside (one grid: the thick axis'); its prior_data folder is read from the parts."""
    from prior import _data, _profile

    both = {"kind": "slices+cross-scale", "applied": True, "grids": [{}, {}, {}],
            "slices": {"profile": "box", "data": ["chest_ct"]}, "cross_scale": {"profile": "gaussian"}}
    assert _profile(both) == "box, then in-plane gaussian"
    assert _profile(dict(both, grids=[{}])) == "box, then in-plane stepped aside"
    assert _profile(dict(both, applied=False, inplane_gain_db=-0.2)) == "stepped aside: -0.20 dB held-out"
    assert _profile({"kind": "slices", "profile": "point", "applied": True}) == "point"
    assert _data(both) == ["chest_ct"] and _data({"data": ["colin27"]}) == ["colin27"] and _data(None) is None


def test_a_saved_prior_row_names_the_run_it_came_from():
    from prior import _source

    run = "/repo/runs/quality/chest_ct_x2_slice_box_blind/fit/checkpoints/prior_model.pt"
    assert _source({"kind": "slices", "pretrained": run}) == "chest_ct_x2_slice_box_blind"
    assert _source({"kind": "slices+cross-scale", "slices": {"pretrained": run}}) == "chest_ct_x2_slice_box_blind"
    assert _source({"pretrained": "/lab/priors/ct_x2/prior_model.pt"}) == "ct_x2"


def test_spectral_falloff_is_zero_for_a_power_law_and_negative_under_a_box():
    """The study's fall-off: a power-law field scores about 0; the same field box-averaged ×2 per axis falls faster
    at the top band than its low-to-mid slope predicts."""
    import numpy as np
    import torch
    from monai.data import MetaTensor

    from cunerf_monai.transforms.array import SimulateLowResolution
    from forward_model_study import spectral_falloff

    rng = np.random.default_rng(0)
    shape = (128, 128, 128)
    k = np.sqrt(sum(np.meshgrid(*[np.fft.fftfreq(n) ** 2 for n in shape], indexing="ij")))
    k[0, 0, 0] = 1.0
    field = np.real(np.fft.ifftn(np.fft.fftn(rng.standard_normal(shape)) * k ** -1.5)).astype(np.float32)
    hr = MetaTensor(torch.tensor(field[None]), affine=torch.eye(4))
    point = SimulateLowResolution((2, 2, 2), "nearest")(hr)[0].numpy()
    box = SimulateLowResolution((2, 2, 2), "box")(hr)[0].numpy()
    assert abs(spectral_falloff(point, (2.0, 2.0, 2.0))) < 0.25
    assert spectral_falloff(box, (2.0, 2.0, 2.0)) < spectral_falloff(point, (2.0, 2.0, 2.0)) - 0.3
