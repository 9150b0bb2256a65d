"""Numbers of :mod:`cunerf_monai.rendering`: hand-computed isotropic (Eq. 10–11) and ray (Eq. 3–4) weights,
exclusive transmittance, normalisation, compositing and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from cunerf_monai import rendering

PI = math.pi
E = math.exp


def naive_isotropic(sigma: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Loop version of Eq. 11 with the exclusive transmittance and the last δ repeated."""
    b, n = r.shape
    out = torch.zeros_like(r)
    for row in range(b):
        acc = torch.zeros((), dtype=r.dtype)
        for i in range(n):
            delta = (r[row, i + 1] - r[row, i]) if i + 1 < n else (r[row, n - 1] - r[row, n - 2])
            shell = 4.0 * PI * r[row, i] ** 2
            out[row, i] = shell * (1.0 - torch.exp(-sigma[row, i] * delta)) * torch.exp(-acc)
            acc = acc + shell * sigma[row, i] * delta
    return out


@pytest.mark.parametrize(
    "case, r, expected",
    [
        ("docstring", [[0.1, 0.3, 0.6]], [[0.2, 0.3, 0.3]]),
        ("ties", [[0.5, 0.5, 0.5, 1.0]], [[0.0, 0.0, 0.5, 0.5]]),
        ("single", [[0.7]], [[1.0]]),
    ],
)
def test_deltas_values(case, r, expected):
    torch.testing.assert_close(rendering.deltas(torch.tensor(r)), torch.tensor(expected))


# (name, σ, r, expected unnormalised weights written as the arithmetic of Eq. 11)
ISOTROPIC_CASES = [
    (
        # r = (0.5, 1), σ = (1, 1): δ = (0.5, 0.5), shells 4π·0.25 = π and 4π,
        # w0 = π (1 − e^{−0.5}); w1 = 4π (1 − e^{−0.5}) · e^{−π·1·0.5}
        "two_samples",
        [1.0, 1.0],
        [0.5, 1.0],
        [PI * (1 - E(-0.5)), 4 * PI * (1 - E(-0.5)) * E(-PI * 0.5)],
    ),
    (
        # r = (0.2, 0.5, 1), σ = (1, 2, 0.5): δ = (0.3, 0.5, 0.5) (last repeated),
        # shells 4π r² = (0.16π, π, 4π), optical depths a = shell·σ·δ = (0.048π, π, π),
        # w_i = shell_i (1 − e^{−σ_i δ_i}) e^{−Σ_{j<i} a_j}
        "three_samples",
        [1.0, 2.0, 0.5],
        [0.2, 0.5, 1.0],
        [
            0.16 * PI * (1 - E(-0.3)),
            PI * (1 - E(-1.0)) * E(-0.048 * PI),
            4 * PI * (1 - E(-0.25)) * E(-0.048 * PI - PI),
        ],
    ),
    (
        # zero density: nothing is rendered
        "empty",
        [0.0, 0.0, 0.0],
        [0.1, 0.4, 0.9],
        [0.0, 0.0, 0.0],
    ),
    (
        # the centre sample has r = 0, so its shell (and weight) vanish whatever its density
        "centre_sample",
        [5.0, 1.0],
        [0.0, 0.5],
        [0.0, PI * (1 - E(-0.5))],
    ),
]


@pytest.mark.parametrize("case, sigma, r, expected", ISOTROPIC_CASES)
def test_isotropic_weights_hand_computed(case, sigma, r, expected):
    sigma_t, r_t = torch.tensor([sigma], dtype=torch.float64), torch.tensor([r], dtype=torch.float64)
    w = rendering.isotropic_weights(sigma_t, r_t, normalize=False)
    torch.testing.assert_close(w, torch.tensor([expected], dtype=torch.float64), atol=1e-12, rtol=1e-10)
    wn = rendering.isotropic_weights(sigma_t, r_t, normalize=True)
    n, eps = len(r), 1e-6
    manual = (torch.tensor(expected, dtype=torch.float64) + eps / n) / (sum(expected) + eps)
    torch.testing.assert_close(wn[0], manual, atol=1e-12, rtol=1e-10)
    assert float(wn.sum()) == pytest.approx(1.0, abs=0.5e-12)


