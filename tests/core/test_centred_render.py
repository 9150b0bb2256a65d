"""The test-time render is centred on its target: a linear intensity field renders to its value at the centre.

The paper configuration's renderer (``train_paper.json``: isotropic weights, 8 coarse + 8 fine samples at test time)
and the ablation's other rows (cube samples composited in order of distance, rays) are run on a linear field with a
constant density over six decades. A render whose sample set or weights are not symmetric about the target
reads the field at a shifted point; the shift, in units of the cube's half-extent, is
``(Ĉ − c(x0)) / (‖∇c‖ h)``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from torch import nn

CONFIGS = Path(__file__).resolve().parents[2] / "bundle" / "configs"
DENSITIES = [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0]
HALF = 0.05  # half-extent of the cube in field units
GRADIENTS = {"x": (2.0, 0.0, 0.0), "y": (0.0, 2.0, 0.0), "z": (0.0, 0.0, 2.0), "oblique": (1.2, -0.8, 1.5)}


class LinearDensityField(nn.Module):
    """Raw outputs whose activations are ``sigmoid → 0.5 + b·x`` and ``relu → σ`` (a constant density)."""

    def __init__(self, gradient, density: float) -> None:
        super().__init__()
        self.register_buffer("b", torch.tensor(gradient, dtype=torch.float32))
        self.density = float(density)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 + x @ self.b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.value(x).clamp(1e-6, 1 - 1e-6)
        return torch.stack([torch.logit(v), torch.full_like(v, self.density)], dim=-1)


def paper_inferer(**changes):
    """The inferer of ``train.json`` + ``train_paper.json`` (its test-time counts: 8 coarse + 8 fine)."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "train_paper.json")])
    for key, value in changes.items():
        parser[f"inferer#{key}"] = value
    return parser.get_parsed_content("inferer")


def shifts(inferer, field, fine: bool) -> torch.Tensor:
    """Shift of every target's deterministic render from its centre value, in half-extents ``(B,)``."""
    centres = torch.rand(64, 3, generator=torch.Generator().manual_seed(0)) * 0.2 - 0.1
    with torch.no_grad():
        out = inferer.render_targets(centres, field, torch.full((3,), HALF), inferer.num_coarse_eval,
                                     inferer.num_fine_eval if fine else 0, deterministic=True)
    value = out["fine"] if fine else out["coarse"]
    return (value - field.value(centres)) / (float(field.b.norm()) * HALF)


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("gradient", sorted(GRADIENTS))
@pytest.mark.parametrize("fine", [False, True], ids=["coarse", "coarse+fine"])
def test_paper_render_is_centred(density, gradient, fine):
    inferer = paper_inferer()
    assert (inferer.num_coarse_eval, inferer.num_fine_eval, inferer.weighting) == (8, 8, "isotropic")
    shift = shifts(inferer, LinearDensityField(GRADIENTS[gradient], density), fine)
    assert float(shift.abs().max()) < 0.02


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("variant", [dict(weighting="volume"), dict(sampling="ray", weighting="volume"),
                                     dict(norm="linf")], ids=["cube_volume", "ray", "linf"])
@pytest.mark.parametrize("fine", [False, True], ids=["coarse", "coarse+fine"])
def test_other_renders_are_centred(density, variant, fine):
    """The ablation's cube row (alpha compositing in order of distance), its ray row and the ℓ∞ distance."""
    inferer = paper_inferer(**variant)
    shift = shifts(inferer, LinearDensityField(GRADIENTS["oblique"], density), fine)
    assert float(shift.abs().max()) < 0.02


def test_render_is_centred_at_every_count():
    """Odd and even test-time counts (an odd set adds the centre, an odd fine pass a sample at the centre)."""
    field = LinearDensityField(GRADIENTS["oblique"], 10.0)
    for n_c, n_f in [(1, 1), (3, 5), (7, 2), (16, 32), (64, 128)]:
        inferer = paper_inferer(num_coarse_eval=n_c, num_fine_eval=n_f)
        for fine in (False, True):
            assert float(shifts(inferer, field, fine).abs().max()) < 0.02, (n_c, n_f, fine)
