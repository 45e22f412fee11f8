"""Reading user imagery (PNG, JPEG, TIFF, GeoTIFF) through rasterio windows, and writing
aligned GeoTIFF outputs.

A :class:`RasterSource` opens a file once, checks it (exists, is a readable regular file,
a supported format, not empty or corrupt, at least :data:`MIN_SIDE` pixels a side) and
turns any window of it into what the network eats: uint8 RGB ``(h, w, 3)`` plus a validity
mask ``(h, w)`` (False on nodata, masked or NaN pixels). The choices made on the way:

- bands: ``bands=[3, 2, 1]`` (1-based, GDAL order) picks the three channels; one band is
  copied to three. Default: bands 1, 2, 3 when there are three or more, else band 1 x 3.
- stretch: uint8 imagery is used as is; 16-bit, 32-bit and float imagery is mapped to
  uint8 by a per-band percentile stretch (``(2, 98)`` by default) whose limits are measured
  once on the whole-scene overview (so every tile of a large scene gets the same mapping).
  An explicit ``stretch=(lo, hi)`` also applies to uint8 imagery.
- nodata: the file's nodata value / mask / alpha band (through GDAL's per-band masks), NaN,
  or an override ``nodata=value``. Nodata pixels are black in the RGB and never valid.

Memory stays bounded: :meth:`RasterSource.overview` reduces the scene strip by strip, and
tiles are read as windows. Writing goes through :func:`open_writer` (tiled, compressed
GeoTIFF with the input's CRS and affine transform, written window by window).

rasterio is imported here at module level: this module is only imported by the inference
code, never by the model or data core. Wrap long jobs in :func:`gdal_env` to bound GDAL's
block cache.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.windows import Window

from entitwist.errors import InputError

__all__ = [
    "MIN_SIDE",
    "SUPPORTED_SUFFIXES",
    "DEFAULT_STRETCH",
    "RasterSource",
    "parse_bands",
    "parse_stretch",
    "compute_stretch",
    "apply_stretch",
    "open_writer",
    "gdal_env",
]

MIN_SIDE = 4  # the smallest image side (pixels) worth segmenting
SUPPORTED_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DEFAULT_STRETCH = (2.0, 98.0)
GDAL_CACHE_MB = 128  # bounds GDAL's block cache (its default is 5 % of RAM)


def gdal_env() -> rasterio.Env:
    """A rasterio environment with a small block cache and no ``.aux.xml`` side files."""
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB, GDAL_PAM_ENABLED="NO", CPL_LOG="/dev/null")


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
                f"--bands {spec!r} is not a comma-separated list of band numbers; write e.g. --bands 3,2,1"
            ) from None
    else:
        bands = [int(b) for b in spec]
    if len(bands) not in (1, 3):
        raise InputError(
            f"--bands {','.join(map(str, bands))} selects {len(bands)} bands; give one band (copied to RGB) or three"
        )
    bad = [b for b in bands if not 1 <= b <= count]
    if bad:
        raise InputError(
            f"band {bad[0]} is out of range: the image has {count} band(s), numbered 1..{count}; fix --bands"
        )
    return bands * 3 if len(bands) == 1 else bands


def parse_stretch(spec: str | Sequence[float] | None) -> tuple[float, float] | None:
    """Parse ``"2,98"`` (percentiles) into a tuple; None/``"auto"`` -> None (the default rule)."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in {"", "auto"}):
        return None
    try:
        parts = (
            [float(p) for p in spec.split(",")]
            if isinstance(spec, str)
            else [float(p) for p in spec]
        )
    except ValueError:
        raise InputError(
            f"--stretch {spec!r} is not two percentiles; write e.g. --stretch 2,98"
        ) from None
    if len(parts) != 2 or not all(math.isfinite(p) for p in parts):
        raise InputError(f"--stretch {spec!r} is not two percentiles; write e.g. --stretch 2,98")
    lo, hi = parts
    if not 0.0 <= lo < hi <= 100.0:
        raise InputError(
            f"--stretch {lo:g},{hi:g} must satisfy 0 <= low < high <= 100; write e.g. --stretch 2,98"
        )
    return lo, hi


