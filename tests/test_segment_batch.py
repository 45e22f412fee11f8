"""``entitwist segment`` on many images: folder, glob, CSV / JSONL lists, resume, failure
report, bad input, and the same outputs from one process and from two (Lightning DDP)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from test_raster import write_geotiff
from test_segment_cli import BOX, run, scene
from test_segment_cli import fake_model as fake_model  # noqa: F401 -- a fixture

KINDS = "mask_tif,probability,mask_png"


def _folder(tmp_path: Path, n: int = 3) -> Path:
    """n GeoTIFFs whose red box moves with the index, and one RGB PNG."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(n):
        data = np.roll(scene(), 4 * i, axis=2)  # (4, 64, 64) box shifted right by 4i
        write_geotiff(folder / f"s{i}.tif", data, nodata=0)
    rgb = np.full((40, 50, 3), (90, 110, 100), np.uint8)
    rgb[5:20, 10:30] = (20, 20, 230)  # red through --bands 3,2,1
    Image.fromarray(rgb).save(folder / "photo.png")
    (folder / "notes.txt").write_text("not an image: ignored")
    return folder


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def test_folder_matches_single_image_runs_and_resumes(tmp_path, fake_model, capsys):
    folder = _folder(tmp_path)
    out = tmp_path / "out"
    argv = [folder, "red", "-m", fake_model, "-o", out, "--kinds", KINDS, "--batch-size", "2"]
    argv += ["--bands", "3,2,1"]
    rc, stdout, err = run(argv, capsys)
    assert rc == 0, err
    assert "4 image(s): 4 segmented, 0 skipped" in stdout
    names = sorted(p.name for p in out.iterdir())
    stems = ["photo", "s0", "s1", "s2"]
    expected = sorted(
        [f"{s}{x}" for s in stems for x in ("_mask.tif", "_probability.tif", "_mask.png")]
        + ["failures.jsonl"]
    )
    assert names == expected  # nothing else: no temporary files
    assert (out / "failures.jsonl").read_text() == ""
    # the box moved with the image: the batch did not mix images up
    for i in range(3):
        mask = _read(out / f"s{i}_mask.tif")
        r0, r1, c0, c1 = BOX
        assert mask[r0:r1, c0 + 4 * i : c1 + 4 * i].mean() > 0.9
        assert mask.sum() < 1.2 * (r1 - r0) * (c1 - c0)
        centre = np.nonzero(mask)[1].mean()
        assert abs(centre - ((c0 + c1 - 1) / 2 + 4 * i)) < 1.5
    # each image equals a single-image run (same pipeline, one image per forward)
    for s in ("s1", "photo"):
        src = folder / (s + (".png" if s == "photo" else ".tif"))
        single = tmp_path / f"single_{s}_prob.tif"
        rc, _, err = run([src, "red", "-m", fake_model, "-o", single, "-q", *argv[-2:]], capsys)
        assert rc == 0, err
        np.testing.assert_array_equal(_read(single), _read(out / f"{s}_probability.tif"))
    # rerun: everything finished, nothing rewritten
    before = _mtimes(out)
    rc, stdout, _ = run(argv, capsys)
    assert rc == 0 and "0 segmented, 4 skipped" in stdout
    after = _mtimes(out)
    assert {k: v for k, v in after.items() if k != "failures.jsonl"} == {
        k: v for k, v in before.items() if k != "failures.jsonl"
    }
    # a missing output redoes that image only
    (out / "s1_mask.png").unlink()
    rc, stdout, _ = run(argv, capsys)
    assert rc == 0 and "1 segmented, 3 skipped" in stdout
    assert (out / "s1_mask.png").is_file()
    assert _mtimes(out)["s0_mask.tif"] == before["s0_mask.tif"]
    # --overwrite redoes all
    rc, stdout, _ = run([*argv, "--overwrite"], capsys)
    assert rc == 0 and "4 segmented, 0 skipped" in stdout


