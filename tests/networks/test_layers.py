"""Tests of the fused linear + ReLU layer (against the plain path) and of the allocator setting."""

import sys

import pytest
import torch
import torch.nn.functional as F

from cunerf_monai import allocator
from cunerf_monai.allocator import retain_freed_memory
from cunerf_monai.networks import LinearReLU, PositionalMLPField
from cunerf_monai.networks.layers import fused_linear_relu_available


def _plain(layer, x):
    return torch.relu(F.linear(x, layer.weight, layer.bias))


@pytest.mark.parametrize("input_grad", [True, False])
def test_linear_relu_matches_plain_values_and_gradients(input_grad):
    torch.manual_seed(0)
    layer = LinearReLU(7, 16)
    x = torch.randn(3, 50, 7, requires_grad=input_grad)
    assert fused_linear_relu_available(x, layer.weight) == torch.backends.mkldnn.is_available()
    y = layer(x)
    assert y.shape == (3, 50, 16) and (y >= 0).all() and (y == 0).any()  # some units are cut by the ReLU
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [layer.weight, layer.bias] + ([x] if input_grad else []), g)
    ref = _plain(layer, x)
    ref_grads = torch.autograd.grad(ref, [layer.weight, layer.bias] + ([x] if input_grad else []), g)
    assert torch.allclose(y, ref, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_linear_relu_plain_path_for_float64_and_tracing():
    layer = LinearReLU(3, 4).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    assert not fused_linear_relu_available(x, layer.weight)
    assert torch.equal(layer(x), _plain(layer, x))
    traced = torch.jit.trace(LinearReLU(3, 4), torch.randn(2, 3))
    x32 = torch.randn(6, 3)
    assert torch.allclose(traced(x32), _plain(traced, x32), atol=1e-6)


def test_mlp_field_keeps_linear_state_dict_and_trains():
    field = PositionalMLPField(num_frequencies=2, hidden_features=16, num_layers=3, skips=(2,))
    keys = set(field.state_dict())
    assert {"layers.0.weight", "layers.0.bias", "layers.2.weight", "head.weight"} <= keys
    assert field.layers[2].weight.shape == (16, 16 + 3 * (1 + 2 * 2))  # the skip re-enters the encoding
    opt = torch.optim.Adam(field.parameters(), lr=1e-2)
    pts = torch.rand(256, 3) * 2 - 1
    target = torch.sin(3 * pts[:, :1])
    losses = []
    for _ in range(60):
        loss = (field(pts)[:, :1] - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_retain_freed_memory_is_cpu_only_and_idempotent():
    before = allocator._state["applied"]
    assert retain_freed_memory("cpu", enabled=False) is before  # disabled: reports, changes nothing
    first = retain_freed_memory("cpu")
    assert first is sys.platform.startswith("linux")  # glibc's mallopt on Linux
    assert retain_freed_memory("cpu") == first  # applied once per process
    assert retain_freed_memory("cuda:0") == first  # a GPU run does not change it
    x = torch.ones((64 << 20) // 4)  # a 64 MB tensor is still allocated and freed normally
    assert float(x.sum()) == x.numel()
