"""Reading images, masks and label maps from disk into the arrays the datasets return.

Every reader returns a plain numpy array and raises :class:`entitwist.errors.DataError`
(one line: the path, the problem, the fix) for a missing, unreadable or corrupt file.

- :func:`read_image` -> uint8 ``(H, W, 3)`` RGB whatever the file holds: grayscale is copied
  to three channels, an alpha channel is dropped, a palette is expanded, and 16-bit, 32-bit
  or float images are scaled to uint8 by a percentile stretch (see :func:`to_uint8_rgb`).
  PNG, JPEG, TIFF (and anything PIL opens); TIFFs PIL cannot open (multi-band, float,
  planar) are read with ``tifffile`` (installed with scikit-image).
- :func:`read_mask` -> uint8 ``(H, W)`` of 0/1, ``value > threshold``.
- :func:`read_label_map` -> uint8 ``(H, W)`` entity label map (0 = none, 1..K).
- :func:`resize_nearest` -> the nearest-neighbour resize used for masks and label maps
  (PIL's NEAREST: the source pixel under each target pixel's centre).

Only numpy and PIL are imported at module level; tifffile is imported when needed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from entitwist.errors import DataError

__all__ = [
    "read_image",
    "read_mask",
    "read_label_map",
    "read_array",
    "resize_nearest",
    "to_uint8_rgb",
    "stretch_to_uint8",
]

# Percentiles of the stretch that maps 16-bit / float imagery to uint8.
STRETCH_PERCENTILES = (1.0, 99.0)

_TIFF_SUFFIXES = {".tif", ".tiff"}


def _open_error(path: Path, exc: BaseException) -> DataError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return DataError(
        f"cannot read {path}: {reason}; the file is corrupt or not an image, replace it "
        "(re-download or re-export it)"
    )


def read_array(
    path: str | os.PathLike, *, expand_palette: bool = False, what: str = "file"
) -> np.ndarray:
    """Decode an image file to a numpy array in its own dtype and channel layout.

    Returns ``(H, W)`` or ``(H, W, C)``. Palette images return their indices (their colours
    with ``expand_palette``); 1-bit images return bool. Raises :class:`DataError` for a
    missing or corrupt file; ``what`` names the file's role in that message.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{what} not found: {path}; check the dataset root and that the file exists"
        )
    try:
        with Image.open(path) as im:
            if _wide_multiband_tiff(im):
                # PIL decodes e.g. 16-bit RGB TIFFs to 8 bits by dropping the low byte.
                return _read_tiff(path, OSError("PIL cannot decode this TIFF losslessly"))
            im.load()
            if im.mode in {"I;16", "I;16B", "I;16L", "I;16N"}:
                arr = np.array(im, dtype=np.uint16)
            elif im.mode in {"CMYK", "YCbCr", "LAB", "HSV"} or (
                expand_palette and im.mode in {"P", "PA"}
            ):
                arr = np.asarray(im.convert("RGB"))
            else:
                arr = np.asarray(im)
    except PermissionError as exc:
        raise DataError(f"cannot read {path}: permission denied; make the file readable") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if path.suffix.lower() in _TIFF_SUFFIXES:
            return _read_tiff(path, exc)
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


def _read_tiff(path: Path, pil_exc: BaseException) -> np.ndarray:
    """Fallback for TIFFs that PIL cannot decode (multi-band, float, planar)."""
    try:
        import tifffile
    except ImportError:  # pragma: no cover - tifffile ships with scikit-image
        raise _open_error(path, pil_exc) from pil_exc
    try:
        arr = np.asarray(tifffile.imread(path))
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise _open_error(path, exc) from exc
    if arr.ndim < 2 or arr.size == 0:
        raise _open_error(path, pil_exc)
    # Planar (C, H, W) with few bands -> (H, W, C).
    if arr.ndim == 3 and arr.shape[0] <= 4 and arr.shape[2] > 4:
        arr = np.moveaxis(arr, 0, -1)
    return arr


def stretch_to_uint8(
    arr: np.ndarray, percentiles: tuple[float, float] = STRETCH_PERCENTILES
) -> np.ndarray:
    """Linearly map ``arr`` so its low/high percentiles become 0/255 (clipped), as uint8.

    One stretch for all channels together, so colour balance is kept. A constant image maps
    to zeros. NaNs become 0.
    """
    a = np.asarray(arr, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, dtype=np.uint8)
    lo, hi = np.percentile(a[finite], percentiles)
    if hi <= lo:
        hi = lo + 1.0
    out = (np.where(finite, a, lo) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def to_uint8_rgb(arr: np.ndarray) -> np.ndarray:
    """Convert a decoded image array to uint8 ``(H, W, 3)`` RGB.

    - ``(H, W)`` or ``(H, W, 1)``: copied to three channels.
    - ``(H, W, 2)``: gray + alpha; the alpha is dropped.
    - ``(H, W, 4)``: RGBA; the alpha is dropped.
    - uint8 is kept as is; bool becomes 0/255; any other dtype (uint16, int, float) goes
      through :func:`stretch_to_uint8`.

    Raises :class:`DataError` for other channel counts (choose the bands first).
    """
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = a[..., None]
    elif a.ndim == 3 and a.shape[2] == 2:
        a = a[..., :1]
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    elif not (a.ndim == 3 and a.shape[2] == 3):
        raise DataError(
            f"cannot use an image of shape {tuple(a.shape)} as RGB; give a 1-, 3- or 4-channel "
            "image (select three bands first)"
        )
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = stretch_to_uint8(a)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 RGB ``(H, W, 3)``.

    Palette images are expanded to their colours; see :func:`to_uint8_rgb` for the rest.
    Raises :class:`DataError` (one line) for a missing or corrupt file.
    """
    return to_uint8_rgb(read_array(path, expand_palette=True, what="image"))


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


def resize_nearest(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D uint8 array to ``size = (H, W)`` (PIL NEAREST)."""
    h, w = size
    if arr.shape[:2] == (h, w):
        return arr
    out = Image.fromarray(np.ascontiguousarray(arr)).resize((w, h), Image.Resampling.NEAREST)
    return np.asarray(out)
