"""Polygons from a predicted mask, in the image's CRS, written as GeoJSON or GeoPackage.

:func:`mask_to_polygons` traces the 4-connected foreground regions of a mask (holes kept)
with ``rasterio.features.shapes``; :func:`raster_to_polygons` does the same for a mask
GeoTIFF too large to hold at once, strip by strip, dissolving the pieces of a region cut by
a strip boundary. Coordinates go through the image's affine transform (pixel coordinates
for an image without one). :func:`filter_polygons` drops regions under ``min_area`` (in
squared CRS units, measured before simplification) and simplifies with ``tolerance`` (CRS
units, topology preserved). :func:`write_polygons` writes a layer with ``id``, ``area`` and
``sentence`` attributes; when nothing was found it still writes a valid, empty layer with
the CRS and the attribute schema.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from entitwist.errors import InputError

__all__ = [
    "VECTOR_DRIVERS",
    "mask_to_polygons",
    "raster_to_polygons",
    "filter_polygons",
    "write_polygons",
]

VECTOR_DRIVERS = {".geojson": "GeoJSON", ".json": "GeoJSON", ".gpkg": "GPKG"}


def _affine_params(transform: Any) -> list[float]:
    """``affine.Affine`` -> shapely's ``[a, b, d, e, xoff, yoff]``."""
    return [transform.a, transform.b, transform.d, transform.e, transform.c, transform.f]


def _pixel_polygons(mask: np.ndarray, row_offset: int = 0) -> list[Any]:
    """Polygons (pixel coordinates, x = column, y = row + row_offset) of a bool (h, w) mask."""
    from affine import Affine
    from rasterio import features
    from shapely.geometry import shape

    if not mask.any():
        return []
    m = mask.astype(np.uint8)
    return [
        shape(geom)
        for geom, value in features.shapes(
            m, mask=m > 0, connectivity=4, transform=Affine.translation(0, row_offset)
        )
        if value == 1
    ]


def mask_to_polygons(mask: np.ndarray, transform: Any = None) -> list[Any]:
    """Polygons of the True regions of a bool (H, W) mask, in map coordinates.

    Args:
        mask: (H, W) bool.
        transform: the image's ``affine.Affine`` (None: pixel coordinates).
    Returns: a list of shapely Polygons (4-connected regions, holes kept).
    """
    from shapely import affinity

    polys = _pixel_polygons(np.asarray(mask, dtype=bool))
    if transform is None or transform.is_identity:
        return polys
    params = _affine_params(transform)
    return [affinity.affine_transform(p, params) for p in polys]


def raster_to_polygons(
    path: str | os.PathLike, transform: Any = None, strip_rows: int = 2048
) -> list[Any]:
    """Polygons of the non-zero pixels of a one-band mask raster, read strip by strip.

    A region crossing a strip boundary is traced in pieces; the pieces touching a boundary
    are dissolved (``unary_union``) so each region comes out whole. ``transform`` maps
    pixel to map coordinates (None: pixel coordinates).
    """
    import rasterio
    from rasterio.windows import Window
    from shapely import affinity, unary_union
    from shapely.geometry import MultiPolygon

    whole: list[Any] = []
    cut: list[Any] = []
    with rasterio.open(path) as ds:
        height, width = ds.height, ds.width
        for r0 in range(0, height, strip_rows):
            r1 = min(height, r0 + strip_rows)
            strip = ds.read(1, window=Window(0, r0, width, r1 - r0)) > 0  # (h, W)
            for poly in _pixel_polygons(strip, row_offset=r0):
                _, miny, _, maxy = poly.bounds
                touches = (r0 > 0 and miny <= r0) or (r1 < height and maxy >= r1)
                (cut if touches else whole).append(poly)
    if cut:
        merged = unary_union(cut)
        parts = merged.geoms if isinstance(merged, MultiPolygon) else [merged]
        whole.extend(p for p in parts if not p.is_empty)
    if transform is None or transform.is_identity:
        return whole
    params = _affine_params(transform)
    return [affinity.affine_transform(p, params) for p in whole]


def filter_polygons(
    polygons: Iterable[Any], *, min_area: float = 0.0, tolerance: float = 0.0
) -> list[Any]:
    """Drop polygons with area < ``min_area`` (before simplifying), then simplify by ``tolerance``."""
    if min_area < 0:
        raise InputError(
            f"--min-area {min_area:g} is negative; give an area >= 0 (squared CRS units)"
        )
    if tolerance < 0:
        raise InputError(f"--simplify {tolerance:g} is negative; give a tolerance >= 0 (CRS units)")
    out = []
    for poly in polygons:
        if poly.area < min_area:
            continue
        if tolerance > 0:
            poly = poly.simplify(tolerance, preserve_topology=True)
        if not poly.is_empty:
            out.append(poly)
    return out


def write_polygons(
    path: str | os.PathLike,
    polygons: list[Any],
    crs: Any,
    *,
    sentence: str = "",
    driver: str | None = None,
) -> None:
    """Write polygons as GeoJSON or GeoPackage (layer ``segments``) with ``id``, ``area``, ``sentence``.

    An empty list writes a valid empty layer (CRS and schema kept). ``crs`` is a rasterio
    CRS, anything pyproj accepts, or None. The driver follows the suffix unless given.
    """
    import geopandas as gpd
    import pyogrio
    from shapely.geometry import MultiPolygon, Polygon

    path = Path(path)
    if driver is None:
        suffix = path.suffix.lower()
        if suffix not in VECTOR_DRIVERS:
            raise InputError(f"polygon output {str(path)!r} must end in .geojson, .json or .gpkg")
        driver = VECTOR_DRIVERS[suffix]
    if crs is None and driver == "GeoJSON":
        warnings.warn(
            f"{path.name}: the image has no CRS and GeoJSON readers assume WGS84 (EPSG:4326) when none is "
            "given; its coordinates are the image's own (pixels) - prefer .gpkg",
            UserWarning,
            stacklevel=2,
        )
    geoms = [MultiPolygon([p]) if isinstance(p, Polygon) else p for p in polygons]
    crs_arg = None if crs is None else (crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    frame = gpd.GeoDataFrame(
        {
            "id": np.arange(1, len(geoms) + 1, dtype=np.int64),
            "area": np.array([g.area for g in geoms], dtype=np.float64),
            "sentence": np.array([sentence] * len(geoms), dtype=object),
        },
        geometry=gpd.GeoSeries(geoms, crs=crs_arg),
    )
    if path.exists():  # an empty temporary file from atomic_path: let GDAL create it afresh
        path.unlink()
    with warnings.catch_warnings():  # no CRS is reported once by the caller, not by pyogrio
        warnings.filterwarnings("ignore", message="'crs' was not provided")
        pyogrio.write_dataframe(
            frame, path, driver=driver, layer="segments", geometry_type="MultiPolygon"
        )
