"""Reading image, mask and label-map files into numpy arrays.

:func:`read_image` is the one way entitwist reads a picture: any supported file ->
uint8 ``(H, W, 3)`` RGB by the band and stretch rules of :mod:`entitwist.imaging.rules`.

Decoders (one per format, so a file decodes to the same values on every path):

- TIFF / GeoTIFF: rasterio (GDAL) when it is installed (the ``geo`` extra): any number of
  bands, any type, nodata values, internal masks and alpha bands. Without rasterio: PIL,
  and ``tifffile`` for what PIL cannot decode (multi-band, planar, float; its
  ``GDAL_NODATA`` tag is honoured).
- everything else (PNG, JPEG, BMP, WebP, ...): PIL, always. JPEG in particular is never
  decoded by GDAL, whose chroma upsampling differs from PIL's: the datasets, the entity
  maps and ``entitwist segment`` see the same pixels.

PIL images: grey and 16-bit grey are one band; palettes are expanded to their colours;
an alpha channel marks nodata (alpha 0) and is not a band; 1-bit images are 0/255.

Every reader raises :class:`entitwist.errors.DataError` (one line: the path, the problem,
the fix) for a missing, unreadable or corrupt file; a stretch that cannot be computed
raises :class:`entitwist.errors.InputError` (see :func:`~entitwist.imaging.rules.compute_stretch`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from entitwist.errors import DataError, InputError
from entitwist.imaging.rules import (
    Stretch,
    compute_stretch,
    parse_bands,
    parse_stretch,
    raw_to_rgb,
    resolve_stretch,
)

__all__ = [
    "TIFF_SUFFIXES",
    "read_image",
    "read_mask",
    "read_label_map",
    "read_array",
    "decode_pil",
    "to_picture",
]

TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
_GDAL_NODATA_TAG = 42113


def _open_error(path: Path, exc: BaseException) -> DataError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return DataError(
        f"cannot read {path}: {reason[:160]}; the file is corrupt or not an image, replace it "
        "(re-download or re-export it)"
    )


def _check_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise DataError(
            f"{what} not found: {path}; check the dataset root and that the file exists"
        )


def read_array(
    path: str | os.PathLike, *, expand_palette: bool = False, what: str = "file"
) -> np.ndarray:
    """Decode an image file with PIL (tifffile for TIFFs PIL cannot decode) in its own dtype.

    Returns ``(H, W)`` or ``(H, W, C)`` with every channel, alpha included. Palette images
    return their indices (their colours with ``expand_palette``); 1-bit images return bool.
    ``what`` names the file's role in the error message.
    """
    path = Path(path)
    _check_file(path, what)
    try:
        with Image.open(path) as im:
            if _wide_multiband_tiff(im):
                # PIL decodes e.g. 16-bit RGB TIFFs to 8 bits by dropping the low byte.
                return _read_tiff(path, OSError("PIL cannot decode this TIFF losslessly"))[0]
            im.load()
            if im.mode in {"I;16", "I;16B", "I;16L", "I;16N"}:
                arr = np.array(im, dtype=np.uint16)
            elif im.mode in {"CMYK", "YCbCr", "LAB", "HSV"}:
                arr = np.asarray(im.convert("RGB"))
            elif expand_palette and im.mode in {"P", "PA"}:
                alpha = im.mode == "PA" or "transparency" in im.info
                arr = np.asarray(im.convert("RGBA" if alpha else "RGB"))
            else:
                arr = np.asarray(im)
    except PermissionError as exc:
        raise DataError(f"cannot read {path}: permission denied; make the file readable") from exc
    except Image.DecompressionBombError as exc:
        raise DataError(
            f"cannot read {path}: {str(exc).split('.')[0]}; crop or tile it, or convert it to a "
            "tiled GeoTIFF (entitwist segment reads those window by window)"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if path.suffix.lower() in TIFF_SUFFIXES:
            return _read_tiff(path, exc)[0]
        raise _open_error(path, exc) from exc
    if arr.ndim < 2 or arr.size == 0:
        raise _open_error(path, ValueError(f"decoded to an empty array of shape {arr.shape}"))
    if not arr.flags.writeable:  # PIL hands out read-only buffers; torch wants writable ones
        arr = arr.copy()
    return arr


def _wide_multiband_tiff(im: Image.Image) -> bool:
    """A TIFF with several samples per pixel of more than 8 bits (PIL would truncate it)."""
    tags = getattr(im, "tag_v2", None)
    if tags is None:
        return False
    bits = tags.get(258, (8,))
    bits = bits if isinstance(bits, tuple) else (bits,)
    return len(bits) > 1 and max(bits) > 8


def _read_tiff(path: Path, pil_exc: BaseException) -> tuple[np.ndarray, float | None]:
    """TIFFs that PIL cannot decode (multi-band, float, planar): array and GDAL nodata."""
    try:
        import tifffile
    except ImportError:  # pragma: no cover - tifffile ships with scikit-image
        raise _open_error(path, pil_exc) from pil_exc
    try:
        with tifffile.TiffFile(path) as tif:
            arr = np.asarray(tif.asarray())
            tag = tif.pages[0].tags.get(_GDAL_NODATA_TAG)
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise _open_error(path, exc) from exc
    if arr.ndim < 2 or arr.size == 0:
        raise _open_error(path, pil_exc)
    # Planar (C, H, W) with few bands -> (H, W, C).
    if arr.ndim == 3 and arr.shape[0] <= 16 and arr.shape[2] > 16:
        arr = np.moveaxis(arr, 0, -1)
    nodata = None
    if tag is not None:
        try:
            nodata = float(str(tag.value).strip("\x00 "))
        except ValueError:
            nodata = None
    return arr, nodata


def decode_pil(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """Decode without rasterio: ``(bands (H, W, C), alpha-validity (H, W) or None, nodata)``.

    Alpha is split off as validity (``alpha > 0``); 1-bit becomes uint8 0/255; the nodata
    value is the TIFF's ``GDAL_NODATA`` tag when tifffile read it, else None.
    """
    path = Path(path)
    _check_file(path, "image")
    nodata = None
    arr = read_array(path, expand_palette=True, what="image")
    if path.suffix.lower() in TIFF_SUFFIXES and arr.ndim == 3 and arr.shape[2] > 4:
        arr, nodata = _read_tiff(path, OSError("multi-band TIFF"))
    elif path.suffix.lower() in TIFF_SUFFIXES and arr.dtype != np.uint8:
        arr, nodata = _read_tiff(path, OSError("wide TIFF"))
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.dtype.kind == "c":
        raise DataError(
            f"cannot use {path} ({arr.dtype} {tuple(arr.shape)}) as an image; give a 1- to "
            "N-band real-valued image"
        )
    valid = None
    if arr.shape[2] in (2, 4) and arr.dtype == np.uint8:  # grey + alpha, RGBA
        valid = arr[..., -1] > 0
        arr = arr[..., :-1]
    return arr, valid, nodata


def _decode_rasterio(
    path: Path, bands: str | Sequence[int] | None, nodata: float | None
) -> tuple[np.ndarray, np.ndarray, np.dtype, list[int]]:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    _check_file(path, "image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                if ds.count == 0:
                    raise DataError(f"image {path} has no raster bands; give an image file")
                dtype = np.dtype(ds.dtypes[0])
                if dtype.kind == "c":
                    raise DataError(
                        f"image {path} holds complex numbers; convert it to real-valued bands"
                    )
                sel = parse_bands(bands, ds.count)
                uniq = sorted(set(sel))
                raw = ds.read(uniq, out_dtype="float32")  # (U, H, W)
                if nodata is not None:
                    valid = np.all(raw != np.float32(nodata), axis=0)
                else:
                    valid = np.all(ds.read_masks(uniq) > 0, axis=0)
    except (RasterioError, OSError) as exc:
        raise _open_error(path, exc) from None
    valid &= np.all(np.isfinite(raw), axis=0)
    data = raw if sel == uniq else raw[[uniq.index(b) for b in sel]]  # (3, H, W)
    return data, valid, dtype, sel


def _rasterio_available() -> bool:
    try:
        import rasterio  # noqa: F401
    except ImportError:
        return False
    return True


def to_picture(
    data: np.ndarray,
    valid: np.ndarray,
    dtype: np.dtype | str,
    *,
    bands: Sequence[int],
    stretch: Stretch = None,
    source: str = "the image",
) -> np.ndarray:
    """Selected raw bands ``(3, H, W)`` (float32, overwritten) -> uint8 ``(H, W, 3)``.

    The stretch limits are measured on the whole of ``data`` (the stretch rule).
    """
    if not valid.any():
        raise InputError(
            f"every pixel of {source} is nodata; nothing to segment (check the file, or --nodata)"
        )
    percentiles = resolve_stretch(dtype, stretch)
    limits = None
    if percentiles is not None:
        limits = compute_stretch(data, valid, percentiles, bands=bands, source=source)
    return raw_to_rgb(data, valid, limits, inplace=True)


def read_image(
    path: str | os.PathLike,
    *,
    bands: str | Sequence[int] | None = None,
    stretch: str | Sequence[float] | None = None,
    nodata: float | None = None,
) -> np.ndarray:
    """Read an image file as the uint8 RGB ``(H, W, 3)`` picture the network sees.

    Args:
        path: PNG, JPEG, TIFF, GeoTIFF (or anything PIL opens).
        bands: ``"3,2,1"``, a list of 1-based bands, or None (the band rule).
        stretch: None/``"auto"`` (the stretch rule), ``"none"``, or ``(low, high)``
            percentiles (``"2,98"``).
        nodata: a value marking missing pixels, overriding the file's own.
    Raises:
        DataError: a missing or corrupt file. InputError: bad bands or stretch, an image
        without valid pixels, a constant band that the stretch needs.
    """
    path = Path(path)
    spec = parse_stretch(stretch)
    if path.suffix.lower() in TIFF_SUFFIXES and _rasterio_available():
        data, valid, dtype, sel = _decode_rasterio(path, bands, nodata)
    else:
        arr, valid_alpha, tag_nodata = decode_pil(path)  # (H, W, C)
        sel = parse_bands(bands, arr.shape[2])
        dtype = arr.dtype
        data = np.stack([arr[..., b - 1] for b in sel]).astype(np.float32)  # (3, H, W)
        valid = np.ones(arr.shape[:2], dtype=bool) if valid_alpha is None else valid_alpha
        value = nodata if nodata is not None else tag_nodata
        if value is not None and not np.isnan(value):
            for b in sorted(set(sel)):
                valid &= arr[..., b - 1].astype(np.float32) != np.float32(value)
        valid &= np.all(np.isfinite(data), axis=0)
    return to_picture(data, valid, dtype, bands=sel, stretch=spec, source=str(path))


def read_mask(path: str | os.PathLike, threshold: float = 0) -> np.ndarray:
    """Read a mask file as uint8 ``(H, W)`` with 1 where ``value > threshold``, else 0.

    Multi-channel masks use the largest value over the colour channels (an alpha channel is
    ignored); palette masks use their palette indices.
    """
    a = read_array(path, what="mask")
    if a.ndim == 3:
        if a.shape[2] in (2, 4):  # drop alpha
            a = a[..., :-1]
        a = a.max(axis=2)
    return (a > threshold).astype(np.uint8)


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """Read an entity label map (single-channel integer PNG) as uint8 ``(H, W)``."""
    a = read_array(path, what="entity label map")
    if a.ndim != 2 or a.dtype.kind not in "ub" or (a.size and int(a.max()) > 255):
        raise DataError(
            f"{path} is not a label map (expected a single-channel uint8 PNG, got shape "
            f"{tuple(a.shape)} {a.dtype}); recompute it with `entitwist entities`"
        )
    return a.astype(np.uint8, copy=False)
