"""Sample transforms of the paper: resize to 480, ImageNet normalisation, 20 tokens.

:class:`ReferringTransform` turns a raw sample dict (see :mod:`entitwist.data.base`) into
tensors; :func:`collate_referring` batches them. The picture goes through
:func:`entitwist.imaging.prepare_image` (bilinear with antialiasing in uint8, PIL-like, then
ImageNet normalisation), the very function ``EntiTwistNet.preprocess`` runs at inference;
the mask and the entity map through :func:`entitwist.imaging.resize_nearest` (PIL's
NEAREST, so the 480x480 evaluation target equals the published protocol's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from entitwist.errors import InputError
from entitwist.imaging import IMAGENET_MEAN, IMAGENET_STD, prepare_image, resize_nearest

__all__ = [
    "ReferringTransform",
    "collate_referring",
]

Tokenizer = Callable[[list[str]], dict[str, torch.Tensor]]


def _tensor(arr: np.ndarray) -> torch.Tensor:
    """numpy -> tensor sharing memory when possible (copies read-only or strided arrays)."""
    arr = np.asarray(arr)
    if not (arr.flags.writeable and arr.flags.c_contiguous):
        arr = np.array(arr, order="C")
    return torch.from_numpy(arr)


def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


class ReferringTransform:
    """Raw sample dict -> tensors for the network.

    Output keys: ``image`` float ``(3, S, S)`` normalised; ``mask`` long ``(S, S)`` 0/1;
    ``entities`` long ``(S, S)`` (when the sample has a label map); ``mask_orig`` bool
    ``(H, W)`` at the original size (for the original-resolution protocol);
    ``input_ids`` / ``attention_mask`` long ``(N,)`` (when a tokenizer is given); the
    string and id fields (``expression``, ``sample_id``, ``image_id``, ``ref_id``,
    ``image_key``) and ``orig_size`` unchanged.

    Args:
        size: S, or ``(H, W)``; ``None`` keeps the original size.
        tokenizer: a callable ``list[str] -> {"input_ids": (1, N), "attention_mask": (1, N)}``
            such as ``entitwist.models.tokenizer.build_tokenizer(text_config)``; ``None``: no ids.
        mean, std: per-channel normalisation of the 0..1 image.
    """

    def __init__(
        self,
        size: int | Sequence[int] | None = 480,
        tokenizer: Tokenizer | None = None,
        *,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.size = None if size is None else _size2(size)
        self.tokenizer = tokenizer
        self.mean = torch.tensor(mean, dtype=torch.float32)  # (3,)
        self.std = torch.tensor(std, dtype=torch.float32)  # (3,)

    def __repr__(self) -> str:
        return f"ReferringTransform(size={self.size}, tokenizer={type(self.tokenizer).__name__})"

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        image = np.asarray(sample["image"])
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(
                f"sample image must be uint8 (H, W, 3), got {image.dtype} {image.shape}"
            )
        h, w = image.shape[:2]
        size = self.size or (h, w)
        out = {k: v for k, v in sample.items() if k not in {"image", "mask", "entities"}}

        out["image"] = prepare_image(image, size, self.mean, self.std)  # (3, S, S) float

        if "mask" in sample:
            mask = _tensor(sample["mask"])  # (H, W) uint8
            out["mask_orig"] = mask.bool()
            out["mask"] = resize_nearest(mask, size).long()  # (S, S)
        if "entities" in sample:
            ent = _tensor(sample["entities"])  # (H, W) uint8
            out["entities"] = resize_nearest(ent, size).long()  # (S, S)

        if self.tokenizer is not None:
            tok = self.tokenizer([sample["expression"]])
            out["input_ids"] = torch.as_tensor(tok["input_ids"]).long()[0]  # (N,)
            out["attention_mask"] = torch.as_tensor(tok["attention_mask"]).long()[0]  # (N,)
        return out


def collate_referring(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch transformed samples: equal-shape tensors stacked to ``(B, ...)``, the rest listed.

    ``mask_orig`` (sizes differ) is always a list of ``(H_i, W_i)`` tensors; strings,
    ``orig_size`` tuples and numpy arrays become lists. All samples must have the same keys.
    """
    if not samples:
        raise InputError("cannot collate an empty list of samples")
    keys = list(samples[0])
    for s in samples[1:]:
        if set(s) != set(keys):
            diff = sorted(set(s) ^ set(keys))
            raise InputError(
                f"samples have different keys ({', '.join(diff)}); attach entities to all "
                "samples or to none"
            )
    batch: dict[str, Any] = {}
    for key in keys:
        values = [s[key] for s in samples]
        if key != "mask_orig" and all(isinstance(v, torch.Tensor) for v in values):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) == 1:
                batch[key] = torch.stack(values)
                continue
            raise InputError(
                f"cannot stack {key!r}: shapes differ ({sorted(shapes)}); resize with "
                "ReferringTransform(size=...)"
            )
        batch[key] = values
    return batch
