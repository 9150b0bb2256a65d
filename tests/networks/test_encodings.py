"""Numbers of :mod:`cunerf_monai.networks.encodings`: positional encoding values and width."""

from __future__ import annotations

import math

import pytest
import torch

from cunerf_monai.networks import PositionalEncoding

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "num_freq, include_input, dim, width",
    [(10, True, 3, 63), (10, False, 3, 60), (11, True, 3, 69), (0, True, 3, 3), (4, True, 2, 18)],
    ids=["paper", "no_input", "reference_code", "zero_freq", "two_d"],
)
def test_width(num_freq, include_input, dim, width):
    enc = PositionalEncoding(num_freq, include_input, dim)
    assert enc.out_features == width
    assert tuple(enc(torch.zeros(2, 5, dim)).shape) == (2, 5, width)


def test_values_at_half_pi():
    enc = PositionalEncoding(num_frequencies=3)
    x = torch.tensor([[math.pi / 2, 0.0, -math.pi / 4]], dtype=torch.float64)
    out = enc(x)[0]
    assert out.shape[0] == 3 * (1 + 2 * 3)
    torch.testing.assert_close(out[:3], x[0])  # raw input first
    # then per coordinate d: sin(2^k x_d) for k = 0..L−1, then cos(2^k x_d)
    per_coord = out[3:].reshape(3, 6)
    s2 = math.sqrt(0.5)
    expected = torch.tensor(
        [
            # x = π/2: sin(π/2), sin(π), sin(2π) = 1, 0, 0; cos(π/2), cos(π), cos(2π) = 0, −1, 1
            [1.0, 0.0, 0.0, 0.0, -1.0, 1.0],
            # x = 0: sin = 0, cos = 1
            [0.0, 0.0, 0.0, 1.0, 1.0, 1.0],
            # x = −π/4: sin(−π/4), sin(−π/2), sin(−π) = −√½, −1, 0; cos: √½, 0, −1
            [-s2, -1.0, 0.0, s2, 0.0, -1.0],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(per_coord, expected, atol=1e-12, rtol=0)


def test_frequencies_are_octaves():
    enc = PositionalEncoding(num_frequencies=10)
    torch.testing.assert_close(enc.freqs, 2.0 ** torch.arange(10.0))
    x = torch.tensor([[0.3, -0.7, 0.01]])
    out = enc(x)
    assert float(out[0, 3 + 9]) == pytest.approx(math.sin(512 * 0.3), abs=1e-4)  # sin(2^9 x_0)
    assert float(out[0, 3 + 20 + 10]) == pytest.approx(math.cos(-0.7), abs=1e-6)  # cos(2^0 x_1)


@pytest.mark.parametrize(
    "num_freq, include_input, dim", [(-1, True, 3), (0, False, 3), (4, True, 0)], ids=["negative", "empty", "dim0"]
)
def test_bad_arguments(num_freq, include_input, dim):
    with pytest.raises(ValueError):
        PositionalEncoding(num_freq, include_input, dim)
