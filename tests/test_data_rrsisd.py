"""RRSIS-D loader: pickled refs (read safely), COCO polygons / RLE, the JPEG size mismatch."""

from __future__ import annotations

import json
import os
import pickle
import warnings

import numpy as np
import pytest

from entitwist.data import DataWarning, load_dataset
from entitwist.data.rrsisd import decode_segmentation, safe_load_pickle
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
            for compressed in (True, False):
                got = decode_segmentation(rle_encode(m, compressed=compressed), *shape)
                assert got.dtype == np.uint8 and got.shape == shape
                np.testing.assert_array_equal(got, m)
    # a hand-written case: 2x3 mask, column-major runs [1 zero, 2 ones, 3 zeros]
    np.testing.assert_array_equal(
        decode_segmentation({"size": [2, 3], "counts": [1, 2, 3]}, 2, 3), [[0, 1, 0], [1, 0, 0]]
    )
    with pytest.raises(DataError, match="RLE counts"):
        decode_segmentation({"size": [2, 3], "counts": [1, 2]}, 2, 3)
    with pytest.raises(DataError, match="'size'"):
        decode_segmentation({"counts": [6]}, 2, 3)


def test_polygons_decode_as_the_refer_api_does():
    # An axis-aligned box x 2..6, y 1..4 (continuous coordinates) covers columns 2..5, rows 1..3.
    want = np.zeros((8, 8), np.uint8)
    want[1:4, 2:6] = 1
    np.testing.assert_array_equal(decode_segmentation([[2, 1, 6, 1, 6, 4, 2, 4]], 8, 8), want)
    # Two parts of one object are merged; a degenerate part (< 3 points) is ignored.
    two = decode_segmentation([[0, 0, 2, 0, 2, 2, 0, 2], [5, 5, 7, 5, 7, 7, 5, 7], [1, 1]], 8, 8)
    assert two.sum() == 8 and two[0, 0] == 1 and two[6, 6] == 1 and two[3, 3] == 0
    assert decode_segmentation([[1, 1, 2, 2]], 4, 4).sum() == 0
    # pycocotools' own decode of the same polygon: the loader adds nothing of its own.
    from pycocotools import mask as coco_mask

    rng = np.random.default_rng(3)
    for _ in range(5):
        poly = rng.uniform(0, 40, size=12).tolist()
        ref = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects([poly], 40, 48)))
        np.testing.assert_array_equal(decode_segmentation([poly], 40, 48), ref)


def test_pixel_centre_rasteriser_and_pycocotools_differ_only_at_boundaries():
    """How far the earlier pixel-centre reading (skimage, centre inside the polygon) was from
    the published one, on generated star-shaped polygons: the two agree in the interior and
    differ on about one boundary pixel in a few; IoU stays above 0.9 for 20-40 px objects."""
    from skimage.draw import polygon as draw_polygon

    rng = np.random.default_rng(7)
    ious, boundary_share = [], []
    for _ in range(20):
        n = int(rng.integers(5, 12))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = rng.uniform(10, 20, n)
        xs, ys = 32 + rad * np.cos(ang), 32 + rad * np.sin(ang)
        poly = np.stack([xs, ys], 1).reshape(-1).tolist()
        coco = decode_segmentation([poly], 64, 64).astype(bool)
        centre = np.zeros((64, 64), bool)
        rr, cc = draw_polygon(ys - 0.5, xs - 0.5, shape=(64, 64))
        centre[rr, cc] = True
        diff = coco ^ centre
        ious.append((coco & centre).sum() / (coco | centre).sum())
        # every differing pixel touches the other mask's boundary (no interior disagreement)
        from scipy.ndimage import binary_dilation, binary_erosion

        edge = binary_dilation(coco) & ~binary_erosion(coco)
        boundary_share.append(diff[~edge].sum())
    assert min(ious) > 0.9 and np.mean(ious) < 1.0  # they do differ, a little
    assert max(boundary_share) == 0


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