def test_bad_files_are_reported_and_the_rest_completes(tmp_path, fake_model, capsys):
    folder = _folder(tmp_path, n=2)
    (folder / "broken.tif").write_text("not a tiff")
    Image.new("L", (30, 30), 7).save(folder / "grey.png")  # one band: --bands 3,2,1 fails
    Image.new("RGB", (2, 2)).save(folder / "tiny.png")  # too small
    out = tmp_path / "out"
    argv = [folder, "red", "-m", fake_model, "-o", out, "--kinds", "mask_tif", "--bands", "3,2,1"]
    rc, stdout, err = run([*argv, "-q"], capsys)
    assert rc == 1
    assert err.strip().splitlines() == [
        f"entitwist: 3 of 6 image(s) failed; see {out / 'failures.jsonl'}"
    ]
    rows = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [Path(r["image"]).name for r in rows] == ["broken.tif", "grey.png", "tiny.png"]
    assert "cannot read" in rows[0]["error"] and "out of range" in rows[1]["error"]
    assert "at least" in rows[2]["error"]
    assert all("\n" not in r["error"] and r["sentence"] == "red" for r in rows)
    assert sorted(p.name for p in out.iterdir()) == [
        "failures.jsonl",
        "photo_mask.tif",
        "s0_mask.tif",
        "s1_mask.tif",
    ]
    # fixing a file and rerunning: only the failed ones are tried again
    (folder / "broken.tif").unlink()
    (folder / "grey.png").unlink()
    (folder / "tiny.png").unlink()
    rc, stdout, _ = run(argv, capsys)
    assert rc == 0 and "0 segmented, 3 skipped (finished), 0 failed" in stdout
    assert (out / "failures.jsonl").read_text() == ""


