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


@pytest.mark.parametrize("input_grad, bias", [(True, True), (False, True), (True, False)])
def test_linear_relu_matches_plain_values_and_gradients(input_grad, bias):
    torch.manual_seed(0)
    layer = LinearReLU(7, 16, bias=bias)
    x = torch.randn(3, 50, 7, requires_grad=input_grad)
    assert fused_linear_relu_available(x, layer.weight) == torch.backends.mkldnn.is_available()
    y = layer(x)
    assert y.shape == (3, 50, 16) and (y >= 0).all() and (y == 0).any()  # some units are cut by the ReLU
    g = torch.randn_like(y)
    wrt = [p for p in (layer.weight, layer.bias) if p is not None] + ([x] if input_grad else [])
    grads = torch.autograd.grad(y, wrt, g)
    ref = _plain(layer, x)
    ref_grads = torch.autograd.grad(ref, wrt, g)
    assert torch.allclose(y, ref, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_linear_relu_plain_path_for_float64_and_tracing():
    layer = LinearReLU(3, 4).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    assert not fused_linear_relu_available(x, layer.weight)
    assert torch.equal(layer(x), _plain(layer, x))
    traced = torch.jit.trace(LinearReLU(3, 4), torch.randn(2, 3))
    assert "mkldnn" not in str(traced.graph)  # the traced graph holds the plain ops (portable, any device)
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


_MALLINFO = """
import ctypes, sys, torch
from cunerf_monai.allocator import retain_freed_memory
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
applied = retain_freed_memory("cpu") if sys.argv[1] == "on" else False
x = torch.ones(64 << 20)  # 256 MB
info = libc.mallinfo2()
print(int(applied), info.hblkhd >> 20, info.arena >> 20)
"""


def _is_glibc() -> bool:
    import ctypes

    return sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "gnu_get_libc_version")


@pytest.mark.skipif(not _is_glibc(), reason="the setting is glibc's (mallopt)")
def test_retain_freed_memory_serves_large_blocks_from_the_heap():
    """In a fresh process: without the setting glibc maps a 256 MB tensor with mmap; with it, the block comes from
    the heap (where a freed block stays for the next step)."""
    import subprocess

    def run(mode: str) -> list[int]:
        out = subprocess.run([sys.executable, "-c", _MALLINFO, mode], check=True, capture_output=True, text=True)
        return [int(v) for v in out.stdout.split()]

    applied, mapped, heap = run("on")
    assert applied == 1 and mapped < 64 and heap >= 256
    applied, mapped, heap = run("off")
    assert applied == 0 and mapped >= 256


def test_retain_freed_memory_is_cpu_only_and_idempotent():
    before = allocator._state["applied"]
    assert retain_freed_memory("cpu", enabled=False) is before  # disabled: reports, changes nothing
    assert retain_freed_memory("cuda:0") is before  # a GPU run does not change it
    first = retain_freed_memory("cpu")
    assert first is _is_glibc()
    assert retain_freed_memory("cpu") is first  # applied once per process
