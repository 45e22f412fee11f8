"""An overlay picture: the image, the predicted mask tinted and outlined, the sentence on top.

:func:`render_overlay` returns a PIL image (the mask blended in ``color`` at ``alpha``, its
outline drawn fully opaque, a dark banner above the image holding the sentence, wrapped);
large scenes are shown reduced so that the longer side is at most ``max_side``.
"""

from __future__ import annotations

import os
import textwrap
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["render_overlay", "save_overlay"]


def _outline(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: mask pixels with a 4-neighbour outside the mask."""
    padded = np.pad(mask, 1, mode="constant", constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow >= 10.1)
    except (TypeError, OSError, ImportError):  # pragma: no cover - old Pillow or no FreeType
        return ImageFont.load_default()


def render_overlay(
    rgb: np.ndarray,
    mask: np.ndarray,
    sentence: str,
    *,
    max_side: int = 1600,
    color: tuple[int, int, int] = (255, 48, 48),
    alpha: float = 0.45,
) -> Image.Image:
    """Blend ``mask`` (H, W) bool over ``rgb`` (H, W, 3) uint8 and write ``sentence`` above it.

    Returns an RGB PIL image of width ``w`` and height ``h + banner`` where ``(h, w)`` is the
    input reduced (nearest for the mask, area for the image) to fit ``max_side``.
    """
    if rgb.shape[:2] != mask.shape:
        raise ValueError(f"image {rgb.shape[:2]} and mask {mask.shape} differ in size")
    h, w = mask.shape
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))
        mask = (
            np.asarray(
                Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)
            )
            > 0
        )
        h, w = mask.shape
    out = rgb.astype(np.float32)
    tint = np.asarray(color, dtype=np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * tint
    out[_outline(mask)] = tint
    picture = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))

    font_size = max(12, min(28, w // 28))
    font = _font(font_size)
    chars = max(10, int(w / (0.55 * font_size)))
    lines = textwrap.wrap(f'"{sentence}"', width=chars) or ['""']
    line_h = font_size + 4
    banner = len(lines) * line_h + 8
    canvas = Image.new("RGB", (w, h + banner), (20, 20, 20))
    canvas.paste(picture, (0, banner))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((6, 4 + i * line_h), line, fill=(255, 255, 255), font=font)
    return canvas


def save_overlay(
    path: str | os.PathLike, rgb: np.ndarray, mask: np.ndarray, sentence: str, **kwargs: Any
) -> None:
    """Render (see :func:`render_overlay`) and save as PNG."""
    render_overlay(rgb, mask, sentence, **kwargs).save(path, format="PNG", optimize=True)
