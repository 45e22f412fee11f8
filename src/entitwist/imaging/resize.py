"""Resizing: one nearest-neighbour rule for labels, one bilinear rule for pictures, one
normalisation.

Nearest (masks, entity label maps; :func:`nearest_index`, :func:`resize_nearest`): each
target pixel takes the source pixel under its centre, ``src = floor((dst + 0.5) * in / out)``,
exactly as PIL's ``NEAREST`` computes it: PIL accumulates the centre in double precision
(``c_0 = s / 2``, ``c_{i+1} = c_i + s`` with ``s = in / out``) and truncates, so a centre
that lands exactly on a source pixel edge (512 -> 480: 15 of the 480 targets) goes to
whichever side the rounding of that sum falls. The index tables here repeat that sum
(``np.cumsum`` adds in order), so a label map resized here equals PIL's pixel for pixel and
the 480 x 480 evaluation target equals the published protocol's. (``F.interpolate`` with
``mode="nearest-exact"`` uses the same centres but breaks those ties upwards, and
``mode="nearest"`` uses ``floor(dst * in / out)``: neither is used.)

Bilinear (pictures; :func:`resize_image`): antialiased, in uint8 and rounded like PIL's
``BILINEAR`` (the LAVT-family pipeline).

Normalisation (:func:`normalize`): ``(x / 255 - mean) / std`` with the ImageNet statistics
the Swin backbone was trained with.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "nearest_index",
    "resize_nearest",
    "resize_image",
    "normalize",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@functools.lru_cache(maxsize=128)
def _index(n_in: int, n_out: int) -> np.ndarray:
    step = n_in / n_out
    centres = np.full(n_out, step)
    centres[0] = step * 0.5
    idx = np.cumsum(centres).astype(np.int64)  # truncation = floor (centres > 0)
    np.minimum(idx, n_in - 1, out=idx)
    idx.flags.writeable = False
    return idx


def nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index (int64, ``(n_out,)``) of each target pixel of a nearest resize."""
    if n_in < 1 or n_out < 1:
        raise ValueError(f"cannot resize {n_in} pixels to {n_out}")
    return _index(int(n_in), int(n_out))


def resize_nearest(
    labels: np.ndarray | torch.Tensor, size: tuple[int, int]
) -> np.ndarray | torch.Tensor:
    """Nearest resize of an ``(..., H, W)`` array or tensor to ``size = (h, w)``.

    Any dtype (kept); numpy in, numpy out; tensor in, tensor out (on its device). Returns
    the input itself when the size already matches.
    """
    h, w = labels.shape[-2:]
    size = (int(size[0]), int(size[1]))
    if (h, w) == size:
        return labels
    rows, cols = nearest_index(h, size[0]), nearest_index(w, size[1])
    if isinstance(labels, torch.Tensor):
        r = torch.tensor(rows, device=labels.device)
        c = torch.tensor(cols, device=labels.device)
        return labels.index_select(-2, r).index_select(-1, c)
    return np.asarray(labels)[..., rows[:, None], cols[None, :]]


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (antialiased, PIL-like) resize of ``(..., 3, H, W)`` to ``(..., 3, *size)``.

    uint8 in, uint8 out (rounded, like PIL; the fast path on CPU, channels-last strides
    welcome); float in, float out.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(image.shape[-2:]) == size:
        return image
    lead = image.shape[:-3]
    x = image.reshape(-1, *image.shape[-3:])
    out = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.reshape(*lead, *out.shape[-3:])


def normalize(
    image: torch.Tensor,
    mean: Sequence[float] | torch.Tensor = IMAGENET_MEAN,
    std: Sequence[float] | torch.Tensor = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 (or 0..255 float) ``(..., 3, H, W)`` -> float32 ``(x / 255 - mean) / std``."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=image.device).view(3, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=image.device).view(3, 1, 1)
    return image.float().sub(mean * 255.0).div_(std * 255.0)
