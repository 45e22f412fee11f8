"""RISBench loader on a fake dataset in the official layout (PNG, `<file.png> <text>`)."""

from __future__ import annotations

import numpy as np
import pytest

from entitwist.data import ReferringTransform, collate_referring, load_dataset
from entitwist.errors import ConfigError, DataError
from fake_layouts import make_entities, make_risbench


@pytest.fixture()
def risbench(tmp_path):
    return tmp_path, make_risbench(tmp_path, n={"train": 2, "val": 1, "test": 3})


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_counts_masks_and_texts(risbench, split):
    root, truth = risbench
    ds = load_dataset("risbench", root, split, entities=None)
    want = truth["samples"][split]
    assert len(ds) == len(want)
    eval_ds = load_dataset("risbench", root, split, entities=None, one_expression_per_ref=False)
    for i, w in enumerate(want):
        s = eval_ds[i]
        for key in ("sample_id", "expression", "ref_id", "image_id", "image_key"):
            assert s[key] == w[key], key
        np.testing.assert_array_equal(s["image"], w["image"])
        np.testing.assert_array_equal(s["mask"], w["mask"])


def test_with_entities_through_transform_and_collate(risbench):
    root, truth = risbench
    maps = make_entities(root, truth["images"], k=4)
    ds = load_dataset("risbench", root, "test", transform=ReferringTransform(size=16))
    batch = collate_referring([ds[i] for i in range(3)])
    assert batch["image"].shape == (3, 3, 16, 16)
    assert (
        batch["entities"].shape == (3, 16, 16)
        and batch["entities"].dtype.is_floating_point is False
    )
    assert int(batch["entities"].max()) <= 4
    key = truth["samples"]["test"][0]["image_key"]
    # 32 -> 16 nearest (PIL centre convention) picks odd rows/cols
    np.testing.assert_array_equal(batch["entities"][0].numpy(), maps[key][1::2, 1::2])


def test_bad_input(risbench):
    root, _ = risbench
    with pytest.raises(ConfigError, match="unknown split"):
        load_dataset("risbench", root, "testA")
    with pytest.raises(DataError, match="risbench dataset root not found"):
        load_dataset("risbench", root / "missing", "test")
    f = root / "output_phrase_test.txt"
    name = f.read_text().split()[0]
    (root / "mask" / name).unlink()
    with pytest.raises(
        DataError, match=rf"masks listed in .*output_phrase_test.txt not found: .*{name}"
    ):
        load_dataset("risbench", root, "test")


def test_bare_stems_in_phrase_lines_get_png(risbench):
    root, truth = risbench
    f = root / "output_phrase_val.txt"
    f.write_text(f.read_text().replace(".png ", " "))
    ds = load_dataset("risbench", root, "val", entities=None)
    np.testing.assert_array_equal(ds[0]["mask"], truth["samples"]["val"][0]["mask"])


def test_unreadable_split_file(risbench, monkeypatch):
    root, _ = risbench
    from pathlib import Path

    real = Path.read_bytes

    def deny(self):
        if self.name == "output_phrase_test.txt":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(DataError, match=r"cannot read .*output_phrase_test.txt: Permission denied"):
        load_dataset("risbench", root, "test")