def test_docstring_numbers():
    w = rendering.isotropic_weights(torch.tensor([[1.0, 1.0]]), torch.tensor([[0.5, 1.0]]), normalize=False)
    torch.testing.assert_close(w, torch.tensor([[1.2361, 1.0279]]), atol=1e-4, rtol=0)


def test_paper_sum_is_unbounded():
    # Eq. 11 as written: nothing bounds Σ w (here 1.94); this is why the default normalises
    w = rendering.isotropic_weights(
        torch.tensor([[1.0, 2.0, 0.5]], dtype=torch.float64),
        torch.tensor([[0.2, 0.5, 1.0]], dtype=torch.float64),
        normalize=False,
    )
    assert float(w.sum()) == pytest.approx(1.9414746461994201, abs=0.5e-10)


def test_exclusive_transmittance():
    r = torch.tensor([[0.2, 0.5, 1.0]], dtype=torch.float64)
    base = torch.tensor([[1.0, 2.0, 0.5]], dtype=torch.float64)
    w = rendering.isotropic_weights(base, r, normalize=False)
    # a sample does not shadow itself: the first weight ignores every density but its own alpha,
    # and a later density never changes earlier weights
    for i in range(3):
        changed = base.clone()
        changed[0, i] = 50.0
        w2 = rendering.isotropic_weights(changed, r, normalize=False)
        torch.testing.assert_close(w2[0, :i], w[0, :i], rtol=0, atol=0)
        # own weight: shell (1 − e^{−σδ}) T with the same T as before
        shell = 4 * PI * float(r[0, i]) ** 2
        delta = float(rendering.deltas(r)[0, i])
        trans = float(w[0, i]) / (shell * (1 - E(-float(base[0, i]) * delta)))
        assert float(w2[0, i]) == pytest.approx(shell * (1 - E(-50.0 * delta)) * trans, abs=0.5e-10)
        if i < 2:
            assert bool((w2[0, i + 1 :] < w[0, i + 1 :]).all())  # later samples are shadowed


def test_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    r = (torch.rand(6, 10, generator=g, dtype=torch.float64) * math.sqrt(3)).sort(-1).values
    sigma = torch.rand(6, 10, generator=g, dtype=torch.float64) * 3
    torch.testing.assert_close(rendering.isotropic_weights(sigma, r, normalize=False), naive_isotropic(sigma, r))


@pytest.mark.parametrize("case, n", [("n2", 2), ("n16", 16), ("n64", 64)])
def test_normalized_sums_to_one_and_uniform_when_empty(case, n):
    g = torch.Generator().manual_seed(n)
    r = (torch.rand(5, n, generator=g) * math.sqrt(3)).sort(-1).values
    sigma = torch.rand(5, n, generator=g) * 4
    w = rendering.isotropic_weights(sigma, r)
    torch.testing.assert_close(w.sum(-1), torch.ones(5))
    assert bool((w >= 0).all())
    empty = rendering.isotropic_weights(torch.zeros(5, n), r)
    torch.testing.assert_close(empty, torch.full((5, n), 1.0 / n))
    torch.testing.assert_close(rendering.uniform_weights(r), torch.full((5, n), 1.0 / n))


