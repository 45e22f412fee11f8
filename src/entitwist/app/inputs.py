"""What the user gives the page of ``entitwist app``: the uploaded image and the sentences.

:func:`read_upload` reads a PNG, JPEG, TIFF or GeoTIFF upload within the page's
:class:`PageLimits` into an :class:`Upload` (RGB for the network, the nodata mask, CRS and
transform); :func:`parse_sentences` splits the text box into sentences. Every problem a user
can cause raises :class:`~entitwist.errors.InputError` (or another
:class:`~entitwist.errors.EntitwistError`) with one line naming the file by its own name.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from entitwist.errors import EntitwistError, InputError

__all__ = [
    "TIFF_SUFFIXES",
    "UPLOAD_SUFFIXES",
    "PageLimits",
    "Upload",
    "parse_sentences",
    "read_upload",
]

TIFF_SUFFIXES = (".tif", ".tiff")
UPLOAD_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass(frozen=True)
class PageLimits:
    """What the page accepts.

    Attributes:
        max_upload_mb: the largest upload in megabytes (also given to Gradio).
        max_side: the longest image side in pixels (larger scenes: ``entitwist segment``).
        max_sentences: sentences per run.
        max_sentence_chars: characters per sentence.
    """

    max_upload_mb: float = 50.0
    max_side: int = 4096
    max_sentences: int = 8
    max_sentence_chars: int = 300

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


@dataclass
class Upload:
    """An uploaded image read for the network.

    Attributes:
        name: the file's name as the user gave it.
        rgb: (H, W, 3) uint8.
        valid: (H, W) bool, False on nodata pixels.
        crs: ``rasterio.crs.CRS`` or None.
        transform: ``affine.Affine`` for TIFF input (identity without georeferencing), None
            for PNG / JPEG.
        georeferenced: the file has a non-identity transform.
        is_tiff: TIFF / GeoTIFF input (a GeoTIFF mask is offered).
        source: for TIFF input the closed :class:`RasterSource` (its grid, for
            :func:`open_writer`), else None.
    """

    name: str
    rgb: np.ndarray
    valid: np.ndarray
    crs: Any
    transform: Any
    georeferenced: bool
    is_tiff: bool
    source: Any


def parse_sentences(text: str | None, limits: PageLimits = PageLimits()) -> list[str]:
    """One sentence per non-blank line of ``text`` (stripped).

    Raises :class:`InputError` when there is none, too many, or one is too long.
    """
    sentences = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not sentences:
        raise InputError(
            "the sentence is empty; type a referring sentence such as 'the largest building' "
            "(one per line)"
        )
    if len(sentences) > limits.max_sentences:
        raise InputError(
            f"{len(sentences)} sentences given; the page segments at most {limits.max_sentences} "
            "at a time: remove some lines"
        )
    for s in sentences:
        if len(s) > limits.max_sentence_chars:
            raise InputError(
                f"a sentence has {len(s)} characters; the page takes at most "
                f"{limits.max_sentence_chars}: shorten it"
            )
    return sentences


def _display_name(path: Path) -> str:
    return path.name or "the upload"


def read_upload(
    path: str | os.PathLike | None,
    limits: PageLimits = PageLimits(),
    recorded: dict[str, Any] | None = None,
) -> Upload:
    """Read an uploaded file as uint8 RGB within the page's limits.

    Checks, in order: a file was given; its size (``max_upload_mb``); its type (PNG, JPEG,
    TIFF); that it is an image (not corrupt); its pixel size (``max_side``, from the header,
    before decoding). The picture is the one every entitwist reader makes
    (:mod:`entitwist.imaging`: PNG and JPEG decoded by PIL, TIFF and GeoTIFF by rasterio;
    uint8 as is, 16-bit and float stretched per band 2-98 %, nodata pixels black and not
    valid, CRS and transform kept), with the bands and stretch the model recorded
    (``recorded``: ``Predictor.read_options``). Messages name the file by its own name,
    not the temporary path.
    """
    if path is None or (isinstance(path, str) and not path.strip()):
        raise InputError("no image uploaded; upload a PNG, JPEG or GeoTIFF first")
    path = Path(path)
    name = _display_name(path)
    if not path.is_file():
        raise InputError(f"the upload {name!r} is missing on the server; upload it again")
    size = path.stat().st_size
    if size > limits.max_upload_bytes:
        raise InputError(
            f"{name!r} is {size / 2**20:.1f} MB, larger than the page's upload limit of "
            f"{limits.max_upload_mb:g} MB; use a smaller file or restart with --max-upload-mb N"
        )
    if path.suffix.lower() not in UPLOAD_SUFFIXES:
        raise InputError(
            f"{name!r} is not a PNG, JPEG or TIFF file; upload one of {', '.join(UPLOAD_SUFFIXES)}"
        )
    is_tiff = path.suffix.lower() in TIFF_SUFFIXES
    try:
        from entitwist.imaging import read_options

        reading = read_options(None, None, recorded)
        if is_tiff:
            return _read_tiff_upload(path, name, limits, reading)
        return _read_picture_upload(path, name, limits, reading)
    except EntitwistError as exc:
        # the readers name the temporary path; the user knows the file by its name
        raise type(exc)(str(exc).replace(str(path), name)) from None


def _too_large(name: str, width: int, height: int, limits: PageLimits) -> InputError:
    return InputError(
        f"{name!r} is {width}x{height} pixels, larger than the page's limit of "
        f"{limits.max_side} pixels a side; crop or reduce it, use 'entitwist segment' "
        "(it tiles large scenes), or restart with --max-side N"
    )


def _read_picture_upload(
    path: Path, name: str, limits: PageLimits, reading: dict[str, Any]
) -> Upload:
    """PNG / JPEG: decoded by PIL exactly as ``Predictor.predict(path)`` decodes it."""
    from PIL import Image, UnidentifiedImageError

    from entitwist.imaging import read_image

    try:
        with Image.open(path) as im:  # reads the header only
            width, height = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise InputError(
            f"cannot read image {name!r}: it is not a PNG or JPEG image, or it is truncated; "
            "re-export or re-download it"
        ) from None
    if max(width, height) > limits.max_side:
        raise _too_large(name, width, height, limits)
    rgb = read_image(path, **reading)  # (H, W, 3) uint8
    return Upload(
        name=name,
        rgb=rgb,
        valid=np.ones(rgb.shape[:2], dtype=bool),
        crs=None,
        transform=None,
        georeferenced=False,
        is_tiff=False,
        source=None,
    )


def _read_tiff_upload(path: Path, name: str, limits: PageLimits, reading: dict[str, Any]) -> Upload:
    """TIFF / GeoTIFF: read with rasterio as ``entitwist segment`` reads it (CRS, nodata)."""
    from rasterio.errors import NotGeoreferencedWarning

    from entitwist.inference.raster import RasterSource, gdal_env

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with gdal_env(), RasterSource(path, **reading) as source:
            if max(source.width, source.height) > limits.max_side:
                raise _too_large(name, source.width, source.height, limits)
            data, valid = source.read_raw()  # (3, H, W) float32, (H, W) bool
            source.set_stretch_from(data, valid)
            rgb = source.to_rgb(data, valid)  # (H, W, 3) uint8
    return Upload(
        name=name,
        rgb=rgb,
        valid=valid,
        crs=source.crs,
        transform=source.transform,
        georeferenced=source.georeferenced,
        is_tiff=True,
        source=source,
    )
