"""Polygons: map coordinates, holes, strip-wise tracing twin, filtering, GeoJSON/GPKG layers."""

from __future__ import annotations

import numpy as np
import pyogrio
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from entitwist.errors import InputError
from entitwist.inference.vector import (
    filter_polygons,
    mask_to_polygons,
    raster_to_polygons,
    write_polygons,
)

UTM16 = CRS.from_epsg(32616)
TRANSFORM = Affine(0.5, 0.0, 733601.0, 0.0, -0.5, 3725139.0)


def test_square_lands_on_its_georeferenced_bounds():
    mask = np.zeros((40, 60), bool)
    mask[5:15, 20:32] = True  # rows 5..14, cols 20..31
    (poly,) = mask_to_polygons(mask, TRANSFORM)
    x0, y_top = TRANSFORM @ (20, 5)
    x1, y_bottom = TRANSFORM @ (32, 15)
    np.testing.assert_allclose(poly.bounds, (x0, y_bottom, x1, y_top))
    assert poly.area == pytest.approx(10 * 12 * 0.25)
    (pix,) = mask_to_polygons(mask, None)
    assert pix.bounds == (20.0, 5.0, 32.0, 15.0)


def test_holes_and_separate_regions():
    mask = np.zeros((30, 30), bool)
    mask[2:12, 2:12] = True
    mask[5:8, 5:8] = False  # a hole
    mask[20:25, 20:22] = True
    mask[12, 12] = True  # touches the ring only diagonally: its own region (4-connectivity)
    polys = sorted(mask_to_polygons(mask), key=lambda p: -p.area)
    assert [p.area for p in polys] == [91.0, 10.0, 1.0]
    assert len(polys[0].interiors) == 1


def test_stripwise_tracing_matches_whole_mask(tmp_path):
    rng = np.random.default_rng(0)
    mask = np.zeros((97, 83), bool)
    for _ in range(25):
        r, c = rng.integers(0, 90), rng.integers(0, 76)
        mask[r : r + rng.integers(2, 30), c : c + rng.integers(2, 9)] = True
    with rasterio.open(
        tmp_path / "m.tif",
        "w",
        driver="GTiff",
        width=83,
        height=97,
        count=1,
        dtype="uint8",
        crs=UTM16,
        transform=TRANSFORM,
    ) as dst:
        dst.write(mask.astype(np.uint8), 1)
    whole = mask_to_polygons(mask, TRANSFORM)
    strips = raster_to_polygons(tmp_path / "m.tif", TRANSFORM, strip_rows=7)  # cuts most regions
    assert len(strips) == len(whole)
    key = lambda p: (round(p.bounds[0], 3), round(p.bounds[1], 3), round(p.area, 3))  # noqa: E731
    for a, b in zip(sorted(whole, key=key), sorted(strips, key=key)):
        assert a.area == pytest.approx(b.area) and a.symmetric_difference(b).area == pytest.approx(
            0.0, abs=1e-6
        )


def test_filter_min_area_and_simplify():
    mask = np.zeros((50, 50), bool)
    mask[1:3, 1:3] = True  # 4 px -> 1 m^2 at 0.5 m
    mask[10:40, 10:40] = True
    mask[10:12, 40:41] = True  # a notch-like bump, removed by simplification? area stays close
    polys = mask_to_polygons(mask, TRANSFORM)
    kept = filter_polygons(polys, min_area=2.0)
    assert len(polys) == 2 and len(kept) == 1 and kept[0].area > 200
    simple = filter_polygons(polys, tolerance=1.0)
    assert len(simple) == 2
    assert len(simple[1].exterior.coords) <= len(polys[1].exterior.coords)
    with pytest.raises(InputError):
        filter_polygons(polys, min_area=-1)
    with pytest.raises(InputError):
        filter_polygons(polys, tolerance=-0.5)


@pytest.mark.parametrize("name", ["out.geojson", "out.gpkg"])
def test_written_layers_keep_crs_and_attributes(tmp_path, name):
    mask = np.zeros((20, 20), bool)
    mask[2:6, 3:9] = True
    mask[10:15, 10:12] = True
    polys = mask_to_polygons(mask, TRANSFORM)
    write_polygons(tmp_path / name, polys, UTM16, sentence="two roofs")
    frame = pyogrio.read_dataframe(tmp_path / name)
    assert frame.crs.to_epsg() == 32616 and len(frame) == 2
    assert sorted(frame["id"]) == [1, 2] and set(frame["sentence"]) == {"two roofs"}
    np.testing.assert_allclose(sorted(frame.geometry.area), sorted(p.area for p in polys))
    np.testing.assert_allclose(sorted(frame["area"]), sorted(p.area for p in polys))
    np.testing.assert_allclose(frame.total_bounds, [733602.5, 3725131.5, 733607.0, 3725138.0])


@pytest.mark.parametrize("name", ["empty.geojson", "empty.gpkg"])
def test_empty_layer_is_valid(tmp_path, name):
    write_polygons(tmp_path / name, [], UTM16, sentence="nothing")
    info = pyogrio.read_info(tmp_path / name)
    assert info["features"] == 0 and info["crs"] == "EPSG:32616"
    assert info["geometry_type"] in {"MultiPolygon", "Unknown"} or info["geometry_type"].startswith(
        "Multi"
    )
    assert len(pyogrio.read_dataframe(tmp_path / name)) == 0


def test_no_crs_and_bad_suffix(tmp_path):
    (poly,) = mask_to_polygons(np.ones((4, 4), bool))
    write_polygons(tmp_path / "p.gpkg", [poly], None)
    assert pyogrio.read_info(tmp_path / "p.gpkg")["crs"] is None
    with pytest.warns(UserWarning, match="no CRS"):  # GeoJSON cannot say "no CRS"
        write_polygons(tmp_path / "p.geojson", [poly], None)
    assert pyogrio.read_dataframe(tmp_path / "p.geojson").total_bounds.tolist() == [
        0.0,
        0.0,
        4.0,
        4.0,
    ]
    with pytest.raises(InputError, match="geojson"):
        write_polygons(tmp_path / "p.shp", [poly], None)