def test_csv_and_jsonl_lists(tmp_path, fake_model, capsys):
    folder = _folder(tmp_path, n=1)
    lst = tmp_path / "pairs.csv"
    lst.write_text(
        "image,sentence,output\n"
        "imgs/s0.tif,the red box,red_box\n"
        "imgs/s0.tif,the green ground,\n"  # RedModel: 'green' flips the answer
        "imgs/photo.png,,sub/photo_default\n"  # no sentence: the command line's
    )
    out = tmp_path / "out"
    rc, stdout, err = run(
        [lst, "red", "-m", fake_model, "-o", out, "--kinds", "mask_tif", "-q"], capsys
    )
    assert rc == 0, err
    red, green = _read(out / "red_box_mask.tif"), _read(out / "s0_mask.tif")
    assert red.sum() > 0 and green.sum() > 0
    valid = _read(folder / "s0.tif") > 0  # band 1 nonzero: the scene has no nodata
    assert ((red == 1) ^ (green == 1))[valid].mean() > 0.98  # complementary
    assert (out / "sub" / "photo_default_mask.tif").is_file()
    jl = tmp_path / "pairs.jsonl"
    jl.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"image": str(folder / "s0.tif"), "sentence": "the red box"},
                {"image": str(folder / "s0.tif"), "sentence": "the red box again"},
                {"image": "imgs/missing.tif", "sentence": "x"},
            ]
        )
    )
    out2 = tmp_path / "out2"
    rc, _, err = run([jl, "-m", fake_model, "-o", out2, "--kinds", "mask_tif", "-q"], capsys)
    assert rc == 1
    np.testing.assert_array_equal(_read(out2 / "s0_mask.tif"), red)  # repeated stems: _2
    np.testing.assert_array_equal(_read(out2 / "s0_2_mask.tif"), red)
    (row,) = [json.loads(line) for line in (out2 / "failures.jsonl").read_text().splitlines()]
    assert row["image"].endswith("missing.tif") and "does not exist" in row["error"]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("out-is-file", "is a file"),
        ("devices-too-many", "processor(s)"),
        ("out-has-suffix", "names an output folder"),
        ("entities-file", "label-map file fits one image"),
        ("glob-no-match", "holds no PNG, JPEG or TIFF"),
        ("list-no-image-column", "no 'image' column"),
        ("jsonl-not-json", "is not JSON"),
        ("folder-no-sentence", "sentence is required"),
        ("out-is-input", "is the input folder"),
        ("kinds-unknown", "--kinds"),
        ("devices-single-image", "many images"),
        ("batch-size-zero", "--batch-size"),
    ],
)
def test_bad_batch_input_is_one_line(tmp_path, fake_model, capsys, case, expected):
    folder = _folder(tmp_path, n=1)
    out = tmp_path / "out"
    base = ["-m", fake_model]
    argv = {
        "out-is-file": [
            folder,
            "red",
            *base,
            "-o",
            (tmp_path / "f").write_text("x") and tmp_path / "f",
        ],
        "devices-too-many": [folder, "red", *base, "-o", out, "--devices", "999"],
        "out-has-suffix": [folder, "red", *base, "-o", out / "x.tif"],
        "entities-file": [folder, "red", *base, "-o", out, "--entities", folder / "photo.png"],
        "glob-no-match": [tmp_path / "*.nothing", "red", *base, "-o", out],
        "list-no-image-column": [
            (tmp_path / "l.csv").write_text("path,sentence\na.tif,x\n") and tmp_path / "l.csv",
            *base,
            "-o",
            out,
        ],
        "jsonl-not-json": [
            (tmp_path / "l.jsonl").write_text("{oops\n") and tmp_path / "l.jsonl",
            *base,
            "-o",
            out,
        ],
        "folder-no-sentence": [folder, *base, "-o", out],
        "out-is-input": [folder, "red", *base, "-o", folder],
        "kinds-unknown": [folder, "red", *base, "-o", out, "--kinds", "mask,roofs"],
        "devices-single-image": [folder / "s0.tif", "red", *base, "-o", out, "--devices", "2"],
        "batch-size-zero": [folder, "red", *base, "-o", out, "--batch-size", "0"],
    }[case]
    rc, _, err = run(argv, capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("entitwist: error: "), err
    assert expected in lines[0]
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_output_folder_not_writable(tmp_path, fake_model, capsys):
    folder = _folder(tmp_path, n=1)
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        rc, _, err = run([folder, "red", "-m", fake_model, "-o", out], capsys)
    finally:
        out.chmod(0o700)
    assert rc == 2 and "not writable" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two processes need two processors")
def test_one_and_two_processes_write_identical_outputs(tmp_path):
    """The real tiny network, five images in chunks of two: one plain process and two DDP
    processes (Lightning's predict loop) write byte-identical masks, probabilities and
    polygons (at equal --threads: float sums depend on the thread count)."""
    import torch

    import entitwist

    torch.manual_seed(0)
    entitwist.create_model("entitwist_tiny").save_pretrained(tmp_path / "tiny")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        write_geotiff(folder / f"t{i}.tif", np.roll(scene(h=48, w=40), 3 * i, axis=1), nodata=0)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    outs = {}
    for n in (1, 2):
        outs[n] = tmp_path / f"out{n}"
        cmd = [sys.executable, "-m", "entitwist", "segment", str(folder), "the red roof"]
        cmd += ["-m", str(tmp_path / "tiny"), "-o", str(outs[n]), "--device", "cpu", "-q"]
        cmd += ["--kinds", "mask_tif,probability,polygons", "--batch-size", "2"]
        cmd += ["--devices", str(n), "--threads", "1"]  # float sums follow the thread count
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    names = sorted(p.name for p in outs[1].iterdir())
    assert len(names) == 5 * 3 + 1 and names == sorted(p.name for p in outs[2].iterdir())
    for name in names:
        if name.endswith(".tif"):
            a, b = _read(outs[1] / name), _read(outs[2] / name)
            np.testing.assert_array_equal(a, b)
        else:
            assert (outs[1] / name).read_bytes() == (outs[2] / name).read_bytes(), name
    probs = [_read(outs[1] / f"t{i}_probability.tif") for i in range(5)]
    assert not all(np.array_equal(probs[0], p) for p in probs[1:])  # images differ
