"""Raster reading: formats, bands, stretch, nodata, overview, aligned writers, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image
from rasterio.crs import CRS
from rasterio.windows import Window

from entitwist.errors import InputError
from entitwist.imaging import apply_stretch, compute_stretch, parse_bands, parse_stretch
from entitwist.inference.raster import RasterSource, gdal_env, open_writer

UTM16 = CRS.from_epsg(32616)
TRANSFORM = Affine(0.5, 0.0, 733601.0, 0.0, -0.5, 3725139.0)


def write_geotiff(path, data, *, crs=UTM16, transform=TRANSFORM, nodata=None, tiled=True):
    """Write (C, H, W) ``data`` as a GeoTIFF (tiled 16x16 when possible)."""
    data = np.asarray(data)
    c, h, w = data.shape
    profile = dict(
        driver="GTiff", width=w, height=h, count=c, dtype=data.dtype.name, compress="deflate"
    )
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    if nodata is not None:
        profile["nodata"] = nodata
    if tiled and h >= 16 and w >= 16:
        profile.update(tiled=True, blockxsize=16, blockysize=16)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def ramp_scene(c=4, h=40, w=56, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(200, 4000, size=(c, h, w))).astype(np.uint16)


@pytest.mark.parametrize(
    ("spec", "count", "expected"),
    [
        (None, 4, [1, 2, 3]),
        (None, 3, [1, 2, 3]),
        (None, 1, [1, 1, 1]),
        (None, 2, [1, 1, 1]),
        ("3,2,1", 4, [3, 2, 1]),
        ("2", 4, [2, 2, 2]),
        ([4, 4, 1], 4, [4, 4, 1]),
        (" 1 , 2 , 3 ", 3, [1, 2, 3]),
    ],
)
def test_parse_bands(spec, count, expected):
    assert parse_bands(spec, count) == expected


@pytest.mark.parametrize(
    ("spec", "count"), [("4", 3), ("0,1,2", 3), ("a,b,c", 3), ("1,2", 3), ("1,2,3,4", 4), ("-1", 2)]
)
def test_parse_bands_errors(spec, count):
    with pytest.raises(InputError, match="band"):
        parse_bands(spec, count)


def test_parse_stretch():
    assert parse_stretch(None) is None and parse_stretch("auto") is None
    assert parse_stretch("2,98") == (2.0, 98.0) and parse_stretch("0,100") == (0.0, 100.0)
    for bad in ["98,2", "5", "a,b", "-1,50", "1,101", "2,2", "nan,5"]:
        with pytest.raises(InputError, match="stretch"):
            parse_stretch(bad)


def test_stretch_maps_percentiles_to_0_and_255():
    data = np.arange(1001, dtype=np.float32).reshape(1, 7, 143)  # values 0..1000
    valid = np.ones((7, 143), bool)
    lows, highs = compute_stretch(data, valid, (2, 98))
    np.testing.assert_allclose([lows[0], highs[0]], [20.0, 980.0])
    out = apply_stretch(
        np.array([[[0.0, 20.0, 500.0, 980.0, 1000.0, np.nan]]], np.float32), lows, highs
    )
    np.testing.assert_array_equal(out[0, 0], [0, 0, 128, 255, 255, 0])
    # invalid pixels do not take part in the percentiles
    valid[:, :10] = False
    lows2, _ = compute_stretch(data, valid, (0, 100))
    assert lows2[0] == data[0][valid].min()
    # constant band: no division by zero but one line naming the fix
    with pytest.raises(InputError, match=r"constant \(7\).*--bands.*--stretch none"):
        compute_stretch(np.full((1, 3, 3), 7.0, np.float32), np.ones((3, 3), bool), (2, 98))


def test_multiband_uint16_bands_and_stretch_match_numpy_reference(tmp_path):
    data = ramp_scene()
    path = write_geotiff(tmp_path / "s.tif", data)
    with gdal_env(), RasterSource(path, bands="3,2,1") as src:
        assert (src.width, src.height, src.count, src.dtype) == (56, 40, 4, np.uint16)
        assert src.crs == UTM16 and src.transform == TRANSFORM and src.georeferenced
        raw, valid, factor = src.overview(4096)
        assert factor == 1 and valid.all()
        src.set_stretch_from(raw, valid)
        rgb, valid = src.read_rgb()
    assert rgb.shape == (40, 56, 3) and rgb.dtype == np.uint8
    for channel, band in enumerate([3, 2, 1]):
        b = data[band - 1].astype(np.float64)
        lo, hi = np.percentile(b, [2, 98])
        ref = np.clip(np.rint((b - lo) * 255.0 / (hi - lo)), 0, 255)
        assert np.abs(rgb[..., channel].astype(int) - ref).max() <= 1


def test_windows_read_the_same_pixels_as_the_whole(tmp_path):
    path = write_geotiff(tmp_path / "s.tif", ramp_scene())
    with gdal_env(), RasterSource(path) as src:
        src.set_stretch_from(*src.overview(4096)[:2])
        whole, _ = src.read_rgb()
        part, _ = src.read_rgb(Window(17, 9, 20, 13))
    np.testing.assert_array_equal(part, whole[9:22, 17:37])


def test_uint8_png_passes_through_and_single_band_copied(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(12, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    with gdal_env(), RasterSource(tmp_path / "a.png") as src:
        assert src.crs is None and not src.georeferenced
        src.set_stretch_from(*src.overview(4096)[:2])
        out, valid = src.read_rgb()
    np.testing.assert_array_equal(out, rgb)
    assert valid.all()
    grey = rng.integers(0, 256, size=(12, 20), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.jpg", quality=100)
    with gdal_env(), RasterSource(tmp_path / "g.jpg") as src:
        assert src.bands == [1, 1, 1]
        src.set_stretch_from(*src.overview(4096)[:2])
        out, _ = src.read_rgb()
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])


def test_explicit_stretch_applies_to_uint8(tmp_path):
    rgb = np.tile(np.arange(100, 150, dtype=np.uint8), (10, 1))[..., None].repeat(3, axis=2)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    with gdal_env(), RasterSource(tmp_path / "a.png", stretch=(0, 100)) as src:
        src.set_stretch_from(*src.overview(4096)[:2])
        out, _ = src.read_rgb()
    assert out.min() == 0 and out.max() == 255


def test_nodata_excluded_black_and_invalid(tmp_path):
    data = ramp_scene(c=1)
    data[0, :5, :] = 0
    path = write_geotiff(tmp_path / "n.tif", data, nodata=0)
    with gdal_env(), RasterSource(path) as src:
        raw, valid, _ = src.overview(4096)
        assert not valid[:5].any() and valid[5:].all()
        src.set_stretch_from(raw, valid)
        rgb, valid = src.read_rgb()
    assert (rgb[:5] == 0).all() and not valid[:5].any()
    lo = np.percentile(data[0, 5:].astype(float), 2)
    assert lo > 200  # the zeros did not drag the stretch down
    # an override value
    with gdal_env(), RasterSource(path, nodata=data[0, 10, 10]) as src:
        assert not src.read_valid(Window(10, 10, 1, 1))[0, 0]


def test_float_nan_is_nodata(tmp_path):
    data = np.random.default_rng(0).random((3, 20, 20)).astype(np.float32)
    data[:, 3, 4] = np.nan
    path = write_geotiff(tmp_path / "f.tif", data)
    with gdal_env(), RasterSource(path) as src:
        assert src.stretch_percentiles == (2.0, 98.0)
        raw, valid, _ = src.overview(4096)
        src.set_stretch_from(raw, valid)
        rgb, valid = src.read_rgb()
    assert not valid[3, 4] and valid.sum() == 399 and (rgb[3, 4] == 0).all()


@pytest.mark.parametrize("method", ["gdal", "blocks"])
def test_overview_is_block_mean_of_valid_pixels(tmp_path, method):
    data = ramp_scene(c=3, h=45, w=70)
    data[0, 0:3, 0:3] = 0  # nodata in the first block, in band 1 only
    path = write_geotiff(tmp_path / "o.tif", data, nodata=0)
    with gdal_env(), RasterSource(path) as src:
        raw, valid, factor = src.overview(16, method=method)
    assert factor == 5 and raw.shape == (3, 9, 14) and valid.shape == (9, 14)
    # reference: plain loops over blocks. GDAL: each band averages its own valid pixels
    # (per-band nodata masks), within half a unit (it averages uint16 as uint16); the strip
    # reader: a pixel is valid when no band is nodata (as read_raw decides)
    ok = np.all(data != 0, axis=0)
    for oy in range(9):
        for ox in range(14):
            blk = ok[oy * 5 : oy * 5 + 5, ox * 5 : ox * 5 + 5]
            for c in range(3):
                vals = data[c, oy * 5 : oy * 5 + 5, ox * 5 : ox * 5 + 5]
                if method == "gdal":
                    assert abs(raw[c, oy, ox] - vals[vals != 0].mean()) <= 0.5
                else:
                    assert abs(raw[c, oy, ox] - vals[blk].mean()) < 1e-2
    assert valid.all()


def test_all_nodata_is_an_error(tmp_path):
    path = write_geotiff(tmp_path / "z.tif", np.zeros((1, 20, 20), np.uint16), nodata=0)
    with gdal_env(), RasterSource(path) as src, pytest.raises(InputError, match="nodata"):
        src.set_stretch_from(*src.overview(4096)[:2])


def test_writer_keeps_grid_crs_and_transform(tmp_path):
    path = write_geotiff(tmp_path / "s.tif", ramp_scene())
    with gdal_env(), RasterSource(path) as src:
        with open_writer(tmp_path / "m.tif", src, dtype="uint8") as dst:
            dst.write(np.ones((40, 56), np.uint8), 1)
        with open_writer(tmp_path / "p.tif", src, dtype="float32", nodata=float("nan")) as dst:
            dst.write(np.full((40, 56), 0.25, np.float32), 1)
    for name, dtype in [("m.tif", "uint8"), ("p.tif", "float32")]:
        with rasterio.open(tmp_path / name) as ds:
            assert (ds.crs, ds.transform, ds.width, ds.height, ds.dtypes[0]) == (
                UTM16,
                TRANSFORM,
                56,
                40,
                dtype,
            )


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda d: d / "missing.tif", "does not exist"),
        (lambda d: d, "directory"),
        (lambda d: (d / "x.txt").write_text("hello") and d / "x.txt", "unsupported format"),
        (lambda d: (d / "x.tif").write_bytes(b"") or d / "x.tif", "empty"),
        (lambda d: (d / "x.tif").write_bytes(b"not a tiff at all") and d / "x.tif", "cannot read"),
        (
            lambda d: (d / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10) and d / "x.png",
            "cannot read",
        ),
    ],
)
def test_bad_files(tmp_path, make, match):
    with gdal_env(), pytest.raises(InputError, match=match):
        RasterSource(make(tmp_path))


def test_truncated_geotiff(tmp_path):
    path = write_geotiff(tmp_path / "t.tif", ramp_scene(c=3, h=64, w=64), tiled=True)
    blob = path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(blob[: len(blob) // 2])
    with gdal_env(), pytest.raises(InputError, match="truncated|corrupt"):
        with RasterSource(cut) as src:
            src.overview(4096)


@pytest.mark.parametrize("shape", [(1, 1), (1, 50), (3, 3)])
def test_tiny_images_refused(tmp_path, shape):
    Image.fromarray(np.zeros(shape, np.uint8)).save(tmp_path / "t.png")
    with gdal_env(), pytest.raises(InputError, match="at least"):
        RasterSource(tmp_path / "t.png")


def test_unreadable_file(tmp_path, monkeypatch):
    import entitwist.inference.raster as raster

    path = write_geotiff(tmp_path / "s.tif", ramp_scene())
    monkeypatch.setattr(raster.os, "access", lambda p, mode: False)  # root ignores chmod 000
    with pytest.raises(InputError, match="not readable"):
        RasterSource(path)


def test_nodata_comparison_matches_gdal_masks(tmp_path):
    """The fast path (compare with the nodata value) equals GDAL's own mask bands."""
    data = ramp_scene(c=4, h=48, w=40)
    data[:, 5:9, :] = 0
    data[2, 20:30, 10:20] = 0  # nodata in one band only
    path = write_geotiff(tmp_path / "n.tif", data, nodata=0)
    with gdal_env(), RasterSource(path, bands="3,2,1") as src:
        assert src._mask_mode == "value"
        valid = src.read_valid(Window(0, 0, 40, 48))
        gdal = np.all(src.ds.read_masks([1, 2, 3]) > 0, axis=0)
    np.testing.assert_array_equal(valid, gdal)
    assert not valid[5:9].any() and not valid[20:30, 10:20].any() and valid[30:].all()


