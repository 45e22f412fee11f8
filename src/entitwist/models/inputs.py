"""Input checks of :class:`~entitwist.models.enti_twistnet.EntiTwistNet`.

:func:`check_shapes` (shapes and types, no host synchronisation; truncates over-long text)
runs in every ``forward``; :func:`check_inputs` also checks the values (text present, token
ids within the vocabulary, entity labels within 0..K), which costs host synchronisations
(one per ``int(tensor)``), so it runs where inputs enter (``model.check_inputs``).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from entitwist.errors import InputError

__all__ = ["check_inputs", "check_shapes"]

_TEXT_TRUNCATION_WARNED = False


def check_inputs(
    model: Any,
    image: Tensor,
    input_ids: Tensor,
    attention_mask: Tensor,
    entities: Tensor | None = None,
) -> None:
    """Raise :class:`InputError` (one line) for inputs ``model.forward`` cannot use.

    ``forward`` runs :func:`check_shapes` only (free); this also checks the values (every
    sample has text, token ids within the vocabulary, entity labels within 0..K), which
    costs a few host synchronisations: run it where inputs enter (the tokenizer and the
    entity readers produce valid values by construction).
    """
    input_ids, attention_mask = check_shapes(model, image, input_ids, attention_mask, entities)
    if input_ids.shape[1] == 0 or not bool((attention_mask != 0).any(dim=1).all()):
        raise InputError(
            "empty text: a sample's attention_mask is all 0; give every image a sentence"
        )
    vocab = int(model.text.model.config.vocab_size)
    if input_ids.numel():
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= vocab:
            raise InputError(
                f"token ids must lie in [0, {vocab}); got [{lo}, {hi}] "
                "-- tokenize with this model's tokenizer"
            )
    if entities is not None and model.config.fusion.seg and entities.numel():
        k = model.config.fusion.max_entities
        lo, hi = int(entities.min()), int(entities.max())
        if lo < 0 or hi > k:
            raise InputError(
                f"entity labels must lie in 0..K={k}, got [{lo}, {hi}]; relabel the map or "
                "raise fusion.max_entities"
            )


def check_shapes(
    model: Any, image: Tensor, input_ids: Tensor, attention_mask: Tensor, entities: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Shape and type checks (no host synchronisation); truncates over-long text."""
    global _TEXT_TRUNCATION_WARNED
    if not isinstance(image, Tensor) or image.dim() != 4 or image.shape[1] != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise InputError(
            f"image must be a (B, 3, H, W) tensor, got {shape}; add a batch axis / use RGB"
        )
    if not image.is_floating_point():
        raise InputError(
            f"image must be float (ImageNet-normalised), got {image.dtype}; convert and normalise it first"
        )
    b, _, h, w = image.shape
    if h % 32 or w % 32 or h == 0 or w == 0:
        raise InputError(f"image size {h}x{w} must be a positive multiple of 32; resize or pad it")
    for name, tensor in (("input_ids", input_ids), ("attention_mask", attention_mask)):
        if not isinstance(tensor, Tensor) or tensor.dim() != 2 or tensor.shape[0] != b:
            shape = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
            raise InputError(
                f"{name} must be a (B={b}, N) tensor, got {shape}; use model.tokenizer"
            )
        if tensor.is_floating_point() or tensor.is_complex():
            raise InputError(f"{name} must hold integers, got {tensor.dtype}; use model.tokenizer")
    if input_ids.shape != attention_mask.shape:
        raise InputError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} differ"
        )
    n_max = model.config.text.max_tokens
    if input_ids.shape[1] > n_max:
        if not _TEXT_TRUNCATION_WARNED:
            warnings.warn(
                f"text of {input_ids.shape[1]} tokens truncated to text.max_tokens={n_max}; "
                "this warning is shown once",
                UserWarning,
                stacklevel=3,
            )
            _TEXT_TRUNCATION_WARNED = True
        input_ids, attention_mask = input_ids[:, :n_max], attention_mask[:, :n_max]
    if input_ids.shape[1] == 0:
        raise InputError("empty text: input_ids has no tokens; give every image a sentence")
    if entities is not None and model.config.fusion.seg:
        if not isinstance(entities, Tensor) or entities.dim() != 3:
            shape = (
                tuple(entities.shape) if isinstance(entities, Tensor) else type(entities).__name__
            )
            raise InputError(f"entities must be a (B, H, W) label map, got {shape}")
        if entities.is_floating_point() or entities.is_complex() or entities.dtype == torch.bool:
            raise InputError(
                f"entities must hold integer labels (0 = none, 1..K), got {entities.dtype}"
            )
        if tuple(entities.shape) != (b, h, w):
            raise InputError(
                f"entity map {tuple(entities.shape)} does not match the image (B, H, W) = ({b}, {h}, {w}); "
                "resize it with nearest neighbour"
            )
    return input_ids.long(), attention_mask.long()
