"""Numbers of :mod:`cunerf_monai.data`: cube batches carry the LR values at their centres, replay from a seed,
and :class:`CubePrepareBatch` hands them to the inferer in the engine's layout."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy.spatial.transform import Rotation
from torch.utils.data import DataLoader

from conftest import make_affine, parametrize_named
from cunerf_monai.data import CubePrepareBatch, RandomCubeDataset, SlabDataset, geometry_of
from cunerf_monai.geometry import VolumeGeometry


# (name, shape, affine, padding, cube_size)
DATA_CASES = [
    ("identity", (5, 6, 7), np.eye(4), 1.0, 1.0),
    ("anisotropic", (8, 4, 3), make_affine((0.5, 0.5, 4.0), origin=(3, 2, 1)), (1.0, 2.0, 0.5), 2.0),
    (
        "oblique",
        (6, 7, 5),
        make_affine((1.0, 1.2, 2.5), Rotation.from_euler("zxy", [20, 10, -35], degrees=True).as_matrix()),
        1.0,
        0.5,
    ),
]


def volume(shape, affine, seed=0) -> MetaTensor:
    data = torch.rand(1, *shape, generator=torch.Generator().manual_seed(seed))
    return MetaTensor(data, affine=torch.as_tensor(affine))


class TestRandomCubeDataset:
    @parametrize_named("shape, affine, padding, cube_size", DATA_CASES)
    def test_targets_are_values_at_centres(self, shape, affine, padding, cube_size):
        img = volume(shape, affine)
        ds = RandomCubeDataset(img, batch_size=512, cube_size=cube_size, padding=padding, seed=1)
        batch = next(iter(ds))
        assert tuple(batch["centre"].shape) == (512, 3)
        assert tuple(batch["target"].shape) == (512,)
        geo = VolumeGeometry(shape, affine, padding)
        index = geo.field_to_index(batch["centre"].double().numpy())
        rounded = np.round(index)
        # centres are LR voxel centres (integer indices) inside the volume
        np.testing.assert_allclose(index, rounded, atol=1e-4)
        assert np.all(rounded >= 0) and np.all(rounded <= np.asarray(shape) - 1)
        ijk = rounded.astype(int)
        expected = img.as_tensor()[0][ijk[:, 0], ijk[:, 1], ijk[:, 2]]
        torch.testing.assert_close(batch["target"], expected, rtol=0, atol=0)
        # the same through world coordinates: the field point of the voxel's world position
        world = geo.index_to_world(ijk.astype(np.float64))
        np.testing.assert_allclose(batch["centre"].numpy(), geo.world_to_field(world), atol=1e-5)
        # half-extent: cube_size / 2 LR voxels per axis, in field units 2 / (S + 2P) each
        pad = np.broadcast_to(padding, (3,))
        expected_half = cube_size / 2.0 * 2.0 / (np.asarray(shape) + 2.0 * pad)
        np.testing.assert_allclose(batch["half_extent"].numpy(), expected_half, rtol=1e-6)

    def test_covers_all_voxels(self):
        img = volume((3, 3, 2), np.eye(4))
        ds = RandomCubeDataset(img, batch_size=2000, seed=0)
        batch = next(iter(ds))
        assert batch["target"].unique().numel() == 18
        # each voxel about equally often (1/18 each)
        index = np.round(ds.geometry.field_to_index(batch["centre"].double().numpy())).astype(int)
        flat = np.ravel_multi_index(index.T, (3, 3, 2))
        freq = np.bincount(flat, minlength=18) / 2000
        assert np.abs(freq - 1 / 18).max() < 5 * np.sqrt((1 / 18) * (17 / 18) / 2000)

    def test_same_seed_same_batches(self):
        img = volume((5, 6, 7), np.eye(4))
        a = iter(RandomCubeDataset(img, batch_size=64, seed=7))
        b = iter(RandomCubeDataset(img, batch_size=64, seed=7))
        c = iter(RandomCubeDataset(img, batch_size=64, seed=8))
        for _ in range(3):
            ba, bb, bc = next(a), next(b), next(c)
            torch.testing.assert_close(ba["centre"], bb["centre"], rtol=0, atol=0)
            torch.testing.assert_close(ba["target"], bb["target"], rtol=0, atol=0)
            assert not torch.equal(ba["centre"], bc["centre"])
        # consecutive batches of one stream differ
        x, y = next(a), next(a)
        assert not torch.equal(x["centre"], y["centre"])

    def test_state_dict_resumes(self):
        img = volume((5, 6, 7), np.eye(4))
        ds = RandomCubeDataset(img, batch_size=32, seed=3)
        it = iter(ds)
        next(it), next(it)
        state = ds.state_dict()
        expected = next(it)
        resumed = RandomCubeDataset(img, batch_size=32, seed=99)
        resumed.load_state_dict(state)
        got = next(iter(resumed))
        torch.testing.assert_close(got["centre"], expected["centre"], rtol=0, atol=0)
        torch.testing.assert_close(got["target"], expected["target"], rtol=0, atol=0)

    def test_dataloader_batch_none(self):
        img = volume((4, 4, 4), np.eye(4))
        loader = DataLoader(RandomCubeDataset(img, batch_size=16, seed=0), batch_size=None)
        batch = next(iter(loader))
        assert tuple(batch["centre"].shape) == (16, 3)
        direct = next(iter(RandomCubeDataset(img, batch_size=16, seed=0)))
        torch.testing.assert_close(batch["centre"], direct["centre"])

    @parametrize_named(
        "kwargs, shape",
        [
            ("batch", dict(batch_size=0), (1, 4, 4, 4)),
            ("cube", dict(cube_size=0.0), (1, 4, 4, 4)),
            ("channels", dict(), (2, 4, 4, 4)),
            ("slice", dict(), (1, 4, 4, 1)),
        ],
    )
    def test_bad_arguments(self, kwargs, shape):
        with pytest.raises(ValueError):
            RandomCubeDataset(torch.rand(*shape), **kwargs)

    def test_geometry_of(self):
        affine = make_affine((0.5, 1.0, 3.0), origin=(1, 2, 3))
        geo = geometry_of(MetaTensor(torch.rand(1, 4, 5, 6), affine=torch.as_tensor(affine)), padding=2.0)
        assert geo.shape == (4, 5, 6)
        np.testing.assert_allclose(geo.affine, affine)
        assert geo.padding == (2.0, 2.0, 2.0)
        np.testing.assert_allclose(geometry_of(torch.rand(1, 4, 5, 6)).affine, np.eye(4))


class TestSlabDataset:
    @parametrize_named(
        "shape, affine, padding, axis",
        [(f"{name}_{axis}", shape, affine, pad, axis) for name, shape, affine, pad, _ in DATA_CASES for axis in (0, 2)],
    )
    def test_central_slab(self, shape, affine, padding, axis):
        img = volume(shape, affine, seed=5)
        ds = SlabDataset(img, num_slices=2, axis=axis, padding=padding)
        assert len(ds) == 1
        item = ds[0]
        n = int(np.prod(shape)) // shape[axis] * 2
        assert tuple(item["centre"].shape) == (n, 3)
        geo = VolumeGeometry(shape, affine, padding)
        index = geo.field_to_index(item["centre"].double().numpy())
        np.testing.assert_allclose(index, np.round(index), atol=1e-4)
        ijk = np.round(index).astype(int)
        start = (shape[axis] - 2) // 2
        assert set(ijk[:, axis].tolist()) == {start, start + 1}  # the two central slices
        torch.testing.assert_close(item["target"], img.as_tensor()[0][ijk[:, 0], ijk[:, 1], ijk[:, 2]], rtol=0, atol=0)
        np.testing.assert_allclose(item["half_extent"].numpy(), geo.field_per_voxel / 2, rtol=1e-6)
        with pytest.raises(IndexError):
            ds[1]


class TestCubePrepareBatch:
    def test_structure(self):
        img = volume((5, 6, 7), np.eye(4))
        batch = next(iter(RandomCubeDataset(img, batch_size=8, seed=0)))
        out = CubePrepareBatch()(batch, device="cpu")
        assert len(out) == 4
        centre, target, args, kwargs = out
        torch.testing.assert_close(centre, batch["centre"], rtol=0, atol=0)
        torch.testing.assert_close(target, batch["target"], rtol=0, atol=0)
        assert args == ()
        assert set(kwargs) == {"half_extent", "generator"}
        assert isinstance(kwargs["generator"], torch.Generator)
        torch.testing.assert_close(kwargs["half_extent"], batch["half_extent"], rtol=0, atol=0)
        # half a voxel of a 5-voxel axis with P = 1: 0.5 · 2 / 7
        assert float(kwargs["half_extent"][0]) == pytest.approx(1.0 / 7.0, abs=0.5e-6)
        out_none = CubePrepareBatch()(batch)
        torch.testing.assert_close(out_none[0], batch["centre"])

