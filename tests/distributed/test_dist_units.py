"""Single-process checks of the pieces DDP relies on: ``CuNeRFModel.forward(x, field=, channel_dim=)``, the
inferer's calls through a wrapper, and the per-rank checkpoint state (no process group needed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cunerf_monai.data import RandomCubeDataset
from cunerf_monai.distributed import PerRankState, rank0_logging
from cunerf_monai.inferers import CuNeRFInferer, unwrap_network
from cunerf_monai.networks import CuNeRFModel, PositionalMLPField

HALF = torch.full((3,), 0.05)


def _field(seed: int) -> PositionalMLPField:
    torch.manual_seed(seed)
    return PositionalMLPField(num_frequencies=2, hidden_features=8, num_layers=2, skips=())


@pytest.mark.parametrize("separate", [True, False])
def test_forward_selects_field_and_layout(separate):
    model = CuNeRFModel(_field(1), _field(2) if separate else None)  # channel-first by default
    points = torch.rand(2, 5, 3)
    fine = model.fine if separate else model.coarse
    assert torch.equal(model(points, field="coarse", channel_dim=-1), model.coarse(points))
    assert torch.equal(model(points, field="fine", channel_dim=-1), fine(points))
    grid = torch.rand(1, 3, 2, 3, 4)
    expected = fine(grid.movedim(1, -1)).movedim(-1, 1)
    torch.testing.assert_close(model(grid), expected)  # the MONAI-facing default is unchanged
    torch.testing.assert_close(model(grid, field="fine", channel_dim=1), expected)


@pytest.mark.parametrize("kwargs", [{"field": "medium"}, {"channel_dim": 2}])
def test_forward_rejects_bad_keywords(kwargs):
    with pytest.raises(ValueError):
        CuNeRFModel(_field(1))(torch.rand(4, 3), **kwargs)


def test_inferer_through_a_wrapper_matches_the_bare_model():
    model = CuNeRFModel(_field(1), _field(2))
    wrapped = nn.DataParallel(model)  # without GPUs it calls the module's forward, like DDP does
    assert unwrap_network(wrapped) is model and unwrap_network(model) is model
    inferer = CuNeRFInferer(num_coarse=4, num_fine=4)
    x = torch.rand(6, 3) * 2 - 1
    a = inferer(x, wrapped, half_extent=HALF, generator=torch.Generator().manual_seed(3))
    b = inferer(x, model, half_extent=HALF, generator=torch.Generator().manual_seed(3))
    for key in ("coarse", "fine", "value"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    calls = []
    handle = model.register_forward_pre_hook(lambda m, args, kw: calls.append(kw["field"]), with_kwargs=True)
    inferer(x, wrapped, half_extent=HALF)
    handle.remove()
    assert calls == ["coarse", "fine"]  # both passes go through forward, so DDP would see both
    rendered = inferer.render_points(wrapped, x, 6, HALF)
    torch.testing.assert_close(rendered, inferer.render_points(model, x, 6, HALF), rtol=0, atol=0)
    assert wrapped.training and model.training  # rendering restored the mode


def test_per_rank_state_without_process_group():
    image = torch.rand(1, 4, 4, 3)
    data = RandomCubeDataset(image, batch_size=8, seed=5)
    next(iter(data))
    state = PerRankState(data).state_dict()
    assert len(state["per_rank"]) == 1
    other = RandomCubeDataset(image, batch_size=8, seed=99)
    PerRankState(other).load_state_dict(state)
    assert torch.equal(other.generator.get_state(), data.generator.get_state())
    legacy = RandomCubeDataset(image, batch_size=8, seed=99)  # a single-process checkpoint: rank 0 takes it
    PerRankState(legacy).load_state_dict(data.state_dict())
    assert torch.equal(legacy.generator.get_state(), data.generator.get_state())
    with pytest.raises(TypeError):
        PerRankState(object())


def test_rank0_keeps_all_handlers():
    handlers = [object(), object()]
    assert rank0_logging(handlers) == handlers and rank0_logging(None) is None
