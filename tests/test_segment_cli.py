"""``entitwist segment``: outputs aligned with the input grid, polygons in the right place and
CRS, warnings, and bad input (one line, exit 2, nothing left behind).

Most runs use the known-answer :class:`test_predictor.RedModel` behind the real checkpoint
checks (``Predictor.from_pretrained`` is patched after ``check_checkpoint_dir``); one run
uses the real ``entitwist_tiny`` network saved with ``save_pretrained``.
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import torch
from affine import Affine
from PIL import Image

from entitwist.cli import main as entitwist_main
from entitwist.inference.predictor import Predictor
from entitwist.models.hub import check_checkpoint_dir
from test_predictor import RedModel
from test_raster import TRANSFORM, UTM16, write_geotiff

BOX = (16, 40, 24, 56)  # rows 16..39, cols 24..55


def scene(h=64, w=64, nodata_cols=0):
    """4-band uint16 scene whose bands 3,2,1 show a red box (band 3 high, band 2 low)."""
    rng = np.random.default_rng(0)
    data = rng.integers(900, 1100, size=(4, h, w)).astype(np.uint16)
    data[1] += 300  # slightly 'green' background as seen through bands 3,2,1
    r0, r1, c0, c1 = BOX
    data[2, r0:r1, c0:c1] = 4000
    data[1, r0:r1, c0:c1] = 300
    if nodata_cols:
        data[:, :, :nodata_cols] = 0
    return data


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """A checkpoint folder that passes the real checks; loading returns the RedModel."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")

    def from_pretrained(cls, source, device=None, **kwargs):
        check_checkpoint_dir(Path(source))
        return cls(RedModel(size=64, max_tokens=8), device=device, **kwargs)

    monkeypatch.setattr(Predictor, "from_pretrained", classmethod(from_pretrained))
    return folder


@pytest.fixture
def geotiff(tmp_path):
    return write_geotiff(tmp_path / "scene.tif", scene(), nodata=0)


