"""RefSegRS loader on a fake dataset in the official layout (TIFF images and masks)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from entitwist.data import DataWarning, load_dataset
from entitwist.errors import ConfigError, DataError
from fake_layouts import make_refsegrs


@pytest.fixture()
def refsegrs(tmp_path):
    return tmp_path, make_refsegrs(tmp_path, n={"train": 3, "val": 2, "test": 4})


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_counts_masks_and_texts(refsegrs, split):
    root, truth = refsegrs
    ds = load_dataset("refsegrs", root, split, entities=None, one_expression_per_ref=False)
    want = truth["samples"][split]
    assert len(ds) == len(want) == {"train": 4, "val": 2, "test": 4}[split]
    for i, w in enumerate(want):
        s = ds[i]
        for key in ("sample_id", "expression", "ref_id", "image_id", "image_key"):
            assert s[key] == w[key], key
        np.testing.assert_array_equal(s["image"], w["image"])
        # stored 0/255 with noise of 40: threshold > 50 recovers the rectangle exactly
        np.testing.assert_array_equal(s["mask"], w["mask"])
        assert s["orig_size"] == (24, 32)


def test_train_groups_repeated_stem(refsegrs):
    root, truth = refsegrs
    ds = load_dataset("refsegrs", root, "train", entities=None)
    assert len(ds) == 3 and ds.num_expressions == 4
    first = truth["samples"]["train"][:2]
    got = {ds[0]["expression"] for _ in range(40)}
    assert got == {first[0]["expression"], first[1]["expression"]}


def test_threshold_option(refsegrs):
    root, truth = refsegrs
    ds = load_dataset("refsegrs", root, "test", entities=None, mask_threshold=0)
    w = truth["samples"]["test"][0]["mask"]
    m = ds[0]["mask"]
    assert m.sum() > w.sum()  # the noise (40) now counts
    assert (m[w == 1] == 1).all()


def test_phrase_line_without_text_is_skipped_with_a_counted_warning(refsegrs):
    root, _ = refsegrs
    f = root / "output_phrase_test.txt"
    lines = f.read_text().splitlines()
    stems = [ln.split()[0] for ln in lines]
    f.write_text("\n".join([lines[0], stems[1], "", lines[2], stems[3] + "   "]) + "\n")
    with pytest.warns(
        DataWarning,
        match=r"skipped 2 phrase lines with no text: output_phrase_test.txt:2, output_phrase_test.txt:5",
    ):
        ds = load_dataset("refsegrs", root, "test", entities=None)
    assert [s.sample_id for s in ds.records] == [stems[0], stems[2]]


def test_bad_input(refsegrs):
    root, _ = refsegrs
    with pytest.raises(ConfigError, match="unknown split 'dev'.*train, val, test"):
        load_dataset("refsegrs", root, "dev")
    (root / "output_phrase_val.txt").unlink()
    with pytest.raises(DataError, match=r"split file not found: .*output_phrase_val.txt"):
        load_dataset("refsegrs", root, "val")
    (root / "output_phrase_val.txt").write_text("\n  \n")
    with pytest.raises(DataError, match="split 'val' of refsegrs .* has no samples"):
        load_dataset("refsegrs", root, "val")
    (root / "output_phrase_val.txt").write_bytes(b"00001 the r\xf6ad\n")
    with pytest.raises(DataError, match=r"output_phrase_val.txt:1 is not UTF-8 .*re-save"):
        load_dataset("refsegrs", root, "val")
    stem = (root / "output_phrase_test.txt").read_text().split()[0]
    (root / "images" / f"{stem}.tif").unlink()
    with pytest.raises(
        DataError, match=rf"images listed in .*output_phrase_test.txt not found: .*{stem}.tif"
    ):
        load_dataset("refsegrs", root, "test")
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(root / "images" / f"{stem}.tif")
    (root / "masks" / f"{stem}.tif").write_bytes(b"II*\x00garbage")
    ds = load_dataset("refsegrs", root, "test", entities=None)
    with pytest.raises(DataError, match=r"cannot read .*\.tif.*corrupt"):
        ds[0]


def test_keys_written_with_suffix_are_accepted(refsegrs):
    root, truth = refsegrs
    f = root / "output_phrase_val.txt"
    lines = f.read_text().splitlines()
    f.write_text("\n".join(ln.replace(" ", ".tif ", 1) for ln in lines) + "\n")
    ds = load_dataset("refsegrs", root, "val", entities=None)
    assert [r.sample_id for r in ds.records] == [w["sample_id"] for w in truth["samples"]["val"]]
    np.testing.assert_array_equal(ds[1]["mask"], truth["samples"]["val"][1]["mask"])