def test_normalize_weights():
    w = torch.tensor([[1.0, 3.0], [0.0, 0.0]], dtype=torch.float64)
    out = rendering.normalize_weights(w, eps=1e-6)
    torch.testing.assert_close(out[0], torch.tensor([(1 + 5e-7) / (4 + 1e-6), (3 + 5e-7) / (4 + 1e-6)]).double())
    torch.testing.assert_close(out[1], torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_ray_weights_hand_computed():
    # t = (0, 0.5, 1), σ = (1, 2, 4): δ = 0.5 each, optical depths σδ = (0.5, 1, 2)
    t = torch.tensor([[0.0, 0.5, 1.0]], dtype=torch.float64)
    sigma = torch.tensor([[1.0, 2.0, 4.0]], dtype=torch.float64)
    expected = [1 - E(-0.5), (1 - E(-1.0)) * E(-0.5), (1 - E(-2.0)) * E(-1.5)]
    w = rendering.ray_weights(sigma, t)
    torch.testing.assert_close(w[0], torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    # telescoping: Σ w = 1 − e^{−Σ σδ} = 1 − e^{−3.5}
    assert float(w.sum()) == pytest.approx(1 - E(-3.5), abs=0.5e-12)
    wn = rendering.ray_weights(sigma, t, normalize=True)
    assert float(wn.sum()) == pytest.approx(1.0, abs=0.5e-12)


def test_sum_at_most_one():
    g = torch.Generator().manual_seed(1)
    t = (torch.rand(50, 16, generator=g, dtype=torch.float64) * 2 - 1).sort(-1).values
    sigma = torch.rand(50, 16, generator=g, dtype=torch.float64) * torch.logspace(-2, 3, 50).unsqueeze(-1).double()
    w = rendering.ray_weights(sigma, t)
    assert bool((w >= 0).all())
    assert bool((w.sum(-1) <= 1 + 1e-12).all())
    depth = (sigma * rendering.deltas(t)).sum(-1)
    torch.testing.assert_close(w.sum(-1), 1 - torch.exp(-depth))


def test_composite_values():
    w = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    c = torch.tensor([[1.0, 0.0, 0.4], [0.7, 0.1, 0.9]])
    torch.testing.assert_close(rendering.composite(w, c), torch.tensor([0.2 + 0.0 + 0.2, 0.7]))


def test_convex_combination_bounded():
    g = torch.Generator().manual_seed(2)
    r = (torch.rand(100, 12, generator=g) * math.sqrt(3)).sort(-1).values
    sigma = torch.rand(100, 12, generator=g) * 100
    c = torch.rand(100, 12, generator=g)
    out = rendering.composite(rendering.isotropic_weights(sigma, r), c)
    assert bool((out >= c.min(-1).values - 1e-6).all() and (out <= c.max(-1).values + 1e-6).all())


@pytest.mark.parametrize("case, kind, normalize", [("isotropic_norm", "iso", True), ("isotropic_raw", "iso", False), ("ray", "ray", False)])
def test_gradcheck(case, kind, normalize):
    g = torch.Generator().manual_seed(3)
    r = (torch.rand(3, 5, generator=g, dtype=torch.float64) * 1.5 + 0.05).sort(-1).values
    sigma = (torch.rand(3, 5, generator=g, dtype=torch.float64) + 0.1).requires_grad_()
    c = torch.rand(3, 5, generator=g, dtype=torch.float64).requires_grad_()

    def render(s, v):
        if kind == "iso":
            w = rendering.isotropic_weights(s, r, normalize=normalize)
        else:
            w = rendering.ray_weights(s, r, normalize=normalize)
        return rendering.composite(w, v)

    assert torch.autograd.gradcheck(render, (sigma, c))


def test_gradients_reach_sigma_and_c():
    r = torch.tensor([[0.2, 0.5, 1.0]])
    sigma = torch.tensor([[1.0, 2.0, 0.5]], requires_grad=True)
    c = torch.tensor([[0.1, 0.9, 0.4]], requires_grad=True)
    w = rendering.isotropic_weights(sigma, r)
    rendering.composite(w, c).sum().backward()
    torch.testing.assert_close(c.grad, w.detach())  # ∂Ĉ/∂c_i = w_i
    assert bool((sigma.grad.abs() > 1e-4).all())
