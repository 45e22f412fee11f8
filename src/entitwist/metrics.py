"""Referring-segmentation metrics: oIoU, mIoU and Pr@X as a torchmetrics ``Metric``.

The protocol is the one every published RRSIS baseline reports (the LAVT family, DESIGN.md
section 5). For each expression e, with prediction P_e and ground truth G_e (boolean masks):

- I_e = |P_e AND G_e|, U_e = |P_e OR G_e|;
- IoU_e = I_e / U_e, and IoU_e = 0 when U_e = 0 (an empty prediction of an empty mask);
- oIoU = sum_e I_e / sum_e U_e (overall IoU, large objects weigh more);
- mIoU = mean_e IoU_e;
- Pr@X = share of expressions with IoU_e >= X, for X in 0.5, 0.6, 0.7, 0.8, 0.9.

All values are returned in percent. Two protocols differ only in *where* the masks are
compared, which is the caller's business:

- ``"lavt"`` (default, the published numbers): at the network's input size (480x480),
  against the ground truth resized with nearest neighbour (what the data transform yields);
- ``"original"``: at each image's own size; upsample the network output with
  :func:`upsample_to_original` and compare with the original mask.

The metric keeps each expression's I and U (int64, concatenated across updates and across
processes under DDP), so the merged result over several processes is exactly the result of
one process over all expressions; optional sample indices drop the duplicates that a
padding distributed sampler adds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from entitwist.errors import ConfigError, InputError

PROTOCOLS = ("lavt", "original")
DEFAULT_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "PROTOCOLS",
    "ReferringMetrics",
    "intersection_union",
    "metric_names",
    "upsample_to_original",
]


def metric_names(thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> list[str]:
    """Column names in the paper's order: ``Pr@0.5 .. Pr@0.9, oIoU, mIoU``."""
    return [f"Pr@{t:g}" for t in thresholds] + ["oIoU", "mIoU"]


