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


#: Default weight of :func:`entity_selection_loss` when the model has an entity head
#: (``benchmarks/results/demo.md``: 1 and 3 against 0 on the demo scenes).
ENTITY_LOSS_WEIGHT = 3.0


def entity_selection_targets(
    entities: Tensor, target: Tensor, num_entities: int
) -> tuple[Tensor, Tensor]:
    """Which entities lie mostly inside the referred mask.

    Args:
        entities: (B, H, W) integer label map, 0 = no entity, 1..K.
        target: (B, H, W) 0/1 referred mask at the label map's size.
        num_entities: K (the width of the scores the targets are for).

    Returns:
        ``(chosen, present)``, both (B, K) bool: more than half of entity k's pixels are in
        the target; entity k has pixels at all.
    """
    if entities.shape != target.shape:
        raise InputError(
            f"entity map {tuple(entities.shape)} and mask {tuple(target.shape)} differ in size; "
            "give both at the network input size"
        )
    b = entities.shape[0]
    labels = entities.long().flatten(1)  # (B, HW)
    index = labels + (num_entities + 1) * torch.arange(b, device=labels.device)[:, None]
    size = b * (num_entities + 1)
    area = torch.bincount(index.flatten(), minlength=size).view(b, -1)[:, 1:]
    inside = torch.bincount(
        index.flatten(), weights=target.flatten(1).flatten().float(), minlength=size
    )
    inside = inside.view(b, -1)[:, 1:]
    return inside * 2 > area, area > 0


def entity_selection_loss(scores: Tensor, entities: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy of the entity head's scores against :func:`entity_selection_targets`.

    Args:
        scores: (B, K) logits of :class:`~entitwist.models.entity_head.EntityHead`.
        entities: (B, H, W) label map the scores were computed from.
        target: (B, H, W) 0/1 referred mask.

    Returns:
        scalar: the mean over present entities (0 when there are none).
    """
    chosen, present = entity_selection_targets(entities, target, scores.shape[1])
    loss = F.binary_cross_entropy_with_logits(scores, chosen.to(scores.dtype), reduction="none")
    return (loss * present).sum() / present.sum().clamp_min(1)
