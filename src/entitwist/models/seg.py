"""SAM-inspired Entity Guidance (SEG), paper section III-B, eq. 1-4.

The entity priors of an image arrive as one label map at input resolution (0 = no entity,
1..K = entity k; see DESIGN.md section 4). At each encoder stage the network turns that map
into soft stage-resolution masks with :func:`entity_area_maps`: ``M[k, h, w]`` is the
fraction of stage cell (h, w) covered by entity k. Because the label map partitions the
image, ``sum_k M[k, h, w] <= 1``.

:class:`SEG` then computes, all vectorised over entities (matrix products with ``M``):

- eq. 1, MAP (mask average pooling): ``p_k = sum_hw M[k,hw] F[hw] / sum_hw M[k,hw]``;
- eq. 2, affinity: ``phi_ij = cos(p_i, p_j) / sum_l cos(p_i, p_l)`` over present entities;
- eq. 3, self-reasoning: ``p^_i = p_i + ReLU(sum_j phi_ij W p_j + b)``;
- eq. 4, reverse MAP: ``G[hw] = sum_k M[k,hw] p^_k`` (0 where no entity covers the cell).

An entity whose area is zero at a stage (a mask that vanishes at stride 32, or a padded id
that never occurs) is *absent*: it takes part in no sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from entitwist.errors import InputError

__all__ = [
    "SEG",
    "EntityAreaCache",
    "entity_area_maps",
    "mask_average_pooling",
    "reverse_mask_average_pooling",
    "self_reasoning_affinity",
]

# |sum_l cos(p_i, p_l)| is bounded below by this before dividing (eq. 2). The self term
# contributes cos(p_i, p_i) = 1, so the sum is usually >= 1; it only comes near 0 when other
# priors point the opposite way, and then the bound keeps |phi| <= 1 / AFFINITY_EPS.
AFFINITY_EPS = 0.1


def entity_area_maps(labels: Tensor, num_entities: int, size: tuple[int, int]) -> Tensor:
    """Fraction of each stage cell covered by each entity (area pooling of the one-hot map).

    Args:
        labels: (B, H0, W0) integer label map; 0 = no entity, 1..K = entity k.
        num_entities: K, the number of entity channels to return (labels must be <= K).
        size: (H, W) of the stage grid.

    Returns:
        (B, K, H, W) float32 on ``labels``' device, values in [0, 1], summing to <= 1 over K.

    When H0, W0 are multiples of H, W (480 -> 120, 60, 30, 15) the areas are counted with a
    single ``bincount`` over (batch, label, cell) indices, which never builds the
    (B, K, H0, W0) one-hot tensor; otherwise the one-hot map is pooled with
    ``adaptive_avg_pool2d`` (PyTorch's cell boundaries).
    """
    if not isinstance(labels, Tensor) or labels.dim() != 3:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise InputError(
            f"entity label map must be a (B, H, W) integer tensor, got {shape}; pass one map per image"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InputError(
            f"entity label map must hold integers (0 = none, 1..K), got dtype {labels.dtype}"
        )
    if num_entities < 0:
        raise InputError(f"num_entities={num_entities} must be >= 0")
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise InputError(f"stage size {size} must be positive")
    b, h0, w0 = labels.shape
    labels = labels.long()
    if labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi > num_entities:
            raise InputError(
                f"entity label map holds labels in [{lo}, {hi}] but K={num_entities}; "
                f"use 0 for 'no entity' and 1..{num_entities}, or raise fusion.max_entities"
            )
    k = num_entities
    if k == 0 or b == 0:
        return labels.new_zeros((b, k, h, w), dtype=torch.float32)
    if h0 % h == 0 and w0 % w == 0:
        sy, sx = h0 // h, w0 // w
        ys = torch.arange(h0, device=labels.device) // sy  # (H0,)
        xs = torch.arange(w0, device=labels.device) // sx  # (W0,)
        cell = ys[:, None] * w + xs[None, :]  # (H0, W0) index of the stage cell
        batch = torch.arange(b, device=labels.device)[:, None, None]
        index = (batch * (k + 1) + labels) * (h * w) + cell  # (B, H0, W0)
        counts = torch.bincount(index.reshape(-1), minlength=b * (k + 1) * h * w)
        area = counts.view(b, k + 1, h, w)[:, 1:].float() / float(sy * sx)  # (B, K, H, W)
        return area
    onehot = labels.new_zeros((b, k + 1, h0, w0), dtype=torch.float32)
    onehot.scatter_(1, labels[:, None], 1.0)  # (B, K+1, H0, W0), float32 rather than int64
    return F.adaptive_avg_pool2d(onehot[:, 1:], (h, w))


class EntityAreaCache:
    """:func:`entity_area_maps` of one label map at several grid sizes, each computed once.

    The network asks for the same entities at every stage (and the entity head again at
    1/4 resolution). The first size is counted from the labels; a size that evenly divides
    an already computed one is average-pooled from it instead (areas are cell means, so the
    mean of sub-cell areas is the cell's area). With power-of-two cells (480 -> 120, 60, 30,
    15; 128 -> 32, 16, 8, 4) every value is a small multiple of a power of two and the
    pooled maps equal the counted ones bit for bit; otherwise they agree to float rounding.

    ``cache(size)`` returns the (B, K, H, W) float32 map; the cached tensors are shared, so
    callers must not modify them in place.
    """

    def __init__(self, labels: Tensor, num_entities: int) -> None:
        self.labels = labels
        self.num_entities = int(num_entities)
        self._maps: dict[tuple[int, int], Tensor] = {}

    def __call__(self, size: tuple[int, int]) -> Tensor:
        h, w = int(size[0]), int(size[1])
        found = self._maps.get((h, w))
        if found is not None:
            return found
        sources = [hw for hw in self._maps if hw[0] % h == 0 and hw[1] % w == 0]
        if h >= 1 and w >= 1 and sources and self._maps[min(sources)].numel():
            sh, sw = min(sources)  # the coarsest finer map: fewest cells to pool
            ky, kx = sh // h, sw // w
            area = F.avg_pool2d(self._maps[(sh, sw)], (ky, kx))
        else:
            area = entity_area_maps(self.labels, self.num_entities, (h, w))
        self._maps[(h, w)] = area
        return area


def mask_average_pooling(features: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 1, MAP: ``p_k = sum_hw M[k,hw] F[hw] / sum_hw M[k,hw]``.

    Args:
        features: (B, d, H, W).
        masks: (B, K, H, W) soft masks (entity areas), >= 0.

    Returns:
        priors (B, K, d), zero for absent entities; present (B, K) bool, area > 0.
    """
    m = masks.flatten(2)  # (B, K, HW)
    area = m.sum(-1)  # (B, K)
    present = area > 0
    pooled = torch.einsum("bkn,bdn->bkd", m, features.flatten(2))  # (B, K, d)
    # Absent entities have area 0 and pooled 0: divide by 1 there instead of 0.
    priors = pooled / torch.where(present, area, torch.ones_like(area)).unsqueeze(-1)
    return priors, present


def self_reasoning_affinity(priors: Tensor, present: Tensor, eps: float = AFFINITY_EPS) -> Tensor:
    """Eq. 2: ``phi_ij = cos(p_i, p_j) / sum_l cos(p_i, p_l)``, over present entities only.

    Args:
        priors: (B, K, d) entity priors.
        present: (B, K) bool; absent entities get zero rows and columns.
        eps: the denominator is replaced by ``sign(s) * max(|s|, eps)`` (sign(0) = +1), so
            it keeps its sign and never comes closer to 0 than ``eps``.

    Returns:
        (B, K, K) affinity, computed in float32 (or float64), returned in ``priors``' dtype.
    """
    work = priors if priors.dtype == torch.float64 else priors.float()  # half precision -> float32
    unit = F.normalize(work, dim=-1)  # (B, K, d); a zero prior stays zero
    cos = unit @ unit.transpose(1, 2)  # (B, K, K)
    pair = present[:, :, None] & present[:, None, :]  # (B, K, K)
    cos = cos * pair
    s = cos.sum(-1, keepdim=True)  # (B, K, 1)
    sign = torch.where(s >= 0, torch.ones_like(s), -torch.ones_like(s))
    denom = sign * s.abs().clamp_min(eps)
    return (cos / denom).to(priors.dtype)


def reverse_mask_average_pooling(priors: Tensor, masks: Tensor) -> Tensor:
    """Eq. 4, reverse MAP: ``G[hw] = sum_k M[k,hw] p^_k``.

    Args:
        priors: (B, K, d) refined priors.
        masks: (B, K, H, W).

    Returns:
        (B, d, H, W); exactly 0 where no entity covers a cell.
    """
    b, _, h, w = masks.shape
    g = torch.einsum("bkn,bkd->bdn", masks.flatten(2), priors)  # (B, d, HW)
    return g.reshape(b, -1, h, w)


class SEG(nn.Module):
    """SAM-inspired Entity Guidance for one encoder stage (eq. 1-4).

    Args:
        dim: d, channels of the stage's visual features.
        self_reasoning: refine the priors with eq. 2-3 (off: ``p^ = p``, Table V "w/o SR").
        eps: lower bound on ``|sum_l cos(p_i, p_l)|`` in eq. 2.

    The (W, b) of eq. 3 belong to this stage only (one ``nn.Linear(d, d)``).
    """

    def __init__(self, dim: int, self_reasoning: bool = True, eps: float = AFFINITY_EPS) -> None:
        super().__init__()
        self.dim = dim
        self.self_reasoning = self_reasoning
        self.eps = eps
        self.reason = nn.Linear(dim, dim) if self_reasoning else None  # W, b of eq. 3

    def forward(self, features: Tensor, entity_area: Tensor | None) -> Tensor:
        """Entity-aware guidance G.

        Args:
            features: F^in (B, d, H, W).
            entity_area: (B, K, H, W) from :func:`entity_area_maps`, or ``None`` / K = 0
                for "no entities".

        Returns:
            G (B, d, H, W); zeros when there are no entities.
        """
        if entity_area is None or entity_area.shape[1] == 0:
            return torch.zeros_like(features)
        if (
            entity_area.dim() != 4
            or entity_area.shape[0] != features.shape[0]
            or entity_area.shape[2:] != features.shape[2:]
        ):
            raise InputError(
                f"entity areas {tuple(entity_area.shape)} do not match stage features {tuple(features.shape)}; "
                "compute them with entity_area_maps(labels, K, features.shape[-2:])"
            )
        masks = entity_area.to(features.dtype)  # (B, K, H, W)
        priors, present = mask_average_pooling(features, masks)  # (B, K, d), (B, K)
        if self.reason is not None:
            phi = self_reasoning_affinity(priors, present, self.eps)  # (B, K, K)
            # eq. 3: sum_j phi_ij W p_j + b  ==  W (sum_j phi_ij p_j) + b
            refined = priors + F.relu(self.reason(phi @ priors))  # (B, K, d)
            refined = refined * present.unsqueeze(-1)  # absent entities stay out
        else:
            refined = priors
        return reverse_mask_average_pooling(refined, masks)
