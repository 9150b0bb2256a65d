"""The string modes as StrEnums: plain config strings still work, bad values are named."""

from __future__ import annotations

import json

import pytest
import torch

from cunerf_monai.enums import CubeSampling, Kernel, SamplingMode, Weighting, check_option, option_names
from cunerf_monai.inferers import CuNeRFInferer
from cunerf_monai.sampling import cube_offsets, distance


def test_a_member_is_its_string():
    assert SamplingMode.CUBE == "cube" and str(Weighting.ISOTROPIC) == "isotropic"
    assert {"bspline": 1}[Kernel.BSPLINE] == 1
    assert json.dumps({"mode": CubeSampling.GRID}) == '{"mode": "grid"}'
    assert option_names(SamplingMode) == ("cube", "ray")
    assert repr(tuple(SamplingMode)) == "('cube', 'ray')"


def test_check_option_returns_the_member_and_names_a_bad_value():
    assert check_option("ray", SamplingMode, "sampling") is SamplingMode.RAY
    assert check_option(SamplingMode.RAY, SamplingMode, "sampling") is SamplingMode.RAY
    with pytest.raises(ValueError, match=r"sampling must be one of \('cube', 'ray'\), got 'cubes'.*did you mean 'cube'"):
        check_option("cubes", SamplingMode, "sampling")
    with pytest.raises(ValueError, match=r"got \['cube'\]"):
        check_option(["cube"], SamplingMode, "sampling")


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"sampling": "beam"}, "sampling must be one of .* got 'beam'"),
        ({"weighting": "flat"}, "weighting must be one of .* got 'flat'"),
        ({"norm": "l1"}, "norm must be one of .* got 'l1'"),
        ({"cube_sampling": "sobol"}, "cube_sampling must be one of .* got 'sobol'"),
        ({"eval_cube_sampling": "stratified"}, "eval_cube_sampling must be one of .* got 'stratified'"),
        ({"intensity_activation": "tanh"}, "intensity_activation must be one of .* got 'tanh'"),
    ],
)
def test_inferer_names_a_bad_mode(kwargs, words):
    with pytest.raises(ValueError, match=words):
        CuNeRFInferer(**kwargs)


def test_plain_strings_and_members_configure_alike():
    a = CuNeRFInferer(sampling="ray", weighting="volume", cube_sampling="qmc")
    b = CuNeRFInferer(sampling=SamplingMode.RAY, weighting=Weighting.VOLUME, cube_sampling=CubeSampling.QMC)
    assert (a.sampling, a.weighting, a.cube_sampling) == (b.sampling, b.weighting, b.cube_sampling) == ("ray", "volume", "qmc")
    pts = cube_offsets(2, 8, "qmc")
    assert torch.equal(distance(pts, "linf"), distance(pts, "linf"))
    with pytest.raises(ValueError, match="norm must be one of .* got 'l3'"):
        distance(pts, "l3")


def test_batch_and_render_keys_are_the_documented_strings():
    from cunerf_monai.data import SlabDataset
    from cunerf_monai.enums import BatchKeys, RenderKeys

    item = SlabDataset(torch.rand(1, 4, 4, 3))[0]
    assert set(item) == {BatchKeys.CENTRE, BatchKeys.TARGET, BatchKeys.HALF_EXTENT} == {"centre", "target", "half_extent"}
    assert all(type(k) is str for k in item)
    assert (RenderKeys.COARSE, RenderKeys.FINE, RenderKeys.VALUE) == ("coarse", "fine", "value")