def intersection_union(
    preds: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample intersection and union pixel counts.

    Args:
        preds, targets: (B, H, W) boolean (or 0/1) masks of the same shape.

    Returns:
        ``(I, U)``, each (B,) int64.
    """
    if preds.shape != targets.shape:
        raise InputError(
            f"predictions {tuple(preds.shape)} and targets {tuple(targets.shape)} differ in shape; "
            "resize both to the protocol's size first (see entitwist.metrics.upsample_to_original)"
        )
    if preds.ndim != 3:
        raise InputError(f"masks must be (B, H, W), got shape {tuple(preds.shape)}")
    p = preds.bool().flatten(1)  # (B, H*W)
    t = targets.bool().flatten(1)  # (B, H*W)
    inter = (p & t).sum(dim=1, dtype=torch.int64)  # (B,)
    union = (p | t).sum(dim=1, dtype=torch.int64)  # (B,)
    return inter, union


def upsample_to_original(logits_or_mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bring a network output to an image's original size (the ``"original"`` protocol).

    Args:
        logits_or_mask: class logits (B, C, h, w) or (C, h, w) float, upsampled bilinearly
            and then reduced with argmax (class 1 = referred object); or a mask (B, h, w) or
            (h, w) bool/integer, resized with nearest neighbour.
        size: ``(H, W)`` of the original mask.

    Returns:
        Boolean mask (B, H, W), or (H, W) for an unbatched input.
    """
    size = (int(size[0]), int(size[1]))
    x = logits_or_mask
    if x.is_floating_point():
        if x.ndim not in (3, 4):
            raise InputError(
                f"logits must be (B, C, h, w) or (C, h, w), got shape {tuple(x.shape)}"
            )
        unbatched = x.ndim == 3
        x4 = x.unsqueeze(0) if unbatched else x  # (B, C, h, w)
        up = F.interpolate(
            x4.float(), size=size, mode="bilinear", align_corners=False
        )  # (B, C, H, W)
        out = up.argmax(dim=1).bool() if up.shape[1] > 1 else up[:, 0] > 0  # (B, H, W)
        return out[0] if unbatched else out
    if x.ndim not in (2, 3):
        raise InputError(f"a mask must be (B, h, w) or (h, w), got shape {tuple(x.shape)}")
    unbatched = x.ndim == 2
    x4 = (x.unsqueeze(0) if unbatched else x).unsqueeze(1).to(torch.uint8)  # (B, 1, h, w)
    out = F.interpolate(x4, size=size, mode="nearest")[:, 0].bool()  # (B, H, W)
    return out[0] if unbatched else out


class ReferringMetrics(Metric):
    """oIoU, mIoU and Pr@X of referring segmentation (LAVT protocol; see the module docs).

    Args:
        protocol: ``"lavt"`` or ``"original"``; a label saying at which size the caller
            compares masks (:attr:`protocol`), reported with every result.
        thresholds: the X of Pr@X.

    ``update(preds, targets, indices=None)``: boolean (B, H, W) masks of the same shape,
    optionally the (B,) dataset indices of the samples (duplicates, as a padding
    distributed sampler makes, are then counted once). ``compute()`` returns a dict of
    0-dim float64 tensors ``Pr@0.5 .. Pr@0.9``, ``oIoU``, ``mIoU`` in percent (NaN when no
    expression was seen).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(
        self,
        protocol: str = "lavt",
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if protocol not in PROTOCOLS:
            raise ConfigError(
                f"unknown metric protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}"
            )
        self.protocol = protocol
        self.thresholds = tuple(float(t) for t in thresholds)
        # Per-expression counts, concatenated over updates and (under DDP) over processes.
        self.add_state("intersection", default=[], dist_reduce_fx="cat")
        self.add_state("union", default=[], dist_reduce_fx="cat")
        self.add_state("index", default=[], dist_reduce_fx="cat")

    def update(
        self, preds: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor | None = None
    ) -> None:
        """Add a batch of predictions (B, H, W) and ground truths (B, H, W)."""
        inter, union = intersection_union(preds, targets)
        self.intersection.append(inter)
        self.union.append(union)
        if indices is not None:
            indices = torch.as_tensor(indices, device=inter.device).reshape(-1).long()
            if indices.numel() != inter.numel():
                raise InputError(
                    f"got {indices.numel()} indices for a batch of {inter.numel()} masks"
                )
            self.index.append(indices)

    def per_expression(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (I, U) counts of every expression seen, (E,) int64 each (duplicates dropped)."""
        inter = _cat_state(self.intersection)  # type: ignore[arg-type]  # add_state lists
        union = _cat_state(self.union)  # type: ignore[arg-type]
        index = _cat_state(self.index)  # type: ignore[arg-type]
        if inter is None or union is None:
            empty = torch.zeros(0, dtype=torch.int64, device=self.device)
            return empty, empty
        if index is not None and index.numel():
            if index.numel() != inter.numel():
                raise InputError("pass indices with every update() or with none")
            order = torch.argsort(index, stable=True)
            index, inter, union = index[order], inter[order], union[order]
            keep = torch.ones_like(index, dtype=torch.bool)
            keep[1:] = index[1:] != index[:-1]
            inter, union = inter[keep], union[keep]
        return inter, union

    def compute(self) -> dict[str, torch.Tensor]:
        inter, union = self.per_expression()
        return summarize(inter, union, self.thresholds)


def _cat_state(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor | None:
    """A list state before sync, a tensor after it (torchmetrics concatenates on sync)."""
    if isinstance(state, torch.Tensor):
        return state.reshape(-1)
    return dim_zero_cat(state).reshape(-1) if len(state) else None


def summarize(
    inter: torch.Tensor, union: torch.Tensor, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict[str, torch.Tensor]:
    """Pr@X, oIoU and mIoU (percent, float64) from per-expression counts (E,) each."""
    inter = inter.to(torch.float64)
    union = union.to(torch.float64)
    out: dict[str, torch.Tensor] = {}
    if inter.numel() == 0:
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=inter.device)
        for name in metric_names(thresholds):
            out[name] = nan.clone()
        return out
    # IoU = 0 when U = 0 (LAVT's convention).
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))  # (E,)
    for t in thresholds:
        out[f"Pr@{t:g}"] = (iou >= t).to(torch.float64).mean() * 100
    total_union = union.sum()
    out["oIoU"] = (
        inter.sum() / total_union * 100 if total_union > 0 else torch.zeros_like(total_union)
    )
    out["mIoU"] = iou.mean() * 100
    return out
