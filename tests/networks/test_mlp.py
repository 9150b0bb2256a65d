"""Numbers of :mod:`cunerf_monai.networks.mlp`: the paper-sized MLP's parameter count, channel layouts, skips."""

from __future__ import annotations

import pytest
import torch

from cunerf_monai.networks import PositionalMLPField

pytestmark = pytest.mark.usefixtures("one_thread")


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_parameter_count():
    net = PositionalMLPField()
    # γ width 63; layer 1: 63·256 + 256; layers 2–9: 256·256 + 256 each; the input skips before layers
    # 5 and 9 add 63·256 weights each; head 256·2 + 2
    expected = (63 * 256 + 256) + 8 * (256 * 256 + 256) + 2 * 63 * 256 + (256 * 2 + 2)
    assert expected == 575_490
    assert count(net) == expected
    assert 500_000 <= count(net) <= 600_000  # the paper's ≈ 0.58 M
    assert len(net.layers) == 9
    assert [layer.in_features for layer in net.layers] == [63, 256, 256, 256, 319, 256, 256, 256, 319]


@pytest.mark.parametrize("num_freq, width, layers, skips", [(4, 32, 3, (1,)), (2, 16, 2, ())], ids=["small", "no_skip"])
def test_small_count(num_freq, width, layers, skips):
    net = PositionalMLPField(num_freq, width, layers, skips)
    enc = 3 * (1 + 2 * num_freq)
    expected = (enc * width + width) + (layers - 1) * (width * width + width) + len(skips) * enc * width
    assert count(net) == expected + width * 2 + 2


def test_channel_dim_layouts_agree():
    torch.manual_seed(0)
    points_net = PositionalMLPField(num_frequencies=4, hidden_features=16, num_layers=3, skips=(2,))
    grid_net = PositionalMLPField(num_frequencies=4, hidden_features=16, num_layers=3, skips=(2,), channel_dim=1)
    grid_net.load_state_dict(points_net.state_dict())
    x = torch.rand(2, 3, 4, 5, 6) * 2 - 1
    out = grid_net(x)
    assert tuple(out.shape) == (2, 2, 4, 5, 6)
    expected = points_net(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
    torch.testing.assert_close(out, expected)


def test_skip_uses_encoded_input():
    # the skip concatenates γ(x): a hand-rolled forward reproduces the output
    torch.manual_seed(1)
    net = PositionalMLPField(num_frequencies=2, hidden_features=8, num_layers=3, skips=(2,))
    x = torch.rand(5, 3)
    enc = net.encoding(x)
    h = torch.relu(net.layers[0](enc))
    h = torch.relu(net.layers[1](h))
    h = torch.relu(net.layers[2](torch.cat([h, enc], -1)))
    torch.testing.assert_close(net(x), net.head(h))


@pytest.mark.parametrize(
    "kwargs",
    [dict(num_layers=3, skips=(3,)), dict(num_layers=3, skips=(0,)), dict(hidden_features=0), dict(channel_dim=0)],
    ids=["skip_too_large", "skip_zero", "width", "channel_dim"],
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        PositionalMLPField(**kwargs)