def test_alpha_band_marks_nodata(tmp_path):
    rgba = np.full((16, 20, 4), 200, np.uint8)
    rgba[:4, :, 3] = 0  # transparent rows
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    with gdal_env(), RasterSource(tmp_path / "a.png") as src:
        assert src._mask_mode == "gdal" and src.bands == [1, 2, 3]
        valid = src.read_valid(Window(0, 0, 20, 16))
    assert not valid[:4].any() and valid[4:].all()


def _block_mean_reference(data, ok, factor):
    """Plain loops: the mean of the valid pixels of each factor x factor block (edge blocks
    smaller), NaN where none is valid."""
    c, h, w = data.shape
    oh, ow = -(-h // factor), -(-w // factor)
    ref = np.full((c, oh, ow), np.nan)
    for oy in range(oh):
        for ox in range(ow):
            blk = ok[oy * factor : (oy + 1) * factor, ox * factor : (ox + 1) * factor]
            for b in range(c):
                vals = data[b, oy * factor : (oy + 1) * factor, ox * factor : (ox + 1) * factor]
                if blk.any():
                    ref[b, oy, ox] = vals[blk].astype(np.float64).mean()
    return ref


@pytest.mark.parametrize("method", ["auto", "gdal", "blocks"])
@pytest.mark.parametrize("overviews", [False, True])
@pytest.mark.parametrize("kind", ["uint16-nodata", "float32-nan-nodata", "float32-nan"])
def test_overview_through_gdal_matches_block_means(tmp_path, overviews, kind, method):
    """The whole-scene view read with out_shape + average (and the file's overviews when it
    has them) equals the block means of the valid pixels: a nodata corner, a nodata block
    in the middle, and without overviews sides that are not multiples of the factor (edge
    blocks; a file's overview pixels only align with blocks on whole multiples)."""
    from rasterio.enums import Resampling

    rng = np.random.default_rng(3)
    h, w, factor = (84, 104, 4) if overviews else (83, 101, 4)  # max_side 26 -> factor 4
    if kind == "uint16-nodata":
        data = rng.integers(100, 4000, size=(3, h, w)).astype(np.uint16)
        data[:, :9, :13] = 0  # a nodata corner (whole blocks and partial ones)
        data[:, 40:44, 60:64] = 0  # exactly one block of nodata
        path = write_geotiff(tmp_path / "s.tif", data, nodata=0)
        ok = np.all(data != 0, axis=0)
    else:
        data = rng.uniform(0, 1000, size=(3, h, w)).astype(np.float32)
        data[:, :9, :13] = np.nan
        data[:, 40:44, 60:64] = np.nan
        nodata = float("nan") if kind.endswith("-nodata") else None
        path = write_geotiff(tmp_path / "s.tif", data, nodata=nodata)
        ok = np.all(np.isfinite(data), axis=0)
    if overviews:
        with rasterio.open(path, "r+") as ds:
            ds.build_overviews([2, 4], Resampling.average)
        with rasterio.open(path) as ds:
            assert ds.overviews(1) == [2, 4]
    if method == "gdal" and kind == "float32-nan":
        pytest.skip("GDAL's average does not skip NaN that the file does not declare")
    with gdal_env(), RasterSource(path, stretch=(0, 100)) as src:
        raw, valid, got = src.overview(26, method=method)
        if method == "auto":  # GDAL's resampling when there are overviews to read
            assert src.ds.overviews(1) == ([2, 4] if overviews else [])
    assert got == factor and raw.shape == (3, 21, 26)
    from_overview = overviews and (method == "gdal" or (method == "auto" and kind != "float32-nan"))
    if overviews and kind != "float32-nan":  # GDAL read the overview, not the full scene
        with rasterio.open(path, overview_level=1) as ov:
            assert ov.shape == (21, 26)
    ref = _block_mean_reference(data, ok, factor)
    np.testing.assert_array_equal(valid, np.isfinite(ref[0]))
    assert not valid[10, 15] and not valid[0, 0] and valid[2, 3]  # (40:44, 60:64), corner
    assert np.isnan(raw[:, ~valid]).all()
    # integer imagery is averaged in its own type by GDAL: within half a unit (a unit
    # through the two rounded overview levels)
    tol = (1.0 if from_overview else 0.5) if kind.startswith("uint16") else 1e-3
    full = valid.copy()  # blocks without nodata: the overview's mean of means is exact
    for oy, ox in np.argwhere(valid):
        full[oy, ox] = ok[oy * factor : (oy + 1) * factor, ox * factor : (ox + 1) * factor].all()
    assert full.sum() > 0.9 * valid.sum()
    np.testing.assert_allclose(raw[:, full], ref[:, full], atol=tol, rtol=1e-6)
    if not from_overview:
        np.testing.assert_allclose(raw[:, valid], ref[:, valid], atol=tol, rtol=1e-6)
    for oy, ox in np.argwhere(valid & ~full):  # partly nodata blocks: within the valid values
        blk = data[:, oy * factor : (oy + 1) * factor, ox * factor : (ox + 1) * factor]
        keep = ok[oy * factor : (oy + 1) * factor, ox * factor : (ox + 1) * factor]
        vals = blk[:, keep].astype(np.float64)  # (3, n)
        assert (vals.min(1) - tol <= raw[:, oy, ox]).all()
        assert (raw[:, oy, ox] <= vals.max(1) + tol).all()


def test_overview_with_an_override_nodata_averages_it_out(tmp_path):
    """--nodata that the file does not declare: GDAL cannot exclude it, the strip reader
    does (same block-mean reference)."""
    rng = np.random.default_rng(4)
    data = rng.integers(100, 4000, size=(3, 30, 45)).astype(np.uint16)
    data[:, 5:20, 7:30] = 9
    path = write_geotiff(tmp_path / "s.tif", data)
    with gdal_env(), RasterSource(path, nodata=9, stretch=(0, 100)) as src:
        raw, valid, factor = src.overview(10)
    ref = _block_mean_reference(data, np.all(data != 9, axis=0), factor)
    assert factor == 5
    np.testing.assert_array_equal(valid, np.isfinite(ref[0]))
    np.testing.assert_allclose(raw[:, valid], ref[:, valid], rtol=1e-5)
