"""Numbers of :mod:`cunerf_monai.networks.cunerf`: the coarse/fine model picks its field and keeps the layout."""

from __future__ import annotations

import pytest
import torch

from cunerf_monai.networks import CuNeRFModel, PositionalMLPField

pytestmark = pytest.mark.usefixtures("one_thread")


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _small() -> PositionalMLPField:
    return PositionalMLPField(num_frequencies=2, hidden_features=8, num_layers=2, skips=())


def test_forward_uses_fine_field():
    torch.manual_seed(2)
    coarse, fine = _small(), _small()
    model = CuNeRFModel(coarse, fine, channel_dim=-1)
    x = torch.rand(7, 3)
    torch.testing.assert_close(model(x), fine(x))
    assert not torch.allclose(model(x), coarse(x))
    assert model.fine_field is fine
    assert count(model) == count(coarse) + count(fine)


def test_channel_first_forward():
    torch.manual_seed(3)
    coarse, fine = _small(), _small()
    model = CuNeRFModel(coarse, fine, channel_dim=1)
    x = torch.rand(2, 3, 4, 5, 6)
    out = model(x)
    assert tuple(out.shape) == (2, 2, 4, 5, 6)
    torch.testing.assert_close(out, fine(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3))


@pytest.mark.parametrize("channel_dim, shape", [(-1, (4, 3)), (1, (1, 3, 2, 2, 2))], ids=["points", "channel_first"])
def test_without_fine_uses_coarse(channel_dim, shape):
    coarse = _small()
    model = CuNeRFModel(coarse, channel_dim=channel_dim)
    x = torch.rand(*shape)
    expected = coarse(torch.movedim(x, 1, -1)).movedim(-1, 1) if channel_dim == 1 else coarse(x)
    torch.testing.assert_close(model(x), expected)
    assert model.fine_field is coarse
    assert count(model) == count(coarse)


def test_type_check():
    with pytest.raises(TypeError):
        CuNeRFModel(lambda x: x)  # type: ignore[arg-type]
