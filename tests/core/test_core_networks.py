"""Numbers of :mod:`cunerf_monai.networks`: positional encoding values and width, the paper-sized MLP's
parameter count, channel layouts, and the coarse/fine model."""

from __future__ import annotations

import math
import unittest

import torch
from parameterized import parameterized

from cunerf_monai.networks import CuNeRFModel, PositionalEncoding, PositionalMLPField

ENCODING_WIDTH_CASES = [
    ("paper", 10, True, 3, 63),
    ("no_input", 10, False, 3, 60),
    ("reference_code", 11, True, 3, 69),
    ("zero_freq", 0, True, 3, 3),
    ("two_d", 4, True, 2, 18),
]


_THREADS = torch.get_num_threads()


def setUpModule():  # noqa: N802
    # tiny matrices: one thread avoids OpenMP hand-off costs (≈ 10 ms per op on a busy 2-core machine)
    torch.set_num_threads(1)


def tearDownModule():  # noqa: N802
    torch.set_num_threads(_THREADS)


class TestPositionalEncoding(unittest.TestCase):
    @parameterized.expand(ENCODING_WIDTH_CASES)
    def test_width(self, _, num_freq, include_input, dim, width):
        enc = PositionalEncoding(num_freq, include_input, dim)
        self.assertEqual(enc.out_features, width)
        self.assertEqual(tuple(enc(torch.zeros(2, 5, dim)).shape), (2, 5, width))

    def test_values_at_half_pi(self):
        enc = PositionalEncoding(num_frequencies=3)
        x = torch.tensor([[math.pi / 2, 0.0, -math.pi / 4]], dtype=torch.float64)
        out = enc(x)[0]
        self.assertEqual(out.shape[0], 3 * (1 + 2 * 3))
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

    def test_frequencies_are_octaves(self):
        enc = PositionalEncoding(num_frequencies=10)
        torch.testing.assert_close(enc.freqs, 2.0 ** torch.arange(10.0))
        x = torch.tensor([[0.3, -0.7, 0.01]])
        out = enc(x)
        self.assertAlmostEqual(float(out[0, 3 + 9]), math.sin(512 * 0.3), places=4)  # sin(2^9 x_0)
        self.assertAlmostEqual(float(out[0, 3 + 20 + 10]), math.cos(-0.7), places=6)  # cos(2^0 x_1)

    @parameterized.expand([("negative", -1, True, 3), ("empty", 0, False, 3), ("dim0", 4, True, 0)])
    def test_bad_arguments(self, _, num_freq, include_input, dim):
        with self.assertRaises(ValueError):
            PositionalEncoding(num_freq, include_input, dim)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class TestPositionalMLPField(unittest.TestCase):
    def test_paper_parameter_count(self):
        net = PositionalMLPField()
        # γ width 63; layer 1: 63·256 + 256; layers 2–9: 256·256 + 256 each; the input skips before layers
        # 5 and 9 add 63·256 weights each; head 256·2 + 2
        expected = (63 * 256 + 256) + 8 * (256 * 256 + 256) + 2 * 63 * 256 + (256 * 2 + 2)
        self.assertEqual(expected, 575_490)
        self.assertEqual(count(net), expected)
        self.assertTrue(500_000 <= count(net) <= 600_000)  # the paper's ≈ 0.58 M
        self.assertEqual(len(net.layers), 9)
        self.assertEqual([layer.in_features for layer in net.layers], [63, 256, 256, 256, 319, 256, 256, 256, 319])

    @parameterized.expand([("small", 4, 32, 3, (1,)), ("no_skip", 2, 16, 2, ())])
    def test_small_count(self, _, num_freq, width, layers, skips):
        net = PositionalMLPField(num_freq, width, layers, skips)
        enc = 3 * (1 + 2 * num_freq)
        expected = (enc * width + width) + (layers - 1) * (width * width + width) + len(skips) * enc * width
        self.assertEqual(count(net), expected + width * 2 + 2)

    def test_channel_dim_layouts_agree(self):
        torch.manual_seed(0)
        points_net = PositionalMLPField(num_frequencies=4, hidden_features=16, num_layers=3, skips=(2,))
        grid_net = PositionalMLPField(num_frequencies=4, hidden_features=16, num_layers=3, skips=(2,), channel_dim=1)
        grid_net.load_state_dict(points_net.state_dict())
        x = torch.rand(2, 3, 4, 5, 6) * 2 - 1
        out = grid_net(x)
        self.assertEqual(tuple(out.shape), (2, 2, 4, 5, 6))
        expected = points_net(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
        torch.testing.assert_close(out, expected)

    def test_skip_uses_encoded_input(self):
        # the skip concatenates γ(x): a hand-rolled forward reproduces the output
        torch.manual_seed(1)
        net = PositionalMLPField(num_frequencies=2, hidden_features=8, num_layers=3, skips=(2,))
        x = torch.rand(5, 3)
        enc = net.encoding(x)
        h = torch.relu(net.layers[0](enc))
        h = torch.relu(net.layers[1](h))
        h = torch.relu(net.layers[2](torch.cat([h, enc], -1)))
        torch.testing.assert_close(net(x), net.head(h))

    @parameterized.expand(
        [
            ("skip_too_large", dict(num_layers=3, skips=(3,))),
            ("skip_zero", dict(num_layers=3, skips=(0,))),
            ("width", dict(hidden_features=0)),
            ("channel_dim", dict(channel_dim=0)),
        ]
    )
    def test_bad_arguments(self, _, kwargs):
        with self.assertRaises(ValueError):
            PositionalMLPField(**kwargs)


class TestCuNeRFModel(unittest.TestCase):
    def test_forward_uses_fine_field(self):
        torch.manual_seed(2)
        coarse = PositionalMLPField(num_frequencies=2, hidden_features=8, num_layers=2, skips=())
        fine = PositionalMLPField(num_frequencies=2, hidden_features=8, num_layers=2, skips=())
        model = CuNeRFModel(coarse, fine, channel_dim=-1)
        x = torch.rand(7, 3)
        torch.testing.assert_close(model(x), fine(x))
        self.assertFalse(torch.allclose(model(x), coarse(x)))
        self.assertIs(model.fine_field, fine)
        self.assertEqual(count(model), count(coarse) + count(fine))

    def test_channel_first_forward(self):
        torch.manual_seed(3)
        coarse = PositionalMLPField(num_frequencies=2, hidden_features=8, num_layers=2, skips=())
        fine = PositionalMLPField(num_frequencies=2, hidden_features=8, num_layers=2, skips=())
        model = CuNeRFModel(coarse, fine, channel_dim=1)
        x = torch.rand(2, 3, 4, 5, 6)
        out = model(x)
        self.assertEqual(tuple(out.shape), (2, 2, 4, 5, 6))
        torch.testing.assert_close(out, fine(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3))

    @parameterized.expand([("points", -1, (4, 3)), ("channel_first", 1, (1, 3, 2, 2, 2))])
    def test_without_fine_uses_coarse(self, _, channel_dim, shape):
        coarse = PositionalMLPField(num_frequencies=2, hidden_features=8, num_layers=2, skips=())
        model = CuNeRFModel(coarse, channel_dim=channel_dim)
        x = torch.rand(*shape)
        expected = coarse(torch.movedim(x, 1, -1)).movedim(-1, 1) if channel_dim == 1 else coarse(x)
        torch.testing.assert_close(model(x), expected)
        self.assertIs(model.fine_field, coarse)
        self.assertEqual(count(model), count(coarse))

    def test_type_check(self):
        with self.assertRaises(TypeError):
            CuNeRFModel(lambda x: x)  # type: ignore[arg-type]


if __name__ == "__main__":
    unittest.main()
