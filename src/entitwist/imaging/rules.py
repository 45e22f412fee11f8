"""The band rule and the stretch rule: raw pixel values -> the uint8 RGB the network sees.

Every reader of entitwist (datasets, ``entitwist entities``, :class:`~entitwist.Predictor`,
``entitwist segment``, the app) turns an image into uint8 RGB with these functions, so one
file gives one picture whichever way it enters.

Band rule (:func:`parse_bands`): three 1-based band numbers (GDAL order) pick R, G, B; one
band number is copied to three. Default: bands 1, 2, 3 when the image has three or more
(RGB files, and the common blue-green-red-NIR order of 4-band products keeps its first
three), else band 1 x 3 (grey, grey + alpha). Alpha is never a band: it marks nodata.

Stretch rule (:func:`resolve_stretch`, :func:`compute_stretch`, :func:`apply_stretch`):

- uint8 imagery is used as it is (no stretch), unless a stretch is asked for;
- any other type (16-bit, 32-bit, float) is mapped to 0..255 by a per-band linear stretch
  between the 2nd and 98th percentiles of the band's valid pixels (nodata, masked and NaN
  pixels excluded), clipped. Per band because multispectral bands have different ranges
  (a joint stretch leaves the dim bands dark); 2-98 % because a few saturated or specular
  pixels would otherwise compress everything else (the usual cumulative cut of GIS
  viewers). The statistics come from the whole image (for a large scene: from its
  whole-scene overview), never from a tile, so every tile gets the same mapping;
- when a band's percentiles coincide but the band is not constant (a mostly flat band),
  its min..max is used instead; a band that is constant over its valid pixels, or an
  image without valid pixels, cannot be stretched: :class:`~entitwist.errors.InputError`
  naming the image and the fix (``--bands`` or ``--stretch none``);
- ``stretch="none"`` uses the values as they are, clipped to 0..255; ``(low, high)``
  stretches between those percentiles (uint8 imagery too).

Nodata pixels are black (0, 0, 0) in the picture.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from entitwist.errors import InputError

__all__ = [
    "DEFAULT_STRETCH",
    "Stretch",
    "parse_bands",
    "parse_stretch",
    "resolve_stretch",
    "stretch_to_json",
    "compute_stretch",
    "apply_stretch",
    "raw_to_rgb",
    "read_options",
]

DEFAULT_STRETCH = (2.0, 98.0)

# None: the default rule; "none": no stretch; (low, high): those percentiles.
Stretch = tuple[float, float] | Literal["none"] | None


def parse_bands(spec: str | Sequence[int] | None, count: int) -> list[int]:
    """Return three 1-based band indices from ``"3,2,1"``, ``"1"``, a list, or None.

    Raises :class:`InputError` for a malformed list, a band outside ``1..count``, or a
    number of bands other than one or three.
    """
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return [1, 2, 3] if count >= 3 else [1, 1, 1]
    if isinstance(spec, str):
        try:
            bands = [int(part) for part in spec.split(",")]
        except ValueError:
            raise InputError(
                f"--bands {spec!r} is not a comma-separated list of band numbers; "
                "write e.g. --bands 3,2,1"
            ) from None
    else:
        bands = [int(b) for b in spec]
    if len(bands) not in (1, 3):
        raise InputError(
            f"--bands {','.join(map(str, bands))} selects {len(bands)} bands; give one band "
            "(copied to RGB) or three"
        )
    bad = [b for b in bands if not 1 <= b <= count]
    if bad:
        raise InputError(
            f"band {bad[0]} is out of range: the image has {count} band(s), numbered "
            f"1..{count}; fix --bands"
        )
    return bands * 3 if len(bands) == 1 else bands


def parse_stretch(spec: str | Sequence[float] | None) -> Stretch:
    """Parse a stretch option.

    ``None``/``"auto"`` -> None (the default rule); ``"none"`` -> ``"none"`` (values used
    as they are); ``"2,98"`` or ``(2, 98)`` -> ``(2.0, 98.0)`` percentiles.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in {"", "auto"}):
        return None
    if isinstance(spec, str) and spec.strip().lower() == "none":
        return "none"
    try:
        parts = (
            [float(p) for p in spec.split(",")]
            if isinstance(spec, str)
            else [float(p) for p in spec]
        )
    except (TypeError, ValueError):
        raise InputError(
            f"--stretch {spec!r} is not two percentiles; write e.g. --stretch 2,98 "
            "(or auto, or none)"
        ) from None
    if len(parts) != 2 or not all(math.isfinite(p) for p in parts):
        raise InputError(
            f"--stretch {spec!r} is not two percentiles; write e.g. --stretch 2,98 "
            "(or auto, or none)"
        )
    lo, hi = parts
    if not 0.0 <= lo < hi <= 100.0:
        raise InputError(
            f"--stretch {lo:g},{hi:g} must satisfy 0 <= low < high <= 100; write e.g. "
            "--stretch 2,98"
        )
    return lo, hi


