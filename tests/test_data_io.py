"""entitwist.data.io: every image kind becomes uint8 RGB; masks, label maps, bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from entitwist.data.io import (
    read_image,
    read_label_map,
    read_mask,
    resize_nearest,
    stretch_to_uint8,
    to_uint8_rgb,
)
from entitwist.errors import DataError

RNG = np.random.default_rng(0)


def test_rgb_png_and_tiff_roundtrip(tmp_path):
    a = RNG.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    for name in ("a.png", "a.tif"):
        Image.fromarray(a).save(tmp_path / name)
        got = read_image(tmp_path / name)
        assert got.dtype == np.uint8 and got.flags.writeable
        np.testing.assert_array_equal(got, a)


def test_gray_rgba_palette_and_bilevel(tmp_path):
    g = RNG.integers(0, 256, (5, 6), dtype=np.uint8)
    Image.fromarray(g).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.repeat(g[..., None], 3, 2))
    rgba = RNG.integers(0, 256, (5, 6, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgba[..., :3])
    p = Image.fromarray(g).convert("P")
    p.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), np.asarray(p.convert("RGB")))
    Image.fromarray(g > 128).save(tmp_path / "b.png")
    got = read_image(tmp_path / "b.png")
    np.testing.assert_array_equal(got[..., 0], np.where(g > 128, 255, 0))


def test_16bit_is_stretched_by_percentiles(tmp_path):
    a = np.linspace(0, 60000, 100 * 100).reshape(100, 100).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "s.png")
    got = read_image(tmp_path / "s.png")
    assert got.shape == (100, 100, 3) and got.dtype == np.uint8
    assert got[0, 0, 0] == 0 and got[-1, -1, 0] == 255
    assert np.all(np.diff(got[..., 0].reshape(-1).astype(int)) >= 0)  # monotone
    # 1% of pixels at each end saturate; the middle maps linearly
    lo, hi = np.percentile(a, (1, 99))
    want = np.clip(np.rint((a[50, 50] - lo) * 255 / (hi - lo)), 0, 255)
    assert got[50, 50, 0] == want


def test_multiband_and_planar_tiff_through_tifffile(tmp_path):
    import tifffile

    a = RNG.integers(0, 4000, (12, 10, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "m.tif", a, photometric="rgb")
    got = read_image(tmp_path / "m.tif")
    np.testing.assert_array_equal(got, stretch_to_uint8(a))
    f = RNG.random((3, 12, 10)).astype(np.float32)  # planar float
    tifffile.imwrite(tmp_path / "f.tif", f, photometric="minisblack", planarconfig="separate")
    got = read_image(tmp_path / "f.tif")
    assert got.shape == (12, 10, 3)
    np.testing.assert_array_equal(got, stretch_to_uint8(np.moveaxis(f, 0, -1)))


def test_to_uint8_rgb_edge_cases():
    assert to_uint8_rgb(np.zeros((3, 4, 1), np.uint8)).shape == (3, 4, 3)
    np.testing.assert_array_equal(
        stretch_to_uint8(np.full((4, 4), 7.0)), np.zeros((4, 4), np.uint8)
    )
    x = np.array([[np.nan, 1.0], [2.0, 3.0]])
    assert stretch_to_uint8(x)[0, 0] == 0
    with pytest.raises(DataError, match=r"shape \(4, 4, 6\).*select three bands"):
        to_uint8_rgb(np.zeros((4, 4, 6), np.uint16))


def test_read_mask_thresholds_and_channels(tmp_path):
    m = np.array([[0, 30, 51], [255, 50, 0]], np.uint8)
    Image.fromarray(m).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), [[0, 1, 1], [1, 1, 0]])
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", 50), [[0, 0, 1], [1, 0, 0]])
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 1, 2] = 200
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png"), [[0, 1, 0], [0, 0, 0]])
    la = np.zeros((2, 3, 2), np.uint8)
    la[..., 1] = 255  # alpha everywhere must not count
    la[1, 2, 0] = 9
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "la.png"), [[0, 0, 0], [0, 0, 1]])


def test_label_maps_and_resize(tmp_path):
    lab = RNG.integers(0, 41, (6, 7), dtype=np.uint8)
    Image.fromarray(lab).save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_label_map(tmp_path / "l.png"), lab)
    Image.fromarray(RNG.integers(0, 9, (6, 7, 3), dtype=np.uint8)).save(tmp_path / "c.png")
    with pytest.raises(DataError, match="not a label map"):
        read_label_map(tmp_path / "c.png")
    r = resize_nearest(lab, (12, 14))
    np.testing.assert_array_equal(r, lab.repeat(2, 0).repeat(2, 1))


def test_missing_and_corrupt_files(tmp_path):
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
    # truncated PNG: header fine, data cut
    a = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "t.png")
    raw = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="cannot read"):
        read_image(tmp_path / "t.png")
