"""The interface every entity-mask generator implements, and the helpers they share.

:class:`MaskGenerator` (``gen(image uint8 (H, W, 3)) -> list of bool (H, W) masks``, with
``.name``, ``.params`` and ``.checkpoint_sha256``), the image check, the bilinear resize,
the contrast stretch and the file hash. The generators themselves are in
:mod:`entitwist.entities.generators` (weight-free ones and the registry) and
:mod:`entitwist.entities.sam` (SAM); both import this module, never each other's back.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from entitwist.errors import ConfigError, InputError

__all__ = ["MaskGenerator", "check_image", "contrast_stretch", "resize_image", "sha256_file"]


def check_image(image: Any) -> np.ndarray:
    """Return ``image`` as a C-contiguous uint8 (H, W, 3) array or raise :class:`InputError`."""
    if not isinstance(image, np.ndarray):
        raise InputError(
            f"entity generators take a numpy uint8 (H, W, 3) image, got {type(image).__name__}; "
            "convert it with np.asarray(PIL.Image.open(path).convert('RGB'))"
        )
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(
            f"entity generators take a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}; "
            "convert it to 8-bit RGB first"
        )
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise InputError(f"image of size {image.shape[:2]} is too small for entity masks")
    return np.ascontiguousarray(image)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 (H, W, 3) image to ``size`` = (H, W) with bilinear filtering (PIL)."""
    from PIL import Image

    if image.shape[:2] == tuple(size):
        return image
    pil = Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(pil)


def contrast_stretch(image: np.ndarray, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """Map the ``low``..``high`` percentiles (over all channels together) to 0..255.

    One range for the three channels keeps the colours' ratios. Hazy, low-contrast aerial
    tiles otherwise merge into one or two graph segments.
    """
    lo, hi = np.percentile(image, [low, high])
    scaled = (image.astype(np.float32) - lo) * (255.0 / max(float(hi - lo), 1.0))
    return np.clip(scaled, 0, 255).round().astype(np.uint8)  # (H, W, 3)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _check_params(name: str, params: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {', '.join(unknown)} for entity generator {name!r}; "
            f"valid: {', '.join(sorted(defaults))}"
        )
    merged = dict(defaults)
    for key, value in params.items():
        default = defaults[key]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, str)
        if not ok:
            raise ConfigError(
                f"parameter {key}={value!r} of entity generator {name!r} must be of type "
                f"{type(default).__name__}"
            )
        merged[key] = value
    return merged


class MaskGenerator:
    """Base class: ``gen(image uint8 (H, W, 3)) -> list of bool (H, W) masks``.

    Subclasses set ``name`` and ``DEFAULTS`` (every parameter that changes the output, with
    its default) and implement :meth:`generate`.
    """

    name: str = ""
    DEFAULTS: dict[str, Any] = {}

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = _check_params(self.name, params, self.DEFAULTS)
        self.checkpoint_sha256: str | None = None

    @property
    def is_default(self) -> bool:
        """True when every output-changing parameter has its default value."""
        return self.params == self.DEFAULTS

    def __call__(self, image: np.ndarray) -> list[np.ndarray]:
        """Masks of ``image`` (uint8 (H, W, 3)): a list of bool (H, W) arrays, any order."""
        return self.generate(check_image(image))

    def generate(self, image: np.ndarray) -> list[np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"
