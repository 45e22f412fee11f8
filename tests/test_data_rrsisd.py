"""RRSIS-D loader: pickled refs (read safely), COCO polygons / RLE, the JPEG size mismatch."""

from __future__ import annotations

import json
import os
import pickle
import warnings

import numpy as np
import pytest

from entitwist.data import DataWarning, load_dataset
from entitwist.data.rrsisd import polygons_to_mask, rle_decode, safe_load_pickle
from entitwist.errors import ConfigError, DataError
from fake_layouts import make_rrsisd, rle_encode


@pytest.fixture()
def rrsisd(tmp_path):
    return tmp_path, make_rrsisd(tmp_path)


def _load(root, split, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return load_dataset("rrsisd", root, split, entities=None, **kw)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_counts_masks_and_texts(rrsisd, split):
    root, truth = rrsisd
    ds = _load(root, split, one_expression_per_ref=False)
    want = truth["samples"][split]
    assert len(ds) == len(want) == {"train": 5, "val": 2, "test": 3}[split]
    for i, w in enumerate(want):
        s = ds[i]
        for key in ("sample_id", "expression", "ref_id", "image_id", "image_key"):
            assert s[key] == w[key], key
        assert s["image"].shape == w["image"].shape  # JPEG: lossy, compare size and roughly
        assert np.abs(s["image"].astype(int) - w["image"]).mean() < 8
        np.testing.assert_array_equal(s["mask"], w["mask"])
        assert s["orig_size"] == w["image"].shape[:2]


def test_train_one_expression_per_ref_and_sentence_key(rrsisd):
    root, truth = rrsisd
    ds = _load(root, "train")
    assert len(ds) == 2 and ds.num_expressions == 5
    sents = {w["expression"] for w in truth["samples"]["train"] if w["ref_id"] == "1002"}
    assert {ds[1]["expression"] for _ in range(60)} == sents  # ref 1002 has 3 sentences
    low = _load(root, "test", sentence_key="sent", one_expression_per_ref=False)
    assert low[0]["expression"] == truth["samples"]["test"][0]["expression"].lower()


def test_size_mismatch_one_counted_warning(rrsisd):
    root, _ = rrsisd
    with pytest.warns(
        DataWarning, match=r"rrsisd: 1 of 2 images differ in size .*00002.jpg is 40x41"
    ):
        ds = load_dataset("rrsisd", root, "train", entities=None, one_expression_per_ref=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(len(ds)):
            s = ds[i]
            assert s["mask"].shape == s["image"].shape[:2]
    assert ds.repairs["mask_resized"] == 3  # the three sentences of the 41-row image
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset("rrsisd", root, "val", entities=None)  # no mismatch there: silent


def test_rle_decode_matches_reference_encoder():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (5, 7), (37, 23)]:
        for p in (0.0, 0.3, 1.0):
            m = (rng.random(shape) < p).astype(np.uint8)
            np.testing.assert_array_equal(rle_decode(rle_encode(m, compressed=True)), m)
            np.testing.assert_array_equal(rle_decode(rle_encode(m, compressed=False)), m)
    # a hand-written case: 2x3 mask, column-major runs [1 zero, 2 ones, 3 zeros]
    np.testing.assert_array_equal(
        rle_decode({"size": [2, 3], "counts": [1, 2, 3]}), [[0, 1, 0], [1, 0, 0]]
    )
    with pytest.raises(DataError, match="RLE counts"):
        rle_decode({"size": [2, 3], "counts": [1, 2]})


def test_polygon_rasterisation_uses_pixel_centres():
    m = polygons_to_mask([[2, 1, 6, 1, 6, 4, 2, 4]], 8, 8)  # box x 2..6, y 1..4
    want = np.zeros((8, 8), np.uint8)
    want[1:4, 2:6] = 1
    np.testing.assert_array_equal(m, want)
    tri = polygons_to_mask([[0, 0, 10, 0, 0, 10]], 10, 10)  # area 50 -> ~50 pixel centres
    assert 40 <= tri.sum() <= 60 and tri[0, 0] == 1 and tri[9, 9] == 0
    assert polygons_to_mask([[1, 1, 2, 2]], 4, 4).sum() == 0  # degenerate: ignored


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_unpickling_refuses_code(tmp_path):
    p = tmp_path / "refs.p"
    p.write_bytes(pickle.dumps([{"ref_id": 1, "x": _Evil()}]))
    with pytest.raises(DataError, match=r"refusing to unpickle (posix|os|nt)\.system"):
        safe_load_pickle(p)
    p.write_bytes(pickle.dumps([{"a": (1, 2.5, "é", b"x", {3}, True, None)}], protocol=2))
    assert safe_load_pickle(p) == [{"a": (1, 2.5, "é", b"x", {3}, True, None)}]
    p.write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="corrupt"):
        safe_load_pickle(p)


def test_bad_input(rrsisd):
    root, _ = rrsisd
    with pytest.raises(ConfigError, match="unknown split 'testB'"):
        load_dataset("rrsisd", root, "testB")
    (root / "images/rrsisd/JPEGImages/00004.jpg").unlink()
    with pytest.raises(
        DataError, match=r"images listed in .*instances.json not found: .*00004.jpg"
    ):
        _load(root, "test")
    inst = root / "rrsisd/instances.json"
    data = json.loads(inst.read_text())
    data["annotations"] = data["annotations"][:-2]
    inst.write_text(json.dumps(data))
    with pytest.raises(DataError, match="ann_id 13 is not in .*instances.json"):
        _load(root, "val")
    inst.write_text("{")
    with pytest.raises(DataError, match="instances.json:1 is not valid JSON"):
        _load(root, "val")
    (root / "rrsisd/refs(unc).p").unlink()
    with pytest.raises(DataError, match=r"refs file not found: .*refs\(unc\).p"):
        _load(root, "val")
