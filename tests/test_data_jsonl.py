"""JSONL folder loader, and the behaviour shared by every dataset (refs, entities, seeds)."""

from __future__ import annotations

import json
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from entitwist.data import DataWarning, load_dataset
from entitwist.errors import ConfigError, DataError
from fake_layouts import make_entities, make_jsonl


@pytest.fixture()
def jsonl(tmp_path):
    return tmp_path, make_jsonl(tmp_path, n_images=4)


def test_eval_yields_every_expression_with_written_content(jsonl):
    root, truth = jsonl
    ds = load_dataset("jsonl", root, "test", entities=None)
    want = truth["samples"]["test"]
    assert len(ds) == len(want) == 6  # 2 images x 3 expressions
    assert ds.num_refs == 4
    for i, w in enumerate(want):
        s = ds[i]
        assert s["sample_id"] == w["sample_id"]
        assert s["expression"] == w["expression"]
        assert s["ref_id"] == w["ref_id"]
        assert s["image_key"] == w["image_key"] == s["image_id"]
        assert s["image"].dtype == np.uint8 and s["image"].shape == (32, 32, 3)
        np.testing.assert_array_equal(s["image"], w["image"])
        assert s["mask"].dtype == np.uint8
        np.testing.assert_array_equal(s["mask"], w["mask"])
        assert s["orig_size"] == (32, 32)
        assert "entities" not in s
    assert sorted(ds.images()) == ["images/img_1", "images/img_3"]


def test_train_draws_one_expression_per_ref(jsonl):
    root, truth = jsonl
    ds = load_dataset("jsonl", root, "train", entities=None)
    assert ds.one_expression_per_ref  # None -> True for train
    assert len(ds) == 4  # refs, not the 6 expressions
    torch.manual_seed(0)
    first_ref = truth["samples"]["train"][:2]  # the ref with two expressions
    assert first_ref[0]["ref_id"] == first_ref[1]["ref_id"]
    seen = Counter(ds[0]["sample_id"] for _ in range(60))
    assert set(seen) == {first_ref[0]["sample_id"], first_ref[1]["sample_id"]}
    assert min(seen.values()) > 10  # both drawn, roughly evenly
    # a one-expression ref always gives that expression
    assert {ds[1]["sample_id"] for _ in range(5)} == {truth["samples"]["train"][2]["sample_id"]}
    # override: evaluation mode on the train split
    ev = load_dataset("jsonl", root, "train", entities=None, one_expression_per_ref=False)
    assert len(ev) == 6


def test_seeded_draw_is_reproducible_and_changes_with_epoch(jsonl):
    root, _ = jsonl
    a = load_dataset("jsonl", root, "train", entities=None, seed=7)
    b = load_dataset("jsonl", root, "train", entities=None, seed=7)
    draws_a = [a.record_index(0) for _ in range(3)]
    assert draws_a == [b.record_index(0) for _ in range(3)] and len(set(draws_a)) == 1
    per_epoch = set()
    for epoch in range(20):
        a.set_epoch(epoch)
        per_epoch.add(a.record_index(0))
    assert per_epoch == {0, 1}
    g = torch.Generator().manual_seed(3)
    c = load_dataset("jsonl", root, "train", entities=None, seed=g)
    assert isinstance(c.seed, int)


def test_dataloader_workers_draw_differently_but_reproducibly(jsonl):
    root, _ = jsonl
    ds = load_dataset("jsonl", root, "train", entities=None)

    def run(seed):
        ids = []
        loader = torch.utils.data.DataLoader(
            ds,
            batch_size=None,
            num_workers=2,
            generator=torch.Generator().manual_seed(seed),
            sampler=[0] * 16,
        )
        for s in loader:
            ids.append(s["sample_id"])
        return ids

    r1, r2 = run(5), run(5)
    assert r1 == r2
    assert len(set(r1)) == 2


def test_entities_auto_tag_path_and_none(jsonl):
    root, truth = jsonl
    maps = make_entities(root, truth["images"], tag="felzenszwalb", k=5)
    ds = load_dataset("jsonl", root, "test")  # auto
    s = ds[0]
    assert s["entities"].dtype == np.uint8
    np.testing.assert_array_equal(s["entities"], maps[s["image_key"]])
    assert ds.entity_tag == "felzenszwalb"
    ds2 = load_dataset("jsonl", root, "test", entities="felzenszwalb")
    np.testing.assert_array_equal(ds2[0]["entities"], s["entities"])
    ds3 = load_dataset("jsonl", root, "test", entities=str(root / "entities" / "felzenszwalb"))
    np.testing.assert_array_equal(ds3[0]["entities"], s["entities"])
    assert "entities" not in load_dataset("jsonl", root, "test", entities=None)[0]
    # a second tag makes "auto" ambiguous
    make_entities(root, truth["images"], tag="sam", k=3)
    with pytest.raises(DataError, match="several entity stores"):
        load_dataset("jsonl", root, "test")
    assert load_dataset("jsonl", root, "test", entities="sam").entity_tag == "sam"


