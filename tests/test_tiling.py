"""Large scenes: tile plan, blending window, upsampling twin, localise-then-refine, streaming."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from entitwist.errors import InputError
from entitwist.inference.raster import RasterSource, gdal_env
from entitwist.inference.tiling import (
    TilingOptions,
    bilinear_rows,
    blend_window,
    plan_tiles,
    segment_scene,
    upsample_rows,
)
from test_raster import write_geotiff


@pytest.mark.parametrize(
    ("h", "w", "tile", "overlap"), [(1000, 700, 256, 64), (300, 300, 300, 0), (50, 900, 128, 32)]
)
def test_plan_tiles_covers_with_overlap(h, w, tile, overlap):
    tiles = plan_tiles(h, w, tile, overlap)
    cover = np.zeros((h, w), int)
    for r, c, th, tw in tiles:
        assert 0 <= r and r + th <= h and 0 <= c and c + tw <= w
        assert th == min(tile, h) and tw == min(tile, w)
        cover[r : r + th, c : c + tw] += 1
    assert cover.min() >= 1
    rows = sorted({t[0] for t in tiles})
    cols = sorted({t[1] for t in tiles})
    for starts, n in ((rows, h), (cols, w)):
        assert starts[0] == 0 and starts[-1] + min(tile, n) == n
        for a, b in zip(starts, starts[1:]):
            assert min(tile, n) - (b - a) >= overlap  # neighbours share at least `overlap`
    assert tiles == sorted(tiles)  # row-major


def test_blend_window_shape_and_ramps():
    w = blend_window(64, 48, 16)
    assert w.shape == (64, 48) and w.dtype == np.float32
    assert (w > 0).all() and w.max() == pytest.approx(1.0)
    assert (w[16:48, 16:32] == 1).all() and w[0, 0] < 0.01
    np.testing.assert_allclose(w, w[::-1, ::-1], atol=1e-7)  # symmetric
    assert np.all(np.diff(w[:16, 24]) > 0)  # rises smoothly
    edge = blend_window(64, 48, 16, top=True, left=True)
    assert (edge[:16, 16:32] == 1).all() and edge[0, 0] == 1.0 and edge[-1, -1] < 0.01


@pytest.mark.parametrize("factor", [1, 2, 3, 8])
def test_upsample_rows_matches_torch_bilinear(factor):
    coarse = np.random.default_rng(factor).random((7, 9)).astype(np.float32)
    ref = F.interpolate(
        torch.from_numpy(coarse)[None, None],
        scale_factor=factor,
        mode="bilinear",
        align_corners=False,
    )[0, 0].numpy()
    full = upsample_rows(coarse, factor, 0, 7 * factor, 9 * factor)
    np.testing.assert_allclose(full, ref, atol=1e-5)
    np.testing.assert_allclose(
        upsample_rows(coarse, factor, 5, 11, 9 * factor), ref[5:11], atol=1e-5
    )


@pytest.mark.parametrize(
    ("src", "out"), [((16, 16), (37, 53)), ((32, 32), (20, 70)), ((9, 13), (9, 13))]
)
def test_bilinear_rows_matches_torch_for_any_scale(src, out):
    image = np.random.default_rng(1).random(src).astype(np.float32)
    ref = F.interpolate(
        torch.from_numpy(image)[None, None], size=out, mode="bilinear", align_corners=False
    )[0, 0]
    got = bilinear_rows(image, src[0] / out[0], src[1] / out[1], 3, out[0] - 1, out[1])
    np.testing.assert_allclose(got, ref.numpy()[3 : out[0] - 1], atol=1e-5)


def red_scene(h, w, boxes):
    """uint16 3-band scene; boxes (r0, r1, c0, c1) are 'red' (band 1 high, band 2 low)."""
    data = np.full((3, h, w), 1000, np.uint16)
    data[1] += 200  # background slightly 'green'
    rng = np.random.default_rng(0)
    data += rng.integers(0, 50, size=data.shape, dtype=np.uint16)
    for r0, r1, c0, c1 in boxes:
        data[0, r0:r1, c0:c1] = 3000
        data[1, r0:r1, c0:c1] = 200
    return data


def red_probability(rgb):
    """A pointwise 'model': probability from red minus green (so tiling must not change it)."""
    x = rgb.astype(np.float32) / 255.0
    return (1 / (1 + np.exp(-20 * (x[..., 0] - x[..., 1])))).astype(np.float32)


class Collect:
    """A sink that assembles the streamed bands and checks they come in order, once each."""

    def __init__(self, h, w):
        self.prob = np.full((h, w), -1.0, np.float32)
        self.mask = np.zeros((h, w), bool)
        self.next_row = 0
        self.max_rows = 0

    def __call__(self, r0, r1, prob, mask):
        assert r0 == self.next_row and r1 > r0
        assert prob.shape == mask.shape == (r1 - r0, self.prob.shape[1])
        self.prob[r0:r1], self.mask[r0:r1] = prob, mask
        self.next_row = r1
        self.max_rows = max(self.max_rows, r1 - r0)


def run(tmp_path, data, opts, predict, nodata=None):
    path = write_geotiff(tmp_path / "scene.tif", data, nodata=nodata)
    sink = Collect(*data.shape[1:])
    calls = []

    def wrapped(rgb, window):
        calls.append((rgb.shape, window))
        return predict(rgb, window)

    with gdal_env(), RasterSource(path) as src:
        result = segment_scene(src, wrapped, sink, opts, progress=False)
    assert sink.next_row == data.shape[1]
    return result, sink, calls


def test_pointwise_model_gives_the_same_answer_tiled_or_not(tmp_path):
    data = red_scene(300, 260, [(40, 90, 30, 100), (200, 260, 150, 250)])
    opts = TilingOptions(max_side=64, tile_size=96, overlap=24, block=32, roi_threshold=0.2)
    result, sink, calls = run(tmp_path, data, opts, lambda rgb, win: red_probability(rgb))
    assert result.tiled and result.factor == 5 and result.overview_rgb.shape == (60, 52, 3)
    assert calls[0][1] is None and calls[0][0] == (60, 52, 3)  # the whole-scene view first
    assert all(shape[:2] <= (96, 96) for shape, _ in calls[1:])  # then bounded tiles
    assert 0 < result.tiles_refined < result.tiles_total  # only around what was found
    # reference: the pointwise model on the full-resolution scene, same stretch
    with gdal_env(), RasterSource(tmp_path / "scene.tif") as src:
        src.set_stretch_from(*src.overview(64)[:2])
        full = red_probability(src.read_rgb()[0])
    truth = np.zeros((300, 260), bool)
    truth[40:90, 30:100] = truth[200:260, 150:250] = True
    np.testing.assert_array_equal(sink.mask, truth)
    near = ndimage.binary_dilation(truth, iterations=8)
    np.testing.assert_allclose(sink.prob[near], full[near], atol=1e-5)  # blended tiles == direct
    assert sink.max_rows <= 32


def test_low_resolution_tiles_blend_like_a_full_resolution_twin(tmp_path):
    """Tiles answered at a network size (24 x 24) are resampled and blended row band by row
    band; the result equals a plain twin that upsamples every tile to full resolution with
    torch and blends whole-image accumulators."""
    data = red_scene(150, 170, [(20, 70, 30, 120), (90, 140, 100, 160)])
    small = 24

    def predict(rgb, window):
        p = red_probability(rgb)
        if window is None:
            return np.ones_like(p)  # ROI = everything: every tile is refined
        t = torch.from_numpy(p)[None, None]
        return F.interpolate(t, size=(small, small), mode="bilinear", align_corners=False)[
            0, 0
        ].numpy()

    opts = TilingOptions(max_side=64, tile_size=64, overlap=16, block=16)
    result, sink, calls = run(tmp_path, data, opts, predict)
    assert result.tiles_refined == result.tiles_total == len(calls) - 1
    num = np.zeros((150, 170), np.float64)
    den = np.zeros((150, 170), np.float64)
    with gdal_env(), RasterSource(tmp_path / "scene.tif") as src:
        src.set_stretch_from(*src.overview(64)[:2])
        for _, win in calls[1:]:
            r, c, th, tw = win.row_off, win.col_off, win.height, win.width
            rgb, valid = src.read_rgb(win)
            low = torch.from_numpy(predict(rgb, win))[None, None]
            full = F.interpolate(low, size=(th, tw), mode="bilinear", align_corners=False)[
                0, 0
            ].numpy()
            w = blend_window(
                th, tw, 16, top=r == 0, bottom=r + th == 150, left=c == 0, right=c + tw == 170
            )
            num[r : r + th, c : c + tw] += w * valid * full
            den[r : r + th, c : c + tw] += w * valid
    np.testing.assert_allclose(sink.prob, num / den, atol=1e-5)


def test_whole_scene_view_decides_which_object(tmp_path):
    """'The largest red box': on the whole scene only the largest box scores; tiles alone
    would mark both. The result must keep only the largest box, at full resolution."""
    data = red_scene(320, 320, [(30, 120, 30, 150), (220, 260, 220, 260)])

    def largest_red(rgb, window):
        p = red_probability(rgb)
        if window is not None:  # a tile: local evidence only
            return p
        labels, n = ndimage.label(p >= 0.5)
        sizes = ndimage.sum(np.ones_like(p), labels, index=np.arange(1, n + 1))
        return np.where(labels == 1 + int(np.argmax(sizes)), p, 0.0).astype(np.float32)

    opts = TilingOptions(max_side=80, tile_size=96, overlap=16, block=16)
    _, sink, _ = run(tmp_path, data, opts, largest_red)
    assert sink.mask[30:120, 30:150].all()
    assert not sink.mask[200:, 200:].any()
    assert sink.mask.sum() == 90 * 120  # pixel-exact outline of the large box


def test_untiled_small_scene_is_one_pass(tmp_path):
    data = red_scene(60, 80, [(10, 30, 10, 50)])
    result, sink, calls = run(
        tmp_path, data, TilingOptions(max_side=128), lambda rgb, w: red_probability(rgb)
    )
    assert not result.tiled and result.factor == 1 and len(calls) == 1 and result.tiles_total == 0
    assert sink.mask[10:30, 10:50].all() and sink.mask.sum() == 800


def test_mode_always_and_never(tmp_path):
    data = red_scene(200, 200, [(50, 150, 50, 150)])
    res, sink, calls = run(
        tmp_path,
        data,
        TilingOptions(mode="always", max_side=1024, tile_size=64, overlap=16),
        lambda rgb, w: red_probability(rgb),
    )
    assert res.tiled and res.factor == 1 and len(calls) > 1 and sink.mask.sum() == 100 * 100
    res, sink, calls = run(
        tmp_path,
        data,
        TilingOptions(mode="never", max_side=50),
        lambda rgb, w: red_probability(rgb),
    )
    assert not res.tiled and res.factor == 4 and len(calls) == 1
    assert sink.mask[60:140, 60:140].all() and not sink.mask[:40].any()  # coarse, upsampled


def test_nodata_never_in_mask(tmp_path):
    data = red_scene(120, 120, [(0, 120, 0, 120)])  # everything red
    data[:2, :, ::3] += 40  # not constant: a constant band has no percentile stretch
    data[:, :, :20] = 0  # nodata strip
    _, sink, _ = run(
        tmp_path,
        data,
        TilingOptions(max_side=40, tile_size=48, overlap=8, block=16),
        lambda rgb, w: np.ones(rgb.shape[:2], np.float32),
        nodata=0,
    )
    assert not sink.mask[:, :20].any() and np.isnan(sink.prob[:, :20]).all()
    assert sink.mask[:, 20:].all()


def test_all_nodata_scene_is_an_error(tmp_path):
    data = np.zeros((3, 64, 64), np.uint16)
    with pytest.raises(InputError, match="nodata"):
        run(tmp_path, data, TilingOptions(), lambda rgb, w: red_probability(rgb), nodata=0)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(tile_size=16),
        dict(overlap=600),
        dict(overlap=-1),
        dict(max_side=8),
        dict(mode="sometimes"),
        dict(roi_threshold=0.0),
        dict(roi_threshold=1.5),
        dict(roi_margin=-3),
        dict(max_tiles=-1),
    ],
)
def test_bad_tiling_options(kwargs):
    with pytest.raises(InputError):
        TilingOptions(**kwargs).validate()


def test_max_tiles_refines_the_first_tiles_and_keeps_the_coarse_result_elsewhere(tmp_path):
    data = red_scene(300, 260, [(40, 90, 30, 100), (200, 260, 150, 250)])
    opts = TilingOptions(max_side=64, tile_size=96, overlap=24, block=32, roi_threshold=0.2)
    full, sink_full, calls_full = run(tmp_path, data, opts, lambda rgb, w: red_probability(rgb))
    opts.max_tiles = 2
    cut, sink, calls = run(tmp_path, data, opts, lambda rgb, w: red_probability(rgb))
    assert cut.tiles_refined == 2 and cut.tiles_wanted == full.tiles_refined > 2
    assert full.tiles_wanted == full.tiles_refined
    assert [w for _, w in calls[1:]] == [w for _, w in calls_full[1:3]]  # the first two
    # rows below the refined tiles: the coarse probability upsampled, as with no tiling
    opts.mode = "never"
    _, coarse, _ = run(tmp_path, data, opts, lambda rgb, w: red_probability(rgb))
    last = max(w.row_off + w.height for _, w in calls[1:])
    np.testing.assert_array_equal(sink.prob[last:], coarse.prob[last:])
    assert not np.array_equal(sink.prob[:last], coarse.prob[:last])
