"""Numbers of :mod:`cunerf_monai.losses`: the plain rendering loss (Eq. 5) and the adaptive loss L_A (Eq. 13)
against hand computations, and the detached λ."""

from __future__ import annotations

import math

import pytest
import torch

from cunerf_monai.losses import AdaptiveRenderingLoss, RenderingLoss

# (name, coarse, fine, target, expected plain loss, expected adaptive loss), arithmetic written out
LOSS_CASES = [
    (
        # docstring: g = 1, Ĉ_c = 0, Ĉ_f = 0.75: λ = √0.25 = 0.5; L_A = 0.5·1 + 0.0625
        "docstring",
        [0.0],
        [0.75],
        [1.0],
        1.0 + 0.0625,
        0.5 * 1.0 + 0.0625,
    ),
    (
        # per target: (g − c)², (g − f)², λ = √|f − g|
        #   t0: g = 0.5, c = 0.1, f = 0.46: 0.16, 0.0016, λ = 0.2
        #   t1: g = 0.2, c = 0.2, f = 0.29: 0.0,  0.0081, λ = 0.3
        #   t2: g = 0.9, c = 0.0, f = 0.9:  0.81, 0.0,    λ = 0
        "three_targets",
        [0.1, 0.2, 0.0],
        [0.46, 0.29, 0.9],
        [0.5, 0.2, 0.9],
        (0.16 + 0.0016 + 0.0 + 0.0081 + 0.81 + 0.0) / 3,
        (0.2 * 0.16 + 0.0016 + 0.3 * 0.0 + 0.0081 + 0.0 * 0.81 + 0.0) / 3,
    ),
    (
        # λ is the square root of the absolute error (not of the squared error): |f − g| = 0.64 → λ = 0.8
        "large_fine_error",
        [1.0],
        [0.0],
        [0.64],
        (0.36**2 + 0.64**2),
        (0.8 * 0.36**2 + 0.64**2),
    ),
]


def pred_of(coarse, fine):
    return {"coarse": torch.tensor(coarse, dtype=torch.float64), "fine": torch.tensor(fine, dtype=torch.float64)}


@pytest.mark.parametrize("case, coarse, fine, target, plain, adaptive", LOSS_CASES)
def test_rendering_loss(case, coarse, fine, target, plain, adaptive):
    out = RenderingLoss()(pred_of(coarse, fine), torch.tensor(target, dtype=torch.float64))
    assert float(out) == pytest.approx(plain, abs=0.5e-12)


@pytest.mark.parametrize("case, coarse, fine, target, plain, adaptive", LOSS_CASES)
def test_adaptive_loss(case, coarse, fine, target, plain, adaptive):
    out = AdaptiveRenderingLoss()(pred_of(coarse, fine), torch.tensor(target, dtype=torch.float64))
    assert float(out) == pytest.approx(adaptive, abs=0.5e-12)


@pytest.mark.parametrize("case, coarse, fine, target, plain, adaptive", LOSS_CASES)
def test_decollated_list_and_2d_target(case, coarse, fine, target, plain, adaptive):
    # MONAI engines may decollate: a list of per-target dicts and a (B, 1) target
    f64 = torch.float64
    preds = [
        {"coarse": torch.tensor(c, dtype=f64), "fine": torch.tensor(f, dtype=f64)} for c, f in zip(coarse, fine)
    ]
    tgt = torch.tensor(target, dtype=torch.float64).unsqueeze(-1)
    assert float(AdaptiveRenderingLoss()(preds, tgt)) == pytest.approx(adaptive, abs=0.5e-12)
    assert float(RenderingLoss()(preds, tgt)) == pytest.approx(plain, abs=0.5e-12)


def test_without_fine():
    pred = {"coarse": torch.tensor([0.0, 0.5])}
    target = torch.tensor([1.0, 0.25])
    expected = (1.0 + 0.0625) / 2
    assert float(RenderingLoss()(pred, target)) == pytest.approx(expected, abs=0.5e-7)
    assert float(AdaptiveRenderingLoss()(pred, target)) == pytest.approx(expected, abs=0.5e-7)


def test_lambda_detached():
    g = torch.tensor([0.5, 0.2, 0.9], dtype=torch.float64)
    coarse = torch.tensor([0.1, 0.6, 0.0], dtype=torch.float64, requires_grad=True)
    fine = torch.tensor([0.46, 0.29, 0.7], dtype=torch.float64, requires_grad=True)
    AdaptiveRenderingLoss()({"coarse": coarse, "fine": fine}, g).backward()
    n = 3
    lam = (fine.detach() - g).abs().sqrt()
    # ∂L/∂f only through the fine term: −2 (g − f) / B
    # (a live λ would add ½ |f − g|^{−1/2} sign(f − g) (g − c)² / B)
    torch.testing.assert_close(fine.grad, -2.0 * (g - fine.detach()) / n)
    # ∂L/∂c = −2 λ (g − c) / B
    torch.testing.assert_close(coarse.grad, -2.0 * lam * (g - coarse.detach()) / n)
    # t0 in numbers: λ = √0.04 = 0.2, ∂L/∂c0 = −2·0.2·0.4/3
    assert float(coarse.grad[0]) == pytest.approx(-2 * 0.2 * 0.4 / 3, abs=0.5e-12)


def test_lambda_not_differentiated_via_autograd_graph():
    # the gradient of the coarse term alone w.r.t. the fine prediction is zero
    g = torch.tensor([0.3, 0.8])
    fine = torch.tensor([0.1, 0.4], requires_grad=True)
    coarse_zero_fine_term = {"coarse": torch.tensor([0.9, 0.0]), "fine": fine}
    loss = AdaptiveRenderingLoss()(coarse_zero_fine_term, g)
    fine_term = ((g - fine) ** 2).mean()
    (grad_total,) = torch.autograd.grad(loss, fine, retain_graph=True)
    (grad_fine_term,) = torch.autograd.grad(fine_term, fine)
    torch.testing.assert_close(grad_total, grad_fine_term)


def test_rendering_loss_gradient():
    g = torch.tensor([0.5, 0.2])
    coarse = torch.tensor([0.1, 0.6], requires_grad=True)
    fine = torch.tensor([0.4, 0.3], requires_grad=True)
    RenderingLoss()({"coarse": coarse, "fine": fine}, g).backward()
    torch.testing.assert_close(coarse.grad, -(g - coarse.detach()))  # −2 (g − c) / 2
    torch.testing.assert_close(fine.grad, -(g - fine.detach()))


def test_adaptive_below_plain_when_fine_close():
    # |f − g| < 1 ⇒ λ < 1: the adaptive loss never exceeds the plain one on [0, 1] intensities
    gen = torch.Generator().manual_seed(0)
    g, c, f = (torch.rand(256, generator=gen) for _ in range(3))
    pred = {"coarse": c, "fine": f}
    assert float(AdaptiveRenderingLoss()(pred, g)) <= float(RenderingLoss()(pred, g)) + 1e-7
    assert math.isfinite(float(AdaptiveRenderingLoss()(pred, g)))