def test_entities_missing_map_or_store_names_the_command(jsonl):
    root, truth = jsonl
    with pytest.raises(DataError, match="entitwist entities .* --generator slic"):
        load_dataset("jsonl", root, "test", entities="slic")
    maps = dict(truth["images"])
    maps.pop("images/img_3")
    make_entities(root, maps)
    with pytest.raises(DataError, match=r"1 of 2 images .*images/img_3.*entitwist entities"):
        load_dataset("jsonl", root, "test")


def test_entities_above_k_is_an_error(jsonl):
    root, truth = jsonl
    make_entities(root, truth["images"], k=9)
    ds = load_dataset("jsonl", root, "test", max_entities=3)
    with pytest.raises(DataError, match="max_entities=3"):
        for i in range(len(ds)):
            ds[i]


def test_mask_of_another_size_is_resized_and_counted(jsonl):
    root, truth = jsonl
    small = np.zeros((16, 16), np.uint8)
    small[:8, :8] = 255
    Image.fromarray(small).save(root / "masks/img_1_obj0.png")
    ds = load_dataset("jsonl", root, "test", entities=None)
    with pytest.warns(DataWarning, match="resized to the image"):
        s = ds[0]
    assert s["mask"].shape == (32, 32)
    assert s["mask"][:16, :16].all() and not s["mask"][16:, :].any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds[1]  # same mask file again: counted, not warned
    assert ds.repairs["mask_resized"] == 2


def test_real_mini_layout_bare_file_names(tmp_path):
    # rrsis-real-mini style: "image"/"mask" are bare names inside images/ and masks/
    make_jsonl(tmp_path, n_images=2)
    lines = (tmp_path / "annotations.jsonl").read_text().splitlines()
    out = []
    for line in lines:
        o = json.loads(line)
        o["image"] = o["image"].split("/")[-1]
        o["mask"] = o["mask"].split("/")[-1]
        out.append(json.dumps(o))
    (tmp_path / "annotations.jsonl").write_text("\n".join(out))
    ds = load_dataset("jsonl", tmp_path, "train", entities=None, one_expression_per_ref=False)
    assert len(ds) == 3 and ds[0]["image_key"] == "images/img_0"


def test_bad_input(tmp_path):
    with pytest.raises(DataError, match="root not found"):
        load_dataset("jsonl", tmp_path / "nope", "train")
    with pytest.raises(DataError, match="annotation file not found: .*annotations.jsonl"):
        load_dataset("jsonl", tmp_path, "train")
    make_jsonl(tmp_path, n_images=2)
    ann = tmp_path / "annotations.jsonl"
    good = ann.read_text()
    with pytest.raises(ConfigError, match="unknown split 'val'.*train, test"):
        load_dataset("jsonl", tmp_path, "val")
    with pytest.raises(
        ConfigError, match="unknown dataset 'coco'.*refsegrs, rrsisd, risbench, jsonl"
    ):
        load_dataset("coco", tmp_path, "train")
    with pytest.raises(ConfigError, match="unknown option.*threshold"):
        load_dataset("jsonl", tmp_path, "train", threshold=3)
    ann.write_text(good + "{not json\n")
    with pytest.raises(DataError, match=r"annotations.jsonl:7 is not valid JSON"):
        load_dataset("jsonl", tmp_path, "train")
    ann.write_text(good + json.dumps({"image": "a.png", "expression": "x"}) + "\n")
    with pytest.raises(DataError, match=r":7 lacks mask, split"):
        load_dataset("jsonl", tmp_path, "train")
    ann.write_text(
        good
        + json.dumps(
            {"image": "images/img_0.png", "mask": "m.png", "expression": " ", "split": "train"}
        )
        + "\n"
    )
    with pytest.warns(
        DataWarning, match=r"skipped 1 annotation lines with no expression: annotations.jsonl:7"
    ):
        assert (
            load_dataset("jsonl", tmp_path, "train", one_expression_per_ref=False).num_expressions
            == 3
        )
    ann.write_bytes(good.encode() + b'{"expression": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"annotations.jsonl:7 is not UTF-8"):
        load_dataset("jsonl", tmp_path, "train")
    ann.write_text("\n\n")
    with pytest.raises(DataError, match="has no samples"):
        load_dataset("jsonl", tmp_path, "train")
    ann.write_text(good)
    (tmp_path / "masks/img_1_obj1.png").unlink()
    with pytest.raises(
        DataError, match=r"masks listed in .*annotations.jsonl not found: .*img_1_obj1.png"
    ):
        load_dataset("jsonl", tmp_path, "test")
    (tmp_path / "images/img_0.png").write_bytes(b"not a png at all")
    ds = load_dataset("jsonl", tmp_path, "train", entities=None)
    with pytest.raises(DataError, match=r"cannot read .*img_0.png.*corrupt"):
        ds[0]


def test_dataset_pickles_for_spawned_workers(jsonl):
    import pickle

    root, truth = jsonl
    make_entities(root, truth["images"], k=5)
    ds = load_dataset("jsonl", root, "test", seed=1)
    clone = pickle.loads(pickle.dumps(ds))
    a, b = ds[2], clone[2]
    assert a["sample_id"] == b["sample_id"]
    np.testing.assert_array_equal(a["entities"], b["entities"])
    np.testing.assert_array_equal(a["mask"], b["mask"])
