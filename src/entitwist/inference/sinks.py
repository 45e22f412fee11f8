"""Where a segmentation's rows go: GeoTIFF files (:class:`RasterSink`) or memory
(:class:`MemorySink`), and the small writers shared by ``entitwist segment`` and the page.

A sink is called by :func:`entitwist.inference.tiling.segment_scene` with consecutive row
bands ``(r0, r1, probability (h, W) float32 NaN on nodata, mask (h, W) bool)``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RasterSink", "MemorySink", "write_mask_png", "write_mask_tif", "write_mask_polygons"]


class RasterSink:
    """Streams rows into tiled GeoTIFFs on the source's grid: the uint8 0/1 mask (always),
    the float32 probability (``probability`` given) and a 0/255 copy of the mask for a PNG
    (``mask255`` given). Counts mask and valid pixels. Close it (or use ``with``)."""

    def __init__(
        self,
        source: Any,
        mask: Path,
        *,
        probability: Path | None = None,
        mask255: Path | None = None,
    ) -> None:
        from entitwist.inference.raster import open_writer

        self.width = source.width
        self.writers: dict[str, Any] = {}
        try:
            self.writers["mask"] = open_writer(mask, source, dtype="uint8")
            if probability is not None:
                self.writers["prob"] = open_writer(
                    probability, source, dtype="float32", nodata=float("nan")
                )
            if mask255 is not None:
                self.writers["png"] = open_writer(
                    mask255, source, dtype="uint8", georeference=False
                )
        except BaseException:
            self.close()
            raise
        self.mask_pixels = 0
        self.valid_pixels = 0

    def __call__(self, r0: int, r1: int, prob: np.ndarray, mask: np.ndarray) -> None:
        from rasterio.windows import Window

        win = Window(0, r0, self.width, r1 - r0)
        m8 = mask.astype(np.uint8)
        self.writers["mask"].write(m8, 1, window=win)
        if "prob" in self.writers:
            self.writers["prob"].write(prob.astype(np.float32), 1, window=win)
        if "png" in self.writers:
            self.writers["png"].write(m8 * 255, 1, window=win)
        self.mask_pixels += int(mask.sum())
        self.valid_pixels += int(np.isfinite(prob).sum())

    def close(self) -> None:
        for w in self.writers.values():
            w.close()

    def __enter__(self) -> RasterSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemorySink:
    """Collects the rows of an (H, W) scene into ``probability`` (float32, NaN on nodata)
    and ``mask`` (bool) arrays."""

    def __init__(self, height: int, width: int) -> None:
        self.probability = np.full((height, width), np.nan, dtype=np.float32)
        self.mask = np.zeros((height, width), dtype=bool)

    def __call__(self, r0: int, r1: int, prob: np.ndarray, mask: np.ndarray) -> None:
        self.probability[r0:r1] = prob
        self.mask[r0:r1] = mask


def write_mask_png(path: str | os.PathLike, mask: np.ndarray) -> None:
    """An 8-bit grey PNG, 255 on the mask."""
    from PIL import Image

    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def write_mask_tif(path: str | os.PathLike, mask: np.ndarray, grid: Any) -> None:
    """A uint8 0/1 GeoTIFF on ``grid``'s (a :class:`RasterSource`) size, CRS and transform."""
    from entitwist.inference.raster import open_writer

    with open_writer(path, grid, dtype="uint8") as dst:
        dst.write(mask.astype(np.uint8), 1)


def write_mask_polygons(
    path: str | os.PathLike,
    mask: np.ndarray,
    transform: Any,
    crs: Any,
    sentence: str,
    *,
    min_area: float = 0.0,
    simplify: float = 0.0,
    quiet_crs: bool = False,
) -> int:
    """Polygonise ``mask`` (map coordinates through ``transform``; pixel coordinates when
    None), filter, write GeoJSON / GeoPackage; returns the number of polygons.
    ``quiet_crs`` silences the warning about pixel coordinates without a CRS."""
    from entitwist.inference.vector import filter_polygons, mask_to_polygons, write_polygons

    polys = filter_polygons(
        mask_to_polygons(mask, transform), min_area=min_area, tolerance=simplify
    )
    with warnings.catch_warnings():
        if quiet_crs:
            warnings.simplefilter("ignore", UserWarning)
        write_polygons(path, polys, crs, sentence=sentence)
    return len(polys)
