"""Segmenting users' own imagery: :class:`Predictor`, ``entitwist segment``, GeoTIFF and vectors.

- :mod:`entitwist.inference.predictor`: :class:`Predictor` / :class:`Prediction` (numpy in,
  numpy out; torch only).
- :mod:`entitwist.inference.raster`: PNG / JPEG / TIFF / GeoTIFF windows -> uint8 RGB, bands,
  percentile stretch, nodata; aligned GeoTIFF writers (rasterio).
- :mod:`entitwist.inference.tiling`: large scenes (localise on the whole scene, refine with
  blended overlapping tiles, bounded memory).
- :mod:`entitwist.inference.vector`: polygons in the image's CRS, GeoJSON / GeoPackage.
- :mod:`entitwist.inference.overlay`: the overlay picture with the sentence.
- :mod:`entitwist.inference.pipeline`: image -> entity map -> probability -> outputs (the one
  path of ``entitwist segment``, the page and the figures); :mod:`entitwist.inference.batch`:
  many images with one model (resumable; several processes / GPUs through Lightning).
- :mod:`entitwist.inference.cli`: ``entitwist segment``.

Names are imported lazily so that ``from entitwist.inference import Predictor`` does not pull
in rasterio.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Predictor": "entitwist.inference.predictor",
    "Prediction": "entitwist.inference.predictor",
    "RasterSource": "entitwist.inference.raster",
    "TilingOptions": "entitwist.inference.tiling",
    "segment_scene": "entitwist.inference.tiling",
    "segment_to_files": "entitwist.inference.pipeline",
    "SegmentOptions": "entitwist.inference.pipeline",
    "mask_to_polygons": "entitwist.inference.vector",
    "write_polygons": "entitwist.inference.vector",
    "render_overlay": "entitwist.inference.overlay",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'entitwist.inference' has no attribute {name!r}")