def compute_stretch(
    data: np.ndarray, valid: np.ndarray, percentiles: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-band stretch limits from the valid pixels.

    Args:
        data: (C, H, W) float32 raw values.
        valid: (H, W) bool.
        percentiles: (low, high) in 0..100.
    Returns:
        ``lows``, ``highs``: (C,) float64 with ``highs > lows``.
    """
    lows = np.zeros(data.shape[0])
    highs = np.ones(data.shape[0])
    for c in range(data.shape[0]):
        values = data[c][valid & np.isfinite(data[c])]
        if values.size == 0:
            continue
        lo, hi = np.percentile(values, percentiles)
        if not hi > lo:  # a constant band: map its value to mid grey rather than dividing by 0
            lo, hi = lo - 0.5, lo + 0.5
        lows[c], highs[c] = lo, hi
    return lows, highs


def apply_stretch(
    data: np.ndarray, lows: np.ndarray, highs: np.ndarray, *, inplace: bool = False
) -> np.ndarray:
    """Map (C, H, W) raw values linearly so that ``lows -> 0`` and ``highs -> 255``, clipped.

    Returns (C, H, W) uint8; NaN becomes 0. ``inplace=True`` reuses ``data`` (float32) as
    the work buffer, which keeps a large tile's peak memory to about twice its size.
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


def _check_path(path: Path) -> None:
    if not path.exists():
        raise InputError(f"image {str(path)!r} does not exist; check the path")
    if path.is_dir():
        raise InputError(
            f"image {str(path)!r} is a directory; give an image file (PNG, JPEG, TIFF or GeoTIFF)"
        )
    if not path.is_file():
        raise InputError(f"image {str(path)!r} is not a regular file; give an image file")
    if not os.access(path, os.R_OK):
        raise InputError(
            f"image {str(path)!r} is not readable (permission denied); fix its permissions"
        )
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise InputError(
            f"image {str(path)!r} has an unsupported format {path.suffix or '(no suffix)'!r}; "
            f"convert it to one of {', '.join(SUPPORTED_SUFFIXES)}"
        )
    if path.stat().st_size == 0:
        raise InputError(f"image {str(path)!r} is empty (0 bytes); re-export or re-download it")


@dataclass
class _Stretch:
    lows: np.ndarray
    highs: np.ndarray


class RasterSource:
    """An opened image file, read window by window as uint8 RGB plus a validity mask.

    Args:
        path: PNG, JPEG, TIFF or GeoTIFF.
        bands: ``"3,2,1"``, a list of 1-based band numbers, or None (see :func:`parse_bands`).
        stretch: (low, high) percentiles, or None for the default rule (uint8 as is, other
            types ``(2, 98)``).
        nodata: a value that marks missing pixels, overriding the file's own nodata.

    Attributes: ``width``, ``height``, ``count``, ``dtype``, ``crs`` (``rasterio.crs.CRS`` or
    None), ``transform`` (``affine.Affine``), ``georeferenced`` (a non-identity transform),
    ``bands`` (three 1-based indices).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        bands: str | Sequence[int] | None = None,
        stretch: tuple[float, float] | None = None,
        nodata: float | None = None,
    ) -> None:
        self.path = Path(path)
        _check_path(self.path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self.ds = rasterio.open(self.path)
        except (RasterioError, OSError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(
                f"cannot read image {str(self.path)!r} ({reason[:160]}); the file is truncated, corrupt or "
                "not an image: re-export or re-download it"
            ) from None
        try:
            self._init_checks(bands, stretch, nodata)
        except BaseException:
            self.close()
            raise

    def _init_checks(
        self, bands: Any, stretch: tuple[float, float] | None, nodata: float | None
    ) -> None:
        ds = self.ds
        self.width, self.height, self.count = ds.width, ds.height, ds.count
        if self.count == 0:
            raise InputError(f"image {str(self.path)!r} has no raster bands; give an image file")
        if min(self.width, self.height) < MIN_SIDE:
            raise InputError(
                f"image {str(self.path)!r} is {self.width}x{self.height} pixels; it must be at least "
                f"{MIN_SIDE}x{MIN_SIDE} to be segmented"
            )
        self.dtype = np.dtype(ds.dtypes[0])
        if self.dtype.kind == "c":
            raise InputError(
                f"image {str(self.path)!r} holds complex numbers; convert it to real-valued bands"
            )
        self.bands = parse_bands(bands, self.count)
        self.unique_bands = sorted(set(self.bands))
        self.crs = ds.crs if ds.crs else None
        self.transform = ds.transform
        self.georeferenced = not self.transform.is_identity
        self.nodata_override = None if nodata is None else float(nodata)
        self._mask_mode, self._nodata_values = self._mask_strategy()
        self.stretch_percentiles = stretch
        if stretch is None and self.dtype != np.uint8:
            self.stretch_percentiles = DEFAULT_STRETCH
        self._stretch: _Stretch | None = None
        # Read one pixel now so that a file whose header is fine but whose data is truncated
        # fails here with a clear message (a deeper truncation is caught on each read).
        self.read_raw(Window(0, 0, 1, 1))
        self.read_raw(Window(self.width - 1, self.height - 1, 1, 1))

    def _mask_strategy(self) -> tuple[str, list[float | None]]:
        """How validity is found: ``"value"`` (compare with nodata values), ``"all"`` (no
        mask), or ``"gdal"`` (alpha band / internal mask through ``read_masks``)."""
        from rasterio.enums import MaskFlags

        if self.nodata_override is not None:
            return "value", [self.nodata_override] * len(self.unique_bands)
        flags = [self.ds.mask_flag_enums[b - 1] for b in self.unique_bands]
        if all(f == [MaskFlags.all_valid] for f in flags):
            return "all", []
        if all(MaskFlags.nodata in f for f in flags):
            return "value", [self.ds.nodatavals[b - 1] for b in self.unique_bands]
        return "gdal", []

    # ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the file."""
        if getattr(self, "ds", None) is not None:
            self.ds.close()
            self.ds = None

    def __enter__(self) -> RasterSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the full-resolution grid."""
        return self.height, self.width

    def _read_error(self, exc: BaseException) -> InputError:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return InputError(
            f"cannot read the pixels of {str(self.path)!r} ({reason[:160]}); the file is truncated or "
            "corrupt: re-export or re-download it"
        )

    def read_raw(self, window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Read the selected bands of a window at full resolution.

        Returns:
            ``data`` (3, h, w) float32 raw values (nodata pixels are NaN), ``valid`` (h, w) bool.
        """
        window = window or Window(0, 0, self.width, self.height)
        try:
            raw = self.ds.read(self.unique_bands, window=window, out_dtype="float32")  # (U, h, w)
            if self._mask_mode == "value":  # nodata value: compare, no second decode
                valid = np.ones(raw.shape[1:], dtype=bool)
                for band, value in zip(raw, self._nodata_values):
                    if value is not None and not np.isnan(value):
                        valid &= band != np.float32(value)
            elif self._mask_mode == "all":
                valid = np.ones(raw.shape[1:], dtype=bool)
            else:  # alpha band or internal mask: ask GDAL
                masks = self.ds.read_masks(self.unique_bands, window=window)  # (U, h, w) 0/255
                valid = np.all(masks > 0, axis=0)
        except (RasterioIOError, RasterioError, OSError) as exc:
            raise self._read_error(exc) from None
        for band in raw:
            valid &= np.isfinite(band)
        if self.bands == self.unique_bands:
            data = raw  # (3, h, w) already in order: no copy
        else:
            index = {b: i for i, b in enumerate(self.unique_bands)}
            data = raw[[index[b] for b in self.bands]]  # (3, h, w)
        data[:, ~valid] = np.nan
        return data, valid

    def read_valid(self, window: Window) -> np.ndarray:
        """(h, w) bool validity of a window (False on nodata / masked / NaN pixels)."""
        return self.read_raw(window)[1]

    def overview(self, max_side: int, progress: Any = None) -> tuple[np.ndarray, np.ndarray, int]:
        """The whole scene reduced by an integer factor so that its longer side <= ``max_side``.

        Each overview pixel is the mean of the valid full-resolution pixels of its
        ``factor x factor`` block (NaN where none is valid). Read strip by strip, so memory
        is bounded by a few strips of ``factor`` rows.

        Returns:
            ``data`` (3, h, w) float32, ``valid`` (h, w) bool, ``factor`` (int >= 1) with
            ``h = ceil(H / factor)``, ``w = ceil(W / factor)``.
        """
        factor = max(1, math.ceil(max(self.height, self.width) / max_side))
        if factor == 1:
            data, valid = self.read_raw()
            return data, valid, 1
        h, w = math.ceil(self.height / factor), math.ceil(self.width / factor)
        data = np.full((3, h, w), np.nan, dtype=np.float32)
        valid = np.zeros((h, w), dtype=bool)
        rows_per_strip = max(1, (4 << 20) // (factor * self.width))  # ~16 MB of float32 a band
        for oy in range(0, h, rows_per_strip):
            oy1 = min(h, oy + rows_per_strip)
            y0, y1 = oy * factor, min(self.height, oy1 * factor)
            raw, ok = self.read_raw(Window(0, y0, self.width, y1 - y0))  # (3, sh, W)
            sh_pad, sw_pad = (oy1 - oy) * factor, w * factor
            raw_p = np.zeros((3, sh_pad, sw_pad), dtype=np.float32)
            ok_p = np.zeros((sh_pad, sw_pad), dtype=bool)
            raw_p[:, : y1 - y0, : self.width] = np.where(ok, raw, 0.0)
            ok_p[: y1 - y0, : self.width] = ok
            count = ok_p.reshape(oy1 - oy, factor, w, factor).sum(axis=(1, 3))  # (sh, w)
            total = raw_p.reshape(3, oy1 - oy, factor, w, factor).sum(axis=(2, 4))  # (3, sh, w)
            with np.errstate(invalid="ignore", divide="ignore"):
                data[:, oy:oy1] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
            valid[oy:oy1] = count > 0
            if progress is not None:
                progress.update(y1 - y0)
        return data, valid, factor

    def set_stretch_from(self, data: np.ndarray, valid: np.ndarray) -> None:
        """Measure the stretch limits on ``data`` (3, h, w) (normally the overview)."""
        if not valid.any():
            raise InputError(
                f"every pixel of {str(self.path)!r} is nodata; nothing to segment (check the file or --nodata)"
            )
        if self.stretch_percentiles is None:
            self._stretch = None
        else:
            lows, highs = compute_stretch(data, valid, self.stretch_percentiles)
            self._stretch = _Stretch(lows, highs)

    def to_rgb(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(3, h, w) raw -> (h, w, 3) uint8 with the scene's stretch; nodata pixels black.

        ``data`` is overwritten (it is used as the work buffer).
        """
        if self._stretch is None:
            if self.stretch_percentiles is not None:
                raise RuntimeError("call set_stretch_from() (or overview()) before to_rgb()")
            out = np.clip(np.nan_to_num(data, nan=0.0), 0, 255).astype(np.uint8)
        else:
            out = apply_stretch(data, self._stretch.lows, self._stretch.highs, inplace=True)
        out[:, ~valid] = 0
        return np.ascontiguousarray(out.transpose(1, 2, 0))  # (h, w, 3)

    def read_rgb(self, window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Read a window as ``rgb`` (h, w, 3) uint8 and ``valid`` (h, w) bool."""
        # to_rgb may use the freshly read float buffer as its work space
        data, valid = self.read_raw(window)
        return self.to_rgb(data, valid), valid


def open_writer(
    path: str | os.PathLike,
    source: RasterSource,
    *,
    dtype: str,
    nodata: float | None = None,
    georeference: bool = True,
    block: int = 256,
) -> rasterio.io.DatasetWriter:
    """Open a one-band tiled, deflate-compressed GeoTIFF on the source's grid for writing.

    The output has the source's width, height, affine transform and CRS (pixel-aligned);
    ``georeference=False`` writes neither (temporary files). Write it window by window with
    ``dst.write(array, 1, window=...)`` and close it.
    """
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": source.width,
        "height": source.height,
        "count": 1,
        "dtype": dtype,
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    if nodata is not None:
        profile["nodata"] = nodata
    if georeference and source.crs is not None:
        profile["crs"] = source.crs
    if georeference and source.georeferenced:
        profile["transform"] = source.transform
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path, "w", **profile)
