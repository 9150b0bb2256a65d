"""Checkpoints and run state: the run-settings comparison."""

from __future__ import annotations

from cunerf_monai.checkpoints import RunSettings


def test_run_settings_differences():
    saved = RunSettings(field="bspline_grid", batch_size=64, cube_size=[1.0, 1.0, 0.001], grid_counts=None).state_dict()
    same = RunSettings(field="bspline_grid", batch_size=64, cube_size=(1.0, 1.0, 0.001), grid_counts=None)
    assert same.differences(saved) == []  # tuples and lists are the same JSON value
    other = RunSettings(field="hashgrid", batch_size=64, cube_size=[1.0, 1.0, 0.001], grid_counts=None, seed=1)
    assert other.differences(saved) == ["field: 'bspline_grid' → 'hashgrid'", "seed: '(unset)' → 1"]