def stretch_to_json(stretch: Stretch) -> Any:
    """The JSON form of a parsed stretch: None, ``"none"`` or ``[low, high]``."""
    return list(stretch) if isinstance(stretch, tuple) else stretch


def resolve_stretch(dtype: np.dtype | str, stretch: Stretch) -> tuple[float, float] | None:
    """The percentiles the rule applies to imagery of ``dtype`` (None: no stretch)."""
    if stretch == "none":
        return None
    if stretch is None:
        return None if np.dtype(dtype) == np.uint8 else DEFAULT_STRETCH
    return (float(stretch[0]), float(stretch[1]))


def compute_stretch(
    data: np.ndarray,
    valid: np.ndarray,
    percentiles: tuple[float, float],
    *,
    bands: Sequence[int] | None = None,
    source: str = "the image",
) -> tuple[np.ndarray, np.ndarray]:
    """Per-band stretch limits from the valid pixels.

    Args:
        data: (C, H, W) raw values (float32 from the readers).
        valid: (H, W) bool.
        percentiles: (low, high) in 0..100.
        bands: the 1-based band number of each channel (for the error message).
        source: the image's name (for the error message).
    Returns:
        ``lows``, ``highs``: (C,) float64 with ``highs > lows``.
    Raises:
        InputError: no valid pixel, or a band constant over the valid pixels.
    """
    if not valid.any():
        raise InputError(
            f"every pixel of {source} is nodata; nothing to stretch or segment (check the "
            "file, or --nodata)"
        )
    bands = list(bands) if bands is not None else list(range(1, data.shape[0] + 1))
    lows = np.zeros(data.shape[0])
    highs = np.ones(data.shape[0])
    for c in range(data.shape[0]):
        values = data[c][valid & np.isfinite(data[c])].astype(np.float64)
        if values.size == 0:
            raise InputError(
                f"band {bands[c]} of {source} has no valid pixel; choose other bands with --bands"
            )
        lo, hi = np.percentile(values, percentiles)
        if not hi > lo:  # a mostly flat band: its full range
            lo, hi = float(values.min()), float(values.max())
        if not hi > lo:
            raise InputError(
                f"band {bands[c]} of {source} is constant ({lo:g}) over its valid pixels, so "
                f"the {percentiles[0]:g}-{percentiles[1]:g} % stretch is undefined; choose "
                "other bands with --bands, or use the values as they are with --stretch none"
            )
        lows[c], highs[c] = lo, hi
    return lows, highs


def apply_stretch(
    data: np.ndarray, lows: np.ndarray, highs: np.ndarray, *, inplace: bool = False
) -> np.ndarray:
    """Map (C, H, W) raw values linearly so that ``lows -> 0`` and ``highs -> 255``, clipped.

    Returns (C, H, W) uint8 (rounded to nearest); NaN becomes 0. ``inplace=True`` reuses
    ``data`` (float32) as the work buffer, which keeps a large tile's peak memory to about
    twice its size.
    """
    lows = np.asarray(lows, dtype=np.float32)[:, None, None]
    highs = np.asarray(highs, dtype=np.float32)[:, None, None]
    work = data if (inplace and data.dtype == np.float32) else data.astype(np.float32)
    work -= lows
    work *= 255.0 / (highs - lows)
    np.nan_to_num(work, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
    np.clip(work, 0, 255, out=work)
    np.rint(work, out=work)
    return work.astype(np.uint8)


def read_options(
    bands: str | Sequence[int] | None,
    stretch: str | Sequence[float] | None,
    recorded: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``bands`` and parsed ``stretch`` for a reader: the options given, else the ones the
    model recorded (``Predictor.read_options`` / ``config.imaging``), else the rules."""
    recorded = recorded or {}
    return {
        "bands": bands if bands is not None else recorded.get("bands"),
        "stretch": parse_stretch(stretch if stretch is not None else recorded.get("stretch")),
    }


def raw_to_rgb(
    data: np.ndarray,
    valid: np.ndarray,
    limits: tuple[np.ndarray, np.ndarray] | None,
    *,
    inplace: bool = False,
) -> np.ndarray:
    """(3, h, w) raw values -> (h, w, 3) uint8: stretched with ``limits`` (lows, highs), or
    with None rounded and clipped to 0..255; invalid pixels black."""
    if limits is None:
        work = data if (inplace and data.dtype == np.float32) else data.astype(np.float32)
        np.nan_to_num(work, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        np.clip(work, 0, 255, out=work)
        np.rint(work, out=work)
        out = work.astype(np.uint8)
    else:
        out = apply_stretch(data, limits[0], limits[1], inplace=inplace)
    out[:, ~valid] = 0
    return np.ascontiguousarray(out.transpose(1, 2, 0))  # (h, w, 3)
