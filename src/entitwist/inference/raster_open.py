"""Opening a user's image file for :class:`~entitwist.inference.raster.RasterSource`.

:func:`check_image_path` refuses, in one line each, a path that is missing, a folder, not
a regular or readable file, of an unsupported format (:data:`SUPPORTED_SUFFIXES`) or
empty. :func:`open_dataset` opens it as a rasterio dataset: TIFF / GeoTIFF through GDAL;
PNG, JPEG and other plain images decoded by PIL (:func:`entitwist.imaging.decode_pil`, the
decoder of the datasets) and held in memory as a GDAL dataset with the file's
georeferencing (world file) and alpha as its mask; a plain image beyond PIL's
decompression limit is read by GDAL window by window (the same values for PNG; JPEG may
differ by a few grey levels from PIL's decoder).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from entitwist.errors import DataError, InputError
from entitwist.imaging import TIFF_SUFFIXES, decode_pil

__all__ = ["SUPPORTED_SUFFIXES", "check_image_path", "open_dataset"]

SUPPORTED_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def check_image_path(path: Path) -> None:
    """One-line :class:`InputError` unless ``path`` is a readable, non-empty image file of
    a supported format."""
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


def open_dataset(path: Path) -> tuple[Any, Any]:
    """The rasterio dataset to read ``path`` from, and the ``MemoryFile`` that holds it (a
    plain image decoded by PIL) or None; the caller closes both. A file that cannot be
    read is a one-line :class:`InputError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(path)
    except (RasterioError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(
            f"cannot read image {str(path)!r} ({reason[:160]}); the file is truncated, corrupt or "
            "not an image: re-export or re-download it"
        ) from None
    if path.suffix.lower() in TIFF_SUFFIXES or _too_large_for_pil(ds):
        return ds, None
    try:
        return _decode_with_pil(path, ds)
    finally:
        ds.close()


def _too_large_for_pil(ds: Any) -> bool:
    """A plain image beyond PIL's decompression limit is read by GDAL window by window."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    return limit is not None and ds.width * ds.height > limit


def _decode_with_pil(path: Path, ds: Any) -> tuple[Any, Any]:
    """PIL's pixels of a plain image (the datasets' decoder) as an in-memory GDAL dataset
    with the georeferencing of ``ds`` and alpha as the mask: (dataset, MemoryFile)."""
    from rasterio.io import MemoryFile

    try:
        arr, alpha, _ = decode_pil(path)  # (H, W, C), (H, W) | None
    except DataError as exc:
        reason = str(exc).split(": ", 1)[-1].split(";")[0]
        raise InputError(
            f"cannot read image {str(path)!r} ({reason[:160]}); the file is truncated, "
            "corrupt or not an image: re-export or re-download it"
        ) from None
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": arr.shape[1],
        "height": arr.shape[0],
        "count": arr.shape[2],
        "dtype": arr.dtype.name,
    }
    if ds.crs:
        profile["crs"] = ds.crs
    if not ds.transform.is_identity:
        profile["transform"] = ds.transform
    memfile = MemoryFile()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with memfile.open(**profile) as dst:
                dst.write(np.moveaxis(arr, -1, 0))
                if alpha is not None:
                    dst.write_mask(alpha.astype(np.uint8) * 255)
            return memfile.open(), memfile
    except BaseException:
        memfile.close()
        raise