def run(argv, capsys):
    rc = entitwist_main(["segment", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_all_outputs_align_with_the_input_grid(tmp_path, fake_model, geotiff, capsys):
    out = tmp_path / "out"
    out.mkdir()
    rc, stdout, err = run(
        [
            geotiff,
            "the red roof",
            "-m",
            fake_model,
            "--bands",
            "3,2,1",
            "--entities",
            "none",
            "-q",
            "-o",
            out / "run",
            "-o",
            out / "roofs.gpkg",
        ],
        capsys,
    )
    assert rc == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "roofs.gpkg",
        "run.geojson",
        "run_mask.png",
        "run_mask.tif",
        "run_overlay.png",
        "run_probability.tif",
    ]
    truth = np.zeros((64, 64), bool)
    truth[BOX[0] : BOX[1], BOX[2] : BOX[3]] = True
    with rasterio.open(out / "run_mask.tif") as ds:
        assert (ds.crs, ds.transform, ds.width, ds.height, ds.dtypes[0]) == (
            UTM16,
            TRANSFORM,
            64,
            64,
            "uint8",
        )
        np.testing.assert_array_equal(ds.read(1), truth.astype(np.uint8))
    with rasterio.open(out / "run_probability.tif") as ds:
        assert (ds.crs, ds.transform, ds.shape, ds.dtypes[0]) == (
            UTM16,
            TRANSFORM,
            (64, 64),
            "float32",
        )
        prob = ds.read(1)
        assert np.isnan(ds.nodata) and (prob[truth] > 0.99).all() and (prob[~truth] < 0.01).all()
    png = np.asarray(Image.open(out / "run_mask.png"))
    np.testing.assert_array_equal(png, truth.astype(np.uint8) * 255)
    assert not any(p.suffix == ".xml" for p in out.iterdir())
    # polygons: one square whose bounds are the box's georeferenced bounds, in EPSG:32616
    x0, y_top = TRANSFORM @ (BOX[2], BOX[0])
    x1, y_bottom = TRANSFORM @ (BOX[3], BOX[1])
    for name in ("run.geojson", "roofs.gpkg"):
        frame = pyogrio.read_dataframe(out / name)
        assert frame.crs.to_epsg() == 32616 and len(frame) == 1
        np.testing.assert_allclose(frame.total_bounds, [x0, y_bottom, x1, y_top])
        assert frame.geometry.area.iloc[0] == pytest.approx(24 * 32 * 0.25)
        assert frame["sentence"].iloc[0] == "the red roof"
    overlay = Image.open(out / "run_overlay.png")
    assert overlay.format == "PNG" and overlay.width == 64 and overlay.height > 64
    assert (
        stat.S_IMODE(os.stat(out / "run_mask.tif").st_mode) & 0o044
    )  # readable by others, not 0600


def test_tiled_run_stays_pixel_aligned(tmp_path, fake_model, capsys):
    src = write_geotiff(tmp_path / "big.tif", scene(h=150, w=130), nodata=0)
    rc, stdout, err = run(
        [
            src,
            "the red roof",
            "-m",
            fake_model,
            "--bands",
            "3,2,1",
            "--entities",
            "none",
            "--max-side",
            "40",
            "--tile-size",
            "64",
            "--overlap",
            "16",
            "-o",
            tmp_path / "m.tif",
            "-o",
            tmp_path / "p.geojson",
        ],
        capsys,
    )
    assert rc == 0, err
    assert "tiles refined" in stdout
    with rasterio.open(tmp_path / "m.tif") as ds:
        assert (ds.crs, ds.transform, ds.width, ds.height) == (UTM16, TRANSFORM, 130, 150)
        mask = ds.read(1).astype(bool)
    assert (
        mask[BOX[0] + 2 : BOX[1] - 2, BOX[2] + 2 : BOX[3] - 2].all() and mask.sum() < 1.3 * 24 * 32
    )
    assert not mask[60:].any()


def test_nodata_pixels_never_in_the_mask(tmp_path, fake_model, capsys):
    data = scene(nodata_cols=30)  # the nodata strip cuts the box
    src = write_geotiff(tmp_path / "n.tif", data, nodata=0)
    rc, _, err = run(
        [
            src,
            "red",
            "-m",
            fake_model,
            "--bands",
            "3,2,1",
            "--entities",
            "none",
            "-q",
            "-o",
            tmp_path / "m.tif",
            "-o",
            tmp_path / "prob.tif",
        ],
        capsys,
    )
    assert rc == 0, err
    with rasterio.open(tmp_path / "m.tif") as ds:
        mask = ds.read(1)
    with rasterio.open(tmp_path / "prob.tif") as ds:
        prob = ds.read(1)
    assert not mask[:, :30].any() and np.isnan(prob[:, :30]).all()
    assert mask[BOX[0] : BOX[1], 30 : BOX[3]].all()


def test_geotiff_without_crs_warns_and_writes_without_one(tmp_path, fake_model, capsys):
    src = write_geotiff(tmp_path / "nocrs.tif", scene(), crs=None)
    rc, _, err = run(
        [
            src,
            "red",
            "-m",
            fake_model,
            "--bands",
            "3,2,1",
            "--entities",
            "none",
            "-q",
            "-o",
            tmp_path / "m.tif",
            "-o",
            tmp_path / "p.gpkg",
        ],
        capsys,
    )
    assert rc == 0
    assert "entitwist: warning:" in err and "no CRS" in err
    with rasterio.open(tmp_path / "m.tif") as ds:
        assert ds.crs is None and ds.transform == TRANSFORM
    assert pyogrio.read_info(tmp_path / "p.gpkg")["crs"] is None


def test_plain_png_and_single_band(tmp_path, fake_model, capsys):
    rgb = np.full((40, 50, 3), (90, 110, 100), np.uint8)
    rgb[5:15, 5:20] = (240, 10, 10)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    rc, _, err = run(
        [
            tmp_path / "a.png",
            "red",
            "-m",
            fake_model,
            "--entities",
            "none",
            "-q",
            "-o",
            tmp_path / "m.png",
        ],
        capsys,
    )
    assert rc == 0, err
    mask = np.asarray(Image.open(tmp_path / "m.png")) > 0
    assert mask[7:13, 7:18].all() and not mask[25:].any()
    src = write_geotiff(tmp_path / "pan.tif", scene()[:1])  # one band -> grey x3: no red anywhere
    rc, _, err = run(
        [src, "red", "-m", fake_model, "--entities", "none", "-q", "-o", tmp_path / "pan.tif.png"],
        capsys,
    )
    assert rc == 0, err


def test_long_sentence_is_truncated_with_a_warning(tmp_path, fake_model, geotiff, capsys):
    rc, _, err = run(
        [
            geotiff,
            "the red roof " * 6,
            "-m",
            fake_model,
            "--entities",
            "none",
            "-q",
            "-o",
            tmp_path / "m.tif",
        ],
        capsys,
    )
    assert rc == 0
    assert "entitwist: warning:" in err and "truncated" in err and "at most 8" in err
    assert (tmp_path / "m.tif").exists()


def test_overwrite(tmp_path, fake_model, geotiff, capsys):
    target = tmp_path / "m.tif"
    target.write_bytes(b"old")
    rc, _, err = run(
        [geotiff, "red", "-m", fake_model, "-q", "--entities", "none", "-o", target], capsys
    )
    assert rc == 2 and "--overwrite" in err and target.read_bytes() == b"old"
    rc, _, _ = run(
        [geotiff, "red", "-m", fake_model, "-q", "--entities", "none", "-o", target, "--overwrite"],
        capsys,
    )
    assert rc == 0 and rasterio.open(target).width == 64


def test_entities_from_file_and_auto(tmp_path, fake_model, geotiff, capsys):
    labels = np.zeros((64, 64), np.uint8)
    labels[BOX[0] : BOX[1], BOX[2] : BOX[3]] = 1
    Image.fromarray(labels).save(tmp_path / "ent.png")
    for ent in (tmp_path / "ent.png", "auto"):
        rc, _, err = run(
            [
                geotiff,
                "red",
                "-m",
                fake_model,
                "--bands",
                "3,2,1",
                "--entities",
                ent,
                "-q",
                "-o",
                tmp_path / "m.tif",
                "--overwrite",
            ],
            capsys,
        )
        assert rc == 0, err


@pytest.mark.slow
def test_real_tiny_network_end_to_end(tmp_path, capsys):
    import entitwist

    torch.manual_seed(0)
    entitwist.create_model("entitwist_tiny").save_pretrained(tmp_path / "tiny")
    src = write_geotiff(tmp_path / "s.tif", scene(h=48, w=40), nodata=0)
    rc, stdout, err = run(
        [src, "the red roof", "-m", tmp_path / "tiny", "--device", "cpu", "-o", tmp_path / "r"],
        capsys,
    )
    assert rc == 0, err
    assert "EPSG:32616" in stdout
    for name in ("r_mask.tif", "r_probability.tif"):
        with rasterio.open(tmp_path / name) as ds:
            assert (ds.crs, ds.transform, ds.width, ds.height) == (UTM16, TRANSFORM, 40, 48)
    with (
        rasterio.open(tmp_path / "r_probability.tif") as ds,
        rasterio.open(tmp_path / "r_mask.tif") as dm,
    ):
        prob, mask = ds.read(1), dm.read(1)
    assert np.isfinite(prob).all() and ((prob >= 0.5) == (mask == 1)).all()
    assert pyogrio.read_info(tmp_path / "r.geojson")["crs"] == "EPSG:32616"


# ---------------------------------------------------------------- bad input -----------------


def _png_with_size(path: Path, width: int, height: int) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    return path


def _no_read_access_to(image: Path):
    """os.access that denies reading ``image`` (tests run as root, where chmod 000 does not)."""
    real = os.access
    return lambda p, mode, **kw: (
        False if Path(p) == image and mode == os.R_OK else real(p, mode, **kw)
    )


def _truncate(path: Path) -> Path:
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    return path


def _big_png(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        path
    )
    return path


# each case: (id, setup(tmp, img, model, out, monkeypatch) -> argv, expected substring in the message)
CASES = [
    (
        "image-missing",
        lambda t, i, m, o, mp: [t / "nope.tif", "red", "-m", m, "-o", o / "x.tif"],
        "does not exist",
    ),
    ("image-is-dir", lambda t, i, m, o, mp: [t, "red", "-m", m, "-o", o / "x.tif"], "directory"),
    (
        "image-unreadable",
        lambda t, i, m, o, mp: (
            mp.setattr("entitwist.inference.raster.os.access", _no_read_access_to(i)),
            [i, "red", "-m", m, "-o", o / "x.tif"],
        )[1],
        "not readable",
    ),
    (
        "truncated-tif",
        lambda t, i, m, o, mp: [
            _truncate(write_geotiff(t / "c.tif", scene(h=128, w=128))),
            "red",
            "-m",
            m,
            "-o",
            o / "x.tif",
        ],
        "truncated",
    ),
    (
        "truncated-png",
        lambda t, i, m, o, mp: [
            _truncate(_big_png(t / "c.png")),
            "red",
            "-m",
            m,
            "-o",
            o / "x.tif",
        ],
        "truncated",
    ),
    (
        "empty-file",
        lambda t, i, m, o, mp: [
            (t / "e.tif").write_bytes(b"") or t / "e.tif",
            "red",
            "-m",
            m,
            "-o",
            o / "x.tif",
        ],
        "empty",
    ),
    (
        "unsupported-format",
        lambda t, i, m, o, mp: [
            (t / "a.bmp").write_bytes(b"BM12345") and t / "a.bmp",
            "red",
            "-m",
            m,
            "-o",
            o / "x.tif",
        ],
        "unsupported format",
    ),
    (
        "not-an-image",
        lambda t, i, m, o, mp: [
            (t / "a.tif").write_text("hello") and t / "a.tif",
            "red",
            "-m",
            m,
            "-o",
            o / "x.tif",
        ],
        "cannot read",
    ),
    (
        "empty-sentence",
        lambda t, i, m, o, mp: [i, "", "-m", m, "-o", o / "x.tif"],
        "sentence is empty",
    ),
    (
        "blank-sentence",
        lambda t, i, m, o, mp: [i, "   ", "-m", m, "-o", o / "x.tif"],
        "sentence is empty",
    ),
    (
        "band-out-of-range",
        lambda t, i, m, o, mp: [i, "red", "-m", m, "--bands", "5", "-o", o / "x.tif"],
        "out of range",
    ),
    (
        "band-zero",
        lambda t, i, m, o, mp: [i, "red", "-m", m, "--bands", "0,1,2", "-o", o / "x.tif"],
        "out of range",
    ),
    (
        "bands-malformed",
        lambda t, i, m, o, mp: [i, "red", "-m", m, "--bands", "r,g,b", "-o", o / "x.tif"],
        "comma-separated",
    ),
    (
        "two-bands",
        lambda t, i, m, o, mp: [i, "red", "-m", m, "--bands", "1,2", "-o", o / "x.tif"],
        "one band",
    ),
    (
        "zero-size-image",
        lambda t, i, m, o, mp: [
            _png_with_size(t / "z.png", 0, 5),
            "red",
            "-m",
            m,
            "-o",
            o / "x.tif",
        ],
        "cannot read",
    ),
    (
        "one-pixel-image",
        lambda t, i, m, o, mp: [
            Image.new("L", (1, 1)).save(t / "p.png") or t / "p.png",
            "red",
            "-m",
            m,
            "-o",
            o / "x.tif",
        ],
        "at least",
    ),
    (
        "one-row-image",
        lambda t, i, m, o, mp: [
            Image.new("RGB", (50, 1)).save(t / "r.png") or t / "r.png",
            "red",
            "-m",
            m,
            "-o",
            o / "x.tif",
        ],
        "at least",
    ),
    (
        "all-nodata",
        lambda t, i, m, o, mp: [
            write_geotiff(t / "nd.tif", np.zeros((1, 32, 32), np.uint16), nodata=0),
            "red",
            "-m",
            m,
            "--entities",
            "none",
            "-o",
            o / "all",
        ],
        "nodata",
    ),
    ("output-exists", lambda t, i, m, o, mp: [i, "red", "-m", m, "-o", t / "exists.tif"], "exists"),
    (
        "output-folder-missing",
        lambda t, i, m, o, mp: [i, "red", "-m", m, "-o", o / "no" / "x.tif"],
        "does not exist",
    ),
    (
        "output-is-dir",
        lambda t, i, m, o, mp: [i, "red", "-m", m, "--mask-tif", t / "adir.tif"],
        "directory",
    ),
    (
        "output-bad-suffix",
        lambda t, i, m, o, mp: [i, "red", "-m", m, "-o", o / "x.xyz"],
        "unsupported suffix",
    ),
    (
        "output-twice",
        lambda t, i, m, o, mp: [i, "red", "-m", m, "-o", o / "x.tif", "--mask-tif", o / "x.tif"],
        "given twice",
    ),
    (
        "output-is-input",
        lambda t, i, m, o, mp: [i, "red", "-m", m, "-o", i, "--overwrite"],
        "input image",
    ),
    ("no-output", lambda t, i, m, o, mp: [i, "red", "-m", m], "no output"),
    (
        "flag-wrong-suffix",
        lambda t, i, m, o, mp: [i, "red", "-m", m, "--polygons", o / "x.shp"],
        "must end in",
    ),
    (
        "checkpoint-missing",
        lambda t, i, m, o, mp: [i, "red", "-m", t / "nomodel", "-o", o / "x.tif"],
        "does not exist",
    ),
    (
        "checkpoint-missing-weights",
        lambda t, i, m, o, mp: [
            (m / "model.safetensors").unlink() or i,
            "red",
            "-m",
            m,
            "-o",
            o / "x.tif",
        ],
        "missing model.safetensors",
    ),
    (
        "checkpoint-missing-config",
        lambda t, i, m, o, mp: [
            (m / "config.json").unlink() or i,
            "red",
            "-m",
            m,
            "-o",
            o / "x.tif",
        ],
        "missing config.json",
    ),
    (
        "checkpoint-pickle",
        lambda t, i, m, o, mp: [
            torch.save({}, m / "pytorch_model.bin") or i,
            "red",
            "-m",
            m,
            "-o",
            o / "x.tif",
        ],
        "pickle",
    ),
    (
        "checkpoint-is-ckpt-file",
        lambda t, i, m, o, mp: [
            (t / "last.ckpt").write_bytes(b"x") and i,
            "red",
            "-m",
            t / "last.ckpt",
            "-o",
            o / "x.tif",
        ],
        "Lightning",
    ),
    (
        "entities-missing",
        lambda t, i, m, o, mp: [i, "red", "-m", m, "--entities", t / "none.png", "-o", o / "x.tif"],
        "does not exist",
    ),
    (
        "entities-wrong-size",
        lambda t, i, m, o, mp: [
            i,
            "red",
            "-m",
            m,
            "--entities",
            Image.new("L", (10, 10)).save(t / "e.png") or t / "e.png",
            "-o",
            o / "x.tif",
        ],
        "but the image is",
    ),
    (
        "entities-label-too-high",
        lambda t, i, m, o, mp: [
            i,
            "red",
            "-m",
            m,
            "--entities",
            Image.new("L", (64, 64), 200).save(t / "e.png") or t / "e.png",
            "-o",
            o / "all",
        ],
        "max_entities",
    ),
    (
        "stretch-malformed",
        lambda t, i, m, o, mp: [i, "red", "-m", m, "--stretch", "two", "-o", o / "x.tif"],
        "percentiles",
    ),
    (
        "stretch-reversed",
        lambda t, i, m, o, mp: [i, "red", "-m", m, "--stretch", "98,2", "-o", o / "x.tif"],
        "low < high",
    ),
    (
        "tile-too-small",
        lambda t, i, m, o, mp: [i, "red", "-m", m, "--tile-size", "8", "-o", o / "x.tif"],
        "tile-size",
    ),
    (
        "overlap-too-big",
        lambda t, i, m, o, mp: [i, "red", "-m", m, "--overlap", "900", "-o", o / "x.tif"],
        "overlap",
    ),
    (
        "max-side-too-small",
        lambda t, i, m, o, mp: [i, "red", "-m", m, "--max-side", "0", "-o", o / "x.tif"],
        "max-side",
    ),
    (
        "roi-threshold-out",
        lambda t, i, m, o, mp: [i, "red", "-m", m, "--roi-threshold", "2", "-o", o / "x.tif"],
        "roi-threshold",
    ),
    (
        "simplify-negative",
        lambda t, i, m, o, mp: [i, "red", "-m", m, "--simplify", "-1", "-o", o / "x.gpkg"],
        "simplify",
    ),
    (
        "min-area-negative",
        lambda t, i, m, o, mp: [i, "red", "-m", m, "--min-area", "-5", "-o", o / "x.gpkg"],
        "min-area",
    ),
    (
        "nodata-nan",
        lambda t, i, m, o, mp: [i, "red", "-m", m, "--nodata", "nan", "-o", o / "x.tif"],
        "nodata",
    ),
    (
        "device-unknown",
        lambda t, i, m, o, mp: [i, "red", "-m", m, "--device", "tpu", "-o", o / "x.tif"],
        "device",
    ),
    (
        "device-cuda-absent",
        lambda t, i, m, o, mp: (
            mp.setattr(torch.cuda, "is_available", lambda: False),
            [i, "red", "-m", m, "--device", "cuda", "-o", o / "x.tif"],
        )[1],
        "CUDA is not available",
    ),
    (
        "entity-generator-unknown",
        lambda t, i, m, o, mp: [i, "red", "-m", m, "--entity-generator", "nope", "-o", o / "x.tif"],
        "unknown entity generator",
    ),
    (
        "sam-generator-without-checkpoint",
        lambda t, i, m, o, mp: [i, "red", "-m", m, "--entity-generator", "sam", "-o", o / "x.tif"],
        "needs a checkpoint",
    ),
    (
        "sam-checkpoint-missing",
        lambda t, i, m, o, mp: [
            i,
            "red",
            "-m",
            m,
            "--sam-checkpoint",
            t / "sam.pth",
            "-o",
            o / "x.tif",
        ],
        "sam-checkpoint",
    ),
    (
        "unknown-option",
        lambda t, i, m, o, mp: [i, "red", "-m", m, "--colour", "red", "-o", o / "x.tif"],
        "unrecognized arguments",
    ),
    ("missing-sentence", lambda t, i, m, o, mp: [i], "required"),
    (
        "tiling-mode-unknown",
        lambda t, i, m, o, mp: [i, "red", "-m", m, "--tiling", "sometimes", "-o", o / "x.tif"],
        "invalid choice",
    ),
]


@pytest.mark.parametrize(("setup", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_one_line_exit_2_no_output(
    tmp_path, fake_model, geotiff, capsys, monkeypatch, setup, expected
):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "exists.tif").write_bytes(b"keep")
    (tmp_path / "adir.tif").mkdir()
    argv = setup(tmp_path, geotiff, fake_model, out, monkeypatch)
    rc, stdout, err = run(argv, capsys)
    lines = err.strip().splitlines()
    assert rc == 2
    assert len(lines) == 1 and lines[0].startswith("entitwist: error: "), err
    assert expected in lines[0]
    assert sorted(p.name for p in out.iterdir()) == []  # no partial output, no temporary files
    assert (tmp_path / "exists.tif").read_bytes() == b"keep"


def test_there_are_at_least_30_bad_input_cases():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


def test_truncated_mid_scene_leaves_nothing(tmp_path, fake_model, capsys):
    """A file whose header reads but whose later tiles are cut: the run fails part-way and
    the temporary outputs are removed."""
    src = write_geotiff(tmp_path / "c.tif", scene(h=256, w=256))
    blob = src.read_bytes()
    src.write_bytes(blob[: int(len(blob) * 0.8)])
    out = tmp_path / "out"
    out.mkdir()
    rc, _, err = run(
        [src, "red", "-m", fake_model, "--entities", "none", "-q", "-o", out / "r"], capsys
    )
    assert rc == 2 and err.startswith("entitwist: error: ")
    assert list(out.iterdir()) == []


def test_affine_with_rotation_keeps_transform(tmp_path, fake_model, capsys):
    rotated = Affine(0.5, 0.1, 733601.0, 0.1, -0.5, 3725139.0)
    src = write_geotiff(tmp_path / "rot.tif", scene(), transform=rotated, nodata=0)
    rc, _, err = run(
        [
            src,
            "red",
            "-m",
            fake_model,
            "--bands",
            "3,2,1",
            "--entities",
            "none",
            "-q",
            "-o",
            tmp_path / "m.tif",
            "-o",
            tmp_path / "p.gpkg",
        ],
        capsys,
    )
    assert rc == 0, err
    with rasterio.open(tmp_path / "m.tif") as ds:
        assert ds.transform == rotated
    frame = pyogrio.read_dataframe(tmp_path / "p.gpkg")
    corners = [rotated @ (c, r) for r in (BOX[0], BOX[1]) for c in (BOX[2], BOX[3])]
    xs, ys = zip(*corners)
    np.testing.assert_allclose(frame.total_bounds, [min(xs), min(ys), max(xs), max(ys)])


def test_precision_option_reaches_the_predictor(tmp_path, capsys):
    """--precision 32 gives the exact fp32 probability of Predictor(precision="32"); int8 stays
    within 0.05 of it; a precision the machine cannot run is one line naming those it can."""
    import entitwist
    from entitwist.inference.predictor import Predictor

    torch.manual_seed(0)
    entitwist.create_model("entitwist_tiny").save_pretrained(tmp_path / "tiny")
    src = write_geotiff(tmp_path / "s.tif", scene(h=48, w=40), nodata=0)
    probs = {}
    for precision in ("32", "int8"):
        out = tmp_path / f"p{precision}.tif"
        rc, _, err = run(
            [src, "the red roof", "-m", tmp_path / "tiny", "--device", "cpu",
             "--precision", precision, "--probability", out],
            capsys,
        )  # fmt: skip
        assert rc == 0, err
        with rasterio.open(out) as ds:
            probs[precision] = ds.read(1)
    ref = Predictor.from_pretrained(tmp_path / "tiny", device="cpu", precision="32")
    with rasterio.open(src) as ds:
        valid = ds.read_masks(1) > 0
    direct = ref.predict(str(src), "the red roof").probability
    assert np.abs(probs["32"] - direct)[valid].max() < 1e-6
    assert np.abs(probs["int8"] - probs["32"])[valid].max() <= 0.05
    rc, _, err = run(
        [src, "x", "-m", tmp_path / "tiny", "--precision", "fp8", "-o", tmp_path / "z.png"],
        capsys,
    )
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "auto" in lines[0] and "32" in lines[0]
    assert not (tmp_path / "z.png").exists()
