"""Reading user imagery (PNG, JPEG, TIFF, GeoTIFF) through rasterio windows, and writing
aligned GeoTIFF outputs.

A :class:`RasterSource` opens a file once, checks it (exists, is a readable regular file,
a supported format, not empty or corrupt, at least :data:`MIN_SIDE` pixels a side) and
turns any window of it into what the network eats: uint8 RGB ``(h, w, 3)`` plus a validity
mask ``(h, w)`` (False on nodata, masked or NaN pixels). The choices made on the way:

- bands and stretch: the rules of :mod:`entitwist.imaging.rules` (default bands 1, 2, 3
  or band 1 x 3; uint8 as is, other types a per-band 2-98 % percentile stretch), with
  limits measured once on the whole-scene overview (so every tile of a large scene gets
  the same mapping; for a scene that fits the overview they equal
  :func:`entitwist.imaging.read_image`'s).
- decoding: TIFF / GeoTIFF through GDAL; PNG, JPEG and other plain images through PIL
  (:func:`entitwist.imaging.decode_pil`, the decoder of the datasets), held in memory as a
  GDAL dataset with the file's georeferencing (world file) and alpha as its mask
  (:mod:`entitwist.inference.raster_open`).
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
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.windows import Window

from entitwist.errors import InputError
from entitwist.imaging import (
    Stretch,
    compute_stretch,
    parse_bands,
    raw_to_rgb,
    resolve_stretch,
)
from entitwist.inference.raster_open import check_image_path, open_dataset

__all__ = [
    "MIN_SIDE",
    "RasterSource",
    "open_writer",
    "gdal_env",
]

MIN_SIDE = 4  # the smallest image side (pixels) worth segmenting
GDAL_CACHE_MB = 128  # bounds GDAL's block cache (its default is 5 % of RAM)


def gdal_env() -> rasterio.Env:
    """A rasterio environment with a small block cache and no ``.aux.xml`` side files."""
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB, GDAL_PAM_ENABLED="NO", CPL_LOG="/dev/null")


class RasterSource:
    """An opened image file, read window by window as uint8 RGB plus a validity mask.

    Args:
        path: PNG, JPEG, TIFF or GeoTIFF.
        bands: ``"3,2,1"``, a list of 1-based band numbers, or None (see :func:`parse_bands`).
        stretch: None (the default rule: uint8 as is, other types ``(2, 98)``),
            ``"none"`` (values as they are), or (low, high) percentiles; see
            :func:`entitwist.imaging.parse_stretch`.
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
        stretch: Stretch = None,
        nodata: float | None = None,
    ) -> None:
        self.path = Path(path)
        check_image_path(self.path)
        self.ds, self._memfile = open_dataset(self.path)
        try:
            self._init_checks(bands, stretch, nodata)
        except BaseException:
            self.close()
            raise

    def _init_checks(self, bands: Any, stretch: Stretch, nodata: float | None) -> None:
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
        self.stretch_percentiles = resolve_stretch(self.dtype, stretch)
        self._limits: tuple[np.ndarray, np.ndarray] | None = None
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
        if getattr(self, "_memfile", None) is not None:
            self._memfile.close()
            self._memfile = None

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

    def overview(
        self, max_side: int, progress: Any = None, method: str = "auto"
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """The whole scene reduced by an integer factor so that its longer side <= ``max_side``.

        Each overview pixel is the mean of the valid full-resolution pixels of its
        ``factor x factor`` block (NaN where none is valid; blocks at the right and bottom
        edges are smaller). GDAL computes it (``out_shape`` with ``Resampling.average``,
        nodata and masks excluded, integer imagery averaged in its own type, so within half
        a unit) from the file's overviews when it has them (``gdaladdo``), so a large scene
        is not decoded at full resolution (overview pixels are the file's: exact blocks when
        the sides are multiples of the factor). Without overviews GDAL would decode every
        pixel too, several times slower than summing full-resolution strips here (measured
        8x on a 2,000^2 uint16 GeoTIFF), so ``method="auto"`` reads strips then, and also
        for an override ``nodata`` value or NaN in float imagery that declares no nodata,
        which GDAL does not exclude. ``method="gdal"`` / ``"blocks"`` force one. Memory is
        bounded by one strip either way.

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
        # GDAL cannot exclude an override value, nor NaN in float data that declares no nodata
        undeclared_nan = self.dtype.kind == "f" and self._mask_mode == "all"
        can_gdal = self.nodata_override is None and not undeclared_nan
        if method not in {"auto", "gdal", "blocks"}:
            raise ValueError(f"method={method!r}; use auto, gdal or blocks")
        if method == "auto":
            has_overviews = any(self.ds.overviews(b) for b in self.unique_bands)
            method = "gdal" if can_gdal and has_overviews else "blocks"
        if method == "gdal" and not can_gdal:
            raise ValueError("GDAL cannot exclude an override nodata value or undeclared NaN")
        reduce = self._gdal_means if method == "gdal" else self._block_means
        rows_per_strip = max(1, (4 << 20) // (factor * self.width))  # ~16 MB of float32 a band
        for oy in range(0, h, rows_per_strip):
            oy1 = min(h, oy + rows_per_strip)
            y0, y1 = oy * factor, min(self.height, oy1 * factor)
            data[:, oy:oy1], valid[oy:oy1] = reduce(y0, y1, factor)
            if progress is not None:
                progress.update(y1 - y0)
        return data, valid, factor

    def _gdal_means(self, y0: int, y1: int, factor: int) -> tuple[np.ndarray, np.ndarray]:
        """Block means of rows ``y0:y1`` by GDAL's average resampling: one read per part
        whose sides are whole multiples of ``factor`` (the last row / column of blocks may
        be shorter), so every output pixel is exactly one block."""
        from rasterio.enums import Resampling

        def parts(start: int, stop: int) -> list[tuple[int, int, int]]:
            full = start + (stop - start) // factor * factor
            out = [(start, full, (full - start) // factor)] if full > start else []
            return out + ([(full, stop, 1)] if stop > full else [])

        rows, cols = parts(y0, y1), parts(0, self.width)
        h, w = sum(n for *_, n in rows), sum(n for *_, n in cols)
        raw = np.empty((len(self.unique_bands), h, w), dtype=np.float32)
        masks = np.full((len(self.unique_bands), h, w), 255, dtype=np.uint8)
        oy = 0
        try:
            for r0, r1, nr in rows:
                ox = 0
                for c0, c1, nc in cols:
                    win = Window(c0, r0, c1 - c0, r1 - r0)
                    shape = (len(self.unique_bands), nr, nc)
                    raw[:, oy : oy + nr, ox : ox + nc] = self.ds.read(
                        self.unique_bands,
                        window=win,
                        out_shape=shape,
                        out_dtype="float32",
                        resampling=Resampling.average,
                    )
                    if self._mask_mode != "all":  # > 0: some pixel of the block is valid
                        masks[:, oy : oy + nr, ox : ox + nc] = self.ds.read_masks(
                            self.unique_bands,
                            window=win,
                            out_shape=shape,
                            resampling=Resampling.average,
                        )
                    ox += nc
                oy += nr
        except (RasterioIOError, RasterioError, OSError) as exc:
            raise self._read_error(exc) from None
        valid = np.all(masks > 0, axis=0) & np.all(np.isfinite(raw), axis=0)  # (h, w)
        index = {b: i for i, b in enumerate(self.unique_bands)}
        data = raw[[index[b] for b in self.bands]]  # (3, h, w)
        data[:, ~valid] = np.nan
        return data, valid

    def _block_means(self, y0: int, y1: int, factor: int) -> tuple[np.ndarray, np.ndarray]:
        """Block means of rows ``y0:y1`` from full-resolution reads (validity as
        :meth:`read_raw` decides it, e.g. an override nodata value)."""
        oh, w = math.ceil((y1 - y0) / factor), math.ceil(self.width / factor)
        raw, ok = self.read_raw(Window(0, y0, self.width, y1 - y0))  # (3, sh, W)
        raw_p = np.zeros((3, oh * factor, w * factor), dtype=np.float32)
        ok_p = np.zeros((oh * factor, w * factor), dtype=bool)
        raw_p[:, : y1 - y0, : self.width] = np.where(ok, raw, 0.0)
        ok_p[: y1 - y0, : self.width] = ok
        count = ok_p.reshape(oh, factor, w, factor).sum(axis=(1, 3))  # (oh, w)
        total = raw_p.reshape(3, oh, factor, w, factor).sum(axis=(2, 4))  # (3, oh, w)
        with np.errstate(invalid="ignore", divide="ignore"):
            data = np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)
        return data, count > 0

    def set_stretch_from(self, data: np.ndarray, valid: np.ndarray) -> None:
        """Measure the stretch limits on ``data`` (3, h, w) (normally the overview).

        Raises :class:`InputError` for an all-nodata scene or a band the stretch cannot use
        (see :func:`entitwist.imaging.compute_stretch`).
        """
        if not valid.any():
            raise InputError(
                f"every pixel of {str(self.path)!r} is nodata; nothing to segment (check the file or --nodata)"
            )
        self._limits = None
        if self.stretch_percentiles is not None:
            self._limits = compute_stretch(
                data,
                valid,
                self.stretch_percentiles,
                bands=self.bands,
                source=repr(str(self.path)),
            )

    def to_rgb(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(3, h, w) raw -> (h, w, 3) uint8 with the scene's stretch; nodata pixels black.

        ``data`` is overwritten (it is used as the work buffer).
        """
        if self._limits is None and self.stretch_percentiles is not None:
            raise RuntimeError("call set_stretch_from() (or overview()) before to_rgb()")
        return raw_to_rgb(data, valid, self._limits, inplace=True)

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
