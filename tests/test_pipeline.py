"""The inference pipeline's parts: output plans, batch items and chunks, the processes'
share of the chunks, Predictor.predict_many against a plain twin, and the sinks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from entitwist.errors import InputError
from entitwist.inference.batch import chunks, collect_items
from entitwist.inference.outputs import OutputPlan, parse_kinds, plan_outputs, stem_outputs
from entitwist.inference.pipeline import segment_arrays
from entitwist.inference.predictor import Predictor
from entitwist.inference.raster import RasterSource, gdal_env
from entitwist.inference.sinks import MemorySink, RasterSink
from entitwist.inference.tiling import TilingOptions, segment_scene
from test_predictor import RedModel, square_image
from test_raster import write_geotiff
from test_segment_cli import scene


def test_stem_outputs_and_kinds():
    pairs = stem_outputs(Path("out/a"), ["polygons", "mask_png"])
    assert pairs == [("mask_png", Path("out/a_mask.png")), ("polygons", Path("out/a.geojson"))]
    assert [k for k, _ in stem_outputs(Path("b"))] == parse_kinds("all")
    assert parse_kinds("mask-tif, probability") == ["mask_tif", "probability"]
    with pytest.raises(InputError, match="roofs"):
        parse_kinds("mask_tif,roofs")


def test_plan_outputs_and_finished(tmp_path):
    image = tmp_path / "in.tif"
    plan = plan_outputs([tmp_path / "r"], {"polygons": tmp_path / "x.gpkg"}, image=image)
    assert len(plan.outputs) == 6 and plan.paths("polygons")[1] == tmp_path / "x.gpkg"
    assert not plan.finished()
    for _, path in plan.outputs:
        path.write_bytes(b"x")
    assert plan.finished() and not OutputPlan().finished()
    with pytest.raises(InputError, match="exists"):
        plan_outputs([tmp_path / "r_mask.png"], {}, image=image)
    with pytest.raises(InputError, match="given twice"):
        plan_outputs([tmp_path / "r.tif"], {"mask_tif": tmp_path / "r.tif"}, image=image)


def test_collect_items_from_a_folder_a_glob_and_lists(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for name in ("b.png", "a.tif", "c.JPG", "notes.txt", "a.png"):
        (imgs / name).write_bytes(b"x")
    out = tmp_path / "out"
    items = collect_items(imgs, "the roof", out)
    assert [i.image.name for i in items] == ["a.png", "a.tif", "b.png", "c.JPG"]
    # two images with the stem 'a': the second gets _2; positions are the list's
    assert [i.stem for i in items] == [out / "a", out / "a_2", out / "b", out / "c"]
    assert [i.index for i in items] == [0, 1, 2, 3] and {i.sentence for i in items} == {"the roof"}
    globbed = collect_items(str(imgs / "*.png"), "x", out)
    assert [i.image.name for i in globbed] == ["a.png", "b.png"]
    (tmp_path / "l.csv").write_text(
        "image,sentence,output\nimgs/a.tif,the tank,\nimgs/a.tif,the road,roads/r1\n"
    )
    rows = collect_items(tmp_path / "l.csv", None, out)
    assert [(i.image, i.sentence, i.stem) for i in rows] == [
        (tmp_path / "imgs/a.tif", "the tank", out / "a"),
        (tmp_path / "imgs/a.tif", "the road", out / "roads/r1"),
    ]
    (tmp_path / "l.jsonl").write_text(
        json.dumps({"image": str(imgs / "b.png"), "output": "/abs/x.tif"}) + "\n\n"
    )
    (row,) = collect_items(tmp_path / "l.jsonl", "default", out)
    assert row.sentence == "default" and row.stem == Path("/abs/x")  # suffix dropped
    with pytest.raises(InputError, match="input folder"):
        collect_items(imgs, "x", imgs)


def test_chunks_are_shared_by_position_whatever_the_process_count():
    from entitwist.inference.batch_ddp import BatchDataModule

    items = collect_items.__globals__["BatchItem"]  # the dataclass, without a file system
    batch = [items(i, Path(f"{i}.png"), "s", Path(f"o/{i}")) for i in range(11)]
    assert [len(c) for c in chunks(batch, 3)] == [3, 3, 3, 2]
    data = BatchDataModule(batch, 3)
    for world in (1, 2, 3, 5):
        seen = [c for r in range(world) for c in data.rank_chunks(r, world)]
        assert len(seen) == 4  # no padding, no repeats
        # every process count makes the same chunks
        assert sorted(tuple(i.index for i in c) for c in seen) == [
            (0, 1, 2),
            (3, 4, 5),
            (6, 7, 8),
            (9, 10),
        ]


def test_predict_many_matches_the_plain_twin_per_image():
    model = RedModel(size=32)
    predictor = Predictor(model, device="cpu", batch_size=2)
    images = [square_image(), square_image(40, 50, (5, 20, 10, 30)), square_image(33, 71)]
    sentences = ["the red square", "the green field", "red"]
    model.calls.clear()
    probs = predictor.predict_many(images, sentences, entities=None)
    assert [c["batch"] for c in model.calls] == [2, 1]  # batch_size pairs per forward
    for p, img, s in zip(probs, images, sentences):
        assert p.shape == img.shape[:2] and p.dtype == np.float32
        # the batched path equals one image at a time
        one = predictor.predict_probability(img, [s], entities=None)[0]
        np.testing.assert_allclose(p, one, atol=1e-6)
        # and finds the square (the 'green' sentence: everything but the square)
        box = np.zeros(img.shape[:2], bool)
        box[(img == (230, 20, 20)).all(-1)] = True
        agree = ((p >= 0.5) == (box if "green" not in s else ~box)).mean()
        assert agree > 0.9, (s, agree)  # edges blur through the 32 x 32 network input
    native = predictor.predict_many(images[:1], sentences[:1], entities=None, output_size=None)
    assert native[0].shape == (32, 32)
    with pytest.raises(InputError, match="one sentence per image"):
        predictor.predict_many(images, sentences[:2])


def test_segment_arrays_masks_nodata():
    model = RedModel(size=32)
    predictor = Predictor(model, device="cpu")
    img = square_image()
    valid = np.ones(img.shape[:2], bool)
    valid[:, :30] = False
    (prob, mask), (gprob, gmask) = segment_arrays(predictor, img, ["red", "green"], valid, None)
    np.testing.assert_array_equal(prob, predictor.predict_probability(img, ["red"], None)[0])
    assert (mask == ((prob >= 0.5) & valid)).all() and not mask[:, :30].any() and mask.any()
    assert (gmask == ((gprob >= 0.5) & valid)).all()


def test_memory_sink_equals_the_written_geotiffs(tmp_path):
    path = write_geotiff(tmp_path / "s.tif", scene(h=90, w=70, nodata_cols=5), nodata=0)
    opts = TilingOptions(max_side=40, tile_size=48, overlap=8, block=16, mode="always")

    def predict(rgb, window):
        return (rgb[..., 0].astype(np.float32) / 255.0) if window is None else rgb[..., 0] / 255.0

    memory = MemorySink(90, 70)
    with gdal_env(), RasterSource(path) as src:
        segment_scene(src, predict, memory, opts, progress=False)
        with RasterSink(src, tmp_path / "m.tif", probability=tmp_path / "p.tif") as files:
            segment_scene(src, predict, files, opts, progress=False)
    assert files.mask_pixels == memory.mask.sum() > 0
    assert files.valid_pixels == np.isfinite(memory.probability).sum() == 90 * 65
    with rasterio.open(tmp_path / "m.tif") as m, rasterio.open(tmp_path / "p.tif") as p:
        np.testing.assert_array_equal(m.read(1), memory.mask.astype(np.uint8))
        np.testing.assert_array_equal(p.read(1), memory.probability)


def test_write_helpers(tmp_path):
    from entitwist.inference.sinks import write_mask_png, write_mask_polygons

    mask = np.zeros((20, 30), bool)
    mask[2:6, 3:9] = mask[12:18, 20:28] = True
    write_mask_png(tmp_path / "m.png", mask)
    got = np.asarray(Image.open(tmp_path / "m.png"))
    assert got.dtype == np.uint8 and set(np.unique(got)) == {0, 255}
    assert ((got == 255) == mask).all()
    n = write_mask_polygons(tmp_path / "p.geojson", mask, None, None, "two boxes", quiet_crs=True)
    assert n == 2
    n = write_mask_polygons(
        tmp_path / "q.geojson", mask, None, None, "big", min_area=30, quiet_crs=True
    )
    assert n == 1  # 4 x 6 = 24 < 30 <= 6 x 8
