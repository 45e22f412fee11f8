"""Running a model of ``entitwist figures`` on one image with intermediates.

Models are loaded by :func:`entitwist.evaluation.evaluate.load_model`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from entitwist.errors import InputError

__all__ = ["describe_model", "run_single"]


def describe_model(model: Any) -> str:
    """``baseline (no SEG, no DAT)``, ``SEG only``, ``DAT only`` or ``SEG + DAT (sp_sa)``."""
    f = model.config.fusion
    if f.dat == "none":
        return "SEG only (no DAT)" if f.seg else "baseline (no SEG, no DAT)"
    return f"SEG + DAT ({f.dat})" if f.seg else f"DAT only ({f.dat})"


@torch.no_grad()
def run_single(
    model: Any, image: np.ndarray, sentence: str, entities: Any = "auto", device: Any = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Run ``model`` on one uint8 (H, W, 3) image and sentence with intermediates.

    Preprocessing is the :class:`~entitwist.inference.Predictor`'s (resize to S,
    ImageNet normalisation, entity maps ``"auto"`` / None / an (H, W) label map).
    Returns the resized image (S, S, 3) uint8 and the model's dict (``logits``, ``stages``).
    """
    from entitwist.inference.predictor import Predictor

    if not isinstance(sentence, str) or not sentence.strip():
        raise InputError("the sentence is empty; give a referring sentence with --sentence")
    # the figures read the fp32 network's intermediates: no precision plan is needed
    predictor = Predictor(model, device=device, precision="32")
    x, small = predictor.prepare(image)  # (1, 3, S, S), (S, S, 3)
    ent = predictor.entity_map(image, entities)  # (1, S, S) | None
    tokens = model.tokenizer([sentence])
    dev = predictor.device
    out = predictor.model(
        x.to(dev),
        tokens["input_ids"].to(dev),
        tokens["attention_mask"].to(dev),
        None if ent is None else ent.to(dev),
        return_intermediates=True,
    )
    return small, out
