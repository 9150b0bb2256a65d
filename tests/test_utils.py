"""Tests of the shared atomic writers (cunerf_monai.utils): outputs a user can share, never half-written."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from cunerf_monai.io import save_nifti
from cunerf_monai.utils import atomic_path, write_json


@pytest.fixture
def umask():
    """Set the process umask for one test (restored afterwards)."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def _mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def test_a_rendered_volume_is_mode_0644_under_umask_022(tmp_path, umask):
    umask(0o022)
    path = save_nifti(tmp_path / "sr.nii.gz", np.zeros((3, 4, 5), np.float32), np.eye(4))
    assert _mode(path) == 0o644
    assert _mode(write_json(tmp_path / "fit.json", {"a": 1})) == 0o644


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_path_gives_the_mode_of_a_plain_write(tmp_path, umask, mask, mode):
    umask(mask)
    with atomic_path(tmp_path / "out.bin") as tmp:
        with open(tmp, "wb") as f:
            f.write(b"data")
    assert _mode(tmp_path / "out.bin") == mode
    with open(tmp_path / "plain.bin", "wb") as f:
        f.write(b"data")
    assert _mode(tmp_path / "plain.bin") == mode


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write('{"half": ')
            raise RuntimeError("midway")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    with pytest.raises(TypeError):
        write_json(path, {"not json": object()})
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_atomic_path_keeps_the_double_suffix_and_replaces(tmp_path):
    with atomic_path(tmp_path / "sub" / "sr.nii.gz") as tmp:
        assert tmp.endswith(".nii.gz") and os.path.dirname(tmp) == str(tmp_path / "sub")
        open(tmp, "wb").close()
    write_json(tmp_path / "a.json", {"x": [1, 2]})
    write_json(tmp_path / "a.json", {"x": [3]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [3]}
