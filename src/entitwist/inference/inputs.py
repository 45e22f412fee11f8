"""What a :class:`~entitwist.inference.predictor.Predictor` is given, checked: the device
(:func:`resolve_device`) and the picture (:func:`as_rgb_image`), each a one-line
:class:`~entitwist.errors.InputError` when it cannot be used.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from entitwist.errors import InputError

__all__ = ["as_rgb_image", "resolve_device"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> cuda when available, else cpu; otherwise check the named device."""
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(
            f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"--device {device} was asked for but CUDA is not available; use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(
                f"--device {device}: only {torch.cuda.device_count()} CUDA device(s); pick another"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(
            f"--device {device} was asked for but MPS is not available; use --device cpu"
        )
    elif dev.type not in {"cpu", "cuda", "mps"}:
        raise InputError(f"--device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    return dev


def as_rgb_image(
    image: np.ndarray | str | os.PathLike, read_options: dict[str, Any] | None = None
) -> np.ndarray:
    """A picture as uint8 (H, W, 3): a path is read with ``read_options``
    (:func:`entitwist.imaging.read_image`), a grey or RGBA array becomes RGB; anything else
    is a one-line :class:`InputError`."""
    if isinstance(image, (str, os.PathLike)):
        from entitwist.imaging import read_image

        image = read_image(image, **(read_options or {}))
    if not isinstance(image, np.ndarray):
        raise InputError(
            f"image must be a numpy uint8 (H, W, 3) array or a path, not {type(image).__name__}"
        )
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise InputError(f"image has shape {image.shape}; give an (H, W, 3) RGB array")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"image has shape {image.shape}: it is empty; give an image with pixels")
    if image.dtype != np.uint8:
        raise InputError(
            f"image dtype is {image.dtype}; give uint8 (scale 16-bit or float imagery first)"
        )
    return image
