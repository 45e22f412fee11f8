"""Training loss: weighted cross-entropy + 0.1 x Dice (DESIGN.md section 3).

``referring_loss(logits, target) = CE(logits, target; class weights [0.9, 1.1])
+ 0.1 * mean_b (1 - Dice_b)``, with Dice_b on the foreground probability of sample b:
``Dice_b = (2 sum p t + eps) / (sum p + sum t + eps)``. The Dice term is averaged per sample
(not pooled over the batch), so a small target counts as much as a large one. The CE is
PyTorch's weighted mean (sum of weighted losses / sum of weights), as in LAVT.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from entitwist.errors import InputError

CLASS_WEIGHTS = (0.9, 1.1)
DICE_WEIGHT = 0.1
DICE_EPS = 1.0


def dice_loss(probability: Tensor, target: Tensor, eps: float = DICE_EPS) -> Tensor:
    """Mean over samples of 1 - soft Dice.

    Args:
        probability: (B, H, W) foreground probability.
        target: (B, H, W) 0/1.
    """
    p = probability.flatten(1)  # (B, HW)
    t = target.flatten(1).to(p.dtype)  # (B, HW)
    inter = (p * t).sum(1)
    dice = (2 * inter + eps) / (p.sum(1) + t.sum(1) + eps)  # (B,)
    return (1 - dice).mean()


def referring_loss(
    logits: Tensor,
    target: Tensor,
    class_weights: tuple[float, float] = CLASS_WEIGHTS,
    dice_weight: float = DICE_WEIGHT,
) -> Tensor:
    """CE with class weights + ``dice_weight`` x per-sample Dice.

    Args:
        logits: (B, 2, H, W) raw scores.
        target: (B, H, W) long, 0 = background, 1 = referred object.

    Returns:
        scalar loss.
    """
    if logits.dim() != 4 or logits.shape[1] != 2:
        raise InputError(f"logits must be (B, 2, H, W), got {tuple(logits.shape)}")
    if target.shape != (logits.shape[0], *logits.shape[2:]):
        raise InputError(
            f"target {tuple(target.shape)} does not match logits {tuple(logits.shape)}; "
            "give a (B, H, W) mask at the logits' size"
        )
    target = target.long()
    weight = torch.tensor(class_weights, dtype=logits.dtype, device=logits.device)
    ce = F.cross_entropy(logits, target, weight=weight)
    probability = logits.softmax(dim=1)[:, 1]  # (B, H, W)
    return ce + dice_weight * dice_loss(probability, target)
