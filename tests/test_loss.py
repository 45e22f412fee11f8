"""Tests for entitwist.models.loss: weighted CE + 0.1 x per-sample Dice."""

from __future__ import annotations

import math

import pytest
import torch

from entitwist.errors import InputError
from entitwist.models.loss import dice_loss, referring_loss


def _hand_loss(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Plain-Python twin: weighted-mean CE plus 0.1 x mean over samples of (1 - Dice)."""
    w = (0.9, 1.1)
    b, _, h, wd = logits.shape
    num = den = 0.0
    dice_terms = []
    for i in range(b):
        inter = psum = tsum = 0.0
        for y in range(h):
            for x in range(wd):
                l0, l1 = float(logits[i, 0, y, x]), float(logits[i, 1, y, x])
                t = int(target[i, y, x])
                m = max(l0, l1)
                lse = m + math.log(math.exp(l0 - m) + math.exp(l1 - m))
                num += w[t] * (lse - (l1 if t else l0))
                den += w[t]
                p = math.exp(l1 - lse)
                inter += p * t
                psum += p
                tsum += t
        dice_terms.append(1 - (2 * inter + 1) / (psum + tsum + 1))
    return num / den + 0.1 * sum(dice_terms) / b


def test_matches_hand_computation() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 4, 5, dtype=torch.float64)
    target = (torch.rand(3, 4, 5) > 0.6).long()
    target[2] = 0  # an empty target: Dice is (0 + 1) / (sum p + 1)
    got = referring_loss(logits, target)
    assert got.shape == ()
    assert got.item() == pytest.approx(_hand_loss(logits, target), rel=1e-10)


def test_dice_is_averaged_per_sample_not_pooled() -> None:
    p = torch.zeros(2, 2, 2)
    t = torch.zeros(2, 2, 2)
    p[0] = 1.0
    t[0] = 1.0  # sample 0 perfect: dice = 1
    t[1, 0, 0] = 1.0  # sample 1 misses its single pixel: dice = 1 / 2
    assert dice_loss(p, t).item() == pytest.approx((0.0 + 0.5) / 2)


def test_perfect_confident_prediction_has_near_zero_loss_and_gradients_flow() -> None:
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:5, 2:5] = 1
    logits = torch.stack([(1 - target) * 20.0 - 10, target * 20.0 - 10], dim=1).float()
    assert referring_loss(logits, target).item() < 1e-3
    x = torch.zeros(2, 2, 8, 8, requires_grad=True)
    referring_loss(x, target).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bad_shapes_raise() -> None:
    with pytest.raises(InputError, match="logits"):
        referring_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(InputError, match="target"):
        referring_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 8, 8, dtype=torch.long))
