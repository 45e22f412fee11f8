"""`entitwist data check`: official layouts, published split sizes, half-downloaded copies."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from entitwist.cli import main
from entitwist.data import layouts
from entitwist.data.check import check_dataset
from fake_layouts import make_entities, make_jsonl, make_refsegrs, make_risbench, make_rrsisd


def test_published_split_sizes_sum_to_the_papers_totals():
    assert layouts.LAYOUTS["rrsisd"].total == 17402
    assert layouts.LAYOUTS["refsegrs"].total == 4420
    assert layouts.LAYOUTS["risbench"].total == 52472
    assert layouts.LAYOUTS["rrsisd"].split_sizes["test"] == 3481
    assert layouts.LAYOUTS["refsegrs"].split_sizes == {"train": 2172, "val": 431, "test": 1817}
    assert layouts.LAYOUTS["risbench"].split_sizes == {"train": 26300, "val": 10013, "test": 16159}


@pytest.fixture
def small_sizes(monkeypatch):
    """Publish the fake copies' split sizes, so a complete fake copy counts as official."""

    def publish(name: str, sizes: dict[str, int]) -> None:
        table = dict(layouts.LAYOUTS)
        table[name] = dataclasses.replace(table[name], split_sizes=sizes)
        monkeypatch.setattr(layouts, "LAYOUTS", table)
        monkeypatch.setattr("entitwist.data.check.LAYOUTS", table)

    return publish


@pytest.mark.parametrize("name", ["refsegrs", "risbench", "rrsisd"])
def test_a_complete_copy_is_usable(tmp_path, small_sizes, name, capsys):
    make = {"refsegrs": make_refsegrs, "risbench": make_risbench, "rrsisd": make_rrsisd}[name]
    written = make(tmp_path)
    counts = {s: len(v) for s, v in written["samples"].items()}
    small_sizes(name, counts)
    report = check_dataset(name, tmp_path)
    assert report.counts == counts
    blocking = [p.text for p in report.problems if p.fatal]
    assert blocking == [] and report.usable
    # no store yet: a note with the command that builds one, not a blocking problem
    assert [p.kind for p in report.problems if p.kind != "note"] == ["entities"]
    assert f"entitwist entities {tmp_path}" in report.problems[-1].text
    assert main(["data", "check", name, str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "usable" in out.splitlines()[-1] and "NOT" not in out


def test_split_sizes_that_differ_from_the_published_ones_are_reported(tmp_path):
    make_refsegrs(tmp_path, n=2)
    report = check_dataset("refsegrs", tmp_path)
    lines = [p.text for p in report.problems if p.kind == "count"]
    assert "split test has 2 expressions; the published split has 1,817" in lines
    assert "split train has 3 expressions; the published split has 2,172" in lines  # 2 + repeat
    assert report.usable  # a subset is still usable, but said


def test_a_half_downloaded_copy_lists_everything_missing(tmp_path, small_sizes, capsys):
    written = make_refsegrs(tmp_path, n=3, repeat_first=False)
    small_sizes("refsegrs", {s: len(v) for s, v in written["samples"].items()})
    (tmp_path / "images" / "00001.tif").unlink()
    (tmp_path / "images" / "00004.tif").unlink()
    (tmp_path / "masks" / "00007.tif").unlink()
    (tmp_path / "output_phrase_val.txt").unlink()
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "masks" / "00002.tif")
    (tmp_path / "images" / "99999.tif").write_bytes(b"not an image")
    report = check_dataset("refsegrs", tmp_path)
    texts = [p.text for p in report.problems]
    missing = [t for t in texts if t.startswith("missing:")]
    assert len(missing) == 3 + 1 - 1  # val's images are not listed any more (its file is gone)
    assert any("output_phrase_val.txt" in t for t in missing)
    assert any("00001.tif (listed in output_phrase_train.txt line 2)" in t for t in missing)
    assert any("00007.tif (mask of 00007.tif" in t for t in missing)
    assert any(t.startswith("size mismatch:") and "00002.tif is 5x5" in t for t in texts)
    extra = {t.split(": ")[1].split(" ")[0] for t in texts if t.startswith("extra image")}
    assert str(tmp_path / "images" / "99999.tif") in extra
    assert str(tmp_path / "images" / "00003.tif") in extra  # val's images, now unlisted
    assert not report.usable
    assert main(["data", "check", "refsegrs", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("missing:") == 3 and "size mismatch" in err


def test_rrsisd_without_annotation_files_and_images(tmp_path):
    make_rrsisd(tmp_path)
    (tmp_path / "rrsisd" / "instances.json").unlink()
    report = check_dataset("rrsisd", tmp_path)
    assert any("instances.json (RRSIS-D annotation file)" in p.text for p in report.problems)
    assert not report.usable
    report = check_dataset("rrsisd", tmp_path / "nowhere")
    assert [p.kind for p in report.problems] == ["missing"] and not report.usable


def test_rrsisd_images_larger_than_their_annotation_are_a_note(tmp_path, small_sizes):
    written = make_rrsisd(tmp_path)
    small_sizes("rrsisd", {s: len(v) for s, v in written["samples"].items()})
    report = check_dataset("rrsisd", tmp_path)
    notes = [p.text for p in report.problems if p.kind == "note"]
    assert len(notes) == 1 and notes[0].startswith("1 image(s) differ in size")
    assert report.usable


def test_jsonl_copy(tmp_path):
    make_jsonl(tmp_path)
    report = check_dataset("jsonl", tmp_path)
    assert report.usable and sum(report.counts.values()) > 0
    bad = tmp_path / "annotations.jsonl"
    bad.write_text(bad.read_text() + "{not json\n")
    report = check_dataset("jsonl", tmp_path)
    assert any("is not JSON" in p.text for p in report.problems) and not report.usable


def test_entity_stores_against_a_model(tmp_path, small_sizes, capsys):
    written = make_refsegrs(tmp_path, n=2)
    small_sizes("refsegrs", {s: len(v) for s, v in written["samples"].items()})
    make_entities(tmp_path, written["images"], tag="felzenszwalb", k=5)
    report = check_dataset("refsegrs", tmp_path)
    assert report.usable and not [p for p in report.problems if p.kind == "entities"]
    assert report.stores == ["entity store felzenszwalb: felzenszwalb, K=5, 6 label maps"]
    # the paper's model wants SAM ViT-B masks at K = 40: the superpixel store does not match
    report = check_dataset("refsegrs", tmp_path, model="entitwist_swinb_bert")
    (line,) = [p.text for p in report.problems if p.kind == "entities"]
    assert "sam" in line and "K=40" in line and "entitwist entities" in line
    # a model without SEG needs no store
    report = check_dataset("refsegrs", tmp_path, model="entitwist_swinb_bert_baseline")
    assert any("reads no entity maps" in s for s in report.stores)


def test_bad_command_lines_are_one_line(capsys):
    assert main(["data", "check", "coco", "/tmp"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("entitwist: error:") and "coco" in err[0]
    assert main(["data", "inspect"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
