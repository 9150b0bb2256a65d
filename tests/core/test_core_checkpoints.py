"""Checkpoints and run state: the run-settings comparison, atomic checkpoints with the user's umask."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from ignite.engine import Engine
from torch import nn

from cunerf_monai.checkpoints import FINAL, LAST, AtomicCheckpoints, AtomicSaver, RunSettings


def test_run_settings_differences():
    saved = RunSettings(field="bspline_grid", batch_size=64, cube_size=[1.0, 1.0, 0.001], grid_counts=None).state_dict()
    same = RunSettings(field="bspline_grid", batch_size=64, cube_size=(1.0, 1.0, 0.001), grid_counts=None)
    assert same.differences(saved) == []  # tuples and lists are the same JSON value
    other = RunSettings(field="hashgrid", batch_size=64, cube_size=[1.0, 1.0, 0.001], grid_counts=None, seed=1)
    assert other.differences(saved) == ["field: 'bspline_grid' → 'hashgrid'", "seed: '(unset)' → 1"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_training_checkpoints_respect_the_umask(tmp_path, umask, mode):
    """last.pt and model.pt get the mode a plain open() would give them (0644 under umask 022), like the other
    outputs, not the private mode of the temporary file they are written to."""
    model = nn.Linear(2, 2)
    engine = Engine(lambda e, b: None)
    AtomicCheckpoints(str(tmp_path / "ckpt"), {"model": model}).attach(engine)
    old = os.umask(umask)
    try:
        engine.run([0, 1], max_epochs=3)
    finally:
        os.umask(old)
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == sorted([LAST, FINAL])  # no temporary file left behind
    for name in (LAST, FINAL):
        path = tmp_path / "ckpt" / name
        assert stat.S_IMODE(path.stat().st_mode) == mode, (name, oct(path.stat().st_mode))
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert torch.equal(ckpt["weight"], model.weight.detach())


def test_atomic_saver_keeps_the_file_it_is_about_to_rewrite(tmp_path):
    saver = AtomicSaver(tmp_path)
    saver({"a": torch.zeros(1)}, LAST)
    saver.remove(LAST)  # Ignite's Checkpoint removes the previous file before saving the next
    assert (tmp_path / LAST).is_file()  # still there until the new one replaces it
    saver({"a": torch.ones(1)}, LAST)
    assert torch.load(tmp_path / LAST, weights_only=True)["a"].item() == 1.0
    saver.remove(LAST)
    saver({"a": torch.ones(1)}, "other.pt")  # a removed name other than the saved one goes after the save
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.pt"]
