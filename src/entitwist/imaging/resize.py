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
from typing import TYPE_CHECKING, overload

import numpy as np

if TYPE_CHECKING:  # torch is imported when a tensor is resized, so the readers stay light
    import torch

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "nearest_index",
    "resize_nearest",
    "resize_image",
    "normalize",
    "prepare_image",
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


@overload
def resize_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray: ...
@overload
def resize_nearest(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor: ...
def resize_nearest(
    labels: np.ndarray | torch.Tensor, size: tuple[int, int]
) -> np.ndarray | torch.Tensor:  # (..., h, w)
    """Nearest resize of an ``(..., H, W)`` array or tensor to ``size = (h, w)``.

    Any dtype (kept); numpy in, numpy out; tensor in, tensor out (on its device). Returns
    the input itself when the size already matches.
    """
    h, w = labels.shape[-2:]
    size = (int(size[0]), int(size[1]))
    if (h, w) == size:
        return labels
    rows, cols = nearest_index(h, size[0]), nearest_index(w, size[1])
    if not isinstance(labels, np.ndarray) and hasattr(labels, "index_select"):  # a tensor
        import torch

        r = torch.tensor(rows, device=labels.device)
        c = torch.tensor(cols, device=labels.device)
        return labels.index_select(-2, r).index_select(-1, c)
    return np.asarray(labels)[..., rows[:, None], cols[None, :]]


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (antialiased, PIL-like) resize of ``(..., 3, H, W)`` to ``(..., 3, *size)``.

    uint8 in, uint8 out (rounded, like PIL; the fast path on CPU, channels-last strides
    welcome); float in, float out.
    """
    import torch.nn.functional as F

    size = (int(size[0]), int(size[1]))
    if tuple(image.shape[-2:]) == size:
        return image
    if image.dim() == 3:  # a view keeps channels-last strides (the fast uint8 kernel)
        return F.interpolate(
            image[None], size=size, mode="bilinear", align_corners=False, antialias=True
        )[0]
    lead = image.shape[:-3]
    x = image if image.dim() == 4 else image.reshape(-1, *image.shape[-3:])
    out = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.reshape(*lead, *out.shape[-3:])


def normalize(
    image: torch.Tensor,
    mean: Sequence[float] | torch.Tensor = IMAGENET_MEAN,
    std: Sequence[float] | torch.Tensor = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 (or 0..255 float) ``(..., 3, H, W)`` -> float32 ``(x / 255 - mean) / std``."""
    import torch

    mean = torch.as_tensor(mean, dtype=torch.float32, device=image.device).view(3, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=image.device).view(3, 1, 1)
    return image.float().sub(mean * 255.0).div_(std * 255.0)


def prepare_image(
    image: np.ndarray | torch.Tensor,
    size: tuple[int, int],
    mean: Sequence[float] | torch.Tensor = IMAGENET_MEAN,
    std: Sequence[float] | torch.Tensor = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 RGB ``(..., H, W, 3)`` (array or tensor) -> normalised float32 ``(..., 3, *size)``.

    The bilinear rule in uint8 on the CPU (a tensor elsewhere is brought to the CPU for it,
    so every device sees the same picture), then :func:`normalize` on the device of
    ``mean`` (a tensor) or the CPU. What training (``ReferringTransform``) and inference
    (``EntiTwistNet.preprocess``) both run.
    """
    import torch

    from entitwist.errors import InputError

    t = image
    if isinstance(image, np.ndarray):
        if not (image.flags.writeable and image.flags.c_contiguous):
            image = np.array(image, order="C")  # torch wants writable, contiguous memory
        t = torch.from_numpy(image)
    if not isinstance(t, torch.Tensor) or t.dim() < 3 or t.shape[-1] != 3 or t.dtype != torch.uint8:
        got = f"{t.dtype} {tuple(t.shape)}" if hasattr(t, "shape") else type(image).__name__
        raise InputError(
            f"image must be uint8 RGB (H, W, 3) or (B, H, W, 3), got {got}; read files with "
            "entitwist.imaging.read_image"
        )
    if min(t.shape[-3], t.shape[-2]) < 1:
        raise InputError(
            f"image has shape {tuple(t.shape)}: it is empty; give an image with pixels"
        )
    x = resize_image(t.cpu().movedim(-1, -3), size)  # (..., 3, h, w) uint8
    device = mean.device if isinstance(mean, torch.Tensor) else x.device
    return normalize(x.to(device), mean, std).contiguous()
