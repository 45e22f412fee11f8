"""The web page's handlers and the ``entitwist app`` command, without a browser.

The page's behaviour lives in :class:`entitwist.app.page.PageHandlers` (no Gradio); these
tests call it directly with a tiny untrained model and compare with ``Predictor.predict``.
The real page in a real browser is tested in ``test_app_browser.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import entitwist
from entitwist.app.page import (
    PageHandlers,
    PageLimits,
    colorize_probability,
    parse_sentences,
    read_upload,
)
from entitwist.app.server import check_host, write_examples
from entitwist.cli import main as cli_main
from entitwist.data.synthetic_scene import generate_scene
from entitwist.errors import InputError
from entitwist.inference import Predictor


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model")
    entitwist.create_model("entitwist_tiny").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def predictor(model_dir: Path) -> Predictor:
    return Predictor.from_pretrained(model_dir, device="cpu")


@pytest.fixture()
def handlers(predictor: Predictor, tmp_path: Path) -> PageHandlers:
    return PageHandlers(predictor, tmp_path / "outputs", PageLimits(max_side=512))


def _scene_png(folder: Path, seed: int = 3, name: str = "scene.png") -> tuple[Path, np.ndarray]:
    rgb = generate_scene(seed, size=96).image[:, :80]  # (96, 80, 3): not square
    path = folder / name
    Image.fromarray(rgb).save(path)
    return path, rgb


def _run_folders(handlers: PageHandlers) -> list[Path]:
    return sorted(handlers.output_dir.glob("run-*"))


def test_two_sentences_give_two_results_equal_to_the_predictor(
    handlers: PageHandlers, predictor: Predictor, tmp_path: Path
) -> None:
    path, rgb = _scene_png(tmp_path)
    sentences = ["the red car", "the largest building"]
    calls = []
    result = handlers.segment_upload(
        str(path), "\n  the red car \n\n the largest building\n", lambda *a, **k: calls.append(a)
    )
    expected = predictor.predict(rgb, sentences)  # the same batched call
    assert [r.sentence for r in result.results] == sentences
    assert len(result.results) == 2
    for r, e in zip(result.results, expected):
        assert r.mask.shape == (96, 80) and r.mask.dtype == bool
        np.testing.assert_array_equal(r.mask, e.mask)
        np.testing.assert_array_equal(r.probability, e.probability)
        png = np.asarray(Image.open(r.mask_png))
        assert png.dtype == np.uint8 and png.shape == (96, 80)
        np.testing.assert_array_equal(png, e.mask.astype(np.uint8) * 255)
        assert r.mask_tif is None  # PNG input: no GeoTIFF
        layer = json.loads(r.polygons.read_text())
        assert layer["type"] == "FeatureCollection"
        assert len(layer["features"]) == r.n_polygons
        assert all(f["properties"]["sentence"] == r.sentence for f in layer["features"])
        assert r.overlay.ndim == 3 and r.overlay.shape[1] == 80  # banner on top, same width
    assert calls and calls[-1][0] == 1.0  # the progress bar reached the end

    out = handlers.segment(str(path), "the red car\nthe largest building")
    assert out.status.startswith("Segmented **scene.png** (80x96, no CRS) for 2 sentence(s)")
    assert len(out.overlays) == len(out.masks) == len(out.probabilities) == 2
    assert [c for _, c in out.masks] == sentences
    assert len(out.files) == 4 and all(Path(f).is_file() for f in out.files)
    assert out.preview.shape == (96, 80, 3)
    np.testing.assert_array_equal(out.preview, rgb)


def test_one_sentence_matches_a_single_predict_exactly(
    handlers: PageHandlers, predictor: Predictor, tmp_path: Path
) -> None:
    path, rgb = _scene_png(tmp_path, seed=5)
    out = handlers.segment(str(path), "the white truck")
    expected = predictor.predict(rgb, "the white truck")
    mask = np.asarray(Image.open(out.masks[0][0]))
    np.testing.assert_array_equal(mask, expected.mask.astype(np.uint8) * 255)
    assert Path(out.files[0]).name == "scene_mask.png"


@pytest.mark.parametrize("text", ["", "   ", "\n \n\t\n", None])
def test_empty_sentence_is_one_error_line(
    handlers: PageHandlers, tmp_path: Path, text: str | None
) -> None:
    path, _ = _scene_png(tmp_path)
    out = handlers.segment(str(path), text)
    assert out.status.startswith("**Error:** the sentence is empty")
    assert "\n" not in out.status and "Traceback" not in out.status
    assert out.overlays is None and out.masks is None and out.files is None
    assert _run_folders(handlers) == []


def test_missing_upload_is_an_error(handlers: PageHandlers) -> None:
    out = handlers.segment(None, "the red car")
    assert out.status == "**Error:** no image uploaded; upload a PNG, JPEG or GeoTIFF first"


def test_too_large_image_is_refused_with_the_limit(predictor: Predictor, tmp_path: Path) -> None:
    handlers = PageHandlers(predictor, tmp_path / "out", PageLimits(max_side=64))
    path, _ = _scene_png(tmp_path)  # 80 x 96
    out = handlers.segment(str(path), "the red car")
    assert out.status.startswith(
        "**Error:** 'scene.png' is 80x96 pixels, larger than the page's limit of 64 pixels a side"
    )
    assert "--max-side" in out.status and out.masks is None


def test_too_large_file_is_refused_before_reading(predictor: Predictor, tmp_path: Path) -> None:
    handlers = PageHandlers(predictor, tmp_path / "out", PageLimits(max_upload_mb=0.001))
    path, _ = _scene_png(tmp_path)
    assert path.stat().st_size > 0.001 * 2**20
    out = handlers.segment(str(path), "the red car")
    assert "larger than the page's upload limit of 0.001 MB" in out.status
    assert "--max-upload-mb" in out.status


def test_text_file_named_png_is_a_clear_error_naming_the_file(
    handlers: PageHandlers, tmp_path: Path
) -> None:
    folder = tmp_path / "gradio" / "0123abcd"
    folder.mkdir(parents=True)
    bad = folder / "holiday.png"
    bad.write_text("this is not an image\n" * 20)
    out = handlers.segment(str(bad), "the red car")
    assert out.status.startswith("**Error:** cannot read image 'holiday.png'")
    assert str(folder) not in out.status  # the temporary path is not shown
    assert "\n" not in out.status
    image, status = handlers.preview(str(bad))  # the same message on upload
    assert image is None and status == out.status
    wrong = folder / "notes.txt"
    wrong.write_text("hello")
    assert "is not a PNG, JPEG or TIFF file" in handlers.segment(str(wrong), "a car").status


def test_unexpected_failure_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    class Broken:
        def predict(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("boom\nsecond line")

    path, _ = _scene_png(tmp_path)
    handlers = PageHandlers(Broken(), tmp_path / "out")
    out = handlers.segment(str(path), "the red car")
    assert out.status == (
        "**Error:** segmentation failed \\(RuntimeError: boom\\); see the server's log"
    )


def test_failed_write_leaves_no_partial_outputs(
    handlers: PageHandlers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import entitwist.inference.vector as vector

    def fail(*args: object, **kwargs: object) -> None:
        raise InputError("disk full; free some space")

    monkeypatch.setattr(vector, "write_polygons", fail)
    path, _ = _scene_png(tmp_path)
    out = handlers.segment(str(path), "the red car")
    assert out.status == "**Error:** disk full; free some space"
    assert _run_folders(handlers) == []


def test_jpeg_upload_matches_predict_on_the_path(
    handlers: PageHandlers, predictor: Predictor, tmp_path: Path
) -> None:
    rgb = generate_scene(8, size=64).image
    path = tmp_path / "photo.jpg"
    Image.fromarray(rgb).save(path, quality=92)
    up = read_upload(path)
    assert up.rgb.shape == (64, 64, 3) and not up.is_tiff and up.crs is None
    np.testing.assert_array_equal(up.rgb, np.asarray(Image.open(path).convert("RGB")))
    result = handlers.segment_upload(str(path), "the red car")
    expected = predictor.predict(str(path), "the red car")  # the Python API on the file
    np.testing.assert_array_equal(result.results[0].mask, expected.mask)
    out = handlers.segment(str(path), "the red car")
    assert out.status.startswith("Segmented **photo.jpg** (64x64, no CRS)")
    assert sorted(Path(f).suffix for f in out.files) == [".geojson", ".png"]


def test_old_run_folders_are_pruned(handlers: PageHandlers, tmp_path: Path) -> None:
    import os

    old = handlers.output_dir / "run-old"
    old.mkdir()
    (old / "x_mask.png").write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    recent = handlers.output_dir / "run-recent"
    recent.mkdir()
    path, _ = _scene_png(tmp_path)
    result = handlers.segment_upload(str(path), "the red car")
    assert not old.exists() and recent.is_dir() and result.folder.is_dir()


def test_geotiff_in_gives_geotiff_mask_with_the_same_crs_and_transform(
    handlers: PageHandlers, predictor: Predictor, tmp_path: Path
) -> None:
    import rasterio
    from affine import Affine
    from rasterio.crs import CRS

    rgb = generate_scene(11, size=64).image[:, :56]  # (64, 56, 3)
    transform = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4649776.0)
    crs = CRS.from_epsg(32633)
    path = tmp_path / "tile.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=56, height=64, count=3, dtype="uint8",
        crs=crs, transform=transform,
    ) as dst:  # fmt: skip
        dst.write(rgb.transpose(2, 0, 1))
    result = handlers.segment_upload(str(path), "the red car")
    r = result.results[0]
    expected = predictor.predict(rgb, "the red car")
    assert r.mask_tif is not None and r.mask_tif.suffix == ".tif"
    with rasterio.open(r.mask_tif) as ds:
        assert ds.crs == crs
        assert ds.transform == transform
        assert (ds.width, ds.height, ds.count, ds.dtypes[0]) == (56, 64, 1, "uint8")
        np.testing.assert_array_equal(ds.read(1), expected.mask.astype(np.uint8))
    import pyogrio

    info = pyogrio.read_info(r.polygons)
    assert CRS.from_user_input(info["crs"]) == crs
    assert info["features"] == r.n_polygons
    if r.n_polygons:  # map coordinates inside the tile's footprint
        frame = pyogrio.read_dataframe(r.polygons)
        minx, miny, maxx, maxy = frame.total_bounds
        assert 500000.0 <= minx and maxx <= 500000.0 + 28.0
        assert 4649776.0 - 32.0 <= miny and maxy <= 4649776.0
    out = handlers.segment(str(path), "the red car")
    assert "(56x64, EPSG:32633)" in out.status
    assert sorted(Path(f).suffix for f in out.files) == [".geojson", ".png", ".tif"]


def test_16_bit_geotiff_is_stretched_and_nodata_is_never_in_the_mask(
    handlers: PageHandlers, tmp_path: Path
) -> None:
    import rasterio
    from affine import Affine

    rng = np.random.default_rng(0)
    data = rng.integers(100, 4000, size=(3, 40, 48), dtype=np.uint16)
    data[:, :10, :] = 0  # nodata rows
    path = tmp_path / "s2.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=48, height=40, count=3, dtype="uint16",
        crs="EPSG:32631", transform=Affine(10, 0, 600000, 0, -10, 5000000), nodata=0,
    ) as dst:  # fmt: skip
        dst.write(data)
    up = read_upload(path)
    assert up.rgb.dtype == np.uint8 and up.rgb.shape == (40, 48, 3)
    assert not up.valid[:10].any() and up.valid[10:].all()
    assert (up.rgb[:10] == 0).all() and up.rgb[10:].max() == 255  # 2-98 % stretch
    result = handlers.segment_upload(str(path), "the road")
    assert not result.results[0].mask[:10].any()


def test_parse_sentences_limits() -> None:
    assert parse_sentences(" a car \n\n the road ") == ["a car", "the road"]
    with pytest.raises(InputError, match="at most 2 at a time"):
        parse_sentences("a\nb\nc", PageLimits(max_sentences=2))
    with pytest.raises(InputError, match="at most 10"):
        parse_sentences("x" * 11, PageLimits(max_sentence_chars=10))


def test_colorize_probability_ramp() -> None:
    p = np.array([[0.0, 0.5, 1.0, np.nan]], dtype=np.float32)
    rgb = colorize_probability(p)
    assert rgb.shape == (1, 4, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (48, 18, 59) and tuple(rgb[0, 2]) == (251, 185, 56)
    assert tuple(rgb[0, 3]) == tuple(rgb[0, 0])  # NaN shown as 0
    # halfway between ramp stops 2 and 3: their mean
    assert tuple(rgb[0, 1]) == (42, 196, 216)


def test_examples_are_synthetic_scenes_with_sentences(tmp_path: Path) -> None:
    paths = write_examples(tmp_path / "ex", n=2, size=64)
    assert [p.name for p in paths] == ["scene_1.png", "scene_2.png"]
    for p in paths:
        assert np.asarray(Image.open(p)).shape == (64, 64, 3)
        lines = p.with_suffix(".txt").read_text().splitlines()
        assert 1 <= len(lines) <= 2 and all(line.strip() for line in lines)
    again = write_examples(tmp_path / "ex2", n=2, size=64)
    assert again[0].read_bytes() == paths[0].read_bytes()  # the same on every start


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_loopback_hosts_are_accepted(host: str) -> None:
    check_host(host, allow_remote=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20"])
def test_remote_hosts_need_allow_remote(host: str) -> None:
    with pytest.raises(InputError, match="add --allow-remote"):
        check_host(host, allow_remote=False)
    check_host(host, allow_remote=True)


def test_server_refuses_0000_without_allow_remote(
    model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = cli_main(["app", "-m", str(model_dir), "--host", "0.0.0.0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.count("\n") == 0
    assert err.startswith("entitwist: error: --host 0.0.0.0 would expose the page")
    assert "--allow-remote" in err


def test_missing_checkpoint_is_one_line_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no demo_output/model here
    rc = cli_main(["app"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.count("\n") == 0
    assert "make demo" in err and "-m DIR" in err
    rc = cli_main(["app", "--model", str(tmp_path / "nope")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "does not exist" in err


def test_bad_options_are_one_line(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, words in [
        (["--port", "70000"], "--port 70000 is out of range"),
        (["--max-upload-mb", "0"], "--max-upload-mb 0 must be > 0"),
        (["--max-side", "2"], "--max-side 2 must be at least 4"),
        (
            ["--port", "abc"],
            "argument --port: invalid int value: 'abc'; see 'entitwist app --help'",
        ),
    ]:
        rc = cli_main(["app", "-m", str(model_dir), *argv])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and words in err and err.count("\n") == 0
