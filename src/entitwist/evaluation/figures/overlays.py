"""The overlay figures: image, sentence, ground truth and prediction per sample.

The prediction is compared with the ground truth at the image's original size (the network
output upsampled bilinearly, as ``entitwist evaluate --protocol original``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from entitwist.errors import InputError

__all__ = ["overlay_items", "write_overlays"]


@torch.no_grad()
def overlay_items(
    model: Any, dataset: Any, indices: Sequence[int], device: Any = None, batch_size: int = 8
) -> list[dict[str, Any]]:
    """Predictions for ``dataset[i]`` (raw samples, no transform) at the original size.

    Returns per sample ``sample_id``, ``sentence``, ``image`` uint8 (H, W, 3), ``gt`` and
    ``pred`` bool (H, W), ``iou`` (0..1; 0 when both are empty), as ``entitwist evaluate``
    computes the original-size protocol.
    """
    from entitwist.data import ReferringTransform, collate_referring
    from entitwist.inference.inputs import resolve_device
    from entitwist.metrics import intersection_union, upsample_to_original

    dev = resolve_device(device)
    model = model.to(dev).eval()
    transform = ReferringTransform(model.config.visual.img_size, model.tokenizer)
    items: list[dict[str, Any]] = []
    for start in range(0, len(indices), batch_size):
        raws = [dataset[i] for i in indices[start : start + batch_size]]
        batch = collate_referring([transform(r) for r in raws])
        ent = batch.get("entities")
        logits = model(
            batch["image"].to(dev),
            batch["input_ids"].to(dev),
            batch["attention_mask"].to(dev),
            None if ent is None else ent.to(dev),
        ).float()  # (b, 2, S, S)
        for j, raw in enumerate(raws):
            gt = batch["mask_orig"][j].to(dev).bool()[None]  # (1, H, W)
            pred = upsample_to_original(logits[j : j + 1], tuple(gt.shape[-2:]))  # (1, H, W)
            inter, union = intersection_union(pred, gt)
            i, u = int(inter[0]), int(union[0])
            items.append(
                {
                    "sample_id": raw["sample_id"],
                    "sentence": raw["expression"],
                    "image": np.asarray(raw["image"]),
                    "gt": gt[0].cpu().numpy(),
                    "pred": pred[0].cpu().numpy(),
                    "iou": i / u if u else 0.0,
                }
            )
    return items


def _safe_name(sample_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(sample_id)).strip("._") or "sample"


def write_overlays(
    model: Any,
    dataset: Any,
    indices: Sequence[int],
    out_dir: str | os.PathLike,
    device: Any = None,
) -> dict[str, Any]:
    """Overlay pictures of ``dataset[i]`` for ``i`` in ``indices`` (raw samples) in ``out_dir``.

    Writes ``<sample_id>.png`` per sample, ``grid.png`` (all samples) and
    ``overlays.json`` (sample ids, sentences, IoUs at the original size). Returns
    ``panels`` (paths), ``grid`` (path), ``json`` (path) and ``items`` (see
    :func:`overlay_items`).
    """
    from entitwist.evaluation.plots import plot_overlay_grid, plot_overlay_panel
    from entitwist.utils import atomic_path

    if not indices:
        raise InputError("no sample selected for the overlays; give sample ids or n >= 1")
    out = Path(out_dir)
    items = overlay_items(model, dataset, indices, device=device)
    out.mkdir(parents=True, exist_ok=True)
    panels = [
        plot_overlay_panel(item, out / f"{_safe_name(item['sample_id'])}.png") for item in items
    ]
    grid = plot_overlay_grid(items, out / "grid.png")
    summary = [
        {"sample_id": it["sample_id"], "expression": it["sentence"], "IoU": it["iou"]}
        for it in items
    ]
    with atomic_path(out / "overlays.json") as tmp:
        tmp.write_text(json.dumps({"protocol": "original", "samples": summary}, indent=2) + "\n")
    return {"panels": panels, "grid": grid, "json": out / "overlays.json", "items": items}
