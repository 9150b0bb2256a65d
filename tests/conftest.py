"""Shared test helpers and fixtures: affines, the tiny oblique test volume and the tiny-fit config overlay.

Module-level helpers (used in parametrisations at import time) are imported with ``from conftest import …``;
pytest puts this folder on ``sys.path`` when it loads this file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

from cunerf_monai.geometry import rodrigues


def make_affine(
    spacing: Sequence[float], rotation: np.ndarray | None = None, origin: Sequence[float] = (0.0, 0.0, 0.0)
) -> np.ndarray:
    """Shear-free affine ``(4, 4)``: ``rotation (3, 3) @ diag(spacing)`` plus ``origin`` (mm)."""
    rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(np.asarray(spacing, dtype=np.float64))
    affine[:3, 3] = origin
    return affine


#: the tiny test volume: voxel counts (X, Y, Z), voxel size (mm), centre of voxel (0, 0, 0) (mm) and the unit
#: directions of the voxel axes (columns; a proper rotation, so the geometry is oblique and anisotropic)
TINY_SHAPE = (12, 14, 10)
TINY_SPACING = (1.5, 1.2, 3.0)
TINY_ORIGIN = (-20.0, 10.0, 5.0)
TINY_DIRECTION = rodrigues((1.0, 2.0, 0.5), 20.0)

#: settings of a tiny, fast fit (2 iterations per epoch of 64 cubes, few samples per cube)
TINY_OVERLAY = {
    "epoch_length": 2,
    "batch_size": 64,
    "num_coarse": 8,
    "num_fine": 0,
    "num_coarse_eval": 4,
    "num_fine_eval": 4,
    "chunk_size": 2048,
    "progress": False,
    "prior": "none",  # the thick-slice prior has its own tests (the tiny volume has a thick axis)
}


def tiny_affine() -> np.ndarray:
    """Voxel index → world (mm) of the tiny test volume ``(4, 4)``."""
    return make_affine(TINY_SPACING, TINY_DIRECTION, TINY_ORIGIN)


def tiny_array(shape: Sequence[int] = TINY_SHAPE, dtype=np.float32, cross: float = 0.0) -> np.ndarray:
    """A smooth test volume ``(X, Y, Z)``: ``100 + 80 sin(i/3) cos(j/4) + 10 k + cross · i j`` (``cross`` makes it
    non-symmetric under a swap of the first two axes)."""
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return (100 + 80 * np.sin(i / 3.0) * np.cos(j / 4.0) + 10 * k + cross * i * j).astype(dtype)


def blocks(n: int = 48, count: int = 60, seed: int = 0) -> np.ndarray:
    """A volume ``(n, n, n)`` of overlapping axis-aligned blocks: sharp edges along every axis, in ``[0, 1]``."""
    rng = np.random.default_rng(seed)
    vol = np.zeros((n, n, n), np.float32)
    for _ in range(count):
        lo, size = rng.integers(0, n - 4, 3), rng.integers(3, 14, 3)
        vol[lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[2]] += rng.uniform(0.1, 0.5)
    return vol / vol.max()


@pytest.fixture
def gate_verdicts(monkeypatch):
    """``gate_verdicts([0.5, -1.0])``: the priors' gates read these held-out gains (dB) in turn, whatever their
    networks learnt (a further verdict raises ``StopIteration``)."""
    from cunerf_monai.slice_prior import SlicePrior

    def given(verdicts: Sequence[float]) -> None:
        gains = iter(verdicts)
        monkeypatch.setattr(SlicePrior, "inplane_gain",
                            lambda self, groups: {"best": next(gains), "start": 0.0, "best_baseline": "keys"})

    return given


@pytest.fixture
def loaded_networks(monkeypatch) -> list:
    """The state dicts loaded into plane networks from here on, in order."""
    from cunerf_monai.networks.planenet import PlaneResidualNet

    loaded: list = []
    real = PlaneResidualNet.load_state_dict

    def recording(self, state, *args, **kwargs):
        loaded.append(state)
        return real(self, state, *args, **kwargs)

    monkeypatch.setattr(PlaneResidualNet, "load_state_dict", recording)
    return loaded


@pytest.fixture(scope="session")
def tiny_overlay(tmp_path_factory) -> Path:
    """:data:`TINY_OVERLAY` as a config overlay file."""
    path = tmp_path_factory.mktemp("tiny_cfg") / "tiny_fit.json"
    path.write_text(json.dumps(TINY_OVERLAY))
    return path


@pytest.fixture(scope="session")
def tiny_nifti(tmp_path_factory) -> Path:
    """The tiny test volume as NIfTI (int16, like a scanner), with the oblique, anisotropic :func:`tiny_affine`."""
    import nibabel as nib

    path = tmp_path_factory.mktemp("tiny_data") / "tiny.nii.gz"
    nib.save(nib.Nifti1Image(tiny_array(dtype=np.int16), tiny_affine()), str(path))
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one torch thread: tiny matrices avoid OpenMP hand-off costs (≈ 10 ms per op on a
    busy 2-core machine). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def parametrize_named(argnames: str, cases) -> pytest.MarkDecorator:
    """``pytest.mark.parametrize`` over ``(name, *values)`` tuples: the first item of each case is its test id."""
    cases = list(cases)
    single = len([n for n in argnames.split(",") if n.strip()]) == 1
    values = [c[1] if single else tuple(c[1:]) for c in cases]
    return pytest.mark.parametrize(argnames, values, ids=[str(c[0]) for c in cases])
