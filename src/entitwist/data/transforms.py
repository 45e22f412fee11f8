"""Sample transforms of the paper: resize to 480, ImageNet normalisation, 20 tokens.

:class:`ReferringTransform` turns a raw sample dict (see :mod:`entitwist.data.base`) into
tensors; :func:`collate_referring` batches them. Resizing: the image bilinear with
antialiasing (matches PIL's BILINEAR, the LAVT-family pipeline); the mask and the entity
map nearest-neighbour in PIL's convention (the source pixel under each target pixel's
centre, indices read off PIL itself), so the 480x480 evaluation target equals the published
protocol's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from entitwist.errors import InputError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ReferringTransform",
    "collate_referring",
    "resize_image",
    "resize_labels",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

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


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (antialiased, PIL-like) resize of a ``(3, H, W)`` image to ``(3, *size)``.

    uint8 in, uint8 out (rounded, like PIL; the fast path on CPU, channels-last strides
    welcome); float in, float out.
    """
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    out = F.interpolate(
        image[None], size=size, mode="bilinear", align_corners=False, antialias=True
    )
    return out[0]


@functools.lru_cache(maxsize=64)
def _pil_nearest_index(n_in: int, n_out: int) -> torch.Tensor:
    """Source index of each of ``n_out`` target pixels under PIL's NEAREST resize.

    Read off PIL itself (a ramp image resized), so boundary cases where a target centre lands
    exactly on a source pixel edge (512 -> 480) round the same way as the published protocol.
    """
    from PIL import Image

    ramp = Image.fromarray(np.arange(n_in, dtype=np.int32)[None, :], mode="I")
    idx = np.asarray(ramp.resize((n_out, 1), Image.Resampling.NEAREST))[0]
    return torch.from_numpy(idx.astype(np.int64))


def resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest resize (exactly PIL's NEAREST) of an ``(..., H, W)`` map to ``size``; dtype kept."""
    h, w = labels.shape[-2:]
    if (h, w) == tuple(size):
        return labels
    rows = _pil_nearest_index(h, size[0]).to(labels.device)  # (S_h,)
    cols = _pil_nearest_index(w, size[1]).to(labels.device)  # (S_w,)
    return labels.index_select(-2, rows).index_select(-1, cols)  # (..., S_h, S_w)


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
            such as ``entitwist.models.text.build_tokenizer(text_config)``; ``None``: no ids.
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
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self._mean255 = self.mean * 255
        self._std255 = self.std * 255

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

        # (H, W, 3) uint8 viewed as (3, H, W) with channels-last strides: resize in uint8
        # (fast, rounds like PIL), then normalise at the target size.
        img = resize_image(_tensor(image).permute(2, 0, 1), size)  # (3, S, S) uint8
        out["image"] = img.float().sub_(self._mean255).div_(self._std255).contiguous()

        if "mask" in sample:
            mask = _tensor(sample["mask"])  # (H, W) uint8
            out["mask_orig"] = mask.bool()
            out["mask"] = resize_labels(mask, size).long()  # (S, S)
        if "entities" in sample:
            ent = _tensor(sample["entities"])  # (H, W) uint8
            out["entities"] = resize_labels(ent, size).long()  # (S, S)

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
