"""entitwist.imaging: every format / dtype / band count / nodata becomes the same uint8 RGB by
one band rule and one stretch rule (against hand-computed values); the nearest resize equals
PIL's NEAREST; masks, label maps, bad files."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from entitwist.errors import DataError, InputError
from entitwist.imaging import (
    compute_stretch,
    nearest_index,
    parse_stretch,
    read_image,
    read_label_map,
    read_mask,
    resize_nearest,
)
from entitwist.imaging import read as imaging_read

RNG = np.random.default_rng(0)


def reference_stretch(band: np.ndarray, valid: np.ndarray, p=(2.0, 98.0)) -> np.ndarray:
    """Independent twin of the stretch rule for one band: numpy percentile in float64."""
    lo, hi = np.percentile(band[valid].astype(np.float64), p)
    out = np.clip(np.rint((band.astype(np.float64) - lo) * 255.0 / (hi - lo)), 0, 255)
    return np.where(valid, out, 0).astype(np.uint8)


def write_tif(path, data, nodata=None):
    import rasterio

    c, h, w = data.shape
    profile = dict(driver="GTiff", width=w, height=h, count=c, dtype=data.dtype.name)
    if nodata is not None:
        profile["nodata"] = nodata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
    return path


@pytest.fixture(params=["rasterio", "fallback"])
def tiff_reader(request, monkeypatch):
    """Run a TIFF test through rasterio and through the PIL/tifffile fallback."""
    if request.param == "fallback":
        monkeypatch.setattr(imaging_read, "_rasterio_available", lambda: False)
    return request.param


# --- plain images: uint8 as is ---------------------------------------------------------------


def test_rgb_png_jpeg_and_tiff_are_used_as_is(tmp_path, tiff_reader):
    a = RNG.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    for name in ("a.png", "a.tif"):
        Image.fromarray(a).save(tmp_path / name)
        got = read_image(tmp_path / name)
        assert got.dtype == np.uint8 and got.flags.writeable
        np.testing.assert_array_equal(got, a)
    Image.fromarray(a).save(tmp_path / "a.jpg", quality=80)
    want = np.asarray(Image.open(tmp_path / "a.jpg").convert("RGB"))  # PIL decodes JPEG
    np.testing.assert_array_equal(read_image(tmp_path / "a.jpg"), want)


def test_gray_palette_bilevel_and_alpha_as_nodata(tmp_path):
    g = RNG.integers(0, 256, (5, 6), dtype=np.uint8)
    Image.fromarray(g).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.repeat(g[..., None], 3, 2))
    p = Image.fromarray(g).convert("P")
    p.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), np.asarray(p.convert("RGB")))
    Image.fromarray(g > 128).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_image(tmp_path / "b.png")[..., 0], np.where(g > 128, 255, 0))
    rgba = RNG.integers(0, 256, (5, 6, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[0, :2, 3] = 0  # transparent = nodata = black
    Image.fromarray(rgba).save(tmp_path / "a.png")
    want = rgba[..., :3].copy()
    want[0, :2] = 0
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), want)


# --- the stretch rule --------------------------------------------------------------------------


def test_16bit_grey_png_per_band_2_98(tmp_path):
    a = np.linspace(0, 60000, 100 * 100).reshape(100, 100).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "s.png")
    got = read_image(tmp_path / "s.png")
    assert got.shape == (100, 100, 3) and got.dtype == np.uint8
    want = reference_stretch(a, np.ones(a.shape, bool))
    for c in range(3):
        np.testing.assert_array_equal(got[..., c], want)
    # hand values: 101 samples 0, 100, ..., 10000: 2 % -> 200, 98 % -> 9800
    b = (np.arange(101) * 100).astype(np.uint16).reshape(1, 101)
    Image.fromarray(b).save(tmp_path / "h.png")
    got_b = read_image(tmp_path / "h.png")[0, :, 0]
    assert got_b[[0, 2, 51, 98, 100]].tolist() == [0, 0, 130, 255, 255]  # 4900*255/9600=130.2
    # an explicit stretch: 0-100 % is min..max
    got = read_image(tmp_path / "s.png", stretch="0,100")
    assert got[0, 0, 0] == 0 and got[-1, -1, 0] == 255


def test_four_band_uint16_geotiff_bands_nodata(tmp_path, tiff_reader):
    data = RNG.integers(200, 4000, (4, 20, 24)).astype(np.uint16)
    data[3] *= 10  # a bright NIR band: per-band stretch keeps R, G, B apart from it
    data[:, :3, :4] = 0  # nodata
    path = write_tif(tmp_path / "m.tif", data, nodata=0)
    valid = np.ones((20, 24), bool)
    valid[:3, :4] = False
    got = read_image(path)  # default bands 1, 2, 3
    for c in range(3):
        np.testing.assert_array_equal(got[..., c], reference_stretch(data[c], valid))
    assert not got[:3, :4].any()  # nodata is black
    got = read_image(path, bands="4,3,2", stretch="5,95")
    np.testing.assert_array_equal(got[..., 0], reference_stretch(data[3], valid, (5, 95)))
    np.testing.assert_array_equal(got[..., 2], reference_stretch(data[1], valid, (5, 95)))
    got = read_image(path, bands="4")
    np.testing.assert_array_equal(
        got, np.repeat(reference_stretch(data[3], valid)[..., None], 3, 2)
    )
    # a nodata override replaces the file's value
    v = data[0, 10, 10]
    got = read_image(path, nodata=float(v))
    valid2 = np.all(data[:3] != v, axis=0)  # the zeros are values now, v is nodata
    assert not got[10, 10].any()
    np.testing.assert_array_equal(got[..., 1], reference_stretch(data[1], valid2))


def test_float_tiff_nan_is_nodata(tmp_path, tiff_reader):
    f = RNG.random((3, 12, 10)).astype(np.float32)
    f[:, 0, 0] = np.nan
    path = write_tif(tmp_path / "f.tif", f)
    valid = np.isfinite(f[0])
    got = read_image(path)
    for c in range(3):
        np.testing.assert_array_equal(got[..., c], reference_stretch(f[c], valid))
    assert not got[0, 0].any()


def test_mostly_flat_band_uses_its_range():
    data = np.zeros((1, 10, 10), np.float32)
    data[0, 0, :1] = 50.0  # 1 % of the pixels: the 2-98 % range collapses
    lo, hi = compute_stretch(data, np.ones((10, 10), bool), (2, 98))
    assert (lo[0], hi[0]) == (0.0, 50.0)


def test_impossible_stretch_is_one_line_naming_the_file_and_fix(tmp_path, tiff_reader):
    data = RNG.integers(200, 4000, (3, 8, 8)).astype(np.uint16)
    data[1] = 777  # a constant band
    path = write_tif(tmp_path / "c.tif", data)
    with pytest.raises(
        InputError, match=r"band 2 of .*c\.tif is constant \(777\).*--bands.*--stretch none"
    ):
        read_image(path)
    # the fixes work: other bands, or the values as they are
    assert read_image(path, bands="1").shape == (8, 8, 3)
    np.testing.assert_array_equal(read_image(path, stretch="none")[..., 1], 255)
    empty = write_tif(tmp_path / "z.tif", np.zeros((1, 8, 8), np.uint16), nodata=0)
    with pytest.raises(InputError, match=r"every pixel of .*z\.tif is nodata"):
        read_image(empty)
    for bad in ("2", "2,98,99", "98,2", "x,y"):
        with pytest.raises(InputError, match="stretch"):
            parse_stretch(bad)
    assert parse_stretch("none") == "none" and parse_stretch([2, 98]) == (2.0, 98.0)
    with pytest.raises(InputError, match="out of range"):
        read_image(path, bands="5")


# --- one nearest rule -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_in", "n_out"),
    [(512, 480), (2, 7), (2, 1), (800, 480), (13, 40), (480, 512), (9, 9), (97, 31), (1, 5)],
)
def test_nearest_index_equals_pil_nearest(n_in, n_out):
    ramp = Image.fromarray(np.arange(n_in, dtype=np.int32)[None, :], mode="I")
    want = np.asarray(ramp.resize((n_out, 1), Image.Resampling.NEAREST))[0]
    np.testing.assert_array_equal(nearest_index(n_in, n_out), want)


def test_nearest_index_sweep_against_pil():
    for n_in in range(1, 70):
        for n_out in range(1, 70):
            ramp = Image.fromarray(np.arange(n_in, dtype=np.int32)[:, None], mode="I")
            want = np.asarray(ramp.resize((1, n_out), Image.Resampling.NEAREST))[:, 0]
            assert nearest_index(n_in, n_out).tolist() == want.tolist(), (n_in, n_out)


@pytest.mark.parametrize(
    "src,dst", [((24, 36), (16, 16)), ((17, 13), (40, 29)), ((512, 512), (480, 480))]
)
def test_resize_nearest_numpy_and_torch_equal_pil(src, dst):
    a = RNG.integers(0, 256, src, dtype=np.uint8)
    want = np.asarray(Image.fromarray(a).resize(dst[::-1], Image.Resampling.NEAREST))
    np.testing.assert_array_equal(resize_nearest(a, dst), want)
    got = resize_nearest(torch.from_numpy(a)[None], dst)  # (1, h, w), dtype kept
    assert got.dtype == torch.uint8 and got.shape == (1, *dst)
    np.testing.assert_array_equal(got[0].numpy(), want)
    assert resize_nearest(a, src) is a


# --- masks, label maps, bad files -------------------------------------------------------------


def test_read_mask_thresholds_and_channels(tmp_path):
    m = np.array([[0, 30, 51], [255, 50, 0]], np.uint8)
    Image.fromarray(m).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), [[0, 1, 1], [1, 1, 0]])
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", 50), [[0, 0, 1], [1, 0, 0]])
    la = np.zeros((2, 3, 2), np.uint8)
    la[..., 1] = 255  # alpha everywhere must not count
    la[1, 2, 0] = 9
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "la.png"), [[0, 0, 0], [0, 0, 1]])


def test_label_maps(tmp_path):
    lab = RNG.integers(0, 41, (6, 7), dtype=np.uint8)
    Image.fromarray(lab).save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_label_map(tmp_path / "l.png"), lab)
    Image.fromarray(RNG.integers(0, 9, (6, 7, 3), dtype=np.uint8)).save(tmp_path / "c.png")
    with pytest.raises(DataError, match="not a label map"):
        read_label_map(tmp_path / "c.png")


def test_missing_and_corrupt_files(tmp_path, tiff_reader):
    with pytest.raises(DataError, match=r"image not found: .*nope.png"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(DataError, match=r"mask not found"):
        read_mask(tmp_path / "nope.png")
    for name, data in [
        ("c.png", b"\x89PNG\r\n\x1a\nbroken"),
        ("c.jpg", b"\xff\xd8\xff\xe0junk"),
        ("c.tif", b"II*\x00junk"),
        ("c.txt", b"hello"),
    ]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=rf"cannot read .*{name}.*corrupt"):
            read_image(tmp_path / name)
    a = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "t.png")
    raw = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="cannot read"):
        read_image(tmp_path / "t.png")


def test_images_beyond_pil_limit(tmp_path, monkeypatch):
    """PIL refuses giant plain images in one line; segment reads them through GDAL windows
    (a PNG decodes to the same values)."""
    from entitwist.inference.raster import RasterSource, gdal_env

    a = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError, match=r"big\.png.*convert it to a tiled GeoTIFF"):
        read_image(tmp_path / "big.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gdal_env(), RasterSource(tmp_path / "big.png") as src:
            data, valid = src.read_raw()
            src.set_stretch_from(data, valid)
            np.testing.assert_array_equal(src.to_rgb(data, valid), a)
